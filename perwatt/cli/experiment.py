"""``perwatt experiment run|report``: argument parsing only.

The work is in :mod:`perwatt.bench.experiment` (launch, measure, resume, analyse) and
:mod:`perwatt.report.experiment` (summary, calibration export, HTML report).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from perwatt._signals import interrupt_exit_code, interrupt_reason
from perwatt.errors import ConfigError

_DESCRIPTION = """\
Run an experiment file: launch each server configuration, wait until it is
ready, measure idle power, run every load level (at every GPU power limit /
locked SM clock) through perwatt's bench runner, stop the server, and go on.
Finished points are skipped on a re-run; Ctrl-C keeps what was measured. Then
write summary.json, calibration.json, report.html (Pareto frontier, best
configuration under the SLO with intervals, savings vs the baseline) and
runs.html into the output folder."""

_EPILOG = """\
examples:
  perwatt experiment run examples/cpu-demo.toml
  perwatt experiment run examples/recipes/vllm-bf16-vs-fp8.toml --dry-run
  perwatt experiment run pl-sweep.toml --i-understand-this-changes-clocks
  perwatt experiment report examples/cpu-demo.toml

exit code: 0 done (failed points are in the report); 2 bad input, found before
anything is launched; 130 Ctrl-C (what was measured is kept; re-run to finish)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``experiment run`` and ``experiment report`` to the ``perwatt`` parser."""
    ex = subparsers.add_parser(
        "experiment",
        help="launch server configurations x GPU settings x load; find the most tokens/J "
        "under an SLO",
        description="Experiments over server configurations (see `perwatt experiment run -h`).",
    )
    sub = ex.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="measure every unfinished point, then write the report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", metavar="EXPERIMENT.toml", help="the experiment file")
    run.add_argument("--out", help="output folder (default: experiment.out, else NAME-results)")
    run.add_argument(
        "--i-understand-this-changes-clocks",
        dest="allow_gpu_changes",
        action="store_true",
        help="allow setting GPU power limits and locked SM clocks (restored on exit, Ctrl-C, "
        "crash and SIGKILL); needs root or CAP_SYS_ADMIN",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and print the points that would be measured; launch nothing",
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="measure failed points again as well"
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(func=run_experiment_cmd)

    rep = sub.add_parser(
        "report",
        help="rewrite summary, calibration and report from what was measured (measures nothing)",
    )
    rep.add_argument("file", metavar="EXPERIMENT.toml")
    rep.add_argument("--out", help="output folder (default: experiment.out, else NAME-results)")
    rep.add_argument("--json", action="store_true", help="print the summary as JSON")
    rep.set_defaults(func=report_experiment_cmd)


def _print_answer(files: object, as_json: bool) -> None:
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.report.experiment import ExperimentFiles

    assert isinstance(files, ExperimentFiles)
    a = files.analysis
    if as_json:
        print(json.dumps(a.to_dict(), indent=2, default=str))
        return
    for w in a.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.best is None:
        print("best under the SLO: none")
    else:
        b = a.best
        print(
            f"best under the SLO: {b.label} at {b.load_text}: {b.output_tokens_per_j:.4g} output "
            f"tokens/J ({b.energy_source})"
        )
        r = a.best_vs_baseline
        if r is not None:
            ci = (
                f" [95% CI {r.ci_low:.3g}-{r.ci_high:.3g}]"
                if r.ci_low is not None and r.ci_high is not None
                else ""
            )
            print(f"  J/token vs baseline {r.a}: x{r.ratio:.3g}{ci} ({r.verdict})")
        s = a.savings
        if s is not None:
            print(
                f"  saving: {s.saved_j_per_token:.4g} J/token ({s.saved_pct:.3g} %), "
                f"${s.saved_usd_per_year:,.0f}/year at {s.site_gpus} GPUs ({s.energy_source})"
            )
    if a.missing:
        print(f"missing points: {', '.join(a.missing)}", file=sys.stderr)
    print(f"report: {files.report}")


def run_experiment_cmd(args: argparse.Namespace) -> int:
    """``perwatt experiment run``: run (or resume) an experiment and write its outputs."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.experiment import ExperimentInterrupted, load_experiment, run_experiment
    from perwatt.report.experiment import write_experiment_outputs

    config = load_experiment(args.file)
    out = Path(args.out) if args.out else config.out_dir
    # SIGTERM (a scheduler, `kill`) stops the run like Ctrl-C (cli.main installs
    # perwatt._signals for every command): the point in progress is kept, marked partial, the
    # server stopped and the GPU restored.
    try:
        outcome = run_experiment(
            config,
            out_dir=out,
            allow_gpu_changes=args.allow_gpu_changes,
            dry_run=args.dry_run,
            retry_failed=args.retry_failed,
        )
    except ExperimentInterrupted as e:
        missing = e.outcome.missing
        print(
            f"perwatt: {interrupt_reason(e)}; {len(e.outcome.measured)} point(s) measured now, "
            f"{len(missing)} missing: {', '.join(missing)}. Re-run the same command to finish.",
            file=sys.stderr,
        )
        if out.is_dir():
            files = write_experiment_outputs(config, out)
            print(f"partial report: {files.report}", file=sys.stderr)
        return interrupt_exit_code(e)
    if outcome.dry_run:
        print(f"dry run: {len(outcome.missing)} point(s) to measure, {len(outcome.skipped)} done")
        for line in outcome.plan:
            print(f"  {line}")
        return 0
    files = write_experiment_outputs(config, out)
    _print_answer(files, args.json)
    return 0


def report_experiment_cmd(args: argparse.Namespace) -> int:
    """``perwatt experiment report``: rewrite an experiment's outputs from its points."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.experiment import load_experiment
    from perwatt.report.experiment import write_experiment_outputs

    config = load_experiment(args.file)
    out = Path(args.out) if args.out else config.out_dir
    if not out.is_dir():
        raise ConfigError(f"{out}: no results yet; run `perwatt experiment run {args.file}`")
    _print_answer(write_experiment_outputs(config, out), args.json)
    return 0
