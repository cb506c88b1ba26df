"""How many GPUs fit under a site's power, per policy — the MaxLPS question.

Provisioning at nameplate puts as many racks under the feed as fit with every GPU at TDP and
cooling at its design point; nothing is ever capped. A capping policy lets more racks share the
same feed: the question is how many before either some level of the tree runs over its capacity
or some job loses more than ``max_loss`` of its throughput. For each policy perwatt finds the
largest rack count that passes a simulation of the workload (bisection; it assumes that more
racks never make things better, which holds for every policy here on a fixed workload mix).

Rows:

* ``nameplate``: the provisioning rule (no simulation).
* ``static``: no caps, but provisioned for the *observed* peak (the largest count whose
  simulation never exceeds a capacity): what measurement alone buys.
* every other policy: the largest count whose simulation passes both tests.

The workload is given as shares of racks, so it grows with the site.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from perwatt.errors import ConfigError
from perwatt.facility.placement import place
from perwatt.facility.policies import make_policy
from perwatt.facility.presets import SITES
from perwatt.facility.simulate import SimConfig, simulate
from perwatt.facility.topology import Element, Topology
from perwatt.facility.workload import Workload

SiteBuilder = Callable[[int], Topology]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityRow:
    """The largest site a policy runs within the limits, and what it cost in throughput."""

    policy: str
    method: str
    racks: int
    gpus: int
    gain_vs_nameplate: float
    worst_job_loss: float
    seconds_over_capacity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "method": self.method,
            "racks": self.racks,
            "gpus": self.gpus,
            "gain_vs_nameplate": self.gain_vs_nameplate,
            "worst_job_loss": self.worst_job_loss,
            "seconds_over_capacity": self.seconds_over_capacity,
            "source": "simulated",
        }


def _count_racks(e: Element) -> int:
    if e.kind in ("rack", "node"):
        return e.count
    return e.count * sum(_count_racks(c) for c in e.children)


def scale_racks(topology: Topology, racks: int) -> Topology:
    """A file-defined site with its rack counts scaled to about ``racks`` in total.

    Every rack element's count is multiplied by the same factor (rounded, at least 1); the
    elements above declare the oversubscription that results. For preset sites perwatt adds
    whole PDUs and UPSes instead (:func:`perwatt.facility.presets.build_site`).
    """
    base = _count_racks(topology.root)
    f = racks / base

    def walk(e: Element) -> Element:
        if e.kind == "rack":
            return replace(e, count=max(1, round(e.count * f)))
        if e.kind == "node":
            return e
        kids = tuple(walk(c) for c in e.children)
        need = sum(c.count * c.capacity_w / c.efficiency for c in kids) / e.capacity_w
        return replace(e, children=kids, oversubscription=max(e.oversubscription, need * 1.0001))

    root = walk(topology.root)
    return Topology(name=topology.name, root=root, source=topology.source, notes=topology.notes)


def builder_for(site: str | Topology) -> tuple[SiteBuilder, int]:
    """A function racks → site, and the nameplate rack count, for a preset name or a topology."""
    if isinstance(site, str):
        if site not in SITES or site == "test-8rack":
            raise ConfigError(
                "capacity needs a scalable site: one of site-96mw, site-250mw, site-1gw, or a file"
            )
        f = SITES[site]
        base = f()
        return (lambda n: f(racks=n)), _count_racks(base.root)
    topo = site
    rack_w = None
    for e in topo.root.walk():
        if e.kind == "rack":
            rack_w = e.nameplate_w
            break
    if rack_w is None:
        raise ConfigError(f"{topo.source}: the site has no rack elements to scale")
    # nameplate rule for a file: as many racks as the feed carries at nameplate (no cooling
    # headroom is known for a file; the file's own count if it is smaller)
    n = _count_racks(topo.root)
    fit = min(n, math.floor(topo.root.capacity_w / (topo.nameplate_w / n)))
    return (lambda n: scale_racks(topo, n)), max(1, fit)


def _passes(
    site: Topology, workload: Workload, policy: str, cfg: SimConfig, max_loss: float
) -> tuple[bool, float, float]:
    try:
        pl = place(site, workload)
    except ConfigError:  # too few racks for every job to get one: too small to count
        return False, 1.0, 0.0
    r = simulate(site, workload, make_policy(policy), cfg, placement=pl)
    loss = max((1.0 - j.throughput for j in r.jobs), default=0.0)
    ok = r.seconds_over_capacity == 0 and (policy == "static" or loss <= max_loss + 1e-12)
    return ok, loss, r.seconds_over_capacity


def capacity(
    site: str | Topology,
    workload: Workload,
    *,
    policies: Sequence[str] = ("static", "uniform", "polca", "thunderbolt", "realloc"),
    max_loss: float = 0.05,
    config: SimConfig | None = None,
    max_factor: float = 2.5,
    progress: Callable[[str, int], None] | None = None,
) -> list[CapacityRow]:
    """The capacity table (module docstring). ``config`` sets duration and step of each run."""
    if not 0 <= max_loss < 1:
        raise ConfigError("max_loss must be in [0, 1)")
    cfg = config or SimConfig(duration_s=86_400.0, step_s=30.0)
    build, n0 = builder_for(site)
    base = build(n0)
    rows = [
        CapacityRow(
            policy="nameplate",
            method="provisioning rule: every GPU at TDP, cooling at design point",
            racks=n0,
            gpus=base.gpu_count,
            gain_vs_nameplate=1.0,
            worst_job_loss=0.0,
            seconds_over_capacity=0.0,
        )
    ]
    for pol in policies:
        lo, hi = 0, math.ceil(n0 * max_factor)
        best = (0, 1.0, 0.0)
        # bisection on the largest passing rack count in [1, hi]
        a, b = max(1, n0 // 2), hi
        ok_a, loss_a, over_a = _passes(build(a), workload, pol, cfg, max_loss)
        if not ok_a:
            a, b = 1, a
            ok_a, loss_a, over_a = _passes(build(a), workload, pol, cfg, max_loss)
        if ok_a:
            best = (a, loss_a, over_a)
            lo = a
            hi = b
            while hi - lo > max(1, n0 // 200):
                mid = (lo + hi) // 2
                ok, loss, over = _passes(build(mid), workload, pol, cfg, max_loss)
                if progress is not None:
                    progress(pol, mid)
                if ok:
                    lo, best = mid, (mid, loss, over)
                else:
                    hi = mid
        racks, loss, over = best
        gpus = build(racks).gpu_count if racks else 0
        rows.append(
            CapacityRow(
                policy=pol,
                method="simulated: no level over capacity"
                + ("" if pol == "static" else f", every job within {max_loss:.0%} loss"),
                racks=racks,
                gpus=gpus,
                gain_vs_nameplate=gpus / base.gpu_count if base.gpu_count else math.nan,
                worst_job_loss=loss,
                seconds_over_capacity=over,
            )
        )
    return rows


__all__ = ["CapacityRow", "builder_for", "capacity", "scale_racks"]
