"""Meter a command the way ``time`` times it, and watch live power.

:func:`measure_command` opens one window around a child process::

    [idle baseline, optional]  begin("command") ── child runs ── child exits ── end("command")

The window includes process start-up (interpreter import, CUDA context creation): that is the
energy the command cost. The command runs in a process group of its own, and Ctrl-C (and SIGTERM,
e.g. from ``timeout``) is forwarded to that whole group, so a shell's children get it too; a second
one, or a command still running after ``grace_s``, escalates to SIGTERM, then SIGKILL, for the
whole group (see :func:`_wait`). What was measured up to then is returned, marked ``partial``. The report goes to stderr so the command's own output stays clean,
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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from perwatt._files import atomic_write_text
from perwatt._signals import (
    interrupt_reason,
    interrupts_deferred,
    sigterm_as_interrupt,
    was_sigterm,
)
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
    # Its own process group, so that an interrupt reaches everything the command started (a
    # shell's children too), and escalation can kill all of it: see _wait. The same session, so
    # the command keeps the terminal for its output (start_new_session would take it away).
    group: dict[str, Any] = (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    )
    try:
        return subprocess.Popen(list(argv), **group)
    except FileNotFoundError:
        raise ConfigError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise ConfigError(f"cannot execute {argv[0]}: permission denied") from None
    except OSError as e:
        raise ConfigError(f"cannot run {argv[0]}: {e.strerror or e}") from None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the command's process group (just the command if it has none of its own).

    Called only while the command is not yet reaped: its pid, the group's id, cannot have been
    reused by another process group.
    """
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:  # started by a custom launch() in perwatt's own group: never signal perwatt
            os.kill(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc: subprocess.Popen[bytes], timeout_s: float | None) -> bool:
    """Wait up to ``timeout_s`` (None: for ever) for the command to exit, without reaping it.

    Left unreaped, its pid stays taken, so its process group can still be signalled safely.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return True
        if info is not None and info.si_pid == proc.pid:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(0.05, delay * 2)


def _terminal_fd() -> int | None:
    """The stdin of perwatt (which the command shares) if it is a terminal perwatt holds in the
    foreground; None otherwise (no terminal, or perwatt itself runs in the background)."""
    try:
        return 0 if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp() else None
    except OSError:
        return None


def _set_foreground(fd: int, pgid: int) -> None:
    # SIGTTOU blocked: handing the terminal back from the background is otherwise stopped by it
    # (POSIX tcsetpgrp); pthread_sigmask works from any thread, unlike signal.signal.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(fd, pgid)
    except OSError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _wait_for_exit(proc: subprocess.Popen[bytes]) -> None:
    """Block until the command exits, leaving it unreaped (see :func:`_exited`).

    Blocking in the kernel, not polling: no delay is added to the measured window. The command
    runs in a background process group, so reading from (or, with ``stty tostop``, writing to)
    the terminal stops it; then, as a shell does for ``fg``, it is given the terminal and
    continued, and the terminal comes back to perwatt when it exits. From then on the
    terminal's Ctrl-C goes to the command alone (an interactive command handles its own).
    """
    handed_over: int | None = None
    try:
        while True:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WSTOPPED | os.WNOWAIT)
            if info is None or info.si_code != os.CLD_STOPPED:
                return
            os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOHANG)  # take the stop report
            tty_stop = info.si_status in (signal.SIGTTIN, signal.SIGTTOU)
            if tty_stop and handed_over is None and (fd := _terminal_fd()) is not None:
                _set_foreground(fd, proc.pid)
                handed_over = fd
                _signal_group(proc, signal.SIGCONT)
    finally:
        if handed_over is not None:
            _set_foreground(handed_over, os.getpgrp())


def _wait(proc: subprocess.Popen[bytes], grace_s: float, kill_s: float = 2.0) -> str | None:
    """Wait for the command; on Ctrl-C or SIGTERM stop its whole process group, in steps.

    1. the signal perwatt got (SIGINT or SIGTERM) goes to the group, as a terminal sends Ctrl-C
       to a foreground job (the command runs in a group of its own, so the terminal's Ctrl-C
       reaches perwatt alone and this is how the command gets it);
    2. if the command has not exited after ``grace_s``, or a second signal comes: SIGTERM (with
       SIGCONT, for a command stopped meanwhile) to the group;
    3. if it has not exited ``kill_s`` later, or a third signal comes: SIGKILL to the group.

    Once the command is gone after an interrupt, whatever of its group is left (a grandchild
    that ignored the signals) is killed too. Returns why the wait was cut short (the
    measurement is then partial), or None. The command is never left running.
    """
    try:
        _wait_for_exit(proc)
        proc.wait()
        return None
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (perwatt._signals.Terminated)
        # (meter's own wording for SIGTERM, kept: scripts may match "terminated by SIGTERM")
        sig = signal.SIGTERM if was_sigterm(e) else signal.SIGINT
        why = "terminated by SIGTERM" if sig == signal.SIGTERM else interrupt_reason(e)
    except BaseException:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    steps = ((sig, grace_s), (signal.SIGTERM, kill_s))
    step = 0
    while step < len(steps):
        try:
            while step < len(steps):
                send, wait_s = steps[step]
                step += 1
                _signal_group(proc, send)
                if step > 1:  # a command stopped meanwhile (Ctrl-Z, SIGTTIN) must run to die
                    _signal_group(proc, signal.SIGCONT)
                if _exited(proc, wait_s):
                    break
            break
        except KeyboardInterrupt:  # one more signal: go on to the next step now
            continue
    # Held off from here on: this is the last step, and it must not be cut short.
    with interrupts_deferred():
        _signal_group(proc, signal.SIGKILL)  # the rest of the group; the command itself if alive
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
    # until the command exits it is handled as Ctrl-C is (``_wait`` passes it on); after that,
    # while the final energy is read, both are held off and dropped (the command is done;
    # perwatt exits right after reporting), so that reading is not lost.
    with sigterm_as_interrupt():
        t_before = meter.clock()
        meter.begin(name)
        t_begin = 0.5 * (t_before + meter.clock())  # as begin() stamps it: the read's midpoint
        try:
            proc = launch(argv)
        except BaseException:
            meter.end(name)
            raise
        interrupted = _wait(proc, grace_s)
        with interrupts_deferred(drop=True):
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
    # lazy: rich costs ~30 ms of start-up and only this output uses it
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
            label = owner[d].device_label(d, counter=d in counted)
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
