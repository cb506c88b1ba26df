"""Per-request energy: a run's measured energy split among its requests, labelled ``attributed``.

A GPU's energy is shared by every request in flight, so no request has a measured energy of its
own. This module divides the run's figure among them, and says exactly how::

    the run's window   [0, T]  (the meter's whole_run window; E = its total_energy_j)
    slices             between consecutive power-timeline samples (≈ the sample interval)
    slice energy       e_k = trapezoid integral of the timeline's power over the slice, then all
                       e_k scaled by E / Σ e_k so the slices add up to the measured E exactly
                       (the timeline is sampled; E comes from the counter when there is one)
    request work       prefill: its prompt tokens, spread evenly over [start, start + TTFT]
                       decode:  its output tokens, spread evenly over [start + TTFT, end]
                       w_ik = prompt tokens of i in slice k + output tokens of i in slice k
    attributed         a_i = Σ_k e_k · w_ik / Σ_j w_jk
    idle slices        a slice with energy and no request in flight (the gaps between
                       arrivals, the tail) is spread over all requests in proportion to their
                       total work: the run's energy is attributed in full, none is dropped

One prompt token and one output token weigh the same (``prefill_weight = 1``): a deliberate,
simple choice. Prefill is compute-bound and batched, so per token it usually costs less than
decode; raise or lower ``prefill_weight`` to model that. Whatever the weights, Σ a_i = E (the
last request absorbs the floating-point residual, so the column sums to the measured figure).
A request that failed without a token gets its prompt's share of the prefill slices it was in
flight for, or nothing when its prompt size is unknown.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from perwatt._files import atomic_write_text
from perwatt.errors import DataFormatError

ATTRIBUTED_COLUMNS: Final = ("attributed_energy_j", "attributed_energy_source")
METHOD: Final = (
    "attributed: the run's measured energy split over timeline slices, each slice's energy "
    "shared by the requests in flight in proportion to prompt tokens (prefill, over "
    "[start, start+TTFT]) plus output tokens (decode, over [start+TTFT, end]) in that slice; "
    "slices with no request in flight are spread by total work; sums to the measured figure"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSpan:
    """What attribution needs of one request (times relative to the run start)."""

    start_s: float
    ttft_s: float | None
    end_s: float | None
    prompt_tokens: float
    output_tokens: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribution:
    """Per-request energy and the per-slice figures the calibration export uses."""

    energy_j: tuple[float, ...]  # one per request, in input order
    total_energy_j: float
    slice_edges_s: tuple[float, ...]
    slice_energy_j: tuple[float, ...]
    slice_prefill_tokens: tuple[float, ...]
    slice_decode_tokens: tuple[float, ...]
    method: str = METHOD


def _overlap(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Share of each interval [a, b] ([n]) inside each slice [lo, hi] ([k, 1]) → [k, n]."""
    span = b - a
    inside = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(span > 0, inside / np.where(span > 0, span, 1.0), 0.0)
    # A zero-length phase puts all its tokens in the slice that holds its instant.
    instant = (span <= 0) & (a >= lo) & (a < hi)
    return np.where(instant, 1.0, share)


def attribute(
    requests: Sequence[RequestSpan],
    *,
    total_energy_j: float,
    timeline_t_s: Sequence[float],
    timeline_power_w: Sequence[float],
    duration_s: float,
    prefill_weight: float = 1.0,
) -> Attribution:
    """Split ``total_energy_j`` over ``requests`` (see the module docstring)."""
    n = len(requests)
    if not (math.isfinite(total_energy_j) and total_energy_j >= 0):
        raise DataFormatError(f"total energy must be a finite number >= 0, got {total_energy_j}")
    t = np.asarray(timeline_t_s, dtype=np.float64)
    p = np.asarray(timeline_power_w, dtype=np.float64)
    ok_tl = bool(
        t.size >= 2
        and t.size == p.size
        and np.all(np.isfinite(t))
        and np.all(np.isfinite(p))
        and np.all(np.diff(t) > 0)
    )
    end = max(duration_s, float(t[-1]) if ok_tl else 0.0)
    if ok_tl:
        edges = np.unique(np.concatenate(([0.0], t[(t > 0) & (t < end)], [end])))
        mids_p = np.interp(edges, t, p)
        e = (mids_p[1:] + mids_p[:-1]) * np.diff(edges) / 2.0
    else:  # no usable timeline: one slice, the whole run
        edges = np.array([0.0, max(end, 1e-9)])
        e = np.array([1.0])
    e = np.clip(e, 0.0, None)
    e = e * (total_energy_j / e.sum()) if e.sum() > 0 else np.full(e.size, total_energy_j / e.size)
    if n == 0:
        return Attribution(
            energy_j=(),
            total_energy_j=total_energy_j,
            slice_edges_s=tuple(edges.tolist()),
            slice_energy_j=tuple(e.tolist()),
            slice_prefill_tokens=tuple([0.0] * e.size),
            slice_decode_tokens=tuple([0.0] * e.size),
        )
    start = np.array([r.start_s for r in requests], dtype=np.float64)
    fin = np.array(
        [r.end_s if r.end_s is not None else r.start_s for r in requests], dtype=np.float64
    )
    first = np.array(
        [
            r.start_s + r.ttft_s if r.ttft_s is not None else (r.end_s or r.start_s)
            for r in requests
        ],
        dtype=np.float64,
    )
    first = np.minimum(first, fin)
    n_in = np.array([max(0.0, r.prompt_tokens) for r in requests], dtype=np.float64)
    n_out = np.array([max(0.0, r.output_tokens) for r in requests], dtype=np.float64)
    lo, hi = edges[:-1, None], edges[1:, None]
    # The last slice is closed on the right so a request ending exactly at T is counted.
    hi = hi.copy()
    hi[-1] = np.inf
    pre = _overlap(start, first, lo, hi) * n_in * prefill_weight  # [k, n]
    dec = _overlap(first, fin, lo, hi) * n_out  # [k, n]
    w = pre + dec
    col = w.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(col > 0, w / np.where(col > 0, col, 1.0), 0.0)
    a = (share * e[:, None]).sum(axis=0)
    idle_e = float(e[col[:, 0] <= 0].sum())
    total_w = w.sum(axis=0)
    if idle_e > 0:
        # By total work; when no request did any work, an equal share each.
        a = a + (idle_e * total_w / total_w.sum() if total_w.sum() > 0 else idle_e / n)
    # Exact sum: the last request takes the floating-point residual.
    out = [float(x) for x in a]
    out[-1] = total_energy_j - math.fsum(out[:-1])
    return Attribution(
        energy_j=tuple(out),
        total_energy_j=total_energy_j,
        slice_edges_s=tuple(edges.tolist()),
        slice_energy_j=tuple(e.tolist()),
        slice_prefill_tokens=tuple(pre.sum(axis=1).tolist()),
        slice_decode_tokens=tuple(dec.sum(axis=1).tolist()),
    )


def _f(v: str | None) -> float | None:
    if v is None or v.strip() == "":
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_spans(csv_path: Path) -> tuple[list[str], list[list[str]], list[RequestSpan]]:
    """Header, rows and spans of a bench ``.requests.csv``."""
    try:
        with csv_path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DataFormatError(f"{csv_path}: cannot read ({e.strerror or e})") from None
    if not rows:
        raise DataFormatError(f"{csv_path}: empty requests CSV")
    header, body = rows[0], rows[1:]
    idx = {name: i for i, name in enumerate(header)}
    for need in ("start_s", "ttft_ms", "e2el_ms", "prompt_tokens", "output_tokens"):
        if need not in idx:
            raise DataFormatError(f"{csv_path}: no column {need!r}")

    def get(row: list[str], name: str) -> float | None:
        i = idx[name]
        return _f(row[i]) if i < len(row) else None

    spans = []
    for row in body:
        start = get(row, "start_s") or 0.0
        ttft = get(row, "ttft_ms")
        e2el = get(row, "e2el_ms")
        spans.append(
            RequestSpan(
                start_s=start,
                ttft_s=None if ttft is None else ttft / 1e3,
                end_s=None if e2el is None else start + e2el / 1e3,
                prompt_tokens=get(row, "prompt_tokens") or 0.0,
                output_tokens=get(row, "output_tokens") or 0.0,
            )
        )
    return header, body, spans


def attribute_result(doc: dict[str, Any], csv_path: Path) -> Attribution | None:
    """Attribute a finished bench result's energy to the rows of its requests CSV and rewrite
    the CSV with :data:`ATTRIBUTED_COLUMNS` (atomically). None when the run has no energy."""
    energy = doc.get("energy")
    if not energy:
        return None
    whole = energy.get("whole_run") or {}
    total = whole.get("total_energy_j")
    if total is None or not math.isfinite(float(total)):
        return None
    header, body, spans = read_spans(csv_path)
    tl = doc.get("timeline") or {}
    att = attribute(
        spans,
        total_energy_j=float(total),
        timeline_t_s=tl.get("t_s") or [],
        timeline_power_w=tl.get("power_w") or [],
        duration_s=float(whole.get("duration_s") or doc["metrics"]["duration_s"] or 0.0),
    )
    label = f"attributed ({energy['source']})"
    keep = [i for i, h in enumerate(header) if h not in ATTRIBUTED_COLUMNS]
    new_header = [header[i] for i in keep] + list(ATTRIBUTED_COLUMNS)
    lines: list[list[str]] = [new_header]
    for row, a in zip(body, att.energy_j, strict=True):
        # repr: the shortest text that reads back as the same float, so the column's sum is
        # the measured figure exactly, not to the printed precision.
        lines.append([row[i] if i < len(row) else "" for i in keep] + [repr(a), label])
    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    atomic_write_text(csv_path, buf.getvalue())
    return att
