from __future__ import annotations

import pytest

from perwatt.errors import ConfigError
from perwatt.facility.presets import (
    SITES,
    dgx_b200,
    dgx_h100,
    gb200_nvl72,
    gb300_nvl72,
    preset_site,
)


def test_system_figures_match_their_sources() -> None:
    assert dgx_h100().nameplate_w == pytest.approx(10_200.0)
    assert dgx_b200().nameplate_w == pytest.approx(14_300.0)
    assert gb200_nvl72().nameplate_w == pytest.approx(132_000.0)
    assert gb200_nvl72().gpu_count == gb300_nvl72().gpu_count == 72


@pytest.mark.parametrize("name", list(SITES))
def test_sites_fit_at_nameplate_below_the_feed(name: str) -> None:
    t = preset_site(name)
    ratios = t.nameplate_ratio()
    feed = t.root.name
    if name != "test-8rack":
        assert ratios[feed] < 1.0  # room for cooling
        assert all(v <= 1.0 + 1e-9 for v in ratios.values())


def test_more_racks_oversubscribe_only_the_feed() -> None:
    base = preset_site("site-96mw")
    more = preset_site("site-96mw", racks=800)
    assert more.gpu_count == 800 * 72 > base.gpu_count
    assert more.root.oversubscription > 1.0


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown site preset"):
        preset_site("nope")
