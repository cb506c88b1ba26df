"""The max-flow sweep behind :func:`perwatt.train.frontier.compute_frontier`.

The frontier model (options, cost tables, results) lives in :mod:`perwatt.train.frontier`;
this module is the solver it calls, kept apart as lowtime keeps ``solver.py`` apart from
``cost_model.py``: the schedule DAG's index arrays (:class:`ScheduleDag`), the compiled sweep
(``_sweep.c``) and its Python reference (:func:`_sweep`: critical sub-DAG, minimum cut with
lower bounds, warm-started augmentation). See the frontier module's docstring for the
algorithm and what makes it fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError
from perwatt.train.schedule import Schedule, topological_order

try:  # the C port of _sweep, built by `pip install` when a C compiler is present
    from perwatt.train import _sweep as _compiled_sweep
except ImportError:  # pragma: no cover - depends on the install
    _compiled_sweep = None  # type: ignore[assignment]

__all__ = [
    "ScheduleDag",
    "Solver",
    "SweepResult",
    "compiled_solver_available",
    "dag_of",
    "run_sweep",
]

Solver = Literal["auto", "compiled", "python"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Flow capacities are integers (SciPy's max-flow): cost quanta of 1e-5 J. "Infinite" capacity
# stands for arcs that cannot be cut (dependencies, instructions already at top speed); lowtime
# uses 1e4 J for the same purpose. Energy slopes per quantum are a few joules at most.
_FLOW_UNIT_J: Final = 1e-5
_INF_CAP: Final = 2**30
# Steps between progress reports of a sweep; must equal SIGNAL_CHECK_EVERY in _sweep.c.
_PROGRESS_EVERY: Final = 256
# Above this many arcs one call of SciPy's compiled max-flow per step beats plain-Python
# augmentation (measured, 2-core VM: ~380 arcs at 8 stages × 12 microbatches favour Python,
# ~930 at 24 favour SciPy, 0.42 s vs 0.60 s for the whole frontier).
_PY_BFS_MAX_ARCS: Final = 600
# Above this many, a step's few augmenting paths are cheaper found one SciPy BFS at a time
# than with a whole max-flow call (measured: 96 microbatches 2.26 s vs 2.49 s; equal at 48).
_MAXFLOW_MAX_ARCS: Final = 2500


@dataclass(slots=True)
class ScheduleDag:
    """Index arrays for fast longest-path passes over a schedule DAG.

    Nodes are renumbered by topological level (``rank``), so each level is one contiguous
    slice and a pass costs a handful of NumPy calls per level rather than per node.
    """

    n: int
    bounds: list[tuple[int, int]]  # level k = ranks bounds[k][0] : bounds[k][1]
    preds: list[IntArray]  # per level: [size, kp] ranks of predecessors, padded with n
    succs: list[IntArray]  # per level: [size, ks] ranks of successors, padded with n
    rank: IntArray  # node id → rank
    node: IntArray  # rank → node id
    edges: IntArray
    # CSR predecessor/successor lists by node id (for the compiled sweep)
    pred_ptr: IntArray
    pred_idx: IntArray
    succ_ptr: IntArray
    succ_idx: IntArray

    @classmethod
    def build(cls, schedule: Schedule) -> ScheduleDag:
        n = schedule.num_nodes
        edges = schedule.edges
        pl: list[list[int]] = [[] for _ in range(n)]
        sl: list[list[int]] = [[] for _ in range(n)]
        for u, v in edges.tolist():
            pl[v].append(u)
            sl[u].append(v)
        level = np.zeros(n, dtype=np.int64)
        for v in topological_order(n, edges).tolist():
            if pl[v]:
                level[v] = 1 + max(int(level[u]) for u in pl[v])
        node = np.argsort(level, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[node] = np.arange(n)
        counts = np.bincount(level)
        ends = np.cumsum(counts)
        bounds = [(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]
        kp = max(1, max(len(p) for p in pl))
        ks = max(1, max(len(x) for x in sl))
        preds, succs = [], []
        for lo, hi in bounds:
            pm = np.full((hi - lo, kp), n, dtype=np.int64)
            sm = np.full((hi - lo, ks), n, dtype=np.int64)
            for r in range(lo, hi):
                v = int(node[r])
                pm[r - lo, : len(pl[v])] = rank[pl[v]]
                sm[r - lo, : len(sl[v])] = rank[sl[v]]
            preds.append(pm)
            succs.append(sm)
        by_head = np.argsort(edges[:, 1], kind="stable")
        by_tail = np.argsort(edges[:, 0], kind="stable")
        pred_ptr = np.zeros(n + 1, dtype=np.int64)
        succ_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(edges[:, 1], minlength=n), out=pred_ptr[1:])
        np.cumsum(np.bincount(edges[:, 0], minlength=n), out=succ_ptr[1:])
        return cls(
            n=n,
            bounds=bounds,
            preds=preds,
            succs=succs,
            rank=rank,
            node=node,
            edges=edges,
            pred_ptr=pred_ptr,
            pred_idx=np.ascontiguousarray(edges[by_head, 0], dtype=np.int64),
            succ_ptr=succ_ptr,
            succ_idx=np.ascontiguousarray(edges[by_tail, 1], dtype=np.int64),
        )

    def earliest_start(self, d: npt.NDArray[np.float64] | IntArray) -> FloatArray:
        dr = np.asarray(d, dtype=np.float64)[self.node]
        ef = np.zeros(self.n + 1, dtype=np.float64)  # sentinel finish 0
        for (lo, hi), pm in zip(self.bounds, self.preds, strict=True):
            ef[lo:hi] = ef[pm].max(axis=1) + dr[lo:hi]
        es = np.empty(self.n, dtype=np.float64)
        es[self.node] = ef[: self.n] - dr
        return es

    def longest(self, d: IntArray) -> tuple[IntArray, IntArray, int]:
        """Integer earliest start and latest start (node order), and the makespan."""
        n = self.n
        dr = d[self.node]
        ef = np.zeros(n + 1, dtype=np.int64)
        for (lo, hi), pm in zip(self.bounds, self.preds, strict=True):
            ef[lo:hi] = ef[pm].max(axis=1) + dr[lo:hi]
        t = int(ef[:n].max())
        ls = np.full(n + 1, t, dtype=np.int64)  # sentinel latest start = T
        for (lo, hi), sm in zip(reversed(self.bounds), reversed(self.succs), strict=True):
            ls[lo:hi] = ls[sm].min(axis=1) - dr[lo:hi]
        es = np.empty(n, dtype=np.int64)
        out_ls = np.empty(n, dtype=np.int64)
        es[self.node] = ef[:n] - dr
        out_ls[self.node] = ls[:n]
        return es, out_ls, t


_DAG_CACHE: dict[int, tuple[Schedule, ScheduleDag]] = {}


def dag_of(schedule: Schedule) -> ScheduleDag:
    """The index arrays of ``schedule`` (built once per schedule object; schedules are frozen)."""
    hit = _DAG_CACHE.get(id(schedule))
    if hit is not None and hit[0] is schedule:
        return hit[1]
    dag = ScheduleDag.build(schedule)
    if len(_DAG_CACHE) > 32:
        _DAG_CACHE.clear()
    _DAG_CACHE[id(schedule)] = (schedule, dag)
    return dag


def compiled_solver_available() -> bool:
    """True when the compiled frontier sweep (``perwatt/train/_sweep.c``) is built."""
    return _compiled_sweep is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepResult:
    """What a sweep returns, per step slowest first (step k's changes: ``change_node`` and
    ``change_delta`` over ``change_ptr[k]:change_ptr[k+1]``)."""

    steps_t: IntArray  # makespan, quanta
    steps_cost: FloatArray  # model cost without the P_block · T term, J
    change_ptr: IntArray
    change_node: IntArray
    change_delta: IntArray
    final_d: IntArray
    complete: bool
    solver: Literal["compiled", "python"]


def run_sweep(
    dag: ScheduleDag,
    qmin: IntArray,
    qmax: IntArray,
    flat: FloatArray,
    base: IntArray,
    stop_q: int,
    solver: Solver,
    progress: Callable[[int], object] | None = None,
) -> SweepResult:
    """Run the compiled or the Python sweep, then check its bookkeeping once. ``progress`` is
    called now and then with the makespan (quanta) the sweep has reached."""
    if solver != "python" and _compiled_sweep is not None:
        i64 = np.int64

        def c(a: npt.NDArray[np.generic], dt: type = i64) -> npt.NDArray[np.generic]:
            return np.ascontiguousarray(a, dtype=dt)

        t_b, cost_b, ptr_b, node_b, delta_b, d_b, complete = _compiled_sweep.sweep(
            c(dag.node),
            c(dag.pred_ptr),
            c(dag.pred_idx),
            c(dag.succ_ptr),
            c(dag.succ_idx),
            c(dag.edges[:, 0]),
            c(dag.edges[:, 1]),
            c(qmin),
            c(qmax),
            c(flat, np.float64),
            c(base),
            max(-1, min(int(stop_q), 2**62)),  # a stop beyond any makespan = no stop
            progress,
        )
        res = SweepResult(
            steps_t=np.frombuffer(t_b, dtype=np.int64),
            steps_cost=np.frombuffer(cost_b, dtype=np.float64),
            change_ptr=np.frombuffer(ptr_b, dtype=np.int64),
            change_node=np.frombuffer(node_b, dtype=np.int64),
            change_delta=np.frombuffer(delta_b, dtype=np.int64),
            final_d=np.frombuffer(d_b, dtype=np.int64).copy(),
            complete=bool(complete),
            solver="compiled",
        )
    else:
        res = _sweep(dag, qmin, qmax, flat, base, stop_q, progress)
    # The makespan and cost were tracked incrementally; check both once against a recount.
    if len(res.steps_t):
        _, _, t_check = dag.longest(res.final_d)
        exact = float(flat[base + res.final_d].sum())
        last_t, last_cost = int(res.steps_t[-1]), float(res.steps_cost[-1])
        if t_check != last_t or abs(exact - last_cost) > 1e-6 * max(1.0, abs(exact)):
            raise RuntimeError(
                f"frontier sweep ({res.solver}) lost track: makespan {t_check} vs {last_t}, "
                f"cost {exact} vs {last_cost}"
            )
    return res


def _sweep(
    dag: ScheduleDag,
    qmin: IntArray,
    qmax: IntArray,
    flat: FloatArray,
    base: IntArray,
    stop_q: int = -1,
    progress: Callable[[int], object] | None = None,
) -> SweepResult:
    """Phillips–Dessouky sweep from every node at ``qmax`` down to the minimum makespan.

    Returns, per step (slowest first): makespan in quanta, model cost, and the nodes it
    changed (with ±1). ``_sweep.c`` is a port of this function; keep the two in step.

    Three facts keep each step cheap. (1) A step shortens *every* critical path by exactly one
    quantum, so critical instructions stay critical; the critical sub-DAG only grows, and it
    can only grow when some other path's slack reaches zero. Slack falls by at most
    ``1 + (instructions slowed this step)`` per step, so the longest-path pass is redone only
    when the smallest slack could have run out. (2) While the critical sub-DAG is one chain the
    minimum cut is its cheapest instruction, taken without any flow. (3) Otherwise the flow of
    the previous step stays feasible after the step (convex costs: a sped-up instruction's new
    lower bound is its old capacity, a slowed one's new capacity is its old lower bound), so
    each step only augments the previous maximum flow instead of starting over.
    """
    scipy = _SciPy.load()

    n = dag.n
    d = qmax.copy()
    edges = dag.edges
    nv = 2 * n + 4  # node-split network: in(i)=2i, out(i)=2i+1, then src, snk, s', t'
    src, snk, sp, tp = 2 * n, 2 * n + 1, 2 * n + 2, 2 * n + 3
    steps_t: list[int] = []
    steps_cost: list[float] = []
    changes: list[tuple[IntArray, IntArray]] = []

    def caps(idx: IntArray) -> tuple[IntArray, IntArray]:
        """Integer (lb, ub) of nodes ``idx``, lowtime's convention (|Δcost| per quantum)."""
        dd, lo_q, hi_q, b = d[idx], qmin[idx], qmax[idx], base[idx]
        c0 = flat[b + dd]
        up = np.abs(flat[b + np.maximum(dd - 1, lo_q)] - c0)  # cost of one quantum faster
        down = np.abs(c0 - flat[b + np.minimum(dd + 1, hi_q)])  # saving of one quantum slower
        can_fast, can_slow = dd > lo_q, dd < hi_q
        ub = np.where(can_fast, np.floor(up / _FLOW_UNIT_J) + can_slow, _INF_CAP)
        lb = np.where(can_slow, np.floor(down / _FLOW_UNIT_J), 0)
        return lb.astype(np.int64), np.minimum(ub, _INF_CAP).astype(np.int64)

    def record(nodes: IntArray, delta: IntArray, t_new: int, cost: float) -> None:
        changes.append((nodes, delta))
        steps_t.append(t_new)
        steps_cost.append(cost)

    cost = float(flat[base + d].sum())
    t = -1
    slack_budget = 0  # steps left before the critical sub-DAG may change
    net: dict[str, IntArray] | None = None  # arcs of the critical network and their flow
    chain: IntArray | None = None
    complete = True
    while True:
        if steps_t and steps_t[-1] <= stop_q:
            complete = False
            break
        if progress is not None and len(steps_t) % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
            progress(steps_t[-1])  # as _sweep.c: the makespan reached, every few hundred steps
        if slack_budget <= 0:
            es, ls, t = dag.longest(d)
            crit = es == ls
            ce = edges[crit[edges[:, 0]] & crit[edges[:, 1]]]
            ce = ce[es[ce[:, 0]] + d[ce[:, 0]] == es[ce[:, 1]]]
            cn = np.nonzero(crit)[0]
            starts = cn[es[cn] == 0]
            ends = cn[es[cn] + d[cn] == t]
            # smallest slack of any non-critical path: through a non-critical node, or through
            # a non-tight edge
            node_slack = (ls - es)[~crit]
            eslack = ls[edges[:, 1]] - (es[edges[:, 0]] + d[edges[:, 0]])
            eslack = eslack[eslack > 0]
            slack_budget = int(min(node_slack.min(initial=t + 1), eslack.min(initial=t + 1)))
            indeg = np.bincount(ce[:, 1], minlength=n)[cn]
            outdeg = np.bincount(ce[:, 0], minlength=n)[cn]
            is_chain = (
                len(starts) == 1 and len(ends) == 1 and indeg.max() <= 1 and outdeg.max() <= 1
            )
            chain = cn if is_chain else None
            if not is_chain and (net is None or not _same_network(net, cn, ce, starts, ends, n)):
                net = _grow_network(net, cn, ce, starts, ends, n)
        if chain is not None:
            # ---- one chain: cut its cheapest instruction, step after step, no flow --------
            _, ub = caps(chain)
            k = int(np.argmin(ub))
            if ub[k] >= _INF_CAP:
                break
            node = chain[k : k + 1]
            old = float(flat[base[node[0]] + d[node[0]]])
            d[node] -= 1
            cost += float(flat[base[node[0]] + d[node[0]]]) - old
            t -= 1
            slack_budget -= 1
            record(node, -np.ones(1, dtype=np.int64), t, cost)
            continue
        assert net is not None
        speed, slow = _min_cut(net, caps, nv, src, snk, sp, tp, scipy)
        if speed is None or slow is None:
            break
        if len(speed) == 0 or np.any(d[speed] <= qmin[speed]) or np.any(d[slow] >= qmax[slow]):
            break
        moved = np.concatenate([speed, slow])
        old_c = flat[base[moved] + d[moved]].sum()
        d[speed] -= 1
        d[slow] += 1
        cost += float(flat[base[moved] + d[moved]].sum() - old_c)
        t -= 1
        slack_budget -= 1 + len(slow)
        if net["recheck"][0]:
            slack_budget = 0
        delta = np.concatenate(
            [-np.ones(len(speed), dtype=np.int64), np.ones(len(slow), dtype=np.int64)]
        )
        record(moved, delta, t, cost)
    ptr = np.zeros(len(changes) + 1, dtype=np.int64)
    np.cumsum([len(c[0]) for c in changes], out=ptr[1:])
    empty = np.zeros(0, dtype=np.int64)
    return SweepResult(
        steps_t=np.array(steps_t, dtype=np.int64),
        steps_cost=np.array(steps_cost, dtype=np.float64),
        change_ptr=ptr,
        change_node=np.concatenate([c[0] for c in changes]) if changes else empty,
        change_delta=np.concatenate([c[1] for c in changes]) if changes else empty,
        final_d=d,
        complete=complete,
        solver="python",
    )


def _adjacency(r_t: IntArray, r_h: IntArray, nv: int) -> list[list[tuple[int, int]]]:
    """Per node, its residual entries as (entry id, head node)."""
    adj: list[list[tuple[int, int]]] = [[] for _ in range(nv)]
    for e, (u, v) in enumerate(zip(r_t.tolist(), r_h.tolist(), strict=True)):
        adj[u].append((e, v))
    return adj


def _same_network(
    net: dict[str, IntArray],
    cn: IntArray,
    ce: IntArray,
    starts: IntArray,
    ends: IntArray,
    n: int,
) -> bool:
    """True when the critical sub-DAG has exactly the arcs of ``net``.

    Equal arc counts are not enough: an instruction can stop ending a critical path in the
    step where a new critical edge appears, and a stale network then cuts the wrong arcs.
    """
    if len(net["tails"]) != len(cn) + len(ce) + len(starts) + len(ends):
        return False
    tails, heads = _arcs(cn, ce, starts, ends, n)
    return bool(np.array_equal(net["key"], tails * (2 * n + 4) + heads))


def _arcs(
    cn: IntArray, ce: IntArray, starts: IntArray, ends: IntArray, n: int
) -> tuple[IntArray, IntArray]:
    """Tails and heads of the critical network's arcs: instructions (in → out), dependencies
    (out → in), source → first instructions, last instructions → sink."""
    src, snk = 2 * n, 2 * n + 1
    tails = np.concatenate([2 * cn, 2 * ce[:, 0] + 1, np.full(len(starts), src), 2 * ends + 1])
    heads = np.concatenate([2 * cn + 1, 2 * ce[:, 1], 2 * starts, np.full(len(ends), snk)])
    return tails, heads


def _grow_network(
    net: dict[str, IntArray] | None,
    cn: IntArray,
    ce: IntArray,
    starts: IntArray,
    ends: IntArray,
    n: int,
) -> dict[str, IntArray]:
    """Arcs of the critical network, keeping the flow of arcs that were already there."""
    tails, heads = _arcs(cn, ce, starts, ends, n)
    is_op = np.zeros(len(tails), dtype=bool)
    is_op[: len(cn)] = True
    node = np.full(len(tails), -1, dtype=np.int64)
    node[: len(cn)] = cn
    key = tails * (2 * n + 4) + heads
    x = np.zeros(len(tails), dtype=np.int64)
    valid = np.zeros(1, dtype=np.int64)
    if net is not None:
        old_key, old_x = net["key"], net["x"]
        order = np.argsort(old_key)
        pos = np.searchsorted(old_key[order], key)
        pos = np.minimum(pos, len(order) - 1)
        hit = old_key[order][pos] == key
        x[hit] = old_x[order][pos[hit]]
        # every old arc must survive (critical paths stay critical); else start the flow over
        valid[0] = int(hit.sum() == len(old_key))
    # CSR layout of the residual graph (every arc forward and backward), fixed until the
    # network grows again: each step then only refills the capacities.
    nv = 2 * n + 4
    r_t = np.concatenate([tails, heads])
    r_h = np.concatenate([heads, tails])
    perm = np.lexsort((r_h, r_t))
    small = len(tails) <= _PY_BFS_MAX_ARCS  # the same test as _min_cut's
    indptr = np.zeros(nv + 1, dtype=np.int32)
    np.cumsum(np.bincount(r_t, minlength=nv), out=indptr[1:])
    return {
        "tails": tails,
        "heads": heads,
        "is_op": is_op,
        "node": node,
        "key": key,
        "rkeys": np.sort(r_t * nv + r_h),
        # plain-Python adjacency (entry ids per tail node) for the small-network BFS
        # (only built for networks small enough to use it: ~10 ms of a 24-microbatch frontier)
        "adj": _adjacency(r_t, r_h, nv) if small else [],  # type: ignore[dict-item]
        "ent_head_l": r_h.tolist() if small else [],  # type: ignore[dict-item]
        "ent_tail_l": r_t.tolist() if small else [],  # type: ignore[dict-item]
        "rorder": np.argsort(r_t * nv + r_h),
        "x": x,
        "valid": valid,
        "recheck": np.zeros(1, dtype=np.int64),
        "perm": perm,
        "indices": r_h[perm].astype(np.int32),
        "indptr": indptr,
    }


@dataclass(frozen=True, slots=True)
class _SciPy:
    """SciPy's compiled graph routines the Python sweep uses (loaded when it runs: SciPy is
    not a core dependency, and the compiled sweep never needs it)."""

    csr_matrix: Any
    maximum_flow: Any
    breadth_first_order: Any

    @classmethod
    def load(cls) -> _SciPy:
        try:  # lazy: SciPy is optional and costs start-up; only the Python sweep needs it
            from scipy.sparse import csr_matrix
            from scipy.sparse.csgraph import breadth_first_order, maximum_flow
        except ImportError as err:  # scipy is not a core dependency of perwatt
            raise ConfigError(
                "the frontier solver needs SciPy's compiled max-flow: pip install 'scipy>=1.11'"
            ) from err
        return cls(
            csr_matrix=csr_matrix,
            maximum_flow=maximum_flow,
            breadth_first_order=breadth_first_order,
        )


def _min_cut(
    net: dict[str, IntArray],
    caps: Callable[[IntArray], tuple[IntArray, IntArray]],
    nv: int,
    src: int,
    snk: int,
    sp: int,
    tp: int,
    scipy: _SciPy,
) -> tuple[IntArray | None, IntArray | None]:
    """Minimum cut (with lower bounds) of the critical network, warm-started from its flow."""
    tails, heads, x = net["tails"], net["heads"], net["x"]
    op = net["is_op"]
    lo = np.zeros(len(tails), dtype=np.int64)
    hi = np.full(len(tails), _INF_CAP, dtype=np.int64)
    lb, ub = caps(net["node"][op])
    lo[op], hi[op] = lb, np.maximum(ub, lb)
    if not net["valid"][0] or np.any(x < lo) or np.any(x > hi):
        fresh = _feasible_flow(tails, heads, lo, hi, nv, src, snk, sp, tp, scipy)
        if fresh is None:
            return None, None
        x = fresh
        net["valid"][0] = 1
    # Augment s → t along shortest residual paths until none is left (Edmonds–Karp, warm
    # started: the previous step's flow is already close to maximal, so this takes a few
    # paths). Residual entries: arc a forward (cap hi − x) is entry a, backward (x − lo) a + A.
    # Small networks: breadth-first search in plain Python over prebuilt adjacency lists (no
    # per-search allocation of SciPy matrices); large ones: one SciPy max-flow call.
    n_arcs = len(tails)
    rc = np.concatenate([hi - x, x - lo])
    residual = _Residual(net=net, rc=rc, nv=nv, src=src, snk=snk, scipy=scipy)
    if n_arcs <= _PY_BFS_MAX_ARCS:
        reached = residual.augment_py()
    elif n_arcs <= _MAXFLOW_MAX_ARCS:
        reached = residual.augment_scipy()
    else:
        reached = residual.augment_scipy_paths()
    x = hi - rc[:n_arcs]
    net["x"] = x
    in_s = np.zeros(nv, dtype=bool)
    in_s[reached] = True
    crossing_fwd = in_s[tails] & ~in_s[heads]
    crossing_bwd = ~in_s[tails] & in_s[heads]
    if np.any(crossing_fwd & ~op):  # a dependency (infinite) arc is cut: nothing to speed up
        return None, None
    nodes = net["node"]
    # A dependency arc crossing backwards lets some critical path shorten by more than one
    # quantum, so criticality must be recomputed before the next step (flagged via "recheck").
    net["recheck"][0] = int(bool(np.any(crossing_bwd & ~op)))
    return nodes[crossing_fwd & op], nodes[crossing_bwd & op]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Residual:
    """The residual network of one step, and the three ways to augment it to a maximum flow
    (plain-Python Dinic; one SciPy max-flow call; one SciPy BFS per path), each picked by
    network size. ``rc`` holds the residual capacities (arc ``a`` forward is entry ``a``,
    backward ``a + n_arcs``) and is updated in place; each way returns the nodes reachable
    from ``src`` in the final residual network."""

    net: dict[str, IntArray]
    rc: IntArray
    nv: int
    src: int
    snk: int
    scipy: _SciPy

    @property
    def n_arcs(self) -> int:
        return len(self.net["tails"])

    def augment_py(self) -> IntArray:
        """Augment to a maximum flow (Dinic: BFS levels, then blocking flow by DFS); ``rc`` is
        updated in place. Returns the nodes reachable from ``src`` in the final residual network.
        """
        net, rc, n_arcs, nv, src, snk = self.net, self.rc, self.n_arcs, self.nv, self.src, self.snk
        adj: list[list[tuple[int, int]]] = net["adj"]  # type: ignore[assignment]
        ent_head: list[int] = net["ent_head_l"]  # type: ignore[assignment]
        ent_tail: list[int] = net["ent_tail_l"]  # type: ignore[assignment]
        cap: list[int] = rc.tolist()
        while True:
            level = [-1] * nv
            level[src] = 0
            queue = [src]
            limit = nv  # once the sink is labelled, deeper levels cannot be on a shortest path
            for u in queue:
                lu = level[u] + 1
                if lu > limit:
                    break
                for e, v in adj[u]:
                    if cap[e] > 0 and level[v] < 0:
                        level[v] = lu
                        queue.append(v)
                        if v == snk:
                            limit = lu
            if level[snk] < 0:
                rc[:] = cap
                return np.array(queue, dtype=np.int64)
            # blocking flow on the level graph; ptr[u] = next adjacency entry to try at u
            ptr = [0] * nv
            path: list[int] = []
            u = src
            while True:
                if u == snk:
                    delta = min(cap[e] for e in path)
                    back = len(path)
                    for k, e in enumerate(path):
                        cap[e] -= delta
                        cap[e + n_arcs if e < n_arcs else e - n_arcs] += delta
                        if cap[e] == 0 and k < back:
                            back = k
                    # retreat to the tail of the first saturated arc
                    del path[back:]
                    u = src if not path else ent_head[path[-1]]
                    continue
                lst = adj[u]
                i, n_l = ptr[u], len(lst)
                lu = level[u] + 1
                while i < n_l:
                    e, v = lst[i]
                    if cap[e] > 0 and level[v] == lu:
                        break
                    i += 1
                ptr[u] = i
                if i < n_l:
                    path.append(e)
                    u = v
                    continue
                # dead end: prune u and step back
                level[u] = -1
                if not path:
                    break
                e = path.pop()
                u = ent_tail[e]
                ptr[u] += 1

    def augment_scipy(self) -> IntArray:
        """Same as :meth:`augment_py` for large networks: one call of SciPy's compiled max-flow
        (Dinic) on the residual network, then SciPy's compiled BFS for the source side."""
        net, rc, nv, src, snk = self.net, self.rc, self.nv, self.src, self.snk
        csr_matrix, maximum_flow = self.scipy.csr_matrix, self.scipy.maximum_flow
        breadth_first_order = self.scipy.breadth_first_order
        perm, indices, indptr = net["perm"], net["indices"], net["indptr"]
        # The residual network holds every arc in both directions (the critical network has no
        # antiparallel arcs), so its CSR layout is fixed and SciPy adds no reverse entries: the
        # returned flow lines up entry by entry (checked, with a fallback that looks entries up).
        data = rc[perm]
        g = csr_matrix((data.astype(np.int32), indices, indptr), shape=(nv, nv))
        flow = maximum_flow(g, src, snk, method="dinic").flow
        if np.array_equal(flow.indptr, indptr) and np.array_equal(flow.indices, indices):
            f = np.asarray(flow.data, dtype=np.int64)
        else:
            f = np.asarray(flow[np.repeat(np.arange(nv), np.diff(indptr)), indices], dtype=np.int64)
            f = f.ravel()
        # skew-symmetric flow: entry u→v loses f(u,v), its partner v→u gains it (f(v,u) = −f(u,v))
        data = data - f
        rc[perm] = data
        r = csr_matrix(((data > 0).astype(np.int8), indices.copy(), indptr.copy()), shape=(nv, nv))
        r.eliminate_zeros()
        reach = breadth_first_order(r, src, directed=True, return_predecessors=False)
        return np.asarray(reach, dtype=np.int64)

    def augment_scipy_paths(self) -> IntArray:
        """Same as :meth:`augment_py` with one SciPy BFS per augmenting path, for the largest
        networks (there a step needs few paths, and a whole max-flow call costs more)."""
        net, rc, n_arcs, nv, src, snk = self.net, self.rc, self.n_arcs, self.nv, self.src, self.snk
        csr_matrix, breadth_first_order = self.scipy.csr_matrix, self.scipy.breadth_first_order
        perm, indices, indptr, sorted_keys = (
            net["perm"],
            net["indices"],
            net["indptr"],
            net["rkeys"],
        )
        while True:
            data = (rc[perm] > 0).astype(np.int8)
            g = csr_matrix((data, indices.copy(), indptr.copy()), shape=(nv, nv))
            g.eliminate_zeros()
            reach, pred = breadth_first_order(g, src, directed=True, return_predecessors=True)
            if pred[snk] < 0:
                return np.asarray(reach, dtype=np.int64)
            path: list[int] = []
            pl = pred.tolist()
            v = snk
            while v != src:
                u = pl[v]
                path.append(u * nv + v)
                v = u
            entries = net["rorder"][np.searchsorted(sorted_keys, np.array(path, dtype=np.int64))]
            delta = int(rc[entries].min())
            rc[entries] -= delta
            partner = np.where(entries < n_arcs, entries + n_arcs, entries - n_arcs)
            rc[partner] += delta


def _feasible_flow(
    tails: IntArray,
    heads: IntArray,
    lo: IntArray,
    hi: IntArray,
    nv: int,
    src: int,
    snk: int,
    sp: int,
    tp: int,
    scipy: _SciPy,
) -> IntArray | None:
    """A flow with ``lo ≤ x ≤ hi`` on every arc (classic s'/t' construction), or None."""
    excess = np.zeros(nv, dtype=np.int64)
    np.add.at(excess, heads, lo)
    np.subtract.at(excess, tails, lo)
    pos = np.nonzero(excess > 0)[0]
    neg = np.nonzero(excess < 0)[0]
    t1 = np.concatenate([tails, [snk], np.full(len(pos), sp), neg])
    h1 = np.concatenate([heads, [src], pos, np.full(len(neg), tp)])
    c1 = np.concatenate([hi - lo, [_INF_CAP], excess[pos], -excess[neg]])
    g1 = scipy.csr_matrix((c1.astype(np.int32), (t1, h1)), shape=(nv, nv))
    r1 = scipy.maximum_flow(g1, sp, tp, method="dinic")
    if r1.flow_value < int(excess[pos].sum()):
        return None
    f = np.asarray(r1.flow[tails, heads]).ravel().astype(np.int64)
    return np.asarray(lo + f, dtype=np.int64)
