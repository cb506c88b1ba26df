"""``run_server_bench``: tokens per joule of an OpenAI-compatible server at one or more loads.

One call::

    check the server (GET /models) and the workload  ── errors here write no file
    open the power sources, start the meter; optional idle baseline (--idle-seconds)
    for each load level (a sweep over --request-rate or --max-concurrency):
        write <label>_<level>.json with status "running"; open <label>_<level>.requests.csv
        meter window "whole_run" ── send every request ── close the window
            each finished request: one CSV row; every ``checkpoint_s``: the JSON rewritten
        steady-state window from the request timings → Meter.measure_between
        final JSON: status complete | complete-with-failures (some requests failed or were
        truncated) | partial (Ctrl-C/SIGTERM, crash, server gone) | failed (no success)

A run with failed or truncated requests says so in its status, its summary and the exit code of
``perwatt bench``: :func:`exit_code` is 1 when the failed fraction of any level exceeds
``max_failed_fraction`` (0 by default: any failure fails the command).

Energy comes from whatever :func:`perwatt.meter.detect.open_sources` opens for the spec (local
NVML, ``dcgm:URL``/``prometheus:URL`` for a remote server's GPUs, ``PERWATT_DCGM_URL`` with
``auto``); a simulated or replayed source is labelled so in every figure. ``auto`` with a server
that is not on this machine is refused: it would meter the wrong hardware. When the source is
:class:`~perwatt.meter.SimulatedSource`, its load follows the benchmark's requests in flight (a
simulated GPU busy in proportion to the batch) — a demo model, never a measurement; against
perwatt's own test server, ``simulated`` meters the power model that server serves instead
(:mod:`perwatt.meter.served`), which knows its precision and batch.
"""

from __future__ import annotations

import asyncio
import csv
import ipaddress
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import urlsplit

from perwatt._files import slug
from perwatt._signals import interrupt_reason, interrupts_deferred
from perwatt.bench import metrics as M
from perwatt.bench.client import Endpoint, OpenAIClient, RequestRecord, resolve_model
from perwatt.bench.guard import DEFAULT_THRESHOLDS, GuardThresholds, judge
from perwatt.bench.loadgen import LoadLevel, LoadRun, process_cpu_s, run_level
from perwatt.bench.result import (
    BenchInterrupted,
    Conditions,
    GoodputSLO,
    LoadKind,
    load_result,
    new_result,
    run_conditions,
    write_result,
)
from perwatt.bench.workload import (
    LengthDist,
    Workload,
    check_synthetic_size,
    from_file,
    synthetic,
)
from perwatt.economics import DEFAULT_PRICE_PER_KWH_USD, check_price, check_pue
from perwatt.errors import ConfigError, FieldError
from perwatt.meter.detect import close_sources, open_sources
from perwatt.meter.meter import Measurement, Meter
from perwatt.meter.served import probe_served_power
from perwatt.meter.simulated import SimulatedSource
from perwatt.meter.source import PowerSource, mixed_label

CSV_COLUMNS = (
    "index",
    "start_s",
    "ttft_ms",
    "tpot_ms",
    "e2el_ms",
    "itl_mean_ms",
    "n_itl",
    "prompt_tokens",
    "prompt_tokens_source",
    "output_tokens",
    "output_tokens_chunks",
    "output_tokens_usage",
    "token_count_source",
    "finish_reason",
    "http_status",
    "error_kind",
    "error_detail",
    "itl_ms",  # every inter-token gap, space-separated (compare bootstraps over them)
)


#: Longest per-request timeout accepted: a day (a larger value is a unit mistake, ms for s).
MAX_TIMEOUT_S = 86_400.0
#: Longest idle-power measurement accepted: an hour.
MAX_IDLE_S = 3600.0
#: Synthetic prompt words from which building the workload is announced (a few seconds).
_SAY_BUILDING_FROM = 2_000_000


def _default_price() -> float:
    return float(DEFAULT_PRICE_PER_KWH_USD)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerBenchConfig:
    """Everything one ``perwatt bench --engine server`` invocation needs."""

    url: str
    endpoint: Endpoint = "completions"
    model: str | None = None
    api_key: str | None = None
    stream: bool = True
    # workload
    dataset: Path | None = None
    dataset_format: Literal["auto", "sharegpt", "jsonl"] = "auto"
    num_prompts: int = 100
    input_len: int = 1024  # vLLM's --random-input-len default
    output_len: int | None = 128  # vLLM's --random-output-len default
    input_dist: str = "fixed"
    output_dist: str = "fixed"
    ignore_eos: bool = True
    # load
    request_rates: tuple[float | None, ...] = (None,)  # None = inf
    burstiness: float = 1.0
    max_concurrencies: tuple[int | None, ...] = (None,)
    goodput: GoodputSLO | None = None
    # output
    result_dir: Path = Path("bench-results")
    label: str | None = None
    seed: int = 0
    # energy and money
    energy_source: str = "auto"
    energy_select: str | None = None  # GPUs of a dcgm:/prometheus: source (--energy-select)
    sources: tuple[PowerSource, ...] | None = None  # overrides energy_source (tests, library)
    idle_seconds: float = 0.0
    subtract_idle: bool = False
    num_gpus: int = 1
    price_per_kwh: float = field(default_factory=_default_price)
    pue: float = 1.0
    # mechanics
    timeout_s: float = 600.0
    #: failed (or truncated) requests per level above which the run fails the command
    max_failed_fraction: float = 0.0
    extra_body: Mapping[str, Any] | None = None
    sample_interval_s: float = 0.1
    checkpoint_s: float = 2.0
    progress: bool = False
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        # Errors name this config's fields; `perwatt bench` says its flags (cli/options.py).
        if self.endpoint not in ("completions", "chat"):
            raise FieldError(
                f"{{f}} must be completions or chat, got {self.endpoint!r}", f="endpoint"
            )
        if self.num_prompts < 1:
            raise FieldError(f"{{f}} must be >= 1, got {self.num_prompts}", f="num_prompts")
        # Sizes first: a typo like --input-len 100000000 took minutes and gigabytes to build.
        check_synthetic_size(
            num_prompts=self.num_prompts,
            input_len=self.input_len if self.dataset is None else 1,
            output_len=self.output_len,
        )
        if self.num_gpus < 1:
            raise FieldError(f"{{f}} must be >= 1, got {self.num_gpus}", f="num_gpus")
        if not (0 <= self.idle_seconds <= MAX_IDLE_S):
            # nan slips past "< 0" and then skips the idle measurement without a word.
            raise FieldError(
                f"{{f}} must be a finite number >= 0 (at most {MAX_IDLE_S:g} s), "
                f"got {self.idle_seconds}",
                f="idle_seconds",
            )
        if self.subtract_idle and self.idle_seconds <= 0:
            raise FieldError(
                "{s} needs an idle baseline: pass {i} N", s="subtract_idle", i="idle_seconds"
            )
        if not (0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise FieldError(
                f"{{f}} must be > 0 and at most {MAX_TIMEOUT_S:g} s (a day), got {self.timeout_s}",
                f="timeout_s",
            )
        if not 0 <= self.max_failed_fraction <= 1:
            raise FieldError(
                "{f} must be a fraction in [0, 1] (0: any failed request "
                f"fails the run), got {self.max_failed_fraction}",
                f="max_failed_fraction",
            )
        check_pue(self.pue)
        check_price(self.price_per_kwh)
        if not self.request_rates or not self.max_concurrencies:
            raise FieldError(
                "give at least one {r} and {c} value", r="request_rates", c="max_concurrencies"
            )
        if len(self.request_rates) > 1 and len(self.max_concurrencies) > 1:
            raise FieldError(
                "sweep one of {r} or {c} at a time (results are matched by one load axis)",
                r="request_rates",
                c="max_concurrencies",
            )
        if self.dataset is None and self.output_len is None:
            raise FieldError("{f} is needed for a synthetic workload", f="output_len")
        self.levels()  # validates each level

    def levels(self) -> list[LoadLevel]:
        return [
            LoadLevel(request_rate=r, burstiness=self.burstiness, max_concurrency=c)
            for r in self.request_rates
            for c in self.max_concurrencies
        ]


# --------------------------------------------------------------------------- helpers
def _unique(path: Path) -> Path:
    """``path``, or ``name-2.json``, ``name-3.json`` … if taken: never overwrite a result."""
    if not path.exists():
        return path
    stem = path.name.removesuffix(".json")
    for i in range(2, 10_000):
        cand = path.with_name(f"{stem}-{i}.json")
        if not cand.exists():
            return cand
    raise ConfigError(f"too many results named {stem} in {path.parent}")


def _source_label(sources: Sequence[PowerSource]) -> str:
    return mixed_label(s.energy_label if s.has_energy_counter else s.power_label for s in sources)


def _is_local_host(host: str) -> bool:
    if host in ("localhost", socket.gethostname(), "0.0.0.0"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _open_sources(config: ServerBenchConfig) -> tuple[tuple[PowerSource, ...], bool]:
    """The sources, and whether we opened them (and so must close them)."""
    if config.sources is not None:
        if not config.sources:
            raise ConfigError("sources= is empty")
        return tuple(config.sources), False

    if config.energy_source.strip().lower() == "simulated":
        # perwatt's test server simulates its own power (it knows its precision and batch):
        # meter that model. Any other server gets the client-side model of requests in flight.
        served = probe_served_power(config.url)
        if served is not None:
            return (served,), True
    host = urlsplit(config.url).hostname or ""
    if (
        config.energy_source.strip().lower() == "auto"
        and not os.environ.get("PERWATT_DCGM_URL")
        and not _is_local_host(host)
    ):
        # Auto-detection sees this machine's GPUs/CPU, not the remote server's: J/token would be
        # a silent wrong number. Make the user say which power the tokens cost.
        raise ConfigError(
            f"the server {host} is not on this machine, so --energy-source auto would meter the "
            "wrong hardware; pass --energy-source dcgm:URL or prometheus:URL for the server's "
            "GPUs (or set PERWATT_DCGM_URL), or name a local source (nvml, rapl) if the server "
            "really runs here"
        )

    return tuple(open_sources(config.energy_source, select=config.energy_select)), True


def _build_workload(config: ServerBenchConfig) -> Workload:
    if config.dataset is not None:
        return from_file(
            config.dataset,
            num_prompts=config.num_prompts,
            seed=config.seed,
            output_len=config.output_len,
            fmt=config.dataset_format,
        )
    assert config.output_len is not None  # checked in __post_init__
    return synthetic(
        num_prompts=config.num_prompts,
        input_len=config.input_len,
        output_len=config.output_len,
        seed=config.seed,
        input_dist=LengthDist.parse(config.input_dist),
        output_dist=LengthDist.parse(config.output_dist),
    )


def _fmt(v: float | None, nd: int = 3) -> str:
    return "" if v is None else f"{v * 1e3:.{nd}f}"


def _csv_row(rec: RequestRecord, t0: float) -> list[object]:
    itl_mean = sum(rec.itl_s) / len(rec.itl_s) if rec.itl_s else None
    return [
        rec.index,
        f"{rec.start_s - t0:.6f}",
        _fmt(rec.ttft_s),
        _fmt(rec.tpot_s),
        _fmt(rec.e2el_s),
        _fmt(itl_mean),
        len(rec.itl_s),
        rec.prompt_tokens,
        rec.prompt_tokens_source,
        rec.output_tokens,
        rec.output_tokens_chunks,
        "" if rec.output_tokens_usage is None else rec.output_tokens_usage,
        rec.token_count_source,
        rec.finish_reason or "",
        "" if rec.http_status is None else rec.http_status,
        rec.error_kind or "",
        rec.error_detail,
        " ".join(f"{x * 1e3:.3f}" for x in rec.itl_s),
    ]


# --------------------------------------------------------------------------- one level
@dataclass(slots=True)
class _LevelState:
    level: LoadLevel
    json_path: Path
    csv_path: Path
    doc: dict[str, Any]
    records: list[RequestRecord] = field(default_factory=list)
    run: LoadRun | None = None
    cpu0: float = 0.0
    wall0: float = 0.0


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self._p: Any = None
        self._task: Any = None
        if not enabled:
            return
        # lazy: rich costs ~30 ms of start-up and only this output uses it
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._p.start()
        self._task = self._p.add_task(desc, total=total, errors=0)

    def advance(self, errors: int) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, errors=errors)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def _skeleton(
    config: ServerBenchConfig,
    *,
    label: str,
    model: str,
    workload: Workload,
    level: LoadLevel,
    conditions: Conditions,
    csv_name: str,
) -> dict[str, Any]:
    kind: LoadKind
    value: float
    if level.request_rate is not None:
        kind, value = "rate", float(level.request_rate)
    else:
        kind, value = "concurrency", float(level.saturation_target(len(workload.requests)) or 0)
    return new_result(
        label=label,
        config={
            "engine": "server",
            "url": config.url,
            "endpoint": config.endpoint,
            "model": model,
            "precision": None,
            "workload": workload.describe(),
            "num_prompts": len(workload.requests),
            "input_len": config.input_len if workload.kind == "synthetic" else None,
            "output_len": config.output_len,
            "request_rate": level.request_rate,
            "burstiness": level.burstiness,
            "max_concurrency": level.max_concurrency,
            "batch_size": None,
            "seed": config.seed,
            "goodput_slo_ms": dict(config.goodput) if config.goodput else None,
            "num_gpus": config.num_gpus,
            "price_per_kwh": config.price_per_kwh,
            "pue": config.pue,
            "stream": config.stream,
            "ignore_eos": config.ignore_eos and workload.fixed_output,
            "timeout_s": config.timeout_s,
            "max_failed_fraction": config.max_failed_fraction,
        },
        load={"kind": kind, "value": value},
        conditions=conditions,
        metrics=M.run_metrics([], duration_s=0.0, slo=config.goodput),
        requests_csv=csv_name,
    )


def _drive_simulated(sources: Sequence[PowerSource], target: int) -> Callable[[int], None] | None:
    sims = [s for s in sources if isinstance(s, SimulatedSource)]
    if not sims:
        return None

    def on_inflight(n: int) -> None:
        load = min(1.0, n / target)
        for s in sims:
            s.set_load(load)

    return on_inflight


def _finish_level(
    st: _LevelState,
    *,
    config: ServerBenchConfig,
    meter: Meter,
    whole: Measurement | None,
    clock_offset_s: float,
    status: str,
    reason: str | None,
) -> None:
    """Compute every figure from what was recorded and write the final document."""
    run = st.run
    recs = st.records
    t0 = run.start_s if run is not None else 0.0
    t_end = run.end_s if run is not None and run.end_s else t0
    duration = max(0.0, t_end - t0)
    cpu = process_cpu_s() - st.cpu0
    met: dict[str, Any] = dict(
        M.run_metrics(recs, duration_s=duration, slo=config.goodput, client_cpu_s=cpu)
    )
    doc = st.doc
    doc["metrics"] = met
    completed = met["completed"]
    if status == "complete" and completed == 0:
        status = "failed"
        kinds = ", ".join(f"{k}: {n}" for k, n in met["errors"].items())
        reason = f"every request failed ({kinds})" + _truncation_cause(met, st.level)
    elif status == "complete":
        # Server gone: the run ended with requests that could not even connect.
        last = max(recs, key=lambda r: r.start_s) if recs else None
        if last is not None and last.error_kind == "connect_error":
            status, reason = "partial", "the server stopped accepting connections during the run"
        elif met["failed"]:
            # The figures cover the answered requests only; never call such a run complete.
            status = "complete-with-failures"
            kinds = ", ".join(f"{k} x{n}" for k, n in met["errors"].items())
            total = completed + met["failed"]
            reason = (
                f"{met['failed']} of {total} requests failed ({kinds}); figures cover the "
                f"{completed} answered in full" + _truncation_cause(met, st.level)
            )
    if whole is not None and duration > 0:
        target = st.level.saturation_target(len(recs))
        win = M.steady_state_window(recs, target=target)
        steady = None
        steady_tokens = None
        win_rel = None
        if win is not None:
            steady = meter.measure_between(
                win[0] + clock_offset_s, win[1] + clock_offset_s, name="steady_state"
            )
            steady_tokens = M.tokens_between(recs, win[0], win[1])
            win_rel = (win[0] - t0, win[1] - t0)
        energy = M.energy_block(
            whole=whole,
            steady=steady,
            window_rel_s=win_rel,
            output_tokens=met["total_output_tokens"],
            steady_tokens=steady_tokens,
            completed=completed,
            num_gpus=config.num_gpus,
        )
        doc["energy"] = energy
        cut = {**whole.partial_devices, **(steady.partial_devices if steady else {})}
        if cut and status == "complete":
            # Stale or missing telemetry for some GPUs: J/token would be silently low.
            status, reason = "partial", "energy: " + "; ".join(sorted(set(cut.values())))
        doc["economics"] = M.economics_block(
            energy, price_per_kwh=config.price_per_kwh, pue=config.pue
        )
        samples = [(s.t_s, s.power_w) for s in meter.timeline()]
        doc["timeline"] = M.timeline_block(samples, t0 + clock_offset_s, t_end + clock_offset_s)
    doc["status"] = status
    doc["partial_reason"] = reason
    write_result(st.json_path, doc)


def _truncation_cause(met: Mapping[str, Any], level: LoadLevel) -> str:
    """What likely cut answers short, when some were truncated; else ''."""
    if not met["errors"].get("truncated"):
        return ""
    if level.max_concurrency == 1:
        return (
            "; truncated: answers ended without a finish_reason before the length asked for "
            "at concurrency 1 (the server stopped them: check its log, e.g. its context length)"
        )
    return (
        "; truncated: answers ended without a finish_reason before the length asked for, "
        "likely a server without parallel slots at concurrency > 1 (it cuts the answer in "
        "flight when the next request arrives): rerun with --max-concurrency 1 or give the "
        "server more slots (llama.cpp: --parallel N)"
    )


def failed_fraction(doc: Mapping[str, Any]) -> float:
    """Failed (and truncated) requests over all requests of one result; 0 without requests."""
    m = doc["metrics"]
    total = m["completed"] + m["failed"]
    return m["failed"] / total if total else 0.0


def _max_failed_fraction(doc: Mapping[str, Any]) -> float:
    limit = doc["config"].get("max_failed_fraction")
    return float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) else 0.0


def exit_code(paths: Sequence[Path]) -> int:
    """``perwatt bench``'s exit code over its result files: 1 when a level failed, stopped early
    or has more failed requests than its ``max_failed_fraction`` allows, else 0."""
    for p in paths:
        d = load_result(p)
        if d["status"] in ("failed", "partial"):
            return 1
        if failed_fraction(d) > _max_failed_fraction(d):
            return 1
    return 0


def _checkpoint(st: _LevelState, config: ServerBenchConfig) -> None:
    """Rewrite the running document with the metrics so far (energy comes at the end)."""
    run = st.run
    if run is None:
        return
    dur = time.perf_counter() - run.start_s
    st.doc["metrics"] = M.run_metrics(st.records, duration_s=dur, slo=config.goodput)
    write_result(st.json_path, st.doc)


def _run_level(
    config: ServerBenchConfig,
    *,
    level: LoadLevel,
    label: str,
    model: str,
    workload: Workload,
    meter: Meter,
    sources: Sequence[PowerSource],
    conditions: Conditions,
    log: Callable[[str], None],
    written: list[Path],
) -> Path:
    """Run one level; its result file is appended to ``written`` as soon as it exists."""
    try:
        config.result_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create --result-dir {config.result_dir} ({e.strerror or e}); "
            "choose another directory"
        ) from None
    json_path = _unique(config.result_dir / f"{label}_{level.tag()}.json")
    csv_path = json_path.with_name(json_path.name.removesuffix(".json") + ".requests.csv")
    doc = _skeleton(
        config,
        label=label,
        model=model,
        workload=workload,
        level=level,
        conditions=conditions,
        csv_name=csv_path.name,
    )
    st = _LevelState(level=level, json_path=json_path, csv_path=csv_path, doc=doc)
    write_result(json_path, doc)
    written.append(json_path)
    n = len(workload.requests)
    target = level.saturation_target(n) or 16
    on_inflight = _drive_simulated(sources, target)
    progress = _Progress(config.progress, n, f"{label} {level.tag()}")
    errors = 0
    status, reason = "complete", None
    whole: Measurement | None = None
    run = LoadRun(records=st.records)
    st.run = run
    window = f"whole_run:{json_path.name}"
    f: IO[str]
    with csv_path.open("w", newline="", buffering=1) as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)

        def on_record(rec: RequestRecord) -> None:
            nonlocal errors
            writer.writerow(_csv_row(rec, run.start_s))
            if not rec.ok:
                errors += 1
            progress.advance(errors)

        async def main() -> None:
            client = OpenAIClient(config.url, api_key=config.api_key, timeout_s=config.timeout_s)
            try:
                await run_level(
                    client,
                    workload.requests,
                    level,
                    endpoint=config.endpoint,
                    model=model,
                    records=st.records,
                    stream=config.stream,
                    ignore_eos=config.ignore_eos and workload.fixed_output,
                    seed=config.seed,
                    extra_body=dict(config.extra_body) if config.extra_body else None,
                    on_record=on_record,
                    on_inflight=on_inflight,
                    on_tick=lambda: _checkpoint(st, config),
                    tick_s=config.checkpoint_s,
                    run=run,
                )
            finally:
                await client.aclose()

        st.cpu0 = process_cpu_s()
        clock_offset = meter.clock() - time.perf_counter()
        meter.begin(window)
        try:
            asyncio.run(main())
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (perwatt._signals)
            status = "partial"
            reason = f"{interrupt_reason(e)}; results cover the requests finished"
            raise
        except BaseException as e:
            status, reason = "partial", f"crashed: {type(e).__name__}: {e}"
            raise
        finally:
            # A second Ctrl-C/SIGTERM must not cut the energy reading or the final write short.
            with interrupts_deferred():
                progress.close()
                whole = meter.end(window)
                if on_inflight is not None:
                    on_inflight(0)
                f.flush()
                _finish_level(
                    st,
                    config=config,
                    meter=meter,
                    whole=whole,
                    clock_offset_s=clock_offset,
                    status=status,
                    reason=reason,
                )
            log(f"wrote {json_path} ({st.doc['status']})")
    return json_path


# --------------------------------------------------------------------------- public
def run_server_bench(config: ServerBenchConfig) -> list[Path]:
    """Benchmark the server at every load level of ``config``; return the result files.

    Raises :class:`ConfigError` (nothing written) when the server cannot be reached, the model
    is not served or the workload is unusable. A level interrupted by Ctrl-C or SIGTERM is
    written with status ``partial`` and the reason, and :class:`BenchInterrupted` (a
    ``KeyboardInterrupt``) carries the files written so far.
    """
    log = config.log or (lambda msg: print(msg, file=sys.stderr))
    if config.result_dir.exists() and not config.result_dir.is_dir():
        # Fail before the idle measurement and the model probe, not at the first level.
        raise ConfigError(f"--result-dir {config.result_dir} is a file; give a directory")
    model = resolve_model(config.url, config.model, api_key=config.api_key)
    if config.dataset is None and config.num_prompts * config.input_len >= _SAY_BUILDING_FROM:
        # Drawing the words takes ~1 s per million on a small VM: say why nothing happens yet.
        log(
            f"building {config.num_prompts:,} synthetic prompts of ~{config.input_len:,} tokens "
            f"({config.num_prompts * config.input_len:,} words)"
        )
    workload = _build_workload(config)
    if workload.skipped_rows:
        log(
            f"warning: {workload.skipped_rows} of {workload.rows_read} rows skipped in "
            f"{workload.source} (e.g. {workload.bad_row_examples[0]}); counted in the result"
        )
    label = slug(config.label or model.rstrip("/").split("/")[-1])
    sources, opened = _open_sources(config)
    try:
        meter = Meter(
            sources,
            sample_interval_s=config.sample_interval_s,
            subtract_idle=config.subtract_idle,
            sync_cuda=False,  # the GPUs are the server's, not this process's
        )
        energy_label = _source_label(sources)
        log("energy: " + "; ".join(s.describe() for s in sources))
        conditions = run_conditions(
            energy_source=energy_label,
            # GPU power limit and clocks only when NVML meters them (local GPUs).
            query_gpus=any(s.name == "nvml" for s in sources),
            # Beyond the schema: which sources exactly (a DCGM URL, the GPUs an NVML source covers).
            extra={"energy_source_detail": "; ".join(s.describe() for s in sources)},
        )
        paths: list[Path] = []
        with meter:
            if config.idle_seconds > 0:
                log(f"measuring idle power for {config.idle_seconds:g} s (keep the server idle)")
                meter.idle_baseline(config.idle_seconds)
            try:
                for level in config.levels():
                    _run_level(
                        config,
                        level=level,
                        label=label,
                        model=model,
                        workload=workload,
                        meter=meter,
                        sources=sources,
                        conditions=conditions,
                        log=log,
                        written=paths,
                    )
            except KeyboardInterrupt as e:
                raise BenchInterrupted(paths) from e
        return paths
    finally:
        if opened:
            close_sources(sources)


def parse_rate_list(text: str) -> tuple[float | None, ...]:
    """``"1,2,inf"`` -> ``(1.0, 2.0, None)``."""
    out: list[float | None] = []
    for part in text.split(","):
        p = part.strip().lower()
        if p in ("inf", "infinity"):
            out.append(None)
            continue
        try:
            v = float(p)
        except ValueError:
            raise ConfigError(f"--request-rate {part!r} is not a number or inf") from None
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"--request-rate {part!r} must be positive (or inf)")
        out.append(v)
    return tuple(out)


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)``."""
    out: list[int] = []
    for part in text.split(","):
        try:
            v = int(part.strip())
        except ValueError:
            raise ConfigError(f"{flag} {part!r} is not an integer") from None
        if v < 1:
            raise ConfigError(f"{flag} {part!r} must be >= 1")
        out.append(v)
    return tuple(out)


# --------------------------------------------------------------------------- summary
def _ms(pct: Mapping[str, Any], key: str) -> str:
    v = pct.get(key)
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}"  # 141397 ms needs no tenths


def _column_head(d: Mapping[str, Any]) -> str:
    """``label`` over ``precision · load``: a sweep's columns never look alike."""
    load = d["load"]
    prec = d["config"].get("precision")
    label = str(d["label"])
    second = f"{load['kind']} {load['value']:g}"
    if prec:
        second = f"{prec} · {second}"
    return f"{label}\n{second}"


def _emulated(d: Mapping[str, Any]) -> bool:
    return bool((d.get("builtin") or {}).get("emulated"))


def _summary_rows(
    docs: Sequence[Mapping[str, Any]], thresholds: GuardThresholds
) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, values: list[str]) -> None:
        rows.append((name, values))

    def pct(key: str) -> list[str]:
        out = []
        for d in docs:
            m: Any = d["metrics"][key]
            out.append(f"{_ms(m, 'p50')} / {_ms(m, 'p99')}")
        return out

    row("status", [d["status"] for d in docs])
    row(
        "requests ok / failed",
        [f"{d['metrics']['completed']} / {d['metrics']['failed']}" for d in docs],
    )
    row("requests (req/s)", [f"{d['metrics']['request_throughput_rps']:.2f}" for d in docs])
    row("output (tok/s)", [f"{d['metrics']['output_throughput_tok_s']:.1f}" for d in docs])
    row(
        "output tokens (source)",
        [
            f"{d['metrics']['total_output_tokens']} ({d['metrics']['token_count_source']})"
            for d in docs
        ],
    )
    row("TTFT p50 / p99 (ms)", pct("ttft_ms"))
    row("ITL p50 / p99 (ms)", pct("itl_ms"))
    row("TPOT p50 / p99 (ms)", pct("tpot_ms"))
    row("E2E p50 / p99 (ms)", pct("e2el_ms"))
    if any(d["metrics"]["goodput_rps"] is not None for d in docs):
        row(
            "goodput, SLO (req/s)",
            ["-" if (g := d["metrics"]["goodput_rps"]) is None else f"{g:.2f}" for d in docs],
        )
    jpt, src, tpj, watts, usd, guard = [], [], [], [], [], []
    for d in docs:
        e = d["energy"]
        econ = d["economics"]
        # Emulated precisions (fp8 on a CPU) measure numerics, not energy: say so beside the
        # figure itself, not only in a note.
        emu = " (emulated)" if _emulated(d) else ""
        if e is None or e["j_per_output_token"] is None:
            jpt.append("-")
            src.append("-" if e is None else e["source"])
            tpj.append("-")
            watts.append("-")
        else:
            basis = "steady state" if e["basis"] == "steady_state" else "whole run"
            jpt.append(f"{e['j_per_output_token']:.4g}{emu}")
            src.append(f"{e['source']}, {basis}")
            tpj.append(f"{e['output_tokens_per_j']:.4g}{emu}" if e["output_tokens_per_j"] else "-")
            watts.append(f"{e['avg_power_w']:.1f}")
        u = econ["usd_per_million_output_tokens"] if econ else None
        usd.append("-" if u is None else f"{u:.4g}{emu}")
        guard.append(judge(d["accuracy"], thresholds).short)
    row("J / output token (J)", jpt)
    row("  energy source, basis", src)
    row("output tok / J (tok/J)", tpj)
    if any(g != "—" for g in guard):
        row("  accuracy guard", guard)
    row("avg power (W)", watts)
    row("energy $ / M out tok", usd)
    return rows


def summary_tables(
    paths: Sequence[Path],
    *,
    width: int | None = None,
    thresholds: GuardThresholds = DEFAULT_THRESHOLDS,
) -> list[Any]:
    """The summary as rich Tables, one column per result file, split so each fits ``width``.

    Every column is headed by the run's label, precision and load (a precision sweep's columns
    are told apart); every row names its unit. J per output token is always shown with its
    source label and basis, an emulated precision says so beside its energy figures, and the
    accuracy guard's pass/FAIL sits under them. Metrics are rows, so a sweep adds columns; when
    they do not fit ``width`` (the terminal's) they continue in further tables rather than being
    cut. ``width=None``: one table.
    """
    # lazy: rich costs ~30 ms of start-up and only this output uses it
    from rich.table import Table

    docs: list[Mapping[str, Any]] = [load_result(p) for p in paths]
    rows = _summary_rows(docs, thresholds)
    heads = [_column_head(d) for d in docs]
    name_w = max(len(n) for n, _ in rows)

    def col_w(k: int) -> int:
        cells = [v[k] for _, v in rows] + heads[k].splitlines()
        return max(len(c) for c in cells)

    chunks: list[list[int]] = []
    used = name_w + 4  # the name column, its padding and the table's left border
    for k in range(len(docs)):
        w = col_w(k) + 3  # padding and the border to its right
        if chunks and (width is None or used + w <= width):
            chunks[-1].append(k)
            used += w
        else:
            chunks.append([k])
            used = name_w + 4 + w
    tables = []
    for n, chunk in enumerate(chunks):
        part = f" ({n + 1} of {len(chunks)})" if len(chunks) > 1 else ""
        t = Table(title=f"perwatt bench{part}", title_justify="left")
        t.add_column("metric (unit)", justify="left", no_wrap=True)
        for k in chunk:
            t.add_column(heads[k], justify="right", no_wrap=True)
        for name, values in rows:
            t.add_row(name, *(values[k] for k in chunk))
        tables.append(t)
    return tables


def summary_table(paths: Sequence[Path], thresholds: GuardThresholds = DEFAULT_THRESHOLDS) -> Any:
    """Every result in one rich Table (see :func:`summary_tables`, which also fits a width)."""
    return summary_tables(paths, thresholds=thresholds)[0]


def summary_notes(
    paths: Sequence[Path], thresholds: GuardThresholds = DEFAULT_THRESHOLDS
) -> list[str]:
    """One line per noteworthy fact: errors by kind, token counting, why a run is partial,
    emulated precisions, accuracy-guard failures."""
    lines: list[str] = []
    judged = False
    for p in paths:
        d = load_result(p)
        m = d["metrics"]
        if d["partial_reason"]:
            lines.append(f"{p.name}: {d['status']}: {d['partial_reason']}")
        extra: Any = d
        if _emulated(extra):
            lines.append(
                f"{p.name}: {d['config'].get('precision')} is emulated on "
                f"{(extra.get('builtin') or {}).get('device', 'this device')}: its energy "
                "figures measure emulation (numerics only), not the format; no energy claim"
            )
        verdict = judge(d["accuracy"], thresholds)
        judged = judged or verdict.status != "none"
        if verdict.failed:
            lines.append(f"{p.name}: accuracy guard {verdict.text}")
        # The run-time warning is silenced by --quiet; the summary must still say the workload
        # is not the whole file.
        wl: Any = d["config"].get("workload") or {}
        if wl.get("skipped_rows"):
            lines.append(
                f"{p.name}: {wl['skipped_rows']} of {wl['rows_read']} workload rows skipped as "
                "bad (examples in config.workload.bad_row_examples)"
            )
        if m["errors"]:
            kinds = ", ".join(f"{k} x{n}" for k, n in m["errors"].items())
            lines.append(f"{p.name}: errors: {kinds}")
            examples: Any = m.get("error_examples") or {}
            for kind, detail in list(examples.items())[:3]:
                lines.append(f"  {kind}: {detail}")
            frac, limit = failed_fraction(d), _max_failed_fraction(d)
            allowed = (
                f"more than --max-failed-fraction {limit:g} allows: the command fails (exit 1)"
                if frac > limit
                else f"within --max-failed-fraction {limit:g}"
            )
            lines.append(
                f"{p.name}: {m['failed']} of {m['completed'] + m['failed']} requests failed "
                f"({frac:.1%}), {allowed}"
            )
        if m.get("input_tokens_source") == "approximate" and m["completed"]:
            lines.append(
                f"{p.name}: input tokens are approximate (word count; the server reported no "
                "prompt usage)"
            )
        streamed = bool(cast(dict[str, Any], d["config"]).get("stream", True))
        if m["token_count_source"] == "chunks" and m["completed"] and streamed:
            lines.append(
                f"{p.name}: output tokens counted from stream chunks (the server sent no usage); "
                "exact only for servers that send one token per chunk"
            )
        elif m["token_count_source"] == "chunks" and m["completed"]:
            # Without a stream the client's only count is whitespace words (client.py): saying
            # "stream chunks" would hide that J/token rests on a words-for-tokens approximation.
            lines.append(
                f"{p.name}: output tokens are approximate: whitespace words of the replies "
                "(non-streaming, the server sent no usage); real tokenizers give more tokens "
                "per word"
            )
        econ = d["economics"]
        if econ is not None:
            line = (
                f"$ per M output tokens at {econ['price_per_kwh']:g} USD/kWh, PUE {econ['pue']:g}: "
                f"{econ['note']}"
            )
            if line not in lines:
                lines.append(line)
    if judged:
        lines.append(f"accuracy guard: {thresholds.describe()} (--min-top1, --max-kl, ...)")
    return lines
