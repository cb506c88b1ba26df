"""Profiles and blocking powers in the wrong units are refused, naming the likely mistake."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from perwatt.errors import ConfigError, DataFormatError
from perwatt.train.plan import plan_pipeline
from perwatt.train.plausibility import check_p_block, check_profile_units, power_bounds
from perwatt.train.profile import load_profile

PERSEUS = Path(__file__).resolve().parents[2] / "data/perseus-sosp24/stage_profile"
GPT3_A100 = PERSEUS / "gpt3-175b+a100_sxm_bf16.csv"
TINY = Path(__file__).resolve().parent / "data/tiny_profile.csv"
PIPELINE = {"stages": 8, "microbatches": 24, "p_block_w": 83.64}


def _rescaled(tmp_path: Path, time_x: float = 1.0, energy_x: float = 1.0) -> Path:
    """The GPT-3/A100 profile with its time and energy columns multiplied (a unit mistake)."""
    with GPT3_A100.open() as fh:
        rows = list(csv.reader(fh))
    out = tmp_path / f"t{time_x:g}-e{energy_x:g}.csv"
    lines = [",".join(rows[0])]
    for s, inst, f, t, e in rows[1:]:
        lines.append(f"{s},{inst},{f},{float(t) * time_x!r},{float(e) * energy_x!r}")
    out.write_text("\n".join(lines) + "\n")
    return out


def test_real_profiles_pass() -> None:
    for path in sorted(PERSEUS.glob("*.csv")):
        check_profile_units(load_profile(path))
    check_profile_units(load_profile(TINY))


@pytest.mark.parametrize(
    ("time_x", "energy_x", "message"),
    [
        (1e3, 1.0, r"these look like milliseconds \(divide by 1000\)"),
        (1.0, 1e-3, r"these look like kilojoules \(multiply by 1000\)"),
        (1.0, 1 / 3600, r"watt-hours \(multiply by 3600\)"),
        (1.0, 1e3, "these look like millijoules"),
    ],
)
def test_profile_in_the_wrong_unit_is_refused(
    tmp_path: Path, time_x: float, energy_x: float, message: str
) -> None:
    # Issue 9: a profile in ms gave T_min 4,671 s, a million frontier points and "saved 185 kJ
    # per iteration"; one in kJ was planned at 16 W per GPU. Both fail before any solving.
    path = _rescaled(tmp_path, time_x, energy_x)
    with pytest.raises(DataFormatError, match=message):
        plan_pipeline([path], **PIPELINE)  # type: ignore[arg-type]


def test_one_implausible_row_is_named(tmp_path: Path) -> None:
    # A single row off by 1000x (a measurement gone wrong), the rest fine: that row is named.
    lines = GPT3_A100.read_text().splitlines()
    s, inst, f, t, e = lines[5].split(",")
    lines[5] = f"{s},{inst},{f},{t},{float(e) * 1000!r}"
    path = tmp_path / "one.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"stage 0 {inst} at {f} MHz: .* outside what A100"):
        check_profile_units(load_profile(path))


def test_p_block_must_be_below_tdp() -> None:
    prof = load_profile(GPT3_A100)
    check_p_block(prof, 83.64)
    check_p_block(prof, 0.0)  # no blocking power at all is a modelling choice, not a mistake
    with pytest.raises(ConfigError, match=r"--p-block 83640 W .* 400 W TDP of A100.*\(83\.64 W\)"):
        check_p_block(prof, 83640)
    with pytest.raises(ConfigError, match=r"\(stage 3\)"):
        check_p_block(prof, [83.64] * 3 + [450.0] + [83.64] * 4)


def test_bounds_come_from_the_catalogue() -> None:
    a100 = power_bounds(1410)  # every A100 boosts to 1410 MHz
    assert a100.gpus.startswith("A100 (") and a100.max_tdp_w == 400.0
    assert (a100.floor_w, a100.ceiling_w) == (250.0 / 20, 800.0)
    unknown = power_bounds(1234)
    assert unknown.gpus == "any catalogued GPU" and unknown.max_tdp_w == 1000.0  # B200
