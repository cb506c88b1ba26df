"""Option helpers shared by every ``perwatt`` command: numbers, percentages, ports, endpoints,
output paths, and the training flags ``train plan`` and ``train simulate`` both take.

Number flags are parsed in one place (:func:`number`): finite unless a flag explicitly allows
infinity. ``float("nan")`` and ``float("inf")`` parse, and NaN passes every ``x < 0`` check (all
comparisons with NaN are false): ``--min-window-s nan`` used to run forever. Flags that take a
real number are therefore declared as text and converted here after parsing, so a bad value is
one line (``perwatt: error: --timeout must be …``) instead of argparse's usage block, and the
range check sits next to the conversion.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from perwatt.errors import ConfigError, FieldError

if TYPE_CHECKING:
    from perwatt.train.pipeline import PipelineSpec


def number(
    value: str | float,
    flag: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    allow_inf: bool = False,
    unit: str = "",
    what: str | None = None,
    shown: str | None = None,
) -> float:
    """``value`` (command-line text, or a default already a float) as a float in range.

    NaN is always refused; ±inf only with ``allow_inf``. ``low``/``high`` bound the value
    (``low`` excluded when ``low_open``). The error names ``flag``, the unit and the range —
    or, when given, ``what`` the flag must be (e.g. ``"a ratio ≥ 1, e.g. 1.2"``); ``shown`` is
    the text the error quotes when it differs from ``value`` (a percentage without its ``%``).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    kind = "a number" if allow_inf else "a finite number"
    want = f"{flag} must be {kind}" + (f" of {unit}" if unit else "")
    want += f" {' and '.join(bounds)}" if bounds else ""
    if what is not None:
        want = f"{flag} must be {what}"
    if shown is None:
        shown = value if isinstance(value, str) else f"{value:g}"
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{want}, got {shown!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f"{want}, got {shown!r}")
    if high is not None and v > high:
        raise ConfigError(f"{want}, got {shown!r}")
    return v


def positive_int(text: str) -> int:
    """An argparse ``type=``: a whole number ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def port(text: str) -> int:
    """An argparse ``type=``: a TCP port, 0 (any free port) to 65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 = any free port), got {v}")
    return v


def endpoint(text: str) -> str:
    """``--endpoint``: ``completions`` or ``chat`` (also their paths and aliases)."""
    t = text.strip().lower().rstrip("/")
    if t in ("completions", "/v1/completions", "openai"):
        return "completions"
    if t in ("chat", "chat/completions", "/v1/chat/completions", "openai-chat"):
        return "chat"
    raise ConfigError(f"--endpoint {text!r}: use completions or chat")


def check_output_path(path: str, flag: str, *, make_parents: bool) -> None:
    """An output file path that cannot be written fails before the work, not after it."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name, e.g. {p / 'out'}")
    parent = next((a for a in (p.parent, *p.parent.parents) if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a directory")
    if not make_parents and not p.parent.is_dir():
        raise ConfigError(f"{flag} {path}: directory {p.parent} does not exist")


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
    """The pipeline: size, blocking power and schedule (checked by :func:`pipeline_spec`)."""
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
    """The planner's model flags: time quantum, cost model, noise factor, supported clocks."""
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
    """The plan's target: fastest, a straggler, a deadline or a slowdown (one of them)."""
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


#: What ``perwatt bench`` calls each ServerBenchConfig / workload field.
BENCH_FLAGS: Final[Mapping[str, str]] = {
    "endpoint": "--endpoint",
    "num_prompts": "--num-prompts",
    "input_len": "--input-len",
    "output_len": "--output-len",
    "num_gpus": "--num-gpus",
    "idle_seconds": "--idle-seconds",
    "subtract_idle": "--subtract-idle",
    "timeout_s": "--timeout",
    "max_failed_fraction": "--max-failed-fraction",
    "request_rates": "--request-rate",
    "max_concurrencies": "--max-concurrency",
}


@contextlib.contextmanager
def flags_for(names: Mapping[str, str]) -> Iterator[None]:
    """Library errors about config fields (:class:`FieldError`) said with a command's flags
    (``names``: field → flag): ``stages must be …`` becomes ``--stages must be …``."""
    try:
        yield
    except FieldError as e:
        raise ConfigError(e.naming(names)) from None


#: What the training commands call each PipelineSpec field (their messages name flags).
TRAIN_FLAGS: Final[Mapping[str, str]] = {
    "stages": "--stages",
    "microbatches": "--microbatches",
    "chunks": "--chunks",
    "schedule": "--schedule",
    "p_block_w": "--p-block",
    "time_quantum_s": "--quantum-ms",
    "noise_factor": "--noise-factor",
    "cost_model": "--cost-model",
    "supported_freqs_mhz": "--supported-freqs",
}


def train_flags() -> contextlib.AbstractContextManager[None]:
    """:func:`flags_for` the training commands' flags."""
    return flags_for(TRAIN_FLAGS)


def pipeline_spec(args: argparse.Namespace, *, time_quantum_s: float | None = None) -> PipelineSpec:
    """The checked :class:`~perwatt.train.pipeline.PipelineSpec` of ``train plan``/``simulate``
    flags (``time_quantum_s``: the quantum when given another way than ``--quantum-ms``): bad
    values fail here, before any frontier is solved."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.train.pipeline import PipelineSpec

    if time_quantum_s is None:
        quantum_ms = number(
            "1" if args.quantum_ms is None else args.quantum_ms,
            "--quantum-ms",
            low=0.0,
            low_open=True,
            what="milliseconds > 0, e.g. 1",
        )
        time_quantum_s = quantum_ms / 1e3
    p_block = _p_block(args.p_block)
    noise_factor = number(
        args.noise_factor, "--noise-factor", low=1.0, what="a number ≥ 1, e.g. 1.02"
    )
    supported = _supported_freqs(args.supported_freqs)
    with train_flags():
        return PipelineSpec(
            stages=args.stages,
            microbatches=args.microbatches,
            p_block_w=p_block if isinstance(p_block, float) else tuple(p_block),
            schedule=args.schedule,
            chunks=args.chunks,
            recompute=args.recompute,
            time_quantum_s=time_quantum_s,
            cost_model=args.cost_model,
            noise_factor=noise_factor,
            supported_freqs_mhz=None if supported is None else tuple(supported),
        )


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
