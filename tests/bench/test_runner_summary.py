"""The bench console summary: precision and load in every column header, units in every row name,
emulated energy marked beside the figure, the accuracy guard's verdict, and the terminal's width."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from perwatt.bench.result import example_result, write_result
from perwatt.bench.runner import summary_notes, summary_tables


def _point(tmp: Path, precision: str, batch: int, **kw: Any) -> Path:
    doc: Any = example_result(label=f"builtin-tiny-{precision}")
    doc["config"]["precision"] = precision
    doc["config"]["batch_size"] = batch
    doc["load"] = {"kind": "batch", "value": float(batch)}
    doc.update(kw)
    path = tmp / f"{precision}_b{batch}.json"
    write_result(path, doc)
    return path


def _render(tables: list[Any], width: int) -> str:
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None)
    for t in tables:
        con.print(t)
    return out.getvalue()


def test_sweep_fits_80_columns_and_names_precision(tmp_path: Path) -> None:
    emulated = {"emulated": True, "device": "cpu"}
    int4_acc = {
        "reference": "fp32",
        "kl_mean": 0.103,
        "top1_agreement": 0.25,
        "max_rel_err": 0.4,
        "exact_match": None,
        "logprob_agreement": None,
        "perplexity": None,
        "note": "",
    }
    paths = [
        _point(tmp_path, p, b, **extra)
        for p, extra in (
            ("bf16", {}),
            ("fp8", {"builtin": emulated}),
            ("int4", {"accuracy": int4_acc}),
        )
        for b in (1, 4)
    ]
    tables = summary_tables(paths, width=80)
    assert len(tables) > 1  # six columns do not fit 80: they continue, not cut
    text = _render(tables, 80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text  # nothing truncated
    for p in ("bf16 · batch 1", "fp8 · batch 4", "int4 · batch 4"):
        assert p in text
    assert "J / output token (J)" in text and "avg power (W)" in text
    assert "(emulated)" in text  # beside fp8's J/token
    assert "accuracy guard" in text and "FAIL" in text
    notes = summary_notes(paths)
    assert any("fp8 is emulated on cpu" in n for n in notes)
    assert any("accuracy guard FAIL (top-1 0.25 < 0.9; KL 0.103 > 0.1)" in n for n in notes)
    assert any(n.startswith("accuracy guard: top-1 >= 0.9") for n in notes)
    wide = summary_tables(paths, width=400)
    assert len(wide) == 1


def test_no_accuracy_no_guard_row(tmp_path: Path) -> None:
    paths = [_point(tmp_path, "bf16", 1)]
    text = _render(summary_tables(paths, width=120), 120)
    assert "accuracy guard" not in text
    assert not any(n.startswith("accuracy guard") for n in summary_notes(paths))
