"""``perwatt train …``: argument parsing only; the work is in :mod:`perwatt.train`.

``perwatt train plan`` is here; ``profile`` and ``simulate`` come from
:mod:`perwatt.cli.train_loop`.
"""

from __future__ import annotations

import argparse
import json

from perwatt.cli import train_loop
from perwatt.cli.options import (
    SolveProgress,
    accept_negative_values,
    add_model_options,
    add_pipeline_options,
    add_target_options,
    not_a_directory,
    one_line_warnings,
    pipeline_spec,
    target_kwargs,
    train_flags,
)

_EPILOG = """\
examples:
  perwatt train plan data/perseus-sosp24/stage_profile/gpt3-175b+a100_sxm_bf16.csv \\
      --stages 8 --microbatches 24 --p-block 83.64 --frontier frontier.csv --target fastest
  perwatt train plan PROFILE.csv --stages 8 --microbatches 24 --p-block 83.64 \\
      --straggler-ratio 1.2 --plans plans.json --json

The first example's profile is the Perseus (SOSP'24) measurement of GPT-3 175B on A100s,
shipped in the repository under data/perseus-sosp24/ (Apache-2.0, see its README).
P_block is the power one GPU draws while blocked on communication (Perseus measured
83.64 W on A100 SXM and 70.38 W on A40; `perwatt train profile` reports yours). Several
PROFILE files are the data/tensor-parallel ranks of one pipeline (max time, summed energy).
Times are in seconds, energies in joules, one GPU per file: a profile or P_block whose
power is implausible for the GPU its top clock matches (ms, kJ, mW) is refused. Every
figure is a replay of the profile (labelled simulated), not a measurement in training.
"""

# RawDescriptionHelpFormatter keeps the examples' layout, so this text is wrapped by hand.
_PLAN_DESCRIPTION = """\
Compute the iteration time-energy Pareto frontier of a pipeline from its stage profile
(one frequency plan per point), pick a plan for the target, and print it with the energy
saved versus all GPUs at max clock and versus the frontier's fastest point.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train`` (``plan``, ``profile``, ``simulate``) to the ``perwatt`` parser."""
    train = subparsers.add_parser(
        "train",
        help="training energy: frequency plans for pipeline parallelism (Perseus-class)",
        description="Remove energy bloat in pipeline-parallel training: measure each stage's "
        "time and energy per SM clock (profile), plan per-instruction GPU clocks from that "
        "profile (plan), and replay a plan on the pipeline timeline (simulate).",
    )
    sub = train.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True)

    plan = sub.add_parser(
        "plan",
        help="compute the time–energy frontier and choose a frequency plan",
        description=_PLAN_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    accept_negative_values(plan)
    plan.add_argument("profile", nargs="+", metavar="PROFILE.csv", help="stage profile CSV(s)")
    add_pipeline_options(plan)
    add_model_options(plan)
    plan.add_argument("--frontier", metavar="OUT.csv", help="write the frontier (time,energy)")
    plan.add_argument(
        "--plans", metavar="PATH", help="write every point's plan: a .json file, or a directory"
    )
    add_target_options(plan)
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")
    plan.set_defaults(func=run_plan)

    train_loop.register(sub)


def run_plan(args: argparse.Namespace) -> int:
    """``perwatt train plan``: solve the frontier, pick the plan, print and write it."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.train.plan import choice_as_dict, format_choice, plan_pipeline

    pipeline = pipeline_spec(args)
    choice = target_kwargs(args)
    not_a_directory(args.frontier, "--frontier")
    with one_line_warnings(), train_flags():
        report = plan_pipeline(
            args.profile,
            pipeline,
            frontier_csv=args.frontier,
            plans_path=args.plans,
            progress=SolveProgress(),
            **choice,
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
