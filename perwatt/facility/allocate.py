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

from dataclasses import dataclass, field
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
    cache: list[tuple[I64, I64]] = field(default_factory=list, repr=False, compare=False)

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


def by_depth(tree: AllocTree) -> list[tuple[I64, I64]]:
    """(elements, their parents) per depth from 1 down, computed once per tree."""
    if not tree.cache:
        for d in range(1, int(tree.depth.max()) + 1):
            idx = np.flatnonzero(tree.depth == d)
            tree.cache.append((idx, tree.parent[idx]))
    return tree.cache


def subtree_sums(tree: AllocTree, element: I64, values: F64) -> F64:
    """Sum of ``values`` (one per cohort, placed at ``element``) over every element's subtree."""
    out = np.bincount(element, weights=values, minlength=tree.size).astype(np.float64)
    for idx, par in reversed(by_depth(tree)):
        out += np.bincount(par, weights=out[idx], minlength=tree.size)
    return out


def _solve_groups(o: I64, cc: F64, ww: F64, residual: F64) -> tuple[I64, F64, I64, F64, F64]:
    """Levels for owners whose pieces saturate at different levels (a grouped sort).

    Returns (owners, levels, and the pieces handed up: owner index, level, weight).
    """
    order = np.lexsort((cc, o))
    o, cc, ww = o[order], cc[order], ww[order]
    n = len(o)
    brk = np.empty(n, dtype=bool)
    brk[0] = True
    np.not_equal(o[1:], o[:-1], out=brk[1:])
    starts = np.flatnonzero(brk)
    group = np.cumsum(brk) - 1
    cw = np.cumsum(ww * cc)
    cwsum = np.cumsum(ww)
    cw0 = np.concatenate(([0.0], cw))
    w0 = np.concatenate(([0.0], cwsum))
    ends = np.concatenate((starts[1:], [n]))
    base_cw = cw0[starts][group]  # sum before the group
    base_w = w0[starts][group]
    tot_w = (w0[ends] - w0[starts])[group]
    below = cw - ww * cc - base_cw  # sum_{j<k} w_j c_j within the group
    above = tot_w - (cwsum - ww - base_w)  # sum_{j>=k} w_j within the group
    r = residual[o]
    hit = below + cc * above >= r  # the filling function at level c_k reaches the residual
    idx = np.where(hit, np.arange(n), n)
    first = np.minimum.reduceat(idx, starts)
    owners = o[starts]
    binding = first < n
    lvl = np.full(len(starts), np.inf)
    fb = first[binding]
    den = above[fb]
    # den >= w_k > 0 in exact arithmetic; round-off with very unequal weights can cancel it
    safe = den > 0
    lv = cc[fb].copy()
    lv[safe] = (r[fb][safe] - below[fb][safe]) / den[safe]
    lvl[binding] = np.maximum(lv, 0.0)
    # cap the pieces at their owner's level; those at the group's top merge into one
    cc = np.minimum(cc, lvl[group])
    gtop = np.maximum.reduceat(cc, starts)
    top = cc >= gtop[group]
    merged_w = np.bincount(group[top], weights=ww[top], minlength=len(starts))
    rest = ~top
    up_o = np.concatenate((owners, o[rest]))
    up_c = np.concatenate((gtop, cc[rest]))
    up_w = np.concatenate((merged_w, ww[rest]))
    return owners, lvl, up_o, up_c, up_w


def _levels(tree: AllocTree, element: I64, weight: F64, residual: F64) -> F64:
    """λ*_v for every element: the filling level at which v saturates (inf if never).

    Pieces not yet limited by any descendant (level 1) are summed per owner with one bincount;
    only owners that also hold limited pieces need the grouped sort.
    """
    E = tree.size
    lam = np.full(E, np.inf)
    # every cohort starts unlimited (level 1): sum them per element at once
    w0 = np.bincount(element, weights=weight, minlength=E)
    owner = np.flatnonzero(w0 > 0)
    c, w = np.ones(len(owner)), w0[owner]
    parent = tree.parent
    for d in range(int(tree.depth.max()), -1, -1):
        pd = tree.depth[owner]
        at = pd == d
        if pd.min() == d:  # every piece is here (the common case at the bottom)
            o, cc, ww = owner, c, w
        elif not at.any():
            continue
        else:
            o, cc, ww = owner[at], c[at], w[at]
        free = cc >= 1.0
        w_free = np.bincount(o[free], weights=ww[free], minlength=E)
        ko, kc, kw = o[~free], cc[~free], ww[~free]
        mixed = np.zeros(E, dtype=bool)
        mixed[ko] = True
        simple = np.flatnonzero((w_free > 0) & ~mixed)
        ws, rs = w_free[simple], residual[simple]
        ls = np.where(ws > rs, np.maximum(rs, 0.0) / ws, np.inf)
        lam[simple] = ls
        up_o: list[I64] = [parent[simple]]
        up_c: list[F64] = [np.minimum(ls, 1.0)]
        up_w: list[F64] = [ws.astype(np.float64)]
        if len(ko):
            mo = np.flatnonzero(mixed & (w_free > 0))
            go = np.concatenate((ko, mo))
            gc = np.concatenate((kc, np.ones(len(mo))))
            gw = np.concatenate((kw, w_free[mo])).astype(np.float64)
            owners, lvl, po, pc, pw = _solve_groups(go, gc, gw, residual)
            lam[owners] = lvl
            up_o.append(parent[po])
            up_c.append(pc)
            up_w.append(pw)
        if d == 0:
            break
        rest = ~at
        owner = np.concatenate([*up_o, owner[rest]])
        c = np.concatenate([*up_c, c[rest]])
        w = np.concatenate([*up_w, w[rest]])
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
    step = target - x
    step[step < 1e-9] = 0.0  # below a nanowatt is round-off, not a request
    weight = a * step
    if not weight.max(initial=0.0) > 0:
        return x, residual
    need = subtree_sums(tree, element, weight)
    if np.all(need <= residual):  # nothing binds: every cohort reaches its target
        return x + step, residual - need
    lam = _levels(tree, element, weight, residual)
    level = lam
    for idx, par in by_depth(tree):
        level[idx] = np.minimum(level[idx], level[par])
    frac = np.minimum(level[element], 1.0)  # levels are >= 0; np.clip is slower here
    used = subtree_sums(tree, element, weight * frac)
    return x + frac * step, residual - used


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
    req = np.minimum(np.maximum(request_w, lo), hi)
    flo = np.minimum(np.maximum(floor_w, lo), req)
    x = lo.copy()
    residual = tree.capacity - subtree_sums(tree, element, a * x)
    # an element overloaded even at the minimum caps: the cohorts under it stay at their
    # minimum (its level is 0), the rest of the tree is still allocated
    feasible = bool(np.all(residual >= -1e-9 * np.maximum(1.0, np.abs(tree.capacity))))
    pr = np.asarray(priority, dtype=np.int64)
    p0 = int(pr.min()) if len(pr) else 0
    tiers = np.flatnonzero(np.bincount(pr - p0))[::-1] + p0  # small ints: no sort needed
    masks = [pr == p for p in tiers]
    for goal in (flo, req):
        # when every tier fits at once, the tier-by-tier fills would all reach their goals
        need = subtree_sums(tree, element, a * np.maximum(goal - x, 0.0))
        if np.all(need <= residual):
            x, residual = np.maximum(goal, x), residual - need
            continue
        for m in masks:
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
