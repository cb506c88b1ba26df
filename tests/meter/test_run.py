"""measure_command and its report, in-process on the simulated source."""

from __future__ import annotations

import io
import re
import sys

import pytest

from perwatt.errors import ConfigError
from perwatt.meter import Meter, SimulatedSource
from perwatt.meter.run import format_command_measurement, measure_command


def test_measure_command_energy_covers_the_child() -> None:
    meter = Meter(SimulatedSource(power_w=100.0), sample_interval_s=0.05, sync_cuda=False)
    try:
        cm = measure_command([sys.executable, "-c", "import time; time.sleep(0.3)"], meter)
    finally:
        meter.close()
    m = cm.measurement
    assert cm.exit_code == 0 and not cm.partial
    assert m.duration_s >= 0.3
    assert m.energy_j["sim0"] == pytest.approx(100.0 * m.duration_s, rel=1e-2)
    text = format_command_measurement(cm)
    assert "avg power   100.0 W" in text
    assert "source      simulated — a model, NOT a measurement" in text


def test_signal_death_maps_to_shell_exit_code() -> None:
    meter = Meter(SimulatedSource(), sync_cuda=False)
    try:
        cm = measure_command(["sh", "-c", "kill -TERM $$"], meter)
    finally:
        meter.close()
    assert cm.exit_code == 128 + 15


def test_idle_baseline_is_reported() -> None:
    meter = Meter(SimulatedSource(power_w=50.0), sync_cuda=False)
    try:
        cm = measure_command(["true"], meter, idle_s=0.1)
    finally:
        meter.close()
    idle_w = cm.measurement.idle_power_w
    assert idle_w == {"sim0": pytest.approx(50.0, rel=1e-2)}
    # the figure printed is the one measured (over 0.1 s it can read 50.1 W: edge timing)
    text = format_command_measurement(cm)
    assert f"{idle_w['sim0']:.1f} W measured before the command, not subtracted" in text


def test_bad_arguments() -> None:
    meter = Meter(SimulatedSource(), sync_cuda=False)
    try:
        with pytest.raises(ConfigError, match="no command"):
            measure_command([], meter)
        with pytest.raises(ConfigError, match="--idle"):
            measure_command(["true"], meter, idle_s=-1)
        with pytest.raises(ConfigError, match="--idle"):
            measure_command(["true"], meter, idle_s=float("nan"))
        with pytest.raises(ConfigError, match="command not found: nope-perwatt"):
            measure_command(["nope-perwatt"], meter)
        # The failed launch closed its window: the next one can reuse the name.
        assert measure_command(["true"], meter).exit_code == 0
    finally:
        meter.close()


def test_watch_power_table_labels_and_energy() -> None:
    from perwatt.meter.nvml import open_nvml_sources
    from perwatt.meter.run import watch_power
    from perwatt.meter.testing import FakeClock, FakeNVML

    clock = FakeClock()
    fake = FakeNVML.with_gpus(["H100", "P100"], clock=clock)
    meter = Meter(open_nvml_sources(nvml=fake), clock=clock, sampler=False, sync_cuda=False)
    out = io.StringIO()
    try:
        shown = watch_power(
            meter, interval_s=0.5, count=2, out=out, live=False, sleep=clock.advance
        )
    finally:
        meter.close()
    text = out.getvalue()
    assert shown == 2 and text.count("perwatt power") == 2
    last = text[text.rindex("perwatt power") :]
    assert "nvml-counter" in last and "nvml-power-integral" in last
    # H100 idle 70 W for 1 s (counter), P100 idle 30 W for 1 s (integrated).
    assert re.search(r"gpu0\s*│\s*70\.0\s*│\s*70\.0\s*│\s*nvml-counter", last)
    assert re.search(r"gpu1\s*│\s*30\.0\s*│\s*30\.0\s*│\s*nvml-power-integral", last)
    with pytest.raises(ConfigError, match="--count"):
        watch_power(meter, count=0)
