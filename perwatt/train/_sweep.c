/*
 * Compiled Phillips–Dessouky sweep for perwatt.train.frontier.
 *
 * This is a line-for-line port of ``_sweep`` in frontier.py (the reference, which stays as
 * the fallback when this module is not built); read that function's docstring for the
 * algorithm. The two give the same frontier: every step takes the *minimal* minimum cut
 * (the nodes reachable from the source in the residual network of a maximum flow), which is
 * unique whatever maximum flow was found, and capacities are computed with the same IEEE
 * operations in the same order, so every step moves the same instructions. (Running energy sums
 * are added in a plain loop here and pairwise by NumPy there: the frontier energies agree to
 * ~1e-15 relative, not bit for bit.) tests/train/test_frontier.py checks this point by point.
 *
 * Why C: at 12–24 microbatches a step costs ~0.3 ms in Python/NumPy (per-call overheads of
 * NumPy and SciPy dominate networks of a few hundred arcs); here it costs a few µs, which is
 * what the ≥100× target over lowtime needs (BENCHMARKS.md §4).
 *
 * Plain C99 and the CPython limited buffer API only: no NumPy headers, so building needs
 * nothing but a C compiler.
 *
 * Network layout (node-split): instruction i has an "in" node 2i and an "out" node 2i+1,
 * then the source 2n, sink 2n+1, and s'/t' 2n+2, 2n+3 for the feasible-flow construction.
 * Arcs of the full DAG have fixed ids, so a flow survives the critical network's growth:
 *   [0, n)          op arc of instruction i          2i   -> 2i+1  (the only cuttable arcs)
 *   [n, n+E)        dependency edge k = (u, v)      2u+1 -> 2v
 *   [n+E, 2n+E)     source arc to instruction i      src  -> 2i
 *   [2n+E, 3n+E)    sink arc from instruction i      2i+1 -> snk
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Must equal _FLOW_UNIT_J and _INF_CAP in frontier.py. */
#define FLOW_UNIT_J 1e-5
#define INF_CAP ((int64_t)1 << 30)
#define SIGNAL_CHECK_EVERY 256

/* ---- growable output buffers ------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_put(buf_t *b, const void *x, size_t sz) {
    if (b->len + sz > b->cap) {
        size_t nc = b->cap ? 2 * b->cap : 4096;
        while (nc < b->len + sz) nc *= 2;
        char *np_ = (char *)realloc(b->p, nc);
        if (!np_) return -1;
        b->p = np_;
        b->cap = nc;
    }
    memcpy(b->p + b->len, x, sz);
    b->len += sz;
    return 0;
}

/* ---- max-flow on a residual network (Dinic) --------------------------------------------- */

/* Entries 2j (forward) and 2j+1 (backward) belong to arc j; the partner of entry e is e^1. */
typedef struct {
    int nv, ne;
    int *adj_ptr;  /* nv + 1 */
    int *adj;      /* ne: entries grouped by tail node */
    int *head;     /* ne: head node of each entry */
    int64_t *cap;  /* ne: residual capacity */
    int *level, *it, *queue, *path; /* work arrays */
} flow_t;

static void flow_free(flow_t *g) {
    free(g->adj_ptr);
    free(g->adj);
    free(g->head);
    free(g->cap);
    free(g->level);
    free(g->it);
    free(g->queue);
    free(g->path);
    memset(g, 0, sizeof(*g));
}

/* Lay out m arcs (tails[j] -> heads[j]) on nv nodes. Capacities are filled by the caller. */
static int flow_build(flow_t *g, int nv, int m, const int *tails, const int *heads) {
    memset(g, 0, sizeof(*g));
    g->nv = nv;
    g->ne = 2 * m;
    g->adj_ptr = (int *)calloc((size_t)nv + 1, sizeof(int));
    g->adj = (int *)malloc(sizeof(int) * (size_t)(g->ne ? g->ne : 1));
    g->head = (int *)malloc(sizeof(int) * (size_t)(g->ne ? g->ne : 1));
    g->cap = (int64_t *)calloc((size_t)(g->ne ? g->ne : 1), sizeof(int64_t));
    g->level = (int *)malloc(sizeof(int) * (size_t)nv);
    g->it = (int *)malloc(sizeof(int) * (size_t)nv);
    g->queue = (int *)malloc(sizeof(int) * (size_t)nv);
    g->path = (int *)malloc(sizeof(int) * (size_t)nv);
    if (!g->adj_ptr || !g->adj || !g->head || !g->cap || !g->level || !g->it || !g->queue ||
        !g->path) {
        flow_free(g);
        return -1;
    }
    for (int j = 0; j < m; j++) {
        g->head[2 * j] = heads[j];
        g->head[2 * j + 1] = tails[j];
        g->adj_ptr[tails[j] + 1]++;
        g->adj_ptr[heads[j] + 1]++;
    }
    for (int v = 0; v < nv; v++) g->adj_ptr[v + 1] += g->adj_ptr[v];
    int *fill = g->it; /* reuse as a cursor */
    memcpy(fill, g->adj_ptr, sizeof(int) * (size_t)nv);
    for (int j = 0; j < m; j++) {
        g->adj[fill[tails[j]]++] = 2 * j;
        g->adj[fill[heads[j]]++] = 2 * j + 1;
    }
    return 0;
}

/* Breadth-first levels from s over entries with capacity left; true when t is reached. */
static int flow_bfs(flow_t *g, int s, int t) {
    for (int v = 0; v < g->nv; v++) g->level[v] = -1;
    int qh = 0, qt = 0;
    g->level[s] = 0;
    g->queue[qt++] = s;
    while (qh < qt) {
        int u = g->queue[qh++];
        for (int k = g->adj_ptr[u]; k < g->adj_ptr[u + 1]; k++) {
            int e = g->adj[k], v = g->head[e];
            if (g->cap[e] > 0 && g->level[v] < 0) {
                g->level[v] = g->level[u] + 1;
                g->queue[qt++] = v;
            }
        }
    }
    return g->level[t] >= 0;
}

/* Augment s -> t to a maximum flow; returns the flow added. Afterwards level[v] >= 0 marks
 * exactly the nodes reachable from s in the residual network (the final BFS is complete). */
static int64_t flow_max(flow_t *g, int s, int t) {
    int64_t total = 0;
    while (flow_bfs(g, s, t)) {
        for (int v = 0; v < g->nv; v++) g->it[v] = g->adj_ptr[v];
        int depth = 0, u = s;
        for (;;) {
            if (u == t) {
                int64_t delta = g->cap[g->path[0]];
                for (int k = 1; k < depth; k++)
                    if (g->cap[g->path[k]] < delta) delta = g->cap[g->path[k]];
                int back = depth;
                for (int k = 0; k < depth; k++) {
                    int e = g->path[k];
                    g->cap[e] -= delta;
                    g->cap[e ^ 1] += delta;
                    if (g->cap[e] == 0 && k < back) back = k;
                }
                total += delta;
                depth = back; /* retreat to the tail of the first saturated entry */
                u = depth ? g->head[g->path[depth - 1]] : s;
                continue;
            }
            int k = g->it[u], end = g->adj_ptr[u + 1], lu = g->level[u] + 1;
            while (k < end) {
                int e = g->adj[k];
                if (g->cap[e] > 0 && g->level[g->head[e]] == lu) break;
                k++;
            }
            g->it[u] = k;
            if (k < end) {
                int e = g->adj[k];
                g->path[depth++] = e;
                u = g->head[e];
                continue;
            }
            g->level[u] = -1; /* dead end: prune and step back */
            if (depth == 0) break;
            int e = g->path[--depth];
            u = g->head[e ^ 1];
            g->it[u]++;
        }
    }
    return total;
}

/* ---- the sweep ---------------------------------------------------------------------------- */

typedef struct {
    /* inputs */
    int n, ne_dag;
    const int64_t *order, *pred_ptr, *pred_idx, *succ_ptr, *succ_idx, *eu, *ev;
    const int64_t *qmin, *qmax, *base;
    const double *flat;
    int64_t stop_q;
    PyObject *progress; /* called with the current makespan (quanta) now and then; or NULL */
    /* state */
    int64_t *d, *es, *ls;
    char *crit;
    int na;           /* 3n + E arcs in the full layout */
    int *a_tail, *a_head;
    char *active;     /* arc is in the current critical network */
    char *was_active;
    int64_t *x;       /* flow per full arc id */
    int64_t *lo, *hi; /* bounds per full arc id */
    int *net_arcs;    /* full arc ids of the current network, in layout order */
    int m;            /* number of arcs in the network */
    int valid;        /* x is a flow of the current network (conservation holds) */
    int has_net;
    flow_t g;         /* residual layout of the current network */
    int *in_s;
    int *tmp_t, *tmp_h;
    int64_t *chain;   /* chain nodes (ascending id), or chain_len = -1 */
    int chain_len;
    int64_t *speed, *slow;
    int nspeed, nslow, recheck;
    /* outputs */
    buf_t out_t, out_cost, out_ptr, out_node, out_delta;
} sweep_t;

static int64_t longest(sweep_t *w) {
    const int n = w->n;
    int64_t t = 0;
    for (int k = 0; k < n; k++) {
        int64_t v = w->order[k], s = 0;
        for (int64_t p = w->pred_ptr[v]; p < w->pred_ptr[v + 1]; p++) {
            int64_t u = w->pred_idx[p], f = w->es[u] + w->d[u];
            if (f > s) s = f;
        }
        w->es[v] = s;
        if (s + w->d[v] > t) t = s + w->d[v];
    }
    for (int k = n - 1; k >= 0; k--) {
        int64_t v = w->order[k], m = t;
        for (int64_t p = w->succ_ptr[v]; p < w->succ_ptr[v + 1]; p++) {
            int64_t s = w->succ_idx[p];
            if (w->ls[s] < m) m = w->ls[s];
        }
        w->ls[v] = m - w->d[v];
    }
    return t;
}

/* lowtime's capacities of instruction i at its current duration (see caps() in frontier.py) */
static void caps(const sweep_t *w, int64_t i, int64_t *lb, int64_t *ub) {
    int64_t dd = w->d[i], lo_q = w->qmin[i], hi_q = w->qmax[i], b = w->base[i];
    double c0 = w->flat[b + dd];
    double up = fabs(w->flat[b + (dd - 1 > lo_q ? dd - 1 : lo_q)] - c0);
    double down = fabs(c0 - w->flat[b + (dd + 1 < hi_q ? dd + 1 : hi_q)]);
    int can_fast = dd > lo_q, can_slow = dd < hi_q;
    double ubd = can_fast ? floor(up / FLOW_UNIT_J) + (double)can_slow : (double)INF_CAP;
    double lbd = can_slow ? floor(down / FLOW_UNIT_J) : 0.0;
    if (ubd > (double)INF_CAP) ubd = (double)INF_CAP;
    *ub = (int64_t)ubd;
    *lb = (int64_t)lbd;
}

/* Recompute criticality; returns the new slack budget. Updates the chain / network. */
static int refresh(sweep_t *w, int64_t *t_out) {
    const int n = w->n, E = w->ne_dag;
    int64_t t = longest(w);
    *t_out = t;
    int64_t budget = t + 1;
    int nstarts = 0, nends = 0, chain_ok = 1;
    int ncrit = 0;
    /* in/out degree over critical edges (reuse tmp arrays: n ints each) */
    int *indeg = w->tmp_t, *outdeg = w->tmp_h;
    for (int i = 0; i < n; i++) {
        w->crit[i] = w->es[i] == w->ls[i];
        indeg[i] = outdeg[i] = 0;
        if (!w->crit[i]) {
            int64_t s = w->ls[i] - w->es[i];
            if (s < budget) budget = s;
        }
    }
    memcpy(w->was_active, w->active, (size_t)w->na);
    memset(w->active, 0, (size_t)w->na);
    for (int k = 0; k < E; k++) {
        int64_t u = w->eu[k], v = w->ev[k];
        int64_t s = w->ls[v] - (w->es[u] + w->d[u]);
        if (s > 0 && s < budget) budget = s;
        if (w->crit[u] && w->crit[v] && w->es[u] + w->d[u] == w->es[v]) {
            w->active[n + k] = 1;
            indeg[v]++;
            outdeg[u]++;
        }
    }
    for (int i = 0; i < n; i++) {
        if (!w->crit[i]) continue;
        ncrit++;
        w->active[i] = 1;
        if (w->es[i] == 0) {
            w->active[n + E + i] = 1;
            nstarts++;
        }
        if (w->es[i] + w->d[i] == t) {
            w->active[2 * n + E + i] = 1;
            nends++;
        }
        if (indeg[i] > 1 || outdeg[i] > 1) chain_ok = 0;
    }
    if (nstarts == 1 && nends == 1 && chain_ok) {
        w->chain_len = 0;
        for (int i = 0; i < n; i++)
            if (w->crit[i]) w->chain[w->chain_len++] = i;
        /* the network is left as it was (not needed while the critical sub-DAG is a chain) */
        memcpy(w->active, w->was_active, (size_t)w->na);
        return budget > INT32_MAX ? INT32_MAX : (int)budget;
    }
    w->chain_len = -1;
    (void)ncrit;
    if (w->has_net && memcmp(w->active, w->was_active, (size_t)w->na) == 0)
        return budget > INT32_MAX ? INT32_MAX : (int)budget;
    /* The network grew: keep the flow of arcs that were there, start new ones at zero. The
     * flow stays a flow (conservation) only if every old arc survived. */
    int survived = 1;
    for (int a = 0; a < w->na; a++) {
        if (w->was_active[a] && !w->active[a]) survived = 0;
        if (!w->was_active[a] || !w->active[a]) w->x[a] = 0;
    }
    w->valid = w->has_net ? survived : 0;
    w->has_net = 1;
    w->m = 0;
    for (int a = 0; a < w->na; a++) {
        if (!w->active[a]) continue;
        w->tmp_t[w->m] = w->a_tail[a];
        w->tmp_h[w->m] = w->a_head[a];
        w->net_arcs[w->m++] = a;
    }
    flow_free(&w->g);
    if (flow_build(&w->g, 2 * n + 4, w->m, w->tmp_t, w->tmp_h) < 0) return -1;
    return budget > INT32_MAX ? INT32_MAX : (int)budget;
}

/* A flow with lo <= x <= hi on the network (s'/t' construction); 0 ok, 1 infeasible, -1 OOM */
static int feasible_flow(sweep_t *w) {
    const int n = w->n, nv = 2 * n + 4, m = w->m;
    const int src = 2 * n, snk = 2 * n + 1, sp = 2 * n + 2, tp = 2 * n + 3;
    int64_t *excess = (int64_t *)calloc((size_t)nv, sizeof(int64_t));
    int *tl = (int *)malloc(sizeof(int) * (size_t)(m + 1 + nv));
    int *hd = (int *)malloc(sizeof(int) * (size_t)(m + 1 + nv));
    int64_t *cp = (int64_t *)malloc(sizeof(int64_t) * (size_t)(m + 1 + nv));
    flow_t g;
    memset(&g, 0, sizeof(g));
    int rc = -1;
    if (!excess || !tl || !hd || !cp) goto done;
    for (int j = 0; j < m; j++) {
        int a = w->net_arcs[j];
        excess[w->a_head[a]] += w->lo[a];
        excess[w->a_tail[a]] -= w->lo[a];
        tl[j] = w->a_tail[a];
        hd[j] = w->a_head[a];
        cp[j] = w->hi[a] - w->lo[a];
    }
    int k = m;
    tl[k] = snk, hd[k] = src, cp[k++] = INF_CAP;
    int64_t need = 0;
    for (int v = 0; v < nv; v++) {
        if (excess[v] > 0) {
            tl[k] = sp, hd[k] = v, cp[k++] = excess[v];
            need += excess[v];
        } else if (excess[v] < 0) {
            tl[k] = v, hd[k] = tp, cp[k++] = -excess[v];
        }
    }
    if (flow_build(&g, nv, k, tl, hd) < 0) goto done;
    for (int j = 0; j < k; j++) g.cap[2 * j] = cp[j];
    if (flow_max(&g, sp, tp) < need) {
        rc = 1;
        goto done;
    }
    for (int j = 0; j < m; j++) {
        int a = w->net_arcs[j];
        w->x[a] = w->lo[a] + (cp[j] - g.cap[2 * j]);
    }
    w->valid = 1;
    rc = 0;
done:
    flow_free(&g);
    free(excess);
    free(tl);
    free(hd);
    free(cp);
    return rc;
}

/* Minimum cut of the critical network; 0 ok (speed/slow filled), 1 no finite cut, -1 OOM. */
static int min_cut(sweep_t *w) {
    const int n = w->n, m = w->m;
    const int src = 2 * n, snk = 2 * n + 1;
    int inside = w->valid;
    for (int j = 0; j < m; j++) {
        int a = w->net_arcs[j];
        if (a < n) {
            int64_t lb, ub;
            caps(w, a, &lb, &ub);
            w->lo[a] = lb;
            w->hi[a] = ub > lb ? ub : lb;
        } else {
            w->lo[a] = 0;
            w->hi[a] = INF_CAP;
        }
        if (w->x[a] < w->lo[a] || w->x[a] > w->hi[a]) inside = 0;
    }
    if (!inside) {
        int rc = feasible_flow(w);
        if (rc) return rc;
    }
    flow_t *g = &w->g;
    for (int j = 0; j < m; j++) {
        int a = w->net_arcs[j];
        g->cap[2 * j] = w->hi[a] - w->x[a];
        g->cap[2 * j + 1] = w->x[a] - w->lo[a];
    }
    flow_max(g, src, snk);
    for (int j = 0; j < m; j++) {
        int a = w->net_arcs[j];
        w->x[a] = w->hi[a] - g->cap[2 * j];
    }
    w->nspeed = w->nslow = 0;
    w->recheck = 0;
    /* arcs are laid out op arcs first, by ascending instruction id: speed/slow come out
     * sorted, as np.nonzero gives them in the reference */
    for (int j = 0; j < m; j++) {
        int a = w->net_arcs[j];
        int tin = g->level[w->a_tail[a]] >= 0, hin = g->level[w->a_head[a]] >= 0;
        if (tin && !hin) {
            if (a >= n) return 1; /* an uncuttable arc is cut: nothing left to speed up */
            w->speed[w->nspeed++] = a;
        } else if (!tin && hin) {
            if (a >= n)
                w->recheck = 1;
            else
                w->slow[w->nslow++] = a;
        }
    }
    return 0;
}

static int record(sweep_t *w, const int64_t *nodes, const int64_t *delta, int k, int64_t t,
                  double cost) {
    int64_t end;
    if (buf_put(&w->out_node, nodes, sizeof(int64_t) * (size_t)k) ||
        buf_put(&w->out_delta, delta, sizeof(int64_t) * (size_t)k) ||
        buf_put(&w->out_t, &t, sizeof(t)) || buf_put(&w->out_cost, &cost, sizeof(cost)))
        return -1;
    end = (int64_t)(w->out_node.len / sizeof(int64_t));
    return buf_put(&w->out_ptr, &end, sizeof(end));
}

/* Returns 1 complete, 0 stopped at stop_q, -1 out of memory, -2 interrupted (error set). */
static int run_sweep(sweep_t *w) {
    const int n = w->n;
    double cost = 0.0;
    for (int i = 0; i < n; i++) cost += w->flat[w->base[i] + w->d[i]];
    int64_t t = -1, nsteps = 0;
    int64_t slack_budget = 0;
    int64_t zero = 0;
    if (buf_put(&w->out_ptr, &zero, sizeof(zero))) return -1;
    int64_t *delta = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    int64_t *moved = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!delta || !moved) {
        free(delta);
        free(moved);
        return -1;
    }
    int status = 1;
    for (;;) {
        if (nsteps && t <= w->stop_q) {
            status = 0;
            break;
        }
        if (nsteps % SIGNAL_CHECK_EVERY == SIGNAL_CHECK_EVERY - 1) {
            if (PyErr_CheckSignals() < 0) {
                status = -2;
                break;
            }
            if (w->progress) { /* a long sweep reports where it is; its error stops the sweep */
                PyObject *r = PyObject_CallFunction(w->progress, "L", (long long)t);
                if (!r) {
                    status = -2;
                    break;
                }
                Py_DECREF(r);
            }
        }
        if (slack_budget <= 0) {
            int b = refresh(w, &t);
            if (b < 0) {
                status = -1;
                break;
            }
            slack_budget = b;
        }
        if (w->chain_len >= 0) {
            /* one chain: cut its cheapest instruction, no flow */
            int best = -1;
            int64_t best_ub = 0;
            for (int k = 0; k < w->chain_len; k++) {
                int64_t lb, ub;
                caps(w, w->chain[k], &lb, &ub);
                if (best < 0 || ub < best_ub) best = k, best_ub = ub;
            }
            if (best_ub >= INF_CAP) break;
            int64_t i = w->chain[best];
            double old = w->flat[w->base[i] + w->d[i]];
            w->d[i] -= 1;
            cost += w->flat[w->base[i] + w->d[i]] - old;
            t -= 1;
            slack_budget -= 1;
            delta[0] = -1;
            if (record(w, &i, delta, 1, t, cost)) {
                status = -1;
                break;
            }
            nsteps++;
            continue;
        }
        int rc = min_cut(w);
        if (rc < 0) {
            status = -1;
            break;
        }
        if (rc > 0 || w->nspeed == 0) break;
        int stop = 0;
        for (int k = 0; k < w->nspeed; k++)
            if (w->d[w->speed[k]] <= w->qmin[w->speed[k]]) stop = 1;
        for (int k = 0; k < w->nslow; k++)
            if (w->d[w->slow[k]] >= w->qmax[w->slow[k]]) stop = 1;
        if (stop) break;
        int nm = 0;
        double old_c = 0.0, new_c = 0.0;
        for (int k = 0; k < w->nspeed; k++) moved[nm] = w->speed[k], delta[nm++] = -1;
        for (int k = 0; k < w->nslow; k++) moved[nm] = w->slow[k], delta[nm++] = 1;
        for (int k = 0; k < nm; k++) old_c += w->flat[w->base[moved[k]] + w->d[moved[k]]];
        for (int k = 0; k < nm; k++) w->d[moved[k]] += delta[k];
        for (int k = 0; k < nm; k++) new_c += w->flat[w->base[moved[k]] + w->d[moved[k]]];
        cost += new_c - old_c;
        t -= 1;
        slack_budget -= 1 + w->nslow;
        if (w->recheck) slack_budget = 0;
        if (record(w, moved, delta, nm, t, cost)) {
            status = -1;
            break;
        }
        nsteps++;
    }
    free(delta);
    free(moved);
    return status;
}

/* A C-contiguous buffer of 8-byte items of the expected kind: 'i' (signed integer) or 'd'. */
static int get_buf(PyObject *obj, Py_buffer *view, Py_ssize_t count, size_t item,
                   const char *name, char kind) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    while (*f == '@' || *f == '=' || *f == '<') f++; /* native / little-endian prefixes */
    int ok = view->itemsize == (Py_ssize_t)item && f[1] == '\0' &&
             (kind == 'd' ? *f == 'd' : (*f == 'q' || *f == 'l'));
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s (got format '%s')", name,
                     kind == 'd' ? "float64" : "int64", view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (count >= 0 && view->len != count * (Py_ssize_t)item) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zu bytes, got %zd bytes",
                     name, count, item, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->len % (Py_ssize_t)item) {
        PyErr_Format(PyExc_ValueError, "%s: length is not a multiple of %zu", name, item);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *as_bytes(buf_t *b) {
    return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len);
}

PyDoc_STRVAR(sweep_doc,
             "sweep(order, pred_ptr, pred_idx, succ_ptr, succ_idx, edge_u, edge_v, qmin, qmax,"
             " flat, base, stop_q, progress=None)\n--\n\n"
             "Phillips-Dessouky sweep (see perwatt.train.solver._sweep). Arrays are int64,"
             " flat float64, all C-contiguous. Returns (steps_t, steps_cost, change_ptr,"
             " change_node, change_delta, final_d, complete): bytes of int64/float64 and a"
             " bool. progress, if not None, is called with the current makespan (quanta)"
             " every few hundred steps.");

static PyObject *py_sweep(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[11];
    PyObject *progress = Py_None;
    long long stop_q;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOL|O", &objs[0], &objs[1], &objs[2], &objs[3],
                          &objs[4], &objs[5], &objs[6], &objs[7], &objs[8], &objs[9],
                          &objs[10], &stop_q, &progress))
        return NULL;
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        return NULL;
    }
    Py_buffer v[11];
    int got = 0;
    PyObject *result = NULL;
    sweep_t w;
    memset(&w, 0, sizeof(w));
    static const char *names[11] = {"order", "pred_ptr", "pred_idx", "succ_ptr", "succ_idx",
                                    "edge_u", "edge_v", "qmin", "qmax", "flat", "base"};
    /* order first: it fixes n */
    if (get_buf(objs[0], &v[0], -1, 8, names[0], 'i') < 0) goto done;
    got = 1;
    Py_ssize_t n = v[0].len / 8;
    /* the largest flow network (feasible flow: m + 1 + nv <= 5n + E + 5 arcs, two entries
     * each) must index with int */
    if (n < 1 || n > (INT32_MAX - 16) / 10) {
        PyErr_SetString(PyExc_ValueError, "order: bad number of instructions");
        goto done;
    }
    const Py_ssize_t counts[11] = {n, n + 1, -1, n + 1, -1, -1, -1, n, n, -1, n};
    for (int k = 1; k < 11; k++) {
        if (get_buf(objs[k], &v[k], counts[k], 8, names[k], k == 9 ? 'd' : 'i') < 0) goto done;
        got = k + 1;
    }
    Py_ssize_t E = v[5].len / 8;
    if (v[6].len != v[5].len || v[2].len != v[5].len || v[4].len != v[5].len ||
        E > (INT32_MAX - 16 - 10 * n) / 2) {
        PyErr_SetString(PyExc_ValueError, "edge arrays disagree in length");
        goto done;
    }
    w.n = (int)n;
    w.ne_dag = (int)E;
    w.order = (const int64_t *)v[0].buf;
    w.pred_ptr = (const int64_t *)v[1].buf;
    w.pred_idx = (const int64_t *)v[2].buf;
    w.succ_ptr = (const int64_t *)v[3].buf;
    w.succ_idx = (const int64_t *)v[4].buf;
    w.eu = (const int64_t *)v[5].buf;
    w.ev = (const int64_t *)v[6].buf;
    w.qmin = (const int64_t *)v[7].buf;
    w.qmax = (const int64_t *)v[8].buf;
    w.flat = (const double *)v[9].buf;
    w.base = (const int64_t *)v[10].buf;
    w.stop_q = (int64_t)stop_q;
    w.progress = progress == Py_None ? NULL : progress; /* borrowed: args outlive the sweep */
    /* validate indices once, so the sweep itself never reads out of bounds */
    Py_ssize_t nflat = v[9].len / 8;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t o = w.order[i];
        /* base + q for q in [qmin, qmax] must index flat; written so that nothing overflows
         * (qmax >= qmin >= 1 is checked first) */
        if (o < 0 || o >= n || w.qmin[i] < 1 || w.qmax[i] < w.qmin[i] ||
            w.base[i] < -w.qmin[i] || w.base[i] > nflat - 1 - w.qmax[i]) {
            PyErr_SetString(PyExc_ValueError, "order/qmin/qmax/base out of range");
            goto done;
        }
    }
    for (Py_ssize_t j = 0; j < nflat; j++) {
        if (!isfinite(w.flat[j])) {
            PyErr_SetString(PyExc_ValueError, "flat: cost tables must be finite");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (w.pred_ptr[i] < 0 || w.pred_ptr[i] > E || w.succ_ptr[i] < 0 || w.succ_ptr[i] > E ||
            (i && (w.pred_ptr[i] < w.pred_ptr[i - 1] || w.succ_ptr[i] < w.succ_ptr[i - 1]))) {
            PyErr_SetString(PyExc_ValueError, "pred_ptr/succ_ptr out of range");
            goto done;
        }
    }
    for (Py_ssize_t k = 0; k < E; k++) {
        if (w.eu[k] < 0 || w.eu[k] >= n || w.ev[k] < 0 || w.ev[k] >= n || w.pred_idx[k] < 0 ||
            w.pred_idx[k] >= n || w.succ_idx[k] < 0 || w.succ_idx[k] >= n) {
            PyErr_SetString(PyExc_ValueError, "edge endpoint out of range");
            goto done;
        }
    }
    /* order must be a permutation in topological order: the longest-path passes rely on it */
    {
        int64_t *pos = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
        if (!pos) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) pos[i] = -1;
        int bad = 0;
        for (Py_ssize_t i = 0; i < n && !bad; i++) {
            if (pos[w.order[i]] >= 0) bad = 1;
            pos[w.order[i]] = i;
        }
        for (Py_ssize_t k = 0; k < E && !bad; k++)
            if (pos[w.eu[k]] >= pos[w.ev[k]]) bad = 1;
        free(pos);
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "order: not a topological order of the edges");
            goto done;
        }
    }
    w.na = (int)(3 * n + E);
    w.d = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    w.es = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    w.ls = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    w.crit = (char *)malloc((size_t)n);
    w.a_tail = (int *)malloc(sizeof(int) * (size_t)w.na);
    w.a_head = (int *)malloc(sizeof(int) * (size_t)w.na);
    w.active = (char *)calloc((size_t)w.na, 1);
    w.was_active = (char *)calloc((size_t)w.na, 1);
    w.x = (int64_t *)calloc((size_t)w.na, sizeof(int64_t));
    w.lo = (int64_t *)calloc((size_t)w.na, sizeof(int64_t));
    w.hi = (int64_t *)calloc((size_t)w.na, sizeof(int64_t));
    w.net_arcs = (int *)malloc(sizeof(int) * (size_t)w.na);
    w.tmp_t = (int *)malloc(sizeof(int) * (size_t)w.na);
    w.tmp_h = (int *)malloc(sizeof(int) * (size_t)w.na);
    w.chain = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    w.speed = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    w.slow = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    if (!w.d || !w.es || !w.ls || !w.crit || !w.a_tail || !w.a_head || !w.active ||
        !w.was_active || !w.x || !w.lo || !w.hi || !w.net_arcs || !w.tmp_t || !w.tmp_h ||
        !w.chain || !w.speed || !w.slow) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(w.d, w.qmax, sizeof(int64_t) * (size_t)n);
    {
        const int ni = (int)n, Ei = (int)E, src = 2 * ni, snk = 2 * ni + 1;
        for (int i = 0; i < ni; i++) {
            w.a_tail[i] = 2 * i, w.a_head[i] = 2 * i + 1;
            w.a_tail[ni + Ei + i] = src, w.a_head[ni + Ei + i] = 2 * i;
            w.a_tail[2 * ni + Ei + i] = 2 * i + 1, w.a_head[2 * ni + Ei + i] = snk;
        }
        for (int k = 0; k < Ei; k++)
            w.a_tail[ni + k] = 2 * (int)w.eu[k] + 1, w.a_head[ni + k] = 2 * (int)w.ev[k];
    }
    int status = run_sweep(&w);
    if (status == -1) {
        PyErr_NoMemory();
        goto done;
    }
    if (status == -2) goto done; /* KeyboardInterrupt (or another signal's error) is set */
    {
        buf_t fd = {(char *)w.d, sizeof(int64_t) * (size_t)n, 0};
        result = Py_BuildValue("(NNNNNNO)", as_bytes(&w.out_t), as_bytes(&w.out_cost),
                               as_bytes(&w.out_ptr), as_bytes(&w.out_node),
                               as_bytes(&w.out_delta), as_bytes(&fd),
                               status == 1 ? Py_True : Py_False);
    }
done:
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    flow_free(&w.g);
    free(w.d);
    free(w.es);
    free(w.ls);
    free(w.crit);
    free(w.a_tail);
    free(w.a_head);
    free(w.active);
    free(w.was_active);
    free(w.x);
    free(w.lo);
    free(w.hi);
    free(w.net_arcs);
    free(w.tmp_t);
    free(w.tmp_h);
    free(w.chain);
    free(w.speed);
    free(w.slow);
    free(w.out_t.p);
    free(w.out_cost.p);
    free(w.out_ptr.p);
    free(w.out_node.p);
    free(w.out_delta.p);
    return result;
}

static PyMethodDef methods[] = {
    {"sweep", py_sweep, METH_VARARGS, sweep_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sweep", "Compiled frontier sweep (see frontier.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sweep(void) { return PyModule_Create(&module); }
