"""Exact stranded-power reallocation over a power tree (nvPAX-style, three phases).

The problem: cohorts of GPUs (``n_i`` GPUs each, all with the same cap ``x_i``) sit under nodes of
a tree; every element ``v`` limits the power below it. Referred to the root (see
:mod:`perwatt.facility.topology`), every limit is linear::

    sum over cohorts i under v of  a_i * x_i  <=  K_v        a_i = n_i * gain of i's node
    min_i <= x_i <= max_i

and the feasible caps form a polymatroid (a laminar family of capacities on top of a box). The
allocation raises caps from ``min`` in phases (after nvPAX, NVIDIA, arXiv 2605.01837):

1. by priority, highest first: each cohort towards its *floor* (the power its flexibility tier
   cannot give up), then, again by priority, towards its *request* (what it would draw
   uncapped) — minimum deviation from the requests, lexicographically by priority;
2. the excess to *active* cohorts, towards their max;
3. what is left to idle cohorts, towards their max.

Each step is **progressive filling**: every participating cohort moves the same fraction λ of
the way from where it is to its target, until it arrives or an element above it fills. So the
allocation is max–min fair in that fraction, and — because all maximal vectors of a polymatroid
have the same sum — every step's total is the maximum an LP can reach given the earlier steps
(the greedy algorithm is optimal on polymatroids). ``tests/facility/test_allocate.py`` checks
both claims against HiGHS on random trees.

Algorithm per step, bottom up by depth: an element's level λ*_v is where the sum of its
children's filling functions meets its residual capacity; each function is piecewise linear
with a breakpoint at each descendant's λ* (kept as "pieces" ``(c, w)``: weight ``w`` saturating
at level ``c``), solved for all elements of one depth at once with a grouped sort. A cohort's
final level is ``min(1, min over its ancestors of λ*_v)``. Cost: O(P log P) per depth, P pieces,
where pieces under the same element merge as soon as they share a level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocTree:
    """The tree as the allocator needs it: parents (DFS order, root 0), depths, capacities.

    ``capacity`` is in root-referred watts, after subtracting fixed (non-GPU) loads; it may
    carry a leading time axis ``[K, E]`` for K independent problems on the same tree.
    """

    parent: I64
    depth: I64
    capacity: F64

    def __post_init__(self) -> None:
        n = len(self.parent)
        if not (len(self.depth) == self.capacity.shape[-1] == n) or n == 0:
            raise ConfigError("tree arrays must be non-empty and of equal length")
        if self.parent[0] != -1 or np.any(self.parent[1:] >= np.arange(1, n)):
            raise ConfigError("tree must be in depth-first order with the root first")

    @property
    def size(self) -> int:
        return len(self.parent)


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """Caps per cohort (watts per GPU) and whether even the minimum caps overload an element."""

    caps_w: F64
    feasible: bool


def subtree_sums(tree: AllocTree, element: I64, values: F64) -> F64:
    """Sum of ``values`` (one per cohort, placed at ``element``) over every element's subtree."""
    out = np.bincount(element, weights=values, minlength=tree.size).astype(np.float64)
    for d in range(int(tree.depth.max()), 0, -1):
        idx = np.flatnonzero(tree.depth == d)
        out += np.bincount(tree.parent[idx], weights=out[idx], minlength=tree.size)
    return out


def _levels(tree: AllocTree, element: I64, weight: F64, residual: F64) -> F64:
    """λ*_v for every element: the filling level at which v saturates (inf if never)."""
    lam = np.full(tree.size, np.inf)
    owner = element.copy()
    c = np.ones(len(element))
    w = weight.copy()
    keep = w > 0
    owner, c, w = owner[keep], c[keep], w[keep]
    depth_of = tree.depth
    for d in range(int(depth_of.max()), -1, -1):
        at = depth_of[owner] == d
        if not at.any():
            continue
        o, cc, ww = owner[at], c[at], w[at]
        order = np.lexsort((cc, o))
        o, cc, ww = o[order], cc[order], ww[order]
        n = len(o)
        starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        cw = np.cumsum(ww * cc)
        cwsum = np.cumsum(ww)
        base_cw = np.r_[0.0, cw][starts][group]  # sum before the group
        base_w = np.r_[0.0, cwsum][starts][group]
        tot_w = np.r_[cwsum[np.r_[starts[1:] - 1, n - 1]]][group] - base_w
        below = cw - ww * cc - base_cw  # sum_{j<k} w_j c_j within the group
        above = tot_w - (cwsum - ww - base_w)  # sum_{j>=k} w_j within the group
        f_at = below + cc * above  # filling function at level c_k
        r = residual[o]
        hit = f_at >= r
        idx = np.where(hit, np.arange(n), n)
        first = np.minimum.reduceat(idx, starts)
        owners = o[starts]
        binding = first < n
        lvl = np.full(len(starts), np.inf)
        fb = first[binding]
        lvl[binding] = np.maximum((r[fb] - below[fb]) / above[fb], 0.0)
        lam[owners] = lvl
        # cap the pieces at their owner's level, merge those at the top, hand them to the parent
        cc = np.minimum(cc, lvl[group])
        gmax = np.maximum.reduceat(cc, starts)[group]
        top = cc >= gmax
        merged_w = np.bincount(group[top], weights=ww[top], minlength=len(starts))
        rest = ~top
        par = tree.parent[owners]
        if d == 0:
            break
        new_owner = np.r_[par, tree.parent[o[rest]]]
        new_c = np.r_[np.maximum.reduceat(cc, starts), cc[rest]]
        new_w = np.r_[merged_w, ww[rest]]
        owner = np.r_[new_owner, owner[~at]]
        c = np.r_[new_c, c[~at]]
        w = np.r_[new_w, w[~at]]
    return lam


def fill(
    tree: AllocTree,
    element: I64,
    a: F64,
    x: F64,
    target: F64,
    residual: F64,
) -> tuple[F64, F64]:
    """One progressive-filling step from ``x`` towards ``target``; returns (x, residual)."""
    step = np.maximum(target - x, 0.0)
    weight = a * step
    if not np.any(weight > 0):
        return x, residual
    need = subtree_sums(tree, element, weight)
    if np.all(need <= residual):  # nothing binds: every cohort reaches its target
        return x + step, residual - need
    lam = _levels(tree, element, weight, residual)
    level = lam.copy()
    for d in range(1, int(tree.depth.max()) + 1):
        idx = np.flatnonzero(tree.depth == d)
        level[idx] = np.minimum(level[idx], level[tree.parent[idx]])
    frac = np.clip(level[element], 0.0, 1.0)
    new_x = x + frac * step
    used = subtree_sums(tree, element, a * (new_x - x))
    return new_x, residual - used


def reallocate(
    tree: AllocTree,
    *,
    element: I64,
    gpus: npt.NDArray[np.int64] | F64,
    gain: F64,
    min_w: F64,
    max_w: F64,
    request_w: F64,
    floor_w: F64,
    priority: I64,
    active: npt.NDArray[np.bool_],
) -> Allocation:
    """The three-phase allocation (module docstring). Arrays are per cohort; caps per GPU.

    ``gain`` is the cohort's node's root-referral factor; ``floor_w`` the cap below which the
    cohort's flexibility tier is exceeded (clipped into [min, request]). With a capacity of
    shape ``[K, E]`` and per-cohort arrays of shape ``[K, C]`` (or ``[C]``), K independent
    problems are solved at once as one forest of K trees; ``caps_w`` is then ``[K, C]``.
    """
    cap = np.asarray(tree.capacity, dtype=np.float64)
    if cap.ndim == 2:
        return _batched(
            tree,
            element=element,
            gpus=gpus,
            gain=gain,
            min_w=min_w,
            max_w=max_w,
            request_w=request_w,
            floor_w=floor_w,
            priority=priority,
            active=active,
        )
    a = np.asarray(gpus, dtype=np.float64) * gain
    lo = np.asarray(min_w, dtype=np.float64)
    hi = np.maximum(np.asarray(max_w, dtype=np.float64), lo)
    req = np.clip(request_w, lo, hi)
    flo = np.clip(floor_w, lo, req)
    x = lo.copy()
    residual = tree.capacity - subtree_sums(tree, element, a * x)
    # an element overloaded even at the minimum caps: the cohorts under it stay at their
    # minimum (its level is 0), the rest of the tree is still allocated
    feasible = bool(np.all(residual >= -1e-9 * np.maximum(1.0, np.abs(tree.capacity))))
    tiers = np.unique(priority)[::-1]
    for goal in (flo, req):
        for p in tiers:
            m = priority == p
            x, residual = fill(tree, element, a, x, np.where(m, goal, x), residual)
    x, residual = fill(tree, element, a, x, np.where(active, hi, x), residual)
    x, residual = fill(tree, element, a, x, hi, residual)
    return Allocation(caps_w=x, feasible=feasible)


def _batched(tree: AllocTree, **arrays: npt.NDArray[Any]) -> Allocation:
    k, e = tree.capacity.shape
    c = len(arrays["element"])
    off = np.arange(k, dtype=np.int64)[:, None] * e
    parent = np.where(tree.parent[None, :] >= 0, tree.parent[None, :] + off, -1).ravel()
    forest = AllocTree(parent=parent, depth=np.tile(tree.depth, k), capacity=tree.capacity.ravel())
    flat = {
        name: np.broadcast_to(v, (k, c)).ravel() for name, v in arrays.items() if name != "element"
    }
    element = (arrays["element"][None, :] + off).ravel()
    out = reallocate(forest, element=element, **flat)
    return Allocation(caps_w=out.caps_w.reshape(k, c), feasible=out.feasible)


__all__ = ["AllocTree", "Allocation", "fill", "reallocate", "subtree_sums"]
