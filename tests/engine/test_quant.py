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


def test_files_saved_before_new_shape_fields_still_match() -> None:
    from perwatt.engine.quant import _with_new_defaults

    old = {"eos_token_id": 5, "rope_scaling": {"kind": "llama3", "factor": 8.0}}
    new = _with_new_defaults(old)
    assert new["eos_token_ids"] == [5] and new["o_bias"] is False and new["mlp_bias"] is False
    assert new["rope_scaling"]["beta_fast"] == 32.0 and new["rope_scaling"]["factor"] == 8.0
