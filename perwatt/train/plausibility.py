"""Are a stage profile and a blocking power in the units the planner reads?

The planner reads seconds, joules and watts. A profile written in milliseconds, or in kilojoules,
or a ``P_block`` typed in milliwatts, is still a file of valid positive numbers: the planner used
to solve it and print confident savings (T_min 4,671 s and a million frontier points for a
profile in ms; "saved 185 kJ per iteration"). Every such mistake is a factor of 1,000 (or 3,600)
away from physics, so generous bounds catch it without ever refusing a real measurement:

* **Power.** One profile file describes one GPU per stage (several data/tensor-parallel ranks are
  several files, :func:`~perwatt.train.profile.combine_ranks`). A GPU running an instruction
  draws at least its idle power and, averaged over the instruction, not much more than its TDP.
  The catalogue (:mod:`perwatt.hardware`) has no idle figures; its measured blocking powers
  (Perseus: A100 83.64 W, A40 70.38 W) are ~21–23% of TDP, and a powered GPU waiting on
  communication draws about what it draws idle, so the floor is TDP/20 — four times below that.
  The ceiling is twice the TDP: the Perseus A100 profile averages up to 481 W on a 400 W part
  (power capping acts over longer windows than one instruction), well inside it.
* **Which GPU.** The profile does not say. A stage's top profiled clock is matched against the
  catalogue's maximum SM clocks (1410 MHz: the A100s; 1740 MHz: A40; …); with no match every
  catalogued GPU is a candidate, and the bounds span all of them.
* **Time.** One microbatch's forward or backward on one stage takes milliseconds to seconds
  (Perseus: 45–352 ms). Over a minute is not a plausible instruction; it is milliseconds.
* **P_block** is the power of a GPU blocked on communication: below its TDP.

Each refusal is one line that names the likely unit mistake.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from perwatt.errors import ConfigError, DataFormatError
from perwatt.hardware import GPUS, GPUSpec
from perwatt.train.profile import StageProfile

__all__ = ["PowerBounds", "check_p_block", "check_profile_units", "power_bounds"]

# See the module docstring for each figure's reasoning.
IDLE_FRACTION_OF_TDP = 1 / 20
TDP_MULTIPLE = 2.0
MAX_INSTRUCTION_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerBounds:
    """What one GPU of a stage can plausibly draw, and which catalogue entries that assumes."""

    floor_w: float
    ceiling_w: float
    max_tdp_w: float
    gpus: str  # "A100 (SXM4-40GB/SXM4-80GB/…)" or "any catalogued GPU"

    def __post_init__(self) -> None:
        if not 0 < self.floor_w < self.ceiling_w:
            raise ValueError(f"bad power bounds {self.floor_w} – {self.ceiling_w} W")


def _candidates(top_clock_mhz: int) -> tuple[list[GPUSpec], str]:
    matching = [g for g in GPUS.values() if g.max_sm_clock_mhz == top_clock_mhz]
    if not matching:
        return list(GPUS.values()), "any catalogued GPU"
    keys = [g.key for g in matching]
    if len(keys) == 1:
        return matching, keys[0]
    # "A100-SXM4-40GB", "A100-PCIE-80GB", … → "A100 (SXM4-40GB/PCIE-80GB/…)"
    parts = [k.split("-") for k in keys]
    n = 0
    while all(len(p) > n + 1 and p[n] == parts[0][n] for p in parts):
        n += 1
    if n == 0:
        return matching, "/".join(keys)
    rest = "/".join("-".join(p[n:]) for p in parts)
    return matching, f"{'-'.join(parts[0][:n])} ({rest})"


def power_bounds(top_clock_mhz: int) -> PowerBounds:
    """Plausible average power of one instruction on a GPU whose top clock is ``top_clock_mhz``."""
    gpus, names = _candidates(top_clock_mhz)
    tdps = [g.tdp_w for g in gpus]
    return PowerBounds(
        floor_w=min(tdps) * IDLE_FRACTION_OF_TDP,
        ceiling_w=max(tdps) * TDP_MULTIPLE,
        max_tdp_w=max(tdps),
        gpus=names,
    )


def _unit_hint_low(median_w: float, median_s: float, bounds: PowerBounds) -> str:
    def fits(factor: float) -> bool:
        return bounds.floor_w <= median_w * factor <= bounds.ceiling_w

    # Times in ms and energies in kJ give the same power; instructions over a second tell ms.
    if median_s > 1.0 and fits(1e3):
        return "the time column is seconds; these look like milliseconds (divide by 1000)"
    units = [
        f"{unit} (multiply by {factor:g})"
        for factor, unit in ((1e3, "kilojoules"), (3600.0, "watt-hours"))
        if fits(factor)
    ]
    if units:
        return f"the energy column is joules; these look like {' or '.join(units)}"
    return "check the units: time in seconds, energy in joules, one GPU per file"


def _unit_hint_high(median_w: float, bounds: PowerBounds) -> str:
    if bounds.floor_w <= median_w / 1e3 <= bounds.ceiling_w:
        return (
            "the energy column is joules; these look like millijoules, NVML's unit (divide by 1000)"
        )
    return (
        "check the units: time in seconds, energy in joules, and one GPU per file (give each "
        "data/tensor-parallel rank its own profile)"
    )


def check_profile_units(profile: StageProfile, *, where: str = "") -> None:
    """Raise a one-line DataFormatError if ``profile`` is not in seconds and joules of one GPU.

    Checks every stage: the median instruction first (a unit mistake moves all of them), then
    each (instruction, clock) row (one implausible measurement)."""
    name = where or profile.source or "profile"
    for s in range(profile.num_stages):
        fwd, bwd = profile[(s, "forward")], profile[(s, "backward")]
        bounds = power_bounds(fwd.max_freq_mhz)
        rows = [
            (ip.instruction, int(f), float(t), float(e))
            for ip in (fwd, bwd)
            for f, t, e in zip(ip.freq_mhz, ip.time_s, ip.energy_j, strict=True)
        ]
        median_s = statistics.median(t for _, _, t, _ in rows)
        median_w = statistics.median(e / t for _, _, t, e in rows)
        gpu = f"{bounds.gpus}, matched by the top clock {fwd.max_freq_mhz} MHz,"
        if median_s > MAX_INSTRUCTION_S:
            raise DataFormatError(
                f"{name}: stage {s}'s median instruction takes {median_s:,.4g} s, and one "
                f"microbatch's forward or backward takes milliseconds to seconds: the time "
                "column is seconds; these look like milliseconds (divide by 1000)"
            )
        if median_w < bounds.floor_w:
            raise DataFormatError(
                f"{name}: stage {s}'s instructions average {median_w:.3g} W, below what "
                f"{gpu} draws idle (≥ {bounds.floor_w:g} W): "
                + _unit_hint_low(median_w, median_s, bounds)
            )
        if median_w > bounds.ceiling_w:
            raise DataFormatError(
                f"{name}: stage {s}'s instructions average {median_w:,.0f} W, above "
                f"{TDP_MULTIPLE:g}× the TDP of {gpu} {bounds.max_tdp_w:g} W: "
                + _unit_hint_high(median_w, bounds)
            )
        for inst, f, t, e in rows:
            w = e / t
            if t > MAX_INSTRUCTION_S or not bounds.floor_w <= w <= bounds.ceiling_w:
                raise DataFormatError(
                    f"{name}: stage {s} {inst} at {f} MHz: {e:.4g} J over {t:.4g} s is "
                    f"{w:,.4g} W, outside what {gpu} can draw ({bounds.floor_w:g}–"
                    f"{bounds.ceiling_w:g} W): re-profile that clock or drop its rows"
                )


def check_p_block(profile: StageProfile, p_block_w: float | Sequence[float]) -> None:
    """Raise a one-line ConfigError if a stage's blocking power (watts per GPU) is not below the
    TDP of the GPU its profile was measured on."""
    per_stage = (
        [float(p_block_w)] * profile.num_stages
        if isinstance(p_block_w, (int, float))
        else [float(p) for p in p_block_w]
    )
    for s, pb in enumerate(per_stage[: profile.num_stages]):
        bounds = power_bounds(profile[(s, "forward")].max_freq_mhz)
        if pb < bounds.max_tdp_w:
            continue
        stage = "" if isinstance(p_block_w, (int, float)) else f" (stage {s})"
        hint = (
            f"; is it in milliwatts ({pb / 1e3:g} W)?"
            if bounds.floor_w <= pb / 1e3 < bounds.max_tdp_w
            else "; give the power one blocked GPU draws, in watts"
        )
        raise ConfigError(
            f"--p-block {pb:g} W{stage} is not below the {bounds.max_tdp_w:g} W TDP of "
            f"{bounds.gpus}, matched by the profile's top clock: a GPU blocked on "
            f"communication draws well under its TDP (Perseus measured 83.64 W on an A100)" + hint
        )
