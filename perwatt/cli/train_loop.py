"""``perwatt train profile`` and ``perwatt train simulate``: argument parsing only.

Registered by :mod:`perwatt.cli.train` (``register(train_subparsers)``); the work is in
:mod:`perwatt.train.profiler`, :mod:`perwatt.train.simulate` and :mod:`perwatt.report.gantt`.
"""

from __future__ import annotations

import argparse
import sys

_HOOKS_HELP = """\
hook API for --script (call these from your training loop):
  from perwatt.train import profiler
  while not profiler.done():                 # until the sweep ends
      for inst, mb in my_schedule:           # inst: "forward" | "backward"
          profiler.on_instruction_begin(inst)
          run(inst, mb)
          profiler.on_instruction_end(inst)
      profiler.on_iteration_end()            # the clock changes only here
PyTorch pipelining: profiler.attach_to_pipeline_stage(stage, hooks) wraps a PipelineStage.
"""


def register(train_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prof = train_subparsers.add_parser(
        "profile",
        help="measure each stage's forward/backward time and energy at each SM clock",
        description="Sweep SM clocks from the maximum down (warm-up iterations at each clock, "
        "early stop once energy stops falling) while training runs, and write the stage "
        "profile CSV (stage,instruction,frequency,time,energy). --simulate profiles a "
        "simulated pipeline (figures labelled simulated); --script runs your training script "
        "on a real GPU under the profiler.",
        epilog=_HOOKS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = prof.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true", help="profile a simulated pipeline")
    mode.add_argument("--script", metavar="PY", help="training script that calls the hooks")
    prof.add_argument("--out", "-o", required=True, metavar="CSV", help="profile CSV to write")
    prof.add_argument("--gpu", default="A100", help="simulated GPU model: A100 or H100")
    prof.add_argument("--stages", type=int, default=8, help="pipeline stages (--simulate)")
    prof.add_argument("--microbatches", type=int, default=8, help="microbatches (--simulate)")
    prof.add_argument(
        "--counter-period",
        type=float,
        default=None,
        metavar="S",
        help="simulate an energy counter that updates every S seconds (H100: ~0.1)",
    )
    prof.add_argument("--stage", type=int, default=0, help="this process's stage (--script)")
    prof.add_argument("--gpu-index", type=int, default=0, help="GPU to profile (--script)")
    prof.add_argument(
        "--i-understand-this-changes-clocks",
        dest="allow_clock_changes",
        action="store_true",
        help="allow the sweep to lock SM clocks (--script; restored at the end)",
    )
    prof.add_argument("--step", type=int, default=1, help="use every STEP-th supported clock")
    prof.add_argument("--min-freq", type=int, default=None, metavar="MHZ", help="lowest clock")
    prof.add_argument("--warmup", type=int, default=1, help="warm-up iterations per clock")
    prof.add_argument("--iterations", type=int, default=2, help="measured iterations per clock")
    prof.add_argument("--patience", type=int, default=3, help="clocks without improvement")
    prof.add_argument(
        "--min-improvement", type=float, default=0.0, help="relative drop that counts (e.g. 0.002)"
    )
    prof.add_argument(
        "--noise-tolerance",
        type=float,
        default=0.0,
        help="rises within this fraction of the minimum do not stop the sweep (0.03 for H100)",
    )
    prof.add_argument("script_args", nargs=argparse.REMAINDER, help="-- arguments for --script")
    prof.set_defaults(func=run_profile)

    sim = train_subparsers.add_parser(
        "simulate",
        help="replay a plan on a profile and draw the pipeline timeline before/after",
        description="Compute the frontier, choose a plan, replay the all-max-clock baseline "
        "and the plan on the schedule DAG (profiled times/energies, blocked GPUs at P_block), "
        "print iteration time and energy before/after, and write one self-contained HTML file "
        "with Gantt charts coloured by clock and power and the frontier. Figures are simulated.",
    )
    sim.add_argument("profile", metavar="PROFILE", help="stage profile CSV")
    sim.add_argument("--stages", type=int, required=True)
    sim.add_argument("--microbatches", type=int, required=True)
    sim.add_argument("--p-block", type=float, required=True, metavar="W", help="blocking power")
    sim.add_argument("--schedule", default="1f1b", choices=("1f1b", "gpipe"))
    sim.add_argument("--time-quantum", type=float, default=1e-3, metavar="S")
    pick = sim.add_mutually_exclusive_group()
    pick.add_argument("--target", choices=("fastest",), help="no slowdown (intrinsic bloat only)")
    pick.add_argument("--straggler", type=float, metavar="S", help="straggler iteration time T'")
    pick.add_argument("--straggler-ratio", type=float, metavar="R", help="T' = R x T_min")
    pick.add_argument("--deadline", type=float, metavar="S", help="iteration time limit")
    pick.add_argument("--max-slowdown", type=float, metavar="PCT", help="allowed slowdown in %%")
    sim.add_argument("--out", "-o", metavar="HTML", help="write the HTML report here")
    sim.set_defaults(func=run_simulate)


def _sweep_config(args: argparse.Namespace) -> object:
    from perwatt.train.profiler import SweepConfig

    return SweepConfig(
        step=args.step,
        min_freq_mhz=args.min_freq,
        warmup_iterations=args.warmup,
        measure_iterations=args.iterations,
        patience=args.patience,
        min_improvement=args.min_improvement,
        noise_tolerance=args.noise_tolerance,
    )


def run_profile(args: argparse.Namespace) -> int:
    from perwatt.train import profiler

    cfg = _sweep_config(args)
    if args.simulate:
        res = profiler.profile_simulated_pipeline(
            num_stages=args.stages,
            microbatches=args.microbatches,
            gpu=args.gpu,
            config=cfg,  # type: ignore[arg-type]
            counter_period_s=args.counter_period,
        )
        path = profiler.write_profile_csv(res.rows, args.out)
        print(
            f"wrote {path}: {len(res.rows)} rows, {args.stages} stages, simulated {res.gpu} "
            f"[source: {res.source} — a model, not a measurement]"
        )
        for note in sorted({w for r in res.rows for w in r.warnings})[:3]:
            print(f"  note: {note}")
        for s, why in enumerate(res.stop_reasons):
            pb = res.blocking_power_w[s]
            block = (
                f"blocking power {pb:.1f} W at the top clock [{res.source}]"
                if pb == pb
                else "no gap long enough to measure blocking power"
            )
            print(f"  stage {s}: {why} ({res.iterations[s]} iterations); {block}")
        return 0
    extra = list(args.script_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    out = profiler.profile_script(
        args.script,
        extra,
        stage=args.stage,
        out=args.out,
        gpu_index=args.gpu_index,
        config=cfg,  # type: ignore[arg-type]
        allow_clock_changes=args.allow_clock_changes,
    )
    note = " (PARTIAL: the script ended before the sweep did)" if out.partial else ""
    print(f"wrote {out.path}: {len(out.rows)} rows [source: {out.source}]{note}; {out.stop_reason}")
    if out.blocking_power_w:
        top = max(out.blocking_power_w)
        print(f"blocking power at {top} MHz: {out.blocking_power_w[top]:.1f} W (use as --p-block)")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from perwatt.cli.train import one_line_warnings
    from perwatt.errors import ConfigError
    from perwatt.report.gantt import write_html
    from perwatt.train.simulate import run_simulation

    choice: dict[str, object] = {}
    if args.straggler is not None:
        choice["straggler_s"] = args.straggler
    elif args.straggler_ratio is not None:
        choice["straggler_ratio"] = args.straggler_ratio
    elif args.deadline is not None:
        choice["deadline_s"] = args.deadline
    elif args.max_slowdown is not None:
        choice["max_slowdown_pct"] = args.max_slowdown
    else:
        choice["target"] = args.target or "fastest"
    with one_line_warnings():
        report = run_simulation(
            args.profile,
            stages=args.stages,
            microbatches=args.microbatches,
            p_block_w=args.p_block,
            schedule=args.schedule,
            time_quantum_s=args.time_quantum,
            **choice,
        )
    for line in report.summary_lines():
        print(line)
    if args.out:
        try:
            path = write_html(report, args.out)
        except OSError as e:
            raise ConfigError(f"cannot write {args.out}: {e.strerror or e}") from e
        print(f"wrote {path}", file=sys.stderr)
    return 0
