"""The energy meter: windows over one or more power sources, a background power timeline.

How a window is measured::

      begin("decode")                                       end("decode")
          │  sync GPU, read counters                            │  sync GPU, read counters
          ▼                                                     ▼
    ──────┬──────┬──────┬──────┬──────┬──────┬──────┬──────┬────┬──▶ time
          sampler: instant power every ``sample_interval_s`` (default 0.1 s = 10 Hz)

* Devices with an energy counter (NVML Volta+, RAPL, DCGM, replay, simulated): energy is the
  difference of the counter read at the two edges. The counter on an H100 changes about every
  100 ms (ARCHITECTURE.md, measured facts), so a window shorter than the source's ``counter_period_s`` is flagged
  and measured from the power timeline instead.
* Devices without a counter (pre-Volta GPUs): energy is the trapezoid integral of the sampled
  instant power, with the edges interpolated.
* Idle power (``idle_baseline``) is subtracted only when asked; every Measurement says whether it
  was.
* Remote sources (dcgm-exporter, Prometheus: :class:`~perwatt.meter.remote.RemoteSource`) are
  read once per sample; readings that are stale or missing become gaps (:meth:`Meter.gaps`),
  and each device's figure is judged by :func:`perwatt.meter.figure.device_figure`: counter or
  integrated power, whichever is tighter, with its bound (``methods``, ``uncertainty_j``), and
  marked partial with the reason (``partial_devices``) where the readings do not cover the
  window or disagree.

The sampler also records every counter reading, so energy over any sub-interval can be computed
after the fact (:meth:`Meter.measure_between`), which is how the benchmark takes its
steady-state window once it knows where saturation started and the drain began.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import itertools
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perwatt.errors import ConfigError
from perwatt.meter.figure import DeviceData, device_figure
from perwatt.meter.integrate import interpolate, trapezoid_between
from perwatt.meter.remote import RemoteSource
from perwatt.meter.source import PowerSource, is_measured, mixed_label

Clock = Callable[[], float]

#: The shortest time a remote counter may stand still before it counts as stale.
STALE_FLOOR_S = 2.0


@dataclass(frozen=True, slots=True)
class Gap:
    """An interval in which ``device`` had no fresh reading (source down, stale, missing).

    ``end_s`` is when fresh readings resumed, or None while the gap is still open."""

    device: str
    start_s: float
    end_s: float | None
    reason: str

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """Energy over one window. All per-device mappings share the same keys."""

    name: str
    start_s: float
    end_s: float
    duration_s: float
    energy_j: Mapping[str, float]
    total_energy_j: float
    avg_power_w: float
    peak_power_w: float | None
    sources: Mapping[str, str]
    idle_subtracted: bool
    idle_power_w: Mapping[str, float] | None = None
    warnings: tuple[str, ...] = ()
    #: How each figure was obtained where the meter judged it (remote sources): ``counter``,
    #: ``power-integral`` or ``none``; and its worst-case error in joules (see meter.figure).
    methods: Mapping[str, str] = field(default_factory=dict)
    uncertainty_j: Mapping[str, float] = field(default_factory=dict)
    #: Devices whose figure covers only part of the window, or is unreliable, and why.
    partial_devices: Mapping[str, str] = field(default_factory=dict)
    #: Intervals without fresh readings that overlap the window (clipped to it).
    gaps: tuple[Gap, ...] = ()

    def __post_init__(self) -> None:
        if self.duration_s < 0:
            raise ValueError(f"negative window duration {self.duration_s}")
        if set(self.energy_j) != set(self.sources):
            raise ValueError("energy_j and sources must name the same devices")
        if not set(self.partial_devices) <= set(self.energy_j):
            raise ValueError("partial_devices must name measured devices")

    @property
    def partial(self) -> bool:
        """True when some device's figure covers only part of the window (see partial_devices)."""
        return bool(self.partial_devices)

    @property
    def source(self) -> str:
        """One label for the whole measurement: the common label, or ``mixed(a,b)``."""
        return mixed_label(self.sources.values())

    @property
    def measured(self) -> bool:
        """True only when every figure comes from real hardware."""
        return all(is_measured(s) for s in self.sources.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "energy_j": dict(self.energy_j),
            "total_energy_j": self.total_energy_j,
            "avg_power_w": self.avg_power_w,
            "peak_power_w": self.peak_power_w,
            "source": self.source,
            "sources": dict(self.sources),
            "measured": self.measured,
            "idle_subtracted": self.idle_subtracted,
            "idle_power_w": dict(self.idle_power_w) if self.idle_power_w is not None else None,
            "warnings": list(self.warnings),
            "methods": dict(self.methods),
            "uncertainty_j": dict(self.uncertainty_j),
            "partial_devices": dict(self.partial_devices),
            "gaps": [g.to_dict() for g in self.gaps],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleBaseline:
    """Idle power per device, measured over ``duration_s``."""

    power_w: Mapping[str, float]
    duration_s: float
    sources: Mapping[str, str]

    @property
    def total_power_w(self) -> float:
        return sum(self.power_w.values())


@dataclass(frozen=True, slots=True)
class Sample:
    """One background reading: power per device and, where a counter exists, its value."""

    t_s: float
    power_w: Mapping[str, float]
    energy_j: Mapping[str, float]


@dataclass(slots=True)
class _OpenWindow:
    name: str
    start_s: float
    counters: dict[str, float]


@dataclass(slots=True)
class WindowHandle:
    """What ``with meter.window(...) as w`` yields; ``w.measurement`` is set on exit."""

    name: str
    measurement: Measurement | None = field(default=None)

    @property
    def result(self) -> Measurement:
        if self.measurement is None:
            raise RuntimeError(f"window {self.name!r} has not ended yet")
        return self.measurement


def sync_cuda() -> None:
    """Wait for queued GPU work so the edge reading covers it. Never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_available() and cuda.is_initialized():
        cuda.synchronize()


class Meter:
    """Measure energy over named windows on one or more power sources.

    >>> from perwatt.meter import Meter, SimulatedSource
    >>> with Meter(SimulatedSource(power_w=100.0)) as meter:
    ...     with meter.window("work") as w:
    ...         pass
    >>> w.result.source
    'simulated'
    """

    def __init__(
        self,
        sources: PowerSource | Sequence[PowerSource],
        *,
        sample_interval_s: float = 0.1,
        sampler: bool = True,
        sync_cuda: bool = True,
        subtract_idle: bool = False,
        clock: Clock = time.monotonic,
        max_samples: int = 10_000_000,
    ) -> None:
        srcs = [sources] if isinstance(sources, PowerSource) else list(sources)
        if not srcs:
            raise ConfigError("Meter needs at least one power source")
        if not (sample_interval_s > 0 and math.isfinite(sample_interval_s)):
            raise ConfigError(f"sample interval must be a positive number, got {sample_interval_s}")
        self.sources: tuple[PowerSource, ...] = tuple(srcs)
        self._owner: dict[str, PowerSource] = {}
        for src in self.sources:
            for dev in src.devices:
                if dev in self._owner:
                    raise ConfigError(f"device {dev!r} is reported by two sources")
                self._owner[dev] = src
        self.sample_interval_s = sample_interval_s
        self.sync_cuda = sync_cuda
        self.subtract_idle = subtract_idle
        self.clock = clock
        self.idle: IdleBaseline | None = None
        self._use_sampler = sampler
        self._max_samples = max_samples
        self._open: dict[str, _OpenWindow] = {}
        self._samples: list[Sample] = []
        self._times: list[float] = []  # sample times, kept sorted, for bisecting windows
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_counter: dict[str, tuple[float, float]] = {}
        self._sampler_error: BaseException | None = None
        self._sampler_error_at = -math.inf  # meter clock of the latest sampler failure
        # Remote-source bookkeeping (see _remote_read): gaps, update periods, counter resets.
        self._state_lock = threading.Lock()
        self._gaps: list[Gap] = []
        self._open_gaps: dict[str, tuple[float, str]] = {}
        self._last_fresh: dict[str, float] = {}
        self._value_since: dict[str, tuple[float, float]] = {}  # counter value, first seen at
        self._power_since: dict[str, tuple[float, float]] = {}
        self._changes: dict[str, list[float]] = {}  # times the counter value changed
        self._power_changes: dict[str, list[float]] = {}
        self._resets: list[tuple[str, float, float, float]] = []  # dev, before, after, J since

    # ------------------------------------------------------------------ lifecycle
    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._owner)

    def start(self) -> Meter:
        """Start the background sampler (idempotent). Takes one sample at once."""
        self.sample_now()
        if self._use_sampler and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="perwatt-sampler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the sampler and close every source."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.sample_interval_s + 1.0)
            self._thread = None
        for src in self.sources:
            src.close()

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += self.sample_interval_s
            try:
                self.sample_now()
            except Exception as e:  # keep the caller's windows alive; report on next end()
                self._sampler_error_at = self.clock()  # first: end() reads the error, then this
                self._sampler_error = e
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (slow remote source): do not try to catch up in a burst
                next_t = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    # ------------------------------------------------------------------ sampling
    def sample_now(self) -> Sample:
        """Read every source once and append the result to the timeline.

        A source that fails does not cost the others their reading: its devices get a gap
        (see :meth:`gaps`), the sample is kept, and the first failure is raised afterwards.
        """
        power: dict[str, float] = {}
        energy: dict[str, float] = {}
        t = self.clock()
        failure: Exception | None = None
        remote: list[Sample] = []
        for src in self.sources:
            if isinstance(src, RemoteSource):
                try:
                    remote.append(Sample(*self._remote_read(src)))
                except Exception as err:
                    failure = failure or err
                continue
            e = src.read_energy_j() if src.has_energy_counter else None
            p = src.read_power_w()
            if e is not None:
                energy.update(e)
            if p is not None:
                power.update(p)
            elif e is not None:
                # Counter-only source (RAPL): power is the slope since the previous reading.
                for dev, ej in e.items():
                    prev = self._last_counter.get(dev)
                    if prev is not None and t > prev[0]:
                        power[dev] = max(0.0, (ej - prev[1]) / (t - prev[0]))
            if e is not None:
                for dev, ej in e.items():
                    self._last_counter[dev] = (t, ej)
        s = Sample(t, power, energy)
        if remote and not (power or energy):
            s = remote.pop(0)  # only remote sources: their reading is the sample
        for r in remote:
            self._append(r)
        if failure is None or power or energy or s.power_w or s.energy_j:
            self._append(s)  # a tick on which every source failed leaves no sample
        if failure is not None:
            raise failure
        return s

    def _append(self, s: Sample) -> None:
        with self._lock:
            if len(self._samples) < self._max_samples:
                # Two threads may sample at once; insert in time order (almost always the end).
                i = bisect.bisect_right(self._times, s.t_s)
                self._times.insert(i, s.t_s)
                self._samples.insert(i, s)

    # ------------------------------------------------------------------ remote sources
    def update_period_s(self, device: str) -> tuple[float | None, str]:
        """How often ``device``'s counter changes: observed (median of the last intervals
        between changes seen by the sampler) where at least two intervals were seen, else what
        the source declares. Returns ``(period, "observed" | "declared" | "unknown")``."""
        with self._state_lock:
            ch = self._changes.get(device, [])[-65:]
        if len(ch) >= 3:
            return statistics.median(b - a for a, b in itertools.pairwise(ch)), "observed"
        period = self._owner[device].counter_period_s
        return period, ("declared" if period is not None else "unknown")

    def _power_period_s(self, device: str) -> float | None:
        with self._state_lock:
            ch = self._power_changes.get(device, [])[-65:]
        if len(ch) >= 3:
            return statistics.median(b - a for a, b in itertools.pairwise(ch))
        return self.update_period_s(device)[0]

    def gaps(self) -> tuple[Gap, ...]:
        """Every interval a device went without a fresh reading, open ones last (end None)."""
        with self._state_lock:
            still = [Gap(d, t, None, why) for d, (t, why) in self._open_gaps.items()]
            return (*self._gaps, *still)

    def _remote_read(self, src: RemoteSource) -> tuple[float, dict[str, float], dict[str, float]]:
        """One fetch from a remote source: ``(time, power, energy)``, fresh values only; the
        rest are recorded as gaps.

        The time is taken when the answer arrived: the values are the remote end's as of then,
        and a read that waited behind another (sampler and window edge at once) must not be
        stamped before the one it waited for. On top of what the source itself judges stale, a
        counter that has not changed for ``src.stale_periods`` update periods (and at least
        ``STALE_FLOOR_S``) is stale: an exporter that lost DCGM (or hangs in its cache) keeps
        serving its last page, and its counter would read as 0 W.
        """
        try:
            r = src.read()
            t = self.clock()
        except Exception as e:
            t = self.clock()
            why = str(e).split("\n", 1)[0]
            with self._state_lock:
                for dev in src.devices:
                    if dev not in self._open_gaps:
                        self._open_gaps[dev] = (self._last_fresh.get(dev, t), why)
            raise
        energy = dict(r.energy_j)
        power = dict(r.power_w)
        missing = dict(r.missing)
        for dev in list(energy):
            period, how = self.update_period_s(dev)
            with self._state_lock:
                prev = self._value_since.get(dev)
                if prev is None or energy[dev] != prev[0]:
                    if prev is not None:
                        ch = self._changes.setdefault(dev, [])
                        ch.append(t)
                        if len(ch) > 256:  # the period needs only the recent changes
                            del ch[:128]
                    self._value_since[dev] = (energy[dev], t)
                    continue
                unchanged = t - prev[1]
                # At least 2 s: a busy machine can stall a fast (0.1 s) exporter that long.
                limit = max(src.stale_periods * (period or 0.0), STALE_FLOOR_S)
                if period is None or unchanged <= limit + self.sample_interval_s:
                    continue
                missing[dev] = (
                    f"counter unchanged for {unchanged:.1f} s though it updates every "
                    f"~{period:.3g} s ({how}): the exporter is serving a stale page (hung, or "
                    "lost DCGM)"
                )
                # The frozen readings since the last change were never fresh.
                if dev not in self._open_gaps:
                    self._open_gaps[dev] = (prev[1], missing[dev])
            del energy[dev]
            power.pop(dev, None)
        with self._state_lock:
            for dev, p in power.items():
                prevp = self._power_since.get(dev)
                if prevp is None or p != prevp[0]:
                    if prevp is not None:
                        pch = self._power_changes.setdefault(dev, [])
                        pch.append(t)
                        if len(pch) > 256:
                            del pch[:128]
                    self._power_since[dev] = (p, t)
            for dev, why in missing.items():
                if dev not in self._open_gaps:
                    self._open_gaps[dev] = (self._last_fresh.get(dev, t), why)
            for dev in set(energy) | set(power):
                opened = self._open_gaps.pop(dev, None)
                if opened is not None:
                    self._gaps.append(Gap(dev, opened[0], t, opened[1]))
                if dev in r.resets:
                    self._resets.append((dev, self._last_fresh.get(dev, t), t, r.resets[dev]))
                self._last_fresh[dev] = t
        return t, power, energy

    def _samples_around(self, start_s: float, end_s: float) -> list[Sample]:
        """Samples inside ``[start_s, end_s]`` plus one on each side, for edge interpolation.

        Bisecting keeps a window's cost independent of how long the meter has been running.
        """
        with self._lock:
            lo = max(0, bisect.bisect_left(self._times, start_s) - 1)
            hi = bisect.bisect_right(self._times, end_s) + 1
            return self._samples[lo:hi]

    def timeline(self) -> tuple[Sample, ...]:
        with self._lock:
            return tuple(self._samples)

    def write_timeline(self, path: str | Path) -> None:
        """Write the power timeline as CSV: ``time_s,device,power_w,energy_j,source``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["time_s", "device", "power_w", "energy_j", "source"])
                for s in self.timeline():
                    for dev in self.devices:
                        if dev not in s.power_w and dev not in s.energy_j:
                            continue
                        p = s.power_w.get(dev)
                        e = s.energy_j.get(dev)
                        src = self._owner[dev]
                        label = src.device_label(dev, counter=e is not None)
                        w.writerow(
                            [
                                f"{s.t_s:.6f}",
                                dev,
                                "" if p is None else f"{p:.3f}",
                                "" if e is None else f"{e:.6f}",
                                label,
                            ]
                        )
            tmp.replace(path)
        except OSError as err:
            # A bad --timeline path is the user's to fix: one line, and no stray .tmp left.
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write {path}: {err.strerror or err}") from err

    # ------------------------------------------------------------------ windows
    def _read_counters(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for src in self.sources:
            if isinstance(src, RemoteSource):
                # One fetch gives energy and power; both join the timeline (fresh ones only).
                t, p_r, e_r = self._remote_read(src)
                self._append(Sample(t, p_r, e_r))
                out.update(e_r)
                continue
            if src.has_energy_counter:
                e = src.read_energy_j()
                if e is not None:
                    out.update(e)
        return out

    def _timed_counters(self) -> tuple[float, dict[str, float]]:
        """Read the counters, stamped with the midpoint of the read.

        A read can take milliseconds (NVML ~4 ms on an H100, a DCGM scrape longer, or a busy
        CPU); the midpoint halves the worst error of stamping either end of it.
        """
        t_before = self.clock()
        counters = self._read_counters()
        return 0.5 * (t_before + self.clock()), counters

    def begin(self, name: str) -> None:
        """Open a window. Windows may nest and overlap; open names must be unique."""
        if name in self._open:
            raise ConfigError(f"window {name!r} is already open")
        if self._thread is None and not self._samples:
            self.start()
        if self.sync_cuda:
            sync_cuda()
        t, counters = self._timed_counters()
        self._open[name] = _OpenWindow(name, t, counters)

    def end(self, name: str) -> Measurement:
        """Close a window and return its Measurement."""
        win = self._open.pop(name, None)
        if win is None:
            raise ConfigError(f"window {name!r} was never begun (open: {sorted(self._open)})")
        if self.sync_cuda:
            sync_cuda()
        t, counters = self._timed_counters()
        warnings: list[str] = []
        # Only windows that were open when the sampler failed have a gap in their timeline.
        if self._sampler_error is not None and self._sampler_error_at >= win.start_s:
            warnings.append(f"background sampler failed: {self._sampler_error}")
        # A replayed trace has no readings past its end: energy there would read as 0 W.
        for src in self.sources:
            if getattr(src, "exhausted", False):
                warnings.append(
                    f"{src.name}: the window outlasted the trace; energy after its end is "
                    "not counted — replay a trace that covers the whole run"
                )
        # Power at the closing edge, so short windows and counterless devices integrate up to t.
        # Sources whose counter covers the window are not asked: it would only add edge latency.
        edge_power: dict[str, float] = {}
        for src in self.sources:
            period = src.counter_period_s
            short = period is not None and t - win.start_s < period
            if isinstance(src, RemoteSource):
                continue  # its closing reading is already in the timeline (_read_counters)
            if not src.has_energy_counter or short:
                p = src.read_power_w()
                if p is not None:
                    edge_power.update(p)
        return self._measure(name, win.start_s, t, win.counters, counters, edge_power, warnings)

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[WindowHandle]:
        """``with meter.window("prefill") as w: ...`` then read ``w.result``."""
        handle = WindowHandle(name)
        self.begin(name)
        try:
            yield handle
        finally:
            handle.measurement = self.end(name)

    def measure_between(self, start_s: float, end_s: float, name: str = "interval") -> Measurement:
        """Energy over ``[start_s, end_s]`` from the recorded timeline.

        Times are on the meter's clock: ``time.monotonic()`` values unless the meter was built
        with another ``clock=`` (``meter.clock()`` reads it), not ``time.time()`` or
        ``time.perf_counter()``.

        Counters are interpolated between samples; counterless devices are integrated. Used for
        windows chosen after the fact, such as a benchmark's steady state.
        """
        if end_s < start_s:
            raise ConfigError(f"interval ends before it starts: [{start_s}, {end_s}]")
        samples = self.timeline()
        if not samples:
            raise ConfigError("no samples recorded: start the meter before measuring")
        warnings: list[str] = []
        if start_s < samples[0].t_s or end_s > samples[-1].t_s:
            warnings.append("interval extends beyond the recorded timeline; edge values held")
        c0: dict[str, float] = {}
        c1: dict[str, float] = {}
        for dev in self.devices:
            ts = [s.t_s for s in samples if dev in s.energy_j]
            es = [s.energy_j[dev] for s in samples if dev in s.energy_j]
            if ts:
                c0[dev] = interpolate(ts, es, start_s)
                c1[dev] = interpolate(ts, es, end_s)
        return self._measure(
            name, start_s, end_s, c0, c1, {}, warnings, samples=samples, edges=False
        )

    def _measure(
        self,
        name: str,
        t0: float,
        t1: float,
        c0: Mapping[str, float],
        c1: Mapping[str, float],
        edge_power: Mapping[str, float],
        warnings: list[str],
        samples: Sequence[Sample] | None = None,
        *,
        edges: bool = True,
    ) -> Measurement:
        duration = max(0.0, t1 - t0)
        samples = self._samples_around(t0, t1) if samples is None else samples
        energy: dict[str, float] = {}
        labels: dict[str, str] = {}
        methods: dict[str, str] = {}
        bounds: dict[str, float] = {}
        partial: dict[str, str] = {}
        short_flagged: set[str] = set()
        remote = [d for d, src in self._owner.items() if isinstance(src, RemoteSource)]
        gaps = self._window_gaps(t0, t1) if remote else ()
        if remote:
            self._judge_remote(
                remote,
                t0,
                t1,
                c0 if edges else {},
                c1 if edges else {},
                samples,
                gaps,
                energy=energy,
                labels=labels,
                methods=methods,
                bounds=bounds,
                partial=partial,
                warnings=warnings,
            )
        for dev, src in self._owner.items():
            if dev in energy:
                continue
            period = src.counter_period_s
            use_counter = dev in c0 and dev in c1
            if use_counter and period is not None and duration < period:
                if dev in edge_power or any(dev in s.power_w for s in samples):
                    use_counter = False
                if src.name not in short_flagged:
                    short_flagged.add(src.name)
                    warnings.append(
                        f"window {duration * 1e3:.1f} ms is shorter than the {src.name} counter "
                        f"update period (~{period * 1e3:.0f} ms): "
                        + (
                            "integrated sampled power instead; treat as approximate"
                            if not use_counter
                            else "counter difference is quantized; treat as approximate"
                        )
                    )
            if use_counter:
                e = c1[dev] - c0[dev]
                if e < 0:
                    warnings.append(f"{dev}: counter went backwards ({e:.3f} J); clamped to 0")
                    e = 0.0
                energy[dev] = e
                labels[dev] = src.device_label(dev, counter=True)
            else:
                ts = [s.t_s for s in samples if dev in s.power_w]
                ps = [s.power_w[dev] for s in samples if dev in s.power_w]
                if dev in edge_power:
                    ts.append(t1)
                    ps.append(edge_power[dev])
                if not ts:
                    warnings.append(f"{dev}: no power readings in window; energy unknown (0)")
                    energy[dev] = 0.0
                else:
                    energy[dev] = trapezoid_between(ts, ps, t0, t1)
                    if len([t for t in ts if t0 <= t <= t1]) < 2:
                        warnings.append(
                            f"{dev}: fewer than 2 power samples inside the window; "
                            "integral rests on interpolated edges"
                        )
                labels[dev] = src.device_label(dev, counter=False)
        idle_subtracted = False
        idle_power: Mapping[str, float] | None = None
        if self.idle is not None:
            idle_power = dict(self.idle.power_w)
            if self.subtract_idle:
                idle_subtracted = True
                for dev in energy:
                    energy[dev] = max(0.0, energy[dev] - idle_power.get(dev, 0.0) * duration)
        total = sum(energy.values())
        in_window = [s for s in samples if t0 <= s.t_s <= t1 and s.power_w]
        peak: float | None = None
        if in_window:
            peak = max(sum(s.power_w.values()) for s in in_window)
        if edge_power:
            peak = max(peak or 0.0, sum(edge_power.values()))
        if idle_subtracted and peak is not None and idle_power is not None:
            peak = max(0.0, peak - sum(idle_power.values()))
        return Measurement(
            name=name,
            start_s=t0,
            end_s=t1,
            duration_s=duration,
            energy_j=energy,
            total_energy_j=total,
            avg_power_w=total / duration if duration > 0 else 0.0,
            peak_power_w=peak,
            sources=labels,
            idle_subtracted=idle_subtracted,
            idle_power_w=idle_power,
            warnings=tuple(warnings),
            methods=methods,
            uncertainty_j=bounds,
            partial_devices=partial,
            gaps=gaps,
        )

    def _window_gaps(self, t0: float, t1: float) -> tuple[Gap, ...]:
        out = []
        for g in self.gaps():
            end = t1 if g.end_s is None else g.end_s
            if end > t0 and g.start_s < t1:
                out.append(Gap(g.device, max(g.start_s, t0), min(end, t1), g.reason))
        return tuple(out)

    def _judge_remote(
        self,
        devices: Sequence[str],
        t0: float,
        t1: float,
        c0: Mapping[str, float],
        c1: Mapping[str, float],
        samples: Sequence[Sample],
        gaps: Sequence[Gap],
        *,
        energy: dict[str, float],
        labels: dict[str, str],
        methods: dict[str, str],
        bounds: dict[str, float],
        partial: dict[str, str],
        warnings: list[str],
    ) -> None:
        """Figures of remote devices: method, bound, coverage, gaps (see meter.figure)."""
        all_gaps = self.gaps()
        with self._state_lock:
            resets = list(self._resets)
        # The counter is known at its updates: reach back far enough to see the one before t0.
        reach = 0.0
        for d in devices:
            src = self._owner[d]
            if isinstance(src, RemoteSource):
                reach = max(reach, (self.update_period_s(d)[0] or 0.0) * src.delay_periods)
        earlier = [s for s in self._samples_around(t0 - 2.0 * reach, t0) if s.t_s < t0]
        samples = sorted({id(s): s for s in (*earlier, *samples)}.values(), key=lambda s: s.t_s)
        switched: dict[tuple[str, str], list[str]] = {}
        gap_effects: dict[tuple[float, float, str], list[float]] = {}
        for dev in devices:
            src = self._owner[dev]
            assert isinstance(src, RemoteSource)
            counter = [(s.t_s, s.energy_j[dev]) for s in samples if dev in s.energy_j]
            power = [(s.t_s, s.power_w[dev]) for s in samples if dev in s.power_w]
            if dev in c0:
                counter.append((t0, c0[dev]))
            if dev in c1:
                counter.append((t1, c1[dev]))
            period, how = self.update_period_s(dev)
            dev_gaps = [
                (g.start_s, math.inf if g.end_s is None else g.end_s, g.reason)
                for g in all_gaps
                if g.device == dev
            ]
            fig = device_figure(
                DeviceData(
                    device=dev,
                    t0=t0,
                    t1=t1,
                    counter=sorted(counter),
                    power=sorted(power),
                    counter_period_s=_times(period, src.delay_periods),
                    power_period_s=_times(self._power_period_s(dev), src.delay_periods),
                    gaps=dev_gaps,
                    resets=[(b, a, j) for d, b, a, j in resets if d == dev],
                    lag_s=self.sample_interval_s,
                )
            )
            energy[dev] = fig.energy_j
            labels[dev] = src.energy_label if fig.method == "counter" else src.power_label
            methods[dev] = fig.method
            if fig.bound_j is not None:
                bounds[dev] = fig.bound_j
            if fig.partial is not None:
                partial[dev] = fig.partial
            warnings.extend(fig.notes)
            if fig.method == "power-integral" and fig.counter_bound_j is not None:
                note = (
                    f"{src.name}: the counter changes only every ~{period:.3g} s ({how}), so over "
                    f"this {t1 - t0:.1f} s window a counter difference is uncertain by up to "
                    f"one period's energy; integrated power is tighter and was used"
                )
                scale = 100.0 / max(fig.energy_j, 1e-9)
                switched.setdefault((src.name, note), []).append(
                    f"{dev} (±{(fig.bound_j or 0.0) * scale:.1f}% vs "
                    f"±{fig.counter_bound_j * scale:.0f}%)"
                )
            for (g0, g1, why), eff in zip(dev_gaps, fig.gap_effect_j, strict=True):
                if g1 > t0 and g0 < t1:
                    gap_effects.setdefault((g0, g1, why), []).append(eff)
        for (_, note), devs in switched.items():
            warnings.append(f"{note}: {', '.join(devs)}")
        for (g0, g1, why), effs in sorted(gap_effects.items()):
            length = min(g1, t1) - max(g0, t0)
            effect = (
                "spanned by the energy counter: no effect on the figure"
                if not any(effs)
                else f"power interpolated across it: ±{sum(effs):.1f} J on the figure"
            )
            still = " (still open at the window's end)" if g1 >= t1 else ""
            warnings.append(
                f"gap of {length:.1f} s from +{max(g0, t0) - t0:.1f} s on {len(effs)} "
                f"device(s){still}: {why}; {effect}"
            )

    # ------------------------------------------------------------------ idle
    def idle_baseline(
        self, seconds: float, *, sleep: Callable[[float], None] = time.sleep
    ) -> IdleBaseline:
        """Measure idle power for ``seconds`` (do nothing else meanwhile) and remember it.

        Subsequent measurements report ``idle_power_w``; they subtract it only when the meter was
        built with ``subtract_idle=True``.
        """
        if not seconds > 0:
            raise ConfigError(f"idle baseline needs a positive duration, got {seconds}")
        name = "__idle__"
        self.begin(name)
        sleep(seconds)
        saved, self.idle = self.idle, None
        try:
            m = self.end(name)
        finally:
            self.idle = saved
        dur = m.duration_s if m.duration_s > 0 else seconds
        self.idle = IdleBaseline(
            power_w={d: e / dur for d, e in m.energy_j.items()},
            duration_s=dur,
            sources=dict(m.sources),
        )
        return self.idle


def _times(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


def median_edge_overhead_s(meter: Meter, repeats: int = 200) -> float:
    """Median wall time of one window edge (begin or end), for the overhead benchmark."""
    times: list[float] = []
    for i in range(repeats):
        t0 = time.perf_counter()
        meter.begin(f"o{i}")
        t1 = time.perf_counter()
        meter.end(f"o{i}")
        t2 = time.perf_counter()
        times += [t1 - t0, t2 - t1]
    return statistics.median(times)
