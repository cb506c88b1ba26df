"""The estimated CPU model: exact against a fake /proc/stat and a fake clock; always 'estimated'."""

from __future__ import annotations

from pathlib import Path

import pytest

from perwatt.errors import ConfigError, SourceUnavailableError
from perwatt.meter import Meter, is_measured
from perwatt.meter.estimated import CCF_W_PER_VCPU, ENV_W_PER_CPU, EstimatedCPUSource

HZ = 100


class FakeStat:
    """A /proc/stat with 2 CPUs whose busy/idle ticks the test advances."""

    def __init__(self, path: Path, cpus: int = 2) -> None:
        self.path = path
        self.cpus = cpus
        self.user = 1000
        self.system = 500
        self.idle = 50_000
        self.iowait = 40
        self.irq = 3
        self.softirq = 7
        self.steal = 11
        self.write()

    def write(self) -> None:
        agg = (
            f"cpu  {self.user} 0 {self.system} {self.idle} {self.iowait} {self.irq} "
            f"{self.softirq} {self.steal} 0 0"
        )
        lines = [agg] + [f"cpu{i} 1 0 1 1 0 0 0 0 0 0" for i in range(self.cpus)]
        lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000", "processes 42"]
        self.path.write_text("\n".join(lines) + "\n")

    def run(self, seconds: float, busy_fraction: float) -> None:
        """Advance by ``seconds`` with the whole machine ``busy_fraction`` busy."""
        total = round(seconds * HZ * self.cpus)
        busy = round(total * busy_fraction)
        self.user += busy // 2
        self.system += busy - busy // 2
        self.idle += total - busy
        self.write()


@pytest.fixture
def stat(tmp_path: Path) -> FakeStat:
    return FakeStat(tmp_path / "stat")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_W_PER_CPU, raising=False)


def make(stat: FakeStat, now: list[float], **kw: object) -> EstimatedCPUSource:
    return EstimatedCPUSource(proc_stat=stat.path, clock=lambda: now[0], ticks_per_s=HZ, **kw)  # type: ignore[arg-type]


def test_defaults_are_the_cited_ccf_average_and_labelled_estimated(stat: FakeStat) -> None:
    now = [0.0]
    src = make(stat, now)
    assert (src.idle_w_per_cpu, src.max_w_per_cpu) == CCF_W_PER_VCPU["unknown"] == (0.74, 3.5)
    assert src.num_cpus == 2
    assert src.devices == ("cpu",)
    assert src.energy_label == src.power_label == "estimated"
    assert not is_measured(src.energy_label)
    assert "a model, not a measurement" in src.describe()
    assert src.counter_period_s == pytest.approx(0.01)
    assert src.read_power_w() is None


@pytest.mark.parametrize("busy", [0.0, 0.25, 1.0])
def test_energy_is_the_exact_model_integral(stat: FakeStat, busy: float) -> None:
    now = [100.0]
    src = make(stat, now, idle_w_per_cpu=1.0, max_w_per_cpu=5.0)
    now[0] += 10.0
    stat.run(10.0, busy)
    e = src.read_energy_j()["cpu"]
    assert e == pytest.approx(10.0 * 2 * (1.0 + 4.0 * busy))
    assert src.power_at_w(busy) * 10.0 == pytest.approx(e)


def test_iowait_and_steal_are_not_busy(stat: FakeStat) -> None:
    now = [0.0]
    src = make(stat, now, idle_w_per_cpu=1.0, max_w_per_cpu=3.0)
    now[0] += 1.0
    stat.iowait += 100
    stat.steal += 100
    stat.write()
    assert src.read_energy_j()["cpu"] == pytest.approx(2 * 1.0)


def test_busy_time_is_clamped_to_wall_time(stat: FakeStat) -> None:
    now = [0.0]
    src = make(stat, now, idle_w_per_cpu=0.0, max_w_per_cpu=1.0)
    now[0] += 1.0
    stat.user += 10 * HZ  # 10 CPU-seconds of "busy" in 1 s on 2 CPUs: impossible
    stat.write()
    assert src.read_energy_j()["cpu"] == pytest.approx(2.0)


def test_meter_window_and_power_from_slope(stat: FakeStat) -> None:
    now = [0.0]
    src = make(stat, now, preset="epyc-2nd-gen")
    meter = Meter(src, sampler=False, sync_cuda=False, clock=lambda: now[0])
    with meter:
        meter.begin("job")
        now[0] += 5.0
        stat.run(5.0, 0.5)
        s = meter.sample_now()
        now[0] += 5.0
        stat.run(5.0, 1.0)
        m = meter.end("job")
    idle, peak = 0.47, 1.69
    assert s.power_w["cpu"] == pytest.approx(2 * (idle + (peak - idle) * 0.5))
    expected = 5 * 2 * (idle + (peak - idle) * 0.5) + 5 * 2 * peak
    assert m.energy_j["cpu"] == pytest.approx(expected)
    assert m.source == "estimated"
    assert not m.measured


def test_overrides_env_and_preset(stat: FakeStat, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setenv(ENV_W_PER_CPU, "2,8")
    src = make(stat, now)
    assert (src.idle_w_per_cpu, src.max_w_per_cpu) == (2.0, 8.0)
    assert ENV_W_PER_CPU in src.describe()
    src = make(stat, now, max_w_per_cpu=9.0)  # an argument beats the environment
    assert (src.idle_w_per_cpu, src.max_w_per_cpu) == (2.0, 9.0)
    src = make(stat, now, preset="skylake")  # a preset ignores the environment
    assert (src.idle_w_per_cpu, src.max_w_per_cpu) == (0.65, 4.26)
    src = make(stat, now, num_cpus=8)
    assert src.num_cpus == 8


@pytest.mark.parametrize("bad", ["2", "a,b", "1,2,3"])
def test_bad_env_value(stat: FakeStat, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(ENV_W_PER_CPU, bad)
    with pytest.raises(ConfigError, match=ENV_W_PER_CPU):
        make(stat, [0.0])


def test_bad_arguments(stat: FakeStat) -> None:
    with pytest.raises(ConfigError, match="idle <= max"):
        make(stat, [0.0], idle_w_per_cpu=5.0, max_w_per_cpu=1.0)
    with pytest.raises(ConfigError, match="unknown CPU preset"):
        make(stat, [0.0], preset="pentium")
    with pytest.raises(ConfigError, match="num_cpus"):
        make(stat, [0.0], num_cpus=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        make(stat, [0.0]).power_at_w(1.5)


def test_missing_or_malformed_proc_stat(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailableError, match="needs Linux"):
        EstimatedCPUSource(proc_stat=tmp_path / "absent")
    bad = tmp_path / "stat"
    bad.write_text("cpu  1 2 x\n")
    with pytest.raises(SourceUnavailableError, match="unexpected aggregate"):
        EstimatedCPUSource(proc_stat=bad)
    bad.write_text("intr 1\n")
    with pytest.raises(SourceUnavailableError, match="no aggregate"):
        EstimatedCPUSource(proc_stat=bad)


def test_real_proc_stat_when_present() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this platform")
    src = EstimatedCPUSource()
    e0 = src.read_energy_j()["cpu"]
    e1 = src.read_energy_j()["cpu"]
    assert e1 >= e0 >= 0.0
