"""FrequencyController with the fake NVML: changes only when needed, restores on every exit."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from perwatt.errors import ConfigError, NoPermissionError
from perwatt.meter.testing import FakeNVML
from perwatt.train.controller import FrequencyController, snap_frequency, stage_plan

H100 = functools.partial(FakeNVML.with_gpus, ["H100"])
H100_UNPRIV = functools.partial(FakeNVML.with_gpus, ["H100"], privileged=False)

PLAN = [
    ("forward", 0, 1980),
    ("forward", 1, 1980),
    ("backward", 0, 1500),
    ("forward", 2, 1500),
    ("backward", 1, 1980),
    ("backward", 2, 1980),
]


def _journal(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()]


def _run(c: FrequencyController, plan: list[tuple[str, int, int]], iterations: int = 1) -> None:
    for _ in range(iterations):
        for inst, _mb, _f in plan:
            c.on_instruction_begin(inst)
            c.on_instruction_end(inst)
        c.on_iteration_end()


def test_changes_only_when_frequency_changes_and_restores_on_exit(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    c = FrequencyController(PLAN, allow_clock_changes=True, nvml_factory=H100, journal_path=j)
    with c:
        _run(c, PLAN, iterations=2)
    # Per iteration 1980 → 1500 → 1980; across the boundary 1980 stays 1980: nothing sent.
    assert [ch.freq_mhz for ch in c.changes] == [1980, 1500, 1980, 1500, 1980]
    assert [ch.index for ch in c.changes] == [0, 2, 4, 2, 4]
    assert _journal(j) == [
        "ready",
        "lock 1980",
        "lock 1500",
        "lock 1980",
        "lock 1500",
        "lock 1980",
        "reset",
    ]
    assert c.errors == []
    assert c._proc is not None and not c._proc.is_alive()


def test_restores_when_training_raises(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    with (
        pytest.raises(RuntimeError, match="loss is NaN"),
        FrequencyController(PLAN, allow_clock_changes=True, nvml_factory=H100, journal_path=j) as c,
    ):
        c.on_instruction_begin("forward")
        raise RuntimeError("loss is NaN")
    assert _journal(j)[-1] == "reset"
    assert "lock 1980" in _journal(j)


def _script(tmp_path: Path, journal: Path, tail: str) -> Path:
    src = textwrap.dedent(
        f"""
        import functools, os, signal, sys, time
        from perwatt.meter.testing import FakeNVML
        from perwatt.train.controller import FrequencyController

        if __name__ == "__main__":
            c = FrequencyController(
                [("forward", 0, 1200), ("backward", 0, 1200)],
                allow_clock_changes=True,
                nvml_factory=functools.partial(FakeNVML.with_gpus, ["H100"]),
                journal_path={str(journal)!r},
            )
            c.start()
            c.on_instruction_begin("forward")
            deadline = time.monotonic() + 20
            while "lock 1200" not in open({str(journal)!r}).read():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            print("locked", flush=True)
        """
    ) + textwrap.indent(textwrap.dedent(tail), "    ")
    p = tmp_path / "train.py"
    p.write_text(src)
    return p


def _wait_for(path: Path, line: str, timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = _journal(path)
        if line in lines:
            return lines
        time.sleep(0.05)
    return _journal(path)


def test_restores_when_parent_is_killed(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    script = _script(tmp_path, j, "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    lines = _wait_for(j, "reset")
    assert lines[-2:] == ["parent-gone", "reset"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_restores_on_sigterm_and_sigint(tmp_path: Path, sig: signal.Signals) -> None:
    j = tmp_path / "journal"
    script = _script(tmp_path, j, "time.sleep(30)\n")
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline().strip()
            assert line == "locked", proc.stderr.read()
            proc.send_signal(sig)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == -sig  # re-raised SIGTERM; SIGINT: KeyboardInterrupt, which Python exits as -2
    assert _journal(j)[-1] == "reset"


def test_refuses_without_flag(tmp_path: Path) -> None:
    c = FrequencyController(PLAN, nvml_factory=H100, journal_path=tmp_path / "j")
    with pytest.raises(ConfigError, match="explicit flag allow_clock_changes=True") as e:
        c.start()
    assert "privilege" not in str(e.value)
    assert c._proc is None and not (tmp_path / "j").exists()


def test_refuses_without_privilege_and_says_both(tmp_path: Path) -> None:
    c = FrequencyController(PLAN, allow_clock_changes=True, nvml_factory=H100_UNPRIV)
    with pytest.raises(NoPermissionError, match="privilege to change clocks") as e:
        c.start()
    assert "explicit flag" not in str(e.value)
    assert c._proc is None


def test_flag_is_checked_before_nvml_is_opened() -> None:
    # Without the flag the answer is the flag, whatever the machine: no driver, no privilege.
    opened: list[str] = []

    def missing() -> FakeNVML:
        opened.append("nvml")
        return FakeNVML.with_gpus(["H100"], library_missing=True)

    for factory in (missing, H100_UNPRIV):
        c = FrequencyController(PLAN, nvml_factory=factory)
        with pytest.raises(ConfigError, match="explicit flag allow_clock_changes=True") as e:
            c.start()
        assert "privilege" not in str(e.value) and c._proc is None
    assert opened == []


def test_dry_run_touches_nothing(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def factory() -> FakeNVML:  # would only be called if the controller opened the GPU
        calls.append("nvml")
        return H100()

    caplog.set_level("INFO", logger="perwatt.train.controller")
    with FrequencyController(PLAN, dry_run=True, nvml_factory=factory) as c:
        _run(c, PLAN)
    assert calls == []
    assert c._proc is None
    assert [ch.freq_mhz for ch in c.changes] == [1980, 1500, 1980]
    assert all(ch.dry_run for ch in c.changes)
    assert sum("would lock SM clock" in r.message for r in caplog.records) == 3


def test_unsupported_frequency_error_and_snap(caplog: pytest.LogCaptureFixture) -> None:
    plan = [("forward", 0, 1000), ("backward", 0, 1985)]  # H100 steps: 1980, 1965, …, 345
    with pytest.raises(ConfigError, match=r"does not support: 1985, 1000 MHz"):
        FrequencyController(plan, allow_clock_changes=True, nvml_factory=H100).start()
    caplog.set_level("WARNING", logger="perwatt.train.controller")
    supported = tuple(range(1980, 344, -15))
    with FrequencyController(
        plan, dry_run=True, unsupported="snap", supported_clocks_mhz=supported
    ) as c:
        _run(c, plan)
    # 1000 is 5 MHz from 1005 and 10 from 990; 1985 is above the top clock.
    assert c.snapped == {1985: 1980, 1000: 1005}
    assert [ch.freq_mhz for ch in c.changes] == [1005, 1980]
    assert len([r for r in caplog.records if "not supported" in r.message]) == 2
    assert snap_frequency(1002, (1010, 995)) == 995  # 8 vs 7 MHz away: the nearer wins
    assert snap_frequency(1002, (1004, 1000)) == 1004  # tie → the higher clock


def test_plan_schedule_mismatch_is_clear() -> None:
    with FrequencyController(PLAN, dry_run=True) as c:
        with pytest.raises(
            ConfigError, match="expects forward of microbatch 0, the schedule ran backward"
        ):
            c.on_instruction_begin("backward")
        c.on_instruction_begin("forward")
        with pytest.raises(ConfigError, match="iteration ended after 1 of the plan's 6"):
            c.on_iteration_end()


def test_stage_plan_and_bad_plans() -> None:
    plan = {0: PLAN, 1: PLAN[:2]}
    assert stage_plan(plan, 1) == PLAN[:2]
    with pytest.raises(ConfigError, match=r"stages 0\.\.1 but this is stage 4"):
        stage_plan(plan, 4)
    with pytest.raises(ConfigError, match="empty"):
        FrequencyController([])
    with pytest.raises(ConfigError, match="expected \\(instruction, microbatch, freq_mhz\\)"):
        FrequencyController([("forward", 0)])
    with pytest.raises(ConfigError, match="positive number"):
        FrequencyController([("forward", 0, float("nan"))])
    with pytest.raises(ConfigError, match="not running"):
        FrequencyController(PLAN).on_instruction_begin("forward")


def test_close_is_idempotent(tmp_path: Path) -> None:
    j = tmp_path / "j"
    c = FrequencyController(
        PLAN, allow_clock_changes=True, nvml_factory=H100, journal_path=j
    ).start()
    pid = c.worker_pid
    c.close()
    c.close()
    assert _journal(j).count("reset") == 1
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_from_planner_plan(tmp_path: Path) -> None:
    from perwatt.train import compute_frontier, load_profile, one_f_one_b

    rows = ["stage,instruction,frequency,time,energy"]
    for s in range(2):
        for f, k in ((1980, 1.0), (1500, 1.3)):
            rows.append(f"{s},forward,{f},{0.010 * k * (1 + s)},{3.0 / k}")
            rows.append(f"{s},backward,{f},{0.020 * k * (1 + s)},{6.0 / k}")
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    frontier = compute_frontier(load_profile(tmp_path / "p.csv"), one_f_one_b(2, 3), p_block_w=30.0)
    plan = frontier.plan_for(frontier.fastest)
    c = FrequencyController.from_plan(plan, 0, dry_run=True)
    assert c.plan == plan.for_stage(0)
    with c:
        _run(c, c.plan)
    with pytest.raises(ConfigError, match=r"stages 0\.\.1 but this is stage 2"):
        FrequencyController.from_plan(plan, 2, dry_run=True)


def test_no_driver_is_a_clean_error() -> None:
    from perwatt.errors import SourceUnavailableError

    missing = functools.partial(FakeNVML.with_gpus, ["H100"], library_missing=True)
    c = FrequencyController(PLAN, allow_clock_changes=True, nvml_factory=missing)
    with pytest.raises(SourceUnavailableError):
        c.start()
    assert c._proc is None


def test_forked_child_cannot_stop_the_worker(tmp_path: Path) -> None:
    j = tmp_path / "j"
    with FrequencyController(
        PLAN, allow_clock_changes=True, nvml_factory=H100, journal_path=j
    ) as c:
        c._owner_pid = -1  # as seen from a forked DataLoader worker
        c.close()
        assert c._proc.is_alive() and "reset" not in _journal(j)
        c._owner_pid = os.getpid()
    assert _journal(j)[-1] == "reset"


def test_no_supported_clock_list_is_a_clear_error() -> None:
    from perwatt.errors import DeviceError

    def no_clocks() -> FakeNVML:
        fake = H100()
        fake.fail("nvmlDeviceGetSupportedGraphicsClocks", 3)  # NVML_ERROR_NOT_SUPPORTED
        return fake

    c = FrequencyController(PLAN, allow_clock_changes=True, nvml_factory=no_clocks)
    with pytest.raises(DeviceError, match="no supported SM clocks"):
        c.start()
    assert c._proc is None
