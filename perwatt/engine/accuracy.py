"""Accuracy guard: how far a precision's logits move from the unquantized reference.

Reported beside every energy figure, because a format that saves joules by changing the answers
is not a saving. On the same token inputs and the same weights (same seed, or the same
checkpoint) both engines run a full forward pass; per position we compare the next-token
distributions:

* ``kl_mean`` — mean over positions of KL(P_ref ‖ P_test), in nats (0 = identical);
* ``top1_agreement`` — fraction of positions whose most likely token is the same;
* ``max_rel_err`` — max over positions of ``max|z_test − z_ref| / max|z_ref|`` on the raw logits
  ``z`` (a row-scaled worst case, so it does not blow up on near-zero logits).

The reference is bf16 on CUDA and fp32 on CPU. With random weights logits are nearly flat, so top-1
agreement is a harsher test than on a trained model (near ties flip easily); KL is the steadier
figure. Perplexity on a text file needs real weights and their tokenizer; otherwise it is None and
``note`` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perwatt.engine.generate import Engine, load_engine, resolve_device
from perwatt.errors import ConfigError, DataFormatError


@dataclass(frozen=True, slots=True, kw_only=True)
class AccuracyReport:
    """Logit agreement of one precision with the reference precision on the same inputs."""

    precision: str
    reference: str
    kl_mean: float
    top1_agreement: float
    max_rel_err: float
    positions: int
    perplexity: float | None = None
    reference_perplexity: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not (self.kl_mean >= -1e-9 and math.isfinite(self.kl_mean)):
            raise ValueError(f"kl_mean must be a finite number >= 0, got {self.kl_mean}")
        if not 0.0 <= self.top1_agreement <= 1.0:
            raise ValueError(f"top1_agreement must be in [0, 1], got {self.top1_agreement}")
        if self.max_rel_err < 0 or self.positions < 1:
            raise ValueError("max_rel_err must be >= 0 and positions >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "reference": self.reference,
            "kl_mean": self.kl_mean,
            "top1_agreement": self.top1_agreement,
            "max_rel_err": self.max_rel_err,
            "positions": self.positions,
            "perplexity": self.perplexity,
            "reference_perplexity": self.reference_perplexity,
            "note": self.note,
        }


def logit_metrics(ref: Tensor, test: Tensor) -> tuple[float, float, float]:
    """(kl_mean, top1_agreement, max_rel_err) of ``test`` against ``ref``, both [..., V]."""
    if ref.shape != test.shape:
        raise ValueError(f"logit shapes differ: {tuple(ref.shape)} vs {tuple(test.shape)}")
    r = ref.reshape(-1, ref.shape[-1]).double()
    t = test.reshape(-1, test.shape[-1]).double()
    lr, lt = torch.log_softmax(r, dim=-1), torch.log_softmax(t, dim=-1)
    kl = (lr.exp() * (lr - lt)).sum(-1).clamp(min=0.0)
    top1 = (r.argmax(-1) == t.argmax(-1)).double().mean()
    scale = r.abs().amax(-1).clamp(min=1e-12)
    rel = ((t - r).abs().amax(-1) / scale).max()
    return float(kl.mean()), float(top1), float(rel)


def compare_logits(
    ref: Tensor,
    test: Tensor,
    *,
    precision: str = "",
    reference: str = "",
    note: str = "",
) -> AccuracyReport:
    """An :class:`AccuracyReport` of logits ``test`` against ``ref`` (same shape [..., V])."""
    kl, top1, rel = logit_metrics(ref, test)
    return AccuracyReport(
        precision=precision,
        reference=reference,
        kl_mean=kl,
        top1_agreement=top1,
        max_rel_err=rel,
        positions=int(ref.numel() // ref.shape[-1]),
        note=note,
    )


def random_inputs(
    vocab_size: int, *, n_seqs: int = 4, seq_len: int = 64, seed: int = 0
) -> list[list[int]]:
    """Seeded uniform token sequences (what random-weight shapes are evaluated on)."""
    if n_seqs < 1 or seq_len < 2:
        raise ConfigError(
            "the accuracy guard needs at least 1 prompt of at least 2 tokens, got "
            f"{n_seqs} prompt{'' if n_seqs == 1 else 's'} of {seq_len} "
            f"token{'' if seq_len == 1 else 's'}"
        )
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_seqs, seq_len), generator=g).tolist()


@torch.no_grad()
def full_logits(engine: Engine, inputs: list[list[int]], *, batch: int = 4) -> Tensor:
    """Logits [N, T, V] (fp32, on the CPU) of full forward passes; rows must share a length."""
    lengths = sorted({len(s) for s in inputs})
    if len(lengths) != 1:
        raise ConfigError(
            f"accuracy prompts must all have the same number of tokens, got "
            f"{len(inputs)} prompts of {', '.join(map(str, lengths))} tokens"
            if inputs
            else "the accuracy guard needs at least 1 prompt, got none"
        )
    out = []
    for i in range(0, len(inputs), batch):
        x = torch.tensor(inputs[i : i + batch], dtype=torch.long, device=engine.device)
        out.append(engine.model(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def perplexity(engine: Engine, token_ids: list[int], *, window: int | None = None) -> float:
    """exp(mean next-token NLL) over ``token_ids``, in non-overlapping windows."""
    w = min(window or engine.max_seq_len, engine.max_seq_len)
    if len(token_ids) < 2:
        raise ConfigError("perplexity needs at least two tokens of text")
    nll, count = 0.0, 0
    for i in range(0, len(token_ids) - 1, w):
        chunk = token_ids[i : i + w + 1]
        if len(chunk) < 2:
            break
        x = torch.tensor([chunk[:-1]], dtype=torch.long, device=engine.device)
        y = torch.tensor(chunk[1:], dtype=torch.long, device=engine.device)
        logp = torch.log_softmax(engine.model(x)[0].double(), dim=-1)
        nll -= float(logp.gather(1, y[:, None]).sum())
        count += len(chunk) - 1
    return math.exp(nll / count)


def _text_tokens(engine: Engine, text_path: str | Path) -> list[int]:
    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{text_path}: cannot read text: {e}") from e
    return engine.tokenizer.encode(text)


def reference_precision(device: torch.device) -> str:
    """bf16 on CUDA (what a deployment would otherwise run), fp32 on the CPU."""
    return "bf16" if device.type == "cuda" else "fp32"


@dataclass(frozen=True, slots=True)
class ReferenceRun:
    """The reference side of a comparison, computed once and reusable for every precision."""

    precision: str
    shape: dict[str, Any]
    inputs: list[list[int]]
    logits: Tensor  # [N, T, V] fp32 on the CPU
    perplexity: float | None
    text_path: str | None


def run_reference(
    reference: Engine, inputs: list[list[int]], *, text_path: str | Path | None = None
) -> ReferenceRun:
    ppl = None
    if (
        text_path is not None
        and reference.weights != "random"
        and reference.tokenizer.kind != "byte"
    ):
        ppl = perplexity(reference, _text_tokens(reference, text_path))
    return ReferenceRun(
        precision=reference.precision,
        shape=reference.cfg.to_dict(),
        inputs=inputs,
        logits=full_logits(reference, inputs),
        perplexity=ppl,
        text_path=None if text_path is None else str(text_path),
    )


def compare_to_reference(engine: Engine, ref: ReferenceRun) -> AccuracyReport:
    """The accuracy report of ``engine`` against a :class:`ReferenceRun` of the same weights."""
    if engine.cfg.to_dict() != ref.shape:
        raise ConfigError("accuracy: engine and reference have different shapes")
    test = full_logits(engine, ref.inputs)
    kl, top1, rel = logit_metrics(ref.logits, test)
    ppl = None
    notes = [engine.note] if engine.note else []
    if ref.text_path is not None:
        if ref.perplexity is None:
            notes.append("no perplexity: needs real weights and their tokenizer")
        else:
            ppl = perplexity(engine, _text_tokens(engine, ref.text_path))
    return AccuracyReport(
        precision=engine.precision,
        reference=ref.precision,
        kl_mean=kl,
        top1_agreement=top1,
        max_rel_err=rel,
        positions=ref.logits.shape[0] * ref.logits.shape[1],
        perplexity=ppl,
        reference_perplexity=ref.perplexity,
        note="; ".join(notes),
    )


def check_accuracy(
    engine: Engine,
    reference: Engine,
    inputs: list[list[int]],
    *,
    text_path: str | Path | None = None,
) -> AccuracyReport:
    """Compare two loaded engines of the same shape and weights on ``inputs``."""
    return compare_to_reference(engine, run_reference(reference, inputs, text_path=text_path))


def accuracy_guard(
    model: str,
    precision: str,
    *,
    device: str = "auto",
    seed: int = 0,
    n_seqs: int = 4,
    seq_len: int = 64,
    text_path: str | Path | None = None,
    quantized_path: str | Path | None = None,
    group_size: int | None = None,
) -> AccuracyReport:
    """Build the reference and the ``precision`` engine for ``model`` (preset or HF directory)
    with the same seed, and compare them. One engine is in memory at a time."""
    dev = resolve_device(device)
    ref_prec = reference_precision(dev)
    max_len = max(seq_len, 256 if text_path is not None else seq_len)

    def build(p: str, qpath: str | Path | None) -> Engine:
        return load_engine(
            model,
            precision=p,
            device=str(dev),
            max_batch_size=1,
            max_seq_len=max_len,
            seed=seed,
            quantized_path=qpath,
            group_size=group_size,
            compile=False,
        )

    reference = build(ref_prec, None)
    inputs = random_inputs(reference.cfg.vocab_size, n_seqs=n_seqs, seq_len=seq_len, seed=seed)
    ref = run_reference(reference, inputs, text_path=text_path)
    if precision == ref_prec:
        return compare_to_reference(reference, ref)
    del reference
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return compare_to_reference(build(precision, quantized_path), ref)
