"""Fused Triton circuit kernels: gather + segment reduce in one pass, with a hand-written backward.

Layout: node values ``[num_nodes, batch]`` with batch contiguous, one buffer for the whole
circuit (:class:`trilay.engine.CompiledCircuit`): a layer is a block of rows whose nodes read
their children from any lower rows. A forward program owns a tile of ``BLOCK_N`` nodes x
``BLOCK_B`` batch columns, walks the nodes' edges, gathers each child row (one coalesced load
per child) and reduces in registers: no edge-sized tensor and no atomics. The backward walks
the layers top down; a program owns a tile of rows and gathers their gradient from their
parents' (all in higher layers, so final) over the transposed CSR: atomic-free and
deterministic. A row's parents are listed AND parents first, then OR parents, each part with
its own reduction's derivative.

Two consecutive layers can run as one forward launch (:func:`pair_forward`: the upper layer's
programs compute their children in the lower layer in registers, other programs the lower
nodes no upper node reads) and two consecutive row blocks as one backward launch
(:func:`pair_backward`: the lower rows' programs recompute the gradients of their parents in
the upper block), halving the dependent launches of a deep circuit (planned by
:func:`trilay.kernels.fusion.plan_fusion`).

Reductions: ``sum``, ``prod``, ``logsumexp`` (online, one ``exp`` per edge), ``max``, ``min``,
and the fuzzy forms ``lukasiewicz_and`` (``max(0, sum - (n - 1))``), ``lukasiewicz_or``
(``min(1, sum)``) and ``prob_sum`` (``1 - prod(1 - x)``). A NaN input gives a NaN value (and
NaN gradients through max/min), as torch's reductions do.

Dtypes: float32 and float64 compute in their own precision (the engine evaluates float16 and
bfloat16 in float32). On CPU tensors the kernels run only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``import triton``).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .errors import CircuitError, DeviceError, SemiringError
from .reference import apply_function, needs_grad

#: Reductions the Triton kernels implement, and their codes inside the kernels.
TRITON_REDUCTIONS = {
    "sum": 0,
    "prod": 1,
    "logsumexp": 2,
    "max": 3,
    "min": 4,
    "lukasiewicz_and": 5,
    "lukasiewicz_or": 6,
    "prob_sum": 7,
}
_SUM, _PROD, _LSE, _MAX, _MIN, _LUK_AND, _LUK_OR, _PROB_SUM = range(8)
# What a masked lane loads, by code: the reduction's identity (prob_sum: x = 0, factor 1).
_NEUTRAL = (0.0, 1.0, float("-inf"), float("-inf"), float("inf"), 0.0, 0.0, 0.0)
_NEEDS_AUX = (_PROD, _LUK_AND, _LUK_OR, _PROB_SUM)
_NEEDS_ARG = (_PROD, _MAX, _MIN, _PROB_SUM)
# The smallest normal number: a product of non-zero factors below it (or not finite) lost
# digits to underflow (overflow), and the backward recomputes the other factors' product.
_TINY = {torch.float32: 1.1754943508222875e-38, torch.float64: 2.2250738585072014e-308}


# ---------------------------------------------------------------------------- forward
@triton.jit
def _tile(offsets_ptr, n, batch, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's rows and batch columns, their masks, and each row's CSR segment."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n
    col_mask = cols < batch
    start = tl.load(offsets_ptr + rows, mask=row_mask, other=0)
    length = tl.load(offsets_ptr + rows + 1, mask=row_mask, other=0) - start
    where = rows[:, None].to(tl.int64) * batch + cols[None, :]
    return cols, row_mask, col_mask, start, length, where


@triton.jit
def _store(
    out_ptr,
    aux_ptr,
    arg_ptr,
    where,
    mask,
    out,
    aux,
    arg,
    REDUCE: tl.constexpr,
    STATE: tl.constexpr,
):
    """Write a node tile's value and, for a backward (``STATE``) where the reduction has
    them, its aux and arg."""
    tl.store(out_ptr + where, out, mask=mask)
    if STATE and (REDUCE == 1 or REDUCE == 5 or REDUCE == 6 or REDUCE == 7):
        tl.store(aux_ptr + where, aux, mask=mask)
    if STATE and (REDUCE == 1 or REDUCE == 3 or REDUCE == 4 or REDUCE == 7):
        tl.store(arg_ptr + where, arg, mask=mask)


@triton.jit
def _step(acc, total, zeros, nonzero, arg, x, candidate, REDUCE: tl.constexpr):
    """Fold one child value ``x`` (edge ``candidate``) into the running state."""
    if REDUCE == 0 or REDUCE == 5 or REDUCE == 6:
        acc += x
    elif REDUCE == 1 or REDUCE == 7:
        factor = x
        if REDUCE == 7:
            factor = 1.0 - x
        is_zero = factor == 0.0
        zeros += is_zero.to(tl.int32)
        nonzero *= tl.where(is_zero, 1.0, factor)
    elif REDUCE == 2:
        # Online logsumexp with one exp per edge: exp(-|x - m|) rescales either the running
        # total (new max) or the new term. -inf terms add nothing; a NaN makes the total NaN.
        t = tl.exp(-tl.abs(x - acc))
        t = tl.where(x == float("-inf"), 0.0, t)
        total = tl.where(x > acc, total * t + 1.0, total + t)
        acc = tl.maximum(acc, x)
    else:
        # The first NaN wins and stays (nothing compares greater than NaN), as amax's NaN.
        if REDUCE == 3:
            better = x > acc
        else:
            better = x < acc
        better = better | ((x != x) & (acc == acc))
        arg = tl.where(better, candidate, arg)
        acc = tl.where(better, x, acc)
    return acc, total, zeros, nonzero, arg


@triton.jit
def _finish(acc, total, zeros, nonzero, arg, length, REDUCE: tl.constexpr):
    """The node's value and what its backward needs: ``(out, aux, arg)``."""
    aux = acc
    if REDUCE == 1 or REDUCE == 7:
        # The backward needs the product of the non-zero factors and how many are zero; it
        # does not divide out[p] (for prob_sum, 1 - out[p] would lose the small products).
        aux = nonzero
        arg = zeros
        acc = tl.where(zeros > 0, nonzero * 0.0, nonzero)  # a NaN (or inf) factor: NaN, as IEEE
        if REDUCE == 7:
            acc = 1.0 - acc
    elif REDUCE == 2:
        acc = acc + tl.log(total)  # all -inf: -inf + log(0) = -inf
    elif REDUCE == 5:
        aux = acc - (length[:, None] - 1).to(acc.dtype)
        acc = tl.where(aux != aux, aux, tl.maximum(aux, 0.0))
    elif REDUCE == 6:
        acc = tl.where(acc != acc, acc, tl.minimum(acc, 1.0))
    return acc, aux, arg


@triton.jit
def _start(
    start, NEUTRAL: tl.constexpr, dtype: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr
):
    """The reduction's state before any edge: ``(acc, total, zeros, nonzero, arg)``."""
    acc = tl.full((BLOCK_N, BLOCK_B), NEUTRAL, dtype)
    total = tl.zeros((BLOCK_N, BLOCK_B), dtype)  # logsumexp: sum of exp(x - acc)
    zeros = tl.zeros((BLOCK_N, BLOCK_B), tl.int32)  # prod / prob_sum: zero factors seen
    nonzero = tl.full((BLOCK_N, BLOCK_B), 1.0, dtype)  # their product of non-zero factors
    arg = tl.zeros((BLOCK_N, BLOCK_B), tl.int32) + start[:, None]  # max / min: best edge
    return acc, total, zeros, nonzero, arg


@triton.jit
def _reduce_segments(
    values_ptr,
    child_ptr,
    start,
    length,
    row_mask,
    cols,
    col_mask,
    batch,
    REDUCE: tl.constexpr,
    NEUTRAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Each row's segment ``child[start:start + length]`` gathered from ``values`` (one
    coalesced row load per edge) and folded: the reduction's raw state. Masked-off rows have
    ``length`` 0."""
    acc, total, zeros, nonzero, arg = _start(
        start, NEUTRAL, values_ptr.dtype.element_ty, BLOCK_N, BLOCK_B
    )
    for j in range(0, tl.max(length, axis=0)):
        edge_mask = row_mask & (j < length)
        edge = start + j
        child = tl.load(child_ptr + edge, mask=edge_mask, other=0).to(tl.int64)
        mask = edge_mask[:, None] & col_mask[None, :]
        x = tl.load(values_ptr + child[:, None] * batch + cols[None, :], mask=mask, other=NEUTRAL)
        acc, total, zeros, nonzero, arg = _step(
            acc, total, zeros, nonzero, arg, x, edge[:, None], REDUCE
        )
    return acc, total, zeros, nonzero, arg


@triton.jit
def _layer_fwd_kernel(
    values_ptr,  # [rows, batch] the rows the edges read (the circuit's value buffer)
    child_ptr,  # [E] int32 row of values each edge reads
    offsets_ptr,  # [n + 1] int32 CSR offsets of each node's (or hub chunk's) edges
    out_ptr,  # [n, batch] this layer's rows (a view of the value buffer)
    aux_ptr,  # [n, batch] what the backward needs beyond out (see _edge_grad)
    arg_ptr,  # [n, batch] int32: edge of the max/min; zero factors of prod/prob_sum
    n,
    batch,
    REDUCE: tl.constexpr,
    NEUTRAL: tl.constexpr,  # what a masked lane loads: leaves the reduction unchanged
    PARTIAL: tl.constexpr,  # rows are hub chunks: store the raw state for _layer_combine_kernel
    STATE: tl.constexpr,  # store aux and arg for a backward (not for inference)
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    cols, node_mask, col_mask, start, length, where = _tile(offsets_ptr, n, batch, BLOCK_N, BLOCK_B)
    tile_mask = node_mask[:, None] & col_mask[None, :]
    acc, total, zeros, nonzero, arg = _reduce_segments(
        values_ptr,
        child_ptr,
        start,
        length,
        node_mask,
        cols,
        col_mask,
        batch,
        REDUCE,
        NEUTRAL,
        BLOCK_N,
        BLOCK_B,
    )
    if PARTIAL:
        if REDUCE == 2:
            acc = acc + tl.log(total)  # partial logsumexps combine by logsumexp
        if REDUCE == 1 or REDUCE == 7:
            arg = zeros
        tl.store(out_ptr + where, acc, mask=tile_mask)
        tl.store(aux_ptr + where, nonzero, mask=tile_mask)
        tl.store(arg_ptr + where, arg, mask=tile_mask)
    else:
        out, aux, arg = _finish(acc, total, zeros, nonzero, arg, length, REDUCE)
        _store(out_ptr, aux_ptr, arg_ptr, where, tile_mask, out, aux, arg, REDUCE, STATE)


@triton.jit
def _layer_combine_kernel(
    part_out_ptr,  # [S, batch] raw state of each hub chunk (from PARTIAL forward)
    part_aux_ptr,  # [S, batch] product of its non-zero factors (prod, prob_sum)
    part_arg_ptr,  # [S, batch] int32 its arg edge (max, min) or zero count (prod, prob_sum)
    chunk_of_node_ptr,  # [n + 1] int32 node -> its chunks
    offsets_ptr,  # [n + 1] int32 the layer's edge CSR (fan-in, for lukasiewicz_and)
    out_ptr,
    aux_ptr,
    arg_ptr,
    n,
    batch,
    REDUCE: tl.constexpr,
    NEUTRAL: tl.constexpr,
    STATE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    cols, node_mask, col_mask, first, count, where = _tile(
        chunk_of_node_ptr, n, batch, BLOCK_N, BLOCK_B
    )
    _, _, _, start, length, _ = _tile(offsets_ptr, n, batch, BLOCK_N, BLOCK_B)
    tile_mask = node_mask[:, None] & col_mask[None, :]
    acc, total, zeros, nonzero, arg = _start(
        start, NEUTRAL, part_out_ptr.dtype.element_ty, BLOCK_N, BLOCK_B
    )
    for j in range(0, tl.max(count, axis=0)):
        chunk_mask = node_mask & (j < count)
        mask = chunk_mask[:, None] & col_mask[None, :]
        at = (first + j)[:, None].to(tl.int64) * batch + cols[None, :]
        if REDUCE == 1 or REDUCE == 7:
            nonzero *= tl.load(part_aux_ptr + at, mask=mask, other=1.0)
            zeros += tl.load(part_arg_ptr + at, mask=mask, other=0)
        else:
            x = tl.load(part_out_ptr + at, mask=mask, other=NEUTRAL)
            candidate = tl.load(part_arg_ptr + at, mask=mask, other=0)
            # Chunks come in edge order and only a strictly better value wins: ties keep the
            # first child, as in the unsplit kernel.
            acc, total, zeros, nonzero, arg = _step(
                acc, total, zeros, nonzero, arg, x, candidate, REDUCE
            )
    out, aux, arg = _finish(acc, total, zeros, nonzero, arg, length, REDUCE)
    _store(out_ptr, aux_ptr, arg_ptr, where, tile_mask, out, aux, arg, REDUCE, STATE)


@triton.jit
def _pair_fwd_kernel(
    values_ptr,  # [rows, batch] the value buffer: rows below the lower layer are final
    child_ptr,  # [E] int32 every edge's child row
    low_offsets_ptr,  # [n_low + 1] int32 the lower layer's CSR
    offsets_ptr,  # [n + 1] int32 the upper layer's CSR
    low_out_ptr,  # [n_low, batch] the lower layer's rows, aux and arg (views)
    low_aux_ptr,
    low_arg_ptr,
    out_ptr,  # [n, batch] the upper layer's rows, aux and arg
    aux_ptr,
    arg_ptr,
    orphan_ptr,  # [n_orphans] int32 the lower nodes no upper node reads
    n,
    n_orphans,
    low_first,  # row of the lower layer's first node
    n_low,
    batch,
    LOW_REDUCE: tl.constexpr,
    LOW_NEUTRAL: tl.constexpr,
    REDUCE: tl.constexpr,
    NEUTRAL: tl.constexpr,
    STATE: tl.constexpr,  # store aux and arg for a backward
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Two layers in one launch. The first programs own tiles of upper nodes: each reduces its
    children, computing a child in the lower layer in registers from the rows below (and
    storing it: a lower node with several parents is stored by each, the same value every
    time; the fusion plan bounds that recomputation) and loading any other child. The last
    programs own tiles of the orphans, the lower nodes no upper node reads."""
    upper_tiles = tl.cdiv(n, BLOCK_N)
    if tl.program_id(0) >= upper_tiles:
        rows = (tl.program_id(0) - upper_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_mask = rows < n_orphans
        col_mask = cols < batch
        low = tl.load(orphan_ptr + rows, mask=row_mask, other=0)
        start = tl.load(low_offsets_ptr + low, mask=row_mask, other=0)
        length = tl.load(low_offsets_ptr + low + 1, mask=row_mask, other=0) - start
        acc, total, zeros, nonzero, arg = _reduce_segments(
            values_ptr,
            child_ptr,
            start,
            length,
            row_mask,
            cols,
            col_mask,
            batch,
            LOW_REDUCE,
            LOW_NEUTRAL,
            BLOCK_N,
            BLOCK_B,
        )
        out, aux, arg = _finish(acc, total, zeros, nonzero, arg, length, LOW_REDUCE)
        where = low[:, None].to(tl.int64) * batch + cols[None, :]
        mask = row_mask[:, None] & col_mask[None, :]
        _store(low_out_ptr, low_aux_ptr, low_arg_ptr, where, mask, out, aux, arg, LOW_REDUCE, STATE)
    else:
        cols, node_mask, col_mask, start, length, where = _tile(
            offsets_ptr, n, batch, BLOCK_N, BLOCK_B
        )
        tile_mask = node_mask[:, None] & col_mask[None, :]
        acc, total, zeros, nonzero, arg = _start(
            start, NEUTRAL, values_ptr.dtype.element_ty, BLOCK_N, BLOCK_B
        )
        for j in range(0, tl.max(length, axis=0)):
            edge_mask = node_mask & (j < length)
            edge = start + j
            child = tl.load(child_ptr + edge, mask=edge_mask, other=0)
            low = child - low_first
            in_low = edge_mask & (low >= 0) & (low < n_low)
            mask = edge_mask[:, None] & col_mask[None, :]
            low_mask = in_low[:, None] & col_mask[None, :]
            low_start = tl.load(low_offsets_ptr + low, mask=in_low, other=0)
            low_length = tl.load(low_offsets_ptr + low + 1, mask=in_low, other=0) - low_start
            l_acc, l_total, l_zeros, l_nonzero, l_arg = _reduce_segments(
                values_ptr,
                child_ptr,
                low_start,
                low_length,
                in_low,
                cols,
                col_mask,
                batch,
                LOW_REDUCE,
                LOW_NEUTRAL,
                BLOCK_N,
                BLOCK_B,
            )
            low_out, low_aux, low_arg = _finish(
                l_acc, l_total, l_zeros, l_nonzero, l_arg, low_length, LOW_REDUCE
            )
            low_where = low[:, None].to(tl.int64) * batch + cols[None, :]
            _store(
                low_out_ptr,
                low_aux_ptr,
                low_arg_ptr,
                low_where,
                low_mask,
                low_out,
                low_aux,
                low_arg,
                LOW_REDUCE,
                STATE,
            )
            other_mask = mask & ~low_mask
            loaded = tl.load(
                values_ptr + child[:, None].to(tl.int64) * batch + cols[None, :],
                mask=other_mask,
                other=NEUTRAL,
            )
            x = tl.where(low_mask, low_out, loaded)
            x = tl.where(mask, x, NEUTRAL)
            acc, total, zeros, nonzero, arg = _step(
                acc, total, zeros, nonzero, arg, x, edge[:, None], REDUCE
            )
        out, aux, arg = _finish(acc, total, zeros, nonzero, arg, length, REDUCE)
        _store(out_ptr, aux_ptr, arg_ptr, where, tile_mask, out, aux, arg, REDUCE, STATE)


# ---------------------------------------------------------------------------- backward
# d out[p] / d x[c] for an edge p -> c, by reduction (o = out[p], x = x[c]):
#   sum: 1              prod: with a[p] the product of the non-zero children and z[p] their
#                       zero count: a / x if x != 0 and z = 0; a if x = 0 and z = 1; else 0
#                       (never a division by zero). Where a lost digits to underflow or
#                       overflow (not a normal number), a / x is not the product of the
#                       others: that product is recomputed over p's edges.
#   logsumexp: exp(x - o) (0 when o = -inf)     max/min: 1 on the arg edge only (ties: the
#                       first child in CSR order takes the whole gradient); NaN when o is NaN
#   lukasiewicz_and: 1 if aux[p] = sum - (n - 1) >= 0     lukasiewicz_or: 1 if aux[p] = sum <= 1
#   prob_sum: the product of the others' (1 - x): the prod rule on 1 - x
@triton.jit
def _others_product(
    values_ptr, child_ptr, offsets_ptr, p_state, edge, cols, mask, batch, REDUCE: tl.constexpr
):
    """The product of node ``p``'s factors (``x``, or ``1 - x`` for prob_sum) other than edge
    ``edge``'s, by walking its edges: for the rows of ``mask`` only (where ``a / x`` failed)."""
    any_row = tl.max(mask.to(tl.int32), axis=1) > 0
    start = tl.load(offsets_ptr + p_state, mask=any_row, other=0)
    length = tl.load(offsets_ptr + p_state + 1, mask=any_row, other=0) - start
    product = tl.full(mask.shape, 1.0, values_ptr.dtype.element_ty)
    for j in range(0, tl.max(length, axis=0)):
        e = start + j
        e_mask = any_row & (j < length)
        c = tl.load(child_ptr + e, mask=e_mask, other=0).to(tl.int64)
        m = e_mask[:, None] & mask & (e[:, None] != edge)
        factor = tl.load(values_ptr + c[:, None] * batch + cols[None, :], mask=m, other=1.0)
        if REDUCE == 7:
            factor = tl.where(m, 1.0 - factor, 1.0)
        product *= factor
    return product


@triton.jit
def _edge_grad(
    g,
    out_ptr,
    aux_ptr,
    arg_ptr,
    values_ptr,
    child_ptr,
    offsets_ptr,
    at_out,
    at_state,
    p_state,
    cols,
    mask,
    edge,
    x,
    batch,
    REDUCE: tl.constexpr,
    TINY: tl.constexpr,
):
    """``g * d out[p] / d x`` for a tile of edges ``p -> c``: ``g`` the parents' gradient,
    ``at_out`` / ``at_state`` their offsets in the value buffer and in aux/arg (``p_state`` the
    parents' aux/arg rows), ``edge`` the edge ids, ``x`` the children's values (``1 - x`` for
    prob_sum); 0 where ``mask`` is off."""
    if REDUCE == 0:
        d = g
    elif REDUCE == 1 or REDUCE == 7:
        a = tl.load(aux_ptr + at_state, mask=mask, other=0.0)
        z = tl.load(arg_ptr + at_state, mask=mask, other=2)
        nonzero_x = x != 0.0
        others = tl.where(nonzero_x, a / tl.where(nonzero_x, x, 1.0), a)
        lost = mask & nonzero_x & (z == 0) & ~(tl.abs(a) >= TINY) & (a == a)
        lost = lost | (mask & nonzero_x & (z == 0) & (tl.abs(a) == float("inf")))
        if tl.max(tl.max(lost.to(tl.int32), axis=1), axis=0) > 0:
            exact = _others_product(
                values_ptr, child_ptr, offsets_ptr, p_state, edge, cols, lost, batch, REDUCE
            )
            others = tl.where(lost, exact, others)
        d = tl.where(z == (1 - nonzero_x.to(tl.int32)), g * others, 0.0)
    elif REDUCE == 2:
        o = tl.load(out_ptr + at_out, mask=mask, other=float("-inf"))
        d = tl.where(o == float("-inf"), 0.0, g * tl.exp(x - o))
    elif REDUCE == 3 or REDUCE == 4:
        a = tl.load(arg_ptr + at_state, mask=mask, other=-2)
        o = tl.load(out_ptr + at_out, mask=mask, other=0.0)
        d = tl.where(a == edge, g, 0.0)
        d = tl.where(o != o, o, d)
    elif REDUCE == 5:
        a = tl.load(aux_ptr + at_state, mask=mask, other=-1.0)
        d = tl.where(a >= 0.0, g, 0.0)
    else:
        a = tl.load(aux_ptr + at_state, mask=mask, other=2.0)
        d = tl.where(a <= 1.0, g, 0.0)
    return tl.where(mask, d, 0.0)


@triton.jit
def _part_grad(
    grad_ptr,
    out_ptr,
    aux_ptr,
    arg_ptr,
    values_ptr,
    child_ptr,
    offsets_ptr,
    parent_ptr,
    parent_edge_ptr,
    start,
    end,
    row_mask,
    x,
    cols,
    col_mask,
    batch,
    state_first,
    REDUCE: tl.constexpr,
    TINY: tl.constexpr,
):
    """``sum over the parent edges p -> c of grad[p] * d out[p] / d x`` over each row's
    transposed-CSR range ``[start, end)`` (one part: all its parents share ``REDUCE``);
    ``x`` the rows' values (``1`` where masked)."""
    if REDUCE == 7:
        x = 1.0 - x
    acc = tl.zeros(x.shape, x.dtype)
    count = tl.where(row_mask, end - start, 0)
    for j in range(0, tl.max(count, axis=0)):
        edge_mask = row_mask & (j < count)
        mask = edge_mask[:, None] & col_mask[None, :]
        idx = start + j
        parent = tl.load(parent_ptr + idx, mask=edge_mask, other=0).to(tl.int64)
        edge = tl.load(parent_edge_ptr + idx, mask=edge_mask, other=-1)
        at_out = parent[:, None] * batch + cols[None, :]
        p_state = parent - state_first
        at_state = p_state[:, None] * batch + cols[None, :]
        g = tl.load(grad_ptr + at_out, mask=mask, other=0.0)
        acc += _edge_grad(
            g,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            at_out,
            at_state,
            p_state,
            cols,
            mask,
            edge[:, None],
            x,
            batch,
            REDUCE,
            TINY,
        )
    return acc


@triton.jit
def _seeds(
    seeds_ptr, root_of_row_ptr, rows, row_mask, cols, col_mask, batch, like, SEEDED: tl.constexpr
):
    """What the roots pass down to ``rows``: ``seeds[root_of_row[row]]`` for a root row (its
    output's gradient, a repeated root's summed), 0 for the others (``root_of_row`` -1) and
    without ``SEEDED``."""
    acc = tl.zeros(like.shape, like.dtype)
    if SEEDED:
        root = tl.load(root_of_row_ptr + rows, mask=row_mask, other=-1)
        is_root = row_mask & (root >= 0)
        at = root[:, None].to(tl.int64) * batch + cols[None, :]
        acc = tl.load(seeds_ptr + at, mask=is_root[:, None] & col_mask[None, :], other=0.0)
    return acc


@triton.jit
def _rows_grad(
    grad_ptr,
    seeds_ptr,
    root_of_row_ptr,
    out_ptr,
    aux_ptr,
    arg_ptr,
    values_ptr,
    child_ptr,
    offsets_ptr,
    parent_offsets_ptr,
    parent_split_ptr,
    parent_ptr,
    parent_edge_ptr,
    rows,
    row_mask,
    cols,
    col_mask,
    batch,
    state_first,
    AND_REDUCE: tl.constexpr,
    OR_REDUCE: tl.constexpr,
    SEEDED: tl.constexpr,
    TINY: tl.constexpr,
):
    """The gradient of rows ``rows``: their seed plus their AND parents' and their OR
    parents' shares (the parents' gradients at ``grad_ptr``, final)."""
    where = rows[:, None].to(tl.int64) * batch + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(values_ptr + where, mask=mask, other=1.0)
    start = tl.load(parent_offsets_ptr + rows, mask=row_mask, other=0)
    split = tl.load(parent_split_ptr + rows, mask=row_mask, other=0)
    end = tl.load(parent_offsets_ptr + rows + 1, mask=row_mask, other=0)
    acc = _seeds(seeds_ptr, root_of_row_ptr, rows, row_mask, cols, col_mask, batch, x, SEEDED)
    acc += _part_grad(
        grad_ptr,
        out_ptr,
        aux_ptr,
        arg_ptr,
        values_ptr,
        child_ptr,
        offsets_ptr,
        parent_ptr,
        parent_edge_ptr,
        start,
        split,
        row_mask,
        x,
        cols,
        col_mask,
        batch,
        state_first,
        AND_REDUCE,
        TINY,
    )
    acc += _part_grad(
        grad_ptr,
        out_ptr,
        aux_ptr,
        arg_ptr,
        values_ptr,
        child_ptr,
        offsets_ptr,
        parent_ptr,
        parent_edge_ptr,
        split,
        end,
        row_mask,
        x,
        cols,
        col_mask,
        batch,
        state_first,
        OR_REDUCE,
        TINY,
    )
    return acc


# grad[c] = seed[c] + sum over the parent edges p -> c of grad[p] * d out[p] / d x[c].
@triton.jit
def _layer_bwd_kernel(
    grad_ptr,  # [rows, batch] the parents' gradients (final)
    out_ptr,  # [rows, batch] the parents' forward values
    aux_ptr,  # [rows - state_first, batch] the parents' forward aux
    arg_ptr,  # [rows - state_first, batch] int32 forward arg edge / zero count
    values_ptr,  # [rows, batch] the children's values (the value buffer)
    child_ptr,  # [E] int32, and
    offsets_ptr,  # [rows - state_first + 1] int32: the forward CSR (to recompute a product)
    parent_offsets_ptr,  # [rows + 1] int32 transposed CSR
    parent_split_ptr,  # [rows] int32 first OR parent edge of each row
    parent_ptr,  # [E] int32 parent row of each, in child order
    parent_edge_ptr,  # [E] int32 edge id of each, same order
    seeds_ptr,  # [roots, batch] what the roots pass down (SEEDED)
    root_of_row_ptr,  # [rows] int32 each row's index into seeds, -1 for a row no root is
    grad_out_ptr,  # where the rows' gradients go (VIRTUAL_ROWS: one row per chunk); in a
    # circuit the rows' own rows of grad_ptr, which no program of this launch reads
    chunk_offsets_ptr,  # VIRTUAL_ROWS: [T + 1] int32 chunks of the transposed CSR
    chunk_row_ptr,  # VIRTUAL_ROWS: [T] int32 the row of each chunk
    chunk_of_row_ptr,  # VIRTUAL_ROWS: [n + 1] int32 each row's first chunk (takes the seed)
    first_row,
    n_rows,  # rows first_row..first_row + n_rows - 1 (or chunks)
    batch,
    state_first,  # the first row aux/arg hold
    AND_REDUCE: tl.constexpr,
    OR_REDUCE: tl.constexpr,
    SEEDED: tl.constexpr,
    VIRTUAL_ROWS: tl.constexpr,  # rows are hub chunks: partial sums, to be summed per row
    TINY: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    local = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = local < n_rows
    col_mask = cols < batch
    mask = row_mask[:, None] & col_mask[None, :]
    if VIRTUAL_ROWS:
        rows = tl.load(chunk_row_ptr + local, mask=row_mask, other=0)
        where = rows[:, None].to(tl.int64) * batch + cols[None, :]
        x = tl.load(values_ptr + where, mask=mask, other=1.0)
        start = tl.load(chunk_offsets_ptr + local, mask=row_mask, other=0)
        end = tl.load(chunk_offsets_ptr + local + 1, mask=row_mask, other=0)
        split = tl.load(parent_split_ptr + rows, mask=row_mask, other=0)
        split = tl.minimum(tl.maximum(split, start), end)
        seeded_rows = row_mask
        if SEEDED:  # a row's first chunk takes its seed
            first = tl.load(chunk_of_row_ptr + rows - first_row, mask=row_mask, other=-1)
            seeded_rows = row_mask & (first == local)
        acc = _seeds(
            seeds_ptr, root_of_row_ptr, rows, seeded_rows, cols, col_mask, batch, x, SEEDED
        )
        acc += _part_grad(
            grad_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_ptr,
            parent_edge_ptr,
            start,
            split,
            row_mask,
            x,
            cols,
            col_mask,
            batch,
            state_first,
            AND_REDUCE,
            TINY,
        )
        acc += _part_grad(
            grad_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_ptr,
            parent_edge_ptr,
            split,
            end,
            row_mask,
            x,
            cols,
            col_mask,
            batch,
            state_first,
            OR_REDUCE,
            TINY,
        )
        tl.store(grad_out_ptr + local[:, None].to(tl.int64) * batch + cols[None, :], acc, mask=mask)
    else:
        rows = first_row + local
        acc = _rows_grad(
            grad_ptr,
            seeds_ptr,
            root_of_row_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_offsets_ptr,
            parent_split_ptr,
            parent_ptr,
            parent_edge_ptr,
            rows,
            row_mask,
            cols,
            col_mask,
            batch,
            state_first,
            AND_REDUCE,
            OR_REDUCE,
            SEEDED,
            TINY,
        )
        tl.store(grad_out_ptr + rows[:, None].to(tl.int64) * batch + cols[None, :], acc, mask=mask)


@triton.jit
def _pair_part_grad(
    grad_ptr,
    seeds_ptr,
    root_of_row_ptr,
    out_ptr,
    aux_ptr,
    arg_ptr,
    values_ptr,
    child_ptr,
    offsets_ptr,
    parent_offsets_ptr,
    parent_split_ptr,
    parent_ptr,
    parent_edge_ptr,
    start,
    end,
    row_mask,
    x,
    cols,
    col_mask,
    batch,
    state_first,
    up_first,
    n_up,
    REDUCE: tl.constexpr,
    AND_REDUCE: tl.constexpr,
    OR_REDUCE: tl.constexpr,
    TINY: tl.constexpr,
):
    """:func:`_part_grad` for rows whose parents may sit in the upper row block of a fused
    backward pair: such a parent's gradient is recomputed (:func:`_rows_grad`), not loaded."""
    if REDUCE == 7:
        x = 1.0 - x
    acc = tl.zeros(x.shape, x.dtype)
    count = tl.where(row_mask, end - start, 0)
    for j in range(0, tl.max(count, axis=0)):
        edge_mask = row_mask & (j < count)
        mask = edge_mask[:, None] & col_mask[None, :]
        idx = start + j
        parent = tl.load(parent_ptr + idx, mask=edge_mask, other=0)
        edge = tl.load(parent_edge_ptr + idx, mask=edge_mask, other=-1)
        in_up = edge_mask & (parent >= up_first) & (parent < up_first + n_up)
        recomputed = _rows_grad(
            grad_ptr,
            seeds_ptr,
            root_of_row_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_offsets_ptr,
            parent_split_ptr,
            parent_ptr,
            parent_edge_ptr,
            parent,
            in_up,
            cols,
            col_mask,
            batch,
            state_first,
            AND_REDUCE,
            OR_REDUCE,
            True,
            TINY,
        )
        parent = parent.to(tl.int64)
        at_out = parent[:, None] * batch + cols[None, :]
        p_state = parent - state_first
        at_state = p_state[:, None] * batch + cols[None, :]
        up_mask = in_up[:, None] & col_mask[None, :]
        g = tl.load(grad_ptr + at_out, mask=mask & ~up_mask, other=0.0)
        g = tl.where(up_mask, recomputed, g)
        acc += _edge_grad(
            g,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            at_out,
            at_state,
            p_state,
            cols,
            mask,
            edge[:, None],
            x,
            batch,
            REDUCE,
            TINY,
        )
    return acc


# Two row blocks' backward in one launch, for a fused pair (the lower block's rows first_row..,
# the upper block's up_first..): the first programs compute the upper rows' gradients as
# _layer_bwd_kernel does; the others the lower rows', recomputing the gradient of each parent
# in the upper block (its own parents are all higher, so final) instead of reading it.
@triton.jit
def _pair_bwd_kernel(
    grad_ptr,
    out_ptr,
    aux_ptr,
    arg_ptr,
    values_ptr,
    child_ptr,
    offsets_ptr,
    parent_offsets_ptr,
    parent_split_ptr,
    parent_ptr,
    parent_edge_ptr,
    seeds_ptr,
    root_of_row_ptr,
    first_row,
    n_rows,
    up_first,
    n_up,
    batch,
    state_first,
    AND_REDUCE: tl.constexpr,
    OR_REDUCE: tl.constexpr,
    TINY: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    upper_tiles = tl.cdiv(n_up, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    col_mask = cols < batch
    if tl.program_id(0) < upper_tiles:
        local = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = local < n_up
        rows = up_first + local
        acc = _rows_grad(
            grad_ptr,
            seeds_ptr,
            root_of_row_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_offsets_ptr,
            parent_split_ptr,
            parent_ptr,
            parent_edge_ptr,
            rows,
            row_mask,
            cols,
            col_mask,
            batch,
            state_first,
            AND_REDUCE,
            OR_REDUCE,
            True,
            TINY,
        )
    else:
        local = (tl.program_id(0) - upper_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = local < n_rows
        rows = first_row + local
        where = rows[:, None].to(tl.int64) * batch + cols[None, :]
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(values_ptr + where, mask=mask, other=1.0)
        start = tl.load(parent_offsets_ptr + rows, mask=row_mask, other=0)
        split = tl.load(parent_split_ptr + rows, mask=row_mask, other=0)
        end = tl.load(parent_offsets_ptr + rows + 1, mask=row_mask, other=0)
        acc = _seeds(seeds_ptr, root_of_row_ptr, rows, row_mask, cols, col_mask, batch, x, True)
        acc += _pair_part_grad(
            grad_ptr,
            seeds_ptr,
            root_of_row_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_offsets_ptr,
            parent_split_ptr,
            parent_ptr,
            parent_edge_ptr,
            start,
            split,
            row_mask,
            x,
            cols,
            col_mask,
            batch,
            state_first,
            up_first,
            n_up,
            AND_REDUCE,
            AND_REDUCE,
            OR_REDUCE,
            TINY,
        )
        acc += _pair_part_grad(
            grad_ptr,
            seeds_ptr,
            root_of_row_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            values_ptr,
            child_ptr,
            offsets_ptr,
            parent_offsets_ptr,
            parent_split_ptr,
            parent_ptr,
            parent_edge_ptr,
            split,
            end,
            row_mask,
            x,
            cols,
            col_mask,
            batch,
            state_first,
            up_first,
            n_up,
            OR_REDUCE,
            AND_REDUCE,
            OR_REDUCE,
            TINY,
        )
    mask = row_mask[:, None] & col_mask[None, :]
    tl.store(grad_ptr + rows[:, None].to(tl.int64) * batch + cols[None, :], acc, mask=mask)


# ---------------------------------------------------------------------------- launchers
#: Tests set this to allocate outputs filled with NaN, so an output a kernel leaves unwritten
#: fails loudly.
DEBUG_FILL_NAN = False


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if DEBUG_FILL_NAN:
        fill = float("nan") if dtype.is_floating_point else -(2**31)
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _tiles(batch: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_B)``: batch columns up to 128, at least 128 elements per tile.

    Triton 3.6 fails to compile tiles with fewer elements than threads (4 warps = 128).
    """
    block_b = min(128, triton.next_power_of_2(max(batch, 1)))
    return max(4, 128 // block_b), block_b


def _outputs(n: int, like: torch.Tensor, with_aux: bool, with_arg: bool):
    """``(out, aux, arg)`` for ``n`` rows of ``like``'s batch, dtype and device; aux and arg
    only where asked (``None`` otherwise)."""
    shape, device = (n, like.shape[1]), like.device
    out = _empty(*shape, dtype=like.dtype, device=device)
    aux = _empty(*shape, dtype=like.dtype, device=device) if with_aux else None
    arg = _empty(*shape, dtype=torch.int32, device=device) if with_arg else None
    return out, aux, arg


def _or(tensor: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A pointer argument the kernel does not touch for this reduction still needs a tensor."""
    return placeholder if tensor is None else tensor


def _launch(kernel, tiles_n: int, batch: int, args: tuple, **constexprs) -> None:
    """Launch ``kernel`` over ``tiles_n`` row tiles x the batch's column tiles (nothing when
    either is empty); ``tiles_n`` is a function of ``BLOCK_N``."""
    block_n, block_b = _tiles(batch)
    rows = tiles_n(block_n)
    if rows and batch:
        grid = (rows, triton.cdiv(batch, block_b))
        kernel[grid](*args, BLOCK_N=block_n, BLOCK_B=block_b, **constexprs)


def _row_tiles(n: int):
    return lambda block_n: triton.cdiv(n, block_n)


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not _interpreting():
        raise DeviceError(
            "the Triton kernels run on CUDA tensors, or on CPU under TRITON_INTERPRET=1 "
            "(set before importing triton); use backend='torch' on the CPU"
        )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _code(reduce: str) -> int:
    try:
        return TRITON_REDUCTIONS[reduce]
    except KeyError:
        raise SemiringError(
            f"unknown reduction {reduce!r}; expected one of {sorted(TRITON_REDUCTIONS)}"
        ) from None


def _tiny(dtype: torch.dtype) -> float:
    return _TINY[dtype]


def layer_fwd(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    partial: bool = False,
    state: bool = True,
    out: tuple | None = None,
):
    """Launch the forward kernel: ``(out, aux, arg)``, ``out: [n, B]`` the reduction of each
    node's rows ``values[child[offsets[i]:offsets[i+1]]]``; ``aux``/``arg`` are what the
    backward needs (``None`` where the reduction needs none, or without ``state``: for
    inference, only ``out`` is written). ``out``: the three tensors to write (views of the
    circuit's buffers) instead of new ones.

    ``partial``: ``offsets`` cuts hub nodes into chunks; every chunk's raw state is returned
    (all three tensors) for :func:`layer_combine`.
    """
    code = _code(reduce)
    _check_device(values)
    n = offsets.numel() - 1
    if out is None:
        out = _outputs(
            n,
            values,
            partial or (state and code in _NEEDS_AUX),
            partial or (state and code in _NEEDS_ARG),
        )
    result, aux, arg = out
    _launch(
        _layer_fwd_kernel,
        _row_tiles(n),
        values.shape[1],
        (values, child, offsets, result, _or(aux, result), _or(arg, child), n, values.shape[1]),
        REDUCE=code,
        NEUTRAL=_NEUTRAL[code],
        PARTIAL=partial,
        STATE=state,
    )
    return result, aux, arg


def layer_combine(
    part,
    chunk_of_node: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    state: bool = True,
    out: tuple | None = None,
):
    """Combine hub chunks' raw states (``part``, from ``layer_fwd(..., partial=True)``) into
    each node's ``(out, aux, arg)``, exactly as the unsplit kernel computes them (``aux`` and
    ``arg`` only with ``state``); ``out`` as in :func:`layer_fwd`."""
    code = _code(reduce)
    part_out, part_aux, part_arg = part
    n = offsets.numel() - 1
    if out is None:
        out = _outputs(n, part_out, state and code in _NEEDS_AUX, state and code in _NEEDS_ARG)
    result, aux, arg = out
    _launch(
        _layer_combine_kernel,
        _row_tiles(n),
        part_out.shape[1],
        (
            part_out,
            part_aux,
            part_arg,
            chunk_of_node,
            offsets,
            result,
            _or(aux, result),
            _or(arg, part_arg),
            n,
            part_out.shape[1],
        ),
        REDUCE=code,
        NEUTRAL=_NEUTRAL[code],
        STATE=state,
    )
    return result, aux, arg


def layer_bwd(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    aux: torch.Tensor | None,
    arg: torch.Tensor | None,
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    parent_edge: torch.Tensor,
    parent: torch.Tensor,
    parent_offsets: torch.Tensor,
    reduce: str,
    chunks=None,
) -> torch.Tensor:
    """Launch the backward kernel of one layer that reads ``values`` (``[n_below, B]``) and
    wrote ``out`` (``[n, B]``, with its ``aux``/``arg``): ``d loss / d values``,
    ``[n_below, B]``, from ``grad_out = d loss / d out`` over the transposed CSR. ``child`` /
    ``offsets`` are the layer's CSR (a product whose digits underflowed is recomputed there).

    With ``chunks = (chunk_offsets, segment_of_chunk)`` (a hub plan of the transposed CSR) the
    result is one partial gradient row per chunk (``[num_chunks, B]``).
    """
    code = _code(reduce)
    grad_out = grad_out.contiguous()
    n_below, batch = values.shape
    # The parents (rows of out / grad_out / aux / arg) and the children (rows of values /
    # grad_in) live in separate tensors here, unlike in the circuit's one buffer.
    split = parent_offsets[1:]  # one part: every parent shares the layer's reduction
    if chunks is None:
        n_rows, chunk_offsets, chunk_row = n_below, parent_offsets, parent_offsets
    else:
        chunk_offsets, chunk_row = chunks
        n_rows = chunk_row.numel()
    grad_in = _empty(n_rows, batch, dtype=values.dtype, device=values.device)
    args = (grad_out, out, _or(aux, out), _or(arg, parent_edge), values, child, offsets)
    args += (parent_offsets, split, parent, parent_edge, grad_out, parent_edge, grad_in)
    args += (chunk_offsets, chunk_row, chunk_offsets, 0, n_rows, batch, 0)
    _launch(
        _layer_bwd_kernel,
        _row_tiles(n_rows),
        batch,
        args,
        AND_REDUCE=code,
        OR_REDUCE=code,
        SEEDED=False,
        VIRTUAL_ROWS=chunks is not None,
        TINY=_tiny(values.dtype),
    )
    return grad_in


# ---------------------------------------------------------------------------- the circuit
class TritonLayer(NamedTuple):
    """One layer of a :class:`TritonCircuit`: its rows and edges (``(first, end)``), its
    reduction, and its hub plans as ``(chunk_offsets, chunk_of_segment, segment_of_chunk)``
    (``None`` where it has no hub): ``node_hub`` over its edge CSR, ``parent_hub`` over the
    transposed CSR of its rows (``segment_of_chunk`` naming rows)."""

    rows: tuple[int, int]
    edges: tuple[int, int]
    reduce: str
    node_hub: tuple | None = None
    parent_hub: tuple | None = None


class TritonCircuit(NamedTuple):
    """What :func:`circuit_forward_triton` needs, as views of a module's buffers (see
    :class:`trilay.engine.CompiledCircuit` for the index tensors) plus Python metadata.

    ``forward_pairs[k]``: layer ``k`` (0-based in ``layers``) runs fused with layer ``k + 1``,
    the tensor listing (as local rows, int32) its nodes layer ``k + 1`` does not read.
    ``backward_pairs``: the row blocks ``j`` (0: the leaves, ``k + 1``: ``layers[k]``) whose
    backward runs fused with block ``j + 1``. ``root_groups``: ``None`` when no root repeats,
    else ``(rows, positions, offsets)``: each distinct root row and the CSR of its positions
    among the roots (their gradients are summed without atomics)."""

    num_leaves: int
    leaf_hub: tuple | None
    layers: tuple[TritonLayer, ...]
    and_reduce: str
    or_reduce: str
    child: torch.Tensor
    offsets: torch.Tensor
    parent_offsets: torch.Tensor
    parent_split: torch.Tensor
    parent: torch.Tensor
    parent_edge: torch.Tensor
    roots: torch.Tensor
    root_of_row: torch.Tensor
    root_groups: tuple | None = None
    forward_pairs: dict | None = None
    backward_pairs: frozenset = frozenset()

    @property
    def num_nodes(self) -> int:
        return self.layers[-1].rows[1] if self.layers else self.num_leaves

    def needs_state(self) -> tuple[bool, bool]:
        """Whether some layer's reduction needs an aux tensor, an arg tensor."""
        codes = [_code(layer.reduce) for layer in self.layers]
        return any(c in _NEEDS_AUX for c in codes), any(c in _NEEDS_ARG for c in codes)


def _layer_views(circuit: TritonCircuit, layer: TritonLayer, values, aux, arg):
    """The layer's rows of the value buffer and of aux / arg (``None`` where absent), and
    its CSR offsets."""
    (lo, hi), n0 = layer.rows, circuit.num_leaves
    return (
        values[lo:hi],
        None if aux is None else aux[lo - n0 : hi - n0],
        None if arg is None else arg[lo - n0 : hi - n0],
        circuit.offsets[lo - n0 : hi - n0 + 1],
    )


def layer_forward(circuit: TritonCircuit, layer: TritonLayer, values, aux, arg, state: bool):
    """One layer's forward into its rows of ``values`` (and ``aux`` / ``arg`` with
    ``state``), split at hubs when it has a hub plan: each chunk of at most ``HUB_CHUNK``
    edges is reduced by its own program, then each node's chunks are combined."""
    out, out_aux, out_arg, offsets = _layer_views(circuit, layer, values, aux, arg)
    target = (out, out_aux, out_arg)
    if layer.node_hub is not None:
        chunk_offsets, chunk_of_node, _ = layer.node_hub
        part = layer_fwd(values, circuit.child, chunk_offsets, layer.reduce, partial=True)
        layer_combine(part, chunk_of_node, offsets, layer.reduce, state, out=target)
    else:
        layer_fwd(values, circuit.child, offsets, layer.reduce, state=state, out=target)


def pair_forward(
    circuit: TritonCircuit,
    low: TritonLayer,
    up: TritonLayer,
    orphans,
    values,
    aux,
    arg,
    state: bool,
):
    """The fused forward of two consecutive layers (``up`` reads ``low`` and lower rows) in
    one launch, writing both layers' rows exactly as :func:`layer_forward` would."""
    low_code, code = _code(low.reduce), _code(up.reduce)
    low_out, low_aux, low_arg, low_offsets = _layer_views(circuit, low, values, aux, arg)
    out, up_aux, up_arg, offsets = _layer_views(circuit, up, values, aux, arg)
    n, n_low, batch = up.rows[1] - up.rows[0], low.rows[1] - low.rows[0], values.shape[1]
    n_orphans = orphans.numel()
    args = (values, circuit.child, low_offsets, offsets)
    args += (low_out, _or(low_aux, low_out), _or(low_arg, orphans))
    args += (out, _or(up_aux, out), _or(up_arg, orphans), orphans)
    args += (n, n_orphans, low.rows[0], n_low, batch)
    _launch(
        _pair_fwd_kernel,
        lambda block_n: triton.cdiv(n, block_n) + triton.cdiv(n_orphans, block_n),
        batch,
        args,
        LOW_REDUCE=low_code,
        LOW_NEUTRAL=_NEUTRAL[low_code],
        REDUCE=code,
        NEUTRAL=_NEUTRAL[code],
        STATE=state,
    )


def _backward_args(circuit: TritonCircuit, grad, values, aux, arg):
    """The arguments every backward kernel starts with (see :func:`_layer_bwd_kernel`)."""
    return (
        grad,
        values,
        _or(aux, values),
        _or(arg, circuit.parent_edge),
        values,
        circuit.child,
        circuit.offsets,
        circuit.parent_offsets,
        circuit.parent_split,
        circuit.parent,
        circuit.parent_edge,
    )


def block_backward(circuit: TritonCircuit, rows, hub, seeds, grad, values, aux, arg) -> None:
    """The gradients of the rows ``rows = (first, end)`` (every parent's gradient already
    final in ``grad``; ``seeds`` what the roots pass down), written into ``grad``. A block with
    a hub plan of its transposed CSR gets partial gradients per chunk of at most ``HUB_CHUNK``
    parent edges, then summed per row: no atomics either way."""
    (lo, hi), batch = rows, values.shape[1]
    constexprs = dict(
        AND_REDUCE=_code(circuit.and_reduce),
        OR_REDUCE=_code(circuit.or_reduce),
        SEEDED=True,
        TINY=_tiny(values.dtype),
    )
    common = _backward_args(circuit, grad, values, aux, arg) + (seeds, circuit.root_of_row)
    if hub is None:
        args = common + (grad, circuit.parent_offsets, circuit.parent_offsets)
        args += (circuit.parent_offsets, lo, hi - lo, batch, circuit.num_leaves)
        _launch(
            _layer_bwd_kernel, _row_tiles(hi - lo), batch, args, VIRTUAL_ROWS=False, **constexprs
        )
        return
    chunk_offsets, chunk_of_row, chunk_row = hub
    n_chunks = chunk_row.numel()
    partial = _empty(n_chunks, batch, dtype=values.dtype, device=values.device)
    args = common + (partial, chunk_offsets, chunk_row, chunk_of_row, lo, n_chunks, batch)
    args += (circuit.num_leaves,)
    _launch(_layer_bwd_kernel, _row_tiles(n_chunks), batch, args, VIRTUAL_ROWS=True, **constexprs)
    chunks = torch.arange(n_chunks, dtype=torch.int32, device=values.device)
    layer_fwd(partial, chunks, chunk_of_row, "sum", state=False, out=(grad[lo:hi], None, None))


def pair_backward(circuit: TritonCircuit, low_rows, up_rows, seeds, grad, values, aux, arg) -> None:
    """The fused backward of two consecutive row blocks (``up_rows`` directly above
    ``low_rows``): both blocks' gradients in one launch, as :func:`block_backward` computes
    them."""
    (lo, hi), (up_lo, up_hi), batch = low_rows, up_rows, values.shape[1]
    args = _backward_args(circuit, grad, values, aux, arg) + (seeds, circuit.root_of_row)
    args += (lo, hi - lo, up_lo, up_hi - up_lo, batch, circuit.num_leaves)
    _launch(
        _pair_bwd_kernel,
        lambda block_n: triton.cdiv(up_hi - up_lo, block_n) + triton.cdiv(hi - lo, block_n),
        batch,
        args,
        AND_REDUCE=_code(circuit.and_reduce),
        OR_REDUCE=_code(circuit.or_reduce),
        TINY=_tiny(values.dtype),
    )


def _circuit_forward(leaves: torch.Tensor, circuit: TritonCircuit, state: bool):
    """The value buffer ``[num_nodes, B]`` (the leaves copied in, then every layer) and, with
    ``state``, the aux / arg buffers ``[num_nodes - num_leaves, B]`` the backward reads
    (``None`` where no reduction needs them)."""
    n0, batch = circuit.num_leaves, leaves.shape[1]
    rows = circuit.num_nodes
    values = _empty(rows, batch, dtype=leaves.dtype, device=leaves.device)
    values[:n0].copy_(leaves)
    with_aux, with_arg = circuit.needs_state() if state else (False, False)
    aux = _empty(rows - n0, batch, dtype=leaves.dtype, device=leaves.device) if with_aux else None
    arg = _empty(rows - n0, batch, dtype=torch.int32, device=leaves.device) if with_arg else None
    pairs = circuit.forward_pairs or {}
    k = 0
    while k < len(circuit.layers):
        if k in pairs:
            low, up = circuit.layers[k], circuit.layers[k + 1]
            pair_forward(circuit, low, up, pairs[k], values, aux, arg, state)
            k += 2
        else:
            layer_forward(circuit, circuit.layers[k], values, aux, arg, state)
            k += 1
    return values, aux, arg


def _root_seeds(grad_roots: torch.Tensor, circuit: TritonCircuit) -> torch.Tensor:
    """What each root row passes down, indexed by ``circuit.root_of_row``: the roots'
    gradients, a repeated root's summed (a CSR sum: no atomics)."""
    if circuit.root_groups is None:
        return grad_roots
    _, positions, offsets = circuit.root_groups
    return layer_fwd(grad_roots, positions, offsets, "sum", state=False)[0]


def _circuit_backward(grad_roots, values, aux, arg, circuit: TritonCircuit) -> torch.Tensor:
    """``d loss / d leaves`` (``[num_leaves, B]``) from ``grad_roots: [num_roots, B]``: the
    row blocks top down, each gathering its rows' gradients from their (final) parents and
    from the roots."""
    seeds = _root_seeds(grad_roots.contiguous(), circuit)
    grad = _empty(*values.shape, dtype=values.dtype, device=values.device)
    blocks = [((0, circuit.num_leaves), circuit.leaf_hub)]
    blocks += [(layer.rows, layer.parent_hub) for layer in circuit.layers]
    j = len(blocks) - 1
    while j >= 0:
        if j - 1 in circuit.backward_pairs:
            pair_backward(circuit, blocks[j - 1][0], blocks[j][0], seeds, grad, values, aux, arg)
            j -= 2
        else:
            block_backward(circuit, *blocks[j], seeds, grad, values, aux, arg)
            j -= 1
    return grad[: circuit.num_leaves]


def _state_tensors(values, aux, arg) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in (values, aux, arg) if t is not None)


def _unpack_state(circuit: TritonCircuit, tensors):
    """``(values, aux, arg)`` from :func:`_state_tensors`' tuple."""
    with_aux, with_arg = circuit.needs_state()
    values, rest = tensors[0], list(tensors[1:])
    aux = rest.pop(0) if with_aux else None
    arg = rest.pop(0) if with_arg else None
    return values, aux, arg


_NO_DOUBLE_BACKWARD = (
    "the Triton circuit backward is not differentiable (no double backward); use "
    "backend='torch' for higher-order gradients"
)


class CircuitFunction(torch.autograd.Function):
    """The whole circuit as one autograd node, for use under ``torch.func`` transforms.

    ``apply(leaves: [n_0, B], circuit)`` returns ``(values, [aux,] [arg,] roots)``: the value
    buffer and the state the backward reads are outputs (non-differentiable) rather than ctx
    attributes so that torch.func sees them; the roots ``[num_roots, B]`` are the one
    differentiable output. Under ``vmap`` the vmapped dimension joins the batch columns (one
    launch per layer for the whole vmapped batch), and the backward is itself a vmappable
    Function (:class:`_CircuitBackward`), so ``vmap(grad(f))`` and ``jacrev`` work too. Outside
    the transforms :class:`_EagerCircuitFunction` does the same with one output.
    """

    @staticmethod
    def forward(leaves: torch.Tensor, circuit: TritonCircuit):
        values, aux, arg = _circuit_forward(leaves, circuit, True)
        return (*_state_tensors(values, aux, arg), values.index_select(0, circuit.roots))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.circuit = inputs[1]
        ctx.mark_non_differentiable(*output[:-1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], *output[:-1])

    @staticmethod
    def backward(ctx, *grads):
        if grads[-1] is None:
            return None, None
        leaves, *state = ctx.saved_tensors
        return apply_function(_CircuitBackward, grads[-1], leaves, ctx.circuit, *state), None

    @staticmethod
    def vmap(info, in_dims, leaves, circuit):
        if in_dims[0] is None:
            state = CircuitFunction.apply(leaves, circuit)
            return state, (None,) * len(state)
        width = info.batch_size
        state = CircuitFunction.apply(_fold_vmapped(leaves, in_dims[0], width), circuit)
        return tuple(_unfold_vmapped(t, width) for t in state), (2,) * len(state)


class _CircuitBackward(torch.autograd.Function):
    """:func:`_circuit_backward` as a Function of its own, for its vmap rule (``vmap(grad(f))``
    runs the backward on vmapped tensors; ``jacrev`` vmaps the gradient alone). It has no
    backward itself: the Triton path is once differentiable. ``leaves`` (the values' leaf rows,
    unused here) is an input so that differentiating the gradient reaches that refusal rather
    than a silent zero."""

    @staticmethod
    def forward(grad_roots, leaves, circuit, *state):
        return _circuit_backward(grad_roots, *_unpack_state(circuit, state), circuit)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(_NO_DOUBLE_BACKWARD)

    @staticmethod
    def vmap(info, in_dims, grad_roots, leaves, circuit, *state):
        tensors = (grad_roots, leaves, *state)
        dims = (in_dims[0], in_dims[1], *in_dims[3:])
        if all(d is None for d in dims):
            return _CircuitBackward.apply(grad_roots, leaves, circuit, *state), None
        width = info.batch_size
        flat = [_fold_vmapped(t, d, width) for t, d in zip(tensors, dims, strict=True)]
        result = _CircuitBackward.apply(flat[0], flat[1], circuit, *flat[2:])
        return _unfold_vmapped(result, width), 2


class _EagerCircuitFunction(torch.autograd.Function):
    """:class:`CircuitFunction` outside ``torch.func`` transforms: the roots as the only
    output, the forward state saved on the ctx."""

    @staticmethod
    def forward(ctx, leaves: torch.Tensor, circuit: TritonCircuit):
        values, aux, arg = _circuit_forward(leaves, circuit, True)
        ctx.circuit = circuit
        ctx.save_for_backward(*_state_tensors(values, aux, arg))
        return values.index_select(0, circuit.roots)

    @staticmethod
    @once_differentiable  # differentiating its result raises (the kernels record no graph)
    def backward(ctx, grad):
        state = _unpack_state(ctx.circuit, ctx.saved_tensors)
        return _circuit_backward(grad, *state, ctx.circuit), None


def circuit_forward_triton(leaves: torch.Tensor, circuit: TritonCircuit) -> torch.Tensor:
    """The whole circuit with the fused kernels: ``leaves: [num_leaves, B]`` -> the roots
    ``[num_roots, B]``, differentiable (once) and composable with ``torch.func`` (``vmap``,
    ``grad``, ``vmap(grad)``, ``jacrev``). With no gradient to prepare (grad mode off, or
    ``leaves`` not requiring grad) it writes only the node values.

    Raises :class:`~trilay.kernels.errors.DeviceError` for CPU tensors outside the interpreter.
    """
    _check_device(leaves)
    leaves = leaves.contiguous()
    if not needs_grad(leaves):
        values, _, _ = _circuit_forward(leaves, circuit, False)
        return values.index_select(0, circuit.roots)
    if torch._C._are_functorch_transforms_active():
        return CircuitFunction.apply(leaves, circuit)[-1]
    return _EagerCircuitFunction.apply(leaves, circuit)


def _fold_vmapped(t: torch.Tensor, dim: int | None, width: int) -> torch.Tensor:
    """A vmapped ``[..., n, B]`` (vmapped dimension ``dim``) as ``[n, B * width]``: the
    vmapped dimension joins the batch columns, column ``b * width + w``. An unbatched tensor
    (``dim`` None) is repeated across the ``width`` columns of each of its own. Contiguous, as
    the kernels index rows by ``row * columns`` (a reshape can return a strided view, e.g.
    with stride 0 for a repeated tensor of one column)."""
    if dim is None:
        t = t.unsqueeze(-1).expand(*t.shape, width)
    else:
        t = t.movedim(dim, -1)  # [n, B, width]
    return t.reshape(t.shape[0], -1).contiguous()


def _unfold_vmapped(t: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`_fold_vmapped`: ``[n, B * width]`` -> ``[n, B, width]``."""
    return t.reshape(t.shape[0], -1, width)


# ---------------------------------------------------------------------------- the torch op
# One layer as a registered torch op (``torch.ops.trilay.layer_fwd``) with a fake kernel, an
# autograd formula and a vmap rule, so it composes with torch.compile and torch.func.vmap.
# Reductions without aux/arg return empty tensors there (an op cannot return None).


@torch.library.custom_op("trilay::layer_fwd", mutates_args=())
def _layer_fwd_op(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    parent_edge: torch.Tensor,
    parent: torch.Tensor,
    parent_offsets: torch.Tensor,
    reduce: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, aux, arg = layer_fwd(values, child, offsets, reduce)
    if aux is None:
        aux = values.new_empty(0)
    if arg is None:
        arg = values.new_empty(0, dtype=torch.int32)
    return out, aux, arg


@_layer_fwd_op.register_fake
def _(values, child, offsets, parent_edge, parent, parent_offsets, reduce):
    code = _code(reduce)
    shape = (offsets.shape[0] - 1, values.shape[1])
    out = values.new_empty(shape)
    aux = values.new_empty(shape if code in _NEEDS_AUX else (0,))
    arg = values.new_empty(shape if code in _NEEDS_ARG else (0,), dtype=torch.int32)
    return out, aux, arg


@torch.library.custom_op("trilay::layer_bwd", mutates_args=())
def _layer_bwd_op(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    aux: torch.Tensor,
    arg: torch.Tensor,
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    parent_edge: torch.Tensor,
    parent: torch.Tensor,
    parent_offsets: torch.Tensor,
    reduce: str,
) -> torch.Tensor:
    code = _code(reduce)
    return layer_bwd(
        grad_out,
        out,
        aux if code in _NEEDS_AUX else None,
        arg if code in _NEEDS_ARG else None,
        values,
        child,
        offsets,
        parent_edge,
        parent,
        parent_offsets,
        reduce,
    )


@_layer_bwd_op.register_fake
def _(grad_out, out, aux, arg, values, child, offsets, parent_edge, parent, parent_offsets, reduce):
    return torch.empty_like(values)


def _layer_setup_context(ctx, inputs, output):
    values, child, offsets, parent_edge, parent, parent_offsets, reduce = inputs
    ctx.save_for_backward(values, child, offsets, parent_edge, parent, parent_offsets, *output)
    ctx.reduce = reduce


def _layer_backward(ctx, grad_out, grad_aux, grad_arg):
    values, child, offsets, parent_edge, parent, parent_offsets, out, aux, arg = ctx.saved_tensors
    args = (grad_out, out, aux, arg, values, child, offsets, parent_edge, parent, parent_offsets)
    args += (ctx.reduce,)
    if torch._C._are_functorch_transforms_active():
        grad = _LayerBackwardFunction.apply(*args)
    else:
        grad = _layer_bwd_op(*args)
    return grad, None, None, None, None, None, None


_layer_fwd_op.register_autograd(_layer_backward, setup_context=_layer_setup_context)


# The Functions torch.library generates for custom ops (with register_autograd, or raising
# for an op without one) lack the setup_context torch.func requires (pytorch/pytorch#168393,
# open in torch 2.13): under torch.func the ops run inside these two Functions, whose
# generated vmap rules run the ops' own.
class _LayerFunction(torch.autograd.Function):
    """The layer op with its autograd formula, for ``torch.func`` transforms."""

    generate_vmap_rule = True
    setup_context = staticmethod(_layer_setup_context)
    backward = staticmethod(_layer_backward)

    @staticmethod
    def forward(values, child, offsets, parent_edge, parent, parent_offsets, reduce):
        return _layer_fwd_op(values, child, offsets, parent_edge, parent, parent_offsets, reduce)


class _LayerBackwardFunction(torch.autograd.Function):
    """The layer's backward op for ``torch.func`` transforms (``vmap(grad(f))``, ``jacrev``);
    once differentiable, as the circuit's."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        grad_out, out, aux, arg, values, child, offsets, parent_edge, parent, parent_offsets, reduce
    ):
        return _layer_bwd_op(
            grad_out,
            out,
            aux,
            arg,
            values,
            child,
            offsets,
            parent_edge,
            parent,
            parent_offsets,
            reduce,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(_NO_DOUBLE_BACKWARD)


@_layer_fwd_op.register_vmap
def _layer_vmap(info, in_dims, values, child, offsets, parent_edge, parent, parent_offsets, reduce):
    if any(d is not None for d in in_dims[1:]):
        raise NotImplementedError("trilay.layer vmaps over values only, not over the indices")
    if in_dims[0] is None:
        state = _layer_fwd_op(values, child, offsets, parent_edge, parent, parent_offsets, reduce)
        return state, (None, None, None)
    width = info.batch_size
    state = _layer_fwd_op(
        _fold_vmapped(values, in_dims[0], width),
        child,
        offsets,
        parent_edge,
        parent,
        parent_offsets,
        reduce,
    )
    # aux / arg are empty (shape [0]) for the reductions without them: not vmapped.
    results = tuple(_unfold_vmapped(t, width) if t.dim() == 2 else t for t in state)
    return results, tuple(2 if t.dim() == 3 else None for t in results)


@_layer_bwd_op.register_vmap
def _layer_bwd_vmap(
    info,
    in_dims,
    grad_out,
    out,
    aux,
    arg,
    values,
    child,
    offsets,
    parent_edge,
    parent,
    parent_offsets,
    reduce,
):
    """``vmap(grad(f))`` and ``jacrev`` run the layer's backward on vmapped tensors: as in the
    forward, the vmapped dimension joins the batch columns (unvmapped tensors are repeated
    across them), one launch for the whole vmapped batch."""
    if any(d is not None for d in in_dims[5:]):
        raise NotImplementedError("trilay.layer vmaps over values only, not over the indices")
    tensors, dims = (grad_out, out, aux, arg, values), in_dims[:5]
    indices = (child, offsets, parent_edge, parent, parent_offsets)
    if all(d is None for d in dims):
        return _layer_bwd_op(*tensors, *indices, reduce), None
    width = info.batch_size
    # The empty aux / arg placeholders of reductions without them pass as they are.
    flat = [
        t if d is None and t.dim() == 1 else _fold_vmapped(t, d, width)
        for t, d in zip(tensors, dims, strict=True)
    ]
    grad = _layer_bwd_op(*flat, *indices, reduce)
    return _unfold_vmapped(grad, width), 2


#: The index tensors :func:`check_layer_indices` has checked, by identity, with their versions.
_CHECKED: torch.utils.weak.WeakIdKeyDictionary = torch.utils.weak.WeakIdKeyDictionary()


def check_layer_indices(n_below, child, offsets, parent_edge, parent, parent_offsets) -> None:
    """Raise :class:`~trilay.kernels.errors.CircuitError` unless the index tensors are one
    layer's consistent CSR and transposed CSR over ``n_below`` rows. Checked once per set of
    tensors (and again after an in-place change); under ``torch.compile`` tracing the check
    runs when the traced function is first called eagerly, not on fake tensors."""
    indices = (child, offsets, parent_edge, parent, parent_offsets)
    if torch.compiler.is_compiling() or any(
        isinstance(t, torch._subclasses.FakeTensor) or t.device.type == "meta" for t in indices
    ):
        return
    key = (n_below, *((id(t), t._version) for t in indices))
    if _CHECKED.get(child) == key:
        return
    for name, t in zip(
        ("child", "offsets", "parent_edge", "parent", "parent_offsets"), indices, strict=True
    ):
        if (
            not isinstance(t, torch.Tensor)
            or t.dim() != 1
            or t.dtype not in (torch.int32, torch.int64)
        ):
            raise CircuitError(f"{name} must be a 1-D int32/int64 tensor")
    c, off, edge, par, p_off = (t.detach().cpu().long() for t in indices)
    e, n = c.numel(), off.numel() - 1

    def bad(problem: str) -> CircuitError:
        return CircuitError(f"inconsistent layer indices: {problem}")

    if n < 0 or off[0] != 0 or off[-1] != e or bool((off[1:] < off[:-1]).any()):
        raise bad(f"offsets must ascend from 0 to len(child) = {e}")
    if e and (c.min() < 0 or c.max() >= n_below):
        raise bad(f"child must hold rows of values, 0..{n_below - 1}")
    if p_off.numel() != n_below + 1 or p_off[0] != 0 or p_off[-1] != e:
        raise bad(f"parent_offsets must have {n_below + 1} entries from 0 to {e}")
    if bool((p_off[1:] < p_off[:-1]).any()) or edge.numel() != e or par.numel() != e:
        raise bad("parent_offsets must ascend; parent_edge and parent list every edge once")
    if e and (edge.min() < 0 or edge.max() >= e or torch.unique(edge).numel() != e):
        raise bad("parent_edge must be a permutation of the edges")
    row = torch.repeat_interleave(torch.arange(n_below), p_off.diff())
    node = torch.repeat_interleave(torch.arange(n), off.diff())
    if not (torch.equal(c[edge], row) and torch.equal(node[edge], par)):
        raise bad("the transposed CSR (parent_edge, parent) does not list the forward's edges")
    _CHECKED[child] = key


def layer(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    parent_edge: torch.Tensor,
    parent: torch.Tensor,
    parent_offsets: torch.Tensor,
    reduce: str,
) -> torch.Tensor:
    """One layer as a torch op: ``out[i] = reduce(values[child[offsets[i]:offsets[i+1]]])``.

    ``values: [n_below, B]`` float32/float64; the index tensors the layer's int32 CSR
    (``child: [E]`` rows of ``values``, ``offsets: [n + 1]``) and its transposed CSR
    (``parent_offsets: [n_below + 1]``; for each row, ``parent_edge`` its edges ascending and
    ``parent`` their nodes); ``reduce`` one of :data:`TRITON_REDUCTIONS`. Returns ``[n, B]``.
    Differentiable (hand-written backward), traceable by ``torch.compile``, batchable by
    ``torch.func.vmap`` over ``values``, and per-example gradients (``vmap(grad(f))``) run one
    backward launch for the whole batch.

    The index tensors are checked (ranges, ascending offsets, the transposed CSR the forward's
    own) the first time they are seen, and again after they change in place (a host read then,
    not in later calls). Raises :class:`~trilay.kernels.errors.CircuitError` for inconsistent
    indices and :class:`~trilay.kernels.errors.DeviceError` for CPU tensors outside the
    interpreter.
    """
    check_layer_indices(values.shape[0], child, offsets, parent_edge, parent, parent_offsets)
    args = (values, child, offsets, parent_edge, parent, parent_offsets, reduce)
    if torch._C._are_functorch_transforms_active():
        return _LayerFunction.apply(*args)[0]
    return _layer_fwd_op(*args)[0]
