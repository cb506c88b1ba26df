from __future__ import annotations

import json
from pathlib import Path

import pytest

from perwatt.cli import main

DATA = Path(__file__).parents[2] / "perwatt/facility/data"


def test_simulate_writes_result_timeline_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "facility",
            "simulate",
            "test-8rack",
            "mixed",
            "--policy",
            "static,realloc",
            "--duration",
            "20m",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert [r["policy"] for r in doc["results"]] == ["static", "realloc"]
    assert all(r["energy"]["source"] == "simulated" for r in doc["results"])
    html = (out / "report.html").read_text()
    assert "<svg" in html and "Simulated." in html and "<script" not in html
    assert (out / "timeline.csv").read_text().splitlines()[1].endswith("simulated")
    assert "realloc" in capsys.readouterr().out


def test_simulate_shipped_files_including_dps(tmp_path: Path) -> None:
    for site in ("site_example.json", "site_example_dps.json"):
        rc = main(
            [
                "facility",
                "simulate",
                str(DATA / site),
                str(DATA / "workload_example.json"),
                "--policy",
                "realloc",
                "--duration",
                "10m",
                "--out",
                str(tmp_path / site),
            ]
        )
        assert rc == 0


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["facility", "simulate", "nosuch", "mixed"], "no such site file or preset"),
        (["facility", "simulate", "test-8rack", "mixed", "--duration", "5x"], "bad duration"),
        (["facility", "simulate", "test-8rack", "mixed", "--policy", "magic"], "unknown policy"),
        (["facility", "capacity", "site-96mw", "mixed", "--max-loss", "150%"], "max_loss"),
        (["cost"], "give --it-power-mw"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], msg: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main([*args, *(["--out", str(tmp_path)] if "simulate" in args else [])])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_site_file_names_file_and_element(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = json.loads((DATA / "site_example.json").read_text())
    d["root"]["children"][0]["capacity_w"] = 1000.0
    p = tmp_path / "site.json"
    p.write_text(json.dumps(d))
    rc = main(["facility", "simulate", str(p), "mixed", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "site.json: element 'pdu0'" in err


def test_capacity_answers_for_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["facility", "capacity", "site-96mw", "mixed", "--duration", "2h", "--step", "5m", "--json"]
    )
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == [
        "nameplate",
        "static",
        "uniform",
        "polca",
        "thunderbolt",
        "realloc",
    ]
    assert all(r["gpus"] > 0 for r in rows)


def test_cost_from_numbers_and_from_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "cost",
                "--it-power-mw",
                "10",
                "--tokens-per-j",
                "2",
                "--pue",
                "1.2",
                "--price",
                "0.1",
                "--json",
            ]
        )
        == 0
    )
    c = json.loads(capsys.readouterr().out)
    assert c["energy_cost_usd_per_year"] == pytest.approx(10e3 * 8760 * 1.2 * 0.1)
    out = tmp_path / "run"
    main(
        [
            "facility",
            "simulate",
            "test-8rack",
            "mixed",
            "--policy",
            "realloc",
            "--duration",
            "10m",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    assert main(["cost", "--result", str(out / "result.json"), "--gain", "10%"]) == 0
    assert "simulated" in capsys.readouterr().out


def test_sweep_writes_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep.csv"
    rc = main(
        [
            "facility",
            "sweep",
            "--sites",
            "test-8rack",
            "--workloads",
            "mixed",
            "--policy",
            "static,polca",
            "--param",
            "polca.t1=0.85,0.9",
            "--duration",
            "20m",
            "--step",
            "1m",
            "--workers",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("site,workload,policy,params")
    assert "3 points (local processes)" in capsys.readouterr().out


def test_racks_only_for_scalable_presets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(
        ["facility", "simulate", "test-8rack", "mixed", "--racks", "9", "--out", str(tmp_path)]
    )
    assert rc == 2 and "--racks applies to the presets" in capsys.readouterr().err
