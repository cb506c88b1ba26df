"""NVIDIA GPUs through NVML (the official ``nvidia-ml-py`` bindings, module ``pynvml``).

Two ways to get a GPU's energy, chosen per device when the source opens:

* **Energy counter** (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption`` returns millijoules
  since the driver loaded. A window's energy is the difference of two reads; labelled
  ``nvml-counter``. On an H100 the counter changed about every 100 ms (ARCHITECTURE.md, measured facts), hence
  ``counter_period_s = 0.1``: shorter windows are flagged by the meter and integrated instead.
* **Instant power** (every generation): ``nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)``
  where the driver has that field, else ``nvmlDeviceGetPowerUsage``, both milliwatts. The meter
  integrates the sampled readings (trapezoid rule); labelled ``nvml-power-integral``.

One :class:`NVMLSource` reports one capability class best: :func:`open_nvml_sources` (used by
auto-detection) opens one source for the GPUs with a counter and another for those without, so the
meter reads counters at window edges for the first and power at the edges for the second. A single
source over mixed GPUs also works (counterless devices are integrated from the timeline).

Device labels are ``gpu<i>`` where ``i`` is the index *the user sees*: with
``CUDA_VISIBLE_DEVICES=2,3`` the labels are ``gpu0`` (physical GPU 2) and ``gpu1`` (physical 3),
matching ``cuda:0``/``cuda:1`` in PyTorch. Entries may be indices or ``GPU-`` UUID prefixes; perwatt
assumes CUDA enumerates in PCI bus order like NVML (set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` on hosts
with mixed GPU models, where CUDA's default "fastest first" order can differ). Unlike CUDA, which
silently drops everything after an invalid entry, perwatt refuses an invalid entry: metering a
different set of GPUs than the job uses would be worse than stopping.

NVML errors are mapped once, here, and raised ``from`` the original::

    pynvml.NVMLError
    ├── LibraryNotFound / DriverNotLoaded / Uninitialized / LibRmVersionMismatch
    │       → perwatt.errors.NVMLNotFoundError   (no usable driver: use another --source)
    ├── NotSupported / FunctionNotFound          → NotSupportedError
    ├── NoPermission                             → NoPermissionError   (needs root/CAP_SYS_ADMIN)
    ├── GpuIsLost / Unknown / ResetRequired      → DeviceLostError     (check nvidia-smi, dmesg Xid)
    └── anything else                            → DeviceError
    ImportError of pynvml                        → NVMLNotFoundError   (pip install nvidia-ml-py)

The read-only GPU information (:class:`GPUInfo`, used by ``perwatt env``) and the clock/power-limit
setters on :class:`NVMLGPU` (used by perwatt.train's frequency controller) live here too, so every
NVML call goes through the same error mapping and unit conversion.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from perwatt.errors import (
    ConfigError,
    DeviceError,
    DeviceLostError,
    NoPermissionError,
    NotSupportedError,
    NVMLNotFoundError,
    PerwattError,
    SourceUnavailableError,
    UnknownDeviceError,
)
from perwatt.meter.source import PowerSource

# NVML return codes (nvml.h; identical in pynvml and perwatt.meter.testing). Matching on the
# integer code, not the exception class, keeps the mapping valid for the real module and the fake.
_LIBRARY_MISSING: Final = frozenset(
    {1, 9, 12, 18}
)  # Uninitialized, DriverNotLoaded, LibNotFound, RM mismatch
_NOT_SUPPORTED: Final = frozenset({3, 13})  # NotSupported, FunctionNotFound
_NO_PERMISSION: Final = 4
_LOST: Final = frozenset({15, 16, 999})  # GpuIsLost, ResetRequired, Unknown
_INVALID_ARGUMENT: Final = 2
_NOT_FOUND: Final = 6

#: Counter update period: the H100 counter changed about every 100 ms (ARCHITECTURE.md, measured facts).
COUNTER_PERIOD_S: Final = 0.1
#: Read several GPUs' counters concurrently when reading them one after another takes longer.
_CONCURRENT_READ_THRESHOLD_S: Final = 0.5e-3

_ARCH_NAMES: Final = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada",
    9: "Hopper",
    10: "Blackwell",
}
_ARCH_VOLTA: Final = 5
_CAP_SYS_ADMIN_BIT: Final = 21  # linux/capability.h


def load_nvml(nvml: Any | None = None) -> Any:
    """The NVML module: ``nvml`` when given (a fake), else ``pynvml`` imported now."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError as e:
        raise NVMLNotFoundError(
            "the NVML Python bindings are not installed: pip install nvidia-ml-py"
        ) from e
    return pynvml


def is_fake(nvml: Any) -> bool:
    """True for :class:`perwatt.meter.testing.FakeNVML` (every output must then say so)."""
    return bool(getattr(nvml, "perwatt_fake", False))


def map_nvml_error(err: BaseException, what: str, device: str | None = None) -> PerwattError:
    """Translate an NVML exception into perwatt's tree, with a message that says what to do."""
    code = getattr(err, "value", None)
    where = f"{device}: " if device else ""
    if code in _LIBRARY_MISSING:
        return NVMLNotFoundError(
            f"NVML unavailable ({err}) during {what}: no usable NVIDIA driver on this machine; "
            "check `nvidia-smi`, or choose another source (--source rapl, estimated or simulated)"
        )
    if code in _NOT_SUPPORTED:
        return NotSupportedError(
            f"{where}{what} is not supported by this GPU or driver ({err}); "
            "a newer driver may add it, or perwatt falls back where it can"
        )
    if code == _NO_PERMISSION:
        return NoPermissionError(
            f"{where}{what} needs root or CAP_SYS_ADMIN ({err}); run as root (sudo) "
            "or ask an administrator to set it with nvidia-smi"
        )
    if code in _LOST:
        return DeviceLostError(
            f"{where}GPU stopped answering during {what} ({err}); check `nvidia-smi` and "
            "`dmesg` for Xid errors; the GPU may need a reset (nvidia-smi -r) or the node a reboot"
        )
    return DeviceError(f"{where}{what} failed: {err} (NVML error code {code})")


def _call(nvml: Any, what: str, device: str | None, fn: str, *args: Any) -> Any:
    """Call ``nvml.<fn>(*args)`` with errors mapped."""
    func = getattr(nvml, fn, None)
    if func is None:  # bindings older than this function
        raise NotSupportedError(
            f"{device + ': ' if device else ''}{what}: the installed nvidia-ml-py has no {fn}; "
            "upgrade it (pip install -U nvidia-ml-py)"
        )
    try:
        return func(*args)
    except nvml.NVMLError as e:
        raise map_nvml_error(e, what, device) from e


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------------- visible devices


def resolve_visible_devices(env: str | None, uuids: Sequence[str]) -> list[int]:
    """Physical NVML indices visible under ``CUDA_VISIBLE_DEVICES=env``, in visible order.

    ``uuids`` are the physical GPUs' UUIDs in NVML order. ``None`` means the variable is unset
    (all GPUs); an empty value hides every GPU; a negative index ends the list (CUDA's ``-1``
    idiom). Indices past the last GPU, UUID prefixes that match nothing, ambiguous prefixes, MIG
    instances and duplicates raise a one-line error naming the fix.
    """
    if env is None:
        return list(range(len(uuids)))
    out: list[int] = []
    for raw in env.split(","):
        entry = raw.strip()
        if not entry:
            if env.strip():
                raise ConfigError(
                    f"CUDA_VISIBLE_DEVICES={env!r} has an empty entry; use e.g. 0,1 or GPU-<uuid>"
                )
            break
        if entry.lstrip("-").isdigit():
            i = int(entry)
            if i < 0:
                break
            if i >= len(uuids):
                raise UnknownDeviceError(
                    f"CUDA_VISIBLE_DEVICES names GPU {i} but this machine has {len(uuids)} "
                    f"GPU(s) (0-{len(uuids) - 1}); fix or unset CUDA_VISIBLE_DEVICES"
                )
            phys = i
        elif entry.upper().startswith("MIG-"):
            raise ConfigError(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} is a MIG instance: NVML reports energy for "
                "whole GPUs only; name the parent GPU's index or UUID instead"
            )
        elif entry.upper().startswith("GPU-"):
            matches = [n for n, u in enumerate(uuids) if u.lower().startswith(entry.lower())]
            if not matches:
                raise UnknownDeviceError(
                    f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU UUID on this machine; "
                    "list them with `nvidia-smi -L` or `perwatt env`"
                )
            if len(matches) > 1:
                raise ConfigError(
                    f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(matches)} GPUs; "
                    "give more of the UUID"
                )
            phys = matches[0]
        else:
            raise ConfigError(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} is neither an index nor a GPU-<uuid>"
            )
        if phys in out:
            raise ConfigError(f"CUDA_VISIBLE_DEVICES lists GPU {entry!r} twice")
        out.append(phys)
    return out


# ------------------------------------------------------------------------- one GPU


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockControlCheck:
    """Whether perwatt could change this GPU's clocks/power limit, found without changing them."""

    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUInfo:
    """What ``perwatt env`` shows about one GPU. ``None`` where the GPU/driver does not say."""

    label: str
    index: int
    physical_index: int
    name: str
    uuid: str
    architecture: str
    driver_version: str
    fake: bool
    has_energy_counter: bool
    power_method: str
    power_limit_w: float | None
    default_power_limit_w: float | None
    min_power_limit_w: float | None
    max_power_limit_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    supported_mem_clocks_mhz: tuple[int, ...]
    supported_sm_clocks_mhz: tuple[int, ...]
    clock_control: ClockControlCheck
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.index < 0 or self.physical_index < 0:
            raise ValueError("GPU indices must be non-negative")

    def conditions(self) -> dict[str, Any]:
        """The fields a benchmark result records as its run conditions."""
        return {
            "name": self.name,
            "uuid": self.uuid,
            "driver": self.driver_version,
            "power_limit_w": self.power_limit_w,
            "sm_clock_mhz": self.sm_clock_mhz,
            "max_sm_clock_mhz": self.max_sm_clock_mhz,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "index": self.index,
            "physical_index": self.physical_index,
            "name": self.name,
            "uuid": self.uuid,
            "architecture": self.architecture,
            "driver_version": self.driver_version,
            "fake": self.fake,
            "has_energy_counter": self.has_energy_counter,
            "power_method": self.power_method,
            "power_limit_w": self.power_limit_w,
            "default_power_limit_w": self.default_power_limit_w,
            "min_power_limit_w": self.min_power_limit_w,
            "max_power_limit_w": self.max_power_limit_w,
            "sm_clock_mhz": self.sm_clock_mhz,
            "mem_clock_mhz": self.mem_clock_mhz,
            "max_sm_clock_mhz": self.max_sm_clock_mhz,
            "supported_mem_clocks_mhz": list(self.supported_mem_clocks_mhz),
            "supported_sm_clocks_mhz": list(self.supported_sm_clocks_mhz),
            "can_set_clocks": self.clock_control.allowed,
            "can_set_clocks_reason": self.clock_control.reason,
            "notes": list(self.notes),
        }


def _process_privileged() -> bool:
    """Root, or CAP_SYS_ADMIN in the effective set (what NVML checks for clock/limit setters)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN_BIT & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


class NVMLGPU:
    """One GPU handle with mapped errors and converted units. Built by :class:`NVMLSource`."""

    def __init__(self, nvml: Any, handle: Any, *, index: int, physical_index: int) -> None:
        self.nvml = nvml
        self.handle = handle
        self.index = index
        self.physical_index = physical_index
        self.label = f"gpu{index}"
        self._has_counter: bool | None = None
        self._power_method: str | None = None

    def _call(self, what: str, fn: str, *args: Any) -> Any:
        return _call(self.nvml, what, self.label, fn, self.handle, *args)

    # ----------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return _text(self._call("reading the GPU name", "nvmlDeviceGetName"))

    @property
    def uuid(self) -> str:
        return _text(self._call("reading the GPU UUID", "nvmlDeviceGetUUID"))

    def architecture(self) -> str:
        code = self._arch_code()
        return "unknown" if code is None else _ARCH_NAMES.get(code, f"unknown({code})")

    def _arch_code(self) -> int | None:
        try:
            return int(self._call("reading the architecture", "nvmlDeviceGetArchitecture"))
        except NotSupportedError:
            return None

    # ----------------------------------------------------------------- energy and power
    @property
    def has_energy_counter(self) -> bool:
        """Probed once: does nvmlDeviceGetTotalEnergyConsumption answer on this GPU?"""
        if self._has_counter is None:
            try:
                self.energy_mj()
                self._has_counter = True
            except NotSupportedError:
                self._has_counter = False
        return self._has_counter

    def energy_mj(self) -> int:
        return int(self._call("reading the energy counter", "nvmlDeviceGetTotalEnergyConsumption"))

    def energy_j(self) -> float:
        return self.energy_mj() / 1000.0

    @property
    def power_method(self) -> str:
        """How instant power is read, probed once: ``field-instant`` (NVML_FI_DEV_POWER_INSTANT),
        ``power-usage`` (nvmlDeviceGetPowerUsage) or ``none`` (the GPU reports no power)."""
        if self._power_method is None:
            try:
                field_ok = self._instant_field_mw() is not None
            except (DeviceLostError, NoPermissionError):
                raise
            except DeviceError:  # e.g. a driver that rejects the field id outright
                field_ok = False
            if field_ok:
                self._power_method = "field-instant"
            else:
                try:
                    self._call("reading power", "nvmlDeviceGetPowerUsage")
                    self._power_method = "power-usage"
                except NotSupportedError:
                    self._power_method = "none"
        return self._power_method

    def _instant_field_mw(self) -> int | None:
        fid = getattr(self.nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if fid is None:  # bindings older than the field
            return None
        try:
            values = self._call("reading instant power", "nvmlDeviceGetFieldValues", [fid])
        except NotSupportedError:
            return None
        v = values[0]
        if int(v.nvmlReturn) != 0:
            code = int(v.nvmlReturn)
            if code in _NOT_SUPPORTED:
                return None
            raise map_nvml_error(self.nvml.NVMLError(code), "reading instant power", self.label)
        if int(v.valueType) == 0:  # NVML_VALUE_TYPE_DOUBLE
            return round(float(v.value.dVal))
        return int(v.value.uiVal)

    def power_w(self) -> float:
        """Instant power in watts (the field where supported, else nvmlDeviceGetPowerUsage)."""
        method = self.power_method
        if method == "field-instant":
            mw = self._instant_field_mw()
            if mw is not None:
                return mw / 1000.0
        elif method == "none":
            raise NotSupportedError(f"{self.label}: this GPU reports no instant power")
        return int(self._call("reading power", "nvmlDeviceGetPowerUsage")) / 1000.0

    # ----------------------------------------------------------------- limits and clocks
    def power_limit_w(self) -> float:
        return (
            int(self._call("reading the power limit", "nvmlDeviceGetPowerManagementLimit")) / 1000.0
        )

    def default_power_limit_w(self) -> float:
        mw = self._call(
            "reading the default power limit", "nvmlDeviceGetPowerManagementDefaultLimit"
        )
        return int(mw) / 1000.0

    def power_limit_constraints_w(self) -> tuple[float, float]:
        lo, hi = self._call(
            "reading the power limit range", "nvmlDeviceGetPowerManagementLimitConstraints"
        )
        return int(lo) / 1000.0, int(hi) / 1000.0

    def clock_mhz(self, kind: str) -> int:
        """Current clock, ``kind`` ``sm`` or ``mem``."""
        const = self.nvml.NVML_CLOCK_SM if kind == "sm" else self.nvml.NVML_CLOCK_MEM
        return int(self._call(f"reading the {kind} clock", "nvmlDeviceGetClockInfo", const))

    def max_clock_mhz(self, kind: str) -> int:
        const = self.nvml.NVML_CLOCK_SM if kind == "sm" else self.nvml.NVML_CLOCK_MEM
        return int(self._call(f"reading the max {kind} clock", "nvmlDeviceGetMaxClockInfo", const))

    def supported_mem_clocks_mhz(self) -> tuple[int, ...]:
        clocks = self._call("reading supported memory clocks", "nvmlDeviceGetSupportedMemoryClocks")
        return tuple(sorted((int(c) for c in clocks), reverse=True))

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> tuple[int, ...]:
        """Supported graphics (SM) clocks at ``mem_clock_mhz`` (default: the highest), highest first."""
        if mem_clock_mhz is None:
            mems = self.supported_mem_clocks_mhz()
            if not mems:
                return ()
            mem_clock_mhz = mems[0]
        clocks = self._call(
            "reading supported graphics clocks",
            "nvmlDeviceGetSupportedGraphicsClocks",
            mem_clock_mhz,
        )
        return tuple(sorted((int(c) for c in clocks), reverse=True))

    def can_set_clocks(self) -> ClockControlCheck:
        """Could perwatt lock clocks and set the power limit here? Read-only: sets nothing.

        NVML documents nvmlDeviceSetGpuLockedClocks (Volta+) and
        nvmlDeviceSetPowerManagementLimit as needing root/admin; the API-restriction query only
        concerns application clocks, so it is reported as context, not as the answer.
        """
        arch = self._arch_code()
        if arch is not None and arch < _ARCH_VOLTA:
            return ClockControlCheck(
                allowed=False,
                reason=f"{_ARCH_NAMES.get(arch, arch)} GPU: locked clocks need Volta or newer",
            )
        fake_priv = getattr(self.nvml, "perwatt_privileged", None)
        privileged = bool(fake_priv) if fake_priv is not None else _process_privileged()
        who = (
            "fake NVML set to privileged" if fake_priv else "running as root or with CAP_SYS_ADMIN"
        )
        restricted = ""
        const = getattr(self.nvml, "NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS", None)
        if const is not None:
            try:
                r = int(
                    self._call("reading API restrictions", "nvmlDeviceGetAPIRestriction", const)
                )
                restricted = (
                    "; application clocks restricted to root"
                    if r == 1
                    else "; application clocks open to all users"
                )
            except DeviceError:
                restricted = ""
        if not privileged:
            return ClockControlCheck(
                allowed=False,
                reason=("fake NVML set to unprivileged: " if fake_priv is not None else "")
                + "not root and no CAP_SYS_ADMIN: NVML refuses locked clocks and power "
                "limits; run as root or ask an admin to run `nvidia-smi -lgc MIN,MAX`" + restricted,
            )
        return ClockControlCheck(allowed=True, reason=who + restricted)

    def lock_sm_clocks(self, min_mhz: int, max_mhz: int) -> None:
        """Lock SM clocks to ``[min_mhz, max_mhz]`` (nvmlDeviceSetGpuLockedClocks).

        Both bounds must lie within the supported graphics clocks; NVML rounds to the nearest
        supported step itself. Undo with :meth:`reset_sm_clocks`.
        """
        if not (isinstance(min_mhz, int) and isinstance(max_mhz, int)):
            raise ConfigError(f"clocks must be whole MHz, got {min_mhz!r}, {max_mhz!r}")
        if min_mhz > max_mhz:
            raise ConfigError(f"{self.label}: clock range {min_mhz}-{max_mhz} MHz is reversed")
        supported = self.supported_sm_clocks_mhz()
        if supported:
            lo, hi = min(supported), max(supported)
            if min_mhz < lo or max_mhz > hi:
                raise ConfigError(
                    f"{self.label}: SM clocks {min_mhz}-{max_mhz} MHz are outside the supported "
                    f"{lo}-{hi} MHz (see `perwatt env`)"
                )
        self._call("locking SM clocks", "nvmlDeviceSetGpuLockedClocks", min_mhz, max_mhz)

    def reset_sm_clocks(self) -> None:
        """Back to the driver's default clock policy (nvmlDeviceResetGpuLockedClocks)."""
        self._call("resetting SM clocks", "nvmlDeviceResetGpuLockedClocks")

    def set_power_limit_w(self, limit_w: float) -> None:
        """Set the power limit (nvmlDeviceSetPowerManagementLimit), checked against the range."""
        lo, hi = self.power_limit_constraints_w()
        if not lo <= limit_w <= hi:
            raise ConfigError(
                f"{self.label}: power limit {limit_w:g} W is outside the allowed {lo:g}-{hi:g} W"
            )
        self._call(
            "setting the power limit", "nvmlDeviceSetPowerManagementLimit", round(limit_w * 1000)
        )

    # ----------------------------------------------------------------- summary
    def info(self, driver_version: str) -> GPUInfo:
        """Everything ``perwatt env`` shows; fields the GPU does not support are ``None``."""
        notes: list[str] = []

        def opt(what: str, fn: Any) -> Any:
            try:
                return fn()
            except NotSupportedError:
                notes.append(f"{what}: not supported")
                return None
            except NoPermissionError:
                notes.append(f"{what}: no permission")
                return None

        constraints = opt("power limit range", self.power_limit_constraints_w)
        mems = opt("supported memory clocks", self.supported_mem_clocks_mhz) or ()
        sms = opt("supported graphics clocks", self.supported_sm_clocks_mhz) if mems else None
        return GPUInfo(
            label=self.label,
            index=self.index,
            physical_index=self.physical_index,
            name=self.name,
            uuid=self.uuid,
            architecture=self.architecture(),
            driver_version=driver_version,
            fake=is_fake(self.nvml),
            has_energy_counter=self.has_energy_counter,
            power_method=self.power_method,
            power_limit_w=opt("power limit", self.power_limit_w),
            default_power_limit_w=opt("default power limit", self.default_power_limit_w),
            min_power_limit_w=constraints[0] if constraints else None,
            max_power_limit_w=constraints[1] if constraints else None,
            sm_clock_mhz=opt("SM clock", lambda: self.clock_mhz("sm")),
            mem_clock_mhz=opt("memory clock", lambda: self.clock_mhz("mem")),
            max_sm_clock_mhz=opt("max SM clock", lambda: self.max_clock_mhz("sm")),
            supported_mem_clocks_mhz=tuple(mems),
            supported_sm_clocks_mhz=tuple(sms or ()),
            clock_control=self.can_set_clocks(),
            notes=tuple(notes),
        )


# ------------------------------------------------------------------------- session


class NVMLSession:
    """``nvmlInit`` … ``nvmlShutdown`` around the GPUs visible to this process.

    ``indices`` are visible indices (as in ``cuda:N``); ``None`` selects every visible GPU.
    """

    def __init__(self, indices: Sequence[int] | None = None, *, nvml: Any | None = None) -> None:
        self.nvml = load_nvml(nvml)
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as e:
            raise map_nvml_error(e, "nvmlInit") from e
        self._open = True
        try:
            self.gpus = self._select(indices)
        except BaseException:
            self.close()
            raise

    def _select(self, indices: Sequence[int] | None) -> tuple[NVMLGPU, ...]:
        nvml = self.nvml
        count = int(_call(nvml, "counting GPUs", None, "nvmlDeviceGetCount"))
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        handles = [
            _call(nvml, "opening the GPU", f"physical GPU {i}", "nvmlDeviceGetHandleByIndex", i)
            for i in range(count)
        ]
        if env is None:
            visible = list(range(count))
        else:
            uuids = [
                _text(
                    _call(nvml, "reading the GPU UUID", f"physical GPU {i}", "nvmlDeviceGetUUID", h)
                )
                for i, h in enumerate(handles)
            ]
            visible = resolve_visible_devices(env, uuids)
        if not visible:
            why = "CUDA_VISIBLE_DEVICES hides every GPU" if env is not None else "NVML found no GPU"
            raise SourceUnavailableError(why)
        if indices is None:
            chosen = list(range(len(visible)))
        else:
            chosen = []
            for i in indices:
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(visible):
                    raise UnknownDeviceError(
                        f"GPU index {i!r} does not exist: {len(visible)} GPU(s) visible "
                        f"(gpu0-gpu{len(visible) - 1}); see `perwatt env`"
                    )
                if i in chosen:
                    raise ConfigError(f"GPU index {i} given twice")
                chosen.append(i)
        return tuple(
            NVMLGPU(nvml, handles[visible[i]], index=i, physical_index=visible[i]) for i in chosen
        )

    def driver_version(self) -> str:
        try:
            return _text(
                _call(self.nvml, "reading the driver version", None, "nvmlSystemGetDriverVersion")
            )
        except NotSupportedError:
            return "unknown"

    def close(self) -> None:
        if self._open:
            self._open = False
            # Shutting down after a GPU was lost can fail too: nothing is left to release then.
            with contextlib.suppress(self.nvml.NVMLError):
                self.nvml.nvmlShutdown()

    def __enter__(self) -> NVMLSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gpu_inventory(*, nvml: Any | None = None) -> tuple[GPUInfo, ...]:
    """Read-only information about every visible GPU (``perwatt env``)."""
    with NVMLSession(nvml=nvml) as s:
        driver = s.driver_version()
        return tuple(g.info(driver) for g in s.gpus)


# ------------------------------------------------------------------------- power source


class NVMLSource(PowerSource):
    """GPU energy from NVML: the counter where the GPU has one, instant power otherwise.

    ``use_counter``: ``None`` (default) uses the counter on every GPU that has one; ``False``
    forces instant-power integration everywhere (to compare the two methods); ``True`` requires
    the counter and raises :class:`NotSupportedError` naming the GPUs without one.
    """

    name = "nvml"
    energy_label = "nvml-counter"
    power_label = "nvml-power-integral"

    def __init__(
        self,
        indices: Sequence[int] | None = None,
        *,
        nvml: Any | None = None,
        use_counter: bool | None = None,
        concurrent_reads: bool | None = None,
    ) -> None:
        self.session = NVMLSession(indices, nvml=nvml)
        try:
            self.gpus = self.session.gpus
            self._driver = self.session.driver_version()
            self._names = {g.label: g.name for g in self.gpus}
            counters = {g.label: g.has_energy_counter for g in self.gpus}
            if use_counter is True and not all(counters.values()):
                lacking = ", ".join(f"{d} ({self._names[d]})" for d, c in counters.items() if not c)
                raise NotSupportedError(
                    f"no NVML energy counter on {lacking} (needs Volta or newer); "
                    "drop the counter requirement to integrate instant power instead"
                )
            self._counter_gpus = tuple(
                g for g in self.gpus if counters[g.label] and use_counter is not False
            )
            # Probe the power method now, not inside the first window.
            self._power_gpus = tuple(g for g in self.gpus if g.power_method != "none")
            blind = [g.label for g in self.gpus if g.power_method == "none"]
            blind = [d for d in blind if d not in {g.label for g in self._counter_gpus}]
            if blind:
                raise NotSupportedError(
                    f"{', '.join(blind)}: NVML reports neither an energy counter nor power for "
                    "this GPU; exclude it (--source nvml:INDICES) or meter it via dcgm"
                )
        except BaseException:
            self.session.close()
            raise
        self.counter_period_s = COUNTER_PERIOD_S if self._counter_gpus else None
        # A counter read takes ~4 ms on an H100 (ARCHITECTURE.md, measured facts). NVML is thread-safe and ctypes
        # releases the GIL during the call, so several GPUs can be read at once and a window
        # edge then costs about one read, not one per GPU. A thread pool costs ~20 µs per GPU,
        # so by default (None) it is used only when one serial read of all counters is slower
        # than _CONCURRENT_READ_THRESHOLD_S.
        self._pool: ThreadPoolExecutor | None = None
        n = len(self._counter_gpus)
        if n > 1 and concurrent_reads is not False:
            if concurrent_reads is None:
                t0 = time.perf_counter()
                for g in self._counter_gpus:
                    g.energy_j()
                concurrent_reads = time.perf_counter() - t0 > _CONCURRENT_READ_THRESHOLD_S
            if concurrent_reads:
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="perwatt-nvml")
        self.fake = is_fake(self.session.nvml)
        if getattr(self.session.nvml, "perwatt_label_simulated", False):
            # A fake NVML in the CLI/demo path: its numbers are a model, so say so everywhere.
            self.energy_label = "simulated"
            self.power_label = "simulated"

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(g.label for g in self.gpus)

    @property
    def has_energy_counter(self) -> bool:
        return bool(self._counter_gpus)

    @property
    def counter_devices(self) -> tuple[str, ...]:
        return tuple(g.label for g in self._counter_gpus)

    def read_energy_j(self) -> Mapping[str, float] | None:
        gpus = self._counter_gpus
        if not gpus:
            return None
        if self._pool is None:
            return {g.label: g.energy_j() for g in gpus}
        values = self._pool.map(lambda g: g.energy_j(), gpus)
        return dict(zip((g.label for g in gpus), values, strict=True))

    def read_power_w(self) -> Mapping[str, float] | None:
        if not self._power_gpus:
            return None  # counter only: the meter derives power from successive readings
        return {g.label: g.power_w() for g in self._power_gpus}

    def describe(self) -> str:
        parts = []
        counter = set(self.counter_devices)
        for g in self.gpus:
            how = "energy counter" if g.label in counter else f"instant power ({g.power_method})"
            parts.append(f"{g.label} {self._names[g.label]} [{how}]")
        fake = " — FAKE NVML (perwatt.meter.testing), not real GPUs" if self.fake else ""
        return f"nvml (driver {self._driver}): " + ", ".join(parts) + fake

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.session.close()


@dataclass(frozen=True, slots=True)
class _Split:
    counter: tuple[int, ...] = field(default=())
    counterless: tuple[int, ...] = field(default=())


def open_nvml_sources(
    indices: Sequence[int] | None = None, *, nvml: Any | None = None
) -> tuple[NVMLSource, ...]:
    """One :class:`NVMLSource` per capability class: GPUs with the counter, then those without.

    The meter reads each source's counter at window edges and samples power for counterless ones;
    splitting keeps each source's ``has_energy_counter`` and ``counter_period_s`` true for all
    its devices.
    """
    with NVMLSession(indices, nvml=nvml) as probe:
        split = _Split(
            counter=tuple(g.index for g in probe.gpus if g.has_energy_counter),
            counterless=tuple(g.index for g in probe.gpus if not g.has_energy_counter),
        )
    out: list[NVMLSource] = []
    try:
        if split.counter:
            out.append(NVMLSource(split.counter, nvml=nvml, use_counter=True))
        if split.counterless:
            out.append(NVMLSource(split.counterless, nvml=nvml, use_counter=False))
    except BaseException:
        for s in out:
            s.close()
        raise
    return tuple(out)
