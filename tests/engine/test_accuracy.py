"""The accuracy guard: logit comparison metrics and end-to-end reports."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from perwatt.engine import Engine
from perwatt.engine.accuracy import (
    AccuracyReport,
    accuracy_guard,
    check_accuracy,
    compare_logits,
    logit_metrics,
    perplexity,
    random_inputs,
)
from perwatt.engine.weights import export_hf
from perwatt.errors import ConfigError


def test_compare_logits_identity_and_known_values() -> None:
    ref = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert logit_metrics(ref, ref) == (0.0, 1.0, 0.0)
    test = torch.tensor([[2.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    kl, top1, rel = logit_metrics(ref, test)
    p = torch.softmax(torch.tensor([0.0, 1.0, 0.0]), 0)
    q = torch.softmax(torch.tensor([1.0, 0.0, 0.0]), 0)
    want_kl = float((p * (p.log() - q.log())).sum()) / 2
    assert kl == pytest.approx(want_kl, rel=1e-6)
    assert top1 == 0.5
    assert rel == pytest.approx(1.0)  # row 2: max |diff| 1 over max |ref| 1
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(ref, ref[:1])
    report = compare_logits(ref, test, precision="int8", reference="fp32")
    assert report.to_dict()["kl_mean"] == kl and report.positions == 2
    assert report.reference == "fp32" and report.perplexity is None


def test_report_validation_and_keys() -> None:
    r = AccuracyReport(
        precision="int8",
        reference="fp32",
        kl_mean=0.1,
        top1_agreement=0.9,
        max_rel_err=0.05,
        positions=10,
    )
    assert {"reference", "kl_mean", "top1_agreement", "max_rel_err", "perplexity", "note"} <= set(
        r.to_dict()
    )
    with pytest.raises(ValueError):
        AccuracyReport(
            precision="x",
            reference="y",
            kl_mean=0.0,
            top1_agreement=1.5,
            max_rel_err=0.0,
            positions=1,
        )


def test_guard_orders_precisions_sensibly() -> None:
    reports = {
        p: accuracy_guard("tiny", p, device="cpu", n_seqs=2, seq_len=32)
        for p in ("fp32", "int8", "int4")
    }
    assert reports["fp32"].kl_mean == 0.0 and reports["fp32"].top1_agreement == 1.0
    assert 0 < reports["int8"].kl_mean < reports["int4"].kl_mean
    assert reports["int8"].top1_agreement >= reports["int4"].top1_agreement
    assert all(r.reference == "fp32" and r.positions == 64 for r in reports.values())
    assert reports["int8"].perplexity is None


def test_emulated_precision_note() -> None:
    r = accuracy_guard("tiny", "nvfp4", device="cpu", n_seqs=1, seq_len=16)
    assert "emulated, no energy claim" in r.note


def test_perplexity_with_real_checkpoint_needs_tokenizer(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    r = accuracy_guard("tiny", "int8", device="cpu", n_seqs=1, seq_len=16, text_path=text)
    assert r.perplexity is None and "needs real weights" in r.note
    # A checkpoint directory without tokenizer.json: still no perplexity (byte fallback is not
    # the model's tokenizer).
    src = Engine("tiny", precision="fp32", device="cpu", max_seq_len=64)
    d = export_hf(src.model, tmp_path / "ckpt")
    r2 = accuracy_guard(str(d), "int8", device="cpu", n_seqs=1, seq_len=16, text_path=text)
    assert r2.perplexity is None


def test_perplexity_value_on_known_model() -> None:
    engine = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16)
    toks = random_inputs(1024, n_seqs=1, seq_len=40, seed=1)[0]
    ppl = perplexity(engine, toks)
    # Check against a direct computation over the same windows.
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, 39, 16):
            chunk = toks[i : i + 17]
            logp = torch.log_softmax(engine.model(torch.tensor([chunk[:-1]]))[0].double(), -1)
            nll -= float(logp[torch.arange(len(chunk) - 1), torch.tensor(chunk[1:])].sum())
            n += len(chunk) - 1
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-9)
    assert 1 < ppl < 1024 * 10


def test_check_accuracy_rejects_different_shapes() -> None:
    a = Engine("tiny", precision="fp32", device="cpu", max_seq_len=8)
    b = Engine("tiny-moe", precision="fp32", device="cpu", max_seq_len=8)
    with pytest.raises(ConfigError, match="different shapes"):
        check_accuracy(a, b, [[1, 2, 3]])


@pytest.mark.parametrize(
    ("n", "length", "want"),
    [
        (0, 8, "got 0 prompts of 8 tokens"),
        (1, 1, "got 1 prompt of 1 token"),
        (3, 0, "got 3 prompts of 0 tokens"),
    ],
)
def test_accuracy_input_errors_count_prompts_and_tokens(n: int, length: int, want: str) -> None:
    with pytest.raises(ConfigError, match="at least 1 prompt of at least 2 tokens, " + want):
        random_inputs(1024, n_seqs=n, seq_len=length)


def test_ragged_accuracy_prompts_say_their_token_counts() -> None:
    from perwatt.engine.accuracy import full_logits

    engine = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16)
    with pytest.raises(ConfigError, match="same number of tokens, got 2 prompts of 3, 4 tokens"):
        full_logits(engine, [[1, 2, 3], [1, 2, 3, 4]])
    with pytest.raises(ConfigError, match="needs at least 1 prompt, got none"):
        full_logits(engine, [])
