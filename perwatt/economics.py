"""Energy economics: $ per million tokens, tokens per MWh, tokens/s per MW, PUE and power caps.

Everything here is **energy cost only**: the electricity a run used, priced at one tariff. It leaves
out the GPU's purchase price, depreciation, networking, staff and the electricity's demand charges,
which usually dominate the total cost of a token. Use it to compare settings with each other, not
to price a product.

Definitions (all pure functions of the numbers passed in)::

    facility energy    E_fac   = E_gpu x PUE                (PUE = facility power / IT power)
    overhead (cooling, power conversion, lighting)   = E_gpu x (PUE - 1)
    $ per 1M tokens    = E_fac [kWh] x price [$/kWh] / tokens x 1e6
    tokens per MWh     = tokens / E_fac [MWh]
    tokens/s per MW    = sustained tokens/s / facility power [MW]

``E_gpu`` is what the meter measured (or simulated: the label travels with the figure, see
:mod:`perwatt.meter.source`). With the default ``PUE = 1.0`` the figures are GPU-only; pass the
site's PUE to include cooling and other facility overhead.

Defaults and the sources they come from:

* :data:`DEFAULT_PRICE_PER_KWH_USD` = 0.0806 $/kWh: U.S. average retail price of electricity to
  the industrial sector, 2023 annual, 8.06 cents/kWh, as EIA published it in March 2024 (EIA
  series "Average retail electricity price, industrial", reproduced by Statista, statistic
  190680); EIA revises recent years later, see *Electric Power Annual* and *Electric Power
  Monthly* Table 5.3 for the current figure. Tariffs vary by a
  factor of three across U.S. states (same publication, Table 5.6.A); pass your own.
* :data:`DEFAULT_PUE` = 1.0: GPU energy only, no facility overhead — what a GPU meter can see.
* :data:`TYPICAL_PUE` = 1.56, for reference only (never applied silently): the average annual PUE
  operators reported for their largest data centre in the Uptime Institute Global Data Center
  Survey 2024 — https://uptimeinstitute.com/resources/research-and-reports/uptime-institute-global-data-center-survey-results-2024 .
  New hyperscale sites report about 1.1 (Google, 2024 Environmental Report: fleet-wide
  trailing-twelve-month PUE 1.10 for 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from perwatt.errors import ConfigError

#: U.S. industrial average, 2023, as first published by EIA (see module docstring).
DEFAULT_PRICE_PER_KWH_USD: Final = 0.0806
#: GPU-only: no facility overhead.
DEFAULT_PUE: Final = 1.0
#: Reference only: Uptime Institute Global Data Center Survey 2024 industry average.
TYPICAL_PUE: Final = 1.56
#: Printed next to every economics figure.
ENERGY_COST_NOTE: Final = "energy cost only; facility energy = GPU energy x PUE"

J_PER_KWH: Final = 3.6e6
J_PER_MWH: Final = 3.6e9


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value}")
    return v


def _non_negative(name: str, value: float) -> float:
    v = _finite(name, value)
    if v < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return v


def _positive(name: str, value: float) -> float:
    v = _finite(name, value)
    if v <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return v


def check_pue(pue: float) -> float:
    """Validate a PUE: facility power / IT power, so never below 1 (the IT load is inside it)."""
    v = _finite("pue", pue)
    if v < 1.0:
        raise ConfigError(
            f"pue must be >= 1.0 (facility power / IT power), got {pue}; use 1.0 for GPU-only"
        )
    return v


def check_price(price_per_kwh: float) -> float:
    """Validate an electricity price in $/kWh."""
    return _non_negative("price_per_kwh", price_per_kwh)


def facility_energy_j(energy_j: float, *, pue: float = DEFAULT_PUE) -> float:
    """Facility energy for ``energy_j`` of IT (GPU) energy: ``energy_j x pue``."""
    return _non_negative("energy_j", energy_j) * check_pue(pue)


def cost_usd(energy_j: float, *, price_per_kwh: float, pue: float = DEFAULT_PUE) -> float:
    """Electricity cost of ``energy_j`` of IT energy at ``price_per_kwh``, overhead included."""
    return facility_energy_j(energy_j, pue=pue) / J_PER_KWH * check_price(price_per_kwh)


def cost_per_million_tokens_usd(
    energy_j: float, tokens: float, *, price_per_kwh: float, pue: float = DEFAULT_PUE
) -> float:
    """Energy cost of one million tokens, in US$ (energy cost only).

    >>> round(cost_per_million_tokens_usd(3.6e6, 1_000_000, price_per_kwh=0.10), 6)
    0.1
    """
    n = _positive("tokens", tokens)
    return cost_usd(energy_j, price_per_kwh=price_per_kwh, pue=pue) / n * 1e6


def tokens_per_mwh(energy_j: float, tokens: float, *, pue: float = DEFAULT_PUE) -> float:
    """Tokens produced per MWh of facility energy.

    >>> tokens_per_mwh(3.6e9, 5e8)
    500000000.0
    """
    n = _non_negative("tokens", tokens)
    e = _positive("energy_j", energy_j)
    return n / (e * check_pue(pue) / J_PER_MWH)


def tokens_per_s_per_mw(tokens_per_s: float, power_w: float, *, pue: float = DEFAULT_PUE) -> float:
    """Sustained tokens/s per MW of facility power: what one megawatt of site capacity serves.

    ``power_w`` is the average IT (GPU) power while producing ``tokens_per_s``; the facility draws
    ``power_w x pue``.

    >>> tokens_per_s_per_mw(1000.0, 500.0, pue=2.0)
    1000000.0
    """
    rate = _non_negative("tokens_per_s", tokens_per_s)
    p = _positive("power_w", power_w)
    return rate / (p * check_pue(pue) / 1e6)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoolingSplit:
    """Where facility energy goes: the IT load and the overhead PUE adds (mostly cooling)."""

    it_energy_j: float
    overhead_energy_j: float
    facility_energy_j: float
    pue: float

    def __post_init__(self) -> None:
        if self.it_energy_j < 0 or self.overhead_energy_j < 0:
            raise ConfigError("energies must be >= 0")
        if not math.isclose(
            self.it_energy_j + self.overhead_energy_j, self.facility_energy_j, rel_tol=1e-9
        ):
            raise ConfigError("IT + overhead energy must equal facility energy")

    @property
    def overhead_share(self) -> float:
        """Fraction of facility energy that is overhead: ``1 - 1/PUE``."""
        return self.overhead_energy_j / self.facility_energy_j if self.facility_energy_j else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "it_energy_j": self.it_energy_j,
            "overhead_energy_j": self.overhead_energy_j,
            "facility_energy_j": self.facility_energy_j,
            "overhead_share": self.overhead_share,
            "pue": self.pue,
        }


def cooling_split(it_energy_j: float, *, pue: float) -> CoolingSplit:
    """Split facility energy into IT energy and overhead (cooling, conversion losses, lighting).

    PUE does not say how the overhead divides among cooling and power conversion; the split here
    is IT vs everything else, which is all a PUE figure supports.
    """
    it = _non_negative("it_energy_j", it_energy_j)
    p = check_pue(pue)
    fac = it * p
    return CoolingSplit(it_energy_j=it, overhead_energy_j=fac - it, facility_energy_j=fac, pue=p)


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerCapHeadroom:
    """How far a run's power stayed below the GPUs' power limit.

    ``peak_headroom_w`` is what a power cap could remove without touching the observed peak;
    ``provisioning_gain`` is how many more GPUs of this load one power budget could host if it were
    provisioned at the observed peak instead of the nameplate limit (limit / peak). Both describe
    this workload only: another workload may peak higher.
    """

    power_limit_w: float
    avg_power_w: float
    peak_power_w: float
    avg_headroom_w: float
    peak_headroom_w: float
    peak_headroom_share: float
    provisioning_gain: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "power_limit_w": self.power_limit_w,
            "avg_power_w": self.avg_power_w,
            "peak_power_w": self.peak_power_w,
            "avg_headroom_w": self.avg_headroom_w,
            "peak_headroom_w": self.peak_headroom_w,
            "peak_headroom_share": self.peak_headroom_share,
            "provisioning_gain": self.provisioning_gain,
        }


def power_cap_headroom(
    *, power_limit_w: float, avg_power_w: float, peak_power_w: float | None = None
) -> PowerCapHeadroom:
    """Headroom between a run's power and the power limit (total over the same GPUs).

    Without a peak (a source that only has a counter), the average stands in for it, which
    overstates the headroom; the caller should say so.
    """
    limit = _positive("power_limit_w", power_limit_w)
    avg = _non_negative("avg_power_w", avg_power_w)
    peak = avg if peak_power_w is None else _non_negative("peak_power_w", peak_power_w)
    if peak < avg:
        raise ConfigError(f"peak power {peak_power_w} W is below the average {avg_power_w} W")
    return PowerCapHeadroom(
        power_limit_w=limit,
        avg_power_w=avg,
        peak_power_w=peak,
        avg_headroom_w=limit - avg,
        peak_headroom_w=limit - peak,
        peak_headroom_share=(limit - peak) / limit,
        provisioning_gain=limit / peak if peak > 0 else math.inf,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Economics:
    """The ``economics`` block of a bench result (see notes/schema.md). Energy cost only."""

    usd_per_million_output_tokens: float | None
    output_tokens_per_mwh: float | None
    price_per_kwh: float
    pue: float
    note: str = ENERGY_COST_NOTE

    def __post_init__(self) -> None:
        check_price(self.price_per_kwh)
        check_pue(self.pue)
        for name in ("usd_per_million_output_tokens", "output_tokens_per_mwh"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
        if "energy cost only" not in self.note:
            raise ConfigError("an economics note must say 'energy cost only'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "usd_per_million_output_tokens": self.usd_per_million_output_tokens,
            "output_tokens_per_mwh": self.output_tokens_per_mwh,
            "price_per_kwh": self.price_per_kwh,
            "pue": self.pue,
            "note": self.note,
        }


def economics_for_run(
    energy_j: float,
    output_tokens: int,
    *,
    price_per_kwh: float = DEFAULT_PRICE_PER_KWH_USD,
    pue: float = DEFAULT_PUE,
) -> Economics:
    """The economics block for a run that used ``energy_j`` (GPU) to produce ``output_tokens``.

    Figures that are undefined (no tokens, or no energy recorded) are ``None``, never 0 or inf.
    """
    price = check_price(price_per_kwh)
    p = check_pue(pue)
    e = _non_negative("energy_j", energy_j)
    n = _non_negative("output_tokens", output_tokens)
    usd = cost_per_million_tokens_usd(e, n, price_per_kwh=price, pue=p) if n > 0 else None
    per_mwh = tokens_per_mwh(e, n, pue=p) if e > 0 else None
    return Economics(
        usd_per_million_output_tokens=usd,
        output_tokens_per_mwh=per_mwh,
        price_per_kwh=price,
        pue=p,
    )


HOURS_PER_YEAR: Final = 8760.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteCost:
    """A site's energy economics over a year (``perwatt cost``). Energy cost only.

    ``it_power_w`` is the average IT power while serving (at ``utilisation`` of the year);
    ``tokens_per_j`` is output tokens per joule of IT energy (what ``perwatt bench`` measures,
    or a simulation reports). ``power_share_of_opex`` needs the other yearly operating costs.
    """

    it_power_w: float
    pue: float
    price_per_kwh: float
    utilisation: float
    tokens_per_j: float
    facility_power_w: float
    energy_cost_usd_per_year: float
    tokens_per_year: float
    usd_per_million_tokens: float | None
    tokens_per_s_per_mw: float
    power_share_of_opex: float | None
    gain: float
    gain_saving_usd_per_year: float
    gain_extra_tokens_per_year: float
    gain_extra_revenue_usd_per_year: float | None
    note: str = ENERGY_COST_NOTE

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def site_cost(
    *,
    it_power_w: float,
    tokens_per_j: float,
    pue: float = DEFAULT_PUE,
    price_per_kwh: float = DEFAULT_PRICE_PER_KWH_USD,
    utilisation: float = 1.0,
    gain: float = 0.10,
    other_opex_usd_per_year: float | None = None,
    usd_per_million_tokens_sold: float | None = None,
) -> SiteCost:
    """What a site's power costs per year, per token, and what a gain in tokens/J is worth.

    A gain ``g`` in tokens per joule is worth, at the same output, the energy it no longer needs
    (``cost x g / (1 + g)``) or, at the same power, ``g`` more tokens (valued only when a token
    price is given).
    """
    p = _positive("it_power_w", it_power_w)
    tpj = _positive("tokens_per_j", tokens_per_j)
    u = _finite("utilisation", utilisation)
    if not 0 < u <= 1:
        raise ConfigError(f"utilisation must be in (0, 1], got {utilisation}")
    g = _non_negative("gain", gain)
    pu = check_pue(pue)
    price = check_price(price_per_kwh)
    seconds = HOURS_PER_YEAR * 3600.0 * u
    it_j = p * seconds
    fac_w = p * pu
    cost = cost_usd(it_j, price_per_kwh=price, pue=pu)
    tokens = it_j * tpj
    share = None
    if other_opex_usd_per_year is not None:
        other = _non_negative("other_opex_usd_per_year", other_opex_usd_per_year)
        share = cost / (cost + other) if cost + other > 0 else None
    extra = tokens * g
    revenue = None
    if usd_per_million_tokens_sold is not None:
        revenue = (
            extra / 1e6 * _non_negative("usd_per_million_tokens_sold", usd_per_million_tokens_sold)
        )
    return SiteCost(
        it_power_w=p,
        pue=pu,
        price_per_kwh=price,
        utilisation=u,
        tokens_per_j=tpj,
        facility_power_w=fac_w,
        energy_cost_usd_per_year=cost,
        tokens_per_year=tokens,
        usd_per_million_tokens=cost_per_million_tokens_usd(
            it_j, tokens, price_per_kwh=price, pue=pu
        ),
        tokens_per_s_per_mw=tokens_per_s_per_mw(p * tpj, p, pue=pu),
        power_share_of_opex=share,
        gain=g,
        gain_saving_usd_per_year=cost * g / (1 + g),
        gain_extra_tokens_per_year=extra,
        gain_extra_revenue_usd_per_year=revenue,
    )


__all__ = [
    "DEFAULT_PRICE_PER_KWH_USD",
    "DEFAULT_PUE",
    "ENERGY_COST_NOTE",
    "HOURS_PER_YEAR",
    "J_PER_KWH",
    "J_PER_MWH",
    "TYPICAL_PUE",
    "CoolingSplit",
    "Economics",
    "PowerCapHeadroom",
    "SiteCost",
    "check_price",
    "check_pue",
    "cooling_split",
    "cost_per_million_tokens_usd",
    "cost_usd",
    "economics_for_run",
    "facility_energy_j",
    "power_cap_headroom",
    "site_cost",
    "tokens_per_mwh",
    "tokens_per_s_per_mw",
]
