"""Per-run latency, throughput, goodput and energy figures from per-request records.

Latency definitions are those of vLLM's ``benchmark_serving``/``vllm bench serve`` so numbers can
be set side by side: TTFT; TPOT = (E2EL - TTFT) / (output_tokens - 1) for requests with at least
two output tokens; ITL = every gap between token chunks, pooled over requests; E2EL; and
percentiles by linear interpolation (``numpy.percentile``'s default). Throughputs count successful
requests only, over the wall time from the first send to the last completion. Goodput is
successful requests per second that met every SLO given (a request with fewer than two tokens has
TPOT 0 for that test, as in vLLM).

The steady-state window (ML.ENERGY benchmark): energy per token is taken while the server is
saturated, excluding the ramp-up, when the first batch is still in prefill, and the drain, when
fewer and fewer requests are left::

    in flight ▲        ┌───────────────────────────┐
      target  │     ┌──┘ ░░░░░░ steady state ░░░░░░ └──┐
              │  ┌──┘    ░░░░░░░░░░░░░░░░░░░░░░░░░░    └──┐
              └──┴───────┴──────────────────────────┴──────┴──▶ t
                       start                       end
    start: in-flight first reaches the target (``max_concurrency``, or every request when
           the rate is infinite), then moved on to when every request in flight at that moment has
           its first token (their prefills are ramp-up). With a finite rate and no concurrency
           limit the target is unknown; start is then the first completion (from there on
           arrivals and departures balance).
    end:   the last request is sent; from then on in-flight can only fall (the drain).

Tokens inside the window are counted from chunk arrival times (a request's tokens are spread
evenly over its token chunks, which is exact for one token per chunk); J per output token on the
steady-state basis is window energy / window tokens. Windows shorter than
:data:`MIN_STEADY_STATE_S` are not trusted and the whole run is used instead, with a note.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from perwatt.bench.client import RequestRecord
from perwatt.bench.result import (
    ECONOMICS_NOTE,
    Economics,
    Energy,
    GoodputSLO,
    Metrics,
    Percentiles,
    empty_percentiles,
)
from perwatt.bench.stats import summarize
from perwatt.economics import cost_per_million_tokens_usd, tokens_per_mwh
from perwatt.errors import ConfigError
from perwatt.meter.meter import Measurement

#: Shortest steady-state window whose energy is used (shorter: whole run, with a note).
MIN_STEADY_STATE_S = 1.0
#: Windows below this get a note: ARCHITECTURE.md: >= 5 s for published figures (counter ~100 ms).
RECOMMENDED_WINDOW_S = 5.0

SLO_KEYS = ("ttft", "tpot", "e2el")


def parse_goodput(specs: Sequence[str] | None) -> GoodputSLO | None:
    """``["ttft:200", "tpot:50"]`` (milliseconds) -> ``{"ttft": 200.0, "tpot": 50.0}``."""
    if not specs:
        return None
    out: GoodputSLO = {}
    for spec in specs:
        for item in spec.replace(",", " ").split():
            key, sep, val = item.partition(":")
            key = key.strip().lower()
            if not sep or key not in SLO_KEYS:
                raise ConfigError(
                    f"--goodput {item!r} not understood; use KEY:MS with KEY in ttft, tpot, e2el "
                    "(e.g. --goodput ttft:200 tpot:50)"
                )
            try:
                ms = float(val)
            except ValueError:
                raise ConfigError(f"--goodput {item!r}: {val!r} is not a number of ms") from None
            if not (ms > 0 and math.isfinite(ms)):
                raise ConfigError(f"--goodput {item!r}: the SLO must be a positive number of ms")
            prev = cast(dict[str, float], out).get(key)
            if prev is not None and prev != ms:
                # Last-wins would silently measure goodput against an SLO the user may not mean.
                raise ConfigError(
                    f"--goodput sets {key} twice ({prev:g} and {ms:g} ms); give it once"
                )
            out[key] = ms  # type: ignore[literal-required]
    return out


def summarize_ms(values_s: Sequence[float]) -> Percentiles:
    """Mean, median, p50/p90/p95/p99, min, max in milliseconds; all None without samples."""
    if len(values_s) == 0:
        return empty_percentiles()
    return cast(Percentiles, summarize(np.asarray(values_s, dtype=float) * 1e3))


def _meets(rec: RequestRecord, slo: GoodputSLO) -> bool:
    if "ttft" in slo and (rec.ttft_s is None or rec.ttft_s * 1e3 > slo["ttft"]):
        return False
    tpot = rec.tpot_s or 0.0
    if "tpot" in slo and tpot * 1e3 > slo["tpot"]:
        return False
    return not ("e2el" in slo and (rec.e2el_s is None or rec.e2el_s * 1e3 > slo["e2el"]))


def run_metrics(
    records: Sequence[RequestRecord],
    *,
    duration_s: float,
    slo: GoodputSLO | None = None,
    client_cpu_s: float | None = None,
) -> Metrics:
    """The ``metrics`` block of a result from the records so far."""
    ok = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    dur = duration_s if duration_s > 0 else float("nan")
    out_tok = sum(r.output_tokens for r in ok)
    in_tok = sum(r.prompt_tokens for r in ok)
    sources = Counter(r.token_count_source for r in ok)
    # One label for the run: "usage" only when every count came from the server.
    tcs = "usage" if ok and set(sources) == {"usage"} else "chunks"
    m: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(bad),
        "duration_s": duration_s,
        "request_throughput_rps": len(ok) / dur,
        "output_throughput_tok_s": out_tok / dur,
        "total_token_throughput_tok_s": (in_tok + out_tok) / dur,
        "total_input_tokens": in_tok,
        "total_output_tokens": out_tok,
        "token_count_source": tcs,
        "ttft_ms": summarize_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_ms": summarize_ms([t for r in ok if (t := r.tpot_s) is not None]),
        "itl_ms": summarize_ms([x for r in ok for x in r.itl_s]),
        "e2el_ms": summarize_ms([r.e2el_s for r in ok if r.e2el_s is not None]),
        "goodput_rps": (sum(1 for r in ok if _meets(r, slo)) / dur) if slo else None,
        "errors": dict(sorted(Counter(str(r.error_kind) for r in bad).items())),
        # Beyond the schema's required keys: how the counts were made, for the sceptical reader.
        "token_count_sources": dict(sources),
        "output_tokens_by_chunks": sum(r.output_tokens_chunks for r in ok),
        "output_tokens_by_usage": (
            sum(r.output_tokens_usage or 0 for r in ok) if sources.get("usage") else None
        ),
        "input_tokens_source": (
            "usage" if ok and all(r.prompt_tokens_source == "usage" for r in ok) else "approximate"
        ),
        "error_examples": _error_examples(bad),
    }
    if client_cpu_s is not None:
        m["client_cpu_s"] = client_cpu_s
        m["client_cpu_util"] = client_cpu_s / dur
    return m  # type: ignore[return-value]


def _error_examples(bad: Sequence[RequestRecord], per_kind: int = 1) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in bad:
        k = str(r.error_kind)
        if k not in out and len(out) < 20:
            out[k] = r.error_detail[:200]
    return out


# --------------------------------------------------------------------------- steady state
def steady_state_window(
    records: Sequence[RequestRecord], *, target: int | None
) -> tuple[float, float] | None:
    """The steady-state window on the records' clock (see module doc), or None."""
    spans = [(r.start_s, r.end_at_s, r.first_token_at_s) for r in records if r.end_at_s is not None]
    if not spans:
        return None
    last_send = max(s for s, _, _ in spans)
    if target is not None and target >= 1:
        events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
        # Ties: a departure before an arrival, so a slot freed and refilled at once is not
        # counted as one more in flight than there is.
        events.sort(key=lambda ev: (ev[0], ev[1]))
        n = 0
        t_sat: float | None = None
        for t, d in events:
            n += d
            if n >= target:
                t_sat = t
                break
        if t_sat is None:
            return None
        in_flight = [(s, e, f) for s, e, f in spans if s <= t_sat < e]
        start = max((f if f is not None else e) for _, e, f in in_flight)
    else:
        start = min(e for _, e, _ in spans)
    end = last_send
    if end <= start:
        return None
    return (start, end)


def tokens_between(records: Sequence[RequestRecord], t0: float, t1: float) -> float:
    """Output tokens of successful requests whose chunks arrived in ``[t0, t1]``."""
    total = 0.0
    for r in records:
        if not r.ok or r.first_token_at_s is None or r.output_tokens <= 0:
            continue
        times = [r.first_token_at_s]
        acc = r.first_token_at_s
        for gap in r.itl_s:
            acc += gap
            times.append(acc)
        if times[-1] < t0 or times[0] > t1:
            continue
        inside = sum(1 for t in times if t0 <= t <= t1)
        total += r.output_tokens * inside / len(times)
    return total


# --------------------------------------------------------------------------- energy
def energy_block(
    *,
    whole: Measurement,
    steady: Measurement | None,
    window_rel_s: tuple[float, float] | None,
    output_tokens: int,
    steady_tokens: float | None,
    completed: int,
    num_gpus: int,
    notes: Sequence[str] = (),
) -> Energy:
    """The ``energy`` block: per-token figures on the steady-state basis when it is usable."""
    notes = list(notes)
    use_steady = (
        steady is not None
        and steady_tokens is not None
        and steady_tokens > 0
        and steady.duration_s >= MIN_STEADY_STATE_S
    )
    if steady is not None and not use_steady:
        notes.append(
            f"steady-state window {steady.duration_s:.2f} s is shorter than "
            f"{MIN_STEADY_STATE_S:g} s or saw no tokens; per-token figures use the whole run"
        )
    elif steady is None:
        notes.append("no steady-state window (load never saturated); figures use the whole run")
    m = steady if use_steady and steady is not None else whole
    tokens = (
        float(steady_tokens) if use_steady and steady_tokens is not None else float(output_tokens)
    )
    if m.duration_s < RECOMMENDED_WINDOW_S:
        notes.append(
            f"energy window {m.duration_s:.2f} s is under {RECOMMENDED_WINDOW_S:g} s: "
            "counters update every ~0.1 s; use longer runs for published figures"
        )
    energy_j = m.total_energy_j
    jpt = energy_j / tokens if tokens > 0 else None
    tpj = tokens / energy_j if energy_j > 0 else None
    mean_tokens = output_tokens / completed if completed else 0.0
    idle_w = sum(m.idle_power_w.values()) if m.idle_power_w else None
    idle_share = None
    if idle_w is not None:
        gross = energy_j + (idle_w * m.duration_s if m.idle_subtracted else 0.0)
        idle_share = min(1.0, idle_w * m.duration_s / gross) if gross > 0 else None
    e: dict[str, Any] = {
        "source": m.source,
        "measured": m.measured,
        "idle_subtracted": m.idle_subtracted,
        "whole_run": whole.to_dict(),
        "steady_state": steady.to_dict() if steady is not None else None,
        "steady_state_window_s": list(window_rel_s) if window_rel_s is not None else None,
        "j_per_output_token": jpt,
        "output_tokens_per_j": tpj,
        "j_per_request": jpt * mean_tokens if jpt is not None and completed else None,
        "avg_power_w": m.avg_power_w,
        "peak_power_w": m.peak_power_w,
        "idle_power_w": idle_w,
        "idle_share": idle_share,
        "output_tokens_per_s_per_gpu": (
            tokens / m.duration_s / max(1, num_gpus) if m.duration_s > 0 else 0.0
        ),
        "basis": "steady_state" if use_steady else "whole_run",
        "basis_energy_j": energy_j,
        "basis_output_tokens": tokens,
        "notes": notes + list(m.warnings),
    }
    return e  # type: ignore[return-value]


def economics_block(energy: Energy, *, price_per_kwh: float, pue: float) -> Economics:
    """$ per million output tokens and output tokens per MWh on the energy block's basis.

    Facility energy = GPU (metered) energy x PUE; price applies to facility energy. Uses
    :mod:`perwatt.economics` when present so every area computes money the same way.
    """
    energy_j = float(energy.get("basis_energy_j", 0.0))  # type: ignore[arg-type]
    tokens = float(energy.get("basis_output_tokens", 0.0))  # type: ignore[arg-type]
    usd, tpmwh = _economics(energy_j, tokens, price_per_kwh, pue)
    return {
        "usd_per_million_output_tokens": usd,
        "output_tokens_per_mwh": tpmwh,
        "price_per_kwh": price_per_kwh,
        "pue": pue,
        "note": ECONOMICS_NOTE,
    }


def _economics(
    energy_j: float, tokens: float, price_per_kwh: float, pue: float
) -> tuple[float | None, float | None]:
    if energy_j <= 0 or tokens <= 0:
        return None, None

    return (
        cost_per_million_tokens_usd(energy_j, tokens, price_per_kwh=price_per_kwh, pue=pue),
        tokens_per_mwh(energy_j, tokens, pue=pue),
    )


def timeline_block(
    samples: Sequence[tuple[float, Mapping[str, float]]],
    t0: float,
    t1: float,
    max_points: int = 2000,
) -> dict[str, list[float]]:
    """Total power per sample in ``[t0, t1]`` relative to t0, thinned to ``max_points``."""
    pts = [(t - t0, sum(p.values())) for t, p in samples if t0 <= t <= t1 and p]
    if len(pts) > max_points:
        step = math.ceil(len(pts) / max_points)
        pts = pts[::step]
    return {"t_s": [round(t, 4) for t, _ in pts], "power_w": [round(p, 3) for _, p in pts]}
