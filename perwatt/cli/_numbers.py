"""Number flags, parsed in one place: finite unless a flag explicitly allows infinity.

``float("nan")`` and ``float("inf")`` parse, and NaN passes every ``x < 0`` check (all
comparisons with NaN are false): ``--min-window-s nan`` used to run forever. Flags that take a
real number are therefore declared as text and converted here after parsing, so a bad value is
one line (``perwatt: error: --timeout must be …``) instead of argparse's usage block, and the
range check sits next to the conversion.
"""

from __future__ import annotations

import math

from perwatt.errors import ConfigError


def number(
    value: str | float,
    flag: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    allow_inf: bool = False,
    unit: str = "",
) -> float:
    """``value`` (command-line text, or a default already a float) as a float in range.

    NaN is always refused; ±inf only with ``allow_inf``. ``low``/``high`` bound the value
    (``low`` excluded when ``low_open``). The error names ``flag``, the unit and the range.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    kind = "a number" if allow_inf else "a finite number"
    want = f"{flag} must be {kind}" + (f" of {unit}" if unit else "")
    want += f" {' and '.join(bounds)}" if bounds else ""
    shown = value if isinstance(value, str) else f"{value:g}"
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{want}, got {shown!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f"{want}, got {shown!r}")
    if high is not None and v > high:
        raise ConfigError(f"{want}, got {shown!r}")
    return v
