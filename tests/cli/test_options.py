"""The command line's number parsing (perwatt/cli/options.py)."""

from __future__ import annotations

import math

import pytest

from perwatt.cli.options import number
from perwatt.errors import ConfigError


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "abc", ""])
def test_non_finite_and_garbage_are_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--x must be a finite number, got "):
        number(text, "--x")


def test_infinity_only_when_allowed() -> None:
    assert number("inf", "--x", allow_inf=True) == math.inf
    with pytest.raises(ConfigError, match="--x must be a number, got 'nan'"):
        number("nan", "--x", allow_inf=True)


def test_bounds_and_units() -> None:
    assert number("0.5", "--f", low=0.0, high=1.0) == 0.5
    assert number(600.0, "--timeout", unit="seconds") == 600.0  # an argparse default
    with pytest.raises(ConfigError, match=r"--f must be a finite number >= 0 and <= 1, got '2'"):
        number("2", "--f", low=0.0, high=1.0)
    with pytest.raises(ConfigError, match=r"--t must be a finite number of seconds > 0, got '0'"):
        number("0", "--t", low=0.0, low_open=True, unit="seconds")
