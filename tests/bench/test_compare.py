from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from perwatt.bench.compare import (
    compare_results,
    energy_blocks,
    load_requests_csv,
)
from perwatt.bench.result import load_result, write_result
from perwatt.errors import ConfigError, DataFormatError
from perwatt.report.compare import render_comparison

DATA = Path(__file__).parent / "data"
FAST = {"n_resamples": 400}


def _copy(tmp: Path, stem: str, new_stem: str | None = None, **changes: Any) -> Path:
    """Copy a fixture (JSON + CSV) into ``tmp``, applying dotted-key ``changes`` to the JSON."""
    new_stem = new_stem or stem
    doc: Any = json.loads((DATA / f"{stem}.json").read_text())
    shutil.copy(DATA / f"{stem}.requests.csv", tmp / f"{new_stem}.requests.csv")
    doc["requests_csv"] = f"{new_stem}.requests.csv"
    for key, value in changes.items():
        obj = doc
        parts = key.split("__")
        for part in parts[:-1]:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part]
        obj[parts[-1]] = value
    return write_result(tmp / f"{new_stem}.json", doc)


def _metric(level: Any, key: str) -> Any:
    return next(m for m in level.metrics if m.key == key)


def test_bf16_vs_fp8_matched_by_load_with_intervals() -> None:
    paths = [DATA / f"{s}.json" for s in ("bf16_c1", "bf16_c4", "fp8_c1", "fp8_c4", "fp8_c8")]
    cmp = compare_results(paths, **FAST)
    assert cmp.series == ("bf16", "fp8")
    assert [(lv.load_kind, lv.load_value) for lv in cmp.levels] == [
        ("concurrency", 1.0),
        ("concurrency", 4.0),
    ]
    assert [(u.load_value, u.present_in, u.missing_in) for u in cmp.unmatched] == [
        (8.0, ("fp8",), ("bf16",))
    ]
    for lv, (a, b) in zip(cmp.levels, [("bf16_c1", "fp8_c1"), ("bf16_c4", "fp8_c4")], strict=True):
        da, db = load_result(DATA / f"{a}.json"), load_result(DATA / f"{b}.json")
        assert da["energy"] is not None and db["energy"] is not None
        jpt = _metric(lv, "j_per_output_token")
        r = jpt.ratios[0]
        # The point ratio is the documents' own figures, exactly.
        assert r.ratio == db["energy"]["j_per_output_token"] / da["energy"]["j_per_output_token"]
        assert r.ci is not None and r.ci.low <= r.ratio <= r.ci.high
        assert r.ci.high < 1.0 and r.verdict == "better"  # fp8 spends less energy per token
        tpj = _metric(lv, "output_tokens_per_j").ratios[0]
        assert tpj.ratio == pytest.approx(1 / r.ratio)
        assert tpj.verdict == "better"
        assert tpj.ci.low == pytest.approx(1 / r.ci.high)
        ttft = _metric(lv, "ttft_ms.p99").ratios[0]
        assert ttft.ratio == pytest.approx(
            db["metrics"]["ttft_ms"]["p99"] / da["metrics"]["ttft_ms"]["p99"]  # type: ignore[operator]
        )
        assert ttft.ci is not None
        # No interval where nothing can be resampled, and it says so.
        assert _metric(lv, "avg_power_w").ratios[0].verdict == "no interval"
    # Every energy figure is simulated and the comparison says so.
    assert any("energy is simulated, not a measurement" in w for w in cmp.warnings)
    assert not any(w.startswith("CONDITIONS DIFFER") for w in cmp.warnings)
    assert any("precision differs" in d for d in cmp.condition_diffs)
    json.dumps(cmp.to_dict(), allow_nan=False)


def test_run_against_itself_is_within_noise(tmp_path: Path) -> None:
    a = _copy(tmp_path, "bf16_c4", "a", label="a")
    b = _copy(tmp_path, "bf16_c4", "b", label="b")
    cmp = compare_results([a, b], **FAST)
    (lv,) = cmp.levels
    for m in lv.metrics:
        r = m.ratios[0]
        assert r.ratio == pytest.approx(1.0)
        assert r.verdict in ("within noise", "no interval"), m.key
    assert _metric(lv, "j_per_output_token").ratios[0].verdict == "within noise"
    assert _metric(lv, "tpot_ms.p50").ratios[0].verdict == "within noise"


def test_bootstrap_detects_a_small_real_difference(tmp_path: Path) -> None:
    """Scale B's power timeline and energy by 0.9: J/token 10% lower, clearly beyond noise."""
    a = _copy(tmp_path, "bf16_c4", "a", label="a")
    doc: Any = json.loads(a.read_text())
    doc["label"] = "b"
    doc["timeline"]["power_w"] = [p * 0.9 for p in doc["timeline"]["power_w"]]
    doc["energy"]["j_per_output_token"] *= 0.9
    doc["energy"]["output_tokens_per_j"] /= 0.9
    shutil.copy(tmp_path / "a.requests.csv", tmp_path / "b.requests.csv")
    doc["requests_csv"] = "b.requests.csv"
    b = write_result(tmp_path / "b.json", doc)
    cmp = compare_results([a, b], **FAST)
    r = _metric(cmp.levels[0], "j_per_output_token").ratios[0]
    assert r.ratio == pytest.approx(0.9)
    # A and B are resampled independently, so even proportional runs give an interval.
    assert 0.85 < r.ci.low < 0.9 < r.ci.high < 0.95
    assert r.verdict == "better"


def test_conditions_that_differ_are_flagged(tmp_path: Path) -> None:
    a = _copy(tmp_path, "bf16_c4")
    b = _copy(
        tmp_path,
        "fp8_c4",
        conditions__gpus__0__power_limit_w=350.0,
        config__output_len=128,
    )
    cmp = compare_results([a, b], **FAST)
    loud = [w for w in cmp.warnings if w.startswith("CONDITIONS DIFFER")]
    assert any("power limit (W) differs: bf16=1x 700.0; fp8=1x 350.0" in w for w in loud)
    assert any("output length differs" in w for w in loud)


def test_measured_vs_simulated_warns_and_marks_energy_ratios(tmp_path: Path) -> None:
    a = _copy(tmp_path, "bf16_c4")
    b = _copy(
        tmp_path,
        "fp8_c4",
        energy__measured=True,
        energy__source="nvml-counter",
        conditions__energy_source="nvml-counter",
    )
    cmp = compare_results([a, b], **FAST)
    assert cmp.warnings[0].startswith("MIXED ENERGY SOURCES")
    lv = cmp.levels[0]
    assert _metric(lv, "j_per_output_token").ratios[0].note == "measured vs simulated/estimated"
    assert _metric(lv, "ttft_ms.p50").ratios[0].note is None
    assert any("energy source differs" in w for w in cmp.warnings)


def test_partial_run_is_marked() -> None:
    cmp = compare_results([DATA / "bf16_c4.json", DATA / "fp8partial_c4.json"], **FAST)
    assert any(w.startswith("PARTIAL run") and "Ctrl-C" in w for w in cmp.warnings)
    run = cmp.levels[0].runs[1]
    assert run is not None and run.partial and run.status == "partial"
    out = io.StringIO()
    render_comparison(cmp, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "fp8partial PARTIAL" in text
    assert "(simulated)" in text  # the source next to every energy figure
    assert "PARTIAL run" in text


def test_failed_run_column_says_failed(tmp_path: Path) -> None:
    failed = _copy(tmp_path, "fp8partial_c4", "fp8failed_c4", status="failed")
    cmp = compare_results([DATA / "bf16_c4.json", failed], **FAST)
    out = io.StringIO()
    render_comparison(cmp, Console(file=out, width=200, color_system=None))
    header = next(line for line in out.getvalue().splitlines() if "metric" in line)
    assert "FAILED" in header and "PARTIAL" not in header


def test_missing_csv_gives_no_latency_interval(tmp_path: Path) -> None:
    a = _copy(tmp_path, "bf16_c4")
    b = _copy(tmp_path, "fp8_c4")
    (tmp_path / "fp8_c4.requests.csv").unlink()
    cmp = compare_results([a, b], **FAST)
    lv = cmp.levels[0]
    r = _metric(lv, "ttft_ms.p50").ratios[0]
    assert r.ci is None and r.verdict == "no interval"
    assert "not found" in (r.note or "")
    assert _metric(lv, "j_per_output_token").ratios[0].ci is None


def test_same_label_in_two_folders_becomes_two_series(tmp_path: Path) -> None:
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    a = _copy(tmp_path / "before", "bf16_c4", label="llama")
    b = _copy(tmp_path / "after", "fp8_c4", label="llama")
    cmp = compare_results([a, b], **FAST)
    assert cmp.series == ("llama @ before", "llama @ after")
    assert len(cmp.levels) == 1
    # Same folder, same label, same level: series are named by file, brackets and all.
    c = _copy(tmp_path / "before", "fp8_c4", "other", label="llama")
    cmp2 = compare_results([a, c], **FAST)
    assert cmp2.series == ("llama [bf16_c4.json]", "llama [other.json]")
    out = io.StringIO()
    render_comparison(cmp2, Console(file=out, width=220, color_system=None))
    assert "llama [other.json] / llama [bf16_c4.json]" in out.getvalue()  # not eaten as markup


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least two"):
        compare_results([DATA / "bf16_c4.json"])
    with pytest.raises(ConfigError, match="given twice"):
        compare_results([DATA / "bf16_c4.json", DATA / "bf16_c4.json"])
    with pytest.raises(ConfigError, match="one series"):
        compare_results([DATA / "bf16_c1.json", DATA / "bf16_c4.json"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match=r"bad\.json"):
        compare_results([DATA / "bf16_c4.json", bad])
    future = _copy(tmp_path, "fp8_c4")
    doc = json.loads(future.read_text())
    doc["schema"] = "perwatt.bench.result/99"
    future.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"fp8_c4.json: schema .* not supported"):
        compare_results([DATA / "bf16_c4.json", future])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"confidence": 2.0}, "--confidence must be in"),
        ({"confidence": 0.0}, "--confidence must be in"),
        ({"confidence": math.nan}, "--confidence must be in"),
        ({"n_resamples": 0}, "--resamples must be"),
        ({"n_resamples": -5}, "--resamples must be"),
    ],
)
def test_bad_interval_parameters_are_rejected_up_front(kw: dict[str, Any], match: str) -> None:
    # Even where no interval is computed, the header would otherwise print e.g. "200% CI".
    with pytest.raises(ConfigError, match=match):
        compare_results([DATA / "bf16_c4.json", DATA / "fp8_c4.json"], **kw)


def test_requests_csv_reader(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "start_s", "ttft_s", "e2el_s", "output_tokens", "itl_s", "error_kind"])
        w.writerow([0, 1000.0, 0.1, 1.1, 11, "[0.1, 0.1]", ""])
        w.writerow([1, 1000.5, 0.2, 2.2, 21, "0.1;0.1", ""])
        w.writerow([2, 1001.0, "", "", 0, "", "http_500"])
    rows = load_requests_csv(p)
    assert rows.n == 2
    assert rows.ttft_ms.tolist() == pytest.approx([100.0, 200.0])
    assert rows.tpot_ms.tolist() == pytest.approx([100.0, 100.0])  # derived (E2EL-TTFT)/(n-1)
    assert rows.itl_ms is not None and rows.itl_ms.tolist() == pytest.approx([100.0] * 4)
    p.write_text("index,start_s,ttft_ms,e2el_ms,output_tokens\n0,0,abc,1,2\n")
    with pytest.raises(DataFormatError, match=r"r.csv:2: bad number"):
        load_requests_csv(p)
    p.write_text("index,start_s\n0,0\n")
    with pytest.raises(DataFormatError, match="no ttft_ms"):
        load_requests_csv(p)


def test_energy_blocks_reproduce_the_documents_j_per_token() -> None:
    for stem in ("bf16_c1", "bf16_c4", "fp8_c8"):
        doc = load_result(DATA / f"{stem}.json")
        rows = load_requests_csv(DATA / f"{stem}.requests.csv")
        blocks = energy_blocks(doc, rows)
        assert blocks is not None and doc["energy"] is not None
        ss = doc["energy"]["steady_state"]
        assert ss is not None
        assert blocks.energy_j.sum() == pytest.approx(ss["total_energy_j"], rel=1e-9)
        assert blocks.j_per_token == pytest.approx(doc["energy"]["j_per_output_token"], rel=1e-6)
        assert 4 <= blocks.energy_j.size <= 40
        assert np.all(blocks.tokens >= 0)


def test_absolute_start_times_are_rebased(tmp_path: Path) -> None:
    a = _copy(tmp_path, "bf16_c4")
    b = _copy(tmp_path, "fp8_c4")
    csv_path = tmp_path / "fp8_c4.requests.csv"
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["start_s"] = str(float(r["start_s"]) + 123456.0)
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cmp = compare_results([a, b], **FAST)
    assert any("another clock" in w for w in cmp.warnings)
    assert _metric(cmp.levels[0], "j_per_output_token").ratios[0].ci is not None


_INT4_ACC = {
    "reference": "bf16",
    "kl_mean": 0.103,
    "top1_agreement": 0.25,
    "max_rel_err": None,
    "exact_match": None,
    "logprob_agreement": None,
    "perplexity": None,
    "note": "",
}


def test_guard_verdict_beside_the_energy_rows(tmp_path: Path) -> None:
    a = _copy(tmp_path, "bf16_c4")
    b = _copy(tmp_path, "fp8_c4", accuracy=_INT4_ACC)
    cmp = compare_results([a, b], **FAST)
    (level,) = cmp.levels
    assert level.runs[1] is not None and level.runs[1].guard.failed
    assert cmp.to_dict()["levels"][0]["runs"][1]["guard"]["status"] == "fail"
    out = io.StringIO()
    render_comparison(cmp, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    lines = text.splitlines()
    guard = next(i for i, line in enumerate(lines) if "accuracy guard" in line and "│" in line)
    assert "FAIL" in lines[guard]
    assert "$ / M output tok" in lines[guard - 1]  # right under the energy rows
    assert "guard FAIL (top-1 0.25 < 0.9; KL 0.103 > 0.1)" in text
    assert "accuracy guard: top-1 >= 0.9, KL <= 0.1" in text


def test_render_fits_80_columns(tmp_path: Path) -> None:
    """Issue 9: compare's table was unreadable in 80 columns (sources in every cell)."""
    a = _copy(tmp_path, "bf16_c4")
    b = _copy(tmp_path, "fp8_c4")
    out = io.StringIO()
    render_comparison(
        compare_results([a, b], **FAST), Console(file=out, width=80, color_system=None)
    )
    text = out.getvalue()
    table = [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= 80 for line in table)
    assert "…" not in text  # nothing cut off
    assert "J / output token (J)" in text  # unit beside every metric
    assert "(simulated)" in text  # the energy source in the run's header
    header = "\n".join(table[:4])
    assert "95% CI" in header and "bf16" in header
