"""GPUActuator with the fake NVML: power limits and clocks set, refused, validated, restored."""

from __future__ import annotations

import functools
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from perwatt.errors import ConfigError, DeviceError, NoPermissionError
from perwatt.meter.actuation import GPUActuator, check_gpu_settings, read_gpu_facts
from perwatt.meter.testing import FakeNVML

H100 = functools.partial(FakeNVML.with_gpus, ["H100"])
TWO = functools.partial(FakeNVML.with_gpus, ["H100", "H100"])


def _journal(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()]


def _wait_for(path: Path, line: str, timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in _journal(path):
            return _journal(path)
        time.sleep(0.05)
    return _journal(path)


def test_sets_limit_and_clock_then_restores(tmp_path: Path) -> None:
    j = tmp_path / "j"
    with GPUActuator(
        allow_changes=True,
        power_limits_w=[300.0, 450.0],
        sm_clocks_mhz=[1410],
        nvml_factory=H100,
        journal_path=j,
    ) as act:
        act.set_power_limit_w(300.0)
        act.set_power_limit_w(450.0)
        act.lock_sm_clocks(1410)
        act.reset_sm_clocks()
        act.restore_power_limit()
        act.set_power_limit_w(300.0)
        assert act.facts[0].power_limit_range_w == (200.0, 700.0)
    # The fake H100 starts at its 700 W default: that is what comes back.
    assert _journal(j) == [
        "ready",
        "limit 300",
        "limit 450",
        "lock 1410",
        "reset",
        "limit-restored 700",
        "limit 300",
        "limit-restored 700",
        "reset",
    ]
    assert [a.kind for a in act.actions][:2] == ["power_limit", "power_limit"]


def test_every_gpu_is_changed_and_restored(tmp_path: Path) -> None:
    j = tmp_path / "j"
    with GPUActuator(
        gpu_indices=(0, 1), allow_changes=True, nvml_factory=TWO, journal_path=j
    ) as act:
        act.set_power_limit_w(250.0)
    assert _journal(j) == [
        "ready",
        "limit 250",
        "limit-restored 700",
        "limit-restored 700",
        "reset",
    ]


def test_refused_without_flag_before_nvml_is_opened(tmp_path: Path) -> None:
    opened: list[str] = []

    def factory() -> FakeNVML:
        opened.append("nvml")
        return H100()

    act = GPUActuator(power_limits_w=[300.0], nvml_factory=factory, journal_path=tmp_path / "j")
    with pytest.raises(ConfigError, match="missing the explicit flag allow_changes=True"):
        act.start()
    assert opened == [] and act.worker_pid is None and not (tmp_path / "j").exists()


def test_out_of_range_refused_before_the_worker_starts(tmp_path: Path) -> None:
    act = GPUActuator(
        allow_changes=True,
        power_limits_w=[150.0],
        nvml_factory=H100,
        journal_path=tmp_path / "j",
    )
    with pytest.raises(ConfigError, match=r"150 W is outside gpu0 \(NVIDIA H100.*200-700 W"):
        act.start()
    assert act.worker_pid is None and not (tmp_path / "j").exists()
    clocks = GPUActuator(allow_changes=True, sm_clocks_mhz=[3000], nvml_factory=H100)
    with pytest.raises(ConfigError, match="sm_clocks_mhz: 3000 MHz is outside"):
        clocks.start()


def test_unprivileged_is_refused_and_says_so() -> None:
    unpriv = functools.partial(FakeNVML.with_gpus, ["H100"], privileged=False)
    with pytest.raises(NoPermissionError, match="missing the privilege"):
        GPUActuator(allow_changes=True, nvml_factory=unpriv).start()


def test_a_value_not_checked_at_start_is_refused(tmp_path: Path) -> None:
    with (
        GPUActuator(allow_changes=True, power_limits_w=[300.0], nvml_factory=H100) as act,
        pytest.raises(ConfigError, match="not among the power limits checked"),
    ):
        act.set_power_limit_w(350.0)


def test_driver_refusal_is_a_device_error(tmp_path: Path) -> None:
    # No list given: the worker's own range check (NVMLGPU.set_power_limit_w) answers.
    with (
        GPUActuator(allow_changes=True, nvml_factory=H100) as act,
        pytest.raises(DeviceError, match="outside the allowed 200-700 W"),
    ):
        act.set_power_limit_w(900.0)


def test_dry_run_touches_nothing() -> None:
    calls: list[str] = []

    def factory() -> FakeNVML:
        calls.append("nvml")
        return H100()

    with GPUActuator(dry_run=True, nvml_factory=factory) as act:
        act.set_power_limit_w(300.0)
        act.lock_sm_clocks(1200)
    assert calls == [] and act.worker_pid is None
    assert [(a.kind, a.value, a.dry_run) for a in act.actions] == [
        ("power_limit", 300.0, True),
        ("lock_clocks", 1200.0, True),
    ]


def test_check_gpu_settings_names_the_field() -> None:
    facts = read_gpu_facts([0], nvml_factory=H100)
    assert facts[0].power_limit_w == 700.0 and facts[0].can_change
    check_gpu_settings(facts, power_limits_w=[200.0, 700.0])
    with pytest.raises(ConfigError, match=r"^gpu\.power_limits_w: 701 W is outside"):
        check_gpu_settings(facts, power_limits_w=[701.0], field="gpu.power_limits_w")
    with pytest.raises(ConfigError, match="not a number"):
        check_gpu_settings(facts, power_limits_w=[math.nan])


def test_restored_after_sigkill_of_the_parent(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import functools, os, signal
            from perwatt.meter.actuation import GPUActuator
            from perwatt.meter.testing import FakeNVML

            if __name__ == "__main__":
                act = GPUActuator(
                    allow_changes=True,
                    nvml_factory=functools.partial(FakeNVML.with_gpus, ["H100"]),
                    journal_path={str(j)!r},
                )
                act.start()
                act.set_power_limit_w(300.0)
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    lines = _wait_for(j, "reset")
    assert lines == ["ready", "limit 300", "parent-gone", "limit-restored 700", "reset"]
