"""What importing perwatt.engine sets up before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

PROBE = "import os, perwatt.engine.generate, torch; print(os.environ.get('OMP_WAIT_POLICY'))"


def _run(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_openmp_waits_passively_unless_the_user_chose() -> None:
    # libgomp spin-waits by default; on shared cores that made the decode loop on the thread
    # that loaded the model 10-40x slower than on a second thread (BENCHMARKS.md, issue 10).
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _run(env) == "PASSIVE"
    assert _run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
