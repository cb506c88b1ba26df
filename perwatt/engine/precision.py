"""Devices and precisions: :func:`resolve_device`, :class:`PrecisionPlan` and :func:`plan_precision`.

Float precisions (``fp32``/``fp16``/``bf16``) set the dtype of everything. Quantized ones
(``fp8``, ``int8``, ``int4``, ``nvfp4``; formats in :mod:`perwatt.engine.quant`) keep the
unquantized parts in bf16 on CUDA (fp16 before sm_80) and fp32 on CPU, and say when they only
emulate the format (numerics right, speed and energy meaningless). Both the engine
(:mod:`perwatt.engine.generate`) and the quantized layers (:mod:`perwatt.engine.quant`) read the
plan, so it lives here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perwatt.errors import ConfigError, UnknownDeviceError

NO_ENERGY_CLAIM = "emulated, no energy claim"
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
QUANTIZED_PRECISIONS = ("fp8", "int8", "int4", "nvfp4")
PRECISIONS = (*FLOAT_DTYPES, *QUANTIZED_PRECISIONS)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA GPU if there is one, else the CPU."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ConfigError(f"bad device {device!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnknownDeviceError(
                f"device {device!r} asked for, but torch sees no CUDA GPU here; "
                "use --device cpu (or auto)"
            )
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UnknownDeviceError(
                f"no GPU {index}: this machine has {torch.cuda.device_count()} (0-based)"
            )
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise ConfigError(f"unsupported device type {dev.type!r}: use cpu or cuda")
    return dev


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionPlan:
    """How a precision runs on a device: the dtype of the unquantized parts, whether the result is
    an emulation (numerics only; its speed and energy say nothing about the real format), and which
    kernel the linear layers use."""

    precision: str
    compute_dtype: torch.dtype
    emulated: bool
    kernel: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}")


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def plan_precision(
    precision: str, device: torch.device, *, allow_emulated: bool = True
) -> PrecisionPlan:
    """Check ``precision`` against ``device``; :class:`ConfigError` names an alternative."""
    p = precision.strip().lower()
    if p not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    cap = _capability(device)
    if p in FLOAT_DTYPES:
        if p == "bf16" and cap is not None and cap < (8, 0):
            raise ConfigError(
                f"bf16 needs compute capability 8.0+ (Ampere), this GPU is sm_{cap[0]}{cap[1]}; "
                "use --precision fp16"
            )
        return PrecisionPlan(
            precision=p, compute_dtype=FLOAT_DTYPES[p], emulated=False, kernel="dense"
        )
    return plan_quantized(p, device, cap, allow_emulated=allow_emulated)


def _probe_scaled_mm(device: torch.device) -> str | None:
    """None when row-wise ``torch._scaled_mm`` runs on ``device``, else the reason."""
    try:
        a = torch.zeros(16, 32, device=device).to(torch.float8_e4m3fn)
        b = torch.zeros(16, 32, device=device).to(torch.float8_e4m3fn)
        torch._scaled_mm(
            a,
            b.t(),
            scale_a=torch.ones(16, 1, device=device),
            scale_b=torch.ones(1, 16, device=device),
            out_dtype=torch.bfloat16,
        )
    except (RuntimeError, NotImplementedError) as e:
        return str(e).splitlines()[0]
    return None


def plan_quantized(
    precision: str,
    device: torch.device,
    cap: tuple[int, int] | None,
    *,
    allow_emulated: bool = True,
) -> PrecisionPlan:
    """How ``precision`` runs on ``device`` (compute capability ``cap``, None on CPU)."""
    # CPU: fp32 (bf16 matmuls are slow there and the CPU reference is fp32); GPUs: bf16 where
    # the tensor cores have it (sm_80+), else fp16.
    dtype = torch.float32 if cap is None else torch.bfloat16 if cap >= (8, 0) else torch.float16
    where = "CPU" if cap is None else f"sm_{cap[0]}{cap[1]}"
    if precision == "int8":
        return PrecisionPlan(
            precision="int8", compute_dtype=dtype, emulated=False, kernel="int8 weight-only"
        )
    if precision == "int4":
        if cap is None:
            kernel = "int4pack-cpu"
        elif cap >= (8, 0):
            kernel = "tinygemm"
        else:
            kernel = "dequant"
        return PrecisionPlan(
            precision="int4",
            compute_dtype=dtype,
            emulated=False,
            kernel=f"int4 weight-only ({kernel}; dequantize where a layer's shape does not fit)",
            note="" if kernel != "dequant" else "int4 dequantized in the matmul (no int4 kernel)",
        )
    if precision == "fp8":
        why = f"no FP8 tensor cores on {where} (needs sm_89+: Ada, Hopper or newer)"
        if cap is not None and cap >= (8, 9):
            failure = _probe_scaled_mm(device)
            if failure is None:
                return PrecisionPlan(
                    precision="fp8",
                    compute_dtype=dtype,
                    emulated=False,
                    kernel="torch._scaled_mm row-wise",
                )
            why = f"row-wise torch._scaled_mm failed on {where}: {failure}"
        if not allow_emulated:
            raise ConfigError(f"fp8: {why}; use int8 or bf16 here, or allow emulation")
        return PrecisionPlan(
            precision="fp8",
            compute_dtype=dtype,
            emulated=True,
            kernel="fp8 emulated (dequantize)",
            note=f"fp8 {NO_ENERGY_CLAIM}: {why}",
        )
    if precision == "nvfp4":
        why = (
            "native NVFP4 matmul is not implemented in this engine yet"
            if cap is not None and cap >= (10, 0)
            else f"no FP4 tensor cores on {where} (needs Blackwell, sm_100)"
        )
        if not allow_emulated:
            raise ConfigError(f"nvfp4: {why}; use fp8 or int4, or allow emulation")
        return PrecisionPlan(
            precision="nvfp4",
            compute_dtype=dtype,
            emulated=True,
            kernel="nvfp4 weight-only emulation (dequantize)",
            note=f"nvfp4 {NO_ENERGY_CLAIM}: {why}",
        )
    raise ConfigError(f"not a quantized precision: {precision!r}")
