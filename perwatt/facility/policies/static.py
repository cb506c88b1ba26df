"""Static nameplate: every GPU may draw its maximum; nothing is enforced.

The baseline of a site provisioned at nameplate: safe only when every level can carry the
nameplate load. On an oversubscribed tree it shows how long and how far a level would run over
its capacity (breaker risk) with no capping at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from perwatt.facility.policy import F64, Snapshot


@dataclass(slots=True)
class StaticNameplate:
    name: str = "static"
    open_loop: bool = True

    def allocate(self, snapshot: Snapshot) -> F64:
        out: F64 = snapshot.max_w.copy()
        return out

    def reset(self) -> None:
        return None
