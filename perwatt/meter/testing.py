"""A fake NVML, shipped in the package so the meter, the CLI and the clock controller run anywhere.

:class:`FakeNVML` is a stand-in for the ``pynvml`` module (``nvidia-ml-py``): it exposes the
functions, constants and exception classes perwatt calls, with the same names, argument orders,
units (mW, mJ, MHz) and error codes as the real bindings, so code written against it runs
unchanged on a real GPU::

    fake = FakeNVML.with_gpus(["H100", "A100"], clock=FakeClock())
    src = NVMLSource(nvml=fake)          # instead of importing pynvml
    fake.set_load(0, 1.0)                # GPU 0 busy from now on
    fake.clock.advance(2.0)              # two seconds pass

Each fake GPU is built from a preset of a real generation (see :data:`PRESETS`). Its power is a
deterministic model, **not a calibration of the real part**::

    P = idle_w + (tdp_w - idle_w) * load * (f_sm / f_max) ** 3   capped at the power limit

(dynamic power ~ f·V² with V roughly proportional to f; good enough to make lower clocks save
power in tests). ``f_sm`` is the maximum supported clock, or the upper bound of a locked range.

The energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer presets only) is the
exact integral of that power, published only at multiples of ``counter_period_s`` (0.1 s by
default, as the H100 counter behaved in ARCHITECTURE.md's measured facts), so short windows see the same
quantisation as on real hardware.

Failures are injectable: :meth:`FakeNVML.fail` makes a function raise an NVML error code (once,
for N calls, or from the Nth call on), :meth:`FakeNVML.lose_gpu` makes a GPU report
``GPU_IS_LOST`` after N more calls, and ``library_missing=True`` makes ``nvmlInit`` fail like a
machine without the driver. Every clock and power-limit change is recorded in
:attr:`FakeNVML.changes`, so a test can assert that state was restored.

Setting ``PERWATT_FAKE_NVML=H100,A100`` makes :mod:`perwatt.meter.detect` use this fake instead
of the real library, for tests and demos only; every output then says the GPUs are fake.
"""

from __future__ import annotations

import bisect
import math
import string
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from perwatt.errors import ConfigError
from perwatt.hardware import GPUS

# ---------------------------------------------------------------------------------------------
# Constants, with the values of nvidia-ml-py 12.x/13.x (pynvml.py).
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3

NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS = 0
NVML_RESTRICTED_API_SET_AUTO_BOOSTED_CLOCKS = 1

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1

NVML_FI_DEV_POWER_INSTANT = 186

NVML_DEVICE_ARCH_KEPLER = 2
NVML_DEVICE_ARCH_MAXWELL = 3
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_TURING = 6
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10

_ERROR_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_IN_USE: "In Use",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_NO_DATA: "No Data",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Same shape as ``pynvml.NVMLError``: ``NVMLError(code)`` returns the code's subclass."""

    _valClassMapping: ClassVar[dict[int, type[NVMLError]]] = {}
    _code: ClassVar[int | None] = None
    value: int

    def __new__(cls, value: int | None = None) -> NVMLError:
        # Like pynvml: NVMLError(15) is an NVMLError_GpuIsLost, NVMLError_GpuIsLost() has value 15.
        code = cls._code if value is None else value
        if code is None:
            raise TypeError("NVMLError needs an NVML error code")
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(code, cls)
        obj = Exception.__new__(cls)
        obj.value = code
        return obj

    def __init__(self, value: int | None = None) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")


def _error_class_name(const: str) -> str:
    # NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost, the naming pynvml generates.
    words = const.replace("NVML_ERROR_", "")
    return "NVMLError_" + string.capwords(words, "_").replace("_", "")


def _make_error_classes() -> dict[str, type[NVMLError]]:
    out: dict[str, type[NVMLError]] = {}
    for const, code in list(globals().items()):
        if not const.startswith("NVML_ERROR_"):
            continue
        cls = type(_error_class_name(const), (NVMLError,), {"__module__": __name__, "_code": code})
        NVMLError._valClassMapping[code] = cls
        out[cls.__name__] = cls
    return out


ERROR_CLASSES = _make_error_classes()
globals().update(ERROR_CLASSES)


def nvml_error(code: int) -> NVMLError:
    """The exception the real bindings raise for ``code``."""
    return NVMLError(code)


# ---------------------------------------------------------------------------------------------
# Presets. Names are what nvmlDeviceGetName returns on each SKU. Rated power, SM clock range and
# energy counter come from perwatt.hardware's catalog (with its sources) for the GPUs it lists;
# K80 and P100 (pre-Volta, not in the catalog) carry their own. Power-limit ranges follow the
# published specs; idle power is a round number for the model only.


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUPreset:
    """What one fake GPU looks like to NVML."""

    key: str
    name: str
    architecture: int
    tdp_w: float
    min_limit_w: float
    max_limit_w: float
    idle_w: float
    mem_clocks_mhz: tuple[int, ...]
    max_sm_clock_mhz: int
    min_sm_clock_mhz: int
    sm_clock_step_mhz: int
    has_energy_counter: bool
    has_power_instant_field: bool

    def graphics_clocks_mhz(self) -> tuple[int, ...]:
        """Supported graphics clocks, highest first, as nvmlDeviceGetSupportedGraphicsClocks."""
        clocks = range(self.max_sm_clock_mhz, self.min_sm_clock_mhz - 1, -self.sm_clock_step_mhz)
        return tuple(clocks)


def _from_catalog(catalog_key: str, **fake: Any) -> GPUPreset:
    """A preset whose rated power, SM clock range and energy counter are those of
    :data:`perwatt.hardware.GPUS` (one catalog, cited there); ``fake`` gives the rest (the name
    NVML reports, power-limit range, idle power, memory clocks, clock step), and the lowest
    clock where the catalog has no driver listing for it."""
    spec = GPUS[catalog_key]
    if spec.max_sm_clock_mhz is None:
        raise ValueError(f"{catalog_key}: the catalog has no max SM clock")
    if spec.min_sm_clock_mhz is not None:
        fake["min_sm_clock_mhz"] = spec.min_sm_clock_mhz
    return GPUPreset(
        tdp_w=spec.tdp_w,
        max_sm_clock_mhz=spec.max_sm_clock_mhz,
        has_energy_counter=spec.has_energy_counter,
        **fake,
    )


PRESETS: dict[str, GPUPreset] = {
    p.key: p
    for p in (
        # Kepler and Pascal: no total-energy counter (NVML: Volta or newer only).
        GPUPreset(
            key="K80",
            name="Tesla K80",
            architecture=NVML_DEVICE_ARCH_KEPLER,
            tdp_w=149.0,
            min_limit_w=100.0,
            max_limit_w=175.0,
            idle_w=25.0,
            mem_clocks_mhz=(2505, 324),
            max_sm_clock_mhz=875,
            min_sm_clock_mhz=562,
            sm_clock_step_mhz=13,
            has_energy_counter=False,
            has_power_instant_field=False,
        ),
        GPUPreset(
            key="P100",
            name="Tesla P100-PCIE-16GB",
            architecture=NVML_DEVICE_ARCH_PASCAL,
            tdp_w=250.0,
            min_limit_w=125.0,
            max_limit_w=250.0,
            idle_w=30.0,
            mem_clocks_mhz=(715,),
            max_sm_clock_mhz=1328,
            min_sm_clock_mhz=544,
            sm_clock_step_mhz=13,
            has_energy_counter=False,
            has_power_instant_field=False,
        ),
        _from_catalog(
            "V100-SXM2",
            key="V100",
            name="Tesla V100-SXM2-16GB",
            architecture=NVML_DEVICE_ARCH_VOLTA,
            min_limit_w=150.0,
            max_limit_w=300.0,
            idle_w=40.0,
            mem_clocks_mhz=(877,),
            min_sm_clock_mhz=135,
            sm_clock_step_mhz=15,
            has_power_instant_field=False,
        ),
        _from_catalog(
            "A100-SXM4-40GB",
            key="A100",
            name="NVIDIA A100-SXM4-40GB",
            architecture=NVML_DEVICE_ARCH_AMPERE,
            min_limit_w=100.0,
            max_limit_w=400.0,
            idle_w=55.0,
            mem_clocks_mhz=(1215,),
            sm_clock_step_mhz=15,
            has_power_instant_field=True,
        ),
        _from_catalog(
            "A40",
            key="A40",
            name="NVIDIA A40",
            architecture=NVML_DEVICE_ARCH_AMPERE,
            min_limit_w=100.0,
            max_limit_w=300.0,
            idle_w=30.0,
            mem_clocks_mhz=(7251, 405),
            sm_clock_step_mhz=15,
            has_power_instant_field=True,
        ),
        _from_catalog(
            "H100-SXM",
            key="H100",
            name="NVIDIA H100 80GB HBM3",
            architecture=NVML_DEVICE_ARCH_HOPPER,
            min_limit_w=200.0,
            max_limit_w=700.0,
            idle_w=70.0,
            mem_clocks_mhz=(2619,),
            sm_clock_step_mhz=15,
            has_power_instant_field=True,
        ),
    )
}


class FakeClock:
    """A manual clock: ``clock()`` returns the time, ``clock.advance(s)`` moves it forward."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self._t = start_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._t += seconds


@dataclass(frozen=True, slots=True)
class Change:
    """One state change a caller made: ``kind`` is ``lock_clocks``, ``reset_clocks`` or
    ``power_limit``; ``value`` the new (min, max) MHz, ``None``, or the limit in mW."""

    t_s: float
    index: int
    kind: str
    value: tuple[int, int] | int | None


@dataclass(slots=True)
class _Fault:
    fn: str
    code: int
    gpu: int | None
    skip: int  # calls that still succeed before the fault triggers
    times: int | None  # how many calls fail once triggered (None: all later calls)


@dataclass(slots=True)
class FieldValue:
    """Mirrors ``c_nvmlFieldValue_t``: ``value.uiVal`` (or ``dVal``) holds the reading."""

    fieldId: int  # pynvml's field names
    scopeId: int = 0
    timestamp: int = 0
    latencyUsec: int = 0
    valueType: int = NVML_VALUE_TYPE_UNSIGNED_INT
    nvmlReturn: int = NVML_SUCCESS
    value: _Value = field(default_factory=lambda: _Value())


@dataclass(slots=True)
class _Value:
    dVal: float = 0.0
    uiVal: int = 0
    ulVal: int = 0
    ullVal: int = 0


class FakeGPU:
    """One fake device. Read its state in tests; drive it through :class:`FakeNVML`."""

    def __init__(self, preset: GPUPreset, index: int, clock: Callable[[], float]) -> None:
        self.preset = preset
        self.index = index
        # Real format GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx; the index leads so prefixes differ.
        self.uuid = f"GPU-{index:08x}-fa4e-4e56-8a3b-{zlib.crc32(preset.key.encode()):012x}"
        self.clock = clock
        self.load = 0.0
        self.locked_sm_clocks_mhz: tuple[int, int] | None = None
        self.power_limit_mw = int(preset.tdp_w * 1000)
        self.lost_after_calls: int | None = None
        self.lost = False
        t0 = clock()
        # Energy history: (time, energy_j at that time, power_w from then on).
        self._seg_t: list[float] = [t0]
        self._seg_e: list[float] = [0.0]
        self._seg_p: list[float] = [self._model_power_w()]
        self._t0 = t0
        # The counter's value at driver load: real counters start at whatever accumulated since
        # boot, so code must never assume they start at zero.
        self.counter_offset_mj = 123_456_789 + 1_000_000 * index

    @property
    def sm_clock_mhz(self) -> int:
        """Current SM clock: the top of the locked range when busy, a low clock when idle."""
        top = self.preset.max_sm_clock_mhz
        if self.locked_sm_clocks_mhz is not None:
            top = self.locked_sm_clocks_mhz[1]
        if self.load <= 0:
            low = self.preset.min_sm_clock_mhz
            if self.locked_sm_clocks_mhz is not None:
                low = self.locked_sm_clocks_mhz[0]
            return low
        return top

    def _model_power_w(self) -> float:
        p = self.preset
        top = p.max_sm_clock_mhz
        if self.locked_sm_clocks_mhz is not None:
            top = self.locked_sm_clocks_mhz[1]
        dyn = (p.tdp_w - p.idle_w) * self.load * (top / p.max_sm_clock_mhz) ** 3
        return min(p.idle_w + dyn, self.power_limit_mw / 1000.0)

    def _state_changed(self) -> None:
        # Called after load / clocks / limit change: start a new constant-power segment now.
        t = self.clock()
        e = self.energy_at_j(t)
        if t == self._seg_t[-1]:
            self._seg_e[-1] = e
            self._seg_p[-1] = self._model_power_w()
        else:
            self._seg_t.append(t)
            self._seg_e.append(e)
            self._seg_p.append(self._model_power_w())

    def power_w(self) -> float:
        return self._seg_p[-1]

    def energy_at_j(self, t: float) -> float:
        """Exact integral of the model power from creation to ``t``."""
        i = max(0, bisect.bisect_right(self._seg_t, t) - 1)
        return self._seg_e[i] + self._seg_p[i] * max(0.0, t - self._seg_t[i])

    def counter_mj(self, period_s: float) -> int:
        """The energy counter as NVML would report it: updated only every ``period_s``."""
        t = self.clock()
        if period_s > 0:
            # The epsilon keeps float round-off (1000.1 - 1000 = 0.09999…) from losing a tick.
            t = self._t0 + math.floor((t - self._t0) / period_s + 1e-9) * period_s
        return self.counter_offset_mj + int(self.energy_at_j(t) * 1000.0)


class _Handle:
    """Opaque device handle, like ``c_nvmlDevice_t``."""

    __slots__ = ("gpu",)

    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu = gpu

    def __repr__(self) -> str:
        return f"<fake nvml handle {self.gpu.index}>"


class FakeNVML:
    """A fake ``pynvml`` module. Pass it as ``nvml=`` wherever perwatt takes one."""

    # Expose constants and error classes as attributes, like the module does.
    NVMLError = NVMLError

    def __init__(
        self,
        gpus: Sequence[GPUPreset],
        *,
        clock: Callable[[], float] = time.monotonic,
        driver_version: str = "550.54.15",
        counter_period_s: float = 0.1,
        library_missing: bool = False,
        privileged: bool = True,
        api_restricted: bool = True,
        label_simulated: bool = False,
    ) -> None:
        self.clock = clock
        self.driver_version = driver_version
        self.counter_period_s = counter_period_s
        self.library_missing = library_missing
        #: Whether the fake process may change clocks/limits (real NVML: root or CAP_SYS_ADMIN).
        #: perwatt's read-only check reads this attribute instead of the process credentials.
        self.perwatt_privileged = privileged
        self.api_restricted = api_restricted
        #: perwatt's NVMLSource labels figures from a fake with this set ``simulated`` (the CLI
        #: demo path); unit tests leave it off to exercise the real labels of each code path.
        self.perwatt_label_simulated = label_simulated
        #: Marks the object as a fake for every output that describes the GPUs.
        self.perwatt_fake = True
        self.gpus = [FakeGPU(p, i, clock) for i, p in enumerate(gpus)]
        self.changes: list[Change] = []
        self.calls: dict[str, int] = {}
        self.init_count = 0
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        for k, v in globals().items():
            if k.startswith("NVML_"):
                setattr(self, k, v)
        for k, cls in ERROR_CLASSES.items():
            setattr(self, k, cls)

    @classmethod
    def with_gpus(
        cls,
        keys: Iterable[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> FakeNVML:
        """``FakeNVML.with_gpus(["H100", "A100"])``; keys are those of :data:`PRESETS`."""
        presets = []
        for k in keys:
            key = k.strip().upper()
            if key not in PRESETS:
                raise ConfigError(f"unknown fake GPU {k!r}; choose from {', '.join(PRESETS)}")
            presets.append(PRESETS[key])
        return cls(presets, clock=clock, **kwargs)

    # --------------------------------------------------------------- test controls
    def set_load(self, index: int, load: float) -> None:
        """Utilisation of GPU ``index`` in [0, 1] from now on."""
        if not 0.0 <= load <= 1.0:
            raise ValueError(f"load must be in [0, 1], got {load}")
        with self._lock:
            g = self.gpus[index]
            g.load = load
            g._state_changed()

    def fail(
        self,
        fn: str,
        code: int,
        *,
        gpu: int | None = None,
        after_calls: int = 0,
        times: int | None = None,
    ) -> None:
        """Make ``fn`` raise NVML error ``code``: after ``after_calls`` more successful calls,
        for ``times`` calls (``None``: for good). ``gpu`` limits it to one device."""
        with self._lock:
            self._faults.append(_Fault(fn, code, gpu, after_calls, times))

    def lose_gpu(self, index: int, *, after_calls: int = 0) -> None:
        """GPU ``index`` falls off the bus after ``after_calls`` more calls that touch it."""
        with self._lock:
            self.gpus[index].lost_after_calls = after_calls

    def energy_j(self, index: int) -> float:
        """The exact model energy of GPU ``index`` since creation (what a test compares to)."""
        g = self.gpus[index]
        return g.energy_at_j(self.clock())

    # --------------------------------------------------------------- internals
    def _enter(self, fn: str, handle: _Handle | None = None) -> FakeGPU | None:
        """Bookkeeping for every call: count it, apply faults, check init and lost GPUs."""
        self.calls[fn] = self.calls.get(fn, 0) + 1
        gpu = handle.gpu if handle is not None else None
        for f in list(self._faults):
            if f.fn != fn or (f.gpu is not None and (gpu is None or gpu.index != f.gpu)):
                continue
            if f.skip > 0:
                f.skip -= 1
                continue
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    self._faults.remove(f)
            raise NVMLError(f.code)
        if fn != "nvmlInit" and self.init_count <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if gpu is not None:
            if gpu.lost_after_calls is not None:
                if gpu.lost_after_calls <= 0:
                    gpu.lost = True
                else:
                    gpu.lost_after_calls -= 1
            if gpu.lost:
                raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _gpu(self, fn: str, handle: object) -> FakeGPU:
        if not isinstance(handle, _Handle):
            self.calls[fn] = self.calls.get(fn, 0) + 1
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        g = self._enter(fn, handle)
        assert g is not None
        return g

    def _privileged(self) -> None:
        if not self.perwatt_privileged:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)

    # --------------------------------------------------------------- library
    def nvmlInit(self) -> None:
        with self._lock:
            self._enter("nvmlInit")
            if self.library_missing:
                raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
            self.init_count += 1

    def nvmlShutdown(self) -> None:
        with self._lock:
            self._enter("nvmlShutdown")
            self.init_count -= 1

    def nvmlErrorString(self, code: int) -> str:
        return _ERROR_STRINGS.get(code, "Unknown Error")

    def nvmlSystemGetDriverVersion(self) -> str:
        with self._lock:
            self._enter("nvmlSystemGetDriverVersion")
            return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        with self._lock:
            self._enter("nvmlDeviceGetCount")
            return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        with self._lock:
            self._enter("nvmlDeviceGetHandleByIndex")
            if not 0 <= index < len(self.gpus):
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            return _Handle(self.gpus[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        with self._lock:
            self._enter("nvmlDeviceGetHandleByUUID")
            u = uuid.decode() if isinstance(uuid, bytes) else uuid
            for g in self.gpus:
                if g.uuid == u:
                    return _Handle(g)
            raise NVMLError(NVML_ERROR_NOT_FOUND)

    # --------------------------------------------------------------- identity
    def nvmlDeviceGetName(self, handle: object) -> str:
        with self._lock:
            return self._gpu("nvmlDeviceGetName", handle).preset.name

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        with self._lock:
            return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetArchitecture(self, handle: object) -> int:
        with self._lock:
            return self._gpu("nvmlDeviceGetArchitecture", handle).preset.architecture

    # --------------------------------------------------------------- energy and power
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        """Millijoules since the driver was loaded (Volta and newer)."""
        with self._lock:
            g = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
            if not g.preset.has_energy_counter:
                raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
            return g.counter_mj(self.counter_period_s)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        """Milliwatts."""
        with self._lock:
            return round(self._gpu("nvmlDeviceGetPowerUsage", handle).power_w() * 1000.0)

    def nvmlDeviceGetFieldValues(
        self, handle: object, field_ids: Sequence[int]
    ) -> list[FieldValue]:
        with self._lock:
            g = self._gpu("nvmlDeviceGetFieldValues", handle)
            out = []
            for fid in field_ids:
                fv = FieldValue(fieldId=fid, timestamp=int(self.clock() * 1e6))
                if fid == NVML_FI_DEV_POWER_INSTANT and g.preset.has_power_instant_field:
                    fv.value.uiVal = round(g.power_w() * 1000.0)
                else:
                    fv.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
                out.append(fv)
            return out

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int:
        with self._lock:
            return self._gpu("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        with self._lock:
            return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int:
        with self._lock:
            g = self._gpu("nvmlDeviceGetPowerManagementDefaultLimit", handle)
            return int(g.preset.tdp_w * 1000)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
        with self._lock:
            p = self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle).preset
            return [int(p.min_limit_w * 1000), int(p.max_limit_w * 1000)]

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit_mw: int) -> None:
        with self._lock:
            g = self._gpu("nvmlDeviceSetPowerManagementLimit", handle)
            self._privileged()
            p = g.preset
            if not p.min_limit_w * 1000 <= limit_mw <= p.max_limit_w * 1000:
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            g.power_limit_mw = int(limit_mw)
            g._state_changed()
            self.changes.append(Change(self.clock(), g.index, "power_limit", int(limit_mw)))

    # --------------------------------------------------------------- clocks
    def nvmlDeviceGetClockInfo(self, handle: object, clock_type: int) -> int:
        with self._lock:
            g = self._gpu("nvmlDeviceGetClockInfo", handle)
            if clock_type == NVML_CLOCK_MEM:
                return g.preset.mem_clocks_mhz[0]
            if clock_type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
                return g.sm_clock_mhz
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetMaxClockInfo(self, handle: object, clock_type: int) -> int:
        with self._lock:
            g = self._gpu("nvmlDeviceGetMaxClockInfo", handle)
            if clock_type == NVML_CLOCK_MEM:
                return max(g.preset.mem_clocks_mhz)
            if clock_type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
                return g.preset.max_sm_clock_mhz
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: object) -> list[int]:
        with self._lock:
            return list(
                self._gpu("nvmlDeviceGetSupportedMemoryClocks", handle).preset.mem_clocks_mhz
            )

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: object, mem_mhz: int) -> list[int]:
        with self._lock:
            g = self._gpu("nvmlDeviceGetSupportedGraphicsClocks", handle)
            if mem_mhz not in g.preset.mem_clocks_mhz:
                raise NVMLError(NVML_ERROR_NOT_FOUND)
            return list(g.preset.graphics_clocks_mhz())

    def nvmlDeviceGetAPIRestriction(self, handle: object, api: int) -> int:
        with self._lock:
            self._gpu("nvmlDeviceGetAPIRestriction", handle)
            return NVML_FEATURE_ENABLED if self.api_restricted else NVML_FEATURE_DISABLED

    def nvmlDeviceSetGpuLockedClocks(self, handle: object, min_mhz: int, max_mhz: int) -> None:
        with self._lock:
            g = self._gpu("nvmlDeviceSetGpuLockedClocks", handle)
            if g.preset.architecture < NVML_DEVICE_ARCH_VOLTA:
                raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
            self._privileged()
            if min_mhz > max_mhz:
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            g.locked_sm_clocks_mhz = (int(min_mhz), int(max_mhz))
            g._state_changed()
            self.changes.append(Change(self.clock(), g.index, "lock_clocks", (min_mhz, max_mhz)))

    def nvmlDeviceResetGpuLockedClocks(self, handle: object) -> None:
        with self._lock:
            g = self._gpu("nvmlDeviceResetGpuLockedClocks", handle)
            if g.preset.architecture < NVML_DEVICE_ARCH_VOLTA:
                raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
            self._privileged()
            g.locked_sm_clocks_mhz = None
            g._state_changed()
            self.changes.append(Change(self.clock(), g.index, "reset_clocks", None))

    # --------------------------------------------------------------- assertions
    def state_restored(self) -> bool:
        """True when every GPU is back at default clocks and its default power limit."""
        return all(
            g.locked_sm_clocks_mhz is None and g.power_limit_mw == int(g.preset.tdp_w * 1000)
            for g in self.gpus
        )


def fake_from_env(spec: str, *, clock: Callable[[], float] = time.monotonic) -> FakeNVML:
    """Build the fake named by ``PERWATT_FAKE_NVML``: presets (``"H100,A100"``), or ``missing``
    for a machine whose NVIDIA driver library cannot be loaded."""
    if spec.strip().lower() == "missing":
        return FakeNVML([], clock=clock, library_missing=True, label_simulated=True)
    keys = [k for k in spec.split(",") if k.strip()]
    if not keys:
        raise ConfigError(
            "PERWATT_FAKE_NVML is empty; name presets, e.g. PERWATT_FAKE_NVML=H100,A100"
        )
    return FakeNVML.with_gpus(keys, clock=clock, label_simulated=True)
