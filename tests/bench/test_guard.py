"""The accuracy guard judges: a threshold per figure, pass/FAIL, configurable, none without data."""

from __future__ import annotations

import pytest

from perwatt.bench.guard import DEFAULT_THRESHOLDS, GuardThresholds, judge, parse_threshold
from perwatt.errors import ConfigError


def test_int4_on_random_weights_fails_with_the_reason() -> None:
    # The figures issue 9 saw printed with no verdict: int4 top-1 0.25, KL 0.10.
    v = judge({"top1_agreement": 0.25, "kl_mean": 0.103, "max_rel_err": 0.5})
    assert v.failed and v.short == "FAIL"
    assert v.text == "FAIL (top-1 0.25 < 0.9; KL 0.103 > 0.1)"
    assert v.judged == ("top1_agreement", "kl_mean")  # max_rel_err is not judged by default


def test_close_agreement_passes() -> None:
    v = judge({"top1_agreement": 0.99, "kl_mean": 1e-3, "logprob_agreement": 0.97})
    assert v.passed and v.text == "pass"


def test_nothing_to_judge_is_none_not_pass() -> None:
    assert judge(None).status == "none"
    assert judge({"reference": "x", "top1_agreement": None}).status == "none"
    assert judge({"exact_match": 0.1}).status == "none"  # exact match is off by default
    assert judge(None).text == "—"


def test_thresholds_are_configurable() -> None:
    strict = GuardThresholds(min_top1_agreement=0.995, min_exact_match=0.5)
    v = judge({"top1_agreement": 0.99, "exact_match": 0.25}, strict)
    assert v.failures == ("top-1 0.99 < 0.995", "exact match 0.25 < 0.5")
    off = GuardThresholds(min_top1_agreement=None, max_kl_mean=None)
    assert judge({"top1_agreement": 0.1, "kl_mean": 5.0}, off).status == "none"
    assert "top-1 >= 0.9" in DEFAULT_THRESHOLDS.describe()


@pytest.mark.parametrize(
    "kw",
    [{"min_top1_agreement": 1.5}, {"max_kl_mean": -0.1}, {"min_exact_match": float("nan")}],
)
def test_bad_thresholds_are_one_line_errors(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="accuracy guard"):
        GuardThresholds(**kw)


def test_parse_threshold() -> None:
    assert parse_threshold("0.95", "--min-top1") == 0.95
    assert parse_threshold("off", "--min-top1") is None
    with pytest.raises(ConfigError, match="--min-top1 'x' is not a number"):
        parse_threshold("x", "--min-top1")
