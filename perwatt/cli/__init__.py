"""The ``perwatt`` command: a thin layer over the library.

Each area registers its subcommands from its own module: ``perwatt.cli.meter`` for ``env`` and
``meter``, ``perwatt.cli.bench`` for ``bench``, ``perwatt.cli.analysis`` for ``compare``,
``report`` and ``quality``, ``perwatt.cli.train`` (with ``train_loop``) for ``train``,
``perwatt.cli.engine`` for ``serve`` and ``quantize``, ``perwatt.cli.experiment`` for
``experiment``; option parsing they share is in ``perwatt.cli.options``. Those modules parse
arguments and call the public library; no logic lives here. The package's layout and one-way
flow: ARCHITECTURE.md.

Errors the user can act on (see :mod:`perwatt.errors`) print as one line on stderr with a non-zero
exit code and no traceback. Ctrl-C and SIGTERM (``timeout``, Slurm, systemd, Kubernetes) both stop a
command the same way (:mod:`perwatt._signals`): it writes what it measured, marked partial with
the reason, and exits 130 (Ctrl-C) or 143 (SIGTERM). Output piped into a reader that stops early
(``perwatt env --json | head``) ends the command quietly with 141, as a broken pipe ends ``cat``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
from collections.abc import Sequence

from perwatt import __version__
from perwatt._signals import interrupt_exit_code, interrupt_reason, sigterm_as_interrupt
from perwatt.errors import CLEAN_EXIT_ERRORS, UserError

#: 128 + SIGPIPE: what a shell reports for a writer whose reader went away.
EXIT_BROKEN_PIPE = 141

#: Which area module registers each command. Only the area of the command being run is imported
#: (all of them for ``--help`` or a mistyped command), so ``perwatt meter`` never loads the
#: facility simulator's NumPy models and ``perwatt --version`` loads none: pip keeps the same
#: table (``pip._internal.commands.commands_dict``, a module path per command) for the same
#: reason. tests/cli/test_main.py checks that the table and the areas agree.
COMMAND_AREAS: dict[str, str] = {
    "env": "meter",
    "meter": "meter",
    "bench": "bench",
    "compare": "analysis",
    "report": "analysis",
    "quality": "analysis",
    "train": "train",
    "serve": "engine",
    "quantize": "engine",
    "experiment": "experiment",
    "facility": "facility",
    "cost": "cost",
}
_AREAS = tuple(dict.fromkeys(COMMAND_AREAS.values()))


def _areas_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The areas whose subcommands ``argv`` can reach (every area when it is not one command)."""
    if argv:
        first = argv[0]
        if first in COMMAND_AREAS:
            return (COMMAND_AREAS[first],)
        if first == "--version":
            return ()
    return _AREAS


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``perwatt`` argument parser: every area's subcommands, or those ``argv`` names."""
    parser = argparse.ArgumentParser(
        prog="perwatt",
        description="Measure and raise tokens per joule: GPUs, inference servers, training, sites.",
    )
    parser.add_argument("--version", action="version", version=f"perwatt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in _areas_for(argv):
        importlib.import_module(f"perwatt.cli.{area}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``perwatt`` with ``argv``; returns the exit code (user errors: one line, 2)."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            try:
                rc = args.func(args)
            except KeyboardInterrupt as e:
                print(f"perwatt: {interrupt_reason(e)}", file=sys.stderr)
                return interrupt_exit_code(e)
            except CLEAN_EXIT_ERRORS as e:
                print(f"perwatt: error: {e}", file=sys.stderr)
                return 2 if isinstance(e, UserError) else 1
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        if not _silence_closed_pipes():
            raise  # not our output: a real error somewhere else
        return EXIT_BROKEN_PIPE
    return int(rc or 0)


def _silence_closed_pipes() -> bool:
    """Point stdout/stderr at /dev/null where their reader has gone; whether one had.

    The Python documentation's recipe for SIGPIPE (``signal`` module notes): without it, the
    interpreter's final flush raises again and prints a traceback about a pipe nobody reads.
    """
    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # replaced by a test harness, or already closed
            continue
        poll = select.poll()
        poll.register(fd, 0)  # POLLERR is always reported: a pipe whose reader closed
        if any(ev & select.POLLERR for _, ev in poll.poll(0)):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
            closed = True
    return closed


if __name__ == "__main__":
    sys.exit(main())
