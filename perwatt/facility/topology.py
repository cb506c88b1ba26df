"""A site's power hierarchy: utility feed → switchboard/UPS → PDU/RPP → rack → node → GPUs.

Every element has a continuous **capacity** (watts it may deliver at its output), a conversion
**efficiency** (output / input power: a double-conversion UPS is ≈ 0.94–0.96, eco mode
0.98–0.99), a **redundancy** scheme and a **count** (``count`` identical copies under the same
parent, so a 400,000-GPU site is a tree of a few dozen elements). Leaves are nodes (servers):
``gpus`` GPUs of one SKU plus ``other_power_w`` for CPUs, NICs, switches and fans::

    feed (96 MW) ──► switchboard ×8 (12 MW, 0.995) ──► ups ×2 (6 MW, 0.96, 2N) ──► pdu ×…
                                                              └──► rack ×… ──► node ×18 (4 GPU)

**Redundancy.** ``capacity_w`` is what the element carries in normal operation with every path
up. ``2N`` means half of it is the reserve a failover needs (each side alone must carry the
load); ``N+1`` with ``modules`` = k means one module in k. The reserve is exactly the stranded
power that capping policies reclaim: :attr:`Element.firm_capacity_w` is what is left after a
failure, :attr:`Element.reserve_w` the difference.

**Oversubscription.** The sum of the children's capacities (times their counts) may exceed the
parent's only up to the ratio the element declares in ``oversubscription`` (default 1.0: none);
:meth:`Topology.oversubscription` reports the ratio per element.

The power a child draws from its parent is its own output load divided by its efficiency, so a
constraint anywhere in the tree is linear in GPU power once loads are *referred to the root*
(multiplied by the product of 1/efficiency from the element up to the root): the allocator in
:mod:`perwatt.facility.allocate` works in those units.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError
from perwatt.facility.skus import require_sku

#: Element kinds from the top of the tree down; a child's kind comes strictly after its parent's.
KINDS: Final = ("feed", "switchboard", "ups", "pdu", "rpp", "rack", "node")
REDUNDANCY: Final = ("N", "N+1", "2N")


def _num(where: str, name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise ConfigError(f"{where}: {name} must be a finite number, got {v!r}")
    return float(v)


@dataclass(frozen=True, slots=True, kw_only=True)
class Element:
    """One element of the power tree (see the module docstring for the fields' meaning)."""

    name: str
    kind: str
    capacity_w: float
    efficiency: float = 1.0
    redundancy: str = "N"
    modules: int = 2
    oversubscription: float = 1.0
    count: int = 1
    children: tuple[Element, ...] = ()
    gpu: str | None = None
    gpus: int = 0
    other_power_w: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"an element has no name (kind {self.kind!r})")
        w = f"element {self.name!r}"
        if self.kind not in KINDS:
            raise ConfigError(f"{w}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        cap = _num(w, "capacity_w", self.capacity_w)
        if cap <= 0:
            raise ConfigError(f"{w}: capacity_w must be > 0, got {self.capacity_w}")
        eff = _num(w, "efficiency", self.efficiency)
        if not 0 < eff <= 1:
            raise ConfigError(f"{w}: efficiency must be in (0, 1], got {self.efficiency}")
        if self.redundancy not in REDUNDANCY:
            raise ConfigError(f"{w}: redundancy must be one of {', '.join(REDUNDANCY)}")
        if self.redundancy == "N+1" and (not isinstance(self.modules, int) or self.modules < 2):
            raise ConfigError(f"{w}: N+1 needs modules >= 2, got {self.modules}")
        if _num(w, "oversubscription", self.oversubscription) < 1:
            raise ConfigError(f"{w}: oversubscription must be >= 1, got {self.oversubscription}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"{w}: count must be an integer >= 1, got {self.count!r}")
        if self.kind == "node":
            if self.children:
                raise ConfigError(f"{w}: a node has no children")
            if self.gpu is None:
                raise ConfigError(f"{w}: a node needs a gpu SKU")
            require_sku(self.gpu, where=w)
            if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
                raise ConfigError(f"{w}: gpus must be an integer >= 1, got {self.gpus!r}")
            if _num(w, "other_power_w", self.other_power_w) < 0:
                raise ConfigError(f"{w}: other_power_w must be >= 0")
            if self.nameplate_w > cap * (1 + 1e-9):
                raise ConfigError(
                    f"{w}: nameplate {self.nameplate_w:.0f} W (GPUs + other) exceeds its "
                    f"capacity {cap:.0f} W"
                )
        else:
            if not self.children:
                raise ConfigError(f"{w}: a {self.kind} needs children (nodes at the bottom)")
            me = KINDS.index(self.kind)
            for c in self.children:
                if KINDS.index(c.kind) <= me:
                    raise ConfigError(
                        f"{w}: child {c.name!r} is a {c.kind}, which cannot sit under a {self.kind}"
                    )
            ratio = self.children_capacity_w / cap
            if ratio > self.oversubscription * (1 + 1e-9):
                raise ConfigError(
                    f"{w}: children's capacity {self.children_capacity_w / 1e3:.6g} kW exceeds "
                    f"its {cap / 1e3:.6g} kW ({ratio:.3f}x); declare oversubscription >= "
                    f"{ratio:.3f} if intended"
                )

    @property
    def children_capacity_w(self) -> float:
        """Sum of the children's capacities times their counts, as input power to them."""
        return sum(c.count * c.capacity_w / c.efficiency for c in self.children)

    @property
    def firm_capacity_w(self) -> float:
        """Capacity left after one failure: half for 2N, (k-1)/k for N+1 with k modules."""
        if self.redundancy == "2N":
            return self.capacity_w / 2
        if self.redundancy == "N+1":
            return self.capacity_w * (self.modules - 1) / self.modules
        return self.capacity_w

    @property
    def reserve_w(self) -> float:
        """The failover reserve: stranded in normal operation unless a policy reclaims it."""
        return self.capacity_w - self.firm_capacity_w

    @property
    def nameplate_w(self) -> float:
        """Input power of one copy with every GPU at TDP and other power at its maximum."""
        if self.kind == "node":
            assert self.gpu is not None
            return self.gpus * require_sku(self.gpu).tdp_w + self.other_power_w
        return sum(c.count * c.nameplate_w / c.efficiency for c in self.children)

    @property
    def gpu_count(self) -> int:
        """GPUs in one copy of this element."""
        if self.kind == "node":
            return self.gpus
        return sum(c.count * c.gpu_count for c in self.children)

    def walk(self) -> Iterator[Element]:
        """This element and every descendant, depth first (one entry per distinct element)."""
        yield self
        for c in self.children:
            yield from c.walk()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "capacity_w": self.capacity_w}
        if self.efficiency != 1.0:
            d["efficiency"] = self.efficiency
        if self.redundancy != "N":
            d["redundancy"] = self.redundancy
            if self.redundancy == "N+1":
                d["modules"] = self.modules
        if self.oversubscription != 1.0:
            d["oversubscription"] = self.oversubscription
        if self.count != 1:
            d["count"] = self.count
        if self.kind == "node":
            d.update(gpu=self.gpu, gpus=self.gpus, other_power_w=self.other_power_w)
        else:
            d["children"] = [c.to_dict() for c in self.children]
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class FlatTree:
    """The tree as arrays in depth-first order (index 0 is the root), ready for NumPy.

    ``multiplicity`` is the product of counts from the root down to the element: an element with
    multiplicity m stands for m identical copies, so ``capacity_w`` here is m x the element's
    capacity. ``gain`` is the product of 1/efficiency from the element's *parent* up to the root
    included: power delivered into the element, times its gain, is what the utility feed supplies
    for it (loads referred to the root). ``leaf`` is the node row for each node element.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    parent: npt.NDArray[np.int64]
    depth: npt.NDArray[np.int64]
    multiplicity: npt.NDArray[np.int64]
    capacity_w: npt.NDArray[np.float64]
    firm_capacity_w: npt.NDArray[np.float64]
    gain: npt.NDArray[np.float64]
    self_gain: npt.NDArray[np.float64]
    leaves: npt.NDArray[np.int64]
    leaf_gpus: npt.NDArray[np.int64]
    leaf_gpu_sku: tuple[str, ...]
    leaf_other_power_w: npt.NDArray[np.float64]

    @property
    def size(self) -> int:
        return len(self.names)

    def ancestors_matrix(self) -> npt.NDArray[np.bool_]:
        """``A[e, l]`` is True when element ``e`` is leaf ``l``'s node or one of its ancestors."""
        a = np.zeros((self.size, len(self.leaves)), dtype=bool)
        for j, e in enumerate(self.leaves):
            v = int(e)
            while v >= 0:
                a[v, j] = True
                v = int(self.parent[v])
        return a


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A validated power tree with a name and where it came from (for error messages)."""

    name: str
    root: Element
    source: str = "<python>"
    notes: tuple[str, ...] = ()
    _flat: list[FlatTree] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.root.count != 1:
            raise ConfigError(f"{self.source}: the root {self.root.name!r} must have count 1")
        seen: set[str] = set()
        for e in self.root.walk():
            if e.name in seen:
                raise ConfigError(f"{self.source}: element name {e.name!r} appears twice")
            seen.add(e.name)

    @property
    def gpu_count(self) -> int:
        return self.root.gpu_count

    @property
    def nameplate_w(self) -> float:
        """Utility-side power with every GPU at TDP (no cooling)."""
        return self.root.nameplate_w / self.root.efficiency

    def element(self, name: str) -> Element:
        for e in self.root.walk():
            if e.name == name:
                return e
        raise ConfigError(f"{self.source}: no element named {name!r}")

    def oversubscription(self) -> dict[str, float]:
        """Children's capacity / own capacity for every element with children."""
        return {
            e.name: e.children_capacity_w / e.capacity_w for e in self.root.walk() if e.children
        }

    def nameplate_ratio(self) -> dict[str, float]:
        """Nameplate load under each element / its capacity: above 1 needs capping to be safe."""
        return {e.name: e.nameplate_w / e.capacity_w for e in self.root.walk()}

    def flat(self) -> FlatTree:
        """The tree as arrays (computed once, cached)."""
        if not self._flat:
            self._flat.append(_flatten(self.root))
        return self._flat[0]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "perwatt.site/1", "name": self.name, "root": self.root.to_dict()}


def _flatten(root: Element) -> FlatTree:
    names: list[str] = []
    kinds: list[str] = []
    parent: list[int] = []
    depth: list[int] = []
    mult: list[int] = []
    cap: list[float] = []
    firm: list[float] = []
    gain: list[float] = []
    self_gain: list[float] = []
    leaves: list[int] = []
    gpus: list[int] = []
    sku: list[str] = []
    other: list[float] = []

    def visit(e: Element, p: int, d: int, m: int, g: float) -> None:
        i = len(names)
        mm = m * e.count
        names.append(e.name)
        kinds.append(e.kind)
        parent.append(p)
        depth.append(d)
        mult.append(mm)
        cap.append(mm * e.capacity_w)
        firm.append(mm * e.firm_capacity_w)
        gain.append(g)
        self_gain.append(g / e.efficiency)
        if e.kind == "node":
            assert e.gpu is not None
            leaves.append(i)
            gpus.append(mm * e.gpus)
            sku.append(e.gpu)
            other.append(mm * e.other_power_w)
        for c in e.children:
            visit(c, i, d + 1, mm, g / e.efficiency)

    visit(root, -1, 0, 1, 1.0)
    return FlatTree(
        names=tuple(names),
        kinds=tuple(kinds),
        parent=np.array(parent, dtype=np.int64),
        depth=np.array(depth, dtype=np.int64),
        multiplicity=np.array(mult, dtype=np.int64),
        capacity_w=np.array(cap, dtype=np.float64),
        firm_capacity_w=np.array(firm, dtype=np.float64),
        gain=np.array(gain, dtype=np.float64),
        self_gain=np.array(self_gain, dtype=np.float64),
        leaves=np.array(leaves, dtype=np.int64),
        leaf_gpus=np.array(gpus, dtype=np.int64),
        leaf_gpu_sku=tuple(sku),
        leaf_other_power_w=np.array(other, dtype=np.float64),
    )


def expand(topology: Topology) -> Topology:
    """The same site with every count expanded into distinct copies named ``name#i``.

    Used to check that cohort aggregation changes no figure (run the expanded tree element by
    element). Only for small sites: the size grows with the product of counts.
    """

    def exp(e: Element, suffix: str) -> list[Element]:
        out = []
        for i in range(e.count):
            s = f"{suffix}#{i}" if e.count > 1 else suffix
            kids: list[Element] = []
            for c in e.children:
                kids.extend(exp(c, s))
            out.append(replace(e, name=e.name + s, count=1, children=tuple(kids)))
        return out

    (root,) = exp(topology.root, "")
    return Topology(name=topology.name, root=root, source=topology.source, notes=topology.notes)


def element_from_dict(d: Mapping[str, Any], where: str = "root") -> Element:
    """Build an element (and its subtree) from perwatt's JSON form; see :mod:`.loaders`."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: an element must be a JSON object")
    name = d.get("name")
    here = f"element {name!r}" if name else where
    known = {
        "name",
        "kind",
        "capacity_w",
        "efficiency",
        "redundancy",
        "modules",
        "oversubscription",
        "count",
        "children",
        "gpu",
        "gpus",
        "other_power_w",
        "note",
    }
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{here}: unknown field(s) {', '.join(extra)}")
    for req in ("name", "kind", "capacity_w"):
        if req not in d:
            raise ConfigError(f"{here}: missing {req}")
    kids_raw = d.get("children", [])
    if not isinstance(kids_raw, Sequence) or isinstance(kids_raw, str):
        raise ConfigError(f"{here}: children must be a list")
    kids = tuple(element_from_dict(c, f"child {i} of {name!r}") for i, c in enumerate(kids_raw))
    return Element(
        name=d["name"],
        kind=d["kind"],
        capacity_w=d["capacity_w"],
        efficiency=d.get("efficiency", 1.0),
        redundancy=d.get("redundancy", "N"),
        modules=d.get("modules", 2),
        oversubscription=d.get("oversubscription", 1.0),
        count=d.get("count", 1),
        children=kids,
        gpu=d.get("gpu"),
        gpus=d.get("gpus", 0),
        other_power_w=d.get("other_power_w", 0.0),
    )


__all__ = [
    "KINDS",
    "REDUNDANCY",
    "Element",
    "FlatTree",
    "Topology",
    "element_from_dict",
    "expand",
]
