"""The SDD reader's node loop, compiled with numba (cached on disk, as the compiler's passes).

libsdd stores each decision node's elements inline, so an element ``(prime, sub)`` recurs in
every decision node that has it: on a 3-CNF with 60 variables, 12.6 M elements of which 3.5 M
distinct. The reader makes each distinct element one AND node (a hash table keyed by the pair),
so the IR, and every pass over it, is the SDD's size rather than its elements' multiset.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._passes import _grow
from .circuit import AND, FALSE, LITERAL, OR, TRUE

#: Node ids fit 31 bits: an element's key packs its prime's and its sub's into one int64.
MAX_NODES = 2**31 - 1
_EMPTY = np.int64(-1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _slot(key, mask):
    """Fibonacci hashing: the high bits of ``key * golden`` (they mix every bit of the key)."""
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(32)) & mask


@njit(cache=True)
def sdd_local_dag(line_kind, line_lit, line_vtree, line_k, refs):
    """The local DAG (see :mod:`trilay.engine.io`) of an SDD file's node lines.

    ``line_kind[i]`` is FALSE/TRUE/LITERAL/OR (a ``D`` line), ``line_lit[i]`` a literal line's
    literal and ``line_vtree[i]`` its vtree node, ``line_k[i]`` a ``D`` line's element count;
    ``refs`` the ``D`` lines' prime and sub references, two per element in file order, each the
    index of the node line that defines it (an earlier one). The literals come first, ordered
    by their vtree nodes (libsdd numbers them in order, so this is the vtree's variable order,
    which the compiler's smoothing uses: :func:`trilay.engine._passes.literal_positions`), ties
    in file order; then the other lines in file order, a ``D`` line as an OR over AND(prime,
    sub) nodes, one per distinct pair across the file, made before the first OR that has it.
    Returns ``(kind, lit, child_start, children, root)``; the root is the last line's node.
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
    literal_lines = np.flatnonzero(line_kind == LITERAL)
    for i in literal_lines[np.argsort(line_vtree[literal_lines], kind="mergesort")]:
        kind[size] = LITERAL
        lit[size] = line_lit[i]
        node_of_line[i] = size
        size += 1
        child_start[size] = edges
    for i in range(n_lines):
        if line_kind[i] == LITERAL:
            continue
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
        children[edges : edges + k] = element_nodes[:k]
        edges += k
        node_of_line[i] = size
        size += 1
        child_start[size] = edges
    return kind[:size], lit[:size], child_start[: size + 1], children[:edges], node_of_line[-1]


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


#: The lexical rules' blanks (:mod:`trilay.engine.io`: tokens are separated by ASCII blanks),
#: as a byte class; io's grammar uses the same table.
BLANK = np.zeros(256, np.bool_)
BLANK[list(b" \t\r\x0b\x0c\n")] = True
_NEWLINE, _MINUS, _ZERO = ord("\n"), ord("-"), ord("0")
_MAX_DIGITS = 18  # as the vectorized reader's numpy path: below 10^18 < MAX_INT


@njit(cache=True)
def _skip_blanks(data, pos):
    """The position of the next token byte or newline at or after ``pos``."""
    while pos < data.size and data[pos] != _NEWLINE and BLANK[data[pos]]:
        pos += 1
    return pos


@njit(cache=True)
def _integer(data, pos, signed):
    """``(ok, value, end)`` of the integer token at ``pos`` (after blanks, on this line):
    ``ok`` only for ``-?[0-9]{1,18}`` (the sign only where ``signed``) ended by a blank."""
    pos = _skip_blanks(data, pos)
    negative = signed and pos < data.size and data[pos] == _MINUS
    if negative:
        pos += 1
    value = 0
    digits = 0
    while pos < data.size and not BLANK[data[pos]]:
        d = np.int64(data[pos]) - _ZERO
        if d < 0 or d > 9 or digits == _MAX_DIGITS:
            return False, 0, pos
        value = 10 * value + d
        digits += 1
        pos += 1
    return digits > 0, -value if negative else value, pos


@njit(cache=True)
def _at_line_end(data, pos):
    pos = _skip_blanks(data, pos)
    return pos >= data.size or data[pos] == _NEWLINE


@njit(cache=True)
def scan_sdd(data, num_lines, in_vtree, max_vars):
    """One pass over an SDD file's bytes (``data``, ``num_lines`` its newline count + 1) for
    :func:`sdd_local_dag`'s input: ``(ok, line_kind, line_lit, line_vtree, line_k, refs)``.

    ``ok`` is true only for a well-formed file in the common form (node ids below twice the
    line count, integers of at most 18 digits) whose literals' variables are ``<= max_vars``
    and, when ``in_vtree`` is not empty, marked there; the arrays then equal the vectorized
    reader's. Anything else (a malformed file, or a rarer valid form) returns ``ok`` false:
    the vectorized reader then decides, and names the first error in file order.
    """
    fail = (
        False,
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty(0, np.int64),
    )
    line_kind = np.empty(num_lines, np.int64)
    line_lit = np.zeros(num_lines, np.int64)
    line_vtree = np.zeros(num_lines, np.int64)
    line_k = np.zeros(num_lines, np.int64)
    refs = np.empty(max(16, data.size // 8), np.int64)
    line_of_id = np.full(2 * num_lines + 1024, -1, np.int64)
    nrefs = 0
    count = 0
    declared = -1
    pos = 0
    while pos < data.size:
        pos = _skip_blanks(data, pos)
        if pos >= data.size:
            break
        first = data[pos]
        if first == _NEWLINE:
            pos += 1
            continue
        if first == ord("c"):  # a comment: skip the line
            while pos < data.size and data[pos] != _NEWLINE:
                pos += 1
            continue
        start = pos
        while pos < data.size and not BLANK[data[pos]]:
            pos += 1
        is_header = pos - start == 3 and first == ord("s")
        if is_header and data[start + 1] == ord("d") and data[start + 2] == ord("d"):
            if declared >= 0:
                return fail
            ok, declared, pos = _integer(data, pos, False)
            if not ok or not _at_line_end(data, pos):
                return fail
            continue
        if pos - start != 1 or declared < 0:
            return fail
        ok, node_id, pos = _integer(data, pos, False)
        if not ok or node_id >= line_of_id.size or line_of_id[node_id] >= 0:
            return fail
        if first == ord("F") or first == ord("T"):
            line_kind[count] = FALSE if first == ord("F") else TRUE
        elif first == ord("L") or first == ord("D"):
            ok, vtree, pos = _integer(data, pos, False)
            if not ok:
                return fail
            line_vtree[count] = vtree
            ok, value, pos = _integer(data, pos, first == ord("L"))
            if not ok:
                return fail
            if first == ord("L"):
                var = abs(value)
                outside = in_vtree.size > 0 and (var >= in_vtree.size or not in_vtree[var])
                if var == 0 or var > max_vars or outside:
                    return fail
                line_kind[count] = LITERAL
                line_lit[count] = value
            else:
                line_kind[count] = OR
                line_k[count] = value
                for _ in range(2 * value):
                    ok, ref, pos = _integer(data, pos, False)
                    if not ok or ref >= line_of_id.size or line_of_id[ref] < 0:
                        return fail
                    refs = _grow(refs, nrefs + 1)
                    refs[nrefs] = line_of_id[ref]
                    nrefs += 1
        else:
            return fail
        if not _at_line_end(data, pos):
            return fail
        line_of_id[node_id] = count
        count += 1
    if count == 0 or declared != count:
        return fail
    return (
        True,
        line_kind[:count],
        line_lit[:count],
        line_vtree[:count],
        line_k[:count],
        refs[:nrefs],
    )
