from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench.result import (
    SCHEMA_VERSION,
    example_result,
    load_result,
    validate_result,
    write_result,
)
from perwatt.errors import DataFormatError


def test_roundtrip(tmp_path: Path) -> None:
    doc = example_result(label="rt")
    p = write_result(tmp_path / "sub" / "r.json", doc)
    assert p.exists()
    assert not (tmp_path / "sub" / "r.json.tmp").exists()
    back = load_result(p)
    assert back == json.loads(json.dumps(doc))
    assert back["schema"] == SCHEMA_VERSION


def test_result_with_a_byte_order_mark(tmp_path: Path) -> None:
    doc = example_result(label="bom")
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    assert load_result(p)["label"] == "bom"


def test_non_finite_written_as_null(tmp_path: Path) -> None:
    doc: Any = example_result()
    doc["energy"]["j_per_output_token"] = math.inf
    doc["energy"]["idle_share"] = math.nan
    p = write_result(tmp_path / "r.json", doc)
    back = load_result(p)
    assert back["energy"] is not None
    assert back["energy"]["j_per_output_token"] is None
    assert back["energy"]["idle_share"] is None


def test_missing_key_names_it(tmp_path: Path) -> None:
    doc: Any = json.loads(json.dumps(example_result()))
    del doc["metrics"]["ttft_ms"]["p99"]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"bad\.json: missing key metrics\.ttft_ms\.p99"):
        load_result(p)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="other/1"), "not a perwatt bench result"),
        (lambda d: d.update(schema="perwatt.bench.result/9"), "not supported"),
        (lambda d: d.update(status="done"), "status 'done'"),
        (lambda d: d["load"].update(kind="qps"), "load.kind"),
        (lambda d: d["metrics"].update(completed="3"), "metrics.completed is str"),
        (lambda d: d["metrics"].update(completed=True), "boolean"),
        (lambda d: d["metrics"].update(token_count_source="guess"), "token_count_source"),
        (lambda d: d["energy"].update(basis="x"), "energy.basis"),
        (lambda d: d["energy"].update(measured=None), "energy.measured is null"),
        (lambda d: d["timeline"].update(t_s=[0.0]), "equal-length"),
        (lambda d: d["config"].pop("seed"), "config.seed"),
    ],
)
def test_validation_errors(mutate: Any, message: str) -> None:
    doc = json.loads(json.dumps(example_result()))
    mutate(doc)
    with pytest.raises(DataFormatError, match=message):
        validate_result(doc, "x.json")


def test_not_json_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text('{"schema": ')
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_result(p)
    with pytest.raises(DataFormatError, match="no such result file"):
        load_result(tmp_path / "nope.json")
    p.write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="expected a JSON object"):
        load_result(p)


def test_null_energy_allowed_for_failed_run() -> None:
    doc = example_result(status="failed", energy=None, economics=None)
    assert doc["energy"] is None


def test_not_utf8_is_one_line_error(tmp_path: Path) -> None:
    # A binary file passed by mistake must not surface as a UnicodeDecodeError traceback.
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataFormatError, match=r"bin\.json: not a result JSON file \(not UTF-8"):
        load_result(p)


def test_running_without_metrics_says_unfinished() -> None:
    # What the runner writes before its first checkpoint (a run killed early leaves this).
    doc: Any = json.loads(json.dumps(example_result(status="running", energy=None)))
    doc["metrics"]["request_throughput_rps"] = None
    with pytest.raises(DataFormatError, match=r"x\.json: no metrics yet \(status 'running'"):
        validate_result(doc, "x.json")
    doc["status"] = "complete"
    with pytest.raises(DataFormatError, match="request_throughput_rps is null"):
        validate_result(doc, "x.json")


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("energy", "j_per_output_token", -0.5, "energy.j_per_output_token"),
        ("energy", "output_tokens_per_j", -2.0, "energy.output_tokens_per_j"),
        ("energy", "avg_power_w", -1.0, "energy.avg_power_w"),
        ("energy", "idle_share", 1.5, "energy.idle_share"),
        ("metrics", "total_output_tokens", -384, "metrics.total_output_tokens"),
        ("metrics", "duration_s", -2.0, "metrics.duration_s"),
        ("metrics", "completed", -1, "metrics.completed"),
        ("economics", "usd_per_million_output_tokens", -1.0, "economics.usd_per"),
        ("config", "pue", 0.5, "config.pue"),
        ("config", "num_gpus", 0, "config.num_gpus"),
    ],
)
def test_impossible_values_are_refused_naming_file_and_field(
    tmp_path: Path, section: str, key: str, value: float, field: str
) -> None:
    """Issue 9 §3: compare accepted negative J/token (and other impossible numbers)."""
    doc: Any = json.loads(json.dumps(example_result()))
    doc[section][key] = value
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError) as info:
        load_result(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: {field}") and "\n" not in msg


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("energy", "whole_run", "total_energy_j"), -400.0),
        (("energy", "whole_run", "duration_s"), -2.0),
        (("energy", "whole_run", "energy_j", "sim0"), -400.0),
        (("metrics", "ttft_ms", "p50"), -10.0),
        (("timeline", "power_w", 1), -200.0),
    ],
)
def test_impossible_nested_values_are_refused(
    tmp_path: Path, path: tuple[Any, ...], value: float
) -> None:
    doc: Any = json.loads(json.dumps(example_result()))
    obj = doc
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    with pytest.raises(DataFormatError, match="must be >= 0"):
        validate_result(doc, "x.json")


def test_nan_literal_in_a_file_is_refused(tmp_path: Path) -> None:
    """Python's json reads the non-standard NaN literal; a result must not carry one."""
    doc: Any = json.loads(json.dumps(example_result()))
    p = tmp_path / "nan.json"
    p.write_text(json.dumps(doc).replace('"avg_power_w": 200.0', '"avg_power_w": NaN', 1))
    with pytest.raises(DataFormatError, match="not a finite number"):
        load_result(p)
