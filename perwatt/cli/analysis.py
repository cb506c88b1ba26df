"""``perwatt compare``, ``perwatt report`` and ``perwatt quality``: argument parsing only.

The work is in :mod:`perwatt.bench.compare`, :mod:`perwatt.report` and
:mod:`perwatt.bench.quality`. The accuracy guard is its own subcommand (it talks to two live
servers, while compare and report only read files); ``--attach`` puts its figures into bench
results so that compare and report show them next to the energy figures.
"""

from __future__ import annotations

import argparse
import json
import sys

from perwatt.bench.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=float,
        default=DEFAULT_CONFIDENCE,
        help=f"confidence level of the intervals (default {DEFAULT_CONFIDENCE})",
    )
    cmp.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})",
    )
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
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
    rep.set_defaults(func=run_report)

    q = subparsers.add_parser(
        "quality",
        help="accuracy guard: do two servers give the same greedy answers?",
        description='Send a fixed prompt set (JSONL: {"prompt": ...} or {"messages": [...]} '
        "per line) with greedy decoding (temperature 0, fixed max_tokens and seed) to a "
        "reference server (first --url) and a candidate (second --url), and report exact match, "
        "greedy token agreement up to the first divergence and, where the servers return "
        "logprobs, log-prob agreement. --attach writes the figures into bench results' "
        "accuracy block.",
    )
    q.add_argument(
        "--prompts",
        "--quality",
        dest="prompts",
        required=True,
        metavar="FILE",
        help="JSONL prompt set",
    )
    q.add_argument(
        "--url",
        action="append",
        required=True,
        metavar="URL",
        help="server base URL incl. /v1; give twice: reference, then candidate",
    )
    q.add_argument("--model", action="append", metavar="NAME", help="model per --url (optional)")
    q.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    q.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default 64)")
    q.add_argument("--seed", type=int, default=0, help="sampling seed sent to servers")
    q.add_argument("--top-logprobs", type=int, default=5, help="top-k logprobs (default 5)")
    q.add_argument(
        "--control",
        action="store_true",
        help="query the reference twice and report its self-agreement (the noise floor)",
    )
    q.add_argument("--out", "-o", default=None, metavar="FILE", help="write the report JSON")
    q.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="RESULT.json",
        help="set this bench result's accuracy block (the candidate's runs); repeatable",
    )
    q.add_argument("--json", action="store_true", help="print the report JSON")
    q.set_defaults(func=run_quality)


def run_compare(args: argparse.Namespace) -> int:
    from perwatt.bench.compare import compare_results, render_comparison

    cmp = compare_results(
        args.results, n_resamples=args.resamples, confidence=args.confidence, seed=args.seed
    )
    if args.json:
        json.dump(cmp.to_dict(), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        render_comparison(cmp)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from perwatt.report import write_html_report

    out = write_html_report(args.results, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from perwatt.bench.quality import attach_accuracy, run_quality, write_quality_report
    from perwatt.errors import ConfigError

    if len(args.url) != 2:
        raise ConfigError("give --url twice: the reference server, then the candidate")
    models = args.model or []
    if len(models) not in (0, 2):
        raise ConfigError("give --model twice (reference, candidate) or not at all")
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
    )
    if args.out:
        write_quality_report(rep, args.out)
    for path in args.attach:
        attach_accuracy(path, rep.accuracy_block())
    if args.json:
        json.dump(rep.to_dict(), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    s = rep.summary

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"reference {rep.reference_url}  vs  candidate {rep.candidate_url}")
    print(f"  prompts            {s.n_prompts} (greedy, max_tokens {rep.max_tokens})")
    print(f"  exact match        {f(s.exact_match)}")
    print(f"  top-1 agreement    {f(s.top1_agreement)} ({s.unit}s, up to first divergence)")
    print(
        f"  logprob agreement  {f(s.logprob_agreement)} (mean |dlogprob| {f(s.mean_abs_dlogprob)})"
    )
    print(f"  KL top-k (approx)  {f(s.kl_topk_mean)}")
    if rep.control is not None:
        c = rep.control
        print(f"  control A vs A     exact {f(c.exact_match)}, top-1 {f(c.top1_agreement)}")
    for n in rep.notes:
        print(f"  note: {n}")
    if args.out:
        print(f"wrote {args.out}")
    for path in args.attach:
        print(f"accuracy block attached to {path}")
    return 0
