from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parents[2] / "perwatt/facility/data"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perwatt", "facility", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        timeout=300,
    )


def test_flex_phoenix_writes_result_and_report(tmp_path: Path) -> None:
    r = _run("flex", "phoenix", "--out", "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "o/result.json").read_text())
    assert doc["source"] == "simulated"
    for res in doc["results"]:
        assert res["timeline"]["source"] == "simulated"
        assert all(t["source"] == "simulated" for t in res["targets"])
    html = (tmp_path / "o/report.html").read_text()
    assert "<svg" in html and "Simulated" in html and "MET" in html
    assert "2507.00909" in html
    events = [json.loads(x) for x in (tmp_path / "o/status.jsonl").read_text().splitlines()]
    assert [e["data"]["state"] for e in events][:3] == ["in-flight", "target-set", "compliant"]
    assert all(e["type"] == "grid.powerstate.status.v1" for e in events)
    assert events[1]["time"] == "2025-05-03T22:00:00Z"


def test_flex_missed_target_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "feed,start,end,value,unit,mode\nphoenix-cluster,600,1200,60,percent,best-effort\n"
    )
    r = _run(
        "flex", "phoenix", "--targets", "t.csv", "--strategy", "flex", "--out", "o", cwd=tmp_path
    )
    assert r.returncode == 1
    assert "MISSED" in r.stdout and "MET," not in r.stdout


def test_smooth_writes_result_and_report(tmp_path: Path) -> None:
    r = _run("smooth", "smooth-parametric", "--duration", "60s", "--out", "s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "s/result.json").read_text())
    assert doc["source"] == "simulated" and doc["spectrum"]["source"] == "simulated"
    assert {m["mitigation"] for m in doc["mitigations"]} >= {"none", "gpu smoothing + rack storage"}
    html = (tmp_path / "s/report.html").read_text()
    assert "power spectrum" in html and "state of charge" in html


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (
            ("mitigations", 1, "gpu_smoothing", "profiles", 0, "percent_tmp_floor", 150),
            "percent_tmp_floor",
        ),
        (
            ("mitigations", 1, "gpu_smoothing", "profiles", 0, "ramp_up_rate_w_s", -5),
            "ramp_up_rate_w_s",
        ),
        (("mitigations", 3, "storage", "round_trip_efficiency", 1.3), "round_trip_efficiency"),
        (("mitigations", 3, "storage", "capacity_kwh", -2), "capacity_j"),
    ],
)
def test_smooth_bad_input_is_one_line(
    tmp_path: Path, patch: tuple[object, ...], field: str
) -> None:
    doc = json.loads((DATA / "smooth_parametric.json").read_text())
    node = doc
    for k in patch[:-2]:
        node = node[k]  # type: ignore[index]
    node[patch[-2]] = patch[-1]  # type: ignore[index]
    (tmp_path / "s.json").write_text(json.dumps(doc))
    r = _run("smooth", "s.json", cwd=tmp_path)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert field in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_flex_target_below_site_floor_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "low.csv").write_text(
        "feed,start,end,value,unit,mode\nphoenix-cluster,600,1200,10,kilowatt,strict\n"
    )
    r = _run("flex", "phoenix", "--targets", "low.csv", cwd=tmp_path)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert "low.csv" in err and "below the site's floor" in err and len(err.splitlines()) == 1
