"""A deterministic simulated power source, for demos and tests. Every figure it yields is
labelled ``simulated``; perwatt never picks it without being asked.

Power per device is piecewise constant: ``idle_w + (busy_w - idle_w) * load`` where ``load`` in
[0, 1] is whatever the caller last set with :meth:`SimulatedSource.set_load` (a simulated engine
marks itself busy while it works). The energy counter is the exact integral, so a test can check a
window's energy to the last bit. A ``power_fn(t)`` can replace the model for analytic traces; its
counter is then integrated numerically at ``resolution_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from perwatt.errors import ConfigError
from perwatt.meter.source import PowerSource


class SimulatedSource(PowerSource):
    """A deterministic power model of ``num_devices`` GPUs (idle or busy power, or one fixed
    figure): labelled ``simulated``, never a measurement."""

    name = "simulated"
    energy_label = "simulated"
    power_label = "simulated"

    def __init__(
        self,
        *,
        num_devices: int = 1,
        idle_w: float = 60.0,
        busy_w: float = 300.0,
        power_w: float | None = None,
        power_fn: Callable[[float], float] | None = None,
        resolution_s: float = 1e-3,
        counter_period_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "sim",
    ) -> None:
        if num_devices < 1:
            raise ConfigError("a simulated source needs at least one device")
        if power_w is not None:
            idle_w = busy_w = power_w
        if idle_w < 0 or busy_w < 0:
            raise ConfigError("simulated power must be non-negative")
        self._devices = tuple(f"{prefix}{i}" for i in range(num_devices))
        self.idle_w = idle_w
        self.busy_w = busy_w
        self.power_fn = power_fn
        self.resolution_s = resolution_s
        self.counter_period_s = counter_period_s
        self.clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._t_last = self._t0
        self._load = 0.0 if power_w is None else 1.0
        self._energy_j = 0.0

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def has_energy_counter(self) -> bool:
        return True

    def _power_at(self, t: float) -> float:
        if self.power_fn is not None:
            return float(self.power_fn(t - self._t0))
        return self.idle_w + (self.busy_w - self.idle_w) * self._load

    def _advance(self, t: float) -> None:
        # Called under the lock: integrate from the last update to t.
        if t <= self._t_last:
            return
        if self.power_fn is None:
            self._energy_j += self._power_at(t) * (t - self._t_last)
        else:
            a = self._t_last
            n = max(1, round((t - a) / self.resolution_s))
            h = (t - a) / n
            acc = 0.5 * (self._power_at(a) + self._power_at(t))
            for i in range(1, n):
                acc += self._power_at(a + i * h)
            self._energy_j += acc * h
        self._t_last = t

    def set_load(self, load: float) -> None:
        """Set utilisation in [0, 1] from now on."""
        if not 0.0 <= load <= 1.0:
            raise ConfigError(f"load must be in [0, 1], got {load}")
        with self._lock:
            self._advance(self.clock())
            self._load = load

    def read_energy_j(self) -> Mapping[str, float]:
        with self._lock:
            self._advance(self.clock())
            return dict.fromkeys(self._devices, self._energy_j)

    def read_power_w(self) -> Mapping[str, float]:
        with self._lock:
            p = self._power_at(self.clock())
        return dict.fromkeys(self._devices, p)

    def describe(self) -> str:
        return (
            f"simulated: {len(self._devices)} device(s), idle {self.idle_w:g} W, "
            f"busy {self.busy_w:g} W (a model, not a measurement)"
        )
