"""The sweep's printed lines: every energy figure beside its source, emulation said."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perwatt.bench.result import example_result
from perwatt.engine.render import format_point, format_summary


def _doc(**builtin: Any) -> dict[str, Any]:
    return {
        "config": {"precision": "fp8", "batch_size": 4},
        "status": "ok",
        "energy": {"j_per_output_token": 0.5, "output_tokens_per_j": 2.0, "source": "simulated"},
        "builtin": {"decode": {"tokens_per_s": 123.4}, **builtin},
        "accuracy": None,
    }


def test_a_point_line_names_its_energy_source_and_emulation() -> None:
    line = format_point(_doc())
    assert "fp8 b4" in line and "123.4 tok/s" in line and "2 tok/J (simulated)" in line
    assert "emulated" not in line
    assert "(emulated: no energy claim)" in format_point(_doc(emulated=True))


def test_a_failed_point_line_says_why() -> None:
    doc = {**_doc(), "status": "failed", "partial_reason": "out of memory"}
    assert format_point(doc).endswith("FAILED: out of memory")


def test_the_summary_table_judges_accuracy_as_the_point_line_does(tmp_path: Path) -> None:
    """`make bench` prints this table: an int4 top-1 of 0.53 must read FAIL there too."""
    doc: Any = example_result()
    doc["accuracy"] = {
        "reference": "bf16",
        "kl_mean": 0.099,
        "top1_agreement": 0.528,
        "max_rel_err": None,
        "exact_match": None,
        "logprob_agreement": None,
        "perplexity": None,
        "note": "teacher-forced",
    }
    p = tmp_path / "int4.json"
    p.write_text(json.dumps(doc))
    header, row = format_summary([p]).splitlines()
    assert header.split()[-1] == "guard" and row.split()[-1] == "FAIL"
