"""``perwatt train …``: argument parsing only; the work is in :mod:`perwatt.train`.

``perwatt train plan`` is here; ``profile`` and ``simulate`` come from
:mod:`perwatt.cli.train_loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perwatt.errors import ConfigError

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

    from perwatt.cli import train_loop

    train_loop.register(sub)


# ---------------------------------------------------------------------- options shared with
# `train simulate` (perwatt.cli.train_loop), so both commands take the same flags, units and
# ranges, and any flag a library message suggests (e.g. --noise-factor) exists on both.

# argparse before Python 3.13 takes only "-5" and "-0.5" as values; "-5%", "-1e3" or "-inf"
# look like unknown options, so `--max-slowdown -5%` failed with "expected one argument"
# instead of reaching the range check below. No train option starts with "-<digit>".
_NEGATIVE_VALUE = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)


def accept_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let option values that start with a minus sign reach the range checks."""
    parser._negative_number_matcher = _NEGATIVE_VALUE


SCHEDULES = ("1f1b", "gpipe", "interleaved")


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline: size, blocking power and schedule (checked by :func:`model_kwargs`)."""
    parser.add_argument("--stages", type=int, required=True, help="pipeline stages")
    parser.add_argument(
        "--microbatches", type=int, required=True, help="microbatches per iteration"
    )
    parser.add_argument(
        "--p-block",
        required=True,
        metavar="W",
        help="power one GPU draws while blocked on communication, in watts (measured by "
        "`perwatt train profile`); one value, or one per stage separated by commas",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, default="1f1b", help="(default 1f1b)")
    parser.add_argument(
        "--chunks", type=int, default=1, help="model chunks per GPU (--schedule interleaved)"
    )
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="activation recomputation: backward re-runs forward",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantum-ms", metavar="MS", help="time quantum in ms (default 1)")
    parser.add_argument(
        "--cost-model",
        choices=("exponential", "convex-hull"),
        default="exponential",
        help="per-instruction cost model (default exponential, as Perseus)",
    )
    parser.add_argument(
        "--noise-factor",
        metavar="F",
        default="1",
        help="Pareto-filter slack for noisy profiles, ≥ 1 (default 1: the plain Pareto "
        "filter; 1.02 also drops slower clocks that save under ~2%% energy)",
    )
    parser.add_argument(
        "--supported-freqs", metavar="MHZ,…", help="refuse clocks outside this list (MHz, commas)"
    )


def add_target_options(parser: argparse.ArgumentParser) -> None:
    tgt = parser.add_mutually_exclusive_group()
    tgt.add_argument("--target", choices=("fastest",), help="no slowdown (the default)")
    tgt.add_argument(
        "--straggler", metavar="S", help="iteration time of a straggling pipeline, in seconds"
    )
    tgt.add_argument(
        "--straggler-ratio", metavar="R", help="straggler at R × T_min (R ≥ 1, e.g. 1.2)"
    )
    tgt.add_argument("--deadline", metavar="S", help="iteration time limit, in seconds")
    tgt.add_argument(
        "--max-slowdown",
        metavar="P%",
        help="accept up to P percent slower than T_min (P ≥ 0, e.g. 1%%)",
    )


def number(
    text: str,
    flag: str,
    *,
    low: float,
    low_open: bool = False,
    what: str,
    shown: str | None = None,
) -> float:
    """``text`` as a finite float ≥ ``low`` (> ``low`` when ``low_open``), else a one-line
    ConfigError naming ``flag``, the valid range and an example (``what``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > low if low_open else value >= low)):
        raise ConfigError(f"{flag} must be {what}, got {shown if shown is not None else text!r}")
    return value


def percent(text: str, flag: str) -> float:
    """A percentage ≥ 0 written ``1%``, ``1 %`` or ``1``."""
    body = text.strip()
    body = body[:-1].rstrip() if body.endswith("%") else body
    return number(body, flag, low=0.0, what="a percentage ≥ 0, e.g. 1%", shown=text)


def _p_block(text: str) -> float | list[float]:
    what = "watts ≥ 0: one value, or one per stage separated by commas (e.g. 83.64)"
    parts = [x.strip() for x in text.split(",")]
    if not text.strip() or not all(parts):
        raise ConfigError(f"--p-block must be {what}, got {text!r}")
    values = [number(x, "--p-block", low=0.0, what=what) for x in parts]
    return values[0] if len(values) == 1 else values


def not_a_directory(path: str | None, flag: str) -> None:
    """An output path that is a directory fails now, not after the frontier is solved (which
    takes minutes on a large pipeline)."""
    if path is not None and Path(path).is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory; give {flag} a file name")


def _supported_freqs(text: str | None) -> list[int] | None:
    if not text:
        return None
    freqs = _floats(text, "--supported-freqs")
    if not freqs or any(not math.isfinite(f) or f != int(f) or f <= 0 for f in freqs):
        raise ConfigError(
            "--supported-freqs must be whole MHz > 0 separated by commas (e.g. 1410,1395), "
            f"got {text!r}"
        )
    return [int(f) for f in freqs]


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Checked ``stages``, ``microbatches``, ``p_block_w``, ``schedule``, ``chunks``,
    ``recompute``, ``time_quantum_s``, ``cost_model``, ``noise_factor`` and
    ``supported_freqs_mhz``: bad values fail here, before any frontier is solved."""
    for flag, value in (("--stages", args.stages), ("--microbatches", args.microbatches)):
        if value < 1:
            raise ConfigError(f"{flag} must be a whole number ≥ 1, got {value}")
    if args.chunks < 1:
        raise ConfigError(f"--chunks must be a whole number ≥ 1, got {args.chunks}")
    if args.chunks > 1 and args.schedule != "interleaved":
        raise ConfigError(
            f"--chunks {args.chunks} needs --schedule interleaved (the {args.schedule} "
            "schedule runs one model chunk per GPU)"
        )
    quantum_ms = number(
        "1" if args.quantum_ms is None else args.quantum_ms,
        "--quantum-ms",
        low=0.0,
        low_open=True,
        what="milliseconds > 0, e.g. 1",
    )
    p_block = _p_block(args.p_block)
    if isinstance(p_block, list) and len(p_block) != args.stages:
        raise ConfigError(
            f"--p-block has {len(p_block)} values but --stages is {args.stages}: give one "
            "value, or one per stage"
        )
    return {
        "stages": args.stages,
        "microbatches": args.microbatches,
        "p_block_w": p_block,
        "schedule": args.schedule,
        "chunks": args.chunks,
        "recompute": args.recompute,
        "time_quantum_s": quantum_ms / 1e3,
        "cost_model": args.cost_model,
        "noise_factor": number(
            args.noise_factor, "--noise-factor", low=1.0, what="a number ≥ 1, e.g. 1.02"
        ),
        "supported_freqs_mhz": _supported_freqs(args.supported_freqs),
    }


def target_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The one target option given, checked: ``target=``, ``straggler_s=`` … for choose_plan.

    Ranges that need the frontier (a deadline below T_min) are the planner's to check; these
    are the ones that are wrong whatever the profile, so they fail before any solving.
    """
    seconds = "a time in seconds > 0, e.g. 3.5"
    if args.straggler is not None:
        return {
            "straggler_s": number(args.straggler, "--straggler", low=0, low_open=True, what=seconds)
        }
    if args.straggler_ratio is not None:
        ratio = number(
            args.straggler_ratio,
            "--straggler-ratio",
            low=1.0,
            what="a ratio ≥ 1 (T′ = R × T_min), e.g. 1.2",
        )
        return {"straggler_ratio": ratio}
    if args.deadline is not None:
        return {
            "deadline_s": number(args.deadline, "--deadline", low=0, low_open=True, what=seconds)
        }
    if args.max_slowdown is not None:
        return {"max_slowdown_pct": percent(args.max_slowdown, "--max-slowdown")}
    return {"target": args.target}


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


# A solve that runs longer than this says where it is, on stderr, this often (seconds).
PROGRESS_EVERY_S = 5.0


class SolveProgress:
    """Shows a long frontier solve moving: a ``perwatt: solving …`` line on stderr every
    :data:`PROGRESS_EVERY_S` seconds with the share of the iteration-time range swept (later
    steps cost more, so it is where the sweep is, not a time estimate). A quick solve prints
    nothing."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        print(
            f"perwatt: solving the frontier: {fraction:.0%} of the iteration-time range swept, "
            f"{now - self.started:.0f} s so far (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be numbers separated by commas, got {text!r}") from None


def run_plan(args: argparse.Namespace) -> int:
    from perwatt.train.plan import choice_as_dict, format_choice, plan_pipeline

    model = model_kwargs(args)
    choice = target_kwargs(args)
    not_a_directory(args.frontier, "--frontier")
    with one_line_warnings():
        report = plan_pipeline(
            args.profile,
            **model,
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
