"""``perwatt bench``: argument parsing only; the work is in perwatt.bench.runner (server) and
perwatt.engine.bench (the built-in engine)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from perwatt._signals import interrupt_exit_code, interrupt_reason
from perwatt.cli.guard_flags import add_guard_flags, guard_thresholds
from perwatt.cli.options import BENCH_FLAGS, endpoint, flags_for, number
from perwatt.economics import DEFAULT_PRICE_PER_KWH_USD
from perwatt.errors import ConfigError
from perwatt.meter.detect import SPEC_HELP


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``perwatt`` parser."""
    p = subparsers.add_parser(
        "bench",
        help="tokens per joule of an OpenAI-compatible server (or the built-in engine)",
        description="Drive an OpenAI-compatible inference server (vLLM, SGLang, TensorRT-LLM, "
        "TGI, llama.cpp…) with a workload at one or more load levels while metering energy; "
        "write one result JSON (+ per-request CSV) per level with latency percentiles, "
        "J per output token (with its source), tokens per joule and energy cost. Flags follow "
        "`vllm bench serve`.",
        epilog="exit code: 0 every level finished with at most --max-failed-fraction of its "
        "requests failed or truncated; 1 a level failed, stopped early (partial) or had more "
        "failed requests than allowed; 2 bad input or a server that cannot be reached "
        "(nothing written); 130 Ctrl-C (partial results kept).",
    )
    p.add_argument("--engine", choices=("server", "builtin"), default="server")
    g = p.add_argument_group("server")
    g.add_argument("--url", help="server base URL including /v1, e.g. http://127.0.0.1:8000/v1")
    g.add_argument(
        "--endpoint",
        default="completions",
        help="completions | chat (or /v1/completions, /v1/chat/completions); default completions",
    )
    g.add_argument(
        "--model",
        help="server: model name (default: the first from /v1/models); "
        "builtin: a model shape name or a checkpoint directory",
    )
    g.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY)",
    )
    g.add_argument("--no-stream", action="store_true", help="non-streaming requests (no TTFT/ITL)")
    g.add_argument("--timeout", default=600.0, help="per-request timeout, s (default 600)")
    g.add_argument("--extra-body", metavar="JSON", help="extra JSON fields for every request")
    w = p.add_argument_group("workload")
    w.add_argument("--num-prompts", type=int, default=100)
    w.add_argument(
        "--input-len", type=int, default=None, help="prompt tokens, approximate (default 1024)"
    )
    w.add_argument("--output-len", type=int, default=None, help="output tokens (default 128)")
    w.add_argument(
        "--input-dist",
        default="fixed",
        help="input length distribution: fixed, uniform:R, normal:CV, lognormal:SIGMA",
    )
    w.add_argument("--output-dist", default="fixed", help="output length distribution (as above)")
    w.add_argument(
        "--dataset", type=Path, help="ShareGPT JSON or JSONL ({prompt, output_len}) prompt file"
    )
    w.add_argument("--dataset-format", choices=("auto", "sharegpt", "jsonl"), default="auto")
    w.add_argument(
        "--no-ignore-eos",
        action="store_true",
        help="let the model stop at EOS (default: ask for exactly the output length with "
        "ignore_eos/min_tokens)",
    )
    w.add_argument("--seed", type=int, default=0)
    lg = p.add_argument_group("load")
    lg.add_argument(
        "--request-rate",
        default="inf",
        help="requests/s, or a sweep '1,2,4' (one result per level); inf = all at once",
    )
    lg.add_argument("--burstiness", default=1.0, help="gamma shape of arrivals (1 = Poisson)")
    lg.add_argument(
        "--max-concurrency", default=None, help="cap on requests in flight, or a sweep '1,4,16'"
    )
    lg.add_argument(
        "--goodput",
        nargs="+",
        metavar="KEY:MS",
        help="SLOs for goodput, e.g. --goodput ttft:200 tpot:50 e2el:5000",
    )
    e = p.add_argument_group("energy and cost")
    e.add_argument(
        "--energy-source",
        default="auto",
        metavar="SPEC",
        help=f"power source: {SPEC_HELP}; auto only for a server on this machine: use "
        "dcgm:URL or prometheus:URL (or PERWATT_DCGM_URL with auto) when the server's GPUs are "
        "on another machine; simulated against perwatt's test server meters the power model "
        "that server serves (python -m perwatt.bench.testing --precision ...)",
    )
    e.add_argument(
        "--energy-select",
        default=None,
        metavar="EXPR",
        help="GPUs of a dcgm: or prometheus: --energy-source to meter: PromQL label matchers "
        "('Hostname=\"node1\"', 'pod=~\"vllm-.*\"'), GPU indices (0,2) or UUIDs; required for "
        "a Prometheus that holds several hosts",
    )
    e.add_argument("--idle-seconds", default=0.0, help="measure idle power first (idle share)")
    e.add_argument("--subtract-idle", action="store_true", help="subtract idle power from energy")
    e.add_argument("--num-gpus", type=int, default=1, help="GPUs serving (per-GPU throughput)")
    e.add_argument(
        "--price-per-kwh",
        default=DEFAULT_PRICE_PER_KWH_USD,
        help=f"electricity price, USD/kWh (default {DEFAULT_PRICE_PER_KWH_USD}: US industrial "
        "average 2023, EIA)",
    )
    e.add_argument("--pue", default=1.0, help="facility PUE (default 1.0 = GPU energy only)")
    f = p.add_argument_group("failed requests")
    f.add_argument(
        "--max-failed-fraction",
        default=0.0,
        metavar="F",
        help="server bench: fraction of failed or truncated requests per load level above "
        "which the command exits 1 (default 0: any failure fails it); the result's status says "
        "complete-with-failures whenever a request failed",
    )
    o = p.add_argument_group("output")
    o.add_argument("--result-dir", type=Path, default=Path("bench-results"))
    o.add_argument("--label", help="name for the results (default: model name)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--json", action="store_true", help="print the result file paths as JSON")
    b = p.add_argument_group("builtin engine (--engine builtin)")
    b.add_argument(
        "--precision",
        default=None,
        help="bf16,fp8,int8,int4 (comma list; default bf16, or the precision of a "
        "`perwatt quantize` directory given as --model)",
    )
    b.add_argument("--batch", default="1", help="batch sizes, e.g. 1,8,64")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument(
        "--min-window-s",
        default=None,
        help="steady-state decode window per point, s (default 5 on a GPU, one round on the CPU)",
    )
    add_guard_flags(p)
    p.set_defaults(func=run_bench)


def _builtin(args: argparse.Namespace) -> list[Path]:
    if not args.model:
        raise ConfigError("--engine builtin needs --model SHAPE_OR_DIR")
    try:
        import torch  # noqa: F401

        import perwatt.engine  # noqa: F401  (before torch: it sets the OpenMP wait policy)
    except ImportError:
        raise ConfigError("--engine builtin needs PyTorch: pip install 'perwatt[engine]'") from None
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.runner import parse_int_list
    from perwatt.engine.bench import run_builtin_bench

    kwargs: dict[str, Any] = {}
    if args.input_len is not None:
        kwargs["input_len"] = args.input_len
    if args.output_len is not None:
        kwargs["output_len"] = args.output_len
    if args.min_window_s is not None:
        kwargs["min_window_s"] = number(args.min_window_s, "--min-window-s", unit="seconds")
    kwargs["idle_seconds"] = number(args.idle_seconds, "--idle-seconds", unit="seconds")
    return list(
        run_builtin_bench(
            model=args.model,
            precisions=(
                [s.strip() for s in args.precision.split(",") if s.strip()]
                if args.precision
                else None
            ),
            batches=list(parse_int_list(args.batch, "--batch")),
            result_dir=args.result_dir,
            energy_source=args.energy_source,
            energy_select=args.energy_select,
            device=args.device,
            seed=args.seed,
            price_per_kwh=number(args.price_per_kwh, "--price-per-kwh", unit="USD per kWh"),
            pue=number(args.pue, "--pue"),
            num_gpus=args.num_gpus,
            label=args.label,
            guard=guard_thresholds(args),
            **kwargs,
        )
    )


def _server(args: argparse.Namespace) -> list[Path]:
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.metrics import parse_goodput
    from perwatt.bench.runner import (
        ServerBenchConfig,
        parse_int_list,
        parse_rate_list,
        run_server_bench,
    )

    if not args.url:
        raise ConfigError("--url is required, e.g. --url http://127.0.0.1:8000/v1")
    extra = None
    if args.extra_body:
        try:
            extra = json.loads(args.extra_body)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--extra-body is not JSON: {e.msg}") from None
        if not isinstance(extra, dict):
            raise ConfigError("--extra-body must be a JSON object")
    conc: tuple[int | None, ...] = (
        parse_int_list(args.max_concurrency, "--max-concurrency")
        if args.max_concurrency
        else (None,)
    )
    config = ServerBenchConfig(
        url=args.url,
        endpoint=endpoint(args.endpoint),  # type: ignore[arg-type]
        model=args.model,
        api_key=args.api_key,
        stream=not args.no_stream,
        dataset=args.dataset,
        dataset_format=args.dataset_format,
        num_prompts=args.num_prompts,
        input_len=1024 if args.input_len is None else args.input_len,
        output_len=(128 if args.dataset is None else None)
        if args.output_len is None
        else args.output_len,
        input_dist=args.input_dist,
        output_dist=args.output_dist,
        ignore_eos=not args.no_ignore_eos,
        request_rates=parse_rate_list(args.request_rate),
        burstiness=number(args.burstiness, "--burstiness"),
        max_concurrencies=conc,
        goodput=parse_goodput(args.goodput),
        result_dir=args.result_dir,
        label=args.label,
        seed=args.seed,
        energy_source=args.energy_source,
        energy_select=args.energy_select,
        idle_seconds=number(args.idle_seconds, "--idle-seconds", unit="seconds"),
        subtract_idle=args.subtract_idle,
        num_gpus=args.num_gpus,
        price_per_kwh=number(args.price_per_kwh, "--price-per-kwh", unit="USD per kWh"),
        pue=number(args.pue, "--pue"),
        timeout_s=number(args.timeout, "--timeout", unit="seconds"),
        max_failed_fraction=number(
            args.max_failed_fraction, "--max-failed-fraction", low=0.0, high=1.0
        ),
        extra_body=extra,
        progress=not args.quiet and sys.stderr.isatty(),
        log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    return run_server_bench(config)


def run_bench(args: argparse.Namespace) -> int:
    """``perwatt bench``: run the sweep, print the summary tables, return the exit code."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.result import BenchInterrupted
    from perwatt.bench.runner import exit_code, summary_notes, summary_tables

    thresholds = guard_thresholds(args)  # a bad threshold fails before the run, not after
    interrupted: BenchInterrupted | None = None
    try:
        with flags_for(BENCH_FLAGS):
            paths = _builtin(args) if args.engine == "builtin" else _server(args)
    except BenchInterrupted as e:  # Ctrl-C or SIGTERM: show what was kept, then exit 130/143
        paths, interrupted = list(e.paths), e
    if args.json:
        print(json.dumps([str(p) for p in paths]))
    elif paths:
        # lazy: rich costs ~30 ms of start-up and only this output uses it
        from rich.console import Console

        console = Console()
        # The terminal's width: a sweep's columns continue in a second table, never cut.
        for table in summary_tables(paths, width=console.width, thresholds=thresholds):
            console.print(table)
        for line in summary_notes(paths, thresholds):
            console.print(line, highlight=False, markup=False)
    if interrupted is not None:
        print(
            f"perwatt: {interrupt_reason(interrupted)}; the result files above are kept, the "
            "last one marked with the reason",
            file=sys.stderr,
        )
        return interrupt_exit_code(interrupted)
    return exit_code(paths)
