"""The accuracy guard's threshold flags, shared by ``bench``, ``compare``, ``report`` and
``quality`` (the thresholds and why they default as they do: :mod:`perwatt.bench.guard`)."""

from __future__ import annotations

import argparse

from perwatt.bench.guard import DEFAULT_THRESHOLDS, GuardThresholds, parse_threshold

_FLAGS = (
    ("--min-top1", "min_top1_agreement", "top-1 (greedy token) agreement at least"),
    ("--max-kl", "max_kl_mean", "mean KL(reference||candidate), nats, at most"),
    ("--min-logprob-agreement", "min_logprob_agreement", "exp(-mean |dlogprob|) at least"),
    ("--min-exact-match", "min_exact_match", "share of identical answers at least"),
    ("--max-rel-err", "max_rel_err", "row-scaled max logit error at most"),
)


def add_guard_flags(parser: argparse.ArgumentParser) -> None:
    """Add one ``--min-…``/``--max-…`` flag per accuracy figure (a number, or ``off``)."""
    g = parser.add_argument_group(
        "accuracy guard",
        "pass/FAIL beside every energy figure; a number, or 'off' to leave a figure unjudged "
        "(defaults are loose on purpose: they catch a broken format, they do not certify one)",
    )
    for flag, attr, what in _FLAGS:
        default = getattr(DEFAULT_THRESHOLDS, attr)
        g.add_argument(
            flag,
            dest=f"guard_{attr}",
            metavar="X",
            default=None,
            help=f"{what} (default {'off' if default is None else format(default, 'g')})",
        )


def guard_thresholds(args: argparse.Namespace) -> GuardThresholds:
    """The thresholds the flags set (defaults where a flag is not given)."""
    kw: dict[str, float | None] = {}
    for flag, attr, _what in _FLAGS:
        raw = getattr(args, f"guard_{attr}", None)
        kw[attr] = getattr(DEFAULT_THRESHOLDS, attr) if raw is None else parse_threshold(raw, flag)
    return GuardThresholds(**kw)
