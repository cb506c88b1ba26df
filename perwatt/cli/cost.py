"""``perwatt cost``: a site's energy economics per year and the value of a tokens/J gain.

Arguments only; the arithmetic is :func:`perwatt.economics.site_cost`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from perwatt.economics import DEFAULT_PRICE_PER_KWH_USD, ENERGY_COST_NOTE, site_cost
from perwatt.errors import ConfigError, DataFormatError

_EPILOG = """\
examples:
  perwatt cost --it-power-mw 80 --tokens-per-j 4 --pue 1.2 --price 0.07 --gain 10%
  perwatt cost --result facility-run/result.json --policy realloc --gain 10% --other-opex 2e8

With --result, the IT power, tokens per joule and PUE come from a `perwatt facility simulate`
result (simulated figures, labelled so). Energy cost only: no hardware, staff or demand charges.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``perwatt cost`` to the command line."""
    p = subparsers.add_parser(
        "cost",
        help="$ per million tokens, tokens per MW, and what a tokens/J gain is worth per year",
        description="Energy economics of a site over a year: cost, $ per million tokens, "
        "tokens/s per MW, power's share of OpEx, and the yearly value of a gain in tokens "
        "per joule.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--it-power-mw", type=float, help="average IT power while serving, MW")
    p.add_argument("--tokens-per-j", type=float, help="output tokens per joule of IT energy")
    p.add_argument("--result", metavar="RESULT.json", help="a facility simulate result")
    p.add_argument("--policy", help="which policy in --result (default: the first)")
    p.add_argument("--pue", type=float, help="PUE (default 1.0, or the result's)")
    p.add_argument("--price", type=float, default=DEFAULT_PRICE_PER_KWH_USD, help="$/kWh")
    p.add_argument("--utilisation", default="100%", help="share of the year serving")
    p.add_argument("--gain", default="10%", help="gain in tokens per joule to value")
    p.add_argument("--other-opex", type=float, help="other operating cost, $/year")
    p.add_argument("--token-price", type=float, help="$ per million tokens sold")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_cost)


def _frac(text: str, name: str) -> float:
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"--{name} {text!r}: use e.g. 10% or 0.1") from None


def _from_result(path: str, policy: str | None) -> tuple[float, float, float, str]:
    try:
        doc = json.loads(Path(path).read_text())
        results = doc["results"]
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such result file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataFormatError(f"{path}: not a perwatt facility result ({e})") from None
    pick = [r for r in results if policy is None or r.get("policy") == policy]
    if not pick:
        names = ", ".join(str(r.get("policy")) for r in results)
        raise ConfigError(f"{path}: no policy {policy!r} in the result (has {names})")
    r: dict[str, Any] = pick[0]
    it_j = r["energy"]["it_energy_j"]
    dur = r["duration_s"]
    tokens = r["tokens"]["output_tokens"]
    if it_j <= 0 or tokens <= 0:
        raise DataFormatError(f"{path}: the result has no IT energy or no output tokens")
    return it_j / dur, tokens / it_j, r["pue"]["period_energy_weighted"], r["policy"]


def run_cost(args: argparse.Namespace) -> int:
    """``perwatt cost``: $/Mtok, tokens per MW and the yearly worth of a tokens/J gain."""
    label = "given"
    if args.result:
        power, tpj, pue, pol = _from_result(args.result, args.policy)
        label = f"simulated ({args.result}, policy {pol})"
        if args.pue is not None:
            pue = args.pue
    else:
        if args.it_power_mw is None or args.tokens_per_j is None:
            raise ConfigError("give --it-power-mw and --tokens-per-j, or --result")
        power, tpj = args.it_power_mw * 1e6, args.tokens_per_j
        pue = args.pue if args.pue is not None else 1.0
    c = site_cost(
        it_power_w=power,
        tokens_per_j=tpj,
        pue=pue,
        price_per_kwh=args.price,
        utilisation=_frac(args.utilisation, "utilisation"),
        gain=_frac(args.gain, "gain"),
        other_opex_usd_per_year=args.other_opex,
        usd_per_million_tokens_sold=args.token_price,
    )
    if args.json:
        print(json.dumps({**c.to_dict(), "inputs": label}, indent=1))
        return 0
    share = "–" if c.power_share_of_opex is None else f"{c.power_share_of_opex:.1%}"
    rev = (
        ""
        if c.gain_extra_revenue_usd_per_year is None
        else f" (${c.gain_extra_revenue_usd_per_year:,.0f}/year at ${args.token_price}/Mtok)"
    )
    print(f"inputs: {label}")
    print(
        f"IT power {c.it_power_w / 1e6:,.2f} MW x PUE {c.pue:.3f} = facility "
        f"{c.facility_power_w / 1e6:,.2f} MW, {c.utilisation:.0%} of the year, "
        f"${c.price_per_kwh}/kWh"
    )
    print(f"energy cost           ${c.energy_cost_usd_per_year:,.0f} per year")
    print(
        f"tokens                {c.tokens_per_year:.4g} per year "
        f"({c.tokens_per_j:g} tokens/J of IT energy)"
    )
    print(f"$ per million tokens  {c.usd_per_million_tokens:.4g}")
    print(f"tokens/s per MW       {c.tokens_per_s_per_mw:,.0f} (facility power)")
    print(f"power share of OpEx   {share}")
    print(
        f"a {c.gain:.0%} gain in tokens/J is worth ${c.gain_saving_usd_per_year:,.0f} per "
        f"year at the same output, or {c.gain_extra_tokens_per_year:.4g} more tokens per "
        f"year at the same power{rev}"
    )
    print(ENERGY_COST_NOTE)
    return 0
