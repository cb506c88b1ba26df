"""Tokens per joule of the built-in engine, precision by precision and batch by batch.

``perwatt bench --engine builtin`` lands here. Each (precision, batch) point is one controlled
experiment in which only the precision or the batch changes: same shape, same seeded weights, same
prompts, fixed output length (EOS ignored). One point, on the meter's clock::

    load ─▶ warm-up ─▶ ┌ round 1 ──────────────────┐ ┌ round 2 ─ … ┐ ─▶ accuracy guard
    (timed, (compile,   │ prefill │ decode × (N-1) │ │ prefill │ … │   (teacher-forced logits
     own     graphs;    └─────────┴────────────────┘ └─────────┴── ┘    vs the reference
     window) own window)          ▲ steady state ▲     ... until Σ decode ≥ min_window_s)

* Load and warm-up (first-call compilation, CUDA-graph capture, allocator growth) are measured
  in their own windows and reported separately, never mixed into the figures (gpt-fast runs a
  warm-up iteration for the same reason).
* The steady state is decode only: every slot decodes every step, so the batch is full for the
  whole window by construction. Rounds repeat until the decode windows add up to at least
  ``min_window_s`` (5 s on a GPU: the NVML counter updates about every 100 ms, so a 5 s window is
  quantized by < 2 %); prefill is measured and reported beside it.
* Tokens per joule = decode output tokens / decode energy over the same windows, with the label of
  the source (``nvml-counter``, ``rapl``, ``estimated``, ``simulated`` ...) written next to it.
* The accuracy guard runs the same prompts through the reference precision (bf16) and the point's
  engine, feeding both the reference's greedy tokens (teacher forcing) so every step compares
  logits on identical inputs: KL(ref || test), top-1 agreement, max relative error.

A point that cannot run (out of memory, a precision this device lacks) is written as a
``failed`` document whose reason names the fix, and the sweep goes on.

Each point becomes one bench result document (engine ``builtin``, load kind ``batch``), the same
schema the server benchmark writes, so ``perwatt compare`` and ``perwatt report`` read it as is.
"""

from __future__ import annotations

import csv
import gc
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perwatt._files import slug
from perwatt._signals import interrupt_reason, interrupts_deferred
from perwatt.bench.guard import DEFAULT_THRESHOLDS, GuardThresholds
from perwatt.bench.result import (
    BenchInterrupted,
    Conditions,
    new_result,
    run_conditions,
    write_result,
)
from perwatt.economics import (
    DEFAULT_PRICE_PER_KWH_USD,
    DEFAULT_PUE,
    check_price,
    check_pue,
    economics_for_run,
)
from perwatt.engine.oom import is_oom
from perwatt.engine.render import format_point
from perwatt.engine.render import format_summary as format_summary  # re-exported
from perwatt.errors import ConfigError, DataFormatError, PerwattError
from perwatt.meter.detect import open_sources
from perwatt.meter.meter import Measurement, Meter
from perwatt.meter.source import PowerSource, is_measured

if TYPE_CHECKING:  # resolve.py loads torch; this module must import without it
    from perwatt.engine.resolve import ResolvedModel

#: Decode window for figures meant for publication on a GPU (ARCHITECTURE.md: windows >= 5 s).
GPU_MIN_WINDOW_S = 5.0
#: Rounds are repeated at most this many times to reach the window (a guard, not a target).
MAX_ROUNDS = 10_000
#: Longest decode window per point, and idle measurement, accepted: an hour each (a larger value
#: is a unit mistake or a run nobody waits for).
MAX_MIN_WINDOW_S = 3600.0
MAX_IDLE_S = 3600.0

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class PointSpec:
    """One point of a sweep."""

    precision: str
    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {self.batch_size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AccuracyReference:
    """Teacher-forced reference run: the prompts, the forced tokens, and the logits per step."""

    precision: str
    prompts: list[list[int]]
    forced: list[list[int]]  # [steps][n]: token fed at each decode step (reference argmax)
    logits: list[Any]  # [steps + 1] tensors [n, V] (prefill, then each decode step), fp32 CPU


# ---------------------------------------------------------------------- helpers
def _model_slug(model: str) -> str:
    p = Path(model)
    return slug(p.name if p.exists() else model, default="model")


def make_prompts(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Seeded random token ids. Random weights have no vocabulary, so random ids are as
    representative as any text; real checkpoints see the same ids for every precision."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(n)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def failure_reason(e: BaseException, spec: PointSpec) -> str:
    """One line saying what failed and which knob fixes it."""
    if is_oom(e):
        return (
            f"out of memory at {spec.precision} batch {spec.batch_size}: use a smaller --batch, "
            "a lower-memory precision (int8, int4) or shorter --input-len/--output-len"
        )
    msg = _first_line(e)
    if isinstance(e, PerwattError):
        return f"{spec.precision} batch {spec.batch_size}: {msg}"
    return (
        f"{spec.precision} batch {spec.batch_size} failed ({type(e).__name__}: {msg}); "
        "try another --precision or --batch"
    )


def _prompts(n: int) -> str:
    return f"{n} prompt" if n == 1 else f"{n} prompts"


def reference_failure_reason(
    e: BaseException, precision: str, *, n_prompts: int, prompt_len: int, steps: int
) -> str:
    """One line saying why the accuracy reference is absent.

    The reference is not a benchmark point: it runs ``n_prompts`` teacher-forced prompts, so the
    message counts prompts and tokens, never a "batch" (which would read as a ``--batch`` point),
    and it never suggests ``--batch``, which does not size the reference.
    """
    what = (
        f"the {precision} accuracy reference ({_prompts(n_prompts)} of {prompt_len} tokens, "
        f"{steps} decode steps)"
    )
    if is_oom(e):
        return (
            f"out of memory running {what}: the {precision} model does not fit on this device; "
            "points are measured without the accuracy guard"
        )
    msg = _first_line(e)
    if isinstance(e, PerwattError):
        return f"{what}: {msg}"
    return f"{what} failed ({type(e).__name__}: {msg})"


def _release_device() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch else None
    if cuda is not None and cuda.is_available() and cuda.is_initialized():
        cuda.empty_cache()


def _argmax(logits: Any) -> Any:
    """Greedy next tokens as the engine's decode takes them (a device tensor: no host sync)."""
    return logits.argmax(dim=-1)


def _merge(name: str, parts: Sequence[Measurement]) -> Measurement:
    """Sum several windows (decode of every round) into one Measurement."""
    if not parts:
        raise ValueError("nothing to merge")
    energy: dict[str, float] = {}
    for m in parts:
        for dev, e in m.energy_j.items():
            energy[dev] = energy.get(dev, 0.0) + e
    duration = sum(m.duration_s for m in parts)
    total = sum(energy.values())
    peaks = [m.peak_power_w for m in parts if m.peak_power_w is not None]
    warnings: list[str] = []
    for m in parts:
        for w in m.warnings:
            if w not in warnings:
                warnings.append(w)
    if len(parts) > 1:
        warnings.append(f"sum of {len(parts)} decode windows (one per round; prefill excluded)")
    return Measurement(
        name=name,
        start_s=parts[0].start_s,
        end_s=parts[-1].end_s,
        duration_s=duration,
        energy_j=energy,
        total_energy_j=total,
        avg_power_w=total / duration if duration > 0 else 0.0,
        peak_power_w=max(peaks) if peaks else None,
        sources=dict(parts[0].sources),
        idle_subtracted=parts[0].idle_subtracted,
        idle_power_w=parts[0].idle_power_w,
        warnings=tuple(warnings),
    )


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    from perwatt.bench.stats import summarize  # numpy: kept off the CLI's start-up path

    return summarize(values)


def _empty_pct() -> dict[str, float | None]:
    return dict.fromkeys(("mean", "median", "p50", "p90", "p95", "p99", "min", "max"))


def _conditions(device: str, energy_label: str) -> Conditions:
    # GPU power limit and clocks only when the engine runs on a local GPU.
    return run_conditions(energy_source=energy_label, query_gpus=device.startswith("cuda"))


def _timeline(meter: Meter, t0: float, t1: float) -> dict[str, list[float]]:
    ts: list[float] = []
    ps: list[float] = []
    for s in meter.timeline():
        if t0 <= s.t_s <= t1 and s.power_w:
            ts.append(round(s.t_s - t0, 6))
            ps.append(round(sum(s.power_w.values()), 3))
    return {"t_s": ts, "power_w": ps}


def _base_doc(
    *,
    label: str,
    model: str,
    spec: PointSpec,
    input_len: int,
    output_len: int,
    seed: int,
    num_gpus: int,
    price_per_kwh: float,
    pue: float,
    device: str,
    energy_label: str,
) -> dict[str, Any]:
    return new_result(
        label=label,
        config={
            "engine": "builtin",
            "url": None,
            "endpoint": "completions",
            "model": model,
            "precision": spec.precision,
            "workload": {
                "kind": "random-tokens",
                "input_len": input_len,
                "output_len": output_len,
                "seed": seed,
                "ignore_eos": True,
            },
            "num_prompts": spec.batch_size,
            "input_len": input_len,
            "output_len": output_len,
            "request_rate": None,
            "burstiness": 1.0,
            "max_concurrency": spec.batch_size,
            "batch_size": spec.batch_size,
            "seed": seed,
            "goodput_slo_ms": None,
            "num_gpus": num_gpus,
            "price_per_kwh": price_per_kwh,
            "pue": pue,
        },
        load={"kind": "batch", "value": float(spec.batch_size)},
        conditions=_conditions(device, energy_label),
        metrics={
            "completed": 0,
            "failed": 0,
            "duration_s": 0.0,
            "request_throughput_rps": 0.0,
            "output_throughput_tok_s": 0.0,
            "total_token_throughput_tok_s": 0.0,
            "total_input_tokens": 0,
            "total_output_tokens": 0,
            "token_count_source": "engine",
            "ttft_ms": _empty_pct(),
            "tpot_ms": _empty_pct(),
            "itl_ms": _empty_pct(),
            "e2el_ms": _empty_pct(),
            "goodput_rps": None,
            "errors": {},
        },
        extra={"builtin": None},
    )


# ---------------------------------------------------------------------- engine driving
def require_engine_deps() -> None:
    """One-line error naming the extra when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConfigError("the built-in engine needs torch: pip install perwatt[engine]") from None


def _load(
    model: str | ResolvedModel, precision: str, *, batch: int, seq_len: int, **kw: Any
) -> Any:
    from perwatt.engine.generate import load_engine  # torch: loaded only when a point runs

    return load_engine(model, precision=precision, max_batch_size=batch, max_seq_len=seq_len, **kw)


def _quantized_source(
    model: str,
    precisions: Sequence[str] | None,
    *,
    device: str,
    seed: int,
    quantized_path: str | None,
) -> tuple[ResolvedModel, str, int, str | None]:
    """Where the points and the accuracy reference load from, ``model`` (or ``quantized_path``)
    being perhaps a ``perwatt quantize`` directory.

    Returns ``(the model the points load, resolved once; reference model, reference seed, why
    there is no reference or None)``; the resolved model's precision is the default one: the
    one the directory or quantized file holds, else bf16. The reference must hold the weights the
    directory was quantized from: the checkpoint it names, or the shape's random weights with
    the seed it was written with, drawn on the same device type (a CUDA generator draws other
    values than the CPU one); otherwise the points run without the accuracy guard and say why.
    """
    # Lazy: resolving reads config.json and safetensors metadata through torch-backed modules.
    from perwatt.engine.precision import resolve_device
    from perwatt.engine.resolve import resolve_model

    resolved = resolve_model(model, None, quantized_path)
    qm = resolved.quantized
    if qm is None:
        return resolved, model, seed, None
    other = [p for p in precisions or () if p != qm.precision]
    if other:
        raise ConfigError(
            f"{qm.directory} holds {qm.precision} weights (written by perwatt quantize), not "
            f"{other[0]}; bench it with --precision {qm.precision}"
        )
    skip: str | None = None
    ref_seed = seed if qm.seed is None else qm.seed
    if qm.source_kind == "checkpoint":
        if not (Path(qm.source) / "config.json").is_file():
            skip = (
                f"the checkpoint {qm.source} that {qm.directory} was quantized from is gone: "
                "no unquantized weights to compare with"
            )
    else:
        here = resolve_device(device).type
        if here != qm.weights_device:
            skip = (
                f"{qm.directory} holds random weights drawn on {qm.weights_device}, and the "
                f"reference on {here} would draw different ones: quantize with --device {here} "
                "for an accuracy guard"
            )
    return resolved, qm.source, ref_seed, skip


def _free_all(engine: Any, slots: Sequence[int]) -> None:
    for s in slots:
        engine.free(s)


def _decode_steps(engine: Any, slots: list[int], lengths: list[int], first: Any, steps: int) -> Any:
    """``steps`` greedy decode steps over ``slots`` without a host sync per step.

    The engine's slot ``decode`` takes host token lists (a sync per step, fine for a server that
    must stream each token). A benchmark of the steady state must not pay that, so it drives the
    engine's full-batch step (``Engine.decode_full``) directly, the way ``Engine.generate`` does;
    engines without it fall back to the slot API.
    """
    step = getattr(engine, "decode_full", None)
    if step is None:
        tok = first
        for _ in range(steps):
            tok = _argmax(engine.decode(slots, tok.tolist()))
        return tok
    import torch

    dev, mb = engine.device, engine.max_batch_size
    rows = torch.tensor(slots, dtype=torch.long, device=dev)
    tok = torch.zeros(mb, dtype=torch.long, device=dev)
    pos = torch.zeros(mb, dtype=torch.long, device=dev)
    write = torch.full((mb,), engine.max_seq_len, dtype=torch.long, device=dev)
    start = torch.tensor(lengths, dtype=torch.long, device=dev)
    pos[rows] = start
    write[rows] = start
    nxt = first
    for _ in range(steps):
        tok[rows] = nxt
        nxt = _argmax(step(tok, pos, write)[rows])
        pos[rows] += 1
        write[rows] += 1
    return nxt


def _round(
    engine: Any, prompts: list[list[int]], steps: int, meter: Meter, tag: str
) -> tuple[Measurement, Measurement]:
    """Prefill every slot, then ``steps`` decode steps over all of them; one window each."""
    slots = list(range(len(prompts)))
    try:
        with meter.window(f"prefill-{tag}") as pw:  # window edges synchronize the device
            first = _argmax(engine.prefill(slots, prompts))
        with meter.window(f"decode-{tag}") as dw:
            _decode_steps(engine, slots, [len(p) for p in prompts], first, steps)
    finally:
        _free_all(engine, slots)
    return pw.result, dw.result


def teacher_forced_logits(
    engine: Any, prompts: list[list[int]], forced: list[list[int]] | None, steps: int, chunk: int
) -> tuple[list[list[int]], list[Any]]:
    """Logits for ``prompts`` then ``steps`` decode steps, ``chunk`` prompts at a time.

    With ``forced`` None the engine's own greedy tokens are fed (and returned), which is how the
    reference run picks the tokens every other precision is then forced to follow.
    """
    import torch

    n = len(prompts)
    out_logits: list[list[Any]] = [[] for _ in range(steps + 1)]
    fed: list[list[int]] = [[0] * n for _ in range(steps)]
    for c0 in range(0, n, chunk):
        idx = list(range(c0, min(n, c0 + chunk)))
        slots = list(range(len(idx)))
        logits = engine.prefill(slots, [prompts[i] for i in idx])
        out_logits[0].append(logits.float().cpu())
        for k in range(steps):
            toks = [forced[k][i] for i in idx] if forced is not None else logits.argmax(-1).tolist()
            for j, i in enumerate(idx):
                fed[k][i] = int(toks[j])
            logits = engine.decode(slots, [int(t) for t in toks])
            out_logits[k + 1].append(logits.float().cpu())
        _free_all(engine, slots)
    return fed, [torch.cat(parts, dim=0) for parts in out_logits]


def reference_run(
    model: str,
    *,
    precision: str,
    n_prompts: int,
    prompt_len: int,
    steps: int,
    vocab_seed: int,
    load_kw: Mapping[str, Any],
) -> AccuracyReference:
    engine = _load(model, precision, batch=n_prompts, seq_len=prompt_len + steps + 1, **load_kw)
    try:
        prompts = make_prompts(n_prompts, prompt_len, _vocab_size(engine), vocab_seed + 1)
        forced, logits = teacher_forced_logits(engine, prompts, None, steps, n_prompts)
    finally:
        del engine
        _release_device()
    if not all(bool(t.isfinite().all()) for t in logits):
        raise DataFormatError(
            f"the {precision} reference logits contain NaN/inf: check the weights for NaN/inf "
            "(no accuracy guard without a finite reference)"
        )
    return AccuracyReference(precision=precision, prompts=prompts, forced=forced, logits=logits)


def _vocab_size(engine: Any) -> int:
    cfg = getattr(engine, "config", None) or getattr(engine, "cfg", None)
    v = getattr(cfg, "vocab_size", None)
    if not isinstance(v, int):
        raise ConfigError("the engine does not say its vocabulary size (engine.config.vocab_size)")
    return v


def accuracy_guard(engine: Any, ref: AccuracyReference, chunk: int) -> dict[str, Any]:
    """Compare ``engine`` with the reference on the reference's inputs (see module docstring).

    The logits come from the code path the benchmark timed (prefill, then cached decode steps
    with up to ``chunk`` = the point's batch rows), so a kernel that misbehaves only at some
    batch size shows up at that point; the metrics are :func:`perwatt.engine.accuracy.logit_metrics`.
    """
    import torch

    from perwatt.engine.accuracy import compare_logits  # torch, like every engine module below

    _, logits = teacher_forced_logits(engine, ref.prompts, ref.forced, len(ref.forced), chunk)
    if not all(bool(t.isfinite().all()) for t in logits):
        # The reference is finite (reference_run checks), so this precision overflowed.
        raise ConfigError(
            f"accuracy guard: {getattr(engine, 'precision', '')} logits contain NaN/inf where the "
            f"{ref.precision} "
            "reference has none (overflow at this precision): use bf16 or fp32"
        )
    n, steps = len(ref.prompts), len(ref.forced)
    note = (
        f"teacher-forced next-token logits vs {ref.precision} on the same weights: "
        f"{_prompts(n)} of {len(ref.prompts[0])} random tokens x {steps + 1} positions each, "
        f"prefill + cached decode, {_prompts(min(chunk, n))} at a time"
    )
    engine_note = str(getattr(engine, "note", "") or "")
    report = compare_logits(
        torch.cat(ref.logits, dim=0),
        torch.cat(logits, dim=0),
        precision=str(getattr(engine, "precision", "")),
        reference=ref.precision,
        note=f"{note}; {engine_note}" if engine_note else note,
    )
    return {
        "reference": ref.precision,
        "kl_mean": report.kl_mean,
        "top1_agreement": report.top1_agreement,
        "max_rel_err": report.max_rel_err,
        "exact_match": None,
        "logprob_agreement": None,
        "perplexity": None,
        "note": report.note,
        "positions": report.positions,
    }


def _write_requests_csv(
    json_path: Path,
    prefills: Sequence[Measurement],
    decodes: Sequence[Measurement],
    t0: float,
    *,
    batch: int,
    input_len: int,
    output_len: int,
) -> str:
    """One row per sequence per round, in the server benchmark's column names, so ``perwatt
    compare`` can bootstrap latency and cut the energy window into blocks. Every sequence of a
    round shares its round's times: they were prefilled and decoded together."""
    csv_path = json_path.with_name(json_path.name.removesuffix(".json") + ".requests.csv")
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    steps = output_len - 1
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "index",
                "start_s",
                "ttft_ms",
                "tpot_ms",
                "e2el_ms",
                "prompt_tokens",
                "output_tokens",
                "token_count_source",
                "finish_reason",
                "error_kind",
            ]
        )
        i = 0
        for p, d in zip(prefills, decodes, strict=True):
            ttft = p.duration_s * 1e3
            tpot = f"{d.duration_s / steps * 1e3:.6f}" if steps else ""
            e2el = (p.duration_s + d.duration_s) * 1e3  # as metrics.e2el_ms
            for _ in range(batch):
                row = [i, f"{p.start_s - t0:.6f}", f"{ttft:.6f}", tpot, f"{e2el:.6f}"]
                w.writerow([*row, input_len, output_len, "engine", "length", ""])
                i += 1
    tmp.replace(csv_path)
    return csv_path.name


# ---------------------------------------------------------------------- one point
def _measure_point(
    *,
    doc: dict[str, Any],
    path: Path,
    engine_kw: dict[str, Any],
    model: ResolvedModel,
    spec: PointSpec,
    input_len: int,
    output_len: int,
    seed: int,
    meter: Meter,
    min_window_s: float | None,
    warmup_steps: int | None,
    reference: AccuracyReference | None,
    num_gpus: int,
    price_per_kwh: float,
    pue: float,
) -> dict[str, Any]:
    b = spec.batch_size
    with meter.window("load") as lw:
        engine = _load(model, spec.precision, batch=b, seq_len=input_len + output_len, **engine_kw)
    try:
        device = str(getattr(engine, "device", engine_kw.get("device", "cpu")))
        info: dict[str, Any] = engine.info() if hasattr(engine, "info") else {}
        emulated = bool(getattr(engine, "emulated", False))
        engine_note = str(getattr(engine, "note", "") or "")
        on_gpu = device.startswith("cuda")
        window_s = (GPU_MIN_WINDOW_S if on_gpu else 0.0) if min_window_s is None else min_window_s
        prompts = make_prompts(b, input_len, _vocab_size(engine), seed)
        steps = output_len - 1  # the first output token comes from prefill
        wsteps = steps if warmup_steps is None else max(1, min(steps, warmup_steps))
        with meter.window("warmup") as ww:
            _round(engine, prompts, wsteps, meter, "warmup")
        write_result(path, doc)  # still "running": a crash from here on leaves a trace

        prefills: list[Measurement] = []
        decodes: list[Measurement] = []
        with meter.window("run") as rw:
            while True:
                pm, dm = _round(engine, prompts, steps, meter, str(len(decodes)))
                prefills.append(pm)
                decodes.append(dm)
                if sum(d.duration_s for d in decodes) >= window_s or len(decodes) >= MAX_ROUNDS:
                    break
        whole = rw.result
        run_t0 = whole.start_s
        accuracy = accuracy_guard(engine, reference, b) if reference is not None else None
    finally:
        del engine
        _release_device()

    rounds = len(decodes)
    decode = _merge("steady_state", decodes)
    prefill = _merge("prefill", prefills)
    decode_tokens = b * steps * rounds
    out_tokens = b * output_len * rounds
    in_tokens = b * input_len * rounds
    decode_tps = decode_tokens / decode.duration_s if decode.duration_s > 0 else 0.0
    e_dec = decode.total_energy_j
    label = decode.source
    ttft = [p.duration_s * 1e3 for p in prefills for _ in range(b)]
    tpot = [d.duration_s / steps * 1e3 for d in decodes for _ in range(b)] if steps else []
    e2el = [(p.duration_s + d.duration_s) * 1e3 for p, d in zip(prefills, decodes, strict=True)]
    duration = whole.duration_s
    warnings: list[str] = []
    if on_gpu and decode.duration_s < GPU_MIN_WINDOW_S:
        warnings.append(
            f"decode window {decode.duration_s:.2f} s < {GPU_MIN_WINDOW_S:g} s: "
            "too short for published figures (raise --min-window-s)"
        )
    if emulated:
        warnings.append(
            f"{spec.precision} is emulated on this device: numerics only, no energy claim"
            + (f" ({engine_note})" if engine_note else "")
        )
    if not is_measured(label):
        warnings.append(f"energy source is {label!r}: not a hardware measurement")
    idle_w: float | None = None
    idle_share: float | None = None
    if decode.idle_power_w is not None:
        # What the device would have drawn doing nothing over the same window, as a share of
        # what the decode drew: the part of J/token that batching or consolidation could save.
        idle_w = sum(decode.idle_power_w.values())
        if e_dec > 0:
            idle_share = min(1.0, idle_w * decode.duration_s / e_dec)
    doc["status"] = "complete"
    doc["conditions"] = _conditions(device, label)
    doc["metrics"].update(
        {
            "completed": b * rounds,
            "failed": 0,
            "duration_s": duration,
            "request_throughput_rps": b * rounds / duration if duration > 0 else 0.0,
            "output_throughput_tok_s": out_tokens / duration if duration > 0 else 0.0,
            "total_token_throughput_tok_s": (in_tokens + out_tokens) / duration
            if duration > 0
            else 0.0,
            "total_input_tokens": in_tokens,
            "total_output_tokens": out_tokens,
            "ttft_ms": _summary(ttft),
            "tpot_ms": _summary(tpot),
            "itl_ms": _summary(tpot),  # one token per step for every sequence: ITL == TPOT
            "e2el_ms": _summary([x for x in e2el for _ in range(b)]),
        }
    )
    doc["energy"] = {
        "source": label,
        "measured": decode.measured,
        "idle_subtracted": decode.idle_subtracted,
        "whole_run": whole.to_dict(),
        "steady_state": decode.to_dict(),
        "steady_state_window_s": [decodes[0].start_s - run_t0, decodes[-1].end_s - run_t0],
        "j_per_output_token": e_dec / decode_tokens if decode_tokens else None,
        "output_tokens_per_j": decode_tokens / e_dec if e_dec > 0 else None,
        "j_per_request": whole.total_energy_j / (b * rounds),
        "avg_power_w": decode.avg_power_w,
        "peak_power_w": decode.peak_power_w,
        "idle_power_w": idle_w,
        "idle_share": idle_share,
        "output_tokens_per_s_per_gpu": decode_tps / max(1, num_gpus),
        "basis": "steady_state",
    }
    doc["economics"] = economics_for_run(
        e_dec, decode_tokens, price_per_kwh=price_per_kwh, pue=pue
    ).to_dict()
    doc["accuracy"] = accuracy
    doc["timeline"] = _timeline(meter, run_t0, whole.end_s)  # same origin as the window above
    doc["requests_csv"] = _write_requests_csv(
        path, prefills, decodes, run_t0, batch=b, input_len=input_len, output_len=output_len
    )
    torch = sys.modules.get("torch")
    doc["builtin"] = {
        "device": device,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        # how idle OpenMP threads wait: it changes CPU decode speed (BENCHMARKS.md section 10)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "emulated": emulated,
        "engine": info,
        "rounds": rounds,
        "round_decode_s": [d.duration_s for d in decodes],
        "min_window_s": window_s,
        "load": {"duration_s": lw.result.duration_s, "energy_j": lw.result.total_energy_j},
        "warmup": {
            "decode_steps": wsteps,
            "duration_s": ww.result.duration_s,
            "energy_j": ww.result.total_energy_j,
            "source": ww.result.source,
        },
        "prefill": {
            "tokens": in_tokens,
            "duration_s": prefill.duration_s,
            "tokens_per_s": in_tokens / prefill.duration_s if prefill.duration_s > 0 else None,
            "energy_j": prefill.total_energy_j,
            "j_per_input_token": prefill.total_energy_j / in_tokens,
            "source": prefill.source,
        },
        "decode": {
            "tokens": decode_tokens,
            "steps": steps * rounds,
            "duration_s": decode.duration_s,
            "tokens_per_s": decode_tps,
            "energy_j": e_dec,
            "tokens_per_j": decode_tokens / e_dec if e_dec > 0 else None,
            "source": label,
        },
        "warnings": warnings,
    }
    return doc


# ---------------------------------------------------------------------- the sweep
def _open_meter(
    energy_source: str | PowerSource | Sequence[PowerSource],
    sample_interval_s: float,
    select: str | None = None,
) -> Meter:
    if isinstance(energy_source, str):
        sources: Sequence[PowerSource] = open_sources(energy_source, select=select)
    elif isinstance(energy_source, PowerSource):
        sources = [energy_source]
    else:
        sources = list(energy_source)
    return Meter(sources, sample_interval_s=sample_interval_s)


def parse_list(text: str | Sequence[Any], what: str) -> list[str]:
    items = text.split(",") if isinstance(text, str) else [str(x) for x in text]
    out = [s.strip() for s in items if s.strip()]
    if not out:
        raise ConfigError(f"--{what} needs at least one value")
    return out


def run_builtin_bench(
    *,
    model: str,
    precisions: str | Sequence[str] | None,
    batches: str | Sequence[int],
    input_len: int = 128,
    output_len: int = 256,
    result_dir: str | Path,
    energy_source: str | PowerSource | Sequence[PowerSource] = "auto",
    energy_select: str | None = None,
    device: str = "auto",
    seed: int = 0,
    price_per_kwh: float = DEFAULT_PRICE_PER_KWH_USD,
    pue: float = DEFAULT_PUE,
    num_gpus: int = 1,
    label: str | None = None,
    min_window_s: float | None = None,
    warmup_steps: int | None = 16,
    reference_precision: str | None = None,
    accuracy_prompts: int = 4,
    accuracy_steps: int = 8,
    quantized_path: str | None = None,
    sample_interval_s: float = 0.1,
    idle_seconds: float = 0.0,
    progress: Progress | None = None,
    guard: GuardThresholds = DEFAULT_THRESHOLDS,
) -> list[Path]:
    """Measure every (precision, batch) point; write one result document each; return paths.

    ``energy_source`` is a ``--source`` spec (``auto``, ``nvml``, ``rapl``, ``simulated`` ...;
    ``auto`` falls back to ``estimated`` on a machine without any energy counter) or already-open
    sources; ``energy_select`` picks the GPUs of a ``dcgm:``/``prometheus:`` spec (``--select``).
    ``min_window_s`` defaults to 5 s on a GPU and one round on the CPU. The accuracy
    reference defaults to bf16 on a GPU and fp32 on the CPU. ``idle_seconds > 0`` measures idle
    power first (nothing loaded) and reports ``energy.idle_power_w`` and ``idle_share``; idle is
    never subtracted from the figures.

    ``model`` may be a directory written by ``perwatt quantize``: its points load the saved
    weights, ``precisions`` None means its precision (bf16 otherwise), and the accuracy
    reference is the checkpoint or seeded shape it was quantized from. A ``quantized_path``
    file (``save_quantized``) likewise defaults ``precisions`` to the precision it records.
    """
    say = progress or (lambda line: print(line, file=sys.stderr))
    precs = None if precisions is None else [p.lower() for p in parse_list(precisions, "precision")]
    try:
        bs = [
            int(x)
            for x in parse_list(batches if isinstance(batches, str) else list(batches), "batch")
        ]
    except ValueError:
        raise ConfigError(
            f"--batch must be integers separated by commas, got {batches!r}"
        ) from None
    if input_len < 1 or output_len < 2:
        raise ConfigError(
            f"--input-len must be >= 1 and --output-len >= 2, got {input_len} and {output_len}"
        )
    # Every option is checked before anything loads: a model load takes seconds to minutes,
    # and NaN passes "< 0" (a NaN window never fills: the rounds ran until MAX_ROUNDS).
    if min_window_s is not None and not 0 <= min_window_s <= MAX_MIN_WINDOW_S:
        raise ConfigError(
            f"--min-window-s must be a number of seconds in [0, {MAX_MIN_WINDOW_S:g}], "
            f"got {min_window_s}"
        )
    if num_gpus < 1:
        raise ConfigError(f"--num-gpus must be >= 1, got {num_gpus}")
    if not 0 <= idle_seconds <= MAX_IDLE_S:
        raise ConfigError(
            f"--idle-seconds must be a number of seconds in [0, {MAX_IDLE_S:g}], got {idle_seconds}"
        )
    check_price(price_per_kwh)
    check_pue(pue)
    require_engine_deps()
    # torch loads here, after require_engine_deps() has said what to install without it.
    from perwatt.engine.precision import PRECISIONS, resolve_device

    resolve_device(device)  # a CUDA device on a machine without one fails here, not per point
    for p in [*(precs or ()), *([reference_precision] if reference_precision else [])]:
        if p.strip().lower() not in PRECISIONS:
            flag = "--precision" if p in (precs or ()) else "reference precision"
            raise ConfigError(f"{flag} {p!r} is unknown; known: {', '.join(PRECISIONS)}")
    # An unknown shape name or an unreadable config.json would fail every point the same way:
    # say so once, before metering, instead of writing one failed document per point.
    resolved, ref_model, ref_seed, ref_skip = _quantized_source(
        model, precs, device=device, seed=seed, quantized_path=quantized_path
    )
    qm = resolved.quantized
    qpath = resolved.quantized_path
    max_positions = resolved.cfg.max_position_embeddings
    if input_len + output_len > max_positions:
        raise ConfigError(
            f"--input-len {input_len} + --output-len {output_len} = {input_len + output_len} "
            f"tokens exceed the model's {max_positions} positions (max_position_embeddings)"
        )
    if precs is None:
        precs = [resolved.precision]
    specs = [PointSpec(precision=p, batch_size=b) for p in precs for b in bs]
    out_dir = Path(result_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_kw: dict[str, Any] = {"device": device, "seed": seed}
    base = label or f"builtin-{_model_slug(model)}"
    paths: list[Path] = []

    meter = _open_meter(energy_source, sample_interval_s, energy_select)
    with meter:
        energy_label = _meter_label(meter)
        say(f"perwatt bench (builtin): {model}, energy source: {energy_label}")
        if idle_seconds > 0:
            idle = meter.idle_baseline(idle_seconds)
            say(
                f"  idle power: {idle.total_power_w:.1f} W over {idle.duration_s:.1f} s ({energy_label})"
            )
        reference: AccuracyReference | None = None
        ref_error: str | None = None
        if reference_precision is None:
            reference_precision = default_reference_precision(device)
        if ref_skip is not None:
            ref_error = ref_skip
            say(f"  accuracy reference unavailable: {ref_error}")
        elif accuracy_prompts > 0:
            ref_len = max(1, min(input_len, 64))
            ref_steps = max(0, min(output_len - 1, accuracy_steps))
            try:
                reference = reference_run(
                    ref_model,
                    precision=reference_precision,
                    n_prompts=accuracy_prompts,
                    prompt_len=ref_len,
                    steps=ref_steps,
                    vocab_seed=seed,
                    load_kw={"device": device, "seed": ref_seed, "compile": False},
                )
            except Exception as e:  # the sweep still measures energy; accuracy says why not
                _release_device()
                ref_error = reference_failure_reason(
                    e,
                    reference_precision,
                    n_prompts=accuracy_prompts,
                    prompt_len=ref_len,
                    steps=ref_steps,
                )
                say(f"  accuracy reference unavailable: {ref_error}")
        for spec in specs:
            point_label = f"{base}-{spec.precision}"
            path = out_dir / f"{slug(point_label, default='model')}_b{spec.batch_size}.json"
            doc = _base_doc(
                label=point_label,
                model=model,
                spec=spec,
                input_len=input_len,
                output_len=output_len,
                seed=seed,
                num_gpus=num_gpus,
                price_per_kwh=price_per_kwh,
                pue=pue,
                device=str(device),
                energy_label=energy_label,
            )
            try:
                doc = _measure_point(
                    doc=doc,
                    path=path,
                    engine_kw=engine_kw,
                    model=resolved,
                    spec=spec,
                    input_len=input_len,
                    output_len=output_len,
                    seed=seed,
                    meter=meter,
                    min_window_s=min_window_s,
                    warmup_steps=warmup_steps,
                    reference=reference,
                    num_gpus=num_gpus,
                    price_per_kwh=price_per_kwh,
                    pue=pue,
                )
                if qm is not None:
                    doc["builtin"]["quantized"] = qm.to_dict()
                if qpath is not None:
                    # The engine reports its base weights ("random" for a shape); the values
                    # that ran are the saved quantized ones.
                    doc["builtin"]["engine"]["weights"] = qpath
                if doc["accuracy"] is None and ref_error is not None:
                    doc["builtin"]["accuracy_error"] = ref_error
                say("  " + format_point(doc, guard))
            except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (perwatt._signals)
                doc["status"] = "failed"  # no figures: its measurement window never closed
                doc["partial_reason"] = f"{interrupt_reason(e)} before this point finished"
                with interrupts_deferred():  # a second signal must not cut this write short
                    write_result(path, doc)
                paths.append(path)
                raise BenchInterrupted(paths) from e
            except Exception as e:
                _release_device()
                doc["status"] = "failed"
                doc["partial_reason"] = failure_reason(e, spec)
                say(f"  {spec.precision} batch {spec.batch_size}: FAILED: {doc['partial_reason']}")
            write_result(path, doc)
            paths.append(path)
    return paths


def default_reference_precision(device: str) -> str:
    """bf16 on a GPU, fp32 on the CPU (:func:`perwatt.engine.accuracy.reference_precision`)."""
    # torch: this module itself imports without it.
    from perwatt.engine.accuracy import reference_precision
    from perwatt.engine.precision import resolve_device

    return reference_precision(resolve_device(device))


def _meter_label(meter: Meter) -> str:
    labels = sorted(
        {s.energy_label if s.has_energy_counter else s.power_label for s in meter.sources}
    )
    return labels[0] if len(labels) == 1 else f"mixed({','.join(labels)})"
