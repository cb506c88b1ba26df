"""Reproduce the Perseus (SOSP'24) reference frontiers from their stage profiles.

The 16 reference files (2 GPUs x 2 models x 12/24/48/96 microbatches) were produced by the
Perseus planner: synchronous 1F1B, 8 stages, exponential cost model, energy = computation +
P_block x blocking time. Every point must match within 0.1% energy, with the same T_min and
T_max. The A100 files step by 1 ms; the A40 files step by 0.1 ms (the artifact's notes say 1 ms
for both, the data say otherwise), so the quantum is read from each file.

The A40 frontiers have 10k-66k points. By default their sweep is checked over its first 2,000
points (from T_max down) and T_min is checked from the all-fastest plan; set
PERWATT_FULL_REFERENCE=1 to sweep every A40 case to T_min (about 2 minutes on a 2-core VM).
"""

from __future__ import annotations

import csv
import gzip
import os
import warnings
from pathlib import Path

import pytest

from perwatt.train import compute_frontier, load_profile, one_f_one_b
from perwatt.train.frontier import NoisyProfileWarning, Solver, time_bounds

PERSEUS = Path(__file__).resolve().parents[2] / "data/perseus-sosp24"
# Blocking power per GPU, as measured by Perseus (data/perseus-sosp24/README.md).
P_BLOCK_W = {"a100_sxm": 83.64, "a40": 70.38}
PARTIAL_POINTS = 2000
FULL = os.environ.get("PERWATT_FULL_REFERENCE") == "1"

# Every case with the default solver (the compiled sweep where it is built), and the small
# A100 cases once more with the NumPy/SciPy fallback, so both stay exact against Perseus.
CASES = [
    (gpu, model, mb, "auto")
    for gpu in ("a100_sxm", "a40")
    for model in ("gpt3-175b", "bloom")
    for mb in (12, 24, 48, 96)
] + [("a100_sxm", model, mb, "python") for model in ("gpt3-175b", "bloom") for mb in (12, 24)]


def _read(path: Path) -> list[tuple[float, float]]:
    with gzip.open(path, "rt") as fh:  # the reference frontiers ship gzip-compressed
        rows = list(csv.reader(fh))
    assert rows[0] == ["time", "energy"]
    return [(float(t), float(e)) for t, e in rows[1:]]


@pytest.mark.parametrize(
    ("gpu", "model", "mb", "solver"), CASES, ids=[f"{g}-{m}-mb{n}-{s}" for g, m, n, s in CASES]
)
def test_reference_frontier(gpu: str, model: str, mb: int, solver: Solver) -> None:
    ref_path = PERSEUS / f"iteration_time_energy/{gpu}/{model}_bf16_mb{mb}.csv.gz"
    prof_path = PERSEUS / f"stage_profile/{model}+{gpu}_bf16.csv"
    ref = _read(ref_path)  # slowest first
    quantum = round(ref[0][0] - ref[1][0], 6)
    assert quantum in (1e-3, 1e-4)
    profile = load_profile(prof_path)
    schedule = one_f_one_b(8, mb)
    partial = not FULL and gpu == "a40"
    stop = ref[PARTIAL_POINTS - 1][0] if partial else None
    with warnings.catch_warnings():
        # The A40 profiles have backward passes that measured faster at a lower clock; the
        # planner says so (and drops those points, as Perseus did).
        warnings.simplefilter("ignore", NoisyProfileWarning)
        fr = compute_frontier(
            profile,
            schedule,
            p_block_w=P_BLOCK_W[gpu],
            time_quantum_s=quantum,
            stop_at_s=stop,
            solver=solver,
        )
        t_min, t_start = time_bounds(profile, schedule, time_quantum_s=quantum)
    mine = fr.to_csv_rows()  # slowest first, like the reference
    by_q = {round(t / quantum): e for t, e in ref}
    assert mine[0][0] == pytest.approx(ref[0][0], abs=quantum / 10)  # same T_max
    assert t_start - quantum == pytest.approx(ref[0][0], abs=quantum / 10)
    assert t_min == pytest.approx(ref[-1][0], abs=quantum / 10)  # same T_min
    if partial:
        assert not fr.complete
        assert len(mine) >= PARTIAL_POINTS
    else:
        assert fr.complete and len(mine) == len(ref)
        assert fr.t_min_s == pytest.approx(ref[-1][0], abs=quantum / 10)
    worst = 0.0
    for t, e in mine:
        k = round(t / quantum)
        assert k in by_q, f"{t} s is not a reference time point"
        rel = abs(e - by_q[k]) / by_q[k]
        worst = max(worst, rel)
        assert rel < 1e-3, f"T={t}: {e} J vs reference {by_q[k]} J"
    # In practice the match is far tighter than the 0.1% the issue asks for.
    assert worst < 1e-5


def test_perseus_data_ships_in_the_repository() -> None:
    # A clone has no data beside it: every file these tests read is in the repository, with the
    # artifact's license and a note naming where it comes from.
    assert "Apache License" in (PERSEUS / "LICENSE").read_text()
    assert "github.com/ml-energy/zeus" in (PERSEUS / "README.md").read_text()
    for gpu, model, mb, _ in CASES:
        assert (PERSEUS / f"iteration_time_energy/{gpu}/{model}_bf16_mb{mb}.csv.gz").is_file()
        assert (PERSEUS / f"stage_profile/{model}+{gpu}_bf16.csv").is_file()
