"""``perwatt train profile`` and ``perwatt train simulate``: argument parsing only.

Registered by :mod:`perwatt.cli.train` (``register(train_subparsers)``); the work is in
:mod:`perwatt.train.profiler`, :mod:`perwatt.train.simulate` and :mod:`perwatt.report.gantt`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from perwatt._signals import interrupt_exit_code, interrupt_reason
from perwatt.cli.options import (
    SolveProgress,
    accept_negative_values,
    add_model_options,
    add_pipeline_options,
    add_target_options,
    not_a_directory,
    number,
    one_line_warnings,
    pipeline_spec,
    target_kwargs,
    train_flags,
)
from perwatt.errors import ConfigError, PartialRunError

if TYPE_CHECKING:
    from perwatt.train.profiler import ProfileRow

# RawDescriptionHelpFormatter keeps the hook example's layout, so this text is wrapped by hand.
_PROFILE_DESCRIPTION = """\
Sweep SM clocks from the maximum down (warm-up iterations at each clock, early stop once
energy stops falling) while training runs, and write the stage profile CSV
(stage,instruction,frequency,time,energy) that `perwatt train plan` reads.

  --simulate  profile a simulated pipeline (figures labelled simulated).
  --script    run your training script under the profiler on one real GPU. The sweep locks
              SM clocks, so it needs --i-understand-this-changes-clocks and root or
              CAP_SYS_ADMIN. PERWATT_FAKE_NVML=A100 runs it against a fake GPU instead
              (for trying the hooks; figures labelled simulated).
"""

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


# --simulate's pipeline; None in the parser, so a --script run can tell they were given.
_SIM_GPU, _SIM_STAGES, _SIM_MICROBATCHES = "A100", 8, 8
_SIMULATE_FLAGS = {
    "gpu": "--gpu",
    "stages": "--stages",
    "microbatches": "--microbatches",
    "counter_period": "--counter-period",
}
_SCRIPT_FLAGS = {
    "stage": "--stage",
    "gpu_index": "--gpu-index",
}


def register(train_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``profile`` and ``simulate`` to ``perwatt train``."""
    prof = train_subparsers.add_parser(
        "profile",
        help="measure each stage's forward/backward time and energy at each SM clock",
        description=_PROFILE_DESCRIPTION,
        epilog=_HOOKS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    accept_negative_values(prof)
    mode = prof.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true", help="profile a simulated pipeline")
    mode.add_argument("--script", metavar="PY", help="training script that calls the hooks")
    prof.add_argument("--out", "-o", required=True, metavar="CSV", help="profile CSV to write")
    sim_only = prof.add_argument_group("--simulate options")
    sim_only.add_argument("--gpu", help=f"simulated GPU model: A100 or H100 (default {_SIM_GPU})")
    sim_only.add_argument("--stages", type=int, help=f"pipeline stages (default {_SIM_STAGES})")
    sim_only.add_argument(
        "--microbatches",
        type=int,
        help=f"microbatches per iteration (default {_SIM_MICROBATCHES})",
    )
    sim_only.add_argument(
        "--counter-period",
        type=float,
        metavar="S",
        help="simulate an energy counter that updates every S seconds (H100: ~0.1; default: exact)",
    )
    script_only = prof.add_argument_group("--script options")
    script_only.add_argument(
        "--stage", type=int, help="this process's pipeline stage, 0-based (default 0)"
    )
    script_only.add_argument(
        "--gpu-index", type=int, metavar="N", help="visible GPU to profile (default 0)"
    )
    script_only.add_argument(
        "--i-understand-this-changes-clocks",
        dest="allow_clock_changes",
        action="store_true",
        help="allow the sweep to lock SM clocks (reset to the defaults at the end)",
    )
    sweep = prof.add_argument_group("sweep options (both modes)")
    sweep.add_argument(
        "--step", type=int, default=1, help="use every STEP-th supported clock (default 1)"
    )
    sweep.add_argument(
        "--min-freq", type=int, metavar="MHZ", help="lowest clock to try, in MHz (default: none)"
    )
    sweep.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unmeasured iterations after each clock change (default 1)",
    )
    sweep.add_argument(
        "--iterations",
        type=int,
        default=2,
        help="measured iterations per clock (default 2; 10 on an H100)",
    )
    sweep.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop after this many clocks without a new energy minimum (default 3)",
    )
    sweep.add_argument(
        "--min-improvement",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="relative energy drop that counts as a new minimum, in [0, 1) (default 0; e.g. 0.002)",
    )
    sweep.add_argument(
        "--noise-tolerance",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="rises within this fraction of the minimum do not count towards --patience, in "
        "[0, 1) (default 0; 0.03 on an H100)",
    )
    prof.add_argument(
        "script_args", nargs=argparse.REMAINDER, help="arguments for --script, after --"
    )
    prof.set_defaults(func=run_profile)

    sim = train_subparsers.add_parser(
        "simulate",
        help="replay a plan on a profile and draw the pipeline timeline before/after",
        description="Compute the frontier, choose a plan, replay the all-max-clock baseline "
        "and the plan on the schedule DAG (profiled times/energies, blocked GPUs at P_block), "
        "print iteration time and energy before/after, and write one self-contained HTML file "
        "with Gantt charts coloured by clock and power and the frontier. Figures are simulated "
        "(a replay of the profile). Every schedule `perwatt train plan` plans (1f1b, gpipe, "
        "interleaved with --chunks, --recompute) replays here; options mean what they mean in "
        "`perwatt train plan`.",
    )
    accept_negative_values(sim)
    sim.add_argument("profile", metavar="PROFILE.csv", help="stage profile CSV")
    add_pipeline_options(sim)
    add_model_options(sim)
    # Before --quantum-ms (ms, as `train plan`) this command took the quantum in seconds.
    sim.add_argument("--time-quantum", metavar="S", help=argparse.SUPPRESS)
    add_target_options(sim)
    sim.add_argument("--out", "-o", metavar="HTML", help="write the HTML report here")
    sim.set_defaults(func=run_simulate)


def _sweep_config(args: argparse.Namespace) -> object:
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
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


def _print_notes(rows: Sequence[ProfileRow]) -> None:
    """One line per kind of row warning: they differ per clock only in their figures (a 45 ms
    or a 46 ms instruction), and one line per clock buried the stop reasons below them."""
    groups: dict[str, list[str]] = {}
    for note in sorted({w for r in rows for w in r.warnings}):
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", note), []).append(note)
    for notes in groups.values():
        more = f" (and {len(notes) - 1} more like it at other clocks)" if len(notes) > 1 else ""
        print(f"  note: {notes[0]}{more}")


def _print_script_traceback(exc: BaseException, script: str) -> None:
    """The user's traceback, from their script's first frame on: the frames above it (perwatt
    and runpy running the script) are not theirs to read."""
    target = os.path.realpath(script)
    tb = exc.__traceback__
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    text = traceback.format_exception(type(exc), exc, tb or exc.__traceback__)
    sys.stderr.write("".join(text))


def _given(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    # identity, not equality: 0 (`--stage 0`) == False, and a given 0 is still given
    return [
        flag
        for dest, flag in flags.items()
        if getattr(args, dest) is not None and getattr(args, dest) is not False
    ]


def _check_mode(args: argparse.Namespace) -> list[str]:
    """The options of the other mode are an error, not silently ignored. Returns the
    arguments for --script (without a leading ``--``)."""
    extra = list(args.script_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if args.simulate:
        wrong = _given(args, _SCRIPT_FLAGS)
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)} only apply to --script; --simulate profiles every stage "
                "of a simulated pipeline (size it with --stages and --microbatches)"
            )
        if extra:
            raise ConfigError(
                f"arguments after the options ({' '.join(extra)}) go to a --script; "
                "--simulate takes none"
            )
        return extra
    wrong = _given(args, _SIMULATE_FLAGS)
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} only apply to --simulate; with --script your script runs its "
            "own pipeline (this process profiles --stage on --gpu-index)"
        )
    return extra


def run_profile(args: argparse.Namespace) -> int:
    """``perwatt train profile``: sweep SM clocks over a training script (or a simulated
    pipeline)."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.train import profiler

    extra = _check_mode(args)
    cfg = _sweep_config(args)
    if args.simulate:
        stages = _SIM_STAGES if args.stages is None else args.stages
        res = profiler.profile_simulated_pipeline(
            num_stages=stages,
            microbatches=_SIM_MICROBATCHES if args.microbatches is None else args.microbatches,
            gpu=_SIM_GPU if args.gpu is None else args.gpu,
            config=cfg,  # type: ignore[arg-type]
            counter_period_s=args.counter_period,
        )
        path = profiler.write_profile_csv(res.rows, args.out)
        print(
            f"wrote {path}: {len(res.rows)} rows, {stages} stages, simulated {res.gpu} "
            f"[source: {res.source} — a model, not a measurement]"
        )
        _print_notes(res.rows)
        for s, why in enumerate(res.stop_reasons):
            pb = res.blocking_power_w[s]
            block = (
                f"blocking power {pb:.1f} W at the top clock [{res.source}] (use as --p-block)"
                if pb == pb
                else "no gap long enough to measure blocking power"
            )
            print(f"  stage {s}: {why} ({res.iterations[s]} iterations); {block}")
        return 0
    interrupted: profiler.ProfileInterrupted | None = None
    try:
        out = profiler.profile_script(
            args.script,
            extra,
            stage=args.stage or 0,
            out=args.out,
            gpu_index=args.gpu_index or 0,
            config=cfg,  # type: ignore[arg-type]
            allow_clock_changes=args.allow_clock_changes,
        )
    except PartialRunError as e:
        if e.__cause__ is not None:  # the script raised: its traceback, then perwatt's line
            _print_script_traceback(e.__cause__, args.script)
        raise
    except profiler.ProfileInterrupted as e:  # Ctrl-C or SIGTERM: say what was kept, 130/143
        out, interrupted = e.profile, e
    if out.fake:
        print("NOTE: FAKE GPU (PERWATT_FAKE_NVML): figures are simulated, not measured")
    if interrupted is not None:
        note = f" (PARTIAL: {interrupt_reason(interrupted)})"
    elif out.partial:
        note = " (PARTIAL: the script ended before the sweep did)"
    else:
        note = ""
    print(f"wrote {out.path}: {len(out.rows)} rows [source: {out.source}]{note}; {out.stop_reason}")
    _print_notes(out.rows)
    if out.blocking_power_w:
        top = max(out.blocking_power_w)
        print(
            f"blocking power at {top} MHz: {out.blocking_power_w[top]:.1f} W "
            f"[source: {out.source}] (use as --p-block)"
        )
    if interrupted is not None:
        print(f"perwatt: {interrupt_reason(interrupted)}", file=sys.stderr)
        return interrupt_exit_code(interrupted)
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    """``perwatt train simulate``: replay the chosen plan against all-max clocks."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.report.gantt import write_html
    from perwatt.train.simulate import run_simulation

    time_quantum_s = None
    if args.time_quantum is not None:
        if args.quantum_ms is not None:
            raise ConfigError(
                "give the time quantum once: --quantum-ms MS (or the old --time-quantum S)"
            )
        time_quantum_s = number(
            args.time_quantum,
            "--time-quantum",
            low=0,
            low_open=True,
            what="seconds > 0, e.g. 0.001",
        )
    pipeline = pipeline_spec(args, time_quantum_s=time_quantum_s)
    choice = target_kwargs(args)
    not_a_directory(args.out, "--out")
    if "target" in choice and choice["target"] is None:
        choice["target"] = "fastest"
    with one_line_warnings(), train_flags():
        report = run_simulation(args.profile, pipeline, progress=SolveProgress(), **choice)
    for line in report.summary_lines():
        print(line)
    if args.out:
        try:
            path = write_html(report, args.out)
        except OSError as e:
            raise ConfigError(f"cannot write {args.out}: {e.strerror or e}") from e
        print(f"report written to {path}")  # as `train plan` says where its files went
    return 0
