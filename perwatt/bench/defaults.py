"""Defaults and bounds of the bench statistics, without NumPy.

The CLI shows them in ``--help`` at every start; :mod:`perwatt.bench.stats` and
:mod:`perwatt.bench.compare` (which need NumPy) use them from here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_RESAMPLES", "MAX_RESAMPLES"]

DEFAULT_RESAMPLES: Final = 2000
DEFAULT_CONFIDENCE: Final = 0.95
#: Most bootstrap resamples accepted: 500x the default. The interval's Monte Carlo error is
#: already far below its width at the default; 10^9 resamples (8 GB per array) ran for hours
#: with no output.
MAX_RESAMPLES: Final = 1_000_000
