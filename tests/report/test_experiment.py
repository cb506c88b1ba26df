"""The experiment report: the answer, the frontiers, every point, labelled energy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from perwatt.bench.experiment import analyze
from perwatt.errors import ConfigError
from perwatt.report.experiment import render_experiment_report, write_experiment_outputs
from tests.bench.experiment.test_analysis import _config, _record_all


def test_outputs_and_page(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 50.0})
    _record_all(cfg)
    files = write_experiment_outputs(cfg)
    html = files.report.read_text()
    assert "Best under the SLO: fp8 at concurrency 4" in html
    assert html.count("<svg") == 3  # one frontier per latency
    assert "NOT measurements" in html and 'class="src model">simulated' in html
    assert "<b>FAILS</b>" in html  # nvfp4's guard
    assert re.search(r"Saving against bf16/default/c4: 0\.1667 J/token", html)
    assert 'href="runs.html"' in html and files.runs_report is not None
    assert files.runs_report.exists()
    summary = json.loads(files.summary.read_text())
    assert summary["best"] == "fp8/default/c4" and summary["schema"].endswith("summary/1")
    cal = json.loads(files.calibration.read_text())
    assert len(cal["curves"]) == 6


def test_no_answer_is_said_plainly(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 1.0})
    _record_all(cfg)
    html = render_experiment_report(analyze(cfg))
    assert "No configuration meets the SLO" in html


def test_failed_points_show_the_log(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 50.0}, guard=False)
    _record_all(cfg)
    p = cfg.points()[0]
    pj = cfg.out_dir / "points" / "bf16" / "default" / "c1" / "point.json"
    doc = json.loads(pj.read_text())
    doc.update(status="failed", reason="the server exited with code 3", log_tail="<OOM> x")
    pj.write_text(json.dumps(doc))
    html = render_experiment_report(analyze(cfg))
    assert "Failed points" in html and "&lt;OOM&gt; x" in html and p.id in html


def test_report_into_a_folder_is_refused(tmp_path: Path) -> None:
    from perwatt.report.experiment import write_experiment_report

    cfg = _config(tmp_path, {"tpot_p90_ms": 50.0}, guard=False)
    with pytest.raises(ConfigError, match="is a directory"):
        write_experiment_report(analyze(cfg), tmp_path)
