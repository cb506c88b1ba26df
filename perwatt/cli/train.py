"""``perwatt train …``: argument parsing only; the work is in :mod:`perwatt.train`.

``perwatt train plan`` is here; ``profile`` and ``simulate`` come from
:mod:`perwatt.cli.train_loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator

from perwatt.errors import ConfigError

_EPILOG = """\
examples:
  perwatt train plan gpt3-175b+a100_sxm_bf16.csv --stages 8 --microbatches 24 \\
      --p-block 83.64 --frontier frontier.csv --target fastest
  perwatt train plan PROFILE.csv --stages 8 --microbatches 24 --p-block 83.64 \\
      --straggler-ratio 1.2 --plans plans.json --json

P_block is the power one GPU draws while blocked on communication (Perseus measured
83.64 W on A100 SXM and 70.38 W on A40; measure yours with `perwatt meter`). Several
PROFILE files are the data/tensor-parallel ranks of one pipeline (max time, summed energy).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = subparsers.add_parser(
        "train",
        help="training energy: frequency plans for pipeline parallelism (Perseus-class)",
        description="Remove energy bloat in pipeline-parallel training: plan per-instruction "
        "GPU clocks from a stage profile (plan), and profile/simulate where available.",
    )
    sub = train.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True)

    plan = sub.add_parser(
        "plan",
        help="compute the time–energy frontier and choose a frequency plan",
        description="Compute the iteration time–energy Pareto frontier of a pipeline from its "
        "stage profile (one frequency plan per point), pick a plan for the target, and print "
        "it with the energy saved versus all GPUs at max clock and versus the frontier's "
        "fastest point.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("profile", nargs="+", metavar="PROFILE.csv", help="stage profile CSV(s)")
    plan.add_argument("--stages", type=int, required=True, help="pipeline stages")
    plan.add_argument("--microbatches", type=int, required=True, help="microbatches per iteration")
    plan.add_argument(
        "--p-block",
        required=True,
        metavar="W",
        help="blocking power per GPU in watts; one value, or one per stage separated by commas",
    )
    plan.add_argument(
        "--schedule",
        choices=("1f1b", "gpipe", "interleaved"),
        default="1f1b",
        help="(default 1f1b)",
    )
    plan.add_argument("--chunks", type=int, default=1, help="model chunks per GPU (interleaved)")
    plan.add_argument(
        "--recompute",
        action="store_true",
        help="activation recomputation: backward re-runs forward",
    )
    plan.add_argument("--quantum-ms", type=float, default=1.0, help="time quantum (default 1 ms)")
    plan.add_argument(
        "--cost-model",
        choices=("exponential", "convex-hull"),
        default="exponential",
        help="per-instruction cost model (default exponential, as Perseus)",
    )
    plan.add_argument(
        "--noise-factor",
        type=float,
        default=1.0,
        help="Pareto-filter slack for noisy profiles (≥ 1)",
    )
    plan.add_argument(
        "--supported-freqs", metavar="MHZ,…", help="refuse clocks outside this list (MHz, commas)"
    )
    plan.add_argument("--frontier", metavar="OUT.csv", help="write the frontier (time,energy)")
    plan.add_argument(
        "--plans", metavar="PATH", help="write every point's plan: a .json file, or a directory"
    )
    tgt = plan.add_mutually_exclusive_group()
    tgt.add_argument("--target", choices=("fastest",), help="no slowdown (the default)")
    tgt.add_argument("--straggler", type=float, metavar="T", help="straggler iteration time (s)")
    tgt.add_argument("--straggler-ratio", type=float, metavar="R", help="T′ = R × T_min")
    tgt.add_argument("--deadline", type=float, metavar="S", help="iteration time limit (s)")
    tgt.add_argument(
        "--max-slowdown", metavar="P%", help="accept up to P percent slower than T_min (e.g. 1%%)"
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")
    plan.set_defaults(func=run_plan)

    from perwatt.cli import train_loop

    train_loop.register(sub)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show library warnings (e.g. a noisy profile) as ``perwatt: warning: …`` lines on stderr.

    Python's default display adds the file, line and source line of the warn() call, which
    reads like a crash to a user.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"perwatt: warning: {w.message}", file=sys.stderr)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be numbers separated by commas, got {text!r}") from None


def run_plan(args: argparse.Namespace) -> int:
    from perwatt.train.plan import choice_as_dict, format_choice, plan_pipeline

    p_block = _floats(args.p_block, "--p-block")
    if not p_block:
        raise ConfigError("--p-block needs a value in watts")
    slowdown = None
    if args.max_slowdown is not None:
        parsed = _floats(args.max_slowdown.rstrip("%"), "--max-slowdown")
        if len(parsed) != 1:
            raise ConfigError(
                f"--max-slowdown takes one percentage, e.g. 1%, got {args.max_slowdown!r}"
            )
        slowdown = parsed[0]
    supported = None
    if args.supported_freqs:
        supported = [int(f) for f in _floats(args.supported_freqs, "--supported-freqs")]
    with one_line_warnings():
        report = plan_pipeline(
            args.profile,
            stages=args.stages,
            microbatches=args.microbatches,
            p_block_w=p_block[0] if len(p_block) == 1 else p_block,
            schedule=args.schedule,
            chunks=args.chunks,
            recompute=args.recompute,
            time_quantum_s=args.quantum_ms / 1e3,
            cost_model=args.cost_model,
            noise_factor=args.noise_factor,
            supported_freqs_mhz=supported,
            frontier_csv=args.frontier,
            plans_path=args.plans,
            target=args.target,
            straggler_s=args.straggler,
            straggler_ratio=args.straggler_ratio,
            deadline_s=args.deadline,
            max_slowdown_pct=slowdown,
        )
    if args.json:
        doc = choice_as_dict(report.choice, report.frontier)
        doc["frontier_csv"] = report.frontier_csv
        doc["plans"] = report.plans_path
        doc["solve_s"] = report.solve_s
        print(json.dumps(doc, indent=2))
    else:
        print(format_choice(report.choice, report.frontier))
        if report.frontier_csv:
            print(f"frontier written to {report.frontier_csv}")
        if report.plans_path:
            print(f"plans written to {report.plans_path}")
    return 0
