"""Replay: the meter's own timeline round-trips; malformed trace files fail naming file:line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from perwatt.errors import ConfigError, DataFormatError
from perwatt.meter import (
    Meter,
    PowerSource,
    ReplaySource,
    SimulatedSource,
    is_measured,
    load_trace,
)


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class CounterOnly(PowerSource):
    """Like RAPL: a counter, no instant power (the timeline's first row has no power)."""

    name = "ctr"
    energy_label = "rapl"
    power_label = "rapl"

    def __init__(self, clock: Clock, watts: float) -> None:
        self.clock = clock
        self.watts = watts
        self.t0 = clock()

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cpu0-package",)

    @property
    def has_energy_counter(self) -> bool:
        return True

    def read_energy_j(self) -> Mapping[str, float]:
        return {"cpu0-package": self.watts * (self.clock() - self.t0)}


def record(tmp_path: Path) -> tuple[Path, Meter, Clock]:
    """Record 20 s of a load pattern from a simulated GPU and a RAPL-like counter."""
    clock = Clock(500.0)
    gpu = SimulatedSource(idle_w=80.0, busy_w=400.0, clock=clock, prefix="gpu")
    cpu = CounterOnly(clock, 35.0)
    meter = Meter([gpu, cpu], sampler=False, sync_cuda=False, clock=clock)
    meter.start()
    for i in range(1, 21):
        gpu.set_load(1.0 if 5 <= i < 15 else 0.0)
        clock.advance(1.0)
        meter.sample_now()
    path = tmp_path / "timeline.csv"
    meter.write_timeline(path)
    meter.close()
    return path, meter, clock


def test_timeline_round_trip_through_replay(tmp_path: Path) -> None:
    path, original, _ = record(tmp_path)
    trace = load_trace(path)
    assert set(trace.devices) == {"gpu0", "cpu0-package"}
    assert trace.start_s == pytest.approx(500.0)
    assert trace.end_s == pytest.approx(520.0)

    want = original.measure_between(503.5, 517.25)
    got_trace = trace.energy_between_j(503.5, 517.25)
    for dev in ("gpu0", "cpu0-package"):
        assert got_trace[dev] == pytest.approx(want.energy_j[dev], rel=1e-6)

    clock = Clock(0.0)
    replay = ReplaySource(trace, clock=clock)
    meter = Meter(replay, sampler=False, sync_cuda=False, clock=clock)
    with meter:
        clock.advance(3.5)
        meter.begin("w")
        clock.advance(13.75)
        meter.sample_now()
        m = meter.end("w")
    # The trace's source column travels: the replayed figures keep their origin.
    assert m.sources == {"gpu0": "replay(simulated)", "cpu0-package": "replay(rapl)"}
    assert m.source == "mixed(replay(rapl),replay(simulated))"
    assert not m.measured
    for dev in ("gpu0", "cpu0-package"):
        assert m.energy_j[dev] == pytest.approx(want.energy_j[dev], rel=1e-6)
    # The RAPL-like device's first row has no power: it was filled from the counter's slope.
    assert trace.devices["cpu0-package"].power_w[0] == pytest.approx(35.0)


def test_replay_speed_and_exhaustion(tmp_path: Path) -> None:
    path, _, _ = record(tmp_path)
    clock = Clock(0.0)
    src = ReplaySource(path, clock=clock, speed=10.0)
    assert "20.0 s trace at 10x" in src.describe()
    clock.advance(1.0)  # 10 s into the trace
    assert src.trace_time_s() == pytest.approx(510.0)
    assert src.read_power_w()["gpu0"] == pytest.approx(400.0)
    assert not src.exhausted
    clock.advance(1.5)
    assert src.exhausted
    e = src.read_energy_j()
    clock.advance(5.0)
    assert src.read_energy_j() == e  # held after the end
    with pytest.raises(ConfigError, match="speed"):
        ReplaySource(path, speed=0)


def test_window_past_the_end_of_the_trace_is_flagged(tmp_path: Path) -> None:
    path, _, _ = record(tmp_path)
    clock = Clock(0.0)
    meter = Meter(ReplaySource(path, clock=clock), sampler=False, sync_cuda=False, clock=clock)
    with meter:
        meter.begin("inside")
        clock.advance(10.0)
        inside = meter.end("inside")
        meter.begin("past")
        clock.advance(15.0)  # the trace is 20 s long
        past = meter.end("past")
    assert not any("outlasted the trace" in w for w in inside.warnings)
    assert any("outlasted the trace" in w for w in past.warnings)


def test_power_only_csv_integrates_and_jsonl_matches(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("time_s,device,power_w,extra\n0,g,100,x\n1,g,200,y\n3,g,200,z\n")
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        "\n".join(
            json.dumps({"t_s": t, "device": "g", "power_w": p})
            for t, p in ((0, 100), (1, 200), (3, 200))
        )
        + "\n\n"
    )
    for path in (csv_path, jl):
        trace = load_trace(path)
        assert trace.energy_between_j(0.0, 3.0) == {"g": pytest.approx(150.0 + 400.0)}
        # Between readings power is linear, so partial segments follow the trapezoid too.
        assert trace.energy_between_j(0.5, 2.0)["g"] == pytest.approx(
            0.5 * (150 + 200) * 0.5 + 200.0
        )
        clock = Clock(0.0)
        src = ReplaySource(trace, clock=clock)
        clock.advance(0.5)
        e0 = src.read_energy_j()["g"]
        assert src.read_power_w()["g"] == pytest.approx(150.0)
        clock.advance(1.5)
        assert src.read_energy_j()["g"] - e0 == pytest.approx(87.5 + 200.0)


def _fails(tmp_path: Path, name: str, text: str, fragment: str, line: int | None) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError) as ei:
        load_trace(path)
    msg = str(ei.value)
    where = f"{path}:{line}:" if line is not None else f"{path}"
    assert msg.startswith(where), msg
    assert fragment in msg, msg


@pytest.mark.parametrize(
    ("name", "text", "fragment", "line"),
    [
        ("num.csv", "time_s,device,power_w\n0,g,100\n1,g,abc\n", "'abc' is not a number", 3),
        ("nan.csv", "time_s,device,power_w\n0,g,100\n1,g,nan\n", "finite", 3),
        ("inf.csv", "time_s,device,power_w\n0,g,inf\n", "finite", 2),
        ("time.csv", "time_s,device,power_w\n0,g,1\n2,g,1\n2,g,1\n", "does not increase", 4),
        ("back.csv", "time_s,device,power_w\n5,g,1\n4,g,1\n", "does not increase", 3),
        ("cols.csv", "t,dev,watts\n0,g,1\n", "needs time_s, device and power_w", 2),
        ("neg.csv", "time_s,device,power_w\n0,g,-5\n", "negative power", 2),
        ("none.csv", "time_s,device,power_w,energy_j\n0,g,,\n", "neither power_w nor energy_j", 2),
        ("short.csv", "time_s,device,power_w\n0,g\n", "neither power_w nor energy_j", 2),
        ("dev.csv", "time_s,device,power_w\n0, ,1\n", "empty device name", 2),
        (
            "bad.jsonl",
            '{"time_s": 0, "device": "g", "power_w": 1}\n{"time_s": 1,\n',
            "not valid JSON",
            2,
        ),
        ("arr.jsonl", '{"time_s": 0, "device": "g", "power_w": 1}\n[1, 2]\n', "a JSON object", 2),
        ("keys.jsonl", '{"time_s": 0, "device": "g"}\n', "needs time_s, device and power_w", 1),
        ("str.jsonl", '{"time_s": "soon", "device": "g", "power_w": 1}\n', "time 'soon'", 1),
    ],
)
def test_malformed_trace_names_file_and_line(
    tmp_path: Path, name: str, text: str, fragment: str, line: int
) -> None:
    _fails(tmp_path, name, text, fragment, line)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("empty.csv", "", "empty trace file"),
        ("header.csv", "time_s,device,power_w\n", "no readings"),
        ("one.csv", "time_s,device,power_w\n0,g,100\n", "has one reading"),
        ("dec.csv", "time_s,device,power_w,energy_j\n0,g,1,10\n1,g,1,5\n", "decreases"),
        ("mix.csv", "time_s,device,power_w,energy_j\n0,g,1,\n1,g,,5\n", "mixes rows"),
    ],
)
def test_malformed_whole_file(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    _fails(tmp_path, name, text, fragment, None)


def test_binary_trace_is_a_data_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataFormatError, match="not a UTF-8"):
        load_trace(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="cannot read trace"):
        load_trace(tmp_path / "absent.csv")


def test_replay_keeps_the_original_source_label(tmp_path: Path) -> None:
    """A replay of simulated or FAKE data must never read as plain ``replay`` (issue 9)."""
    path = tmp_path / "t.csv"
    path.write_text(
        "time_s,device,power_w,energy_j,source\n"
        "0,gpu0,100,0,nvml-counter\n1,gpu0,100,100,nvml-counter\n"
        "0,sim0,50,,simulated\n1,sim0,50,,simulated\n"
    )
    src = ReplaySource(path)
    assert src.device_label("gpu0", counter=True) == "replay(nvml-counter)"
    assert src.device_label("sim0", counter=False) == "replay(simulated)"
    assert src.energy_label == "mixed(replay(nvml-counter),replay(simulated))"
    assert not is_measured(src.energy_label)
    assert not is_measured("replay(nvml-counter)")


def test_replay_without_source_column_is_plain_replay(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time_s,device,power_w\n0,gpu0,100\n1,gpu0,100\n")
    assert ReplaySource(path).device_label("gpu0", counter=True) == "replay"


def test_replay_of_a_replay_keeps_the_innermost_origin(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "time_s,device,power_w,source\n0,gpu0,100,replay(simulated)\n1,gpu0,100,replay(simulated)\n"
    )
    assert ReplaySource(path).device_label("gpu0", counter=True) == "replay(simulated)"


def test_replay_rejects_an_unknown_source_label(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time_s,device,power_w,source\n0,gpu0,100,magic\n1,gpu0,100,magic\n")
    with pytest.raises(DataFormatError, match="'magic' is not a perwatt source label"):
        load_trace(path)


@pytest.mark.parametrize(
    ("label", "measured"),
    [
        ("nvml-counter", True),
        ("mixed(nvml-counter,rapl)", True),
        ("replay", False),
        ("replay(simulated)", False),
        ("replay(nvml-counter)", False),
        ("mixed(rapl,replay(nvml-counter))", False),
        ("mixed(rapl,simulated)", False),
        ("mixed()", False),
    ],
)
def test_is_measured_on_compound_labels(label: str, measured: bool) -> None:
    assert is_measured(label) is measured


def test_trace_with_a_byte_order_mark(tmp_path: Path) -> None:
    """A CSV saved by Excel starts with a UTF-8 BOM: the first column is still 'time_s'."""
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbf" + b"time_s,device,power_w\n0,g,100\n1,g,100\n")
    assert load_trace(p).energy_between_j(0.0, 1.0) == {"g": pytest.approx(100.0)}
