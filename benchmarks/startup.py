"""Whole-process start-up times of perwatt commands (issue 11 targets), this tree vs a peer.

    python benchmarks/startup.py [--peer DIR] [--runs N]

Runs each command ``--runs`` times as a fresh process (``python -m perwatt …`` with
``PYTHONPATH`` set to this checkout, and to ``--peer`` when given: another checkout measured in
the same run, alternating, so machine load hits both alike). Prints min and median wall time.
Targets: ``--version`` ≤ 0.15 s; ``meter -- true`` ≤ 0.25 s more than ``true``; ``train plan``
(GPT-3 profile, 8 stages, 24 microbatches, compiled sweep) ≤ 0.4 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = str(ROOT / "data/perseus-sosp24/stage_profile/gpt3-175b+a100_sxm_bf16.csv")
COMMANDS = {
    "true": ["true"],
    "perwatt --version": ["-m", "perwatt", "--version"],
    "perwatt meter -- true": ["-m", "perwatt", "meter", "--", "true"],
    "perwatt train plan (8 x 24)": [
        "-m",
        "perwatt",
        "train",
        "plan",
        PROFILE,
        "--stages",
        "8",
        "--microbatches",
        "24",
        "--p-block",
        "83.64",
    ],
}


def _time(cmd: list[str], tree: Path) -> float:
    """Wall time of one run of ``cmd`` with ``tree``'s perwatt."""
    argv = cmd if cmd[0] == "true" else [sys.executable, *cmd]
    # Bytecode caches on, as on a user's machine (pip compiles them at install, and Python writes
    # them on first import): a shell that sets PYTHONDONTWRITEBYTECODE (this VM's did) would
    # otherwise recompile every perwatt module in every run, ~0.13 s of pure compile() here.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    t0 = time.perf_counter()
    # cwd = the tree too: `python -m` puts the working directory first on sys.path
    subprocess.run(argv, cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", type=Path, help="another checkout to measure alongside")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"peer": args.peer.resolve()} if args.peer else {})
    for name, cmd in COMMANDS.items():
        for tree in trees.values():
            _time(cmd, tree)  # warm the bytecode caches and the page cache
        times: dict[str, list[float]] = {k: [] for k in trees}
        for _ in range(args.runs):
            for k, tree in trees.items():
                times[k].append(_time(cmd, tree))
        cells = "  ".join(
            f"{k}: min {min(v):.3f} s, median {statistics.median(v):.3f} s"
            for k, v in times.items()
        )
        print(f"{name:30s} {cells}", flush=True)


if __name__ == "__main__":
    main()
