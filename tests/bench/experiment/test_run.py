"""The experiment lifecycle with real launched servers (perwatt's loopback test server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perwatt.bench.experiment import analyze, load_experiment, run_experiment
from perwatt.bench.experiment.server import port_in_use
from perwatt.bench.experiment.store import read_point
from perwatt.errors import ConfigError

from .conftest import test_server_command, write_experiment


def _points(out: Path) -> dict[str, dict[str, object]]:
    docs = {}
    for p in sorted(out.glob("points/*/*/*/point.json")):
        d = json.loads(p.read_text())
        docs[d["id"]] = d
    return docs


CRASHING_SERVER = """
import os, sys, time
from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

with FakeOpenAIServer(ServerConfig(itl_s=0.01), port=int(sys.argv[1])) as server:
    print("serving", flush=True)
    while server.stats.generation_requests < 3:
        time.sleep(0.01)
    print("fatal: an illegal memory access was encountered", flush=True)
    os._exit(9)
"""


def test_lifecycle_failures_do_not_stop_the_experiment(tmp_path: Path) -> None:
    script = tmp_path / "crashing_server.py"
    script.write_text(CRASHING_SERVER)
    crash = f"{sys.executable} {script} {{port}}"
    exp = write_experiment(
        tmp_path,
        [
            ("good", test_server_command()),
            ("fails", f"{sys.executable} -c \"print('CUDA error: no GPU found'); exit(3)\""),
            (
                "hangs",
                f"{sys.executable} -c \"print('loading...', flush=True); import time; time.sleep(60)\"",
            ),
            ("crashes", crash),
        ],
        ready_timeout_s=4,
        extra='[analysis]\nbaseline = "good"',
    )
    cfg = load_experiment(exp)
    outcome = run_experiment(cfg, log=lambda m: None)
    docs = _points(tmp_path / "out")
    assert {k: v["status"] for k, v in docs.items()} == {
        "good/default/c1": "complete",
        "good/default/c2": "complete",
        "fails/default/c1": "failed",
        "fails/default/c2": "failed",
        "hangs/default/c1": "failed",
        "hangs/default/c2": "failed",
        "crashes/default/c1": "failed",
        "crashes/default/c2": "failed",
    }
    assert "exited with code 3 before it was ready" in str(docs["fails/default/c1"]["reason"])
    assert "CUDA error: no GPU found" in str(docs["fails/default/c1"]["log_tail"])
    assert "not ready after 4 s" in str(docs["hangs/default/c1"]["reason"])
    assert "loading..." in str(docs["hangs/default/c2"]["log_tail"])
    # The crash happens at the third request of the first level: that point and the next fail.
    assert "exited with code 9 during the run" in str(docs["crashes/default/c1"]["reason"])
    assert "illegal memory access" in str(docs["crashes/default/c1"]["log_tail"])
    assert "exited with code 9 before this point" in str(docs["crashes/default/c2"]["reason"])
    assert sorted(outcome.measured) == ["good/default/c1", "good/default/c2"]
    # Every launched server is gone, its port free again.
    for s in cfg.servers:
        assert s.port is not None and not port_in_use(s.port)
    # The attributed column of a complete point sums to its measured energy.
    good = docs["good/default/c2"]
    att = good["attribution"]
    assert isinstance(att, dict)
    assert att["sum_attributed_j"] == pytest.approx(att["total_energy_j"], rel=1e-12)
    a = analyze(cfg)
    assert a.best is not None and a.best.server == "good"
    assert {p.id for p in a.points if p.status == "failed"} == {
        f"{s}/default/{c}" for s in ("fails", "hangs", "crashes") for c in ("c1", "c2")
    }


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_resume_after_ctrl_c_skips_finished_points(tmp_path: Path, sig: signal.Signals) -> None:
    exp = write_experiment(
        tmp_path,
        [("a", test_server_command()), ("b", test_server_command())],
        load="max_concurrency = [1, 2]",
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "perwatt", "experiment", "run", str(exp)]
    out = tmp_path / "out"
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            first = out / "points" / "a" / "default" / "c1" / "point.json"
            while not first.exists():
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.05)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "missing:" in err and "Re-run the same command" in err
    docs = _points(out)
    done_before = {k for k, v in docs.items() if v["status"] == "complete"}
    # The point in progress is kept, marked for the next run (unless the signal came between).
    assert {v["status"] for v in docs.values()} <= {"complete", "interrupted"}
    assert "a/default/c1" in done_before and len(done_before) < 4
    cfg = load_experiment(exp)
    for s in cfg.servers:
        assert s.port is not None and not port_in_use(s.port)
    outcome = run_experiment(cfg, log=lambda m: None)
    assert set(outcome.skipped) == done_before
    assert set(outcome.measured) == {p.id for p in cfg.points()} - done_before
    again = run_experiment(cfg, log=lambda m: None)
    assert again.measured == [] and len(again.skipped) == 4


def test_changed_file_measures_the_changed_points_again(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path, [("a", test_server_command())], load="max_concurrency = [1]")
    cfg = load_experiment(exp)
    assert run_experiment(cfg, log=lambda m: None).measured == ["a/default/c1"]
    exp.write_text(exp.read_text().replace("output_len = 8", "output_len = 9"))
    cfg2 = load_experiment(exp)
    assert run_experiment(cfg2, log=lambda m: None).measured == ["a/default/c1"]
    assert read_point(cfg2.out_dir, cfg2.points()[0])["fingerprint"] == cfg2.fingerprint(  # type: ignore[index]
        cfg2.points()[0]
    )


def test_power_limits_through_the_fake_nvml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "H100")
    exp = write_experiment(
        tmp_path,
        [("a", test_server_command())],
        load="max_concurrency = [2]",
        extra="[gpu]\npower_limits_w = [300, 500]",
    )
    cfg = load_experiment(exp)
    with pytest.raises(ConfigError, match=r"^gpu\.power_limits_w: changing the GPU's power"):
        run_experiment(cfg, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    outcome = run_experiment(cfg, allow_gpu_changes=True, log=lambda m: None)
    assert outcome.measured == ["a/pl300W/c2", "a/pl500W/c2"]
    journal = [
        line.split(" ", 1)[1]
        for line in (tmp_path / "out" / "actuation.journal").read_text().splitlines()
    ]
    # Restored once the server's points are done; the worker's exit resets the clocks.
    assert journal == ["ready", "limit 300", "limit 500", "limit-restored 700", "reset"]
    cal = analyze(cfg)
    assert [p.gpu_power_limit_w for p in cal.points] == [300.0, 500.0]


def test_power_limit_out_of_range_is_refused_before_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "H100")
    exp = write_experiment(
        tmp_path, [("a", test_server_command())], extra="[gpu]\npower_limits_w = [300, 900]"
    )
    with pytest.raises(ConfigError, match=r"^gpu\.power_limits_w: 900 W is outside gpu0"):
        run_experiment(load_experiment(exp), allow_gpu_changes=True, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_dry_run_launches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "H100")
    exp = write_experiment(
        tmp_path, [("a", test_server_command())], extra="[gpu]\npower_limits_w = [300]"
    )
    outcome = run_experiment(load_experiment(exp), dry_run=True)
    assert outcome.missing == ["a/pl300W/c1", "a/pl300W/c2"]
    assert any("power limit 700 W (settable 200-700 W)" in line for line in outcome.plan)
    assert not (tmp_path / "out").exists()


def test_gpu_restored_and_server_stopped_after_sigkill_of_perwatt(tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path,
        [("a", test_server_command().replace("--itl-ms 2", "--itl-ms 30"))],
        load="max_concurrency = [1]",
        extra="[gpu]\npower_limits_w = [300]",
    )
    exp.write_text(exp.read_text().replace("num_prompts = 6", "num_prompts = 200"))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "PERWATT_FAKE_NVML": "H100"}
    cmd = [
        sys.executable, "-m", "perwatt", "experiment", "run", str(exp),
        "--i-understand-this-changes-clocks",
    ]  # fmt: skip
    journal = tmp_path / "out" / "actuation.journal"
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 60
            while not (journal.exists() and "limit 300" in journal.read_text()):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            time.sleep(0.5)  # into the run
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    deadline = time.monotonic() + 30
    while "reset" not in journal.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line.split(" ", 1)[1] for line in journal.read_text().splitlines()]
    assert lines[-3:] == ["parent-gone", "limit-restored 700", "reset"]
    port = load_experiment(exp).servers[0].port
    assert port is not None
    while port_in_use(port) and time.monotonic() < deadline:  # the server got SIGTERM too
        time.sleep(0.1)
    assert not port_in_use(port)


def test_nvml_source_is_open_for_every_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A meter closes its sources when it stops: each point (and the idle measurement) must meter
    # through sources of its own, or the second point reads a shut-down NVML.
    monkeypatch.setenv("PERWATT_FAKE_NVML", "H100")
    exp = write_experiment(
        tmp_path, [("a", test_server_command())], load="max_concurrency = [1, 2]",
        energy_source="nvml",
    )  # fmt: skip
    cfg = load_experiment(exp)
    outcome = run_experiment(cfg, log=lambda m: None)
    assert outcome.measured == ["a/default/c1", "a/default/c2"], outcome.failed
    srv = json.loads((tmp_path / "out" / "servers" / "a.json").read_text())
    assert srv["idle_power_w"] > 0


def test_accuracy_guard_answers_recorded_per_server(tmp_path: Path) -> None:
    prompts = tmp_path / "guard.jsonl"
    prompts.write_text('{"prompt": "one two"}\n{"prompt": "three"}\n')
    exp = write_experiment(
        tmp_path,
        [("ref", test_server_command()), ("cand", test_server_command())],
        load="max_concurrency = [1]",
        extra=f'[quality]\nprompts = "{prompts}"\nmax_tokens = 4\nmin_exact_match = 1.0',
    )
    cfg = load_experiment(exp)
    run_experiment(cfg, log=lambda m: None)
    answers = json.loads((tmp_path / "out" / "quality" / "cand.json").read_text())
    assert answers["status"] == "complete" and len(answers["answers"]) == 2
    verdicts = {q.server: q.passed for q in analyze(cfg).quality}
    # The same deterministic test server behind both: identical answers, the guard passes.
    assert verdicts == {"ref": None, "cand": True}
