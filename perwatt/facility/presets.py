"""Named systems and sites, each figure with its source.

Systems (one rack or server, as :class:`~perwatt.facility.topology.Element` subtrees):

* ``dgx-h100``: 8 x H100 SXM, 10.2 kW max system power (NVIDIA DGX H100 datasheet,
  "System power usage ~10.2 kW max").
* ``dgx-b200``: 8 x B200, 14.3 kW max (NVIDIA DGX B200 datasheet, "~14.3 kW max").
* ``gb200-nvl72``: 18 compute trays x 4 GB200 GPUs (1,200 W each) in one rack; rack power
  ~120–132 kW (NVIDIA GTC 2024 keynote material ~120 kW; Vertiv/NVIDIA GB200 NVL72 reference
  architecture 132 kW). perwatt uses 132 kW: the tray "other" power is what is left for Grace
  CPUs, NVLink switch trays, NICs and fans, spread over the 18 trays.
* ``gb300-nvl72``: 18 x 4 GB300 GPUs (1,400 W each); rack ~135–142 kW in vendor reference
  designs (Vertiv 360AI GB300 NVL72 designs up to 142 kW); perwatt uses 140 kW (approximate).

Sites, all GB300 NVL72 unless named otherwise, sized so every rack fits at **nameplate** under
the utility feed including cooling at the design temperature (the provisioning rule capping
policies relax): ``site-96mw``, ``site-250mw``, ``site-1gw`` — the sizes of NVIDIA's DSX
MaxLPS claims (38,304 vs 26,322 GPUs in 96 MW; 99,720 vs 68,688 at 250 MW; 399,096 vs
274,968 at 1 GW; NVIDIA DSX / Dynamic Power Software announcement, GTC 2025) — and
``test-8rack``, a small DGX H100 tree for tests and examples.

Electrical chain (assumptions, each a typical published figure, pass your own file for a real
site): medium-voltage transformer at the feed 0.99 efficiency (U.S. DOE 10 CFR 431 subpart K
liquid-immersed distribution transformers ≈ 99%); double-conversion UPS 0.96 (vendor data sheets
94–96%); floor PDU transformer 0.985.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final

from perwatt.errors import ConfigError
from perwatt.facility.skus import SKUS
from perwatt.facility.topology import Element, Topology

FEED_EFFICIENCY: Final = 0.99
UPS_EFFICIENCY: Final = 0.96
PDU_EFFICIENCY: Final = 0.985
#: Cooling overhead (cooling power / IT power) used only to size preset sites at nameplate:
#: direct-to-chip liquid with dry coolers on a hot design day (see perwatt.facility.cooling).
DESIGN_COOLING_OVERHEAD: Final = 0.15


def _tray(name: str, gpu: str, gpus: int, per_gpu_w: float, rack_w: float, trays: int) -> Element:
    other = (rack_w - trays * gpus * per_gpu_w) / trays
    return Element(
        name=name,
        kind="node",
        capacity_w=gpus * per_gpu_w + other,
        gpu=gpu,
        gpus=gpus,
        other_power_w=other,
        count=trays,
    )


def _dgx(name: str, gpu: str, node_w: float, count: int) -> Element:
    """An 8-GPU DGX node: what its rating leaves after 8 GPUs at TDP is the rest of the box."""
    return Element(
        name=name,
        kind="node",
        capacity_w=node_w,
        gpu=gpu,
        gpus=8,
        other_power_w=node_w - 8 * SKUS[gpu].tdp_w,
        count=count,
    )


def dgx_h100(name: str = "dgx-h100", count: int = 1) -> Element:
    """A DGX H100 server (node): 8 x H100 SXM, 10.2 kW."""
    return _dgx(name, "H100-SXM", 10_200.0, count)


def dgx_b200(name: str = "dgx-b200", count: int = 1) -> Element:
    """A DGX B200 server (node): 8 x B200, 14.3 kW."""
    return _dgx(name, "B200", 14_300.0, count)


def gb200_nvl72(name: str = "gb200-nvl72", count: int = 1) -> Element:
    """A GB200 NVL72 rack: 18 trays x 4 GPUs, 132 kW."""
    tray = _tray(f"{name}-tray", "GB200", 4, 1200.0, 132_000.0, 18)
    return Element(name=name, kind="rack", capacity_w=132_000.0, children=(tray,), count=count)


def gb300_nvl72(name: str = "gb300-nvl72", count: int = 1) -> Element:
    """A GB300 NVL72 rack: 18 trays x 4 GPUs, 140 kW (approximate)."""
    tray = _tray(f"{name}-tray", "GB300", 4, 1400.0, 140_000.0, 18)
    return Element(name=name, kind="rack", capacity_w=140_000.0, children=(tray,), count=count)


SYSTEMS: Final[Mapping[str, Callable[..., Element]]] = {
    "dgx-h100": dgx_h100,
    "dgx-b200": dgx_b200,
    "gb200-nvl72": gb200_nvl72,
    "gb300-nvl72": gb300_nvl72,
}


def nameplate_racks(feed_w: float, rack: Element, *, cooling_overhead: float) -> int:
    """Racks that fit under ``feed_w`` at nameplate, conversion losses and cooling included."""
    per_rack = rack.nameplate_w / PDU_EFFICIENCY / UPS_EFFICIENCY / FEED_EFFICIENCY
    return math.floor(feed_w / (per_rack * (1 + cooling_overhead)))


def build_site(
    *,
    name: str,
    feed_w: float,
    rack: Element,
    racks: int | None = None,
    racks_per_pdu: int = 8,
    pdus_per_ups: int = 5,
    cooling_overhead: float = DESIGN_COOLING_OVERHEAD,
) -> Topology:
    """A site of identical racks: feed → UPS → PDU → rack, sized per level at nameplate.

    ``racks`` defaults to what fits at nameplate (:func:`nameplate_racks`). With more racks the
    feed is oversubscribed (declared on the feed): a capping policy must then keep the site
    under its feed. UPS and PDU capacities follow their racks' nameplate, so only the feed is
    shared more thinly — the MaxLPS question.
    """
    n = (
        racks
        if racks is not None
        else nameplate_racks(feed_w, rack, cooling_overhead=cooling_overhead)
    )
    if n < 1:
        raise ConfigError(f"site {name!r}: not one rack fits under {feed_w / 1e6:g} MW")
    per_pdu = min(racks_per_pdu, n)
    n_pdu = n // per_pdu
    rem = n - n_pdu * per_pdu
    pdu_w = rack.nameplate_w * per_pdu
    ups_kids: list[Element] = []
    # one UPS level over all PDUs, split in groups of pdus_per_ups (with a last partial group)
    groups = []
    full_groups, last = divmod(n_pdu, pdus_per_ups)
    if full_groups:
        groups.append((full_groups, pdus_per_ups, ""))
    if last:
        groups.append((1, last, "-last"))
    for count, k, suffix in groups:
        p = Element(
            name=f"{name}-pdu{suffix}",
            kind="pdu",
            capacity_w=pdu_w,
            efficiency=PDU_EFFICIENCY,
            count=k,
            children=(
                Element(
                    name=f"{rack.name}{suffix}",
                    kind="rack",
                    capacity_w=rack.capacity_w,
                    count=per_pdu,
                    children=tuple(
                        Element(
                            name=f"{c.name}{suffix}",
                            kind=c.kind,
                            capacity_w=c.capacity_w,
                            count=c.count,
                            gpu=c.gpu,
                            gpus=c.gpus,
                            other_power_w=c.other_power_w,
                        )
                        for c in rack.children
                    ),
                ),
            ),
        )
        ups_kids.append(
            Element(
                name=f"{name}-ups{suffix}",
                kind="ups",
                capacity_w=k * pdu_w / PDU_EFFICIENCY,
                efficiency=UPS_EFFICIENCY,
                redundancy="2N",
                count=count,
                children=(p,),
            )
        )
    if rem:
        tail = Element(
            name=f"{rack.name}-rem",
            kind="rack",
            capacity_w=rack.capacity_w,
            count=rem,
            children=tuple(
                Element(
                    name=f"{c.name}-rem",
                    kind=c.kind,
                    capacity_w=c.capacity_w,
                    count=c.count,
                    gpu=c.gpu,
                    gpus=c.gpus,
                    other_power_w=c.other_power_w,
                )
                for c in rack.children
            ),
        )
        rem_w = rack.nameplate_w * rem
        ups_kids.append(
            Element(
                name=f"{name}-ups-rem",
                kind="ups",
                capacity_w=rem_w / PDU_EFFICIENCY,
                efficiency=UPS_EFFICIENCY,
                redundancy="2N",
                children=(
                    Element(
                        name=f"{name}-pdu-rem",
                        kind="pdu",
                        capacity_w=rem_w,
                        efficiency=PDU_EFFICIENCY,
                        children=(tail,),
                    ),
                ),
            )
        )
    kids_w = sum(u.count * u.capacity_w / u.efficiency for u in ups_kids)
    feed = Element(
        name=f"{name}-feed",
        kind="feed",
        capacity_w=feed_w,
        efficiency=FEED_EFFICIENCY,
        oversubscription=max(1.0, kids_w / feed_w * (1 + 1e-12)),
        children=tuple(ups_kids),
    )
    return Topology(
        name=name,
        root=feed,
        source=f"preset {name}",
        notes=(
            f"{n} racks of {rack.name}; feed {feed_w / 1e6:g} MW incl. cooling "
            f"(sized with cooling overhead {cooling_overhead:g} at nameplate)",
        ),
    )


def eight_rack(*, racks: int = 8) -> Topology:
    """Eight DGX H100 racks (4 servers each) under two PDUs: small enough to run GPU by GPU.

    The PDUs and the feed are deliberately tight (oversubscribed ~1.17x at nameplate), so a
    policy has something to decide.
    """
    rack_w = 4 * 10_200.0
    half = racks // 2
    pdus = []
    for i, k in enumerate((half, racks - half)):
        if k == 0:
            continue
        pdus.append(
            Element(
                name=f"pdu{i}",
                kind="pdu",
                capacity_w=140_000.0 * k / 4,
                efficiency=PDU_EFFICIENCY,
                oversubscription=1.25,
                children=(
                    Element(
                        name=f"rack{i}",
                        kind="rack",
                        capacity_w=rack_w,
                        count=k,
                        children=(dgx_h100(f"dgx{i}", count=4),),
                    ),
                ),
            )
        )
    feed_w = 290_000.0 * racks / 8
    kids_w = sum(p.capacity_w / p.efficiency for p in pdus)
    root = Element(
        name="feed",
        kind="feed",
        capacity_w=feed_w,
        efficiency=FEED_EFFICIENCY,
        oversubscription=max(1.0, kids_w / feed_w * 1.0001),
        children=tuple(pdus),
    )
    return Topology(name="test-8rack", root=root, source="preset test-8rack")


def site_96mw(*, racks: int | None = None) -> Topology:
    """96 MW of GB300 NVL72 (NVIDIA DSX MaxLPS claim: 38,304 vs 26,322 GPUs)."""
    return build_site(name="site-96mw", feed_w=96e6, rack=gb300_nvl72("nvl72"), racks=racks)


def site_250mw(*, racks: int | None = None) -> Topology:
    """250 MW of GB300 NVL72 (MaxLPS claim: 99,720 vs 68,688 GPUs)."""
    return build_site(name="site-250mw", feed_w=250e6, rack=gb300_nvl72("nvl72"), racks=racks)


def site_1gw(*, racks: int | None = None) -> Topology:
    """1 GW of GB300 NVL72 (MaxLPS claim: 399,096 vs 274,968 GPUs)."""
    return build_site(name="site-1gw", feed_w=1e9, rack=gb300_nvl72("nvl72"), racks=racks)


SITES: Final[Mapping[str, Callable[..., Topology]]] = {
    "test-8rack": eight_rack,
    "site-96mw": site_96mw,
    "site-250mw": site_250mw,
    "site-1gw": site_1gw,
}


def preset_site(name: str, **kwargs: int | None) -> Topology:
    """A named site preset; a one-line error listing them otherwise."""
    f = SITES.get(name)
    if f is None:
        raise ConfigError(f"unknown site preset {name!r}; known: {', '.join(SITES)}")
    return f(**kwargs)


__all__ = [
    "SITES",
    "SYSTEMS",
    "build_site",
    "dgx_b200",
    "dgx_h100",
    "eight_rack",
    "gb200_nvl72",
    "gb300_nvl72",
    "nameplate_racks",
    "preset_site",
    "site_1gw",
    "site_96mw",
    "site_250mw",
]
