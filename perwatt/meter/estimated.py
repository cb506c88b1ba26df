"""Estimated CPU power for machines with no energy counter at all (no GPU, no RAPL): a model.

Many cloud VMs expose neither NVML nor ``/sys/class/powercap``. There, the best perwatt can do is
the linear utilisation model used by Cloud Carbon Footprint (CCF,
https://www.cloudcarbonfootprint.org/docs/methodology/#energy-estimate-watt-hours)::

    power_w = n_cpus × (idle_w + (max_w − idle_w) × utilisation)

with per-logical-CPU (vCPU) coefficients that CCF derived from SPECpower_ssj2008 results. Every
figure is labelled ``estimated`` and :meth:`EstimatedCPUSource.describe` says it is a model, not
a measurement; it must never be compared with measured joules as if it were one.

Utilisation comes from the kernel's cumulative CPU time in ``/proc/stat`` (proc(5)): busy time
is ``user + nice + system + irq + softirq``. ``guest`` is already inside ``user``; ``iowait``
is idle; ``steal`` is time the hypervisor gave to *other* guests. It is machine-wide, not
per-process: anything else running on the machine is in the estimate too.

The source keeps an energy counter that is the exact integral of the model between reads::

    E += n × idle_w × dt + (max_w − idle_w) × busy_cpu_seconds     (busy clamped to n × dt)

so the meter treats it like any other counter (and derives power from its slope). The counter
moves in steps of one ``USER_HZ`` tick (1/100 s on Linux), hence ``counter_period_s``.

The coefficients are overridable: pass ``idle_w_per_cpu``/``max_w_per_cpu``, a ``preset`` from
:data:`CCF_W_PER_VCPU`, or set ``PERWATT_CPU_W_PER_CPU="IDLE,MAX"`` (what ``perwatt meter`` uses).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from perwatt.errors import ConfigError, SourceUnavailableError
from perwatt.meter.source import PowerSource

#: (idle W, max W) per vCPU, from Cloud Carbon Footprint ``packages/core/src/compute/
#: ComputeProcessorTypes.ts`` (min_watts_avg / max_watts_avg), and the AWS fleet average used
#: when the microarchitecture is unknown (``packages/aws/src/domain/
#: AwsFootprintEstimationConstants.ts``: MIN_WATTS_AVG 0.74, MAX_WATTS_AVG 3.5).
CCF_W_PER_VCPU: Final[Mapping[str, tuple[float, float]]] = {
    "unknown": (0.74, 3.5),
    "cascade-lake": (0.64, 3.97),
    "skylake": (0.65, 4.26),
    "broadwell": (0.71, 3.69),
    "haswell": (1.0, 4.74),
    "epyc-1st-gen": (0.82, 2.55),
    "epyc-2nd-gen": (0.47, 1.69),
    "epyc-3rd-gen": (0.45, 2.02),
}

#: ``"IDLE,MAX"`` watts per logical CPU, overriding the default coefficients.
ENV_W_PER_CPU = "PERWATT_CPU_W_PER_CPU"

_BUSY_FIELDS = (0, 1, 2, 5, 6)  # user nice system [idle iowait] irq softirq


def _clock_ticks_per_s() -> int:
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100
    return hz if hz > 0 else 100


def _coefficients_from_env() -> tuple[float, float] | None:
    raw = os.environ.get(ENV_W_PER_CPU)
    if raw is None or not raw.strip():
        return None
    parts = raw.split(",")
    try:
        idle, peak = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{ENV_W_PER_CPU}={raw!r}: expected 'IDLE,MAX' watts per logical CPU, e.g. 0.74,3.5"
        ) from None
    return idle, peak


class EstimatedCPUSource(PowerSource):
    """CPU power *modelled* from utilisation and per-CPU watts. Not a measurement."""

    name = "estimated"
    energy_label = "estimated"
    power_label = "estimated"

    def __init__(
        self,
        *,
        idle_w_per_cpu: float | None = None,
        max_w_per_cpu: float | None = None,
        preset: str | None = None,
        num_cpus: int | None = None,
        proc_stat: str | Path = "/proc/stat",
        clock: Callable[[], float] = time.monotonic,
        ticks_per_s: int | None = None,
    ) -> None:
        if preset is not None and preset not in CCF_W_PER_VCPU:
            raise ConfigError(
                f"unknown CPU preset {preset!r}; choose one of {', '.join(CCF_W_PER_VCPU)}"
            )
        idle, peak = CCF_W_PER_VCPU[preset or "unknown"]
        self.coefficients_from = f"Cloud Carbon Footprint, {preset or 'unknown'} microarchitecture"
        env = _coefficients_from_env() if preset is None else None
        if env is not None:
            idle, peak = env
            self.coefficients_from = f"${ENV_W_PER_CPU}"
        if idle_w_per_cpu is not None or max_w_per_cpu is not None:
            idle = idle if idle_w_per_cpu is None else idle_w_per_cpu
            peak = peak if max_w_per_cpu is None else max_w_per_cpu
            self.coefficients_from = "given by the caller"
        if not (math.isfinite(idle) and math.isfinite(peak) and 0 <= idle <= peak):
            raise ConfigError(
                f"per-CPU watts must satisfy 0 <= idle <= max, got idle {idle}, max {peak}"
            )
        self.idle_w_per_cpu = idle
        self.max_w_per_cpu = peak
        self.proc_stat = Path(proc_stat)
        self.clock = clock
        self.ticks_per_s = ticks_per_s or _clock_ticks_per_s()
        self.counter_period_s = 1.0 / self.ticks_per_s
        busy, online = self._read_stat()
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1, got {num_cpus}")
        self.num_cpus = num_cpus or online
        self._lock = threading.Lock()
        self._t_last = clock()
        self._busy_last = busy
        self._energy_j = 0.0

    def _read_stat(self) -> tuple[float, int]:
        """(busy CPU-seconds since boot, number of online CPUs) from /proc/stat."""
        try:
            text = self.proc_stat.read_text()
        except FileNotFoundError:
            raise SourceUnavailableError(
                f"no {self.proc_stat}: the estimated CPU model needs Linux"
            ) from None
        except OSError as e:
            raise SourceUnavailableError(f"cannot read {self.proc_stat}: {e.strerror or e}") from e
        busy: float | None = None
        online = 0
        for line in text.splitlines():
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "cpu":
                try:
                    ticks = [int(x) for x in fields[1:]]
                except ValueError:
                    ticks = []
                if len(ticks) < 7:
                    raise SourceUnavailableError(
                        f"{self.proc_stat}: unexpected aggregate 'cpu' line {line!r}"
                    )
                busy = sum(ticks[i] for i in _BUSY_FIELDS) / self.ticks_per_s
            elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
                online += 1
        if busy is None:
            raise SourceUnavailableError(f"{self.proc_stat}: no aggregate 'cpu' line")
        return busy, max(online, 1)

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cpu",)

    @property
    def has_energy_counter(self) -> bool:
        return True

    def read_energy_j(self) -> Mapping[str, float]:
        """The model's energy since this source was created, in joules."""
        with self._lock:
            busy, _ = self._read_stat()
            t = self.clock()
            dt = max(0.0, t - self._t_last)
            d_busy = min(max(0.0, busy - self._busy_last), self.num_cpus * dt)
            self._energy_j += (
                self.num_cpus * self.idle_w_per_cpu * dt
                + (self.max_w_per_cpu - self.idle_w_per_cpu) * d_busy
            )
            self._t_last = t
            self._busy_last = busy
            return {"cpu": self._energy_j}

    def read_power_w(self) -> Mapping[str, float] | None:
        return None  # the meter derives power from the counter's slope

    def power_at_w(self, utilisation: float) -> float:
        """The model's power at a machine-wide utilisation in [0, 1]."""
        if not 0.0 <= utilisation <= 1.0:
            raise ConfigError(f"utilisation must be in [0, 1], got {utilisation}")
        span = self.max_w_per_cpu - self.idle_w_per_cpu
        return self.num_cpus * (self.idle_w_per_cpu + span * utilisation)

    def describe(self) -> str:
        return (
            f"estimated: CPU power modelled as {self.num_cpus} CPU(s) x "
            f"({self.idle_w_per_cpu:g} + ({self.max_w_per_cpu:g} - {self.idle_w_per_cpu:g}) "
            f"x utilisation) W from {self.proc_stat} ({self.coefficients_from}) "
            "- a model, not a measurement"
        )
