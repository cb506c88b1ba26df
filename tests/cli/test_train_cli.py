"""``perwatt train plan`` run as a user would."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
from pathlib import Path

import pytest

from perwatt.cli import main

DATA = Path(__file__).resolve().parents[1] / "train" / "data"
TINY = str(DATA / "tiny_profile.csv")
PERSEUS = Path(__file__).resolve().parents[2] / "data/perseus-sosp24"


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
        (["--p-block", "abc"], "--p-block must be watts ≥ 0"),
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
    prof = PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv"
    ref = PERSEUS / "iteration_time_energy/a100_sxm/gpt3-175b_bf16_mb24.csv.gz"
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
    with out.open() as a, gzip.open(ref, "rt") as b:
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


# ---------------------------------------------------------------------- train profile --script
_SCRIPT = """
from perwatt.train import profiler
n = 0
while not profiler.done() and n < 50:
    for inst in ("forward", "backward"):
        profiler.on_instruction_begin(inst)
        sum(range(1000))
        profiler.on_instruction_end(inst)
    profiler.on_iteration_end()
    n += 1
"""
_FLAG = "--i-understand-this-changes-clocks"


def _profile_args(tmp_path: Path, *extra: str) -> list[str]:
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    out = str(tmp_path / "s0.csv")
    return ["train", "profile", "--script", str(script), "--out", out, *extra]


def test_profile_script_uses_fake_nvml_from_env_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "A100")
    # Each instruction outlasts the fake's 100 ms energy counter, so every window sees a tick.
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.replace("sum(range(1000))", "__import__('time').sleep(0.12)"))
    out = tmp_path / "s0.csv"
    sweep = ["--min-freq", "1395", "--warmup", "0", "--iterations", "1"]
    rc = main(["train", "profile", "--script", str(script), "--out", str(out), _FLAG, *sweep])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "FAKE GPU (PERWATT_FAKE_NVML): figures are simulated, not measured" in printed
    assert "[source: simulated]" in printed
    rows = list(csv.reader(out.read_text().splitlines()))
    assert [r[:3] for r in rows[1:]] == [
        ["0", "forward", "1410"],
        ["0", "backward", "1410"],
        ["0", "forward", "1395"],
        ["0", "backward", "1395"],
    ]
    assert all(float(r[4]) > 0 for r in rows[1:])


def test_profile_script_refuses_rows_the_planner_cannot_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 9: a few µs per clock against a 100 ms counter wrote 0 J rows ("flagged, not
    # trusted"), which `train plan` then rejected. Now nothing is written, and the line says why.
    monkeypatch.setenv("PERWATT_FAKE_NVML", "A100")
    sweep = ["--min-freq", "1395", "--warmup", "0", "--iterations", "1"]
    rc = main(_profile_args(tmp_path, _FLAG, *sweep))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "less than two energy-counter periods" in err and "cannot use" in err
    assert not list(tmp_path.glob("s0*.csv"))


def test_profile_script_that_raises_shows_its_traceback_once_then_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 9: the user's traceback came wrapped in perwatt's and runpy's frames, with no line
    # saying what happened to the sweep. Now: their frames once, then one perwatt line.
    monkeypatch.setenv("PERWATT_FAKE_NVML", "A100")
    script = tmp_path / "train.py"
    script.write_text(
        _DIVERGE
        + _SCRIPT.replace("sum(range(1000))", "__import__('time').sleep(0.12)").replace(
            "    n += 1\n", "    n += 1\n    if n == 2:\n        diverge()\n"
        )
    )
    out = tmp_path / "s0.csv"
    sweep = ["--warmup", "0", "--iterations", "1"]
    rc = main(["train", "profile", "--script", str(script), "--out", str(out), _FLAG, *sweep])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1
    assert f'File "{script}", line' in err and "in diverge" in err
    assert "profiler.py" not in err and "runpy" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"perwatt: error: training script {script} raised ValueError: ")
    # two iterations, one per clock (1410 and 1395 MHz): a forward and a backward row each
    assert "loss is NaN; the 4 rows measured before it are in" in last
    assert last.endswith("s0.partial.csv") and (tmp_path / "s0.partial.csv").exists()


_DIVERGE = """
def diverge():
    raise ValueError("loss is NaN")
"""


@pytest.mark.parametrize("fake", ["missing", "A100", None])
def test_profile_script_without_flag_names_the_flag_first(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake: str | None,
) -> None:
    # No driver (missing), a fake GPU, or whatever this machine has: the flag comes first.
    if fake is None:
        monkeypatch.delenv("PERWATT_FAKE_NVML", raising=False)
    else:
        monkeypatch.setenv("PERWATT_FAKE_NVML", fake)
    rc = main(_profile_args(tmp_path))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("perwatt: error: refusing to sweep GPU clocks without the explicit flag")
    assert _FLAG in err and "NVML" not in err


def test_profile_script_without_nvml_suggests_simulate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "missing")
    rc = main(_profile_args(tmp_path, _FLAG))
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "--simulate" in err and "PERWATT_FAKE_NVML" in err
    assert "--source" not in err  # `train profile` has no --source option


# ---------------------------------------------------------------------- option values
_BASE = ["--stages", "2", "--microbatches", "3", "--p-block", "50"]


@pytest.mark.parametrize("command", ["plan", "simulate"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # "-5%" looked like an option to argparse: "expected one argument", with the usage.
        (["--max-slowdown", "-5%"], "--max-slowdown must be a percentage ≥ 0, e.g. 1%, got '-5%'"),
        (["--max-slowdown=-5%"], "--max-slowdown must be a percentage ≥ 0"),
        (["--max-slowdown", "1%%"], "--max-slowdown must be a percentage ≥ 0"),
        (["--max-slowdown", "nan"], "--max-slowdown must be a percentage ≥ 0"),
        (["--straggler-ratio", "0.5"], "--straggler-ratio must be a ratio ≥ 1 (T′ = R × T_min)"),
        (["--straggler-ratio", "-2"], "--straggler-ratio must be a ratio ≥ 1"),
        (["--straggler-ratio=-inf"], "--straggler-ratio must be a ratio ≥ 1"),
        (["--deadline", "-1"], "--deadline must be a time in seconds > 0"),
        (["--deadline=-1.5e0"], "--deadline must be a time in seconds > 0"),
        (["--deadline", "0"], "--deadline must be a time in seconds > 0"),
        (["--deadline", "-inf"], "--deadline must be a time in seconds > 0"),
        (["--straggler", "-.5"], "--straggler must be a time in seconds > 0"),
        (["--noise-factor", "0.9"], "--noise-factor must be a number ≥ 1"),
        (["--quantum-ms", "-1"], "--quantum-ms must be milliseconds > 0"),
        (["--p-block", "-5"], "--p-block must be watts ≥ 0"),
        (["--p-block", "50,"], "--p-block must be watts ≥ 0"),
        (["--p-block", "50,50,50"], "--p-block has 3 values but --stages is 2"),
        (["--stages", "0"], "--stages must be a whole number ≥ 1"),
        (["--chunks", "0"], "--chunks must be a whole number ≥ 1, got 0"),
        (["--chunks", "2"], "--chunks 2 needs --schedule interleaved (the 1f1b schedule"),
        (["--schedule", "gpipe", "--chunks", "3"], "--chunks 3 needs --schedule interleaved"),
        (["--supported-freqs", "1400,abc"], "--supported-freqs must be numbers separated"),
        (["--supported-freqs", "1400.5"], "--supported-freqs must be whole MHz > 0"),
        (["--supported-freqs", "-1400"], "--supported-freqs must be whole MHz > 0"),
        (["--supported-freqs", "inf"], "--supported-freqs must be whole MHz > 0"),
        (["--supported-freqs", "1400,nan"], "--supported-freqs must be whole MHz > 0"),
    ],
)
def test_bad_option_values_are_one_line_before_any_solving(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    extra: list[str],
    message: str,
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a value that is wrong for any profile must fail before solving")

    monkeypatch.setattr("perwatt.train.plan.plan_pipeline", never)
    monkeypatch.setattr("perwatt.train.simulate.run_simulation", never)
    rc = main(["train", command, TINY, *_BASE, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"perwatt: error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize(("command", "flag"), [("plan", "--frontier"), ("simulate", "--out")])
def test_output_that_is_a_directory_fails_before_solving(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
    flag: str,
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("should fail before solving")

    monkeypatch.setattr("perwatt.train.plan.plan_pipeline", never)
    monkeypatch.setattr("perwatt.train.simulate.run_simulation", never)
    rc = main(["train", command, TINY, *_BASE, flag, str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"cannot write {tmp_path}: it is a directory; give {flag} a file name" in err


@pytest.mark.parametrize("command", ["plan", "simulate"])
@pytest.mark.parametrize("value", ["1%", "1", "0%", "2.5 %"])
def test_max_slowdown_spellings_agree(
    capsys: pytest.CaptureFixture[str], command: str, value: str
) -> None:
    # `simulate` took only a bare number ("1%" was an argparse 'invalid float value').
    rc = main(["train", command, TINY, *_BASE, "--max-slowdown", value])
    assert rc == 0
    pct = value.rstrip("% ")
    assert f"max slowdown {float(pct):g}%" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_chunks_needs_interleaved(capsys: pytest.CaptureFixture[str], command: str) -> None:
    # --chunks 2 with the default 1f1b schedule used to be ignored silently.
    rc = main(["train", command, TINY, *_BASE, "--chunks", "2"])
    assert rc == 2
    assert "--chunks 2 needs --schedule interleaved" in capsys.readouterr().err


# ---------------------------------------------------------------------- simulate's schedules
def _option(command: str, flag: str) -> argparse.Action:
    from perwatt.cli import build_parser

    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["train"]
    cmd = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[
        command
    ]
    action: argparse.Action = next(a for a in cmd._actions if flag in a.option_strings)
    return action


_PIPELINE_FLAGS = ["--stages", "--microbatches", "--p-block", "--schedule", "--chunks"]
_PIPELINE_FLAGS += ["--recompute", "--supported-freqs", "--quantum-ms", "--noise-factor"]


@pytest.mark.parametrize("flag", _PIPELINE_FLAGS)
def test_simulate_takes_plans_pipeline_options(flag: str) -> None:
    plan, sim = _option("plan", flag), _option("simulate", flag)
    for attr in ("option_strings", "dest", "default", "help", "choices", "type", "required"):
        assert getattr(sim, attr) == getattr(plan, attr), attr
    assert type(sim) is type(plan)
    if flag == "--schedule":
        assert sim.choices == ("1f1b", "gpipe", "interleaved") and sim.default == "1f1b"


@pytest.mark.parametrize("command", ["plan", "simulate"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--schedule", "interleaved", "--chunks", "2"],
            "interleaved 1F1B needs microbatches to be a multiple of stages (3 % 2 != 0); "
            "change --microbatches",
        ),
        (["--supported-freqs", "1400,1200"], "profiled clocks [800, 1000] MHz are not supported"),
    ],
)
def test_schedule_errors_are_one_line_before_solving(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    extra: list[str],
    message: str,
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("should fail before solving")

    monkeypatch.setattr("perwatt.train.plan.compute_frontier", never)
    rc = main(["train", command, TINY, *_BASE, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


_BAR = re.compile(
    r'class="([fb])[^"]*"><title>stage (\d+) (forward|backward) mb (\d+)(?: chunk (\d+))?'
    r"[^:<]*: (\d+) MHz, ([0-9.]+) ms"
)


@pytest.mark.parametrize(
    ("extra", "instructions", "chunks"),
    [
        # 2 stages x 4 microbatches x forward+backward (x 2 chunks when interleaved)
        (["--microbatches", "4", "--schedule", "gpipe"], 16, 1),
        (["--microbatches", "4", "--schedule", "interleaved", "--chunks", "2"], 32, 2),
        (["--microbatches", "4", "--recompute"], 16, 1),
        (["--microbatches", "4", "--schedule", "gpipe", "--recompute"], 16, 1),
    ],
)
def test_simulate_every_schedule_draws_one_bar_per_instruction(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    extra: list[str],
    instructions: int,
    chunks: int,
) -> None:
    out = tmp_path / "sim.html"
    args = [*_BASE, *extra, "--supported-freqs", "1400,1200,1000,800", "--straggler-ratio", "1.1"]
    assert main(["train", "simulate", TINY, *args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    plan_args = [*_BASE, *extra, "--straggler-ratio", "1.1", "--json"]
    assert main(["train", "plan", TINY, *plan_args]) == 0
    doc = json.loads(capsys.readouterr().out)
    # The after-timeline is the plan `train plan` chose, replayed to the same figures.
    after = re.search(r"after  \(plan\): +iteration ([0-9.]+) s, energy ([0-9.]+) J", text)
    assert after is not None
    assert float(after[1]) == pytest.approx(doc["chosen"]["replay_time_s"], abs=5e-5)
    assert float(after[2]) == pytest.approx(doc["chosen"]["replay_energy_j"], abs=0.05)
    assert ("model chunks per GPU" in text) == (chunks > 1)
    assert ("recompute" in text) == ("--recompute" in extra)
    bars = _BAR.findall(out.read_text())
    assert len(bars) == 4 * instructions  # 2 timelines x (by clock, by power)
    charts = [bars[k * instructions : (k + 1) * instructions] for k in range(4)]
    for chart in charts:  # every instruction once per chart, chunks told apart
        assert len({(s, i, m, c or "0") for _, s, i, m, c, _, _ in chart}) == instructions
        assert {c or "0" for *_, c, _, _ in chart} == {str(k) for k in range(chunks)}
    # The plan's clocks, per stage in program order, are the drawn after-bars' clocks.
    planned = [f for stage in doc["chosen"]["freq_mhz"] for f in stage]
    assert [int(f) for *_, f, _ in charts[1]] == planned == [int(f) for *_, f, _ in charts[3]]
    # A recomputed backward is one bar as long as backward + forward (stage 0 at 1400 MHz:
    # 20 + 10 ms); the all-max-clock chart shows it.
    b0 = next(
        float(ms)
        for _, s, i, m, c, _, ms in charts[0]
        if (s, i, m, c or "0") == ("0", "backward", "0", "0")
    )
    assert b0 == pytest.approx((30.0 if "--recompute" in extra else 20.0) / chunks, abs=0.005)


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_gpt3_interleaved_needs_microbatches_a_multiple_of_stages(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    prof = str(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    args = ["--stages", "8", "--microbatches", "12", "--p-block", "83.64"]
    rc = main(["train", command, prof, *args, "--schedule", "interleaved", "--chunks", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "multiple of stages (12 % 8 != 0); change --microbatches" in err


def test_simulate_takes_one_blocking_power_per_stage(capsys: pytest.CaptureFixture[str]) -> None:
    # As `train plan` does; `simulate` refused "50,60" with an argparse 'invalid float value'.
    args = ["--stages", "2", "--microbatches", "3", "--p-block", "50,60"]
    assert main(["train", "simulate", TINY, *args]) == 0
    assert "P_block 50/60 W (per stage)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_noisy_profile_warning_suggests_only_options_the_command_has(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    noisy = _noisy_profile(tmp_path)
    assert main(["train", command, noisy, *_BASE]) == 0
    warning = capsys.readouterr().err
    suggested = re.findall(r"(--[a-z][a-z-]*) ([0-9.]+)", warning)
    assert ("--noise-factor", "1.02") in suggested
    for flag, value in suggested:  # each suggestion, followed, runs and is not repeated
        assert main(["train", command, noisy, *_BASE, flag, value]) == 0
        assert flag not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # Options of the other mode used to be ignored silently.
        (["--script", "train.py", "--stages", "4"], "--stages only apply to --simulate"),
        (["--script", "train.py", "--gpu", "H100"], "--gpu only apply to --simulate"),
        (["--simulate", "--gpu-index", "1"], "--gpu-index only apply to --script"),
        (["--simulate", "--stage", "3"], "--stage only apply to --script"),
        # a given 0 is still given (0 == False once fooled the check)
        (["--simulate", "--stage", "0"], "--stage only apply to --script"),
        (["--simulate", "--gpu-index", "0"], "--gpu-index only apply to --script"),
        (["--simulate", "--", "--lr", "0.1"], "go to a --script; --simulate takes none"),
        (["--simulate", "--noise-tolerance", "-0.1"], "(--noise-tolerance) must be in [0, 1)"),
        (["--simulate", "--iterations", "0"], "(--iterations) must be ≥ 1"),
    ],
)
def test_profile_option_errors_name_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    if "--script" in extra:
        (tmp_path / "train.py").write_text(_SCRIPT)
        extra = [str(tmp_path / x) if x == "train.py" else x for x in extra]
    rc = main(["train", "profile", "--out", str(tmp_path / "p.csv"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_profile_simulate_notes_one_line_per_kind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A 100 ms counter flags every clock; that was one note per clock (up to 3, then "… and 47
    # more") printed above the per-stage stop reasons.
    args = ["--simulate", "--gpu", "H100", "--stages", "2", "--microbatches", "2", "--step", "3"]
    out = str(tmp_path / "p.csv")
    assert main(["train", "profile", *args, "--counter-period", "0.1", "--out", out]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(notes) == 1, notes
    assert "shorter than the counter period" in notes[0] and "more like it" in notes[0]


def test_simulate_far_deadline_is_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 9: a RuntimeError from an exact float comparison ("3924.0856 J vs 3924.0856 J").
    prof = str(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    args = ["--stages", "8", "--microbatches", "24", "--p-block", "83.64", "--deadline", "1e8"]
    assert main(["train", "simulate", prof, *args]) == 0
    assert "saved 3,924.1 J per iteration = 0.00% of the before energy" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_profile_with_a_byte_order_mark(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + Path(TINY).read_bytes())
    args = ["--stages", "2", "--microbatches", "3", "--p-block", "50"]
    assert main(["train", command, str(bom), *args]) == 0, capsys.readouterr().err


def _gpt3_in(tmp_path: Path, *, time_x: float = 1.0, energy_x: float = 1.0) -> str:
    rows = (PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv").read_text().splitlines()
    lines = [rows[0]]
    for row in rows[1:]:
        s, inst, f, t, e = row.split(",")
        lines.append(f"{s},{inst},{f},{float(t) * time_x!r},{float(e) * energy_x!r}")
    out = tmp_path / "wrong-units.csv"
    out.write_text("\n".join(lines) + "\n")
    return str(out)


@pytest.mark.parametrize("command", ["plan", "simulate"])
@pytest.mark.parametrize(
    ("scale", "p_block", "message"),
    [
        ({"time_x": 1e3}, "83.64", "these look like milliseconds"),
        ({"energy_x": 1e-3}, "83.64", "these look like kilojoules"),
        ({}, "83640", "is it in milliwatts (83.64 W)?"),
    ],
)
def test_wrong_units_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    scale: dict[str, float],
    p_block: str,
    message: str,
) -> None:
    # Issue 9: profiles in ms or kJ, and --p-block 83640, used to print confident savings.
    args = ["--stages", "8", "--microbatches", "24", "--p-block", p_block]
    assert main(["train", command, _gpt3_in(tmp_path, **scale), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_unbounded_sizes_are_one_line_and_immediate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    # Issue 9: `train plan --microbatches 100000` ran for days with no output.
    import perwatt.train.pipeline as pipeline_mod

    def no_schedule(*args: object, **kwargs: object) -> None:
        raise AssertionError("the size must be refused before the schedule is built")

    monkeypatch.setattr(pipeline_mod, "one_f_one_b", no_schedule)
    prof = str(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    args = ["--stages", "8", "--microbatches", "100000", "--p-block", "83.64"]
    assert main(["train", command, prof, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1,600,000 instructions per iteration" in err


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_long_solves_show_progress_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    import perwatt.cli.options as options_cli

    monkeypatch.setattr(options_cli, "PROGRESS_EVERY_S", 0.0)  # every report, for the test
    prof = str(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    args = ["--stages", "8", "--microbatches", "12", "--p-block", "83.64"]
    assert main(["train", command, prof, *args]) == 0
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.startswith("perwatt: solving the frontier")]
    assert [x.split(": ")[2].split("%")[0] for x in lines] == ["40", "80"]
    assert "solving" not in captured.out


# 120 ms instructions: a row shorter than the counter period is refused (issue 9 §3).
_ENDLESS_SCRIPT = """
import sys, time
from pathlib import Path
from perwatt.train import profiler
n = 0
while not profiler.done():
    for inst in ("forward", "backward"):
        profiler.on_instruction_begin(inst)
        time.sleep(0.12)
        profiler.on_instruction_end(inst)
    profiler.on_iteration_end()
    n += 1
    if n == 2:
        Path(sys.argv[1]).write_text("measuring")
"""


def test_profile_script_sigterm_keeps_the_rows_and_says_so(tmp_path: Path) -> None:
    """SIGTERM mid-sweep (a scheduler's time limit): the rows measured so far are written as
    *.partial.csv, the clocks restored, and perwatt says so and exits 143 (it died at once)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script, marker = tmp_path / "train.py", tmp_path / "measuring"
    script.write_text(_ENDLESS_SCRIPT)
    p = subprocess.Popen(
        [sys.executable, "-m", "perwatt", "train", "profile", "--script", str(script),
         "--out", str(tmp_path / "s0.csv"), _FLAG, "--warmup", "0", "--iterations", "1000",
         "--", str(marker)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2], env={**os.environ, "PERWATT_FAKE_NVML": "A100"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), p.communicate()[1]
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "Traceback" not in err and "perwatt: interrupted by SIGTERM" in err
    partial = tmp_path / "s0.partial.csv"
    rows = list(csv.reader(partial.read_text().splitlines()))
    assert rows[0][:3] == ["stage", "instruction", "frequency"] and len(rows) >= 3
    assert f"wrote {partial}: {len(rows) - 1} rows" in out
    assert "PARTIAL: interrupted by SIGTERM" in out
    assert not (tmp_path / "s0.csv").exists()


def test_library_field_errors_are_said_with_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """PipelineSpec and plan_pipeline name fields (``stages``); the CLI names its flags."""
    prof = str(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    args = ["--stages", "4", "--microbatches", "12", "--p-block", "83.64"]
    assert main(["train", "plan", prof, *args]) == 2
    err = capsys.readouterr().err
    assert "has 8 stages but --stages is 4; they must match" in err
    assert err.count("\n") == 1
