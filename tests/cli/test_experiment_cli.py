"""`perwatt experiment` end to end: perwatt serve launched, measured, reported; re-run is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.bench.experiment.conftest import free_port


def _perwatt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "perwatt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_bad_file_is_one_line_before_launch(tmp_path: Path) -> None:
    exp = tmp_path / "e.toml"
    exp.write_text(
        '[load]\nmax_concurrency = [1]\n[slo]\ntpot_p90 = 5\n[[server]]\nlabel = "a"\n'
        'command = "perwatt serve --model tiny --port {port}"\nport = 18999\n'
    )
    r = _perwatt("experiment", "run", str(exp), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "slo.tpot_p90: unknown SLO key" in r.stderr


def test_perwatt_serve_lifecycle_and_rerun(tmp_path: Path) -> None:
    exp = tmp_path / "e.toml"
    exp.write_text(
        f"""
[experiment]
name = "cli"
energy_source = "simulated"
idle_seconds = 0.5
[workload]
num_prompts = 4
input_len = 8
output_len = 4
[load]
max_concurrency = [2]
[slo]
tpot_p90_ms = 60000
[[server]]
label = "tiny-bf16"
command = "perwatt serve --model tiny --precision bf16 --max-batch-size 2 --port {{port}}"
port = {free_port()}
"""
    )
    r = _perwatt("experiment", "run", str(exp), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "best under the SLO: tiny-bf16 at concurrency 2" in r.stdout
    assert "(simulated)" in r.stdout
    report = tmp_path / "cli-results" / "report.html"
    assert report.exists() and "Best under the SLO" in report.read_text()
    log = tmp_path / "cli-results" / "servers" / "tiny-bf16.log"
    assert "perwatt serve: tiny" in log.read_text()
    again = _perwatt("experiment", "run", str(exp), cwd=tmp_path)
    assert again.returncode == 0
    assert "nothing to measure: all 1 points are finished" in again.stderr
    rep = _perwatt("experiment", "report", str(exp), "--json", cwd=tmp_path)
    assert rep.returncode == 0 and '"best": "tiny-bf16/default/c2"' in rep.stdout
