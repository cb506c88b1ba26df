from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from perwatt.errors import DataFormatError
from perwatt.facility.loadtarget import (
    active_target,
    breach,
    load_targets,
    status,
    status_event,
)


def _ev(i: str, start: str, end: str, value: float, unit: str, issued: str) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "type": "grid.loadtarget.set.v1",
            "source": "utility/test",
            "id": i,
            "time": issued,
            "datacontenttype": "application/json",
            "data": {
                "feedId": "feed-a",
                "startTime": start,
                "endTime": end,
                "target": {"value": value, "unit": unit},
                "mode": "strict",
            },
        }
    )


def test_cloudevents_units_and_most_recent_wins(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        _ev(
            "a",
            "2025-05-03T22:00:00Z",
            "2025-05-04T01:00:00Z",
            25,
            "percent",
            "2025-05-03T20:00:00Z",
        )
        + "\n"
        + _ev(
            "b",
            "2025-05-03T23:00:00Z",
            "2025-05-03T23:30:00Z",
            300,
            "kilowatt",
            "2025-05-03T21:00:00Z",
        )
        + "\n"
    )
    ts = load_targets(p)
    assert ts[0].start_s == 0 and ts[0].end_s == 3 * 3600 and ts[0].reduction == 0.25
    assert ts[1].value_w == 300e3
    assert active_target(ts, "feed-a", 10.0) is ts[0]
    assert active_target(ts, "feed-a", 3600 + 10) is ts[1]  # issued later: wins
    assert active_target(ts, "feed-a", 3 * 3600) is None
    assert ts[0].target_w(400e3) == pytest.approx(300e3)


def test_csv(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("feed,start,end,value,unit,mode\nfeed-a,60,120,2,megawatt,best-effort\n")
    (t,) = load_targets(p, capacity_w=5e6, floor_w=1e6)
    assert (t.start_s, t.end_s, t.value_w, t.mode) == (60, 120, 2e6, "best-effort")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("feed,start,end,value,unit,mode\nfeed-a,60,120,2,gigawatt,strict\n", "unit"),
        ("feed,start,end,value,unit,mode\nfeed-a,120,60,2,megawatt,strict\n", "end must be after"),
        ("feed,start,end,value,unit,mode\nfeed-a,60,120,9,megawatt,strict\n", "above the site"),
        ("feed,start,end,value,unit,mode\nfeed-a,60,120,0.5,megawatt,strict\n", "below the site"),
        ("feed,start,end,value,unit,mode\nfeed-a,60,120,120,percent,strict\n", "percent"),
        ("feed,start,end,value,unit,mode\nfeed-a,60,120,2,megawatt,maybe\n", "mode"),
        ("feed,start,end,value\nfeed-a,60,120,2\n", "unit, mode"),
        (
            "feed,start,end,value,unit,mode,issued\nfeed-a,60,120,2,megawatt,strict,5\n"
            "feed-a,100,200,3,megawatt,strict,5\n",
            "overlap",
        ),
        ('{"specversion": "1.0", "id": "x", "source": "s", "type": "grid.other.v1"}\n', "type"),
        ("{not json\n", "not JSON"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(tmp_path: Path, body: str, match: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(DataFormatError, match=match) as e:
        load_targets(p, capacity_w=5e6, floor_w=1e6)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_missing_data_field_named(tmp_path: Path) -> None:
    d = json.loads(
        _ev(
            "a",
            "2025-05-03T22:00:00Z",
            "2025-05-04T01:00:00Z",
            1,
            "megawatt",
            "2025-05-03T20:00:00Z",
        )
    )
    del d["data"]["endTime"]
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(d) + "\n")
    with pytest.raises(DataFormatError, match=r"data\.endTime"):
        load_targets(p)


def test_status_and_breach() -> None:
    assert breach(100.0, 100.0) is None
    assert breach(110.0, 100.0) == "warning"
    assert breach(121.0, 100.0) == "critical"
    from perwatt.facility.loadtarget import LoadTarget

    t = LoadTarget(id="a", feed="f", start_s=0, end_s=10, issued_s=0, value_w=100.0)
    assert status(time_s=1, target=t, target_w=100.0, power_w=150, previous_w=150) == "target-set"
    assert status(time_s=2, target=t, target_w=100.0, power_w=120, previous_w=150) == "ramping-down"
    assert status(time_s=3, target=t, target_w=100.0, power_w=100, previous_w=120) == "compliant"
    assert (
        status(time_s=11, target=None, target_w=None, power_w=140, previous_w=100) == "ramping-up"
    )
    assert (
        status(time_s=-1, target=None, target_w=None, power_w=1, previous_w=1, pending=True)
        == "in-flight"
    )
    ev = status_event(
        feed="f",
        state="target-set",
        power_w=130.0,
        target_w=100.0,
        at=datetime(2025, 5, 3, 22, tzinfo=timezone.utc),
        seq=1,
    )
    assert ev["type"] == "grid.powerstate.status.v1" and ev["data"]["breach"] == "critical"
    assert ev["time"] == "2025-05-03T22:00:00Z"
    assert "time" not in status_event(
        feed="f", state="compliant", power_w=1.0, target_w=None, at=None, seq=2
    )
