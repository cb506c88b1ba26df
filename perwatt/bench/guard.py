"""The accuracy guard's verdict: does a configuration keep the answers it saves energy on?

A bench result's ``accuracy`` block carries agreement figures against a reference (the built-in
engine's teacher-forced logits, or ``perwatt quality`` between two servers). Figures alone do not
decide anything; :func:`judge` compares each against a threshold and says *pass* or *FAIL*, and
every place that prints an energy figure prints the verdict beside it (``perwatt bench``,
``compare``, ``report``, ``quality``).

Default thresholds (:data:`DEFAULT_THRESHOLDS`; each is a flag, ``off`` disables it). They are
deliberately loose: they catch a broken or badly lossy format, they do not certify quality. Tighten
them for a production decision (e.g. ``--min-top1 0.98`` for FP8 on a trained model).

* ``top1_agreement >= 0.90`` — below it the candidate picks a different greedy token at more than
  one position in ten, so most answers longer than ~7 tokens change (0.9^7 < 0.5).
* ``kl_mean <= 0.10`` nats — mean KL(reference || candidate) per position is the expected extra
  negative log-likelihood the candidate assigns to the reference's own text, so 0.10 nats is a
  perplexity increase of at most e^0.10 - 1 = 10.5 % on it.
* ``logprob_agreement >= 0.90`` — ``exp(-mean |dlogprob|)``: the chosen tokens' probabilities
  differ by a factor of at most e^0.105 = 1.11 on average.
* ``exact_match``: not judged by default — it depends on the answer length as much as on the
  format (at 99 % per-token agreement only 0.99^64 = 53 % of 64-token answers match exactly).
  ``--min-exact-match`` judges it for a fixed prompt set and length.
* ``max_rel_err``: not judged by default — a row-scaled worst case over raw logits with no direct
  meaning for answers (KL covers the distribution); ``--max-rel-err`` judges it.

A verdict is ``pass`` when every judged figure present meets its threshold, ``FAIL`` when any does
not, and ``none`` when the run has no accuracy block or none of its figures is judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from perwatt.errors import ConfigError

GuardStatus = Literal["pass", "fail", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardThresholds:
    """One threshold per accuracy figure; ``None`` leaves a figure unjudged."""

    min_top1_agreement: float | None = 0.90
    max_kl_mean: float | None = 0.10
    min_logprob_agreement: float | None = 0.90
    min_exact_match: float | None = None
    max_rel_err: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_top1_agreement", "min_logprob_agreement", "min_exact_match"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ConfigError(f"accuracy guard: {name} must be in [0, 1], got {v}")
        for name in ("max_kl_mean", "max_rel_err"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0.0):
                raise ConfigError(f"accuracy guard: {name} must be a number >= 0, got {v}")

    def describe(self) -> str:
        """``top-1 >= 0.9, KL <= 0.1, logprob agreement >= 0.9`` (the judged figures)."""
        parts = [
            f"{label} {op} {v:g}"
            for _key, label, op, attr in _CHECKS
            if (v := getattr(self, attr)) is not None
        ]
        return ", ".join(parts) or "no figure judged"

    def to_dict(self) -> dict[str, float | None]:
        return {attr: getattr(self, attr) for _k, _l, _o, attr in _CHECKS}


DEFAULT_THRESHOLDS: Final = GuardThresholds()

# (accuracy key, short label, comparison, threshold attribute)
_CHECKS: Final = (
    ("top1_agreement", "top-1", ">=", "min_top1_agreement"),
    ("kl_mean", "KL", "<=", "max_kl_mean"),
    ("logprob_agreement", "logprob agreement", ">=", "min_logprob_agreement"),
    ("exact_match", "exact match", ">=", "min_exact_match"),
    ("max_rel_err", "max rel. err", "<=", "max_rel_err"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardVerdict:
    """What :func:`judge` decided, and from which figures."""

    status: GuardStatus
    failures: tuple[str, ...] = ()  # "top-1 0.250 < 0.9"
    judged: tuple[str, ...] = ()  # the figures compared: "top1_agreement", ...

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def text(self) -> str:
        """``pass``, ``FAIL (top-1 0.250 < 0.9)`` or ``—`` (nothing to judge)."""
        if self.status == "pass":
            return "pass"
        if self.status == "fail":
            return f"FAIL ({'; '.join(self.failures)})"
        return "—"

    @property
    def short(self) -> str:
        """``pass``, ``FAIL`` or ``—``: for narrow table cells."""
        return {"pass": "pass", "fail": "FAIL", "none": "—"}[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "failures": list(self.failures), "judged": list(self.judged)}


#: The verdict on a run with nothing to judge.
NO_VERDICT: Final = GuardVerdict(status="none")


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def judge(
    accuracy: Mapping[str, Any] | None, thresholds: GuardThresholds = DEFAULT_THRESHOLDS
) -> GuardVerdict:
    """The verdict on one run's ``accuracy`` block (``None``: no verdict, status ``none``)."""
    if not accuracy:
        return NO_VERDICT
    failures: list[str] = []
    judged: list[str] = []
    for key, label, op, attr in _CHECKS:
        limit = getattr(thresholds, attr)
        v = _number(accuracy.get(key))
        if limit is None or v is None:
            continue
        judged.append(key)
        ok = v >= limit if op == ">=" else v <= limit
        if not ok:
            bad = "<" if op == ">=" else ">"
            failures.append(f"{label} {v:.3g} {bad} {limit:g}")
    if not judged:
        return NO_VERDICT
    return GuardVerdict(
        status="fail" if failures else "pass", failures=tuple(failures), judged=tuple(judged)
    )


def parse_threshold(text: str, flag: str) -> float | None:
    """A threshold flag's value: a number, or ``off``/``none`` to leave the figure unjudged."""
    t = text.strip().lower()
    if t in ("off", "none"):
        return None
    try:
        v = float(t)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number (or 'off')") from None
    if not math.isfinite(v):
        raise ConfigError(f"{flag} must be a finite number, got {text!r}")
    return v


__all__ = [
    "DEFAULT_THRESHOLDS",
    "NO_VERDICT",
    "GuardStatus",
    "GuardThresholds",
    "GuardVerdict",
    "judge",
    "parse_threshold",
]
