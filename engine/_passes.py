"""The compiler's node loops, compiled with numba.

Each pass walks the nodes once in topological order (children before parents), so its cost is
linear in the circuit (plus a sort per node of its children), whatever the circuit's depth: a
pass per height level in numpy costs a fixed overhead per level, which a 200,000-deep chain
cannot afford. The loops are compiled once and cached on disk (``cache=True``).

Node ids of the DAG these passes build: ``0`` false, ``1`` true, ``2..V+1`` the literals
``+1..+V``, ``V+2..2V+1`` the literals ``-1..-V``, and with smoothing ``2V+2..3V+1`` the
tautologies ``v OR -v`` (leaves: the module computes them from the literal weights); internal
nodes (AND/OR) from ``num_leaves`` on, each created after its children.

Smoothing works on *positions* (the free variables numbered once). With targets
(:func:`interval_targets`, SDDs: positions in vtree order) every node is to mention one
interval of positions, shared by an OR and its children, and no variable sets are kept. Without
them (the general path) each node's variable set is a sorted list of disjoint, non-adjacent
intervals, positions numbered in the order a depth-first walk from the roots first meets the
variables (so the variables below a node tend to be contiguous): a few intervals, not a
``V``-bit bitset. Either way a gap (the positions a node misses) is covered by the canonical
nodes of a segment tree over the positions, each one shared AND of tautology leaves ("gadget")
made on first use: an OR of ``n`` literals costs ``O(n log n)`` edges instead of ``n^2``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# IR node kinds (as in trilay.engine.circuit) and the DAG's internal kinds.
FALSE, TRUE, LITERAL, AND, OR = 0, 1, 2, 3, 4
ZERO, ONE = 0, 1  # the DAG's constant leaves

_EMPTY = -1
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def _mix(x):
    """splitmix64 finalizer."""
    x = np.uint64(x)
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True, inline="always")
def _grow(a, need):
    """``a`` itself if it holds ``need`` items, else a copy with at least twice the room
    (inlined: hot loops call it per child, and a call costs more than the check)."""
    if need <= a.size:
        return a
    b = np.empty(max(need, 2 * a.size), a.dtype)
    b[: a.size] = a
    return b


@njit(cache=True)
def is_topological(start, children):
    """Whether every child id is below its parent's id (the IR's creation order)."""
    for node in range(start.size - 1):
        for e in range(start[node], start[node + 1]):
            if children[e] >= node or children[e] < 0:
                return False
    return True


@njit(cache=True)
def reachable(start, children, roots, n):
    """``[n]`` bool: the nodes some root reaches (ids topological: one reverse sweep)."""
    seen = np.zeros(n, np.bool_)
    for r in roots:
        seen[r] = True
    for node in range(n - 1, -1, -1):
        if seen[node]:
            for e in range(start[node], start[node + 1]):
                seen[children[e]] = True
    return seen


@njit(cache=True)
def variable_positions(kind, lit, start, children, roots, free):
    """``pos[v]``: the position of free variable ``v`` in the order a depth-first walk from the
    roots (children in stored order) first meets its literals; free variables it never meets
    follow in id order; ``-1`` for variables that are not free. Returns ``(pos, count)``."""
    num_vars = free.size - 1
    pos = np.full(num_vars + 1, -1, np.int64)
    count = 0
    seen = np.zeros(kind.size, np.bool_)
    stack = np.empty(max(kind.size, 1), np.int64)
    for r in roots:
        if seen[r]:
            continue
        top = 0
        stack[0] = r
        seen[r] = True
        while top >= 0:
            node = stack[top]
            top -= 1
            if kind[node] == LITERAL:
                v = abs(lit[node])
                if free[v] and pos[v] < 0:
                    pos[v] = count
                    count += 1
            # Reverse push: the first child is walked first.
            for e in range(start[node + 1] - 1, start[node] - 1, -1):
                c = children[e]
                if not seen[c]:
                    seen[c] = True
                    top += 1
                    stack[top] = c
    for v in range(1, num_vars + 1):
        if free[v] and pos[v] < 0:
            pos[v] = count
            count += 1
    return pos, count


def literal_positions(kind, lit, free):
    """``pos[v]``: free variable ``v``'s rank in the order the IR's literal nodes first mention
    the variables (node id order; the SDD readers make a file's literals first, in vtree order),
    the free variables no literal mentions after them in id order; ``-1`` for variables that
    are not free. Returns ``(pos, count)``."""
    num_vars = free.size - 1
    variables = np.abs(lit[kind == LITERAL])
    first = np.unique(variables, return_index=True)[1]
    seen = variables[np.sort(first)]
    seen = seen[free[seen]]
    rest = np.flatnonzero(free)
    rest = rest[~np.isin(rest, seen)]
    pos = np.full(num_vars + 1, -1, np.int64)
    pos[seen] = np.arange(seen.size)
    pos[rest] = np.arange(seen.size, seen.size + rest.size)
    return pos, seen.size + rest.size


@njit(cache=True)
def _root_of(parent, x):
    """Union-find: ``x``'s representative (paths halved on the way)."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


_MAX_ROUNDS = 32  # interval_targets' fixpoint: SDDs need 2-3 rounds


@njit(cache=True)
def interval_targets(kind, start, children, order, leaf_of_literal, pos, num_vars):
    """Targets for smoothing to position intervals, or none where the circuit has none.

    Every node is to mention exactly an interval of positions, its *target*: an OR and each
    AND or OR child of it share one target (they form a group, union-find over those edges;
    an AND with a constant or fixed child is left out of its parents' groups: it folds), and
    a group's target is the smallest interval holding every child of its members (a literal
    its position, an internal node its group's target; a fixpoint: groups are not in
    topological order). Each node is then smoothed once, to its group's target (an AND gets
    the tautologies of the gaps its children leave), instead of once per OR edge to that OR's
    variables: an OR's children in its group need nothing.

    That is sound where every AND's children have disjoint targets (an SDD's, with positions
    in vtree order: a prime's variables precede its sub's). Returns ``(ok, targets)``,
    ``targets`` :func:`build_dag`'s: ``(target_lo, target_hi, and_gap, edge_gap, gap_start,
    gap_lo, gap_hi)``; per IR node its target (``hi < lo``: no variables); per edge whether
    its child, smoothed, is all its parent OR needs of it (the child is in its group); per
    AND the positions of its target that its children's targets miss, as an id of a distinct
    *gap set*, ``-1`` for none (gap set ``i``: intervals ``gap_lo/hi[gap_start[i]:
    gap_start[i + 1]]``). ``ok`` is false, ``targets`` :func:`no_targets`, where some AND's
    children's targets overlap, or where the fixpoint takes more than ``_MAX_ROUNDS`` rounds
    (then each OR is smoothed to its children's variables instead).
    """
    n = kind.size
    fail = (False, no_targets())
    # The groups, by union-find. An AND with a constant child (an SDD element with a true
    # sub, shared by decision nodes of many vtree nodes) or fewer than two others folds: it
    # stays out of its parents' groups, which it would otherwise merge.
    # What each node is to mention, as its parents' edges will read it (int32: half the cache
    # misses): a free literal its position p (-2 - p), a constant nothing (-1), an internal
    # node its group (>= 0, numbered below; 0 until then).
    node_code = np.full(n, -1, np.int32)
    for node in order:
        if kind[node] >= AND:
            node_code[node] = 0
        elif kind[node] == LITERAL and leaf_of_literal[node] > ONE:
            node_code[node] = -2 - pos[(leaf_of_literal[node] - 2) % num_vars + 1]
    parent = np.arange(n)
    folds = np.zeros(n, np.bool_)
    for node in order:
        if kind[node] == AND:
            solid = 0
            for e in range(start[node], start[node + 1]):
                solid += node_code[children[e]] != -1
            folds[node] = solid < 2 or solid < start[node + 1] - start[node]
        elif kind[node] == OR:
            for e in range(start[node], start[node + 1]):
                c = children[e]
                if kind[c] == OR or (kind[c] == AND and not folds[c]):
                    a, b = _root_of(parent, node), _root_of(parent, c)
                    if a != b:
                        parent[a] = b
    group = np.full(n, -1, np.int64)  # dense group ids, so that their targets stay in cache
    num_groups = 0
    for node in order:
        if kind[node] >= AND:
            r = _root_of(parent, node)
            if group[r] < 0:
                group[r] = num_groups
                num_groups += 1
            group[node] = group[r]
            node_code[node] = group[r]
    code = np.empty(children.size, np.int32)  # each edge's child's code, read once
    for node in order:
        if kind[node] >= AND:
            for e in range(start[node], start[node + 1]):
                code[e] = node_code[children[e]]
    lo = np.full(num_groups, np.iinfo(np.int64).max, np.int64)
    hi = np.full(num_groups, -1, np.int64)
    changed = True
    for _ in range(_MAX_ROUNDS):
        changed = False
        for node in order:
            if kind[node] < AND:
                continue
            g = group[node]
            for e in range(start[node], start[node + 1]):
                c_lo, c_hi = _code_span(code[e], lo, hi)
                if c_lo < lo[g] and c_lo <= c_hi:
                    lo[g] = c_lo
                    changed = True
                if c_hi > hi[g] and c_lo <= c_hi:
                    hi[g] = c_hi
                    changed = True
        if not changed:
            break
    if changed:
        return fail
    and_gap = np.full(n, -1, np.int32)
    edge_gap = np.full(children.size, -1, np.int32)
    gap_sets = (np.full(1024, -1, np.int64), np.zeros(65, np.int64), np.empty(64, np.int64),
                np.empty(64, np.int64), np.zeros(1, np.int64))  # fmt: skip
    span_lo = np.empty(64, np.int64)
    span_hi = np.empty(64, np.int64)
    t_lo = np.empty(1, np.int64)
    t_hi = np.empty(1, np.int64)
    m_lo = np.empty(64, np.int64)
    m_hi = np.empty(64, np.int64)
    for node in order:
        if kind[node] < AND:
            continue
        g = group[node]
        t_lo[0], t_hi[0] = lo[g], hi[g]
        if kind[node] == OR:  # a child outside its group misses what its target lacks
            for e in range(start[node], start[node + 1]):
                span_lo[0], span_hi[0] = _code_span(code[e], lo, hi)
                if code[e] == g or span_hi[0] < span_lo[0]:
                    continue  # the OR's target already, or a constant
                nm, m_lo, m_hi = _difference(t_lo, t_hi, 1, span_lo, span_hi, 0, 1, m_lo, m_hi)
                if nm:
                    edge_gap[e], gap_sets = _gap_set(m_lo, m_hi, nm, gap_sets)
            continue
        m = 0  # the children's targets, sorted by start (insertion: ANDs have few children)
        for e in range(start[node], start[node + 1]):
            c_lo, c_hi = _code_span(code[e], lo, hi)
            if c_hi < c_lo:
                continue
            span_lo = _grow(span_lo, m + 1)
            span_hi = _grow(span_hi, m + 1)
            _insert_interval(span_lo, span_hi, m, c_lo, c_hi)
            m += 1
        for i in range(1, m):
            if span_lo[i] <= span_hi[i - 1]:
                return fail
        nm, m_lo, m_hi = _difference(t_lo, t_hi, 1, span_lo, span_hi, 0, m, m_lo, m_hi)
        if nm:
            and_gap[node], gap_sets = _gap_set(m_lo, m_hi, nm, gap_sets)
    target_lo = np.zeros(n, np.int64)
    target_hi = np.full(n, -1, np.int64)
    for node in order:
        if group[node] >= 0:
            target_lo[node] = lo[group[node]]
            target_hi[node] = hi[group[node]]
    _, gap_start, gap_lo, gap_hi, count = gap_sets
    end = gap_start[count[0]]
    gaps = (gap_start[: count[0] + 1], gap_lo[:end], gap_hi[:end])
    return True, (target_lo, target_hi, and_gap, edge_gap) + gaps


@njit(cache=True, inline="always")
def _gap_set(m_lo, m_hi, nm, gap_sets):
    """The id of the gap set ``m_lo/hi[:nm]`` in ``gap_sets`` ``(table, start, lo, hi,
    count)``: an equal earlier set's, or a new one's. Returns ``(id, gap_sets)``."""
    table, gap_start, gap_lo, gap_hi, count = gap_sets
    if 2 * (count[0] + 1) > table.size:
        table = _rehash_gaps(2 * table.size, count[0], gap_start, gap_lo, gap_hi)
    mask = table.size - 1
    slot = np.int64(_hash_intervals(m_lo, m_hi, nm) & np.uint64(mask))
    while table[slot] >= 0:
        cand = table[slot]
        s0 = gap_start[cand]
        if gap_start[cand + 1] - s0 == nm:
            same = True
            for i in range(nm):
                if gap_lo[s0 + i] != m_lo[i] or gap_hi[s0 + i] != m_hi[i]:
                    same = False
                    break
            if same:
                return cand, (table, gap_start, gap_lo, gap_hi, count)
        slot = (slot + 1) & mask
    new = count[0]
    table[slot] = new
    gap_start = _grow(gap_start, new + 2)
    s0 = gap_start[new]
    gap_lo = _grow(gap_lo, s0 + nm)
    gap_hi = _grow(gap_hi, s0 + nm)
    gap_lo[s0 : s0 + nm] = m_lo[:nm]
    gap_hi[s0 : s0 + nm] = m_hi[:nm]
    gap_start[new + 1] = s0 + nm
    count[0] = new + 1
    return new, (table, gap_start, gap_lo, gap_hi, count)


@njit(cache=True)
def no_targets():
    """:func:`build_dag`'s ``targets`` where there are none (no smoothing to intervals)."""
    none = np.empty(0, np.int64)
    no_gaps = np.empty(0, np.int32)
    return none, none, no_gaps, no_gaps, none, none, none


@njit(cache=True)
def _hash_intervals(lo, hi, n):
    """A hash of the intervals ``lo/hi[:n]``."""
    h = np.uint64(n)
    for i in range(n):
        h = _mix(h ^ _mix(lo[i] * 1000003 + hi[i]))
    return h


@njit(cache=True)
def _rehash_gaps(size, num_gaps, gap_start, gap_lo, gap_hi):
    """A gap set table of ``size`` slots holding gap sets ``0..num_gaps - 1``."""
    table = np.full(size, -1, np.int64)
    for gap in range(num_gaps):
        s0, s1 = gap_start[gap], gap_start[gap + 1]
        slot = np.int64(
            _hash_intervals(gap_lo[s0:s1], gap_hi[s0:s1], s1 - s0) & np.uint64(size - 1)
        )
        while table[slot] >= 0:
            slot = (slot + 1) & (size - 1)
        table[slot] = gap
    return table


@njit(cache=True, inline="always")
def _ir_span(c, kind, leaf_of_literal, pos, num_vars, target_lo, target_hi):
    """The positions IR node ``c`` (not a constant) mentions once smoothed to targets: a free
    literal its own, an internal node its target."""
    if kind[c] == LITERAL:
        leaf = leaf_of_literal[c]
        if leaf <= ONE:
            return 0, -1
        p = pos[(leaf - 2) % num_vars + 1]
        return p, p
    if kind[c] >= AND:
        return target_lo[c], target_hi[c]
    return 0, -1


@njit(cache=True, inline="always")
def _code_span(code, lo, hi):
    """The positions an edge's child (its :func:`interval_targets` code) is to mention: a free
    literal its own, an internal node its group's target so far, a constant none."""
    if code >= 0:
        return lo[code], hi[code]
    if code == -1:
        return 0, -1
    return -2 - code, -2 - code


@njit(cache=True, inline="always")
def _insert_interval(lo, hi, n, a, b):
    """Insert ``(a, b)`` into ``lo/hi[:n]``, sorted by start (insertion: nodes have few)."""
    i = n
    while i > 0 and lo[i - 1] > a:
        lo[i] = lo[i - 1]
        hi[i] = hi[i - 1]
        i -= 1
    lo[i] = a
    hi[i] = b


@njit(cache=True)
def _union_into(idx, k, vstart, vlo, vhi, out_lo, out_hi):
    """Merge the variable sets of nodes ``idx[:k]`` into ``out_lo/hi`` (room for all their
    intervals; not overlapping the sets read); returns the interval count. Intervals are
    gathered, sorted by start (insertion sort: nodes have few) and merged in place."""
    total = 0
    for j in range(k):
        for s in range(vstart[idx[j]], vstart[idx[j] + 1]):
            lo, hi = vlo[s], vhi[s]
            _insert_interval(out_lo, out_hi, total, lo, hi)
            total += 1
    if total == 0:
        return 0
    count = 0
    for t in range(1, total):
        if out_lo[t] <= out_hi[count] + 1:
            if out_hi[t] > out_hi[count]:
                out_hi[count] = out_hi[t]
        else:
            count += 1
            out_lo[count] = out_lo[t]
            out_hi[count] = out_hi[t]
    return count + 1


@njit(cache=True)
def _union(idx, k, vstart, vlo, vhi, scratch_lo, scratch_hi):
    """Merge the variable sets of nodes ``idx[:k]`` into ``scratch_lo/hi``; returns
    ``(count, scratch_lo, scratch_hi)`` (the scratch arrays may have been grown)."""
    total = 0
    for j in range(k):
        total += vstart[idx[j] + 1] - vstart[idx[j]]
    scratch_lo = _grow(scratch_lo, total)
    scratch_hi = _grow(scratch_hi, total)
    if total > 64:  # many intervals (a wide OR): sort them once instead
        at = 0
        for j in range(k):
            for s in range(vstart[idx[j]], vstart[idx[j] + 1]):
                scratch_lo[at] = vlo[s]
                scratch_hi[at] = vhi[s]
                at += 1
        order = np.argsort(scratch_lo[:total], kind="mergesort")
        los, his = scratch_lo[:total][order], scratch_hi[:total][order]
        count = 0
        scratch_lo[0], scratch_hi[0] = los[0], his[0]
        for t in range(1, total):
            if los[t] <= scratch_hi[count] + 1:
                if his[t] > scratch_hi[count]:
                    scratch_hi[count] = his[t]
            else:
                count += 1
                scratch_lo[count] = los[t]
                scratch_hi[count] = his[t]
        return count + 1, scratch_lo, scratch_hi
    return _union_into(idx, k, vstart, vlo, vhi, scratch_lo, scratch_hi), scratch_lo, scratch_hi


@njit(cache=True, inline="always")
def _difference(a_lo, a_hi, na, b_lo, b_hi, s, s_end, out_lo, out_hi):
    """The intervals of ``a[:na]`` minus ``b[s:s_end]`` (a subset of ``a``) into ``out``;
    returns ``(count, out_lo, out_hi)``."""
    out_lo = _grow(out_lo, na + (s_end - s))
    out_hi = _grow(out_hi, out_lo.size)
    count = 0
    for i in range(na):
        lo = a_lo[i]
        hi = a_hi[i]
        while s < s_end and b_hi[s] < lo:
            s += 1
        cur = lo
        while s < s_end and b_lo[s] <= hi:
            if b_lo[s] > cur:
                out_lo[count] = cur
                out_hi[count] = b_lo[s] - 1
                count += 1
            cur = b_hi[s] + 1
            s += 1
        if cur <= hi:
            out_lo[count] = cur
            out_hi[count] = hi
            count += 1
    return count, out_lo, out_hi


@njit(cache=True)
def _hash_node(kind, kids, k):
    h = _mix(np.uint64(kind) * np.uint64(131) + np.uint64(k))
    for j in range(k):
        h = _mix(h ^ (np.uint64(kids[j]) + np.uint64(0x9E3779B97F4A7C15)))
    return h


@njit(cache=True)
def build_dag(
    kind, start, children, order, roots, num_vars, leaf_of_literal, smooth, pos, num_pos,
    targets,
):  # fmt: skip
    """Simplify, smooth and hash-cons the IR in one bottom-up walk.

    ``order``: the IR nodes to build, children before parents (the reachable ones).
    ``leaf_of_literal[i]`` for an IR literal ``i``: its leaf (a fixed literal's constant).
    ``pos[v]``/``num_pos``: free variables' positions (see :func:`variable_positions`).
    ``targets``: :func:`no_targets`, or :func:`interval_targets`' (with ``pos`` from
    :func:`literal_positions`): per IR node the positions it is to mention when smoothed, per
    OR edge whether its child needs nothing more, per AND the gap set its children leave.

    Constant folding: an AND with a false child is false, true children drop out (an OR
    likewise with true/false swapped); no children gives the identity, one child the child.
    Children are sorted, so equal nodes (same kind, same multiset of children) are one node.
    With ``smooth``, each OR child that misses some of the OR's variables becomes
    ``AND(child, gadgets)`` (an AND child's own children spliced in), and each root that is not
    false likewise for every free variable it misses. With targets, each node is made to
    mention exactly its target: an AND gets the gadgets of what its children miss of it, an
    OR's child outside its group likewise (its edge's gap set), so an OR's children in its
    group need nothing and no variable sets are kept. The nodes that need no variable sets
    are built by :func:`_build_run`; the rest (and whatever it asks for) here.

    Returns ``(dag_kind, dag_start, dag_children, root_ids)``: kinds and CSR of every DAG node
    (leaves have no children).
    """
    num_leaves = 2 * num_vars + 2 + (num_vars if smooth else 0)
    cap = max(16, 2 * num_leaves + 2 * order.size)
    dkind = np.empty(cap, np.int64)
    dstart = np.zeros(cap + 1, np.int64)
    dkids = np.empty(max(16, 2 * children.size), np.int64)
    dkind[:num_leaves] = LITERAL
    dkind[ZERO] = FALSE
    dkind[ONE] = TRUE
    table_size = 64  # at most half full (see _with_room); int32 slots: half the cache misses
    while table_size < 2 * order.size:
        table_size *= 2
    # Variable sets, smoothing without targets only (leaves first): intervals
    # vlo/vhi[vstart[i]:vstart[i+1]]. With targets none are kept: a node made for an IR node
    # mentions that node's target, and no other node's variables are read.
    target_lo, target_hi, and_gap, edge_gap, gap_start, gap_lo, gap_hi = targets
    by_target = smooth and target_lo.size > 0
    keeps_sets = smooth and not by_target
    vstart = np.zeros(cap + 1 if keeps_sets else 0, np.int64)
    vlo = np.empty(max(16, 3 * num_vars) if keeps_sets else 0, np.int64)
    vhi = np.empty(vlo.size, np.int64)
    nv = 0
    if keeps_sets:
        for leaf in range(num_leaves):
            vstart[leaf] = nv
            v = 0
            if 2 <= leaf < 2 * num_vars + 2:
                v = (leaf - 2) % num_vars + 1
            elif leaf >= 2 * num_vars + 2:
                v = leaf - 2 * num_vars - 1
            if v > 0 and pos[v] >= 0:
                vlo[nv] = pos[v]
                vhi[nv] = pos[v]
                nv += 1
        vstart[num_leaves] = nv
    state = (
        dkind,
        dstart,
        dkids,
        np.full(table_size, _EMPTY, np.int32),
        vstart,
        vlo,
        vhi,
        np.array([num_leaves, nv]),
    )

    var_at = np.empty(max(num_pos, 1), np.int64)
    for v in range(1, num_vars + 1):
        if pos[v] >= 0:
            var_at[pos[v]] = v
    seg_size = 1
    while seg_size < num_pos:
        seg_size *= 2
    gadget = np.full(2 * seg_size, -1, np.int64)  # heap node -> its shared AND, made on use

    canon = np.full(kind.size, -1, np.int32)
    kids = np.empty(64, np.int64)
    kid_edge = np.empty(64, np.int64)  # the IR edge each of kids[:kept] was made for
    padded = np.empty(64, np.int64)
    u_lo = np.empty(64, np.int64)
    u_hi = np.empty(64, np.int64)
    m_lo = np.empty(64, np.int64)
    m_hi = np.empty(64, np.int64)
    num_gaps = gap_start.size - 1 if by_target else 0
    made = (
        np.full(num_gaps, -1, np.int64),
        np.zeros(num_gaps, np.int64),
        np.empty(64, np.int64),
        np.zeros(1, np.int64),
    )  # fmt: skip (see _gap_tautologies)
    t_lo = np.empty(1, np.int64)
    t_hi = np.empty(1, np.int64)
    dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
    i = 0
    while i < order.size:
        if not keeps_sets:  # the common nodes in a loop of its own (see _build_run)
            i, request, amount = _build_run(
                i, order, kind, start, children, leaf_of_literal, canon, by_target, edge_gap,
                and_gap, made[0], made[1], made[2], dkind, dstart, dkids, table, sizes, kids,
                kid_edge, padded,
            )  # fmt: skip
            if request == _DONE:
                break
            if request == _ROOM:
                dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = _with_room(
                    (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes), amount
                )
                continue
            if request == _SCRATCH:
                kids = _grow(kids, amount)
                kid_edge = _grow(kid_edge, amount)
                padded = _grow(padded, amount)
                continue
            if request == _GAP:
                # Every gap set the node needs, not just the first: the node is redone after
                # each request, and an OR of n literals needs n of them (once per request:
                # quadratic).
                node = order[i]
                if kind[node] == AND:
                    gaps = and_gap[node : node + 1]
                else:
                    gaps = edge_gap[start[node] : start[node + 1]]
                state = (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes)
                for gap in gaps:
                    if gap >= 0 and made[0][gap] < 0:
                        _, _, made, state = _gap_tautologies(
                            gap, gap_start, gap_lo, gap_hi, made, state, gadget, seg_size,
                            var_at, num_vars,
                        )  # fmt: skip
                dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
                continue
        # _GENERAL: smoothing with variable sets, or an AND whose gap is not its gap set's
        node = order[i]
        i += 1
        k = kind[node]
        if k <= LITERAL:
            canon[node] = _leaf_canon(k, leaf_of_literal[node])
            continue
        absorbing = ZERO if k == AND else ONE
        identity = ONE if k == AND else ZERO
        degree = start[node + 1] - start[node]
        kids = _grow(kids, degree)
        kid_edge = _grow(kid_edge, degree)
        kept, absorbed, lost, _ = _fold(
            node, k, kind, start, children, canon, kids, kid_edge, by_target, edge_gap
        )
        if absorbed:
            canon[node] = absorbing
            continue
        if lost and target_lo[node] <= target_hi[node]:
            # a child that was to mention its target folded to true: the gaps its other
            # children leave, from their targets
            t_lo[0], t_hi[0] = target_lo[node], target_hi[node]
            u_lo = _grow(u_lo, kept)
            u_hi = _grow(u_hi, kept)
            for j in range(kept):
                c_lo, c_hi = _ir_span(
                    children[kid_edge[j]], kind, leaf_of_literal, pos, num_vars, target_lo,
                    target_hi,
                )  # fmt: skip
                _insert_interval(u_lo, u_hi, j, c_lo, c_hi)
            nm, m_lo, m_hi = _difference(t_lo, t_hi, 1, u_lo, u_hi, 0, kept, m_lo, m_hi)
            if nm:
                state = (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes)
                pieces, n_pieces, state = _tautologies(
                    m_lo, m_hi, nm, state, gadget, seg_size, var_at, num_vars
                )
                dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
                kids = _grow(kids, kept + n_pieces)
                kids[kept : kept + n_pieces] = pieces[:n_pieces]
                kept += n_pieces
        if kept == 0:
            canon[node] = identity
            continue
        if kept == 1:
            canon[node] = kids[0]
            continue
        if keeps_sets and k == OR:
            state = (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes)
            count, u_lo, u_hi = _union(kids, kept, vstart, vlo, vhi, u_lo, u_hi)
            for j in range(kept):
                c = kids[j]
                nm, m_lo, m_hi = _difference(
                    u_lo, u_hi, count, state[5], state[6], state[4][c], state[4][c + 1], m_lo,
                    m_hi,
                )  # fmt: skip
                if nm:
                    pieces, n_pieces, state = _tautologies(
                        m_lo, m_hi, nm, state, gadget, seg_size, var_at, num_vars
                    )
                    kids[j], state = _smoothed(kids[j], pieces, n_pieces, u_lo, u_hi, count, state)
            dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
        size = sizes[0]
        dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = _with_room(
            (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes), kept
        )
        canon[node] = _find_or_add(k, kids, kept, dkind, dstart, dkids, table, sizes)
        if keeps_sets and canon[node] == size and k == OR:
            # every child now has the set U (the union): so has the OR
            dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = _store_set(
                size, u_lo, u_hi, count, (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes)
            )
        elif keeps_sets and canon[node] == size:  # a new AND: its children's sets merged
            total = 0
            for j in range(kept):
                total += vstart[kids[j] + 1] - vstart[kids[j]]
            nv = sizes[1]
            if size + 2 > vstart.size or nv + total > vlo.size or total > 64:
                dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = _record_set(
                    size, (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes)
                )
            else:  # the common case, inline: the children's intervals merged in place
                count = _union_into(kids, kept, vstart, vlo, vhi, vlo[nv:], vhi[nv:])
                sizes[1] = nv + count
                vstart[size + 1] = nv + count
    state = (dkind, dstart, dkids, table, vstart, vlo, vhi, sizes)

    root_ids = np.empty(roots.size, np.int64)
    for i in range(roots.size):
        root_ids[i] = canon[roots[i]]
    if smooth and num_pos > 0:
        all_lo = np.zeros(1, np.int64)
        all_hi = np.full(1, num_pos - 1, np.int64)
        for i in range(roots.size):
            if root_ids[i] == ZERO:
                continue  # a false root has no models to smooth
            r = root_ids[i]
            if by_target:  # its set: its target (none if it folded to true)
                u_lo[0], u_hi[0] = 0, -1
                if r != ONE:
                    u_lo[0], u_hi[0] = _ir_span(
                        roots[i], kind, leaf_of_literal, pos, num_vars, target_lo, target_hi
                    )
                nu = 1 if u_lo[0] <= u_hi[0] else 0
                nm, m_lo, m_hi = _difference(all_lo, all_hi, 1, u_lo, u_hi, 0, nu, m_lo, m_hi)
            else:
                nm, m_lo, m_hi = _difference(
                    all_lo, all_hi, 1, state[5], state[6], state[4][r], state[4][r + 1], m_lo,
                    m_hi,
                )  # fmt: skip
            if nm:
                pieces, n_pieces, state = _tautologies(
                    m_lo, m_hi, nm, state, gadget, seg_size, var_at, num_vars
                )
                root_ids[i], state = _smoothed(
                    root_ids[i], pieces, n_pieces, all_lo, all_hi, 1, state
                )
    size = state[7][0]
    dstart = state[1]
    return state[0][:size], dstart[: size + 1], state[2][: dstart[size]], root_ids


# _build_run's requests to build_dag: what it needs before it can go on.
_DONE, _ROOM, _SCRATCH, _GAP, _GENERAL = 0, 1, 2, 3, 4


@njit(cache=True)
def _build_run(
    i, order, kind, start, children, leaf_of_literal, canon, by_target, edge_gap, and_gap,
    made_at, made_count, made_store, dkind, dstart, dkids, table, sizes, kids, kid_edge, padded,
):  # fmt: skip
    """:func:`build_dag`'s loop over ``order[i:]`` for what needs no variable sets: unsmoothed
    nodes and nodes smoothed to targets. It stops at the first node it cannot finish and
    returns ``(i, request, amount)``: ``_ROOM`` (room for a node of ``amount`` children),
    ``_SCRATCH`` (scratch arrays of ``amount`` items), ``_GAP`` (gap set ``amount``'s
    tautologies, not made yet), ``_GENERAL`` (``order[i]`` needs build_dag's general path: an
    AND whose child folded to true), or ``_DONE``; build_dag serves it and calls again.

    The arrays are parameters, never reassigned here: in a loop where an array may be replaced
    (grown), every node pays for it (3cnf-60: build_dag took 2.5 s with this loop inline,
    1.5 s so)."""
    while i < order.size:
        node = order[i]
        k = kind[node]
        if k <= LITERAL:
            canon[node] = _leaf_canon(k, leaf_of_literal[node])
            i += 1
            continue
        degree = start[node + 1] - start[node]
        if degree > kids.size:
            return i, _SCRATCH, degree
        kept, absorbed, lost, short = _fold(
            node, k, kind, start, children, canon, kids, kid_edge, by_target, edge_gap
        )
        if absorbed:
            canon[node] = ZERO if k == AND else ONE
            i += 1
            continue
        if lost:
            return i, _GENERAL, 0
        if by_target and k == AND and and_gap[node] >= 0:
            # the tautologies of the gap set its children leave
            gap = and_gap[node]
            if made_at[gap] < 0:
                return i, _GAP, gap
            at, n_pieces = made_at[gap], made_count[gap]
            if kept + n_pieces > kids.size:
                return i, _SCRATCH, kept + n_pieces
            kids[kept : kept + n_pieces] = made_store[at : at + n_pieces]
            kept += n_pieces
        elif short:  # an OR's children outside its group, to its target
            for j in range(kept):
                gap = edge_gap[kid_edge[j]]
                if gap < 0:
                    continue
                if made_at[gap] < 0:
                    return i, _GAP, gap
                # AND(child, tautologies), an AND child's own children spliced in
                at, n_pieces, c = made_at[gap], made_count[gap], kids[j]
                own = dstart[c + 1] - dstart[c] if dkind[c] == AND else 1
                n = own + n_pieces
                if n > padded.size:
                    return i, _SCRATCH, n
                if not _has_room(dkind, dstart, dkids, table, sizes[0], n):
                    return i, _ROOM, n
                if dkind[c] == AND:
                    padded[:own] = dkids[dstart[c] : dstart[c + 1]]
                else:
                    padded[0] = c
                padded[own:n] = made_store[at : at + n_pieces]
                kids[j] = _find_or_add(AND, padded, n, dkind, dstart, dkids, table, sizes)
        if kept <= 1:
            canon[node] = kids[0] if kept == 1 else (ONE if k == AND else ZERO)
            i += 1
            continue
        if not _has_room(dkind, dstart, dkids, table, sizes[0], kept):
            return i, _ROOM, kept
        canon[node] = _find_or_add(k, kids, kept, dkind, dstart, dkids, table, sizes)
        i += 1
    return i, _DONE, 0


@njit(cache=True, inline="always")
def _leaf_canon(k, leaf):
    """The DAG leaf of an IR leaf of kind ``k`` (``leaf``: a literal's leaf)."""
    if k == LITERAL:
        return leaf
    return ONE if k == TRUE else ZERO


@njit(cache=True, inline="always")
def _fold(node, k, kind, start, children, canon, kids, kid_edge, by_target, edge_gap):
    """IR node ``node``'s (kind ``k``, AND or OR) children as DAG nodes, into ``kids`` (room
    for all), constants folded: ``(kept, absorbed, lost, short)``, ``kids[:kept]`` the kept
    ones and ``kid_edge[:kept]`` their IR edges; ``absorbed``: a child is the absorbing
    constant; with targets, ``lost``: an AND's internal child folded to true (its gap set no
    longer holds), ``short``: an OR has a child outside its group (to smooth to its target)."""
    absorbing = ZERO if k == AND else ONE
    identity = ONE if k == AND else ZERO
    kept = 0
    lost = False
    short = False
    for e in range(start[node], start[node + 1]):
        c = canon[children[e]]
        if c == absorbing:
            return kept, True, lost, short
        if c != identity:
            kids[kept] = c
            kid_edge[kept] = e
            kept += 1
            if by_target and k == OR and edge_gap[e] >= 0:
                short = True
        elif by_target and k == AND and kind[children[e]] >= AND:
            lost = True
    return kept, False, lost, short


@njit(cache=True, inline="always")
def _has_room(dkind, dstart, dkids, table, size, n):
    """Whether the DAG arrays have room for one more node (``size`` nodes now) of ``n``
    children, the hash table staying at most half full."""
    return (
        size + 2 <= dkind.size and dstart[size] + n <= dkids.size and 2 * (size + 1) <= table.size
    )


@njit(cache=True, inline="always")
def _smoothed(c, pieces, n_pieces, u_lo, u_hi, nu, state):
    """``AND(c, T)``, ``T`` the tautologies ``pieces[:n_pieces]`` (:func:`_tautologies`):
    ``c``'s own children are spliced in when it is an AND (an AND directly under an AND would
    cost a layer); ``c`` true contributes nothing. ``u`` is the set ``c`` and ``T`` make
    together (the node's, known without reading its children's). Returns ``(node, state)``."""
    dkind, dstart, dkids = state[0], state[1], state[2]
    own = 0
    if c != ONE:
        own = dstart[c + 1] - dstart[c] if dkind[c] == AND else 1
    kids = np.empty(own + n_pieces, np.int64)
    if own == 1 and dkind[c] != AND:
        kids[0] = c
    elif own:
        kids[:own] = dkids[dstart[c] : dstart[c] + own]
    kids[own:] = pieces[:n_pieces]
    if own + n_pieces == 1:
        return kids[0], state
    return _intern(AND, kids, own + n_pieces, u_lo, u_hi, nu, state)


@njit(cache=True, inline="always")
def _gap_tautologies(
    gap, gap_start, gap_lo, gap_hi, made, state, gadget, seg_size, var_at, num_vars
):
    """The tautologies of gap set ``gap`` (:func:`interval_targets`), made on its first use:
    ``made`` is ``(at, count, store, stored)``, gap set ``i``'s pieces ``store[at[i]:][:
    count[i]]`` once made (``at[i] >= 0``). Returns ``(at, count, made, state)``."""
    at, count, store, stored = made
    if at[gap] < 0:
        s0, s1 = gap_start[gap], gap_start[gap + 1]
        pieces, n_pieces, state = _tautologies(
            gap_lo[s0:s1], gap_hi[s0:s1], s1 - s0, state, gadget, seg_size, var_at, num_vars
        )
        store = _grow(store, stored[0] + n_pieces)
        store[stored[0] : stored[0] + n_pieces] = pieces[:n_pieces]
        at[gap] = stored[0]
        count[gap] = n_pieces
        stored[0] += n_pieces
    return at[gap], count[gap], (at, count, store, stored), state


@njit(cache=True, inline="always")
def _tautologies(m_lo, m_hi, nm, state, gadget, seg_size, var_at, num_vars):
    """The nodes whose AND is the tautologies of the positions ``m``: ``(pieces, count,
    state)``.

    They are whichever is cheaper of: the canonical nodes of the segment tree over positions
    covering ``m`` (a single position is its tautology leaf, a wider node a shared gadget, the
    AND of its positions' tautology leaves, made on first use), ``p = O(log V)`` edges; or,
    when ``m`` has at most ``2p`` positions, one AND of ``m``'s tautology leaves, shared (by
    hash-consing) by every place that misses the same set, one edge each. Each smoothed edge
    then costs ``O(log V)`` edges, and a set missed in many places costs one edge a place.
    """
    heap = np.empty(64, np.int64)
    n_pieces = 0
    width_total = 0
    for i in range(nm):
        width_total += m_hi[i] - m_lo[i] + 1
        lo = m_lo[i] + seg_size
        hi = m_hi[i] + seg_size + 1
        while lo < hi:
            if lo & 1:
                heap = _grow(heap, n_pieces + 1)
                heap[n_pieces] = lo
                n_pieces += 1
                lo += 1
            if hi & 1:
                hi -= 1
                heap = _grow(heap, n_pieces + 1)
                heap[n_pieces] = hi
                n_pieces += 1
            lo >>= 1
            hi >>= 1
    if width_total <= 2 * n_pieces:
        leaves = np.empty(width_total, np.int64)
        at = 0
        for i in range(nm):
            for q in range(m_lo[i], m_hi[i] + 1):
                leaves[at] = 2 * num_vars + 1 + var_at[q]
                at += 1
        n_pieces = 1
        if width_total == 1:
            heap[0] = leaves[0]
        else:
            heap[0], state = _intern(AND, leaves, width_total, m_lo, m_hi, nm, state)
    else:
        for p in range(n_pieces):
            h = heap[p]
            if h >= seg_size:
                heap[p] = 2 * num_vars + 1 + var_at[h - seg_size]
                continue
            if gadget[h] < 0:
                first, width = h, 1  # the positions under heap node h: [first, first + width)
                while first < seg_size:
                    first *= 2
                    width *= 2
                leaves = np.empty(width, np.int64)
                for j in range(width):
                    leaves[j] = 2 * num_vars + 1 + var_at[first - seg_size + j]
                span_lo = np.full(1, first - seg_size, np.int64)
                span_hi = np.full(1, first - seg_size + width - 1, np.int64)
                gadget[h], state = _intern(AND, leaves, width, span_lo, span_hi, 1, state)
            heap[p] = gadget[h]
    return heap, n_pieces, state


@njit(cache=True, inline="always")
def _with_room(state, n):
    """``state`` with room for one more node of ``n`` children (arrays grown, the hash table
    rehashed at half load)."""
    dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
    size = sizes[0]
    if not _has_room(dkind, dstart, dkids, table, size, n):
        dkind = _grow(dkind, size + 2)
        dstart = _grow(dstart, size + 3)
        dkids = _grow(dkids, dstart[size] + n)
        if 2 * (size + 1) > table.size:
            table = _rehash(table, dkind, dstart, dkids)
    return dkind, dstart, dkids, table, vstart, vlo, vhi, sizes


@njit(cache=True, inline="always")
def _sort_small(a):
    """Sort ``a`` in place: insertion sort for the few children most nodes have (inlined, as
    :func:`_find_or_add`: once per node in the hot loops, where a call costs 3cnf-60 ~0.15 s)."""
    if a.size > 32:
        a.sort()
        return
    for j in range(1, a.size):
        value = a[j]
        i = j
        while i > 0 and a[i - 1] > value:
            a[i] = a[i - 1]
            i -= 1
        a[i] = value


@njit(cache=True, inline="always")
def _find_or_add(k, kids, n, dkind, dstart, dkids, table, sizes):
    """The node ``(k, sorted kids[:n])`` (``kids[:n]`` is sorted in place): an existing equal
    node, or a new one at ``sizes[0]`` (the arrays have room: :func:`_with_room`)."""
    sorted_kids = kids[:n]
    _sort_small(sorted_kids)
    mask = table.size - 1
    slot = np.int64(_hash_node(k, sorted_kids, n) & np.uint64(mask))
    while table[slot] != _EMPTY:
        cand = table[slot]
        base = dstart[cand]
        if dkind[cand] == k and dstart[cand + 1] - base == n:
            same = True
            for j in range(n):
                if dkids[base + j] != sorted_kids[j]:
                    same = False
                    break
            if same:
                return cand
        slot = (slot + 1) & mask
    node = sizes[0]
    dkind[node] = k
    dkids[dstart[node] : dstart[node] + n] = sorted_kids
    dstart[node + 1] = dstart[node] + n
    sizes[0] = node + 1
    table[slot] = node
    return node


@njit(cache=True)
def _record_set(node, state):
    """Store the new node's variable set, the union of its children's (merged in place at the
    end of the interval store)."""
    dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
    vstart = _grow(vstart, node + 2)
    kids = dkids[dstart[node] : dstart[node + 1]]
    nv = sizes[1]
    total = 0
    for c in kids:
        total += vstart[c + 1] - vstart[c]
    if total > 64:
        count, lo, hi = _union(
            kids, kids.size, vstart, vlo, vhi, np.empty(0, np.int64), np.empty(0, np.int64)
        )
        vlo = _grow(vlo, nv + count)
        vhi = _grow(vhi, nv + count)
        vlo[nv : nv + count] = lo[:count]
        vhi[nv : nv + count] = hi[:count]
    else:
        vlo = _grow(vlo, nv + total)
        vhi = _grow(vhi, nv + total)
        count = _union_into(kids, kids.size, vstart, vlo, vhi, vlo[nv:], vhi[nv:])
    sizes[1] = nv + count
    vstart[node + 1] = nv + count
    return dkind, dstart, dkids, table, vstart, vlo, vhi, sizes


@njit(cache=True, inline="always")
def _intern(k, kids, n, set_lo, set_hi, set_count, state):
    """The node ``(k, sorted kids[:n])`` (``kids[:n]`` is sorted in place): an existing equal
    node, or a new one whose variable set is ``set_lo/hi[:set_count]`` (the caller knows it:
    merging the children's sets would read each child's; not stored where the store is empty:
    smoothing to targets keeps none). Returns ``(node, state)``. Inlined, as
    :func:`_with_room` and :func:`_store_set`: passing the state tuple between compiled
    functions costs more than the rest of a smoothed edge."""
    state = _with_room(state, n)
    size = state[7][0]
    node = _find_or_add(k, kids, n, state[0], state[1], state[2], state[3], state[7])
    if node == size and state[4].size > 0:
        state = _store_set(node, set_lo, set_hi, set_count, state)
    return node, state


@njit(cache=True, inline="always")
def _store_set(node, set_lo, set_hi, set_count, state):
    """Store ``set_lo/hi[:set_count]`` as the new node's variable set."""
    dkind, dstart, dkids, table, vstart, vlo, vhi, sizes = state
    vstart = _grow(vstart, node + 2)
    nv = sizes[1]
    vlo = _grow(vlo, nv + set_count)
    vhi = _grow(vhi, nv + set_count)
    vlo[nv : nv + set_count] = set_lo[:set_count]
    vhi[nv : nv + set_count] = set_hi[:set_count]
    sizes[1] = nv + set_count
    vstart[node + 1] = nv + set_count
    return dkind, dstart, dkids, table, vstart, vlo, vhi, sizes


@njit(cache=True)
def _rehash(table, dkind, dstart, dkids):
    bigger = np.full(2 * table.size, _EMPTY, np.int32)
    mask = bigger.size - 1
    for slot in range(table.size):
        node = table[slot]
        if node == _EMPTY:
            continue
        n = dstart[node + 1] - dstart[node]
        h = _hash_node(dkind[node], dkids[dstart[node] : dstart[node] + n], n)
        s = np.int64(h & np.uint64(mask))
        while bigger[s] != _EMPTY:
            s = (s + 1) & mask
        bigger[s] = node
    return bigger


@njit(cache=True)
def layer_of(dkind, dstart, dkids, size, num_leaves, alive):
    """Each live internal node's layer: AND nodes at odd layers, OR nodes at even ones, each
    the lowest such layer above all of its children (leaves are layer 0); ``-1`` elsewhere."""
    layer = np.full(size, -1, np.int64)
    layer[:num_leaves] = 0
    for node in range(num_leaves, size):
        if not alive[node]:
            continue
        top = 0
        for e in range(dstart[node], dstart[node + 1]):
            c = layer[dkids[e]]
            if c > top:
                top = c
        nxt = top + 1
        want_odd = dkind[node] == AND
        if (nxt % 2 == 1) != want_odd:
            nxt += 1
        layer[node] = nxt
    return layer


@njit(cache=True)
def assign_rows(dstart, dkids, layer, num_leaves, num_layers):
    """Rows of the live internal nodes: layer by layer, and within a layer ordered by their
    lowest child's row (neighbours then read neighbouring rows; ties in node order). Returns
    ``(row, row_start, kid_row)``: ``row[node]`` (``-1`` for dead nodes), each layer's first
    row (``row_start[k]`` for ``k`` in ``0..num_layers + 1``) and the row of each live node's
    children (``kid_row[e]`` for ``dkids[e]``: read once here, as each layer's order needs
    them, for :func:`row_csr`)."""
    size = layer.size
    counts = np.zeros(num_layers + 2, np.int64)
    for node in range(size):
        if layer[node] >= 0:
            counts[layer[node] + 1] += 1
    row_start = np.cumsum(counts)
    by_layer = np.empty(row_start[-1], np.int64)
    fill = row_start[:-1].copy()
    for node in range(size):
        if layer[node] >= 0:
            by_layer[fill[layer[node]]] = node
            fill[layer[node]] += 1
    row = np.full(size, -1, np.int32)
    kid_row = np.empty(dkids.size, np.int32)
    for leaf in range(num_leaves):
        row[leaf] = leaf
    rank = np.zeros(0, np.int64)
    for k in range(1, num_layers + 1):
        lo, hi = row_start[k], row_start[k + 1]
        key = np.empty(hi - lo, np.int64)
        for i in range(lo, hi):
            node = by_layer[i]
            best = lo
            for e in range(dstart[node], dstart[node + 1]):
                r = row[dkids[e]]
                kid_row[e] = r
                if r < best:
                    best = r
            key[i - lo] = best
        if lo <= 8 * (hi - lo):  # keys in 0..lo, few enough for a counting sort (linear)
            rank = _grow(rank, lo + 2)
            rank[: lo + 2] = 0
            for i in range(hi - lo):
                rank[key[i] + 1] += 1
            for r in range(lo + 1):
                rank[r + 1] += rank[r]
            for i in range(hi - lo):
                node = by_layer[lo + i]
                row[node] = lo + rank[key[i]]
                rank[key[i]] += 1
        else:
            order = np.argsort(key, kind="mergesort")
            for j in range(hi - lo):
                node = by_layer[lo + order[j]]
                row[node] = lo + j
    return row, row_start, kid_row


@njit(cache=True)
def row_csr(dstart, kid_row, row, num_leaves, num_rows):
    """``(child, offsets)`` (int32): the internal rows' children as rows, ascending within a
    node, edges in row order (``kid_row`` from :func:`assign_rows`). Nodes are read in id
    order and their rows written where they go: reads in sequence, writes scattered (a
    scattered write does not wait on memory; a scattered read does)."""
    offsets = np.zeros(num_rows - num_leaves + 1, np.int32)
    for node in range(num_leaves, row.size):
        if row[node] >= 0:
            offsets[row[node] - num_leaves + 1] = dstart[node + 1] - dstart[node]
    for r in range(num_rows - num_leaves):
        offsets[r + 1] += offsets[r]
    child = np.empty(offsets[-1], np.int32)
    for node in range(num_leaves, row.size):
        if row[node] >= 0:
            at = offsets[row[node] - num_leaves]
            n = dstart[node + 1] - dstart[node]
            child[at : at + n] = kid_row[dstart[node] : dstart[node + 1]]
            _sort_small(child[at : at + n])
    return child, offsets


@njit(cache=True)
def transposed_csr(child, offsets, row_is_or, num_leaves):
    """The transposed CSR of the edges ``e`` (parent row ``r`` -> ``child[e]``, ``e`` in
    ``offsets[r - num_leaves]:offsets[r - num_leaves + 1]``) by a counting sort (linear), int32:
    ``(parent_offsets, parent_split, parent, parent_edge)``: row ``c``'s parent edges are
    ``parent_offsets[c]:parent_offsets[c+1]``, those whose parent is an AND first (up to
    ``parent_split[c]``), each part in ascending edge order; ``parent`` their parent rows and
    ``parent_edge`` their edge ids."""
    num_rows = row_is_or.size
    fill = np.zeros(2 * num_rows + 1, np.int32)  # fill[2c] .. AND part, fill[2c+1] .. OR part
    for r in range(num_leaves, num_rows):
        side = 1 if row_is_or[r] else 0
        for e in range(offsets[r - num_leaves], offsets[r - num_leaves + 1]):
            fill[2 * child[e] + side + 1] += 1
    for i in range(2 * num_rows):
        fill[i + 1] += fill[i]
    parent_offsets = np.empty(num_rows + 1, np.int32)
    parent_split = np.empty(num_rows, np.int32)
    for c in range(num_rows):
        parent_offsets[c] = fill[2 * c]
        parent_split[c] = fill[2 * c + 1]
    parent_offsets[num_rows] = fill[2 * num_rows]
    parent = np.empty(child.size, np.int32)
    parent_edge = np.empty(child.size, np.int32)
    for r in range(num_leaves, num_rows):
        side = 1 if row_is_or[r] else 0
        for e in range(offsets[r - num_leaves], offsets[r - num_leaves + 1]):
            slot = fill[2 * child[e] + side]
            fill[2 * child[e] + side] = slot + 1
            parent[slot] = r
            parent_edge[slot] = e
    return parent_offsets, parent_split, parent, parent_edge
