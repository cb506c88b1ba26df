"""Quantized linear layers, two-phase: quantize once (and save), swap modules at load.

Formats (weights only are stored quantized; ``N`` out features, ``K`` in features):

======  =========================================================  =====================================
name    stored                                                      matmul
======  =========================================================  =====================================
int8    int8 ``[N, K]``, one scale per output channel (absmax/127)  ``linear(x, w.to(x.dtype)) * scale``
int4    uint8 ``[N, K/2]`` (two codes per byte, even k in the high  CUDA sm_80+: tinygemm
        nibble), per-group scale and zero (bf16), asymmetric:       ``aten._weight_int4pack_mm``;
        ``w = (q - 8) * scale + zero``, groups of 32/64/128          elsewhere: dequantize, then matmul
fp8     E4M3 ``[N, K]``, one fp32 scale per output channel          sm_89+: ``torch._scaled_mm`` with
        (absmax/448); activations scaled per row at run time         row-wise scales; else emulated
nvfp4   E2M1 codes ``[N, K/2]``, an E4M3 scale per block of 16,     emulated everywhere (dequantize,
        one fp32 global scale (NVIDIA's two-level NVFP4 scaling)     then matmul): weight-only
======  =========================================================  =====================================

The matmul tensors are all linear layers of the blocks and the LM head; the MoE router and the
shared-expert gate stay in the compute dtype (tiny, and routing is sensitive to them). Embedding,
norms, attention and the KV cache stay in the compute dtype too. Stacked MoE experts
(:class:`QuantExperts`) use the same formats with a leading expert axis; they gather the chosen
experts' stored bytes and dequantize only those, then multiply in the compute dtype (no fused
quantized kernel for experts, so an fp8 MoE is marked emulated).

Emulated means the numerics of the format are reproduced but the arithmetic runs in bf16/fp32:
accuracy figures are meaningful, speed and energy are not. Every result from an emulated path
says "emulated, no energy claim" (:attr:`PrecisionPlan.note`).

Phase 1: :func:`quantize` (model → state dict) and :func:`save_quantized` (→ one safetensors
file with the precision, group size and shape in its metadata). Phase 2:
:func:`load_quantized_into` swaps empty quantized modules into a model skeleton and loads the
file. :func:`quantize_in_place` does both in memory, one layer at a time, so a model whose bf16
weights would not fit can still be quantized from random weights.

``perwatt quantize`` (:mod:`perwatt.engine.quantized_dir`) writes phase 1 into a directory
(weights, a manifest and, for a checkpoint, its config and tokenizer) that ``perwatt serve --model
DIR`` and ``perwatt bench --engine builtin --model DIR`` load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from perwatt.engine.config import ModelConfig, RopeScaling
from perwatt.engine.model import Experts
from perwatt.engine.precision import PrecisionPlan
from perwatt.engine.weights import materialize_meta_
from perwatt.errors import ConfigError, DataFormatError

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
INT4_GROUP_SIZES = (128, 64, 32)
NVFP4_BLOCK = 16
# E2M1 magnitudes for codes 0..7; bit 3 is the sign (OCP Microscaling spec v1.0, FP4 E2M1).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_TINYGEMM_INNER_K_TILES = 8


# ----------------------------------------------------------------------------- modules


class QuantLinear(nn.Module):
    """Common base: shapes, optional bias, and :meth:`dequantize` (the reference weights)."""

    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, has_bias: bool, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if has_bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype))
        else:
            self.bias = None

    def dequantize(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(QuantLinear):
    weight: Tensor
    scales: Tensor

    def __init__(self, k: int, n: int, has_bias: bool, dtype: torch.dtype) -> None:
        super().__init__(k, n, has_bias, dtype)
        self.register_buffer("weight", torch.zeros(n, k, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(n, dtype=dtype))

    @staticmethod
    def quantize_weight(w: Tensor) -> dict[str, Tensor]:
        w32 = w.float()  # [..., N, K]: one scale per output channel
        scales = (w32.abs().amax(dim=-1) / 127.0).clamp(min=1e-10)
        q = torch.round(w32 / scales[..., None]).clamp(-127, 127).to(torch.int8)
        return {"weight": q, "scales": scales}

    def forward(self, x: Tensor) -> Tensor:
        return self._add_bias(F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype))

    def dequantize(self) -> Tensor:
        return dequantize_tensors("int8", {"weight": self.weight, "scales": self.scales}, 0)


def pack_nibbles(q: Tensor) -> Tensor:
    """[..., K] codes in 0..15 → uint8 [..., K/2], even k in the high nibble (tinygemm's order)."""
    q = q.to(torch.uint8)
    return (q[..., ::2] << 4) | q[..., 1::2]


def unpack_nibbles(p: Tensor) -> Tensor:
    """Inverse of :func:`pack_nibbles`: uint8 [..., K/2] → uint8 [..., K]."""
    return torch.stack([p >> 4, p & 0x0F], dim=-1).reshape(*p.shape[:-1], -1)


class Int4Linear(QuantLinear):
    packed: Tensor
    scales: Tensor
    zeros: Tensor

    def __init__(self, k: int, n: int, has_bias: bool, dtype: torch.dtype, group_size: int):
        super().__init__(k, n, has_bias, dtype)
        if k % group_size or k % 2:
            raise ConfigError(f"int4: in_features {k} not divisible by group size {group_size}")
        self.group_size = group_size
        self.register_buffer("packed", torch.zeros(n, k // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(n, k // group_size, dtype=torch.bfloat16))
        self.register_buffer("zeros", torch.zeros(n, k // group_size, dtype=torch.bfloat16))
        self.kernel = "dequant"
        self._tg_weight: Tensor | None = None
        self._tg_sz: Tensor | None = None
        self._cpu_weight: Tensor | None = None
        self._cpu_sz: Tensor | None = None

    @staticmethod
    def quantize_weight(w: Tensor, group_size: int) -> dict[str, Tensor]:
        *lead, k = w.shape
        wg = w.float().reshape(*lead, k // group_size, group_size)
        lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
        # Scales and zeros are stored in bf16: quantize against the rounded values so that
        # dequantization reproduces the nearest grid point exactly.
        scales = ((hi - lo) / 15.0).clamp(min=1e-6).to(torch.bfloat16)
        zeros = (lo + scales.float() * 8.0).to(torch.bfloat16)
        base = zeros.float() - 8.0 * scales.float()  # value of code 0
        q = torch.round((wg - base[..., None]) / scales.float()[..., None]).clamp(0, 15)
        return {"packed": pack_nibbles(q.reshape(*lead, k)), "scales": scales, "zeros": zeros}

    def dequantize(self) -> Tensor:
        t = {"packed": self.packed, "scales": self.scales, "zeros": self.zeros}
        return dequantize_tensors("int4", t, self.group_size)

    def use_tinygemm(self) -> bool:
        """Switch to ``aten._weight_int4pack_mm`` (CUDA, sm_80+). False when the shape or this
        torch build does not allow it; the layer then keeps dequantizing."""
        k, n, g = self.in_features, self.out_features, self.group_size
        if self.packed.device.type != "cuda" or k % (_TINYGEMM_INNER_K_TILES * 16) or n % 8:
            return False
        if g not in (32, 64, 128, 256):
            return False
        try:
            w = torch.ops.aten._convert_weight_to_int4pack(self.packed, _TINYGEMM_INNER_K_TILES)
            sz = torch.stack([self.scales, self.zeros], dim=-1).transpose(0, 1).contiguous()
            # One probe call: some builds expose the op but not for this device.
            x = torch.zeros(1, k, dtype=torch.bfloat16, device=self.packed.device)
            torch.ops.aten._weight_int4pack_mm(x, w, g, sz)
        except (RuntimeError, NotImplementedError):
            return False
        self._tg_weight, self._tg_sz = w, sz
        self.kernel = "tinygemm"
        return True

    def use_cpu_kernel(self) -> bool:
        """Switch to ``aten._weight_int4pack_mm_for_cpu`` (same (q - 8) * scale + zero format,
        fp32 activations). False when this torch build lacks it; the layer keeps dequantizing."""
        if self.packed.device.type != "cpu" or self.in_features % (_TINYGEMM_INNER_K_TILES * 16):
            return False
        try:
            codes = unpack_nibbles(self.packed).to(torch.int32)
            w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _TINYGEMM_INNER_K_TILES)
            sz = torch.stack([self.scales, self.zeros], dim=-1).transpose(0, 1).contiguous()
            x = torch.zeros(1, self.in_features)
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, self.group_size, sz.float())
        except (RuntimeError, NotImplementedError, AttributeError):
            return False
        self._cpu_weight, self._cpu_sz = w, sz.float()
        self.kernel = "int4pack-cpu"
        return True

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if self._tg_weight is not None and self._tg_sz is not None:
            x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch.ops.aten._weight_int4pack_mm(
                x2, self._tg_weight, self.group_size, self._tg_sz
            )
            return self._add_bias(y.to(x.dtype).reshape(*shape[:-1], self.out_features))
        if self._cpu_weight is not None and self._cpu_sz is not None:
            x2 = x.reshape(-1, self.in_features).float()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self._cpu_weight, self.group_size, self._cpu_sz
            )
            return self._add_bias(y.to(x.dtype).reshape(*shape[:-1], self.out_features))
        return self._add_bias(F.linear(x, self.dequantize().to(x.dtype)))


def fake_quant_fp8_rows(x: Tensor) -> Tensor:
    """Quantize-dequantize ``x`` to E4M3 with one scale per row (the activations' numerics)."""
    x32 = x.float()
    scale = (x32.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    q = (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(x.dtype)


class FP8Linear(QuantLinear):
    weight: Tensor
    w_scale: Tensor

    def __init__(self, k: int, n: int, has_bias: bool, dtype: torch.dtype) -> None:
        super().__init__(k, n, has_bias, dtype)
        self.register_buffer("weight", torch.zeros(n, k, dtype=torch.float8_e4m3fn))
        self.register_buffer("w_scale", torch.ones(n, dtype=torch.float32))
        self.native = False

    @staticmethod
    def quantize_weight(w: Tensor) -> dict[str, Tensor]:
        w32 = w.float()
        scale = (w32.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)
        q = (w32 / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return {"weight": q, "w_scale": scale}

    def dequantize(self) -> Tensor:
        return dequantize_tensors("fp8", {"weight": self.weight, "w_scale": self.w_scale}, 0)

    def forward(self, x: Tensor) -> Tensor:
        if not self.native:
            xq = fake_quant_fp8_rows(x)
            return self._add_bias(F.linear(xq, self.dequantize().to(x.dtype)))
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        pad = (-m) % 16  # keep every dimension a multiple of 16, as the FP8 GEMMs want
        if pad:
            x2 = F.pad(x2, (0, 0, 0, pad))
        x32 = x2.float()
        x_scale = (x32.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)  # [M, 1]
        xq = (x32 / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(
            xq,
            self.weight.t(),  # [K, N], column-major as the kernel requires
            scale_a=x_scale,
            scale_b=self.w_scale[None, :],  # [1, N]: row-wise scaling on both operands
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
        y = y[:m].to(x.dtype)
        return self._add_bias(y.reshape(*shape[:-1], self.out_features))


_E2M1 = torch.tensor(E2M1_VALUES)
_E2M1_SIGNED = torch.cat([_E2M1, -_E2M1])
# Midpoints between neighbouring magnitudes: bucketize picks the nearest representable value.
_E2M1_EDGES = (_E2M1[1:] + _E2M1[:-1]) / 2


class NVFP4Linear(QuantLinear):
    """NVFP4 weights (E2M1 codes, E4M3 scale per 16, fp32 global scale), weight-only emulation."""

    packed: Tensor
    block_scale: Tensor
    global_scale: Tensor

    def __init__(self, k: int, n: int, has_bias: bool, dtype: torch.dtype) -> None:
        super().__init__(k, n, has_bias, dtype)
        if k % NVFP4_BLOCK:
            raise ConfigError(f"nvfp4: in_features {k} not divisible by {NVFP4_BLOCK}")
        self.register_buffer("packed", torch.zeros(n, k // 2, dtype=torch.uint8))
        self.register_buffer(
            "block_scale", torch.ones(n, k // NVFP4_BLOCK, dtype=torch.float8_e4m3fn)
        )
        self.register_buffer("global_scale", torch.ones((), dtype=torch.float32))

    @staticmethod
    def quantize_weight(w: Tensor) -> dict[str, Tensor]:
        *lead, k = w.shape
        wb = w.float().reshape(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK)
        # Global scale maps the tensor's absmax onto (largest E2M1) x (largest E4M3).
        gscale = (w.float().abs().amax() / (6.0 * FP8_MAX)).clamp(min=1e-12)
        bscale = (wb.abs().amax(dim=-1) / 6.0 / gscale).clamp(max=FP8_MAX).to(torch.float8_e4m3fn)
        denom = bscale.float() * gscale
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
        scaled = (wb / denom[..., None]).clamp(-6.0, 6.0)
        mag = torch.bucketize(scaled.abs(), _E2M1_EDGES.to(w.device))
        code = mag + 8 * ((scaled < 0) & (mag > 0)).to(mag.dtype)
        return {
            "packed": pack_nibbles(code.reshape(*lead, k)),
            "block_scale": bscale,
            "global_scale": gscale,
        }

    def dequantize(self) -> Tensor:
        t = {
            "packed": self.packed,
            "block_scale": self.block_scale,
            "global_scale": self.global_scale,
        }
        return dequantize_tensors("nvfp4", t, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self._add_bias(F.linear(x, self.dequantize().to(x.dtype)))


def dequantize_tensors(precision: str, t: dict[str, Tensor], group_size: int) -> Tensor:
    """fp32 weights [..., N, K] from a format's stored tensors (any leading dims)."""
    if precision == "int8":
        return t["weight"].float() * t["scales"].float()[..., None]
    if precision == "fp8":
        return t["weight"].float() * t["w_scale"].float()[..., None]
    if precision == "int4":
        q = unpack_nibbles(t["packed"]).float()
        *lead, k = q.shape
        q = q.reshape(*lead, k // group_size, group_size)
        w = (q - 8.0) * t["scales"].float()[..., None] + t["zeros"].float()[..., None]
        return w.reshape(*lead, k)
    if precision == "nvfp4":
        codes = unpack_nibbles(t["packed"]).long()
        *lead, k = codes.shape
        vals = _E2M1_SIGNED.to(codes.device)[codes].reshape(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK)
        w = vals * (t["block_scale"].float() * t["global_scale"])[..., None]
        return w.reshape(*lead, k)
    raise ConfigError(f"not a quantized precision: {precision!r}")


def _buffer_specs(
    precision: str, lead: tuple[int, ...], n: int, k: int, dtype: torch.dtype, group: int
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of a format's stored tensors for weights [*lead, N, K]."""
    if precision == "int8":
        return {"weight": ((*lead, n, k), torch.int8), "scales": ((*lead, n), dtype)}
    if precision == "fp8":
        return {
            "weight": ((*lead, n, k), torch.float8_e4m3fn),
            "w_scale": ((*lead, n), torch.float32),
        }
    if precision == "int4":
        if k % group:
            raise ConfigError(f"int4: in_features {k} not divisible by group size {group}")
        return {
            "packed": ((*lead, n, k // 2), torch.uint8),
            "scales": ((*lead, n, k // group), torch.bfloat16),
            "zeros": ((*lead, n, k // group), torch.bfloat16),
        }
    if precision == "nvfp4":
        if k % NVFP4_BLOCK:
            raise ConfigError(f"nvfp4: in_features {k} not divisible by {NVFP4_BLOCK}")
        return {
            "packed": ((*lead, n, k // 2), torch.uint8),
            "block_scale": ((*lead, n, k // NVFP4_BLOCK), torch.float8_e4m3fn),
            "global_scale": ((), torch.float32),
        }
    raise ConfigError(f"not a quantized precision: {precision!r}")


class QuantTensor(nn.Module):
    """One stacked quantized weight [E, N, K] (expert weights), gathered before dequantizing so
    only the selected experts' bytes are read."""

    def __init__(
        self, precision: str, shape: tuple[int, int, int], dtype: torch.dtype, group: int
    ) -> None:
        super().__init__()
        self.precision, self.shape, self.group = precision, shape, group
        e, n, k = shape
        specs = _buffer_specs(precision, (e,), n, k, dtype, group)
        self.buffer_names = tuple(specs)  # a fixed tuple: simple for torch.compile to trace
        for name, (shp, dt) in specs.items():
            init = torch.ones if name in ("scales", "w_scale", "global_scale") else torch.zeros
            self.register_buffer(name, init(shp, dtype=dt))

    def dequant(self, idx: Tensor | int | None) -> Tensor:
        t: dict[str, Tensor] = {}
        for name in self.buffer_names:
            buf: Tensor = getattr(self, name)
            t[name] = buf if idx is None or buf.dim() == 0 else buf[idx]
        return dequantize_tensors(self.precision, t, self.group)


class QuantExperts(nn.Module):
    """Quantized stand-in for :class:`perwatt.engine.model.Experts` (same ``weight`` accessor).

    Experts always dequantize the gathered weights and multiply in the compute dtype (no int4 or
    FP8 kernel for batched experts here); for fp8 the activations are fake-quantized per row so
    the numerics match the dense layers."""

    def __init__(
        self, precision: str, n: int, dim: int, hidden: int, dtype: torch.dtype, group: int
    ) -> None:
        super().__init__()
        self.precision, self.n, self.dim, self.hidden = precision, n, dim, hidden
        self.w13 = QuantTensor(precision, (n, 2 * hidden, dim), dtype, group)
        self.w2 = QuantTensor(precision, (n, dim, hidden), dtype, group)

    def weight(self, name: str, idx: Tensor | int | None, dtype: torch.dtype) -> Tensor:
        qt = self.w13 if name == "w13" else self.w2
        return qt.dequant(idx).to(dtype)

    def prepare_input(self, x: Tensor) -> Tensor:
        return fake_quant_fp8_rows(x) if self.precision == "fp8" else x


# ----------------------------------------------------------------------------- phase 1


def _is_target(name: str, mod: nn.Module) -> bool:
    if not isinstance(mod, nn.Linear):
        return False
    # The MoE router and the shared-expert gate stay unquantized (see module docstring).
    return not (name.endswith("feed_forward.gate") or name.endswith("shared_expert_gate"))


def target_experts(model: nn.Module) -> list[str]:
    """Names of the stacked MoE expert modules a quantized precision replaces."""
    return [n for n, m in model.named_modules() if isinstance(m, Experts)]


def target_linears(model: nn.Module) -> list[str]:
    """Names of the linear layers a quantized precision replaces."""
    return [n for n, m in model.named_modules() if _is_target(n, m)]


def choose_group_size(model: nn.Module, group_size: int | None) -> int:
    """The int4 group: ``group_size`` if it divides every layer's in_features, else an error
    naming one that does; None picks the largest of 128, 64, 32 that fits every layer."""
    ks: dict[str, int] = {}
    for n in target_linears(model):
        lin = model.get_submodule(n)
        assert isinstance(lin, nn.Linear)
        ks[n] = lin.in_features
    for n in target_experts(model):
        ex = model.get_submodule(n)
        assert isinstance(ex, Experts)
        ks[f"{n}.w13"], ks[f"{n}.w2"] = ex.dim, ex.hidden
    fits = [g for g in INT4_GROUP_SIZES if all(k % g == 0 for k in ks.values())]
    if group_size is None:
        if not fits:
            raise ConfigError("int4: no group size of 128, 64 or 32 divides every layer width")
        return fits[0]
    bad = [n for n, k in ks.items() if k % group_size]
    if bad:
        hint = f"use group size {fits[0]}" if fits else "use int8"
        raise ConfigError(
            f"int4: group size {group_size} does not divide in_features "
            f"{ks[bad[0]]} of {bad[0]}; {hint}"
        )
    return group_size


def _quantize_weight(precision: str, w: Tensor, group_size: int) -> dict[str, Tensor]:
    if precision == "int8":
        return Int8Linear.quantize_weight(w)
    if precision == "int4":
        return Int4Linear.quantize_weight(w, group_size)
    if precision == "fp8":
        return FP8Linear.quantize_weight(w)
    if precision == "nvfp4":
        return NVFP4Linear.quantize_weight(w)
    raise ConfigError(f"not a quantized precision: {precision!r}")


def empty_module(
    precision: str, k: int, n: int, has_bias: bool, dtype: torch.dtype, group_size: int
) -> QuantLinear:
    if precision == "int8":
        return Int8Linear(k, n, has_bias, dtype)
    if precision == "int4":
        return Int4Linear(k, n, has_bias, dtype, group_size)
    if precision == "fp8":
        return FP8Linear(k, n, has_bias, dtype)
    if precision == "nvfp4":
        return NVFP4Linear(k, n, has_bias, dtype)
    raise ConfigError(f"not a quantized precision: {precision!r}")


def quantize(
    model: nn.Module, precision: str, *, group_size: int | None = None
) -> dict[str, Tensor]:
    """Phase 1: the state dict of ``model`` with every target linear (and stacked MoE experts)
    quantized to ``precision``. ``model`` is left unchanged. Save with :func:`save_quantized`."""
    group = choose_group_size(model, group_size) if precision == "int4" else 0
    targets = set(target_linears(model))
    experts = set(target_experts(model))
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            mod_name, _, leaf = name.rpartition(".")
            if mod_name in experts or (mod_name in targets and leaf != "bias"):
                continue
            out[name] = t.detach().clone()
        for name in targets:
            lin = model.get_submodule(name)
            assert isinstance(lin, nn.Linear)
            for leaf, t in _quantize_weight(precision, lin.weight, group).items():
                out[f"{name}.{leaf}"] = t
        for name in experts:
            ex = model.get_submodule(name)
            assert isinstance(ex, Experts)
            for wname in ("w13", "w2"):
                w = getattr(ex, wname)
                for leaf, t in _quantize_weight(precision, w, group).items():
                    out[f"{name}.{wname}.{leaf}"] = t
    return out


def save_quantized(
    path: str | Path,
    state_dict: dict[str, Tensor],
    *,
    cfg: ModelConfig,
    precision: str,
    group_size: int | None = None,
) -> Path:
    """Write a quantized state dict as one safetensors file (``.tmp`` then rename)."""
    path = Path(path)
    seen: dict[tuple[int, int], str] = {}  # (storage pointer, offset) -> first name
    tensors: dict[str, Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach().contiguous().cpu()
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        # safetensors refuses shared storage (tied weights): store a copy.
        tensors[name] = t.clone() if key in seen and t.numel() else t
        seen.setdefault(key, name)
    meta = {
        "perwatt.precision": precision,
        "perwatt.group_size": str(group_size or 0),
        "perwatt.model": json.dumps(cfg.to_dict()),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_quantized_metadata(path: str | Path) -> dict[str, Any]:
    """``{"precision", "group_size", "model"}`` from a file written by :func:`save_quantized`."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise DataFormatError(f"{path}: cannot read quantized weights: {e}") from e
    if "perwatt.precision" not in meta:
        raise DataFormatError(f"{path}: not a perwatt quantized file (no perwatt.precision)")
    return {
        "precision": meta["perwatt.precision"],
        "group_size": int(meta.get("perwatt.group_size", "0")),
        "model": json.loads(meta.get("perwatt.model", "{}")),
    }


# ----------------------------------------------------------------------------- phase 2


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def finalize_for_device(model: nn.Module, plan: PrecisionPlan) -> None:
    """Pick each layer's kernel for the device (tinygemm int4, native FP8)."""
    for mod in model.modules():
        if isinstance(mod, Int4Linear) and "tinygemm" in plan.kernel:
            mod.use_tinygemm()
        elif isinstance(mod, Int4Linear) and "int4pack-cpu" in plan.kernel:
            mod.use_cpu_kernel()
        elif isinstance(mod, FP8Linear):
            mod.native = not plan.emulated


def quantize_in_place(
    model: nn.Module,
    precision: str,
    *,
    plan: PrecisionPlan,
    group_size: int | None = None,
    weight_source: Callable[[str, torch.Size], Tensor] | None = None,
    finalize: bool = True,
) -> int:
    """Quantize and swap every target linear, one layer at a time; returns the group size.

    ``weight_source(param_name, shape)`` supplies fp32 values for tensors still on the meta
    device (seeded random weights); otherwise each layer's own tensors are used and released.
    ``finalize=False`` skips :func:`finalize_for_device`: a model quantized only to be saved
    never runs, and the kernel-layout copies it would build (an int4 layer's tinygemm or CPU
    int4pack weight, as large as the packed codes) would double the weights' memory."""
    group = choose_group_size(model, group_size) if precision == "int4" else 0
    dtype = plan.compute_dtype

    def fetch(t: Tensor, pname: str) -> Tensor:
        if not t.is_meta:
            return t
        if weight_source is None:
            raise ConfigError(f"{pname} has no values to quantize")
        return weight_source(pname, t.shape)

    with torch.no_grad():
        for name in target_linears(model):
            lin = model.get_submodule(name)
            assert isinstance(lin, nn.Linear)
            w = fetch(lin.weight, f"{name}.weight")
            bias = None if lin.bias is None else fetch(lin.bias, f"{name}.bias")
            # Quantize the compute-dtype weights: the unquantized reference holds exactly these.
            qt = _quantize_weight(precision, w.to(dtype), group)
            with torch.device(w.device):  # allocate the new buffers where the weights live
                q = empty_module(
                    precision, lin.in_features, lin.out_features, bias is not None, dtype, group
                )
            for leaf, t in qt.items():
                getattr(q, leaf).copy_(t)
            if bias is not None:
                assert q.bias is not None
                q.bias.copy_(bias)
            _swap(model, name, q)
            del lin, w, bias
        for name in target_experts(model):
            ex = model.get_submodule(name)
            assert isinstance(ex, Experts)
            w13 = fetch(ex.w13, f"{name}.w13")
            w2 = fetch(ex.w2, f"{name}.w2")
            with torch.device(w13.device):
                qe = QuantExperts(precision, ex.n, ex.dim, ex.hidden, dtype, group)
            for holder, w in ((qe.w13, w13), (qe.w2, w2)):
                for leaf, t in _quantize_weight(precision, w.to(dtype), group).items():
                    getattr(holder, leaf).copy_(t)
            _swap(model, name, qe)
            del ex, w13, w2
    if finalize:
        finalize_for_device(model, plan)
    return group


def _with_new_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved shape with the fields added since it was written (biases, the EOS list, more
    RoPE parameters) at the values every shape had before they existed."""
    out = {"o_bias": False, "mlp_bias": False, **saved}
    if "eos_token_ids" not in out:
        eos = out.get("eos_token_id")
        out["eos_token_ids"] = [] if eos is None else [eos]
    rs = out.get("rope_scaling")
    if isinstance(rs, dict):
        defaults = {f.name: f.default for f in dataclasses.fields(RopeScaling) if f.name not in rs}
        out["rope_scaling"] = {**rs, **defaults}
    return out


def load_quantized_into(
    model: nn.Module,
    path: str | Path,
    *,
    precision: str,
    plan: PrecisionPlan,
    device: torch.device,
) -> int:
    """Phase 2: swap empty quantized modules into ``model`` (built on the meta device, already in
    the compute dtype), materialise it on ``device`` and load ``path``. Returns the group size."""
    meta = read_quantized_metadata(path)
    if meta["precision"] != precision:
        raise ConfigError(
            f"{path} holds {meta['precision']} weights, not {precision}; "
            f"use --precision {meta['precision']}"
        )
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    mine = {
        k: v
        for k, v in json.loads(json.dumps(cfg.to_dict())).items()
        if k not in ("name", "source")
    }
    theirs = _with_new_defaults(
        {k: v for k, v in meta["model"].items() if k not in ("name", "source")}
    )
    if mine != theirs:
        diff = sorted(k for k in mine if mine.get(k) != theirs.get(k))
        raise DataFormatError(
            f"{path} was quantized from a different shape ({meta['model'].get('name')}); "
            f"differs in {', '.join(diff) or 'keys'}"
        )
    group = int(meta["group_size"])
    dtype = plan.compute_dtype
    for name in target_linears(model):
        lin = model.get_submodule(name)
        assert isinstance(lin, nn.Linear)
        with torch.device(device):  # straight onto the engine's device
            q = empty_module(
                precision, lin.in_features, lin.out_features, lin.bias is not None, dtype, group
            )
        _swap(model, name, q)
    for name in target_experts(model):
        ex = model.get_submodule(name)
        assert isinstance(ex, Experts)
        with torch.device(device):
            qe = QuantExperts(precision, ex.n, ex.dim, ex.hidden, dtype, group)
        _swap(model, name, qe)
    target = device
    materialize_meta_(model, target)
    try:
        sd = load_file(str(path), device=str(target))
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise DataFormatError(f"{path}: cannot read quantized weights: {e}") from e
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise DataFormatError(
            f"{path}: does not fit the model: {' '.join(first[1:3]) or first[0]}"
        ) from e
    finalize_for_device(model, plan)
    return group
