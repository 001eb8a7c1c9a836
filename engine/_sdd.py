"""The SDD reader's node loop, compiled with numba (cached on disk, as the compiler's passes).

libsdd stores each decision node's elements inline, so an element ``(prime, sub)`` recurs in
every decision node that has it: on a 3-CNF with 60 variables, 12.6 M elements of which 3.5 M
distinct. The reader makes each distinct element one AND node (a hash table keyed by the pair),
so the IR, and every pass over it, is the SDD's size rather than its elements' multiset.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .circuit import AND, LITERAL, OR

#: Node ids fit 31 bits: an element's key packs its prime's and its sub's into one int64.
MAX_NODES = 2**31 - 1
_EMPTY = np.int64(-1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _slot(key, mask):
    """Fibonacci hashing: the high bits of ``key * golden`` (they mix every bit of the key)."""
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(32)) & mask


@njit(cache=True)
def sdd_local_dag(line_kind, line_lit, line_k, refs):
    """The local DAG (see :mod:`trilay.engine.io`) of an SDD file's node lines, in file order.

    ``line_kind[i]`` is FALSE/TRUE/LITERAL/OR (a ``D`` line), ``line_lit[i]`` a literal line's
    literal, ``line_k[i]`` a ``D`` line's element count; ``refs`` the ``D`` lines' prime and sub
    references, two per element in file order, each the index of the node line that defines it
    (an earlier one). A ``D`` line becomes an OR over AND(prime, sub) nodes, one per distinct
    pair across the file, made before the first OR that has it. Returns ``(kind, lit,
    child_start, children, root)``; the root is the last line's node.
    """
    n_lines = line_kind.size
    n_elements = refs.size // 2
    kind = np.empty(n_lines + n_elements, np.int64)
    lit = np.zeros(kind.size, np.int64)
    child_start = np.zeros(kind.size + 1, np.int64)
    children = np.empty(3 * n_elements, np.int64)
    node_of_line = np.empty(n_lines, np.int64)
    keys = np.full(64, _EMPTY, np.int64)  # (prime node << 32 | sub node), at most half full
    values = np.empty(keys.size, np.int64)
    distinct = 0
    size = 0
    edges = 0
    at = 0
    element_nodes = np.empty(0, np.int64)
    for i in range(n_lines):
        k = line_k[i] if line_kind[i] == OR else 0
        if element_nodes.size < k:
            element_nodes = np.empty(2 * k, np.int64)
        for j in range(k):
            prime = node_of_line[refs[at]]
            sub = node_of_line[refs[at + 1]]
            at += 2
            if 2 * (distinct + 1) > keys.size:
                keys, values = _rehashed(keys, values)
            mask = keys.size - 1
            key = (prime << 32) | sub
            slot = _slot(key, mask)
            while keys[slot] != _EMPTY and keys[slot] != key:
                slot = (slot + 1) & mask
            if keys[slot] == _EMPTY:
                keys[slot] = key
                values[slot] = size
                distinct += 1
                kind[size] = AND
                children[edges] = prime
                children[edges + 1] = sub
                edges += 2
                size += 1
                child_start[size] = edges
            element_nodes[j] = values[slot]
        kind[size] = line_kind[i]
        if line_kind[i] == LITERAL:
            lit[size] = line_lit[i]
        children[edges : edges + k] = element_nodes[:k]
        edges += k
        node_of_line[i] = size
        size += 1
        child_start[size] = edges
    return kind[:size], lit[:size], child_start[: size + 1], children[:edges], size - 1


@njit(cache=True)
def _rehashed(keys, values):
    bigger = np.full(2 * keys.size, _EMPTY, np.int64)
    moved = np.empty(bigger.size, np.int64)
    mask = bigger.size - 1
    for slot in range(keys.size):
        if keys[slot] != _EMPTY:
            s = _slot(keys[slot], mask)
            while bigger[s] != _EMPTY:
                s = (s + 1) & mask
            bigger[s] = keys[slot]
            moved[s] = values[slot]
    return bigger, moved
