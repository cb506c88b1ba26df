"""The run conditions two bench results are compared on, listed once.

``perwatt compare`` warns when runs side by side at one load differ in a *loud* condition
(one that changes what a ratio between them measures: GPU, power limit, lengths, energy
source …) and notes the others; ``perwatt report`` shows the same loud differences in its
banner. Both read this table, so a condition added here is checked by both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from perwatt.bench.result import BenchResult

__all__ = ["CONDITIONS", "Condition", "GPUValues", "gpu_values"]


@dataclass(frozen=True, slots=True)
class GPUValues:
    """One field of every GPU a run used (``name``, ``power_limit_w`` …), in GPU order."""

    values: tuple[Any, ...]

    def text(self, *, times: str = "x", unknown: str = "unknown") -> str:
        """``8x H100`` when all agree, else every value; ``unknown`` when no GPU is listed."""
        if not self.values:
            return unknown
        uniq = sorted({str(v) for v in self.values})
        if len(uniq) == 1:
            return f"{len(self.values)}{times} {uniq[0]}"
        return ", ".join(str(v) for v in self.values)


def gpu_values(doc: BenchResult, key: str) -> GPUValues:
    """Field ``key`` of each GPU in ``doc``'s conditions."""
    gpus: list[Any] = list(doc["conditions"].get("gpus") or [])
    return GPUValues(tuple(g.get(key) for g in gpus))


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a run: its name, how to read it from a result, and whether a
    difference is *loud* (changes what a ratio between runs measures)."""

    name: str
    get: Callable[[BenchResult], Any]
    loud: bool

    def text(self, doc: BenchResult, *, times: str = "x", unknown: str = "unknown") -> str:
        """The condition's value in ``doc`` as text (GPU fields as :meth:`GPUValues.text`)."""
        v = self.get(doc)
        return v.text(times=times, unknown=unknown) if isinstance(v, GPUValues) else str(v)


CONDITIONS: Final[tuple[Condition, ...]] = (
    Condition("GPU", lambda d: gpu_values(d, "name"), True),
    Condition("power limit (W)", lambda d: gpu_values(d, "power_limit_w"), True),
    Condition("SM clock (MHz)", lambda d: gpu_values(d, "sm_clock_mhz"), True),
    Condition("max SM clock (MHz)", lambda d: gpu_values(d, "max_sm_clock_mhz"), True),
    Condition("driver", lambda d: gpu_values(d, "driver"), False),
    Condition("input length", lambda d: d["config"]["input_len"], True),
    Condition("output length", lambda d: d["config"]["output_len"], True),
    Condition("workload", lambda d: json.dumps(d["config"]["workload"], sort_keys=True), True),
    Condition("num prompts", lambda d: d["config"]["num_prompts"], False),
    Condition("seed", lambda d: d["config"]["seed"], False),
    Condition("num GPUs", lambda d: d["config"]["num_gpus"], True),
    Condition("endpoint", lambda d: d["config"]["endpoint"], True),
    Condition("energy source", lambda d: d["energy"]["source"] if d["energy"] else "none", True),
    Condition(
        "idle subtracted", lambda d: d["energy"]["idle_subtracted"] if d["energy"] else None, True
    ),
    Condition("energy basis", lambda d: d["energy"]["basis"] if d["energy"] else None, True),
    Condition("token count source", lambda d: d["metrics"]["token_count_source"], True),
    Condition("price per kWh", lambda d: d["config"]["price_per_kwh"], False),
    Condition("PUE", lambda d: d["config"]["pue"], True),
    Condition("host", lambda d: d["conditions"]["host"], False),
    Condition("engine", lambda d: d["config"]["engine"], False),
    Condition("model", lambda d: d["config"]["model"], False),
    Condition("precision", lambda d: d["config"]["precision"], False),
)
