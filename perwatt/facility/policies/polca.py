"""POLCA-style priority-aware two-threshold capping with hysteresis and an emergency brake.

After POLCA (Patel et al., "POLCA: Power Oversubscription in LLM Cloud Providers", ASPLOS '24,
arXiv 2308.12908): when an element's load passes a first threshold, low-priority GPUs under it
are capped; past a second threshold every GPU under it is capped; each state is released only
when the load falls a hysteresis margin below its threshold; at the element's capacity the
emergency brake drops every GPU under it to its minimum. Only elements that *can* exceed their
capacity (nameplate load below them above it) are watched: the thresholds are about
oversubscribed power domains, as in POLCA. The thresholds and cap levels below
are perwatt's defaults (POLCA tunes its own per cluster); pass others to explore.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from perwatt.facility.policy import F64, Snapshot, can_overload, propagate_down


@dataclass(slots=True)
class TwoThreshold:
    name: str = "polca"
    open_loop: bool = False
    t1: float = 0.90
    t2: float = 0.96
    brake: float = 1.0
    hysteresis: float = 0.05
    low_cap_frac: float = 0.60
    all_cap_frac: float = 0.80
    state: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def allocate(self, snapshot: Snapshot) -> F64:
        # thresholds apply where the load can exceed the capacity (oversubscribed elements);
        # an element that carries its nameplate load is never at risk, whatever its load
        u = np.where(can_overload(snapshot), snapshot.element_util, 0.0)
        if len(self.state) != len(u):
            self.state = np.zeros(len(u), dtype=np.int64)
        s = self.state
        up = np.where(u >= self.brake, 3, np.where(u >= self.t2, 2, np.where(u >= self.t1, 1, 0)))
        # release one level only below that level's threshold minus the hysteresis
        thr = np.array([0.0, self.t1, self.t2, self.brake])
        down_ok = u < thr[s] - self.hysteresis
        s = np.where(up > s, up, np.where(down_ok, np.maximum(s - 1, up), s))
        self.state = s
        level = propagate_down(snapshot.tree, s.astype(np.float64), "max")[snapshot.element]
        top = snapshot.priority.max() if len(snapshot.priority) else 0
        low = snapshot.priority < top
        mx, mn = snapshot.max_w, snapshot.min_w
        low_cap = np.maximum(np.maximum(mx * self.low_cap_frac, snapshot.floor_w), mn)
        all_cap = np.maximum(mx * self.all_cap_frac, mn)
        caps = mx.copy()
        caps = np.where((level >= 1) & low, np.minimum(caps, low_cap), caps)
        caps = np.where(level >= 2, np.minimum(caps, np.where(low, low_cap, all_cap)), caps)
        caps = np.where(level >= 3, mn, caps)
        out: F64 = caps
        return out

    def reset(self) -> None:
        self.state = np.zeros(0, dtype=np.int64)
