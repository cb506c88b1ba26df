from __future__ import annotations

import json
from pathlib import Path

import pytest

from perwatt.errors import DataFormatError
from perwatt.facility.loaders import load_site
from perwatt.facility.presets import eight_rack
from perwatt.facility.workload import load_workload, mixed_inference

yaml = pytest.importorskip("yaml")


def test_site_in_yaml_loads_as_the_same_site(tmp_path: Path) -> None:
    t = eight_rack()
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(t.to_dict()))
    u = load_site(p)
    assert u.to_dict() == json.loads(json.dumps(t.to_dict()))


def test_workload_in_yaml(tmp_path: Path) -> None:
    w = mixed_inference()
    p = tmp_path / "w.yml"
    p.write_text(yaml.safe_dump(w.to_dict()))
    assert load_workload(p).to_dict() == w.to_dict()


def test_bad_yaml_is_one_line_naming_the_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "site.yaml"
    p.write_text("name: x\nroot: [unclosed\n")
    with pytest.raises(DataFormatError, match=r"site\.yaml: not valid YAML: .* at line 3") as e:
        load_site(p)
    assert "\n" not in str(e.value)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "site.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(eight_rack().to_dict()).encode())
    assert load_site(p).gpu_count == eight_rack().gpu_count
