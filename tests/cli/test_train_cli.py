"""``perwatt train plan`` run as a user would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from perwatt.cli import main

DATA = Path(__file__).resolve().parents[1] / "train" / "data"
TINY = str(DATA / "tiny_profile.csv")
SHARED = Path(__file__).resolve().parents[3] / "shared/data/perseus-sosp24"


def test_plan_fastest_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    rc = main(
        [
            "train",
            "plan",
            TINY,
            "--stages",
            "2",
            "--microbatches",
            "3",
            "--p-block",
            "50",
            "--frontier",
            str(out),
            "--target",
            "fastest",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "target: fastest" in text and "saved vs all GPUs at max clock" in text
    assert out.read_text().startswith("time,energy\n")


def test_plan_straggler_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(
        [
            "train",
            "plan",
            TINY,
            "--stages",
            "2",
            "--microbatches",
            "3",
            "--p-block",
            "50",
            "--straggler-ratio",
            "1.2",
            "--plans",
            str(tmp_path / "p.json"),
            "--json",
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vs_fastest"]["saved_j"] > 0
    assert (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--straggler", "0.001"], "below this pipeline's minimum iteration time"),
        (["--p-block", "abc"], "--p-block must be numbers"),
        (["--stages", "3"], "they must match"),
        (["--supported-freqs", "1400,1200"], "not supported"),
    ],
)
def test_plan_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], extra: list[str], match: str
) -> None:
    args = ["train", "plan", TINY, "--stages", "2", "--microbatches", "3", "--p-block", "50"]
    # later flags win in argparse, so extra overrides the defaults above
    rc = main(args + extra)
    assert rc == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and err.count("\n") == 1


def test_max_slowdown_percent(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "train",
            "plan",
            TINY,
            "--stages",
            "2",
            "--microbatches",
            "3",
            "--p-block",
            "50",
            "--max-slowdown",
            "1%",
        ]
    )
    assert rc == 0
    assert "max slowdown 1%" in capsys.readouterr().out


def test_done_means_gpt3_a100_mb24(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    prof = SHARED / "stage_profile/gpt3-175b+a100_sxm_bf16.csv"
    ref = SHARED / "iteration_time_energy/a100_sxm/gpt3-175b_bf16_mb24.csv"
    if not prof.exists():
        pytest.skip(f"shared Perseus data not found at {SHARED}")
    out = tmp_path / "OUT.csv"
    rc = main(
        [
            "train",
            "plan",
            str(prof),
            "--stages",
            "8",
            "--microbatches",
            "24",
            "--p-block",
            "83.64",
            "--frontier",
            str(out),
            "--straggler-ratio",
            "1.2",
        ]
    )
    assert rc == 0
    assert "straggler ratio 1.2" in capsys.readouterr().out
    with out.open() as a, ref.open() as b:
        mine, theirs = list(csv.reader(a)), list(csv.reader(b))
    assert mine[0] == theirs[0] == ["time", "energy"]
    assert len(mine) == len(theirs)
    for (t1, e1), (t2, e2) in zip(mine[1:], theirs[1:], strict=True):
        assert float(t1) == pytest.approx(float(t2), abs=1e-9)
        assert float(e1) == pytest.approx(float(e2), rel=1e-3)


def _noisy_profile(tmp_path: Path) -> str:
    # stage 0 forward measured faster at 1200 MHz than at 1400 MHz: measurement noise
    text = Path(TINY).read_text().replace("0,forward,1200,0.0110,", "0,forward,1200,0.0095,")
    path = tmp_path / "noisy.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_noisy_profile_warning_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    args = ["--stages", "2", "--microbatches", "3", "--p-block", "50"]
    rc = main(["train", command, _noisy_profile(tmp_path), *args])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("perwatt: warning: noisy profile"), err


def test_simulate_bad_out_path_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--stages", "2", "--microbatches", "3", "--p-block", "50", "--out", str(tmp_path)]
    rc = main(["train", "simulate", TINY, *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("perwatt: error: cannot write") and err.count("\n") == 1
