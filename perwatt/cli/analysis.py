"""``perwatt compare``, ``perwatt report`` and ``perwatt quality``: argument parsing only.

The work is in :mod:`perwatt.bench.compare`, :mod:`perwatt.report` and
:mod:`perwatt.bench.quality`. The accuracy guard is its own subcommand (it talks to two live
servers, while compare and report only read files); ``--attach`` puts its figures into bench
results so that compare and report show them next to the energy figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable

from perwatt._signals import interrupt_exit_code
from perwatt.bench.defaults import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, MAX_RESAMPLES
from perwatt.cli.guard_flags import add_guard_flags, guard_thresholds
from perwatt.cli.options import number
from perwatt.errors import ConfigError

#: From this many resamples on, compare prints its progress (10x the default: seconds per
#: interval on large runs).
_PROGRESS_FROM_RESAMPLES = 10 * DEFAULT_RESAMPLES

_QUALITY_DESCRIPTION = """\
Send a fixed prompt set with greedy decoding (temperature 0, fixed --max-tokens
and --seed) to a reference server (first --url) and a candidate (second --url),
e.g. a BF16 and an FP8 deployment of one model, and report exact match, greedy
token agreement up to the first divergence and, where the servers return
logprobs, log-prob agreement. --attach writes the figures into bench results'
accuracy block."""

_QUALITY_EPILOG = """\
prompt file: JSONL, one prompt per line, blank lines and # comments skipped:
  {"prompt": "text"}                                      sent to /completions
  {"messages": [{"role": "user", "content": "text"}]}     sent to /chat/completions
  either may carry an "id"

exit code: 0 done and the candidate passes the accuracy guard (or nothing it
judges was measured); 3 done but the candidate FAILS the guard (scripts and CI
can gate a deployment on it; the figures and --out are written either way, and
--attach still attaches them: compare and report show the FAIL); 2 bad input,
or a server that cannot be reached (both are checked before any prompt is
sent); 1 a server failed mid-run; 130 Ctrl-C; 143 SIGTERM. In the last three
cases --out keeps the prompts compared so far, marked partial, and there is no
verdict.

example:
  perwatt quality --prompts p.jsonl --url http://127.0.0.1:8000/v1 \\
      --url http://127.0.0.1:8001/v1 --control --out quality.json"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``compare``, ``report`` and ``quality`` to the ``perwatt`` parser."""
    cmp = subparsers.add_parser(
        "compare",
        help="compare bench results side by side: ratios with bootstrap CIs, matched by load",
        description="Compare bench result files. Files are grouped into series by label (the "
        "first is the baseline A) and matched by load level (kind and value). For each metric: "
        "the values, the ratio B/A with a bootstrap confidence interval (per-request rows for "
        "latency, time blocks of the energy window for J/token and throughput) and a verdict: "
        "'within noise' when the interval contains 1. Differing conditions (GPU, power limit, "
        "clocks, lengths, energy source, measured vs simulated) and partial runs are flagged.",
    )
    cmp.add_argument("results", nargs="+", metavar="RESULT.json", help="bench result files")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp.add_argument(
        "--confidence",
        default=DEFAULT_CONFIDENCE,
        help=f"confidence level of the intervals (default {DEFAULT_CONFIDENCE})",
    )
    cmp.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES}, at most "
        f"{MAX_RESAMPLES:,}; progress on stderr from {_PROGRESS_FROM_RESAMPLES:,})",
    )
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_guard_flags(cmp)
    cmp.set_defaults(func=run_compare)

    rep = subparsers.add_parser(
        "report",
        help="write one self-contained offline HTML report over bench results",
        description="Write a single HTML file (inline CSS and SVG, no scripts, works offline): "
        "power timelines with the steady-state window, tokens/J vs throughput and vs load, the "
        "latency-energy frontier with Pareto points, a summary table with the energy source "
        "next to every energy figure, economics and the conditions of each run.",
    )
    rep.add_argument("results", nargs="+", metavar="RESULT.json", help="bench result files")
    rep.add_argument(
        "--out", "-o", default="perwatt-report.html", help="output file (default %(default)s)"
    )
    rep.add_argument("--title", default="perwatt bench report", help="report title")
    add_guard_flags(rep)
    rep.add_argument(
        "--force",
        action="store_true",
        help="write --out even if it is an input file or an existing file that is not a "
        "perwatt report (by default only a report perwatt wrote is replaced)",
    )
    rep.set_defaults(func=run_report)

    q = subparsers.add_parser(
        "quality",
        help="accuracy guard: do two servers give the same greedy answers?",
        usage="perwatt quality --prompts FILE --url REFERENCE_URL --url CANDIDATE_URL [options]",
        description=_QUALITY_DESCRIPTION,
        epilog=_QUALITY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument(
        "--prompts",
        dest="prompts",
        metavar="FILE",
        help="the prompt set, JSONL (format below); required",
    )
    # Old spelling, kept working but not advertised: `perwatt quality --quality FILE` read oddly.
    q.add_argument("--quality", dest="prompts", help=argparse.SUPPRESS)
    q.add_argument(
        "--url",
        action="append",
        required=True,
        metavar="URL",
        help="OpenAI-compatible server base URL including /v1, e.g. http://127.0.0.1:8000/v1; "
        "give it twice: the reference first, then the candidate",
    )
    q.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="model name to request, given twice in --url order (default: the first model "
        "each server lists at /v1/models)",
    )
    q.add_argument(
        "--api-key", default=None, metavar="KEY", help="sent to both servers as 'Bearer KEY'"
    )
    q.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        metavar="N",
        help="tokens generated per answer (default %(default)s)",
    )
    q.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed sent with every request (default 0)"
    )
    q.add_argument(
        "--top-logprobs",
        type=int,
        default=5,
        metavar="K",
        help="log-probs of the top K tokens to request per position, 0-20 (default %(default)s); "
        "a server that rejects logprobs is compared on text and the report says so",
    )
    q.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for one answer (default %(default)g)",
    )
    q.add_argument(
        "--control",
        action="store_true",
        help="also query the reference twice and report its self-agreement: the noise floor "
        "the candidate is judged against (servers can be nondeterministic at temperature 0)",
    )
    q.add_argument(
        "--out",
        "-o",
        default=None,
        metavar="FILE",
        help="write the report JSON to FILE, rewritten as prompts finish; its status is "
        "running, then complete, or partial (with the reason) if the run stops early",
    )
    q.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="RESULT.json",
        help="write the figures into this bench result's accuracy block (a run of the "
        "candidate); repeatable; only after a complete run",
    )
    q.add_argument(
        "--json", action="store_true", help="print the report JSON on stdout, not the summary"
    )
    add_guard_flags(q)
    q.set_defaults(func=run_quality)


def _bootstrap_progress(n_resamples: int) -> Callable[[int, int], None]:
    """Plain progress lines on stderr, at most one a second, then the last one."""
    last = [-math.inf]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 1.0:
            return
        last[0] = now
        print(
            f"perwatt compare: bootstrap {done}/{total} intervals ({n_resamples:,} resamples each)",
            file=sys.stderr,
            flush=True,
        )

    return show


def run_compare(args: argparse.Namespace) -> int:
    """``perwatt compare``: print (or write) the comparison of result files."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.compare import compare_results
    from perwatt.report.compare import render_comparison

    confidence = number(args.confidence, "--confidence")  # the range is compare_results
    cmp = compare_results(
        args.results,
        n_resamples=args.resamples,
        confidence=confidence,
        seed=args.seed,
        progress=(
            _bootstrap_progress(args.resamples)
            if args.resamples >= _PROGRESS_FROM_RESAMPLES
            else None
        ),
        guard=guard_thresholds(args),
    )
    if args.json:
        json.dump(cmp.to_dict(), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        render_comparison(cmp)
    return 0


def run_report(args: argparse.Namespace) -> int:
    """``perwatt report``: write the HTML report of result files."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.report import dedupe_results, write_html_report

    _unique, dropped = dedupe_results(args.results)
    for name in dropped:
        # A shell glob that overlaps another argument: one row per run, not two.
        print(f"warning: {name} is given more than once; reported once", file=sys.stderr)
    out = write_html_report(
        args.results,
        args.out,
        title=args.title,
        thresholds=guard_thresholds(args),
        force=args.force,
    )
    print(f"wrote {out}")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    """``perwatt quality``: the accuracy guard between two servers."""
    # lazy: keeps `perwatt --help` fast (this pulls NumPy/httpx/torch; see ARCHITECTURE.md)
    from perwatt.bench.quality import (
        QualityInterrupted,
        attach_accuracy,
        check_attach_target,
        format_quality_summary,
        quality_verdict,
        run_quality,
    )

    thresholds = guard_thresholds(args)
    if args.prompts is None:
        raise ConfigError("no prompt set: give --prompts FILE (JSONL, see perwatt quality -h)")
    if len(args.url) != 2:
        raise ConfigError(
            f"give --url twice, the reference server then the candidate (got {len(args.url)})"
        )
    models = args.model or []
    if len(models) not in (0, 2):
        raise ConfigError("give --model twice (reference, candidate) or not at all")
    for path in args.attach:
        check_attach_target(path)
    interrupted: QualityInterrupted | None = None
    try:
        rep = run_quality(
            args.prompts,
            args.url[0],
            args.url[1],
            reference_model=models[0] if models else None,
            candidate_model=models[1] if models else None,
            api_key=args.api_key,
            max_tokens=args.max_tokens,
            seed=args.seed,
            top_logprobs=args.top_logprobs,
            control=args.control,
            timeout_s=args.timeout,
            out=args.out,
            attach=args.attach,
        )
    except QualityInterrupted as e:  # Ctrl-C or SIGTERM: the summary below, then 130/143
        rep, interrupted = e.report, e
    # The figures first: an --attach that fails below must not swallow what was measured.
    verdict = quality_verdict(rep, thresholds)
    if args.json:
        doc = rep.to_dict()
        doc["guard"] = {**verdict.to_dict(), "thresholds": thresholds.to_dict()}
        json.dump(doc, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(format_quality_summary(rep, thresholds))
        if args.out:
            print(f"wrote {args.out}" + ("" if rep.complete else f" ({rep.status})"))
    for path in args.attach:
        if rep.complete:
            attach_accuracy(path, rep.accuracy_block())
        if not args.json:
            print(
                f"accuracy block attached to {path}"
                if rep.complete
                else f"not attached to {path}: the run is {rep.status}"
            )
    if interrupted is not None:
        return interrupt_exit_code(interrupted)
    return 3 if verdict.failed else 0
