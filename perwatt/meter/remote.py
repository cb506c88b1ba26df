"""The contract of a remote source: one fetch per sample, and a reading that can be partly stale.

A local counter (NVML, RAPL) either answers or raises. Telemetry that travels through an exporter
and a Prometheus server can also answer *with old data*: a node whose exporter is down keeps its
last samples in Prometheus for five minutes, and an exporter that lost DCGM keeps serving its last
page. Such a value must not be counted as a live reading (it would read as 0 W), so a
:class:`RemoteSource` returns a :class:`Reading` that separates the devices it has fresh values
for from those it has not, and says why. The meter turns missing devices into gaps in the
timeline and marks the figures they affect partial.

One :meth:`RemoteSource.read` is one request to the remote end (one scrape, one query): the meter
asks for energy and power together, so a 10 Hz sampler makes 10 requests a second, not 20.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

from perwatt.meter.source import PowerSource


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One fetch from a remote source.

    ``energy_j``/``power_w``: fresh values (cumulative J, W) of the devices that have them.
    ``missing``: device -> why it has no fresh value (stale sample, target down, gone).
    ``resets``: device -> joules its counter shows since it restarted from zero, for each device
    whose counter went down in this fetch (driver reload, exporter on a rebooted node).
    """

    energy_j: Mapping[str, float]
    power_w: Mapping[str, float]
    missing: Mapping[str, str] = field(default_factory=dict)
    resets: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fresh = set(self.energy_j) | set(self.power_w)
        if fresh & set(self.missing):
            raise ValueError("a device is either fresh or missing in one reading")


class RemoteSource(PowerSource):
    """A source read over the network; see the module docstring."""

    #: How long after a device's counter last changed it is treated as stale, in update periods.
    stale_periods: float = 3.0
    #: How old a fresh value can be, in update periods: one for an exporter read directly (its
    #: cache), two through Prometheus (the exporter's cache, then the scrape).
    delay_periods: float = 1.0

    @abc.abstractmethod
    def read(self) -> Reading:
        """Fetch energy and power of every device once. Raises
        :class:`~perwatt.errors.RemoteSourceError` when the remote end cannot be read at all."""
