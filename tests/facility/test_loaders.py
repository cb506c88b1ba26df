from __future__ import annotations

import json
from pathlib import Path

import pytest

from perwatt.errors import DataFormatError
from perwatt.facility.loaders import load_site, to_dps
from perwatt.facility.presets import eight_rack, site_96mw


def test_perwatt_json_round_trip(tmp_path: Path) -> None:
    t = eight_rack()
    p = tmp_path / "site.json"
    p.write_text(json.dumps(t.to_dict()))
    u = load_site(p)
    assert u.gpu_count == t.gpu_count
    assert u.nameplate_w == pytest.approx(t.nameplate_w)


def test_dps_round_trip(tmp_path: Path) -> None:
    t = site_96mw()
    p = tmp_path / "dps.json"
    p.write_text(json.dumps(to_dps(t)))
    u = load_site(p)
    assert u.gpu_count == t.gpu_count
    assert u.oversubscription() == pytest.approx(t.oversubscription())


def test_dps_units_and_power_factor(tmp_path: Path) -> None:
    doc = to_dps(eight_rack())
    feed = doc["Entities"][0]
    feed["PowerDomain"] = {
        "Constraints": [{"PowerValue": {"Value": 400, "Type": "kVA"}}],
        "PowerFactor": 0.9,
    }
    p = tmp_path / "dps.json"
    p.write_text(json.dumps(doc))
    assert load_site(p).root.capacity_w == pytest.approx(360_000.0)


def _write(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    return p


def test_unknown_dps_version_is_one_line(tmp_path: Path) -> None:
    doc = to_dps(eight_rack())
    doc["SchemaVersion"] = "dcpower_9.9"
    with pytest.raises(
        DataFormatError, match=r"bad\.json: unsupported DPS schema version 'dcpower_9\.9'"
    ):
        load_site(_write(tmp_path, doc))


def test_dps_cycle_is_named(tmp_path: Path) -> None:
    doc = to_dps(eight_rack())
    # make the feed its own grandchild
    doc["Topology"]["Entities"][0]["Children"][0]["Children"] = [{"Name": "feed"}]
    with pytest.raises(DataFormatError, match="entity 'feed': cycle"):
        load_site(_write(tmp_path, doc))


def test_missing_capacity_names_file_and_element(tmp_path: Path) -> None:
    d = eight_rack().to_dict()
    del d["root"]["children"][0]["capacity_w"]
    with pytest.raises(DataFormatError, match=r"bad\.json: element 'pdu0': missing capacity_w"):
        load_site(_write(tmp_path, d))


def test_negative_capacity(tmp_path: Path) -> None:
    d = eight_rack().to_dict()
    d["root"]["children"][0]["children"][0]["capacity_w"] = -5
    with pytest.raises(DataFormatError, match="element 'rack0': capacity_w must be > 0"):
        load_site(_write(tmp_path, d))


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text("{nope")
    with pytest.raises(DataFormatError, match="not JSON"):
        load_site(p)
    with pytest.raises(Exception, match="no such site file"):
        load_site(tmp_path / "absent.json")
