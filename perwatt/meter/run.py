"""Meter a command the way ``time`` times it, and watch live power.

:func:`measure_command` opens one window around a child process::

    [idle baseline, optional]  begin("command") ── child runs ── child exits ── end("command")

The window includes process start-up (interpreter import, CUDA context creation): that is the
energy the command cost. Ctrl-C is forwarded to the child (a second one kills it); what was
measured up to then is returned, marked ``partial``. The report goes to stderr so the command's
own output stays clean, like ``time``.

:func:`watch_power` prints a per-device power table at a fixed interval until interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from perwatt._files import atomic_write_text
from perwatt.errors import ConfigError
from perwatt.meter.meter import Measurement, Meter


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandMeasurement:
    """A command's energy: the window around it, its exit code, and whether it was cut short."""

    argv: tuple[str, ...]
    exit_code: int
    measurement: Measurement
    partial: bool
    sources: tuple[str, ...]  # one description per power source
    fake: bool  # a FakeNVML stood in for the GPUs

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("a command measurement needs the command")

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.argv),
            "exit_code": self.exit_code,
            "partial": self.partial,
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


def _wait(proc: subprocess.Popen[bytes], grace_s: float) -> bool:
    """Wait for the child; on Ctrl-C forward SIGINT, then kill after ``grace_s``.

    Returns True when the wait was interrupted (the measurement is then partial).
    """
    try:
        proc.wait()
        return False
    except KeyboardInterrupt:
        pass
    # A terminal Ctrl-C already reached the child (same process group); a `kill -INT` sent to
    # perwatt alone did not, so forward it.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    return True


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
    the caller closes it.
    """
    if not argv:
        raise ConfigError("no command given: perwatt meter -- CMD ARGS...")
    if not 0 <= idle_s < math.inf:  # NaN would silently skip the baseline
        raise ConfigError(f"--idle must be >= 0 seconds, got {idle_s}")
    meter.start()
    if idle_s > 0:
        meter.idle_baseline(idle_s)
    name = "command"
    meter.begin(name)
    try:
        proc = launch(argv)
    except BaseException:
        meter.end(name)
        raise
    interrupted = _wait(proc, grace_s)
    m = meter.end(name)
    rc = _exit_code(proc.returncode) if proc.returncode is not None else 130
    if interrupted:
        m = _with_warning(m, "interrupted by Ctrl-C: partial measurement up to the interrupt")
    return CommandMeasurement(
        argv=tuple(argv),
        exit_code=rc,
        measurement=m,
        partial=interrupted,
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
    head = "perwatt meter" + (" (PARTIAL: interrupted)" if cm.partial else "")
    out.append(f"{head}: {' '.join(cm.argv)}")
    if cm.fake:
        out.append("  NOTE: FAKE GPUs (PERWATT_FAKE_NVML): figures are simulated, not measured")
    out.append(f"  exit code   {cm.exit_code}")
    out.append(f"  duration    {m.duration_s:.3f} s")
    width = max((len(d) for d in m.energy_j), default=0)
    for i, (dev, e) in enumerate(sorted(m.energy_j.items())):
        label = "energy      " if i == 0 else "            "
        avg = e / m.duration_s if m.duration_s > 0 else 0.0
        out.append(
            f"  {label}{dev:<{width}}  {_fmt_j(e):>12}  avg {avg:8.1f} W  [{m.sources[dev]}]"
        )
    out.append(f"  total       {_fmt_j(m.total_energy_j)}")
    out.append(f"  avg power   {m.avg_power_w:.1f} W")
    peak = "n/a" if m.peak_power_w is None else f"{m.peak_power_w:.1f} W"
    out.append(f"  peak power  {peak}  (sampled)")
    measured = m.measured
    src_note = "" if measured else " — a model, NOT a measurement"
    out.append(f"  source      {m.source}{src_note}")
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
