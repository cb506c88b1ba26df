"""Meter a command the way ``time`` times it, and watch live power.

:func:`measure_command` opens one window around a child process::

    [idle baseline, optional]  begin("command") ── child runs ── child exits ── end("command")

The window includes process start-up (interpreter import, CUDA context creation): that is the
energy the command cost. Ctrl-C (and SIGTERM, e.g. from ``timeout``) is forwarded to the child (a
second one, or a child that ignores it for ``grace_s``, kills it); what was measured up to then is
returned, marked ``partial``. The report goes to stderr so the command's own output stays clean,
like ``time``.

A power source that fails while the command runs (dcgm-exporter stopped answering, a GPU fell off
the bus) does not stop the command: it is the user's work, and metering it is secondary. perwatt
waits for it as usual, then reports the energy up to the last good reading, marked ``partial``
with the reason, and exits non-zero (the command's code, or 1 if the command succeeded). A source
that fails and recovers before the end loses nothing where energy comes from a counter (the
difference of the two edge readings) and is only flagged.

:func:`watch_power` prints a per-device power table at a fixed interval until interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from perwatt._files import atomic_write_text
from perwatt.errors import ConfigError, DeviceError, RemoteSourceError, SourceUnavailableError
from perwatt.meter.meter import Measurement, Meter


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandMeasurement:
    """A command's energy: the window around it, its exit code, and whether it was cut short.

    ``exit_code`` is what ``perwatt meter`` exits with: the command's own code
    (``command_exit_code``), except 1 when the command succeeded but the measurement is partial
    because a power source failed, so a script never mistakes a partial figure for a whole one.
    """

    argv: tuple[str, ...]
    exit_code: int
    measurement: Measurement
    partial: bool
    sources: tuple[str, ...]  # one description per power source
    fake: bool  # a FakeNVML stood in for the GPUs
    partial_reason: str | None = None
    command_exit_code: int | None = None  # None: the same as exit_code
    source_failed: bool = False  # a power source broke mid-run: energy covers part of it

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("a command measurement needs the command")
        if self.partial != (self.partial_reason is not None):
            raise ValueError("partial_reason is given exactly when the measurement is partial")
        if self.source_failed and not self.partial:
            raise ValueError("a measurement cut short by a failed source is partial")

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.argv),
            "exit_code": self.exit_code,
            "command_exit_code": (
                self.exit_code if self.command_exit_code is None else self.command_exit_code
            ),
            "partial": self.partial,
            "partial_reason": self.partial_reason,
            "fake_gpus": self.fake,
            "source_descriptions": list(self.sources),
            **self.measurement.to_dict(),
        }


def _exit_code(returncode: int) -> int:
    """Shell convention: a child killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _launch(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(list(argv))
    except FileNotFoundError:
        raise ConfigError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise ConfigError(f"cannot execute {argv[0]}: permission denied") from None
    except OSError as e:
        raise ConfigError(f"cannot run {argv[0]}: {e.strerror or e}") from None


class _Terminated(Exception):
    """SIGTERM reached perwatt while the command ran (``timeout``, ``kill``, a job scheduler)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _wait(proc: subprocess.Popen[bytes], grace_s: float) -> str | None:
    """Wait for the child; on Ctrl-C or SIGTERM forward the signal, then kill after ``grace_s``.

    Returns why the wait was cut short (the measurement is then partial), or None. The child is
    never left running: whatever interrupts the wait, it is signalled, then killed.
    """
    try:
        proc.wait()
        return None
    except KeyboardInterrupt:
        # A terminal Ctrl-C already reached the child (same process group); a `kill -INT` sent
        # to perwatt alone did not, so forward it.
        sig, why = signal.SIGINT, "interrupted by Ctrl-C"
    except _Terminated:
        sig, why = signal.SIGTERM, "terminated by SIGTERM"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    try:
        # a second Ctrl-C/SIGTERM anywhere from here on means "stop now": kill the child
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        proc.wait(timeout=grace_s)
    except (KeyboardInterrupt, _Terminated, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    return f"{why}: partial measurement up to the interrupt"


#: Errors of a power source that broke while the command ran: reported as a partial measurement.
SOURCE_FAILURES: tuple[type[Exception], ...] = (
    RemoteSourceError,
    DeviceError,
    SourceUnavailableError,
)


def _measured_until_failure(
    meter: Meter, name: str, t_begin: float, t_exit: float, error: Exception
) -> tuple[Measurement, str]:
    """Energy from ``t_begin`` up to the last reading every source answered, and why it stops."""
    samples = meter.timeline()
    t_last = max(t_begin, samples[-1].t_s) if samples else t_begin
    m = meter.measure_between(t_begin, t_last, name=name)
    reason = (
        f"power source failed during the command ({error}); energy covers only its first "
        f"{t_last - t_begin:.1f} s of {max(t_exit, t_last) - t_begin:.1f} s, up to the last "
        "good reading"
    )
    return m, reason


def measure_command(
    argv: Sequence[str],
    meter: Meter,
    *,
    idle_s: float = 0.0,
    grace_s: float = 5.0,
    launch: Callable[[Sequence[str]], subprocess.Popen[bytes]] = _launch,
) -> CommandMeasurement:
    """Run ``argv`` inside one meter window and return its energy.

    ``idle_s`` > 0 first measures idle power for that long (reported; subtracted only if the
    meter was built with ``subtract_idle=True``). The meter is started here if it is not running;
    the caller closes it. A power source failing mid-run gives a partial measurement (see the
    module docstring), not an exception.
    """
    if not argv:
        raise ConfigError("no command given: perwatt meter -- CMD ARGS...")
    if not 0 <= idle_s < math.inf:  # NaN would silently skip the baseline
        raise ConfigError(f"--idle must be >= 0 seconds, got {idle_s}")
    meter.start()
    if idle_s > 0:
        meter.idle_baseline(idle_s)
    name = "command"
    # SIGTERM would otherwise end perwatt at once and orphan the command: from before the launch
    # until the child exits it is forwarded (``_wait``); after that, while the final energy is
    # read, it is held off (the command is done; perwatt exits right after reporting), so that
    # reading is not lost. (Handlers can only be set from the main thread.)
    on_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
    late_term: list[int] = []
    try:
        t_before = meter.clock()
        meter.begin(name)
        t_begin = 0.5 * (t_before + meter.clock())  # as begin() stamps it: the read's midpoint
        try:
            proc = launch(argv)
        except BaseException:
            meter.end(name)
            raise
        interrupted = _wait(proc, grace_s)
        if on_main:
            signal.signal(signal.SIGTERM, lambda signum, frame: late_term.append(signum))
        t_exit = meter.clock()
        rc = _exit_code(proc.returncode) if proc.returncode is not None else 130
        reasons: list[str] = [] if interrupted is None else [interrupted]
        source_failed = False
        try:
            m = meter.end(name)
        except SOURCE_FAILURES as e:
            m, why = _measured_until_failure(meter, name, t_begin, t_exit, e)
            reasons.append(why)
            source_failed = True
    finally:
        if on_main:  # None: the old handler was not set from Python; restore the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_term is None else old_term)
    if m.partial_devices:
        # Stale or missing telemetry for some devices: their figures cover part of the run.
        reasons.append("; ".join(m.partial_devices.values()))
        source_failed = True
    for why in reasons:
        m = _with_warning(m, why)
    return CommandMeasurement(
        argv=tuple(argv),
        exit_code=1 if source_failed and rc == 0 else rc,
        command_exit_code=rc,
        source_failed=source_failed,
        measurement=m,
        partial=bool(reasons),
        partial_reason="; ".join(reasons) if reasons else None,
        sources=tuple(s.describe() for s in meter.sources),
        fake=any(bool(getattr(s, "fake", False)) for s in meter.sources),
    )


def _with_warning(m: Measurement, warning: str) -> Measurement:
    d = {f: getattr(m, f) for f in m.__dataclass_fields__}
    d["warnings"] = (*m.warnings, warning)
    return Measurement(**d)


def _fmt_j(j: float) -> str:
    if j >= 1e6:
        return f"{j / 3.6e6:.3f} kWh"
    if j >= 1e4:
        return f"{j / 1e3:.2f} kJ"
    return f"{j:.2f} J"


def format_command_measurement(cm: CommandMeasurement) -> str:
    """The ``time``-like text block: duration, energy per device and total, power, source."""
    m = cm.measurement
    out: list[str] = []
    kind = "power source failed" if cm.source_failed else "interrupted"
    head = "perwatt meter" + (f" (PARTIAL: {kind})" if cm.partial else "")
    out.append(f"{head}: {' '.join(cm.argv)}")
    if cm.fake:
        out.append("  NOTE: FAKE GPUs (PERWATT_FAKE_NVML): figures are simulated, not measured")
    if cm.command_exit_code is not None and cm.command_exit_code != cm.exit_code:
        out.append(
            f"  exit code   {cm.exit_code} (the command exited {cm.command_exit_code}; "
            "non-zero because the measurement is partial)"
        )
    else:
        out.append(f"  exit code   {cm.exit_code}")
    out.append(f"  duration    {m.duration_s:.3f} s")
    width = max((len(d) for d in m.energy_j), default=0)
    for i, (dev, e) in enumerate(sorted(m.energy_j.items())):
        label = "energy      " if i == 0 else "            "
        avg = e / m.duration_s if m.duration_s > 0 else 0.0
        tag = m.sources[dev]
        if dev in m.methods:  # remote sources: how the figure was obtained and how sure it is
            tag += f", {m.methods[dev]}"
            if dev in m.uncertainty_j and e > 0:
                tag += f" ±{100 * m.uncertainty_j[dev] / e:.1f}%"
        if dev in m.partial_devices:
            tag += ", PARTIAL"
        out.append(f"  {label}{dev:<{width}}  {_fmt_j(e):>12}  avg {avg:8.1f} W  [{tag}]")
    out.append(f"  total       {_fmt_j(m.total_energy_j)}")
    out.append(f"  avg power   {m.avg_power_w:.1f} W")
    peak = "n/a" if m.peak_power_w is None else f"{m.peak_power_w:.1f} W"
    out.append(f"  peak power  {peak}  (sampled)")
    measured = m.measured
    src_note = "" if measured else " — a model, NOT a measurement"
    out.append(f"  source      {m.source}{src_note}")
    for desc in cm.sources:
        out.append(f"  metered     {desc}")
    if m.idle_power_w is not None:
        idle = sum(m.idle_power_w.values())
        state = "subtracted" if m.idle_subtracted else "not subtracted"
        out.append(f"  idle        {idle:.1f} W measured before the command, {state}")
    else:
        out.append("  idle        not measured, not subtracted")
    for w in m.warnings:
        out.append(f"  warning: {w}")
    return "\n".join(out)


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON atomically (``.tmp`` then rename)."""
    try:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None


# ------------------------------------------------------------------------- watch


def watch_power(
    meter: Meter,
    *,
    interval_s: float = 1.0,
    count: int | None = None,
    out: TextIO | None = None,
    live: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show a live per-device power table every ``interval_s`` until Ctrl-C (or ``count`` rows).

    On a terminal the table refreshes in place (rich Live); elsewhere one table is printed per
    refresh, so logs and tests see every reading. Returns the number of refreshes shown.
    """
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    if not interval_s > 0:
        raise ConfigError(f"--interval must be positive, got {interval_s}")
    if count is not None and count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    console = Console(file=out or sys.stdout)
    use_live = console.is_terminal if live is None else live
    owner = {d: src for src in meter.sources for d in src.devices}
    energy = dict.fromkeys(meter.devices, 0.0)
    fake = any(bool(getattr(s, "fake", False)) for s in meter.sources)
    prev = meter.sample_now()
    t_start = prev.t_s

    def table(t: float, power: Mapping[str, float], counted: Mapping[str, float]) -> Table:
        title = f"perwatt power — {t - t_start:.1f} s"
        if fake:
            title += " — FAKE GPUs, simulated"
        tab = Table(title=title)
        tab.add_column("device")
        tab.add_column("power (W)", justify="right")
        tab.add_column("energy (J)", justify="right")
        tab.add_column("source")
        for d in meter.devices:
            p = power.get(d)
            # Energy from a counter carries the counter's label; otherwise it is integrated power.
            label = owner[d].energy_label if d in counted else owner[d].power_label
            tab.add_row(d, "…" if p is None else f"{p:.1f}", f"{energy[d]:.1f}", label)
        tab.add_row("total", f"{sum(power.values()):.1f}", f"{sum(energy.values()):.1f}", "")
        return tab

    shown = 0
    ctx: contextlib.AbstractContextManager[Any] = (
        Live(table(prev.t_s, prev.power_w, prev.energy_j), console=console, auto_refresh=False)
        if use_live
        else contextlib.nullcontext()
    )
    try:
        with ctx as live_view:
            while count is None or shown < count:
                sleep(interval_s)
                s = meter.sample_now()
                dt = s.t_s - prev.t_s
                for d in meter.devices:
                    if d in s.energy_j and d in prev.energy_j:
                        energy[d] += max(0.0, s.energy_j[d] - prev.energy_j[d])
                    elif d in s.power_w and d in prev.power_w:
                        energy[d] += 0.5 * (s.power_w[d] + prev.power_w[d]) * dt
                prev = s
                shown += 1
                tab = table(s.t_s, s.power_w, s.energy_j)
                if live_view is not None:
                    live_view.update(tab, refresh=True)
                else:
                    console.print(tab)
    except KeyboardInterrupt:
        pass
    return shown
