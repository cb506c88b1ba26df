"""Replay a recorded power trace: for tests, and for re-analysing a run after the fact.

Accepted files (the meter's own ``--timeline`` output is the first form):

* CSV with a header containing ``time_s``, ``device`` and ``power_w`` (optional ``energy_j``, a
  cumulative counter; other columns are ignored);
* JSON Lines, one object per reading with the same keys.

Readings of one device must have strictly increasing times. Between readings power is linear, so
energy is the trapezoid integral unless the trace carries its own counter.

Figures are labelled ``replay(ORIGINAL)`` where the trace has a ``source`` column (the meter's
timeline writes one): a replay of a simulated run stays ``replay(simulated)``, of an NVML counter
``replay(nvml-counter)``, per device, so provenance is never lost. A trace without that column is
labelled plain ``replay``. Either way a replay is never a measurement (:func:`is_measured`).
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from perwatt.errors import ConfigError, DataFormatError
from perwatt.meter.integrate import cumulative_trapezoid, interpolate
from perwatt.meter.source import PowerSource, is_known_label, mixed_label, replay_label

_TIME_KEYS = ("time_s", "timestamp_s", "t_s")


@dataclass(frozen=True, slots=True)
class DeviceTrace:
    """One device of a recorded trace: times, power, cumulative energy, and its origin."""

    times_s: tuple[float, ...]
    power_w: tuple[float, ...]
    energy_j: tuple[float, ...]  # cumulative, from the trace's counter or the trapezoid rule
    has_counter: bool = False  # energy_j came from the file, not from integrating power_w
    origin: str | None = None  # the trace's ``source`` label for this device, if it has one

    def energy_at_j(self, t: float) -> float:
        """Cumulative energy at ``t`` (held outside the trace).

        A recorded counter is interpolated linearly. Without one, power is linear between
        readings, so the energy inside a segment is that segment's partial trapezoid; a linear
        interpolation of the integrated counter would disagree with :meth:`ReplaySource.read_power_w`.
        """
        ts = self.times_s
        if self.has_counter or t <= ts[0] or t >= ts[-1]:
            return interpolate(ts, self.energy_j, t)
        i = bisect.bisect_right(ts, t) - 1
        p_t = interpolate(ts, self.power_w, t)
        return self.energy_j[i] + 0.5 * (self.power_w[i] + p_t) * (t - ts[i])


@dataclass(frozen=True, slots=True)
class PowerTrace:
    """A power trace per device, times in seconds on the trace's own clock."""

    devices: Mapping[str, DeviceTrace]

    @property
    def start_s(self) -> float:
        return min(d.times_s[0] for d in self.devices.values())

    @property
    def end_s(self) -> float:
        return max(d.times_s[-1] for d in self.devices.values())

    def energy_between_j(self, start_s: float, end_s: float) -> dict[str, float]:
        """Energy per device over ``[start_s, end_s]`` on the trace clock."""
        return {
            dev: d.energy_at_j(end_s) - d.energy_at_j(start_s) for dev, d in self.devices.items()
        }


def _number(raw: object, what: str, where: str) -> float:
    try:
        v = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: {what} {raw!r} is not a number") from None
    if not math.isfinite(v):
        raise DataFormatError(f"{where}: {what} is {raw!r}; expected a finite number")
    return v


def _rows_from_file(path: Path) -> Iterable[tuple[str, dict[str, object]]]:
    try:
        # utf-8-sig: a trace saved by a Windows editor or Excel starts with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataFormatError(f"cannot read trace {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not a UTF-8 CSV or JSONL trace ({e.reason})") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{n}: expected a JSON object per line")
            yield f"{path}:{n}", obj
        return
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None:
        raise DataFormatError(f"{path}: empty trace file")
    for n, row in enumerate(reader, 2):
        yield f"{path}:{n}", dict(row)


def load_trace(path: str | Path) -> PowerTrace:
    """Parse a trace file; raises :class:`DataFormatError` naming the file and line."""
    path = Path(path)
    per_dev: dict[str, list[tuple[float, float, float | None]]] = {}
    origins: dict[str, set[str]] = {}
    for where, row in _rows_from_file(path):
        tkey = next((k for k in _TIME_KEYS if k in row), None)
        if tkey is None or "device" not in row or "power_w" not in row:
            raise DataFormatError(
                f"{where}: a trace row needs time_s, device and power_w (got {sorted(row)})"
            )
        t = _number(row[tkey], "time", where)
        dev = str(row["device"]).strip()
        if not dev:
            raise DataFormatError(f"{where}: empty device name")
        raw_p = row["power_w"]
        raw_e = row.get("energy_j")
        p = _number(raw_p, "power_w", where) if raw_p not in ("", None) else math.nan
        e = _number(raw_e, "energy_j", where) if raw_e not in ("", None) else None
        if math.isnan(p) and e is None:
            raise DataFormatError(f"{where}: row has neither power_w nor energy_j")
        if not math.isnan(p) and p < 0:
            raise DataFormatError(f"{where}: negative power {p} W")
        rows = per_dev.setdefault(dev, [])
        if rows and t <= rows[-1][0]:
            raise DataFormatError(f"{where}: time {t} does not increase for device {dev!r}")
        rows.append((t, p, e))
        raw_src = row.get("source")
        if raw_src not in (None, ""):
            label = str(raw_src).strip()
            if not is_known_label(label):
                raise DataFormatError(
                    f"{where}: source {label!r} is not a perwatt source label "
                    "(nvml-counter, rapl, dcgm, simulated, ...); fix or drop the column"
                )
            origins.setdefault(dev, set()).add(label)
    if not per_dev:
        raise DataFormatError(f"{path}: trace has no readings")
    devices: dict[str, DeviceTrace] = {}
    for dev, rows in per_dev.items():
        if len(rows) < 2:
            # One reading spans no time: every window would read 0 J.
            raise DataFormatError(f"{path}: device {dev!r} has one reading; a trace needs two")
        ts = [r[0] for r in rows]
        has_counter = all(r[2] is not None for r in rows)
        if has_counter:
            es = [float(r[2]) for r in rows]  # type: ignore[arg-type]
            if any(b < a for a, b in itertools.pairwise(es)):
                raise DataFormatError(f"{path}: energy_j of {dev!r} decreases")
            es = [x - es[0] for x in es]
            ps = [r[1] for r in rows]
            # Fill missing power from the counter's slope.
            for i, p in enumerate(ps):
                if math.isnan(p):
                    j = max(i, 1)
                    ps[i] = (es[j] - es[j - 1]) / (ts[j] - ts[j - 1]) if len(ts) > 1 else 0.0
        else:
            if any(math.isnan(r[1]) for r in rows):
                raise DataFormatError(f"{path}: {dev!r} mixes rows with and without power_w")
            ps = [r[1] for r in rows]
            es = cumulative_trapezoid(ts, ps)
        labels = sorted(origins.get(dev, ()))
        # One device's rows can switch between counter and integrated-power labels (the first
        # row of a counter-only source): keep every origin the device's figures rest on.
        origin = mixed_label(labels) if labels else None
        devices[dev] = DeviceTrace(tuple(ts), tuple(ps), tuple(es), has_counter, origin)
    return PowerTrace(devices)


class ReplaySource(PowerSource):
    """Plays a :class:`PowerTrace` back against a clock (``speed`` × real time)."""

    name = "replay"
    energy_label = "replay"
    power_label = "replay"

    def __init__(
        self,
        trace: PowerTrace | str | Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        speed: float = 1.0,
        counter_period_s: float | None = None,
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"replay speed must be positive, got {speed}")
        self.trace = trace if isinstance(trace, PowerTrace) else load_trace(trace)
        self.clock = clock
        self.speed = speed
        self.counter_period_s = counter_period_s
        self._lock = threading.Lock()
        self._t0 = clock()
        # One label for the source as a whole (run conditions, `perwatt env`): the origins of
        # all its devices; per-device figures carry their own (device_label).
        whole = mixed_label(replay_label(d.origin) for d in self.trace.devices.values())
        self.energy_label = self.power_label = whole

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.trace.devices)

    @property
    def has_energy_counter(self) -> bool:
        return True

    def device_label(self, device: str, *, counter: bool) -> str:
        return replay_label(self.trace.devices[device].origin)

    def trace_time_s(self) -> float:
        """Where in the trace the clock is now."""
        with self._lock:
            return self.trace.start_s + (self.clock() - self._t0) * self.speed

    @property
    def exhausted(self) -> bool:
        return self.trace_time_s() > self.trace.end_s

    def read_energy_j(self) -> Mapping[str, float]:
        t = self.trace_time_s()
        return {dev: d.energy_at_j(t) for dev, d in self.trace.devices.items()}

    def read_power_w(self) -> Mapping[str, float]:
        t = self.trace_time_s()
        return {dev: interpolate(d.times_s, d.power_w, t) for dev, d in self.trace.devices.items()}

    def describe(self) -> str:
        span = self.trace.end_s - self.trace.start_s
        return f"replay: {len(self.trace.devices)} device(s), {span:.1f} s trace at {self.speed:g}x"
