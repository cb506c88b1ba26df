"""The ``perwatt`` entry point itself (perwatt/cli/__init__.py): what every command shares."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perwatt.cli import COMMAND_AREAS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


DATA = ROOT / "tests" / "bench" / "data"
COMPARE = ["compare", str(DATA / "bf16_c1.json"), str(DATA / "fp8_c1.json"), "--resamples", "100"]


@pytest.mark.parametrize("args", [["env", "--json"], ["env"], COMPARE, [*COMPARE, "--json"]])
def test_output_into_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    """`perwatt env --json | head -c 300`: a reader that stops early used to get a
    BrokenPipeError traceback. Here the reader has gone before perwatt writes at all."""
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # `head` has already exited
    try:
        p = subprocess.run(
            [sys.executable, "-m", "perwatt", *args],
            stdout=w_fd,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "PERWATT_FAKE_NVML"},
            timeout=120,
        )
    finally:
        os.close(w_fd)
    assert p.stderr == ""  # no traceback, no "Exception ignored"
    # 141 = 128 + SIGPIPE, as a shell reports it; rich's own tables (compare) end with 1: rich
    # catches the broken pipe itself, quietly, before perwatt sees it
    assert p.returncode in ((1, 141) if args[0] == "compare" and "--json" not in args else (141,))


def test_a_pipe_read_to_the_end_is_unaffected() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "perwatt", "env", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0 and p.stdout.startswith("{")


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_the_command_table_names_every_command_its_area_registers() -> None:
    """COMMAND_AREAS is what lets `perwatt meter` import only the meter's CLI: a command an area
    registers but the table lacks would be unreachable, one the table names wrongly would fail."""
    assert _subcommands(build_parser()) == set(COMMAND_AREAS)
    for command, area in COMMAND_AREAS.items():
        assert command in _subcommands(build_parser([command]))
        assert _subcommands(build_parser([command])) == {
            c for c, a in COMMAND_AREAS.items() if a == area
        }


def test_version_and_one_command_import_only_what_they_need() -> None:
    """Start-up (issue 11): `--version` loads no area, `meter` not the facility's NumPy models."""
    code = (
        "import sys; from perwatt.cli import build_parser; build_parser(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.startswith('perwatt.cli.')))"
    )

    def cli_modules(*argv: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT,
            check=True, timeout=120,
        ).stdout  # fmt: skip

    assert cli_modules("--version") == "[]\n"
    assert "perwatt.cli.facility" not in cli_modules("meter", "--", "true")
    assert "perwatt.cli.facility" in cli_modules("--help")


def test_a_mistyped_command_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["metre"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'metre'" in err and all(c in err for c in COMMAND_AREAS)
