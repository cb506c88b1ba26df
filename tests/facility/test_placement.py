from __future__ import annotations

import pytest

from perwatt.errors import ConfigError
from perwatt.facility.placement import place
from perwatt.facility.presets import eight_rack, site_96mw
from perwatt.facility.workload import Job, Workload, mixed_inference


def test_jobs_get_whole_racks_and_gpus_add_up() -> None:
    site = site_96mw()
    pl = place(site, mixed_inference())
    assert pl.topology.gpu_count == site.gpu_count
    assert pl.topology.nameplate_w == pytest.approx(site.nameplate_w)
    total = sum(pl.job_racks)
    assert total <= 558 and min(pl.job_racks) > 0
    assert sum(pl.job_gpus) == total * 72


def test_under_places_inside_the_element_and_unknown_is_an_error() -> None:
    site = eight_rack()
    w = Workload(name="w", jobs=(Job(name="a", kind="batch", racks=2, under="pdu1"),))
    pl = place(site, w)
    fl = pl.topology.flat()
    busy = [fl.names[i] for i, j in pl.node_job.items() if j == 0]
    assert busy and all("dgx1" in n for n in busy)
    bad = Workload(
        name="w", jobs=(Job(name="a", kind="batch", racks=1, under="pdu9"),), source="w.json"
    )
    with pytest.raises(ConfigError, match=r"w\.json: job 'a': under 'pdu9' is not an element"):
        place(site, bad)


def test_too_many_racks() -> None:
    w = Workload(name="w", jobs=(Job(name="a", kind="batch", racks=9),))
    with pytest.raises(ConfigError, match="needs 9 racks, only 8 free"):
        place(eight_rack(), w)
