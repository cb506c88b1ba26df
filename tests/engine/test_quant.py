"""Quantized linear layers against their dequantized references; two-phase save/load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from perwatt.engine import Engine, get_config, plan_precision
from perwatt.engine.quant import (
    E2M1_VALUES,
    FP8Linear,
    Int4Linear,
    Int8Linear,
    NVFP4Linear,
    QuantExperts,
    choose_group_size,
    fake_quant_fp8_rows,
    pack_nibbles,
    quantize,
    read_quantized_metadata,
    save_quantized,
    target_experts,
    target_linears,
    unpack_nibbles,
)
from perwatt.engine.quant import _quantize_weight as _quantize
from perwatt.errors import ConfigError, DataFormatError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: OpenMP threads spinning against other processes on a shared 2-core
    runner made these tiny models several times slower (as in test_bench.py)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _weight(n: int = 48, k: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) / k**0.5


def _load(mod: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for leaf, t in tensors.items():
        getattr(mod, leaf).copy_(t)


def test_pack_unpack_round_trip() -> None:
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert int(packed[0, 0]) == int(q[0, 0]) * 16 + int(q[0, 1])  # even k in the high nibble
    assert torch.equal(unpack_nibbles(packed), q)


def test_int8_error_bound_and_forward_matches_dequantized() -> None:
    w = _weight()
    t = Int8Linear.quantize_weight(w)
    mod = Int8Linear(256, 48, False, torch.float32)
    _load(mod, t)
    deq = mod.dequantize()
    # Round-to-nearest: every element within half a step of its channel's scale.
    assert ((deq - w).abs() <= t["scales"][:, None] / 2 + 1e-7).all()
    x = torch.randn(3, 5, 256)
    torch.testing.assert_close(mod(x), F.linear(x, deq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_error_bound_and_forward_matches_dequantized(group: int) -> None:
    w = _weight()
    t = Int4Linear.quantize_weight(w, group)
    assert t["packed"].shape == (48, 128)
    mod = Int4Linear(256, 48, True, torch.float32, group)
    _load(mod, t)
    mod.bias.copy_(torch.randn(48))  # type: ignore[union-attr]
    deq = mod.dequantize()
    step = t["scales"].float().repeat_interleave(group, dim=1)
    # Half a step, plus slack for the bf16 rounding of scales and zeros.
    assert ((deq - w).abs() <= step * 0.5 + 2e-3 * w.abs().amax()).all()
    x = torch.randn(4, 256)
    torch.testing.assert_close(mod(x), F.linear(x, deq, mod.bias), rtol=1e-5, atol=1e-5)
    # Coarser groups are less accurate: a sanity check that grouping is real.
    assert (deq - w).pow(2).mean() < w.pow(2).mean() * 0.02


@pytest.mark.parametrize("group", [32, 128])
def test_int4_cpu_kernel_matches_dequantized(group: int) -> None:
    w = _weight(64, 256, seed=4)
    mod = Int4Linear(256, 64, True, torch.float32, group)
    _load(mod, Int4Linear.quantize_weight(w, group))
    mod.bias.copy_(torch.randn(64))  # type: ignore[union-attr]
    x = torch.randn(2, 3, 256)
    want = F.linear(x, mod.dequantize(), mod.bias)
    if not mod.use_cpu_kernel():
        pytest.skip("this torch build has no _weight_int4pack_mm_for_cpu")
    assert mod.kernel == "int4pack-cpu"
    torch.testing.assert_close(mod(x), want, rtol=1e-4, atol=1e-4)


def test_int4_engine_uses_cpu_kernel() -> None:
    engine = Engine("tiny", precision="int4", device="cpu", max_seq_len=16)
    kernels = {m.kernel for m in engine.model.modules() if isinstance(m, Int4Linear)}
    assert kernels <= {"int4pack-cpu", "dequant"} and kernels


def test_fp8_weights_and_emulated_forward() -> None:
    w = _weight()
    t = FP8Linear.quantize_weight(w)
    assert t["weight"].dtype == torch.float8_e4m3fn
    mod = FP8Linear(256, 48, False, torch.float32)
    _load(mod, t)
    deq = mod.dequantize()
    # E4M3 keeps 3 mantissa bits: relative error <= 2^-4 for normal values.
    big = w.abs() > 1e-2 * w.abs().amax()
    assert ((deq - w).abs()[big] <= w.abs()[big] * 2**-4 + 1e-9).all()
    x = torch.randn(6, 256)
    want = F.linear(fake_quant_fp8_rows(x), deq)
    torch.testing.assert_close(mod(x), want, rtol=1e-5, atol=1e-5)
    # Activations really are quantized in the emulation (not just passed through).
    assert not torch.equal(fake_quant_fp8_rows(x), x)


def test_nvfp4_codes_scales_and_forward() -> None:
    w = _weight()
    t = NVFP4Linear.quantize_weight(w)
    assert t["block_scale"].shape == (48, 16) and t["block_scale"].dtype == torch.float8_e4m3fn
    mod = NVFP4Linear(256, 48, False, torch.float32)
    _load(mod, t)
    deq = mod.dequantize()
    # Every dequantized value is an E2M1 value times its block's scale.
    scale = (t["block_scale"].float() * t["global_scale"]).repeat_interleave(16, dim=1)
    ratio = (deq / scale).abs()
    grid = torch.tensor(E2M1_VALUES)
    assert ((ratio[..., None] - grid).abs().amin(-1) < 1e-5).all()
    # The block absmax maps to 6 (up to the E4M3 rounding of the scale): error <= half the
    # widest grid gap (1.0) times the scale, plus that rounding.
    assert ((deq - w).abs() <= scale * 1.0 + 0.07 * w.abs().amax()).all()
    x = torch.randn(2, 256)
    torch.testing.assert_close(mod(x), F.linear(x, deq), rtol=1e-5, atol=1e-5)


def test_group_size_choice_and_errors() -> None:
    engine = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16)
    assert choose_group_size(engine.model, None) == 128
    assert choose_group_size(engine.model, 64) == 64
    odd = Engine(
        get_config("tiny").replace(intermediate_size=96),
        precision="fp32",
        device="cpu",
        max_seq_len=16,
    )
    assert choose_group_size(odd.model, None) == 32
    with pytest.raises(ConfigError, match="group size 128 does not divide in_features 96"):
        choose_group_size(odd.model, 128)


def test_targets_skip_router() -> None:
    engine = Engine("tiny-moe", precision="fp32", device="cpu", max_seq_len=16)
    names = target_linears(engine.model)
    assert "output" in names and "layers.0.attention.wqkv" in names
    assert not any(n.endswith("feed_forward.gate") for n in names)
    assert target_experts(engine.model) == [f"layers.{i}.feed_forward.experts" for i in range(4)]


@pytest.mark.parametrize("precision", ["int8", "int4", "fp8", "nvfp4"])
def test_quantized_experts_match_dequantized_reference(precision: str) -> None:
    """QuantExperts gathers then dequantizes: equal to dequantizing everything, then indexing."""
    ref = Engine("tiny-moe", precision="fp32", device="cpu", max_seq_len=16)
    w13 = ref.model.layers[0].feed_forward.experts.w13.detach()
    qe = QuantExperts(precision, 8, 256, 256, torch.float32, 128)
    for leaf, t in _quantize(precision, w13, 128).items():
        getattr(qe.w13, leaf).copy_(t)
    full = qe.weight("w13", None, torch.float32)
    idx = torch.tensor([3, 0, 3, 7])
    torch.testing.assert_close(qe.weight("w13", idx, torch.float32), full[idx])
    torch.testing.assert_close(qe.weight("w13", 5, torch.float32), full[5])
    rel = (full - w13).norm() / w13.norm()
    assert float(rel) < {"int8": 0.01, "int4": 0.15, "fp8": 0.05, "nvfp4": 0.15}[precision]


def test_quantized_moe_engine_runs_and_notes() -> None:
    engine = Engine("tiny-moe", precision="int4", device="cpu", max_batch_size=2, max_seq_len=32)
    assert isinstance(engine.model.layers[0].feed_forward.experts, QuantExperts)
    assert "MoE experts dequantize" in engine.note
    assert engine.generate([[256, 1], [256, 2, 3]], 4).new_tokens == 8


@pytest.mark.parametrize("precision", ["int8", "int4", "fp8", "nvfp4"])
def test_quantized_engine_close_to_reference(precision: str) -> None:
    ref = Engine("tiny", precision="fp32", device="cpu", max_seq_len=32)
    q = Engine("tiny", precision=precision, device="cpu", max_seq_len=32)
    x = torch.tensor([[256, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        a, b = ref.model(x), q.model(x)
    rel = (a - b).abs().max() / a.abs().max()
    bound = {"int8": 0.1, "int4": 1.0, "fp8": 0.5, "nvfp4": 1.0}[precision]
    assert 0 < float(rel) < bound


def test_save_load_round_trip(tmp_path: Path) -> None:
    for model, precision in (("tiny", "int4"), ("tiny", "fp8"), ("tiny-moe", "int8")):
        src = Engine(model, precision="fp32", device="cpu", max_seq_len=32, seed=3)
        sd = quantize(src.model, precision)
        path = save_quantized(
            tmp_path / f"{model}-{precision}.safetensors",
            sd,
            cfg=src.cfg,
            precision=precision,
            group_size=128 if precision == "int4" else None,
        )
        meta = read_quantized_metadata(path)
        assert meta["precision"] == precision and meta["model"]["dim"] == 256
        loaded = Engine(
            model, precision=precision, device="cpu", max_seq_len=32, quantized_path=path
        )
        direct = Engine(model, precision=precision, device="cpu", max_seq_len=32, seed=3)
        x = torch.tensor([[256, 1, 2, 3]])
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), direct.model(x), rtol=1e-5, atol=1e-5)
        assert loaded.generate([[256, 1, 2]], 4).tokens == direct.generate([[256, 1, 2]], 4).tokens


def test_load_rejects_wrong_precision_and_shape(tmp_path: Path) -> None:
    src = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16)
    path = save_quantized(
        tmp_path / "q.safetensors", quantize(src.model, "int8"), cfg=src.cfg, precision="int8"
    )
    with pytest.raises(ConfigError, match="holds int8 weights, not int4; use --precision int8"):
        Engine("tiny", precision="int4", device="cpu", max_seq_len=16, quantized_path=path)
    with pytest.raises(DataFormatError, match="different shape"):
        Engine("tiny-moe", precision="int8", device="cpu", max_seq_len=16, quantized_path=path)
    with pytest.raises(ConfigError, match="needs a quantized precision"):
        Engine("tiny", precision="bf16", device="cpu", max_seq_len=16, quantized_path=path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataFormatError):
        Engine(
            "tiny",
            precision="int8",
            device="cpu",
            max_seq_len=16,
            quantized_path=tmp_path / "junk.safetensors",
        )


def test_precision_plans_on_cpu() -> None:
    assert not plan_precision("int8", CPU).emulated
    assert plan_precision("int8", CPU).compute_dtype == torch.float32
    fp8 = plan_precision("fp8", CPU)
    assert fp8.emulated and "emulated, no energy claim" in fp8.note
    nv = plan_precision("nvfp4", CPU)
    assert nv.emulated and "emulated, no energy claim" in nv.note
    with pytest.raises(ConfigError, match="use int8 or bf16"):
        plan_precision("fp8", CPU, allow_emulated=False)
    with pytest.raises(ConfigError, match="use fp8 or int4"):
        plan_precision("nvfp4", CPU, allow_emulated=False)
    with pytest.raises(ConfigError, match="unknown precision 'fp3'"):
        plan_precision("fp3", CPU)


def test_emulated_results_say_so() -> None:
    engine = Engine("tiny", precision="fp8", device="cpu", max_batch_size=1, max_seq_len=16)
    res = engine.generate([[256, 1]], 2, warmup=False)
    assert res.emulated and "no energy claim" in res.to_dict()["note"]
    assert engine.info()["emulated"] is True


# ----------------------------------------------------------------------------- GPU host only

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.gpu
@needs_cuda
def test_cuda_int4_tinygemm_matches_dequantized() -> None:
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev) < (8, 0):
        pytest.skip("tinygemm needs sm_80+")
    w = _weight(256, 512, seed=5).to(dev)
    mod = Int4Linear(512, 256, False, torch.bfloat16, 128).to(dev)
    _load(mod, Int4Linear.quantize_weight(w, 128))
    x = torch.randn(3, 512, device=dev, dtype=torch.bfloat16)
    want = F.linear(x.float(), mod.dequantize())
    assert mod.use_tinygemm(), "tinygemm unavailable on an sm_80+ GPU"
    torch.testing.assert_close(mod(x).float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp8_native_matches_emulation() -> None:
    dev = torch.device("cuda")
    plan = plan_precision("fp8", dev)
    if plan.emulated:
        pytest.skip(f"no native fp8 here: {plan.note}")
    w = _weight(256, 512, seed=6).to(dev)
    mod = FP8Linear(512, 256, False, torch.bfloat16).to(dev)
    _load(mod, FP8Linear.quantize_weight(w))
    x = torch.randn(5, 512, device=dev, dtype=torch.bfloat16)
    emulated = mod(x).float()
    mod.native = True
    native = mod(x).float()
    torch.testing.assert_close(native, emulated, rtol=3e-2, atol=3e-2)
    engine = Engine("tiny", precision="fp8", device="cuda", max_batch_size=2, max_seq_len=32)
    assert not engine.emulated
    assert engine.generate([[256, 1], [256, 2]], 4).new_tokens == 8


# ----------------------------------------------------------------------------- quantize_model


def _logits(engine: Engine) -> torch.Tensor:
    with torch.no_grad():
        return engine.model(torch.tensor([[256, 1, 2, 3, 4]]))


def _leftovers(parent: Path) -> list[str]:
    """Hidden temporary entries quantize_model may leave beside --out (it must not)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    ("model", "precision"),
    [("tiny", "int8"), ("tiny", "int4"), ("tiny", "fp8"), ("tiny", "nvfp4"), ("tiny-moe", "int4")],
)
def test_quantize_model_dir_loads_like_quantizing_at_load(
    tmp_path: Path, model: str, precision: str
) -> None:
    from perwatt.engine.generate import load_engine
    from perwatt.engine.quant import QUANTIZED_WEIGHTS, quantize_model, resolve_quantized

    out = tmp_path / "q"
    qm = quantize_model(model, precision, out, seed=3, device="cpu")
    assert qm.directory == out and qm.precision == precision and qm.seed == 3
    assert qm.source == model and qm.source_kind == "shape" and qm.weights_device == "cpu"
    assert qm.group_size == (128 if precision == "int4" else None)
    assert sorted(p.name for p in out.iterdir()) == [QUANTIZED_WEIGHTS, "perwatt-quantized.json"]
    assert qm.size_bytes == (out / QUANTIZED_WEIGHTS).stat().st_size
    assert _leftovers(tmp_path) == []
    # what serve/bench do with --model OUT: no precision given -> the directory's
    name, prec, path, read = resolve_quantized(str(out), None, None)
    assert (name, prec, path) == (model, precision, str(out / QUANTIZED_WEIGHTS))
    assert read is not None and read.to_dict() == qm.to_dict()
    loaded = load_engine(name, precision=prec, device="cpu", max_seq_len=16, quantized_path=path)
    direct = Engine(model, precision=precision, device="cpu", max_seq_len=16, seed=3)
    torch.testing.assert_close(_logits(loaded), _logits(direct), rtol=0, atol=0)
    other_seed = Engine(model, precision=precision, device="cpu", max_seq_len=16, seed=4)
    assert not torch.equal(_logits(loaded), _logits(other_seed))  # the seed was stored, not 0


def test_quantize_model_from_checkpoint_is_self_contained(tmp_path: Path) -> None:
    import json

    from perwatt.engine.generate import load_engine
    from perwatt.engine.quant import quantize_model, resolve_quantized
    from perwatt.engine.weights import export_hf

    src = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16, seed=5)
    ckpt = export_hf(src.model, tmp_path / "ckpt")
    (ckpt / "tokenizer_config.json").write_text('{"chat_template": "x"}')
    qm = quantize_model(str(ckpt), "int8", tmp_path / "q8", device="cpu")
    assert qm.source_kind == "checkpoint" and qm.source == str(ckpt.resolve()) and qm.seed is None
    out = tmp_path / "q8"
    assert (out / "config.json").read_text() == (ckpt / "config.json").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"chat_template": "x"}
    name, prec, path, _ = resolve_quantized(str(out), "int8", None)
    assert name == str(out) and prec == "int8"
    loaded = load_engine(name, precision=prec, device="cpu", max_seq_len=16, quantized_path=path)
    direct = load_engine(str(ckpt), precision="int8", device="cpu", max_seq_len=16)
    torch.testing.assert_close(_logits(loaded), _logits(direct), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(str(out), "int4", tmp_path / "again", device="cpu")
    with pytest.raises(ConfigError, match="would replace the checkpoint"):
        quantize_model(str(ckpt), "int4", ckpt, device="cpu", force=True)


@pytest.mark.parametrize(
    ("precision", "kw", "match"),
    [
        ("fp7", {}, r"unknown precision 'fp7'; perwatt quantize writes fp8, int8, int4, nvfp4"),
        ("bf16", {}, r"bf16 is not quantized: serve or bench it directly with --precision bf16"),
        ("int8", {"group_size": 64}, r"--group-size applies to int4 only"),
        ("int4", {"group_size": 96}, r"group size 96 does not divide"),
    ],
)
def test_quantize_model_rejects_bad_precision_before_writing(
    tmp_path: Path, precision: str, kw: dict[str, int], match: str
) -> None:
    from perwatt.engine.quant import quantize_model

    with pytest.raises(ConfigError, match=match):
        quantize_model("tiny", precision, tmp_path / "q", device="cpu", **kw)
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temporary directory


def test_quantize_model_unknown_shape_fails_before_writing(tmp_path: Path) -> None:
    from perwatt.engine.quant import quantize_model

    with pytest.raises(ConfigError, match="no-such-shape"):
        quantize_model("no-such-shape", "int8", tmp_path / "q", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_quantize_model_existing_out_needs_force_and_force_replaces(tmp_path: Path) -> None:
    from perwatt.engine.quant import quantize_model, read_quantized_dir

    out = tmp_path / "q"
    quantize_model("tiny", "int8", out, device="cpu")
    with pytest.raises(ConfigError, match=r"already exists; pass --force to replace it"):
        quantize_model("tiny", "int4", out, device="cpu")
    assert read_quantized_dir(out).precision == "int8"  # untouched
    quantize_model("tiny", "int4", out, device="cpu", force=True)
    assert read_quantized_dir(out).precision == "int4"
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    quantize_model("tiny", "int8", empty, device="cpu", force=True)  # an empty directory is fine
    assert read_quantized_dir(empty).precision == "int8"


def test_force_never_replaces_a_directory_quantize_did_not_write(tmp_path: Path) -> None:
    from perwatt.engine.quant import quantize_model

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(
        ConfigError,
        match=r"holds thesis.tex, which perwatt quantize did not write; refusing to replace it "
        "even with --force",
    ):
        quantize_model("tiny", "int8", mine, device="cpu", force=True)
    assert (mine / "thesis.tex").read_text() == "precious"
    # A manifest is not enough: everything in the directory must be something quantize writes.
    q = tmp_path / "q"
    quantize_model("tiny", "int8", q, device="cpu")
    (q / "notes.txt").write_text("mine")
    (q / "sub").mkdir()
    with pytest.raises(ConfigError, match=r"holds notes.txt, sub/, which perwatt quantize did"):
        quantize_model("tiny", "int4", q, device="cpu", force=True)
    assert (q / "notes.txt").read_text() == "mine" and (q / "sub").is_dir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        quantize_model("tiny", "int8", afile, device="cpu", force=True)
    assert afile.read_text() == "x"
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ConfigError, match="is not a directory"):
        quantize_model("tiny", "int8", link, device="cpu", force=True)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_force_never_deletes_the_checkpoint_through_a_link_or_dotdot(tmp_path: Path) -> None:
    import os

    from perwatt.engine.quant import quantize_model
    from perwatt.engine.weights import export_hf

    base = tmp_path / "base"
    quantize_model("tiny", "int8", base / "Q", device="cpu")
    src = Engine("tiny", precision="fp32", device="cpu", max_seq_len=16, seed=5)
    ckpt = export_hf(src.model, base / "Q" / "ckpt")  # the checkpoint sits inside the old --out
    os.symlink(base, tmp_path / "link")
    for out in (
        tmp_path / "link" / "Q",
        ckpt / ".." / ".." / "Q",
        tmp_path / "link" / "Q" / "ckpt",
    ):
        with pytest.raises(ConfigError, match="would replace the checkpoint it is quantized from"):
            quantize_model(str(ckpt), "int4", out, device="cpu", force=True)
        assert (ckpt / "config.json").is_file()
    with pytest.raises(ConfigError, match="is inside the checkpoint it is quantized from"):
        quantize_model(str(ckpt), "int4", tmp_path / "link" / "Q" / "ckpt" / "q4", device="cpu")
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        p.name for p in (base / "Q" / "ckpt").iterdir()
    )
    assert not (ckpt / "q4").exists()


def test_out_that_appears_during_the_build_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.engine.quant as Q

    out = tmp_path / "out"
    real_save = Q.save_quantized

    def save_while_user_writes(*a: object, **k: object) -> Path:
        out.mkdir()
        (out / "precious.txt").write_text("user data")  # appears while quantizing
        return real_save(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Q, "save_quantized", save_while_user_writes)
    with pytest.raises(ConfigError, match=r"appeared while quantizing and was left as it is"):
        Q.quantize_model("tiny", "int8", out, device="cpu")  # no --force
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert _leftovers(tmp_path) == []
    # --force checked an empty directory before the build; re-checked before the swap
    (out / "precious.txt").unlink()
    out.rmdir()
    out.mkdir()

    def fill_then_save(*a: object, **k: object) -> Path:
        (out / "precious.txt").write_text("user data")
        return real_save(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Q, "save_quantized", fill_then_save)
    with pytest.raises(ConfigError, match=r"holds precious.txt, which perwatt quantize did not"):
        Q.quantize_model("tiny", "int8", out, device="cpu", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert _leftovers(tmp_path) == []


def test_ctrl_c_between_the_two_renames_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import perwatt.engine.quant as Q

    out = tmp_path / "q"
    Q.quantize_model("tiny", "int8", out, device="cpu")
    before = (out / Q.QUANTIZED_MANIFEST).read_text()
    real_rename = os.rename

    def rename(src: object, dst: object) -> None:
        if Path(str(dst)) == out and str(src).endswith(".tmp"):
            raise KeyboardInterrupt  # after the old one was moved aside, before the new is in
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        Q.quantize_model("tiny", "int4", out, device="cpu", force=True)
    monkeypatch.undo()
    assert (out / Q.QUANTIZED_MANIFEST).read_text() == before
    assert _leftovers(tmp_path) == []


def test_failed_run_removes_the_parent_folders_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.engine.quant as Q

    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(Q, "_build_quantized", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Q.quantize_model("tiny", "int8", tmp_path / "kept" / "a" / "b" / "q", device="cpu")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]  # kept existed before
    monkeypatch.undo()
    Q.quantize_model("tiny", "int8", tmp_path / "kept" / "a" / "b" / "q", device="cpu")
    assert (tmp_path / "kept" / "a" / "b" / "q" / Q.QUANTIZED_MANIFEST).is_file()


def test_quantize_to_save_builds_no_kernel_layout_copies() -> None:
    from perwatt.engine.quant import _build_quantized

    plan = plan_precision("int4", CPU)
    if "int4pack-cpu" not in plan.kernel:
        pytest.skip("this torch build has no CPU int4pack kernel")
    model, _ = _build_quantized(
        get_config("tiny"), None, "int4", device=CPU, seed=0, group_size=None
    )
    mods = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert mods and all(m.kernel == "dequant" for m in mods)
    assert all(m._cpu_weight is None and m._tg_weight is None for m in mods)
    # the engine, which runs the model, still gets the kernel
    engine = Engine("tiny", precision="int4", device="cpu", max_seq_len=16, seed=0)
    assert {m.kernel for m in engine.model.modules() if isinstance(m, Int4Linear)} == {
        "int4pack-cpu"
    }


def test_quantize_model_unwritable_out_is_one_line_error(tmp_path: Path) -> None:
    import os

    from perwatt.engine.quant import quantize_model

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(ConfigError, match=r"cannot write --out .*blocker/q.*choose a writable"):
        quantize_model("tiny", "int8", blocker / "q", device="cpu")
    if os.geteuid() == 0:
        return  # root writes into a read-only directory anyway
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"cannot write --out .*Permission denied"):
            quantize_model("tiny", "int8", ro / "q", device="cpu")
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_partial_dir_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    import perwatt.engine.quant as Q

    out = tmp_path / "q"
    Q.quantize_model("tiny", "int8", out, device="cpu")
    before = (out / Q.QUANTIZED_MANIFEST).read_text()

    def failing_save(path: Path, *a: object, **k: object) -> Path:
        Path(path).write_bytes(b"half a file")  # the crash happens mid-write
        raise exc

    monkeypatch.setattr(Q, "save_quantized", failing_save)
    expected: type[BaseException] = ConfigError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected, match="No space left" if expected is ConfigError else None):
        Q.quantize_model("tiny", "int4", out, device="cpu", force=True)
    assert (out / Q.QUANTIZED_MANIFEST).read_text() == before  # the old directory is intact
    assert _leftovers(tmp_path) == []
    with pytest.raises(expected):
        Q.quantize_model("tiny", "int4", tmp_path / "new", device="cpu")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_resolve_quantized_precision_and_path_rules(tmp_path: Path) -> None:
    from perwatt.engine.quant import QUANTIZED_WEIGHTS, quantize_model, resolve_quantized

    out = tmp_path / "q"
    quantize_model("tiny", "int4", out, device="cpu")
    with pytest.raises(ConfigError, match=r"holds int4 weights .* use --precision int4"):
        resolve_quantized(str(out), "bf16", None)
    with pytest.raises(ConfigError, match="already a quantized directory; drop --quantized-path"):
        resolve_quantized(str(out), None, str(out))
    # --model SHAPE --quantized-path DIR (the older flag) takes the directory too
    assert resolve_quantized("tiny", None, str(out))[1:3] == ("int4", str(out / QUANTIZED_WEIGHTS))
    # a quantized file without --precision: the precision it records, not bf16
    weights = str(out / QUANTIZED_WEIGHTS)
    assert resolve_quantized("tiny", None, weights) == ("tiny", "int4", weights, None)
    # nothing quantized: bf16 by default, a file passes through
    assert resolve_quantized("tiny", None, None) == ("tiny", "bf16", None, None)
    assert resolve_quantized("tiny", "int8", "w.safetensors") == (
        "tiny",
        "int8",
        "w.safetensors",
        None,
    )


def test_read_quantized_dir_rejects_broken_manifests(tmp_path: Path) -> None:
    from perwatt.engine.quant import (
        QUANTIZED_MANIFEST,
        QUANTIZED_WEIGHTS,
        quantize_model,
        read_quantized_dir,
    )

    out = tmp_path / "q"
    quantize_model("tiny", "int8", out, device="cpu")
    (out / QUANTIZED_WEIGHTS).unlink()
    with pytest.raises(DataFormatError, match="is missing; quantize again"):
        read_quantized_dir(out)
    (out / QUANTIZED_MANIFEST).write_text("{not json")
    with pytest.raises(DataFormatError, match="cannot read"):
        read_quantized_dir(out)
    (out / QUANTIZED_MANIFEST).write_text('{"format": "perwatt.quantized/1"}')
    with pytest.raises(DataFormatError, match="missing or malformed field"):
        read_quantized_dir(out)


def test_quantize_model_out_of_memory_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perwatt.engine.quant as Q

    def oom(*a: object, **k: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    monkeypatch.setattr(Q, "_build_quantized", oom)
    with pytest.raises(ConfigError, match=r"out of memory quantizing tiny on cpu: .*a GPU"):
        Q.quantize_model("tiny", "int4", tmp_path / "q", device="cpu")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Q, "_build_quantized", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback, and still cleans up
        Q.quantize_model("tiny", "int4", tmp_path / "q", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_files_saved_before_new_shape_fields_still_match() -> None:
    from perwatt.engine.quant import _with_new_defaults

    old = {"eos_token_id": 5, "rope_scaling": {"kind": "llama3", "factor": 8.0}}
    new = _with_new_defaults(old)
    assert new["eos_token_ids"] == [5] and new["o_bias"] is False and new["mlp_bias"] is False
    assert new["rope_scaling"]["beta_fast"] == 32.0 and new["rope_scaling"]["factor"] == 8.0
