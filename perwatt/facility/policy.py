"""The one policy interface: a snapshot of the site in, a power cap per cohort out.

The simulator (:mod:`perwatt.facility.simulate`) and a live controller call the *same* policy
objects. A snapshot carries the tree with its capacities, every cohort's power envelope, what it
asks for and what it drew, job priorities and flexibility floors, and whether telemetry arrived::

    caps_w = policy.allocate(snapshot)      # watts per GPU, one per cohort

Units: capacities and loads are **root-referred watts** (power at the utility feed, see
:mod:`perwatt.facility.topology`); ``*_w`` arrays per cohort are watts per GPU. ``capacity``
already has the non-GPU node power (and at the root the cooling share of the feed) taken out,
so ``sum(a_i * cap_i) <= capacity`` under every element is the whole constraint, with
``a_i = gpus_i * gain_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError
from perwatt.facility.allocate import AllocTree, subtree_sums

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What a policy sees at one control step (see the module docstring).

    For policies with ``open_loop = True`` the simulator may pass K control steps at once: then
    ``tree.capacity`` is ``[K, E]``, the per-cohort arrays that change over time
    (``request_w``, ``power_w``, ``active``) are ``[K, C]``, and the policy returns ``[K, C]``.
    """

    time_s: float
    tree: AllocTree
    element: I64
    gpus: I64
    gain: F64
    min_w: F64
    max_w: F64
    request_w: F64
    power_w: F64
    floor_w: F64
    priority: I64
    active: npt.NDArray[np.bool_]
    element_util: F64
    telemetry_ok: bool = True

    def __post_init__(self) -> None:
        n = len(self.element)
        for name in (
            "gpus",
            "gain",
            "min_w",
            "max_w",
            "request_w",
            "power_w",
            "floor_w",
            "priority",
            "active",
        ):
            m = np.shape(getattr(self, name))[-1]
            if m != n:
                raise ConfigError(f"snapshot: {name} has {m} entries per step, not {n}")
        if np.shape(self.element_util)[-1] != self.tree.size:
            raise ConfigError("snapshot: element_util must have one entry per element")

    @property
    def weight(self) -> F64:
        """Root-referred watts per watt of cap, per cohort (``gpus x gain``)."""
        out: F64 = self.gpus * self.gain
        return out


@runtime_checkable
class Policy(Protocol):
    """Maps a snapshot to caps (watts per GPU, one per cohort).

    ``open_loop`` is True when the caps depend only on requests and capacities (not on the
    policy's own state or on measured power): such a policy accepts batched snapshots.
    """

    name: str
    open_loop: bool

    def allocate(self, snapshot: Snapshot) -> F64: ...

    def reset(self) -> None: ...


def propagate_down(tree: AllocTree, values: F64, op: str = "max") -> F64:
    """Combine each element's value with its ancestors' (max or min), top down."""
    out = values.copy()
    f = np.maximum if op == "max" else np.minimum
    for d in range(1, int(tree.depth.max()) + 1):
        idx = np.flatnonzero(tree.depth == d)
        out[idx] = f(out[idx], out[tree.parent[idx]])
    res: F64 = out
    return res


def safe_uniform_cap_w(snapshot: Snapshot) -> float:
    """The one cap that keeps every element under capacity even if every GPU runs at it."""
    w = subtree_sums(snapshot.tree, snapshot.element, snapshot.weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(w > 0, snapshot.tree.capacity / np.where(w > 0, w, 1.0), np.inf)
    return float(per.min())


def can_overload(snapshot: Snapshot) -> npt.NDArray[np.bool_]:
    """Elements whose load could exceed their capacity with every GPU at its maximum."""
    full = subtree_sums(snapshot.tree, snapshot.element, snapshot.weight * snapshot.max_w)
    # an element sized exactly for its nameplate load can reach its capacity but not exceed it
    out: npt.NDArray[np.bool_] = full > snapshot.tree.capacity * (1 + 1e-9)
    return out


__all__ = ["Policy", "Snapshot", "can_overload", "propagate_down", "safe_uniform_cap_w"]
