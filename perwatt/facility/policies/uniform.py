"""Uniform cap: the site budget split equally across GPUs (DCGM group power budget).

DCGM's ``dcgmi config --set -P`` on a group divides a power budget equally over its GPUs
(NVIDIA DCGM user guide, "Power management": group power budget). Here the group is the whole
site and the budget is the feed's capacity after non-GPU power and cooling; lower levels are not
looked at, which is exactly this baseline's weakness on a tree with tight PDUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perwatt.facility.policy import F64, Snapshot


@dataclass(slots=True)
class UniformCap:
    name: str = "uniform"
    open_loop: bool = True

    def allocate(self, snapshot: Snapshot) -> F64:
        total = float(snapshot.weight.sum())
        budget = np.asarray(snapshot.tree.capacity)[..., :1]  # the feed, per control step
        cap = budget / total if total > 0 else np.full_like(budget, np.inf)
        shape = (*cap.shape[:-1], len(snapshot.weight))
        out: F64 = np.clip(np.broadcast_to(cap, shape), snapshot.min_w, snapshot.max_w)
        return out

    def reset(self) -> None:
        return None
