from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from perwatt.bench.result import example_result
from perwatt.errors import ConfigError, DataFormatError
from perwatt.report import pareto_front, render_html_report, write_html_report
from perwatt.report.html import written_by_perwatt

DATA = Path(__file__).parents[1] / "bench" / "data"
RUNS = sorted(DATA.glob("*.json"))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _doc(path: Path) -> Any:
    return json.loads(path.read_text())


def test_report_is_self_contained_and_offline(tmp_path: Path) -> None:
    out = write_html_report(RUNS, tmp_path / "sub" / "report.html")
    assert out.exists() and not (tmp_path / "sub" / "report.html.tmp").exists()
    text = out.read_text()
    p = _Collector()
    p.feed(text)
    tags = {t for t, _ in p.tags}
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert "iframe" not in tags
    for _, attrs in p.tags:
        for k in ("src", "href"):
            assert not (attrs.get(k) or "").startswith(("http", "//")), attrs
    assert "@import" not in text and "url(" not in text
    # Every inline chart is well-formed SVG.
    svgs = re.findall(r"<svg .*?</svg>", text, flags=re.S)
    assert len(svgs) == 3 + len(RUNS)  # frontier, vs throughput, vs load, one timeline per run
    for s in svgs:
        ET.fromstring(s)


def test_banners_sources_and_partial_marking() -> None:
    text = render_html_report(RUNS)
    assert "are NOT measurements" in text
    assert "Incomplete runs" in text and "PARTIAL" in text and "interrupted (Ctrl-C)" in text
    # Summary table: every J/token and tokens/J cell carries the source badge.
    summary = text.split("<h2>Summary</h2>")[1].split("</table>")[0]
    rows = summary.split("<tr>")[2:]
    assert len(rows) == len(RUNS)
    for row in rows:
        assert row.count('<span class="src model">simulated</span>') >= 3
    # Steady-state window shaded in every timeline.
    assert text.count("<title>steady state</title>") == len(RUNS)
    assert "energy cost only" in text.lower()
    assert "Pareto" in text


def test_all_measured_and_complete_has_no_warning_banner() -> None:
    doc = _doc(DATA / "bf16_c4.json")
    doc["energy"]["source"] = "nvml-counter"
    doc["energy"]["measured"] = True
    doc["conditions"]["energy_source"] = "nvml-counter"
    text = render_html_report([doc])
    assert "NOT measurements" not in text
    assert "Incomplete runs" not in text
    assert "Conditions differ" not in text
    assert '<span class="src measured">nvml-counter</span>' in text


def test_conditions_banner_and_escaping() -> None:
    a = _doc(DATA / "bf16_c4.json")
    b = _doc(DATA / "fp8_c4.json")
    b["conditions"]["gpus"][0]["power_limit_w"] = 400.0
    b["label"] = "<script>alert(1)</script>"
    text = render_html_report([a, b])
    assert "Conditions differ between runs" in text
    assert "power limit (W) at concurrency 4: 1× 700.0 (result 1); 1× 400.0 (result 2)" in text
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_differences_along_one_series_are_not_flagged() -> None:
    docs = [_doc(DATA / f"{s}.json") for s in ("bf16_c1", "bf16_c4", "fp8_c1", "fp8_c4")]
    for d in docs:
        if d["load"]["value"] == 4.0:
            d["energy"]["basis"] = "whole_run"  # both series, same level: consistent
    assert "Conditions differ" not in render_html_report(docs)
    docs[3]["energy"]["basis"] = "steady_state"
    assert "energy basis at concurrency 4" in render_html_report(docs)


def test_each_load_kind_gets_its_own_chart() -> None:
    a = _doc(DATA / "bf16_c4.json")
    b = _doc(DATA / "fp8_c4.json")
    b["load"] = {"kind": "rate", "value": 2.5}
    text = render_html_report([a, b])
    assert "Tokens per joule vs load (concurrency)" in text
    assert "Tokens per joule vs load (rate)" in text
    assert "request rate (req/s)" in text


def test_failed_run_without_energy_still_renders() -> None:
    doc: Any = example_result(status="failed", partial_reason="every request failed")
    doc["energy"] = None
    doc["economics"] = None
    doc["timeline"] = {"t_s": [], "power_w": []}
    text = render_html_report([doc, _doc(DATA / "bf16_c4.json")])
    assert "No energy recorded" in text
    assert "no power timeline recorded" in text
    assert "FAILED" in text


def test_accuracy_block_is_shown() -> None:
    doc = _doc(DATA / "fp8_c4.json")
    doc["accuracy"] = {
        "reference": "http://ref/v1 (bf16)",
        "kl_mean": 0.001,
        "top1_agreement": 0.97,
        "max_rel_err": None,
        "exact_match": 0.8,
        "logprob_agreement": 0.99,
        "perplexity": None,
        "note": "greedy",
    }
    text = render_html_report([doc])
    assert "Accuracy guard" in text and "0.97" in text and "http://ref/v1 (bf16)" in text


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        render_html_report([])
    bad = tmp_path / "x.json"
    bad.write_text('{"schema": "perwatt.bench.result/7"}')
    with pytest.raises(DataFormatError, match=r"x\.json"):
        write_html_report([bad], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_unwritable_out_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory; give a file name"):
        write_html_report(RUNS, tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write the report to"):
        write_html_report(RUNS, blocker / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no stray .tmp


def test_pareto_front() -> None:
    pts = [(10.0, 3.0), (20.0, 2.0), (30.0, 1.0), (25.0, 2.5), (10.0, 3.5), (40.0, 1.0)]
    assert pareto_front(pts) == [0, 1, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate neither
    assert pareto_front([]) == []


# ---------------------------------------------------------------- issue 9: what the user sees
def test_cpu_estimate_is_not_titled_gpu_power() -> None:
    from perwatt.report.html import power_axis_label

    doc: Any = _doc(DATA / "bf16_c4.json")
    doc["energy"]["source"] = "estimated"
    doc["energy"]["whole_run"]["energy_j"] = {"cpu": 12.0}
    text = render_html_report([doc])
    assert "machine CPU power, estimated (W)" in text
    assert "total GPU power (W)" not in text
    doc["energy"]["source"] = "rapl"
    doc["energy"]["whole_run"]["energy_j"] = {"cpu0-package": 1.0, "cpu0-dram": 1.0}
    assert power_axis_label(doc) == "total CPU power (W)"
    doc["energy"]["source"] = "nvml-counter"
    doc["energy"]["whole_run"]["energy_j"] = {"gpu0": 1.0}
    assert power_axis_label(doc) == "total GPU power (W)"
    doc["energy"]["source"] = "replay(nvml-counter)"
    assert power_axis_label(doc) == "total GPU power, replay(nvml-counter) (W)"


def test_conditions_never_print_python_none() -> None:
    doc: Any = example_result()  # torch None, precision None, no GPUs
    text = render_html_report([doc])
    cond = text.split("<h2>Conditions</h2>")[1]
    assert "None" not in cond
    assert "example-model / –" in cond


def test_failed_run_is_marked_and_not_plotted() -> None:
    ok = _doc(DATA / "bf16_c4.json")
    failed: Any = _doc(DATA / "fp8_c4.json")
    failed["status"] = "failed"
    failed["partial_reason"] = "every request failed (http_500: 24)"
    failed["energy"]["output_tokens_per_j"] = 0.0
    failed["energy"]["j_per_output_token"] = None
    text = render_html_report([ok, failed])
    assert "failed: no successful request, not plotted" in text
    assert "Not plotted above: result 2 (no successful request" in text
    charts = text.split("<h2>Efficiency across load</h2>")[1].split("<h2>Power timelines</h2>")[0]
    assert "result 2" not in charts.split("Not plotted above")[0]  # no point, no tooltip
    assert "0 tok/J" not in charts


def test_a_file_given_twice_is_one_row(tmp_path: Path) -> None:
    from perwatt.report import dedupe_results

    a = DATA / "bf16_c4.json"
    unique, dropped = dedupe_results([a, DATA / "." / "bf16_c4.json", DATA / "fp8_c4.json"])
    assert unique == [a, DATA / "fp8_c4.json"] and dropped == [str(DATA / "." / "bf16_c4.json")]
    text = render_html_report([a, a])
    summary = text.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert len(summary.split("<tr")) - 2 == 1  # header + one run


def test_guard_failure_is_marked_next_to_the_energy_figures() -> None:
    doc: Any = _doc(DATA / "fp8_c4.json")
    doc["accuracy"] = {
        "reference": "bf16",
        "kl_mean": 0.103,
        "top1_agreement": 0.25,
        "max_rel_err": None,
        "exact_match": None,
        "logprob_agreement": None,
        "perplexity": None,
        "note": "teacher-forced",
    }
    text = render_html_report([_doc(DATA / "bf16_c4.json"), doc])
    assert "FAIL the accuracy guard" in text
    summary = text.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert "<tr class=fail>" in summary and "top-1 0.25 &lt; 0.9" in summary
    assert "accuracy guard" in summary
    from perwatt.bench.guard import GuardThresholds

    lenient = render_html_report([doc], thresholds=GuardThresholds(min_top1_agreement=0.2))
    assert "FAIL the accuracy guard" in lenient  # KL 0.103 > 0.1 still fails
    off = GuardThresholds(min_top1_agreement=None, max_kl_mean=None)
    assert "FAIL the accuracy guard" not in render_html_report([doc], thresholds=off)


def test_out_may_replace_only_a_perwatt_report_and_never_an_input(tmp_path: Path) -> None:
    run = tmp_path / "run.json"
    run.write_bytes(RUNS[0].read_bytes())
    with pytest.raises(ConfigError, match="is one of the input files"):
        write_html_report([run], tmp_path / "." / "run.json")
    assert run.read_bytes() == RUNS[0].read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("keep me")
    with pytest.raises(ConfigError, match="not a report perwatt wrote"):
        write_html_report([run], other)
    assert other.read_text() == "keep me"
    assert written_by_perwatt(write_html_report([run], other, force=True))
    # through a symlink: the report goes where it points, the link stays a link
    real = write_html_report([run], tmp_path / "real.html")
    link = tmp_path / "latest.html"
    link.symlink_to(real)
    write_html_report([run], link, title="again")
    assert link.is_symlink() and "<title>again</title>" in real.read_text()
