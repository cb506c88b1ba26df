"""Thunderbolt-style capping: multiplicative decrease, randomized unthrottling, safe fallback.

After Thunderbolt (Li et al., "Thunderbolt: Throughput-Optimized, Quality-of-Service-Aware Power
Capping at Scale", OSDI '20): when an element's load passes the threshold, the caps of
low-priority work under it shrink by a factor each step (multiplicative decrease); once the load
is back below the release threshold, each throttled cohort is released with probability
``release_prob`` per step, so the rebound is spread out instead of synchronized. If telemetry
is missing for longer than ``telemetry_timeout_s`` the policy falls back to the cap that is safe
with every GPU at full load (the site's safe uniform cap), as Thunderbolt falls back to a safe
static cap. Randomness is per cohort (members of a cohort act together): seeded, reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perwatt.facility.policy import (
    F64,
    Snapshot,
    can_overload,
    propagate_down,
    safe_uniform_cap_w,
)


@dataclass(slots=True)
class Thunderbolt:
    name: str = "thunderbolt"
    open_loop: bool = False
    threshold: float = 0.97
    release: float = 0.92
    decrease: float = 0.85
    release_prob: float = 0.1
    telemetry_timeout_s: float = 10.0
    seed: int = 0
    caps: F64 = field(default_factory=lambda: np.zeros(0))
    lost_since_s: float | None = None
    fallback_steps: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def allocate(self, snapshot: Snapshot) -> F64:
        if len(self.caps) != len(snapshot.max_w):
            self.caps = snapshot.max_w.copy()
            self.rng = np.random.default_rng(self.seed)
        if not snapshot.telemetry_ok:
            if self.lost_since_s is None:
                self.lost_since_s = snapshot.time_s
            if snapshot.time_s - self.lost_since_s >= self.telemetry_timeout_s:
                self.fallback_steps += 1
                safe = safe_uniform_cap_w(snapshot)
                self.caps = np.clip(np.full(len(self.caps), safe), snapshot.min_w, snapshot.max_w)
            held: F64 = self.caps.copy()
            return held
        self.lost_since_s = None
        u = np.where(can_overload(snapshot), snapshot.element_util, 0.0)
        over = propagate_down(snapshot.tree, (u >= self.threshold).astype(np.float64), "max")
        calm = propagate_down(snapshot.tree, u, "max") < self.release
        over_c = over[snapshot.element] > 0
        calm_c = calm[snapshot.element]
        top = snapshot.priority.max()
        low = snapshot.priority < top
        # decrease low priority first; if nothing low-priority is left to shrink, everyone
        shrink_low = over_c & low & (self.caps > snapshot.min_w)
        target = shrink_low if shrink_low.any() else over_c
        caps = np.where(target, np.maximum(self.caps * self.decrease, snapshot.min_w), self.caps)
        throttled = caps < snapshot.max_w
        lucky = self.rng.random(len(caps)) < self.release_prob
        caps = np.where(calm_c & throttled & lucky, snapshot.max_w, caps)
        self.caps = caps
        out: F64 = caps.copy()
        return out

    def reset(self) -> None:
        self.caps = np.zeros(0)
        self.lost_since_s = None
        self.fallback_steps = 0
