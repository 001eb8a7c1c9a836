"""Compile a :class:`~trilay.engine.circuit.Circuit` into layers.

One bottom-up walk over the reachable nodes (numba loops, :mod:`trilay.engine._passes`; cost
linear in the circuit whatever its depth) does:

1. **Constant propagation**: true/false and literals the caller fixes fold away (an AND with a
   false child is false, true children drop out, ...); single-child nodes collapse into their
   child. Children are sorted, so equal nodes get equal child lists.
2. **Smoothing** (optional): every node is made to mention a set of variables, an OR's
   children its own, each root every free variable, by conjoining the tautologies
   ``v OR -v`` of what a node misses. The tautologies are leaves, and a run of them is a
   shared AND from a segment tree over the variables, so an OR of ``n`` literals costs
   ``O(n log n)`` edges, not ``n^2``. Where the circuit allows it (SDDs: every AND's children
   on disjoint variable intervals, in vtree order), each node is smoothed once, to an interval
   of variables shared by an OR and its children (:func:`~trilay.engine._passes.interval_targets`),
   and each distinct gap's tautologies are made once; otherwise each OR child is smoothed to
   its OR's variables, kept as interval lists (variables numbered in the order a depth-first
   walk meets them), not ``V``-bit sets.
3. **Deduplication** by hash-consing: a node equal to an earlier one (same kind, same
   children) is that node, so identical sub-circuits within and across roots merge.

Then **layering**: AND nodes sit at odd layers and OR nodes at even ones, each at the lowest
such layer above all of its children, so a layer is one reduction; a node reads its children
from any lower layer (no pass-through copies: the layered circuit has exactly the DAG's
nodes). Layers are the DAG's depth; within a layer, nodes are ordered by their first child.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _passes
from .circuit import LITERAL, Circuit
from .compiled import MAX_INDEX, CompiledCircuit
from .errors import CircuitError

ZERO, ONE = _passes.ZERO, _passes.ONE


def compile_circuit(
    circuit: Circuit, *, smooth: bool = True, fixed: dict[int, bool] | None = None
) -> CompiledCircuit:
    kind, lit, start, children, roots = circuit.arrays()
    num_vars = circuit.num_vars
    if roots.size == 0:
        raise CircuitError("the circuit is empty: it has no roots (use add_root)")
    if not isinstance(smooth, bool):
        raise CircuitError(f"smooth must be True or False, got {smooth!r}")
    fixed = _check_fixed(fixed, num_vars)
    if not _passes.is_topological(start, children):
        raise CircuitError(
            "the circuit's nodes are not in creation order (a child after its parent)"
        )

    order = np.flatnonzero(_passes.reachable(start, children, roots, kind.size))
    free = np.ones(num_vars + 1, dtype=np.bool_)
    free[0] = False
    free[list(fixed)] = False
    leaf_of_literal = _leaf_of_literal(kind, lit, num_vars, fixed)
    ok = False
    if smooth:  # smoothing to intervals in literal order, where they are disjoint (SDDs)
        pos, num_pos = _passes.literal_positions(kind, lit, free)
        ok, targets = _passes.interval_targets(
            kind, start, children, order, leaf_of_literal, pos, num_vars
        )
    if not ok:  # smoothing each OR to its children's variables (any d-DNNF), or none
        pos, num_pos = _passes.variable_positions(kind, lit, start, children, roots, free)
        targets = _passes.no_targets()
    dkind, dstart, dkids, root_ids = _passes.build_dag(
        kind, start, children, order, roots, num_vars, leaf_of_literal, smooth, pos, num_pos,
        targets,
    )  # fmt: skip
    num_leaves = 2 * num_vars + 2 + (num_vars if smooth else 0)
    alive = _passes.reachable(dstart, dkids, root_ids, dkind.size)
    layer = _passes.layer_of(dkind, dstart, dkids, dkind.size, num_leaves, alive)
    num_layers = int(layer.max(initial=0))
    row, row_start, kid_row = _passes.assign_rows(dstart, dkids, layer, num_leaves, num_layers)
    num_rows = int(row_start[-1])
    num_edges = int(np.diff(dstart)[row >= 0].sum())  # the live nodes' (the rows') edges
    if num_rows > MAX_INDEX or num_edges > MAX_INDEX:
        raise CircuitError(
            f"the compiled circuit has {num_rows} nodes and {num_edges} edges; the kernels' "
            "int32 indices allow at most 2^31 - 1 of each"
        )
    child, offsets = _passes.row_csr(dstart, kid_row, row, num_leaves, num_rows)
    # Drop the empty layers (an OR-only circuit has no AND layer); AND layers are the odd ones.
    nonempty = np.flatnonzero(np.diff(row_start)[1 : num_layers + 1] > 0) + 1
    return CompiledCircuit(
        num_vars=num_vars,
        smooth=smooth,
        fixed=fixed,
        layer_kinds=np.where(nonempty % 2 == 1, "and", "or").tolist(),
        row_starts=[0, num_leaves] + row_start[nonempty + 1].tolist(),
        child=torch.from_numpy(child),
        offsets=torch.from_numpy(offsets),
        roots=torch.from_numpy(row[root_ids].astype(np.int64)),
    )


def _leaf_of_literal(kind, lit, num_vars: int, fixed: dict[int, bool]) -> np.ndarray:
    """For each IR literal node, its leaf: ``+v`` is ``1 + v``, ``-v`` is ``1 + V + v``; a
    fixed variable's literals are the constants."""
    v = np.abs(lit)
    leaf = np.where(lit > 0, 1 + v, 1 + num_vars + v)
    for var, value in fixed.items():
        leaf[(lit == var) & (kind == LITERAL)] = ONE if value else ZERO
        leaf[(lit == -var) & (kind == LITERAL)] = ZERO if value else ONE
    return np.where(kind == LITERAL, leaf, -1)


def _check_fixed(fixed, num_vars: int) -> dict[int, bool]:
    """``fixed`` as ``{variable: bool}``: int keys in ``1..num_vars`` (not bools), bool values
    (or the ints 0 and 1); anything else is a :class:`CircuitError`, not a truthiness guess."""
    if fixed is None:
        return {}
    if not isinstance(fixed, dict):
        raise CircuitError(f"fixed must be a dict {{variable: bool}}, got {type(fixed).__name__}")
    out = {}
    for var, value in fixed.items():
        if isinstance(var, (bool, np.bool_)) or not isinstance(var, (int, np.integer)):
            raise CircuitError(f"fixed variable {var!r} is not an integer variable id")
        if not 1 <= var <= num_vars:
            raise CircuitError(
                f"fixed variable {var} is not one of 1..{num_vars} (variables are 1-based)"
            )
        if isinstance(value, (bool, np.bool_)):
            out[int(var)] = bool(value)
        elif isinstance(value, (int, np.integer)) and value in (0, 1):
            out[int(var)] = bool(value)
        else:
            raise CircuitError(
                f"fixed value of variable {var} must be True/False (or 1/0), got {value!r}"
            )
    return out
