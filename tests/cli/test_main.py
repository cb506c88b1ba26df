"""The ``perwatt`` entry point itself (perwatt/cli/__init__.py): what every command shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
