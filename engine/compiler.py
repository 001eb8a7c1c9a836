"""Compile a :class:`~trilay.engine.circuit.Circuit` into layers.

The passes, each vectorized over one height level of the DAG at a time (numpy, no per-node
Python work):

1. **Constant propagation**: true/false and literals the caller fixes fold away (an AND with a
   false child is false, true children drop out, ...); single-child nodes collapse into their
   child. Children of the surviving nodes are sorted, so equal nodes get equal child lists.
2. **Smoothing** (optional): each OR child is conjoined with ``v OR -v`` for every variable
   the OR mentions and the child does not; each root likewise for every free variable.
3. **Deduplication** by Merkle hashing: level by level, a node's key hashes its kind and its
   children's representatives, so identical sub-circuits within and across roots merge in
   linear time (hash groups are verified child by child; a collision falls back to exact keys).
4. **Layering** (KLay's algorithms 2 and 3): AND nodes sit at odd heights and OR nodes at even
   ones, so each layer has one reduction; unary chains carry a value up to every layer that
   reads it, so every edge joins adjacent layers; the last layer holds the roots in order.
"""

from __future__ import annotations

import numpy as np

from ._segments import ranges as _ranges
from .circuit import AND, FALSE, LITERAL, OR, TRUE, Circuit
from .compiled import CompiledCircuit, Layer
from .errors import CircuitError

# Node ids of the compiled DAG: 0 = false, 1 = true, 2..V+1 = +v, V+2..2V+1 = -v. This is also
# the layout of layer 0, so leaf ids are their layer-0 positions.
ZERO, ONE = 0, 1


def compile_circuit(
    circuit: Circuit, *, smooth: bool = True, fixed: dict[int, bool] | None = None
) -> CompiledCircuit:
    kind, lit, start, children, roots = circuit.arrays()
    num_vars = circuit.num_vars
    if roots.size == 0:
        raise CircuitError("the circuit is empty: it has no roots (use add_root)")
    fixed = _check_fixed(fixed, num_vars)

    dag, root_ids = _simplify(kind, lit, start, children, roots, num_vars, fixed)
    if smooth:
        free = np.ones(num_vars + 1, dtype=bool)
        free[0] = False
        free[list(fixed)] = False
        root_ids = _smooth(dag, root_ids, num_vars, free)
    root_ids = _deduplicate(dag, root_ids)
    layers = _layerize(dag, root_ids, num_vars)
    return CompiledCircuit(
        num_vars=num_vars,
        layers=layers,
        num_roots=len(root_ids),
        smooth=smooth,
        fixed=fixed,
    )


# ---------------------------------------------------------------------------- the working DAG
class _Dag:
    """Growable DAG: node ``i`` (an AND/OR, ``i >= num_leaves``) has kind ``kind[i]`` and
    children ``children[start[i]:start[i+1]]``; ids below ``num_leaves`` are constants and
    literals (no children)."""

    def __init__(self, num_vars: int):
        self.num_leaves = 2 * num_vars + 2
        self._kinds = [np.full(self.num_leaves, LITERAL, dtype=np.int64)]
        self._kinds[0][[ZERO, ONE]] = [FALSE, TRUE]
        self._lengths = [np.zeros(self.num_leaves, dtype=np.int64)]
        self._children = [np.zeros(0, dtype=np.int64)]
        self.size = self.num_leaves
        self._frozen = None

    def add(self, kinds: np.ndarray, lengths: np.ndarray, children: np.ndarray) -> np.ndarray:
        """Append nodes; returns their ids."""
        ids = np.arange(self.size, self.size + kinds.size, dtype=np.int64)
        self._kinds.append(kinds.astype(np.int64))
        self._lengths.append(lengths.astype(np.int64))
        self._children.append(children.astype(np.int64))
        self.size += kinds.size
        self._frozen = None
        return ids

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(kind, start, children)`` of every node so far."""
        if self._frozen is None:
            kind = np.concatenate(self._kinds)
            start = np.zeros(self.size + 1, dtype=np.int64)
            np.cumsum(np.concatenate(self._lengths), out=start[1:])
            children = np.concatenate(self._children)
            self._kinds, self._lengths, self._children = [kind], [np.diff(start)], [children]
            self._frozen = (kind, start, children)
        return self._frozen

    def set_children(self, children: np.ndarray) -> None:
        """Replace the flat child array (same lengths)."""
        kind, start, _ = self.arrays()
        self._children = [children]
        self._frozen = (kind, start, children)


# ---------------------------------------------------------------------------- helpers
def _heights(start: np.ndarray, children: np.ndarray, n: int) -> np.ndarray:
    """Longest path from a leaf, for every node (Kahn's algorithm, one numpy round per level).

    Raises CircuitError if the graph has a cycle.
    """
    fan_in = np.diff(start)
    parent_of_edge = np.repeat(np.arange(n, dtype=np.int64), fan_in)
    order = np.argsort(children, kind="stable")
    parents_by_child = parent_of_edge[order]
    p_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(children, minlength=n), out=p_start[1:])
    remaining = fan_in.copy()
    height = np.zeros(n, dtype=np.int64)
    frontier = np.flatnonzero(fan_in == 0)
    done = frontier.size
    level = 0
    while frontier.size:
        level += 1
        parents = parents_by_child[_ranges(p_start[frontier], p_start[frontier + 1])]
        uniq, counts = np.unique(parents, return_counts=True)
        remaining[uniq] -= counts
        frontier = uniq[remaining[uniq] == 0]
        height[frontier] = level
        done += frontier.size
    if done != n:
        raise CircuitError("the circuit has a cycle")
    return height


def _levels(height: np.ndarray) -> list[np.ndarray]:
    """Node ids grouped by height, ascending."""
    order = np.argsort(height, kind="stable")
    bounds = np.searchsorted(height[order], np.arange(int(height.max(initial=0)) + 2))
    return [order[bounds[h] : bounds[h + 1]] for h in range(bounds.size - 1)]


def _check_fixed(fixed, num_vars: int) -> dict[int, bool]:
    out = {}
    for var, value in (fixed or {}).items():
        if not isinstance(var, (int, np.integer)) or not 1 <= var <= num_vars:
            raise CircuitError(f"fixed variable {var!r} is not one of 1..{num_vars}")
        out[int(var)] = bool(value)
    return out


# ---------------------------------------------------------------------------- pass 1
def _simplify(kind, lit, start, children, roots, num_vars, fixed):
    n = kind.size
    if children.size and (children.min() < 0 or children.max() >= n):
        raise CircuitError("a child id is not a node of the circuit")
    dag = _Dag(num_vars)
    canon = np.full(n, -1, dtype=np.int64)
    leaf_map = np.arange(dag.num_leaves)  # fixed literals become constants
    for var, value in fixed.items():
        leaf_map[1 + var] = ONE if value else ZERO
        leaf_map[1 + num_vars + var] = ZERO if value else ONE
    height = _heights(start, children, n)
    for level, nodes in enumerate(_levels(height)):
        k = kind[nodes]
        if level == 0:
            leaf_id = np.where(k == TRUE, ONE, ZERO)
            is_lit = k == LITERAL
            v = lit[nodes[is_lit]]
            leaf_id[is_lit] = np.where(v > 0, 1 + v, 1 + num_vars - v)
            leaf_id[k == AND] = ONE  # no children: the empty conjunction
            canon[nodes] = leaf_map[leaf_id]
            continue
        lengths = start[nodes + 1] - start[nodes]
        kids = canon[children[_ranges(start[nodes], start[nodes + 1])]]
        m = nodes.size
        seg = np.repeat(np.arange(m), lengths)
        is_and = k == AND
        absorbing = np.where(is_and, ZERO, ONE)
        identity = np.where(is_and, ONE, ZERO)
        absorbed = np.bincount(seg[kids == absorbing[seg]], minlength=m) > 0
        keep = kids != identity[seg]
        kept = np.bincount(seg[keep], minlength=m)
        result = np.where(absorbed, absorbing, identity)
        single = ~absorbed & (kept == 1)
        only_child = np.zeros(m, dtype=np.int64)
        only_child[seg[keep]] = kids[keep]
        result[single] = only_child[single]
        grow = ~absorbed & (kept >= 2)
        if grow.any():
            edge = keep & grow[seg]
            new_seg, new_kids = seg[edge], kids[edge]
            order = np.lexsort((new_kids, new_seg))
            result[grow] = dag.add(k[grow], kept[grow], new_kids[order])
        canon[nodes] = result
    return dag, canon[roots]


# ---------------------------------------------------------------------------- pass 2
def _var_sets(dag: _Dag, num_vars: int, free: np.ndarray) -> np.ndarray:
    """Bitset of the free variables each node mentions: ``[num_nodes, words]`` uint64."""
    kind, start, children = dag.arrays()
    words = (num_vars + 64) // 64
    bits = np.zeros((dag.size, words), dtype=np.uint64)
    var = np.arange(1, num_vars + 1)
    var = var[free[var]]
    for ids in (1 + var, 1 + num_vars + var):
        bits[ids, var // 64] = np.left_shift(np.uint64(1), (var % 64).astype(np.uint64))
    levels = _levels(_heights(start, children, dag.size))
    for nodes in levels[1:]:
        flat = children[_ranges(start[nodes], start[nodes + 1])]
        seg_start = np.zeros(nodes.size, dtype=np.int64)
        np.cumsum((start[nodes + 1] - start[nodes])[:-1], out=seg_start[1:])
        bits[nodes] = np.bitwise_or.reduceat(bits[flat], seg_start, axis=0)
    return bits


def _bit_pairs(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, var)`` for every set bit of a ``[rows, words]`` uint64 bitset."""
    unpacked = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")
    row, var = np.nonzero(unpacked)
    return row, var


def _smooth(dag: _Dag, roots: np.ndarray, num_vars: int, free: np.ndarray) -> np.ndarray:
    """Conjoin each OR child (and each root) with the tautologies of the variables it misses.

    One shared node ``T_M = AND(v OR -v for v in M)`` serves every place that misses the same
    set ``M``, so each smoothed edge costs one edge to ``T_M`` rather than ``|M|`` edges.
    """
    bits = _var_sets(dag, num_vars, free)
    kind, start, children = dag.arrays()
    parent = np.repeat(np.arange(dag.size), np.diff(start))
    or_edge = np.flatnonzero(kind[parent] == OR)

    all_free = np.zeros(bits.shape[1], dtype=np.uint64)
    var = np.flatnonzero(free)
    np.bitwise_or.at(all_free, var // 64, np.left_shift(np.uint64(1), (var % 64).astype(np.uint64)))
    missing = np.concatenate(
        [
            bits[parent[or_edge]] & ~bits[children[or_edge]],
            all_free[None, :] & ~bits[roots],
        ]
    )
    missing[or_edge.size :][roots == ZERO] = 0  # a false root has no models to smooth
    base = np.concatenate([children[or_edge], roots])
    where = np.flatnonzero(missing.any(axis=1))
    if where.size == 0:
        return roots
    sets, set_of = np.unique(missing[where], axis=0, return_inverse=True)
    set_of = set_of.reshape(-1)
    row, var = _bit_pairs(sets)  # row-major: each set's variables are contiguous

    needed = np.unique(var)
    taut = np.full(num_vars + 1, -1, dtype=np.int64)
    taut[needed] = dag.add(
        np.full(needed.size, OR),
        np.full(needed.size, 2),
        np.stack([1 + needed, 1 + num_vars + needed], axis=1).ravel(),
    )
    size = np.bincount(row, minlength=sets.shape[0])
    first = np.cumsum(size) - size
    tautology = taut[var[first]]  # a one-variable set is that variable's tautology
    multi = size > 1
    in_multi = multi[row]
    tautology[multi] = dag.add(np.full(int(multi.sum()), AND), size[multi], taut[var[in_multi]])

    # AND(c, T_M), with an AND child c spliced in (AND(c's children, T_M)): an AND directly
    # under an AND would cost an extra pair of layers.
    b = base[where]
    is_and = kind[b] == AND
    lo = np.where(is_and, start[b], children.size + np.cumsum(~is_and) - 1)
    hi = np.where(is_and, start[b + 1], lo + 1)
    own = np.concatenate([children, b[~is_and]])[_ranges(lo, hi)]
    lengths = hi - lo + 1
    last = np.cumsum(lengths) - 1
    kids = np.empty(int(lengths.sum()), dtype=np.int64)
    kids[last] = tautology[set_of]
    mask = np.ones(kids.size, dtype=bool)
    mask[last] = False
    kids[mask] = own
    smoothed = dag.add(np.full(where.size, AND), lengths, kids)
    edges = where < or_edge.size
    new_children = children.copy()
    new_children[or_edge[where[edges]]] = smoothed[edges]
    _, _, all_children = dag.arrays()
    dag.set_children(np.concatenate([new_children, all_children[children.size :]]))
    roots = roots.copy()
    roots[where[~edges] - or_edge.size] = smoothed[~edges]
    return roots


# ---------------------------------------------------------------------------- pass 3
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a cheap, well-spread 64-bit hash."""
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _deduplicate(dag: _Dag, roots: np.ndarray) -> np.ndarray:
    """Merge identical nodes (same kind, same multiset of children) bottom-up."""
    kind, start, children = dag.arrays()
    children = children.copy()
    rep = np.arange(dag.size, dtype=np.int64)
    levels = _levels(_heights(start, children, dag.size))
    with np.errstate(over="ignore"):
        for nodes in levels[1:]:
            lo, hi = start[nodes], start[nodes + 1]
            flat = _ranges(lo, hi)
            lengths = hi - lo
            seg = np.repeat(np.arange(nodes.size), lengths)
            kids = rep[children[flat]]
            kids = kids[np.lexsort((kids, seg))]
            children[flat] = kids
            position = flat - np.repeat(lo, lengths)
            edge_hash = _mix(kids * np.int64(1_000_003) + position)
            node_hash = np.zeros(nodes.size, dtype=np.uint64)
            np.add.at(node_hash, seg, edge_hash)
            key = _mix(node_hash ^ _mix(kind[nodes] * 131 + lengths))
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            candidate = nodes[first[inverse]]
            if not _same_nodes(kind, start, children, nodes, candidate):
                candidate = _exact_representatives(kind, start, children, nodes)
            rep[nodes] = candidate
    dag.set_children(children)
    return rep[roots]


def _same_nodes(kind, start, children, nodes, candidate) -> bool:
    """Whether each node equals its candidate representative (guards hash collisions)."""
    lengths = start[nodes + 1] - start[nodes]
    if not np.array_equal(lengths, start[candidate + 1] - start[candidate]):
        return False
    if not np.array_equal(kind[nodes], kind[candidate]):
        return False
    a = children[_ranges(start[nodes], start[nodes + 1])]
    b = children[_ranges(start[candidate], start[candidate + 1])]
    return np.array_equal(a, b)


def _exact_representatives(kind, start, children, nodes) -> np.ndarray:
    """Slow exact grouping by ``(kind, children)``, used only after a hash collision."""
    seen: dict[tuple, int] = {}
    out = np.empty(nodes.size, dtype=np.int64)
    for i, node in enumerate(nodes.tolist()):
        key = (int(kind[node]), *children[start[node] : start[node + 1]].tolist())
        out[i] = seen.setdefault(key, node)
    return out


# ---------------------------------------------------------------------------- pass 4
def _reachable(start, children, roots, n) -> np.ndarray:
    seen = np.zeros(n, dtype=bool)
    frontier = np.unique(roots)
    seen[frontier] = True
    while frontier.size:
        kids = np.unique(children[_ranges(start[frontier], start[frontier + 1])])
        frontier = kids[~seen[kids]]
        seen[frontier] = True
    return seen


def _layerize(dag: _Dag, roots: np.ndarray, num_vars: int) -> list[Layer]:
    kind, start, children = dag.arrays()
    n = dag.size
    alive = _reachable(start, children, roots, n)
    alive[: dag.num_leaves] = True  # layer 0 always holds every constant and literal

    # Heights with parity: leaves 0, AND odd, OR even, each above all of its children.
    height = _heights(start, children, n)
    ph = np.zeros(n, dtype=np.int64)
    for nodes in _levels(height)[1:]:
        nodes = nodes[alive[nodes]]
        if nodes.size == 0:
            continue
        seg_start = np.zeros(nodes.size, dtype=np.int64)
        np.cumsum((start[nodes + 1] - start[nodes])[:-1], out=seg_start[1:])
        top = np.maximum.reduceat(ph[children[_ranges(start[nodes], start[nodes + 1])]], seg_start)
        want_odd = kind[nodes] == AND
        nxt = top + 1
        ph[nodes] = np.where((nxt % 2 == 1) == want_odd, nxt, nxt + 1)

    # The last layer holds one entry per root, in order: a root of the top height in place (a
    # repeated one as a clone with the same children), every other root as a unary copy of
    # itself one layer below.
    last = max(1, int(ph[roots].max()))
    in_place = ph[roots] == last

    # Each node is carried up (by unary copies) to the highest layer that reads it.
    parent = np.repeat(np.arange(n), np.diff(start))
    live_edge = alive[parent]
    need = ph.copy()
    np.maximum.at(need, children[live_edge], ph[parent[live_edge]] - 1)
    np.maximum.at(need, roots[~in_place], last - 1)
    need[~alive] = -1

    layers: list[Layer] = []
    position = np.full(n, -1, dtype=np.int64)  # position of a node in the previous layer
    prev = np.arange(dag.num_leaves)
    position[prev] = prev
    internal = alive & (np.arange(n) >= dag.num_leaves)
    for k in range(1, last + 1):
        if k < last:
            own = np.flatnonzero(internal & (ph == k))
            copies = np.flatnonzero(alive & (ph < k) & (need >= k))
        else:
            own = roots[in_place]
            copies = roots[~in_place]
            order_last = np.concatenate([np.flatnonzero(in_place), np.flatnonzero(~in_place)])
        own_len = start[own + 1] - start[own]
        child_pos = np.concatenate(
            [position[children[_ranges(start[own], start[own + 1])]], position[copies]]
        )
        lengths = np.concatenate([own_len, np.ones(copies.size, dtype=np.int64)])
        members = np.concatenate([own, copies])
        seg = np.repeat(np.arange(members.size), lengths)
        if k < last:
            # Order nodes by their first child: neighbours then read neighbouring rows.
            first_child = np.full(members.size, np.iinfo(np.int64).max)
            np.minimum.at(first_child, seg, child_pos)
            order = np.argsort(first_child, kind="stable")
        else:
            # Member j is root order_last[j]; put root i at position i.
            order = np.empty(members.size, dtype=np.int64)
            order[order_last] = np.arange(members.size)
        # Reorder segments and sort children within each segment.
        rank = np.empty(members.size, dtype=np.int64)
        rank[order] = np.arange(members.size)
        edge_order = np.lexsort((child_pos, rank[seg]))
        child_pos = child_pos[edge_order]
        lengths = lengths[order]
        members = members[order]
        if np.any(child_pos < 0):
            raise AssertionError("internal error: an edge skips a layer")
        layers.append(Layer.build(child_pos, lengths, prev.size, "and" if k % 2 else "or"))
        position[prev] = -1
        prev = members
        position[prev] = np.arange(prev.size)
    return layers
