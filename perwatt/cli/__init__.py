"""The ``perwatt`` command: a thin layer over the library.

Each area registers its subcommands from its own module (``perwatt.cli.meter`` for ``env`` and
``meter``, ``perwatt.cli.bench`` for ``bench``/``compare``/``report``, ``perwatt.cli.train``, and
``perwatt.cli.engine`` for ``serve`` and ``quantize``). Those modules parse arguments and call one public library
function each; no logic lives here.

Errors the user can act on (see :mod:`perwatt.errors`) print as one line on stderr with a non-zero
exit code and no traceback; Ctrl-C exits 130 after the command has written what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from perwatt.errors import CLEAN_EXIT_ERRORS, UserError

# meter: env, meter · bench: bench · analysis: compare, report · train: train … · engine: serve, quantize
# facility: facility … · cost: cost
_AREAS = ("meter", "bench", "analysis", "train", "engine", "facility", "cost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perwatt",
        description="Measure and raise tokens per joule: GPUs, inference servers, training, sites.",
    )
    from perwatt import __version__

    parser.add_argument("--version", action="version", version=f"perwatt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in _AREAS:
        importlib.import_module(f"perwatt.cli.{area}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("perwatt: interrupted", file=sys.stderr)
        return 130
    except CLEAN_EXIT_ERRORS as e:
        print(f"perwatt: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UserError) else 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
