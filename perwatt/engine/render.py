"""Text for people: one line per measured point (printed as the sweep runs) and a table of a
sweep's result documents. It reads the documents only; every energy figure is shown with its
source, and emulated precisions say they make no energy claim."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from perwatt.bench.guard import DEFAULT_THRESHOLDS, GuardThresholds, judge
from perwatt.bench.result import load_result
from perwatt.errors import DataFormatError


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _status(doc: Mapping[str, Any]) -> str:
    if doc["status"] == "failed":
        return f"failed: {doc['partial_reason']}"
    if (doc.get("builtin") or {}).get("emulated"):
        return f"{doc['status']} (emulated: no energy claim)"
    return str(doc["status"])


def format_point(doc: Mapping[str, Any], guard: GuardThresholds = DEFAULT_THRESHOLDS) -> str:
    """One line: precision, batch, tokens/s, J/token and tokens/J with their source, accuracy."""
    cfg = doc["config"]
    head = f"{cfg['precision']:>5} b{cfg['batch_size']:<4}"
    if doc["status"] == "failed":
        return f"{head} FAILED: {doc.get('partial_reason')}"
    e = doc["energy"] or {}
    b = doc.get("builtin") or {}
    acc = doc.get("accuracy") or {}
    # Beside the energy figures: emulated precisions make no energy claim, and the accuracy
    # guard's verdict (perwatt.bench.guard) says whether the saving counts.
    emu = " (emulated: no energy claim)" if b.get("emulated") else ""
    verdict = judge(doc.get("accuracy"), guard)
    return (
        f"{head} {_fmt((b.get('decode') or {}).get('tokens_per_s'), '10.1f')} tok/s  "
        f"{_fmt(e.get('j_per_output_token'), '.4g')} J/tok  "
        f"{_fmt(e.get('output_tokens_per_j'), '.4g')} tok/J ({e.get('source')}){emu}  "
        f"KL {_fmt(acc.get('kl_mean'), '.2e')}  top1 {_fmt(acc.get('top1_agreement'), '.3f')}"
        + (f"  guard {verdict.text}" if verdict.status != "none" else "")
    )


def format_summary(paths: Sequence[str | Path], guard: GuardThresholds = DEFAULT_THRESHOLDS) -> str:
    """A table of a sweep's documents: the energy source and the accuracy guard's verdict
    (as :func:`format_point` judges it) beside every energy figure."""
    rows = [
        (
            "precision",
            "batch",
            "status",
            "decode tok/s",
            "J/token",
            "tokens/J",
            "source",
            "KL vs ref",
            "top-1",
            "guard",
        )
    ]
    for p in paths:
        try:
            doc: Mapping[str, Any] = load_result(p)
        except DataFormatError as err:
            rows.append((str(p), "", f"unreadable: {err}", "", "", "", "", "", "", ""))
            continue
        cfg = doc["config"]
        e = doc["energy"] or {}
        b: Mapping[str, Any] = doc.get("builtin") or {}  # type: ignore[assignment]
        acc = doc["accuracy"] or {}
        rows.append(
            (
                str(cfg["precision"]),
                str(cfg["batch_size"]),
                _status(doc),
                _fmt((b.get("decode") or {}).get("tokens_per_s"), ".1f"),
                _fmt(e.get("j_per_output_token"), ".4g"),
                _fmt(e.get("output_tokens_per_j"), ".4g"),
                str(e.get("source", "-")),
                _fmt(acc.get("kl_mean"), ".2e"),
                _fmt(acc.get("top1_agreement"), ".3f"),
                judge(doc["accuracy"], guard).short,
            )
        )
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)
