"""``perwatt env`` and ``perwatt meter``: argument parsing only; the work is in perwatt.meter."""

from __future__ import annotations

import argparse
import json
import sys

from perwatt._signals import interrupts_deferred
from perwatt.cli.options import check_output_path
from perwatt.errors import ConfigError
from perwatt.meter.detect import (
    SPEC_HELP,
    close_sources,
    describe_environment,
    format_environment,
    open_sources,
)

_METER_DESCRIPTION = """\
Run CMD and print its energy per device and in total, average and peak power, and
the source of every figure, like `time` prints time (to stderr). The exit code is
the command's. Ctrl-C and SIGTERM are forwarded to the command and everything it
started (its process group); a second one, or 5 s, escalates to SIGTERM, then
SIGKILL. What was measured is still printed, marked partial. If the power source
fails while CMD runs (e.g. dcgm-exporter stops answering), CMD runs on; the
energy up to the last good reading is printed, marked partial with the reason,
and the exit code is non-zero (1 if the command itself succeeded)."""

_METER_EPILOG = """\
power sources (--source SPEC):
  auto            NVIDIA GPUs via NVML if any, else a dcgm-exporter named by
                  PERWATT_DCGM_URL, else the CPU's RAPL counters, else an estimate
                  from CPU utilisation (labelled 'estimated': not a measurement)
  nvml, nvml:0,2  all visible GPUs, or those indices (see `perwatt env`)
  rapl            CPU package and DRAM (Linux powercap)
  dcgm:URL        a dcgm-exporter /metrics page; comma-separate URLs for several
                  nodes. It refreshes every 30 s by default, so figures for shorter
                  commands are approximate (the report says so)
  prometheus:URL  a Prometheus server that scrapes dcgm-exporter; one that holds
                  several hosts needs --select
  --select EXPR   which GPUs of dcgm:/prometheus: to meter: PromQL label matchers
                  (Hostname="node1", Hostname=~"node[12]", namespace="llm",pod=~"vllm-.*"),
                  GPU indices (0,2), UUIDs (GPU-...) or device labels (node1/gpu0)
  replay:FILE     a recorded CSV/JSONL power trace
  simulated       a fixed power model for demos (labelled 'simulated')
  estimated       the CPU-utilisation estimate, even where a real source exists

examples:
  perwatt meter -- python train.py
  perwatt meter --source dcgm:http://node1:9400 -o energy.json -- ./bench.sh
  perwatt meter --source prometheus:http://prom:9090 --select 'Hostname="node1"' -- ./bench.sh
  perwatt meter --watch"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``env`` and ``meter`` to the ``perwatt`` parser."""
    env = subparsers.add_parser(
        "env",
        help="what is on this machine: GPUs, clocks, power limits, RAPL, CPU, chosen source",
        description="Inspect GPUs (driver, power limits, clocks, energy counter, whether perwatt "
        "could set clocks — a read-only check), RAPL domains, the CPU, and which power source "
        "auto-detection picks and why others were skipped. Changes nothing.",
    )
    env.add_argument("--json", action="store_true", help="print JSON instead of text")
    env.set_defaults(func=run_env)

    meter = subparsers.add_parser(
        "meter",
        help="run a command and print its energy (like `time`), or --watch live power",
        description=_METER_DESCRIPTION,
        usage="perwatt meter [options] -- CMD [ARGS...]\n       perwatt meter --watch [options]",
        epilog=_METER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    meter.add_argument(
        "--source",
        default="auto",
        metavar="SPEC",
        help=f"power source: {SPEC_HELP} (default auto; see below)",
    )
    meter.add_argument(
        "--select",
        default=None,
        metavar="EXPR",
        help="GPUs of a dcgm: or prometheus: source to meter (label matchers, indices, UUIDs; "
        "see below)",
    )
    meter.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="power sampling interval in seconds (default 0.1; 1.0 with --watch)",
    )
    meter.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout instead of the text report on stderr (it "
        "follows anything the command prints to stdout; use -o FILE for the JSON alone)",
    )
    meter.add_argument("-o", "--output", metavar="FILE", help="also write the JSON result to FILE")
    meter.add_argument(
        "--timeline",
        metavar="FILE",
        help="write the sampled power timeline as CSV (time_s,device,power_w,energy_j,source)",
    )
    meter.add_argument(
        "--idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first measure idle power for SECONDS, with the machine otherwise quiet; it is "
        "reported, and subtracted only with --subtract-idle",
    )
    meter.add_argument(
        "--subtract-idle",
        action="store_true",
        help="subtract the --idle power x duration from each device's energy (the report says so)",
    )
    meter.add_argument(
        "--watch",
        action="store_true",
        help="show live power per device every --interval until Ctrl-C (or --count refreshes)",
    )
    meter.add_argument(
        "--count", type=int, default=None, metavar="N", help="with --watch: stop after N refreshes"
    )
    meter.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="the command to meter and its arguments, after -- (passed on unchanged)",
    )
    meter.set_defaults(func=run_meter)


def environment_components() -> tuple[str, ...]:
    """Optional parts that change what perwatt can do or how fast (no heavy imports here)."""
    from importlib.util import find_spec

    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.result import torch_version
    from perwatt.train.solver import compiled_solver_available

    torch = torch_version()
    scipy = find_spec("scipy") is not None
    return (
        "training planner: "
        + (
            "compiled frontier sweep (perwatt/train/_sweep.c)"
            if compiled_solver_available()
            else "NumPy/SciPy frontier sweep - the compiled one was not built (no C compiler "
            "at install; reinstall with one for ~15x faster plans)"
        )
        + ("" if scipy else "; SciPy missing: pip install 'perwatt[train]'"),
        "built-in engine: "
        + (f"torch {torch}" if torch else "torch not installed: pip install 'perwatt[engine]'"),
    )


def run_env(args: argparse.Namespace) -> int:
    """``perwatt env``: what this machine can measure and control, read-only."""
    report = describe_environment(environment_components())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_environment(report))
    return 0


def run_meter(args: argparse.Namespace) -> int:
    """``perwatt meter -- CMD``: run CMD and print its energy; returns CMD's exit code."""
    # lazy: the meter loads when a command is metered, not for `perwatt --help`/--version
    from perwatt.meter.meter import Meter
    from perwatt.meter.run import (
        format_command_measurement,
        measure_command,
        watch_power,
        write_json,
    )

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.watch and cmd:
        raise ConfigError("--watch takes no command; use either --watch or -- CMD")
    if args.watch:
        # These shape a command's measurement; --watch has none, so they would be ignored.
        given = [
            flag
            for flag, value in (
                ("--json", args.json),
                ("-o/--output", args.output),
                ("--timeline", args.timeline),
                ("--idle", args.idle),
                ("--subtract-idle", args.subtract_idle),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} measure a command and do nothing with --watch; "
                "drop them, or use -- CMD instead of --watch"
            )
    if not args.watch and not cmd:
        raise ConfigError("no command given: perwatt meter -- CMD ARGS... (or --watch)")
    if args.count is not None and not args.watch:
        raise ConfigError("--count only applies to --watch")
    if args.subtract_idle and not args.idle > 0:
        raise ConfigError("--subtract-idle needs an idle baseline: add --idle SECONDS")
    interval = args.interval if args.interval is not None else (1.0 if args.watch else 0.1)
    if not interval > 0:
        raise ConfigError(f"--interval must be positive, got {interval}")
    # A bad output path found after a long command would cost the run: refuse it up front.
    if args.output:
        check_output_path(args.output, "-o/--output", make_parents=True)
    if args.timeline:
        check_output_path(args.timeline, "--timeline", make_parents=False)
    sources = open_sources(args.source, select=args.select)
    try:
        meter = Meter(sources, sample_interval_s=interval, subtract_idle=args.subtract_idle)
    except BaseException:
        close_sources(sources)
        raise
    try:
        if args.watch:
            watch_power(meter, interval_s=interval, count=args.count)
            return 0
        result = measure_command(cmd, meter, idle_s=args.idle)
    finally:
        meter.close()
    # A Ctrl-C/SIGTERM now waits until the report and the files are out, then counts (130/143).
    with interrupts_deferred():
        # The report first: a file that cannot be written below must not swallow the measurement.
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print(format_command_measurement(result), file=sys.stderr)
        if args.output:
            write_json(args.output, result.to_dict())
        if args.timeline:
            meter.write_timeline(args.timeline)  # the samples outlive close()
    return result.exit_code
