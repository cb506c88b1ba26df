"""Stranded-power reallocation every interval: the exact three-phase allocator.

After nvPAX (NVIDIA, arXiv 2605.01837): minimum deviation from each cohort's request by priority,
then the excess to active cohorts, then to idle ones, honouring every level of the tree. The
request is what the cohort drew (uncapped) in the last interval. See
:mod:`perwatt.facility.allocate` for the algorithm and its exactness proof and test.
"""

from __future__ import annotations

from dataclasses import dataclass

from perwatt.facility.allocate import reallocate
from perwatt.facility.policy import F64, Snapshot


@dataclass(slots=True)
class Reallocate:
    name: str = "realloc"
    open_loop: bool = True
    infeasible_steps: int = 0

    def allocate(self, snapshot: Snapshot) -> F64:
        a = reallocate(
            snapshot.tree,
            element=snapshot.element,
            gpus=snapshot.gpus,
            gain=snapshot.gain,
            min_w=snapshot.min_w,
            max_w=snapshot.max_w,
            request_w=snapshot.request_w,
            floor_w=snapshot.floor_w,
            priority=snapshot.priority,
            active=snapshot.active,
        )
        if not a.feasible:
            self.infeasible_steps += 1
        return a.caps_w

    def reset(self) -> None:
        self.infeasible_steps = 0
