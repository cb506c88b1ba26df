from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perwatt import economics as ec
from perwatt.errors import ConfigError


def test_cost_per_million_tokens_hand_computed() -> None:
    # 720 J for 1000 tokens = 0.72 J/token; 1M tokens = 720 kJ = 0.2 kWh; at $0.10 -> $0.02.
    assert ec.cost_per_million_tokens_usd(720.0, 1000, price_per_kwh=0.10) == pytest.approx(0.02)
    # PUE scales facility energy linearly.
    assert ec.cost_per_million_tokens_usd(
        720.0, 1000, price_per_kwh=0.10, pue=1.5
    ) == pytest.approx(0.03)


def test_tokens_per_mwh_and_per_mw() -> None:
    # 0.5 J/token -> 1 MWh = 3.6e9 J -> 7.2e9 tokens.
    assert ec.tokens_per_mwh(500.0, 1000) == pytest.approx(7.2e9)
    assert ec.tokens_per_mwh(500.0, 1000, pue=2.0) == pytest.approx(3.6e9)
    # 700 W GPU making 2000 tok/s; 1 MW of facility at PUE 1.25 feeds 800 kW of GPUs.
    assert ec.tokens_per_s_per_mw(2000.0, 700.0, pue=1.25) == pytest.approx(2000 / 700 * 800e3)


@given(
    e=st.floats(1e-3, 1e9),
    n=st.integers(1, 10**9),
    price=st.floats(0.0, 2.0),
    pue=st.floats(1.0, 3.0),
)
def test_cost_and_tokens_per_mwh_are_consistent(e: float, n: int, price: float, pue: float) -> None:
    usd = ec.cost_per_million_tokens_usd(e, n, price_per_kwh=price, pue=pue)
    per_mwh = ec.tokens_per_mwh(e, n, pue=pue)
    # $ per Mtok = price per MWh / (tokens per MWh) x 1e6
    assert usd == pytest.approx(price * 1000 / per_mwh * 1e6, rel=1e-9, abs=1e-12)


def test_cooling_split() -> None:
    s = ec.cooling_split(1000.0, pue=1.4)
    assert s.it_energy_j == 1000.0
    assert s.overhead_energy_j == pytest.approx(400.0)
    assert s.facility_energy_j == pytest.approx(1400.0)
    assert s.overhead_share == pytest.approx(1 - 1 / 1.4)
    assert ec.cooling_split(10.0, pue=1.0).overhead_share == 0.0
    assert s.to_dict()["pue"] == 1.4


def test_power_cap_headroom() -> None:
    h = ec.power_cap_headroom(power_limit_w=700.0, avg_power_w=420.0, peak_power_w=560.0)
    assert h.peak_headroom_w == pytest.approx(140.0)
    assert h.avg_headroom_w == pytest.approx(280.0)
    assert h.peak_headroom_share == pytest.approx(0.2)
    assert h.provisioning_gain == pytest.approx(1.25)
    # No peak: the average stands in.
    assert ec.power_cap_headroom(power_limit_w=700.0, avg_power_w=350.0).provisioning_gain == 2.0
    with pytest.raises(ConfigError, match="below the average"):
        ec.power_cap_headroom(power_limit_w=700.0, avg_power_w=400.0, peak_power_w=300.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ec.cost_per_million_tokens_usd(1.0, 0, price_per_kwh=0.1), "tokens must be > 0"),
        (lambda: ec.cost_per_million_tokens_usd(-1.0, 5, price_per_kwh=0.1), "energy_j"),
        (lambda: ec.cost_per_million_tokens_usd(1.0, 5, price_per_kwh=-0.1), "price_per_kwh"),
        (lambda: ec.cost_per_million_tokens_usd(1.0, 5, price_per_kwh=0.1, pue=0.9), "pue"),
        (lambda: ec.tokens_per_mwh(math.nan, 5), "finite"),
        (lambda: ec.tokens_per_mwh(0.0, 5), "energy_j must be > 0"),
        (lambda: ec.tokens_per_s_per_mw(10.0, 0.0), "power_w"),
        (lambda: ec.cooling_split(1.0, pue=True), "number"),  # type: ignore[arg-type]
    ],
)
def test_validation_raises_config_error(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]


def test_economics_block_matches_schema() -> None:
    from perwatt.bench.result import ECONOMICS_NOTE

    eco = ec.economics_for_run(720.0, 1000, price_per_kwh=0.10, pue=1.2)
    d = eco.to_dict()
    assert set(d) == {
        "usd_per_million_output_tokens",
        "output_tokens_per_mwh",
        "price_per_kwh",
        "pue",
        "note",
    }
    assert d["usd_per_million_output_tokens"] == pytest.approx(0.024)
    assert d["output_tokens_per_mwh"] == pytest.approx(1000 / (864.0 / 3.6e9))
    assert d["note"] == ECONOMICS_NOTE
    assert "energy cost only" in d["note"]
    # Undefined figures are None, not 0 or inf.
    none = ec.economics_for_run(0.0, 0).to_dict()
    assert none["usd_per_million_output_tokens"] is None
    assert none["output_tokens_per_mwh"] is None
    assert none["price_per_kwh"] == ec.DEFAULT_PRICE_PER_KWH_USD
    assert none["pue"] == ec.DEFAULT_PUE == 1.0


def test_economics_rejects_bad_fields() -> None:
    with pytest.raises(ConfigError):
        ec.Economics(
            usd_per_million_output_tokens=1.0, output_tokens_per_mwh=1.0, price_per_kwh=0.1, pue=0.5
        )
    with pytest.raises(ConfigError, match="energy cost only"):
        ec.Economics(
            usd_per_million_output_tokens=1.0,
            output_tokens_per_mwh=1.0,
            price_per_kwh=0.1,
            pue=1.0,
            note="total cost",
        )


def test_site_cost_per_year_and_value_of_a_gain() -> None:
    from perwatt.economics import site_cost

    c = site_cost(
        it_power_w=1e6,
        tokens_per_j=2.0,
        pue=1.25,
        price_per_kwh=0.10,
        utilisation=0.5,
        gain=0.25,
        other_opex_usd_per_year=1_000_000.0,
        usd_per_million_tokens_sold=1.0,
    )
    kwh = 1e3 * 8760 * 0.5 * 1.25  # 1 MW IT for half a year, x PUE
    assert c.energy_cost_usd_per_year == pytest.approx(kwh * 0.10)
    assert c.gain_saving_usd_per_year == pytest.approx(kwh * 0.10 * 0.25 / 1.25)
    assert c.tokens_per_year == pytest.approx(1e6 * 8760 * 3600 * 0.5 * 2.0)
    assert c.power_share_of_opex == pytest.approx(547_500 / 1_547_500)
    assert c.gain_extra_revenue_usd_per_year == pytest.approx(c.tokens_per_year * 0.25 / 1e6)
    assert c.tokens_per_s_per_mw == pytest.approx(2e6 / 1.25)
    with pytest.raises(ConfigError, match="utilisation"):
        site_cost(it_power_w=1e6, tokens_per_j=1.0, utilisation=0)
