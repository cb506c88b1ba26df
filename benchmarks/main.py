"""The main job of ``make bench``: tokens per joule of the built-in engine on this machine.

On a fresh machine it picks an embedded default experiment, measures it with the best energy
source present, writes one result document per (precision, batch) point and an HTML report, and
prints a table with the source next to every energy figure:

* **CUDA GPU present**: the Llama-3.2-1B shape (random weights: energy per token depends on the
  shape, not on trained values), 128 prompt / 256 output tokens (the issue's lengths), precisions
  bf16, fp8, int8, int4, batches 1, 64, 256; a steady-state decode window of at least 5 s per point, energy from the NVML
  counter (``nvml-counter``).
* **CPU only**: the ``tiny`` preset, 32 / 32 tokens, precisions bf16, int8, int4, batches 1 and 4,
  decode rounds repeated to a 2 s window per point; under a minute on 2 idle cores. Energy from RAPL where the kernel exposes it, else
  ``estimated`` (a utilisation model — never a measurement, and labelled so everywhere).

Everything can be overridden (``--model``, ``--precisions``, ``--batches``, ...); see ``--help``.
Points that cannot run (a precision this GPU lacks, out of memory) are written as failed
documents whose reason names the fix, and the rest go on.

Usage::

    python benchmarks/main.py --result-dir bench-results      # what `make bench` runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

GPU_DEFAULT: dict[str, Any] = {
    "model": "llama-3.2-1b",
    "precisions": "bf16,fp8,int8,int4",
    "batches": "1,64,256",
    "input_len": 128,
    "output_len": 256,
    "min_window_s": 5.0,
}
CPU_DEFAULT: dict[str, Any] = {
    "model": "tiny",
    "precisions": "bf16,int8,int4",
    "batches": "1,4",
    "input_len": 32,
    "output_len": 32,
    "min_window_s": 2.0,
}


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/main.py",
        description="make bench: built-in engine tokens/J on this machine, plus the HTML report",
    )
    p.add_argument("--result-dir", type=Path, default=Path("bench-results"))
    p.add_argument("--model", help="shape or HF directory (default: llama-3.2-1b on GPU, tiny)")
    p.add_argument("--precisions", help="comma list (default: bf16,fp8,int8,int4 / bf16,int8,int4)")
    p.add_argument("--batches", help="comma list (default: 1,64,256 on GPU / 1,4 on CPU)")
    p.add_argument("--input-len", type=int, help="prompt tokens (default 128 GPU / 32 CPU)")
    p.add_argument("--output-len", type=int, help="generated tokens (default 256 GPU / 32 CPU)")
    p.add_argument(
        "--min-window-s", type=float, help="steady-state decode window (default 5 s GPU / 2 s CPU)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--energy-source", default="auto", help="auto (best present), nvml, rapl, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", help="result label prefix (default builtin-<model>)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op CPU threads (default: torch's choice; 1 avoids OpenMP thrashing on "
        "a busy shared machine)",
    )
    p.add_argument("--report", type=Path, help="HTML report path (default RESULT_DIR/report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perwatt.errors import CLEAN_EXIT_ERRORS, UserError

    try:
        return _run(args)
    except CLEAN_EXIT_ERRORS as e:
        print(f"make bench: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UserError) else 1


def _run(args: argparse.Namespace) -> int:
    from perwatt.engine.bench import format_summary, run_builtin_bench

    gpu = args.device.startswith("cuda") or (args.device == "auto" and _has_cuda())
    preset = GPU_DEFAULT if gpu else CPU_DEFAULT

    def pick(name: str) -> Any:
        v = getattr(args, name)
        return preset[name] if v is None else v

    model = pick("model")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    print(
        f"make bench: built-in engine, {model} on {'GPU' if gpu else 'CPU'} "
        f"({'embedded default' if args.model is None else 'as asked'}); results in "
        f"{args.result_dir}",
        flush=True,
    )
    t0 = time.monotonic()
    paths = run_builtin_bench(
        model=model,
        precisions=pick("precisions"),
        batches=pick("batches"),
        input_len=pick("input_len"),
        output_len=pick("output_len"),
        min_window_s=pick("min_window_s"),
        result_dir=args.result_dir,
        energy_source=args.energy_source,
        device=args.device,
        seed=args.seed,
        label=args.label,
        progress=lambda line: print(line, flush=True),
    )
    elapsed = time.monotonic() - t0
    print()
    print(format_summary(paths))
    print()
    print(
        "decode tok/s and tokens/J are over the steady-state decode window (prefill and warm-up "
        "reported separately in each JSON); the source column says where every energy figure "
        "came from ('estimated' and 'simulated' are models, not measurements)."
    )
    report = args.report or args.result_dir / "report.html"
    try:
        from perwatt.report import write_html_report
    except ImportError as e:  # a build without the report package still keeps its results
        print(f"HTML report skipped: {e}")
    else:
        print(f"HTML report: {write_html_report(paths, report)}")
    print(f"{len(paths)} result documents in {args.result_dir} ({elapsed:.0f} s)")
    from perwatt.bench.result import load_result

    statuses = [load_result(p)["status"] for p in paths]
    return 0 if any(s == "complete" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
