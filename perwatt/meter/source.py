"""The power-source contract every backend implements.

A *source* knows a fixed set of devices (``"gpu0"``, ``"cpu0-package"``, ``"node3/gpu1"``) and
answers two questions about them:

* ``read_energy_j()`` — a cumulative energy counter per device, in joules, monotonic. Sources whose
  hardware counter wraps or resets (RAPL, a restarted dcgm-exporter) hide that here, so the meter
  can always subtract two readings. Sources without a counter return ``None``.
* ``read_power_w()`` — instantaneous power per device, in watts, or ``None`` when the source only
  has a counter (RAPL); the meter then derives power from successive counter readings.

Units are converted at this boundary and nowhere else (NVML speaks mW/mJ, RAPL µJ, DCGM mJ).

Every figure the meter produces is labelled with where it came from. A source declares two labels:
``energy_label`` for figures taken from its counter and ``power_label`` for figures integrated
from its instant-power readings. The allowed labels are :data:`SOURCE_LABELS`.

Sources must be safe to call from two threads at once (the caller's window edges and the
background sampler); sources with mutable state guard it with a lock.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Final

# Where a figure came from. Every energy number perwatt prints or writes carries one of these.
SOURCE_LABELS: Final = (
    "nvml-counter",  # nvmlDeviceGetTotalEnergyConsumption difference (Volta and newer)
    "nvml-power-integral",  # trapezoid integral of sampled NVML instant power
    "rapl",  # Linux powercap energy_uj counters (CPU package / DRAM)
    "dcgm",  # dcgm-exporter / Prometheus DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION or POWER_USAGE
    "replay",  # a recorded power trace played back; replay(ORIGINAL) when the trace says
    # where its figures came from (replay(simulated), replay(nvml-counter)): never a measurement
    "simulated",  # a deterministic power model — never a measurement
    "estimated",  # a model from utilisation and rated power — never a measurement
)

# Labels that are measurements of real hardware. Anything else must never be shown as measured.
MEASURED_LABELS: Final = frozenset({"nvml-counter", "nvml-power-integral", "rapl", "dcgm"})


def mixed_label(labels: Iterable[str]) -> str:
    """One label for figures resting on several sources: the common label, or ``mixed(a,b)``
    (each label once, sorted). :func:`label_parts` splits it again."""
    unique = sorted(set(labels))
    if not unique:
        raise ValueError("mixed_label needs at least one label")
    return unique[0] if len(unique) == 1 else f"mixed({','.join(unique)})"


def label_parts(label: str) -> list[str]:
    """The labels a ``mixed(a,b)`` label combines (``[]`` for ``mixed()``); ``[label]`` for a
    plain one."""
    if label.startswith("mixed(") and label.endswith(")"):
        return split_label_list(label[len("mixed(") : -1])
    return [label]


def is_measured(label: str) -> bool:
    """True when ``label`` names a measurement of real hardware (not replay/simulated/estimated).

    A compound label is measured only when every part is: ``mixed(nvml-counter,rapl)`` is,
    ``mixed(rapl,simulated)`` is not. A replay is never a measurement, whatever it replays
    (``replay(nvml-counter)`` is a recording played back now, not this run's hardware).
    """
    parts = label_parts(label)
    if parts != [label]:
        return bool(parts) and all(is_measured(p) for p in parts)
    return label in MEASURED_LABELS


def split_label_list(text: str) -> list[str]:
    """Split ``a,replay(b,c),d`` at top-level commas: ``["a", "replay(b,c)", "d"]``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def is_known_label(label: str) -> bool:
    """Whether ``label`` is one of :data:`SOURCE_LABELS`, or ``mixed(...)``/``replay(...)`` of them."""
    for head in ("mixed(", "replay("):
        if label.startswith(head) and label.endswith(")"):
            parts = split_label_list(label[len(head) : -1])
            return bool(parts) and all(is_known_label(p) for p in parts)
    return label in SOURCE_LABELS


def replay_label(original: str | None) -> str:
    """The label of a replayed figure: ``replay(ORIGINAL)``, so provenance survives a replay.

    ``None`` (a trace that does not say where it came from) gives plain ``replay``; a replay of a
    replay keeps the innermost origin (``replay(simulated)``, not ``replay(replay(simulated))``).
    """
    if original is None or original == "replay":
        return "replay"
    if original.startswith("replay(") and original.endswith(")"):
        return original
    return f"replay({original})"


class PowerSource(abc.ABC):
    """Base class for power/energy backends. See the module docstring for the contract."""

    #: Short backend name, e.g. ``"nvml"``.
    name: str = "source"
    #: Label for energy taken from the counter.
    energy_label: str = "estimated"
    #: Label for energy integrated from instant power.
    power_label: str = "estimated"
    #: How often the counter's value changes, if known (NVML on H100: ~0.1 s, see ARCHITECTURE.md).
    counter_period_s: float | None = None

    @property
    @abc.abstractmethod
    def devices(self) -> tuple[str, ...]:
        """Device labels, unique within this source."""

    @property
    def has_energy_counter(self) -> bool:
        """Whether :meth:`read_energy_j` returns readings."""
        return False

    def read_energy_j(self) -> Mapping[str, float] | None:
        """Cumulative energy per device in joules (monotonic), or ``None`` without a counter."""
        return None

    def read_power_w(self) -> Mapping[str, float] | None:
        """Instant power per device in watts, or ``None`` when only a counter exists."""
        return None

    def device_label(self, device: str, *, counter: bool) -> str:
        """The label of ``device``'s figures: from the counter (``counter=True``) or from
        integrated instant power. Sources whose devices differ in origin (a replayed trace that
        recorded a GPU and a CPU) override this; the rest label every device alike."""
        return self.energy_label if counter else self.power_label

    def describe(self) -> str:
        """One line for humans: what this source is and what it measures."""
        return f"{self.name}: {', '.join(self.devices)}"

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release handles (NVML shutdown, HTTP client)."""
