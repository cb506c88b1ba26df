"""The built-in engine's two decode paths side by side, and one request on many slots vs one.

    .venv/bin/python benchmarks/engine_paths.py [--model tiny] [--steps 64] [--rounds 7] [--json]

Part 1, the bench path vs the serve path (issue 10, item 9). ``perwatt bench --engine builtin``
decodes on the process's main thread (``perwatt.engine.bench._decode_steps``); ``perwatt serve``
decodes on the batcher's engine thread. Each path runs in processes of its own (the OpenMP
runtime reads its settings when torch loads, and a second torch thread in the same process
changes how it waits), fresh processes alternating bench, serve, bench, ... so both see the same
machine load, each with a 10 Hz meter sampling as in a real bench. Reported: median ms per decode
step of each path over its processes, and their ratio.

* ``perwatt default``: as perwatt runs now (:mod:`perwatt.engine.threads` sets
  ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it);
* ``OMP_WAIT_POLICY=ACTIVE``: the OpenMP default before the fix (spin-wait), to show the cause.

Part 2, single-request decode on an 8-slot engine vs a 1-slot engine (item 8): the same request
through ``Engine.prefill``/``Engine.decode`` (the slot API the server's batcher drives),
alternating engines round by round; median ms per step and the ratio.

Numbers depend on the machine and its load: record the CPU model, torch version, date and load
(this script prints them) with any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any


def _conditions() -> dict[str, Any]:
    import torch

    from perwatt.meter.detect import cpu_model

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "loadavg_1m": os.getloadavg()[0],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def _path(which: str, model: str, steps: int, rounds: int) -> dict[str, Any]:
    """One path in this process: ``bench`` (main thread, as ``perwatt bench``) or ``serve``
    (the batcher's engine thread, as ``perwatt serve``). Median seconds per decode step.

    Each path gets a process of its own: a second thread running torch work changes how the
    OpenMP runtime waits (libgomp throttles its spinning once it manages more threads than
    there are CPUs), so measuring both paths in one process would hide the difference."""
    from perwatt.engine.batcher import Batcher, Event, Request, SamplingParams
    from perwatt.engine.bench import _argmax, _decode_steps
    from perwatt.engine.generate import load_engine
    from perwatt.meter import Meter
    from perwatt.meter.detect import open_sources

    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    engine = load_engine(
        model, precision="fp32", device="cpu", max_batch_size=1, max_seq_len=steps + 16
    )

    def bench_path() -> float:
        first = _argmax(engine.prefill([0], [prompt]))
        t0 = time.perf_counter()
        _decode_steps(engine, [0], [len(prompt)], first, steps)
        dt = time.perf_counter() - t0
        engine.free(0)
        return dt / steps

    batcher = Batcher(engine, num_slots=1, max_seq_len=steps + 16)

    def serve_path() -> float:
        stamps: list[float] = []
        done = threading.Event()

        def on_event(ev: Event) -> None:
            stamps.append(time.perf_counter())
            if ev.finish_reason is not None:
                done.set()

        params = SamplingParams(max_tokens=steps + 1, ignore_eos=True, temperature=0.0)
        batcher.submit(Request(prompt_ids=tuple(prompt), params=params, on_event=on_event))
        done.wait(600)
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # first token is the prefill's

    if which == "serve":
        batcher.start()
    run = bench_path if which == "bench" else serve_path
    with Meter(open_sources("auto"), sample_interval_s=0.1):
        run()  # warm-up
        per_step = [run() for _ in range(rounds)]
    batcher.stop()
    return {**_conditions(), "path": which, "median_s": statistics.median(per_step)}


def _slots(model: str, steps: int, rounds: int) -> dict[str, Any]:
    """Part 2: one request on an 8-slot engine vs on a 1-slot engine (slot API)."""
    from perwatt.engine.generate import load_engine

    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    engines = {
        n: load_engine(model, precision="fp32", device="cpu", max_batch_size=n, max_seq_len=2048)
        for n in (1, 8)
    }

    def one(n: int) -> float:
        eng = engines[n]
        tok = int(eng.prefill([0], [prompt])[0].argmax())
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = int(eng.decode([0], [tok])[0].argmax())
        dt = time.perf_counter() - t0
        eng.free(0)
        return dt / steps

    times: dict[int, list[float]] = {1: [], 8: []}
    one(1), one(8)
    for _ in range(rounds):
        for n in (1, 8):
            times[n].append(one(n))
    m1, m8 = statistics.median(times[1]), statistics.median(times[8])
    return {
        **_conditions(),
        "model": model,
        "steps": steps,
        "max_seq_len": 2048,
        "one_slot_ms": m1 * 1e3,
        "eight_slots_ms": m8 * 1e3,
        "eight_over_one": m8 / m1,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="processes per path and setting")
    ap.add_argument("--part", choices=["bench", "serve", "slots"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part in ("bench", "serve"):
        print(json.dumps(_path(args.part, args.model, args.steps, args.rounds)))
        return 0
    if args.part == "slots":
        print(json.dumps(_slots(args.model, args.steps, args.rounds)))
        return 0
    results: dict[str, Any] = {}
    base = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps)]
    base += ["--rounds", str(args.rounds)]
    runs = {
        "perwatt default": {},
        "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    }
    for label, extra in runs.items():
        env = {**os.environ, **extra}
        if not extra:
            env.pop("OMP_WAIT_POLICY", None)
        per: dict[str, list[float]] = {"bench": [], "serve": []}
        cond: dict[str, Any] = {}
        for _ in range(args.repeats):  # alternate fresh processes so both see the same load
            for which in ("bench", "serve"):
                out = subprocess.run(
                    [*base, "--part", which], env=env, capture_output=True, text=True, check=True
                )
                cond = json.loads(out.stdout.strip().splitlines()[-1])
                per[which].append(cond.pop("median_s"))
        b, s_ = statistics.median(per["bench"]), statistics.median(per["serve"])
        results[label] = {
            **cond,
            "bench_path_ms": b * 1e3,
            "serve_path_ms": s_ * 1e3,
            "bench_over_serve": b / s_,
            "bench_runs_ms": [x * 1e3 for x in per["bench"]],
            "serve_runs_ms": [x * 1e3 for x in per["serve"]],
        }
    out = subprocess.run([*base, "--part", "slots"], capture_output=True, text=True, check=True)
    results["slots"] = json.loads(out.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    c = results["perwatt default"]
    print(f"{c['cpu']} ({c['cpus']} CPUs), torch {c['torch']}, {c['date_utc']} UTC")
    print(f"{args.model}, fp32, batch 1, {args.steps} steps x {args.rounds} rounds (medians)")
    for label in runs:
        r = results[label]
        print(
            f"  {label:24s} bench path {r['bench_path_ms']:7.2f} ms/step   serve path "
            f"{r['serve_path_ms']:7.2f} ms/step   ratio {r['bench_over_serve']:.2f}   "
            f"(load {r['loadavg_1m']:.1f})"
        )
    s = results["slots"]
    print(
        f"  one request: 8-slot engine {s['eight_slots_ms']:.2f} ms/step, 1-slot engine "
        f"{s['one_slot_ms']:.2f} ms/step, ratio {s['eight_over_one']:.2f} (load "
        f"{s['loadavg_1m']:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
