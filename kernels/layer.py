"""Fused Triton layer op: gather + segment reduce in one pass, with a hand-written backward.

Layout as in :mod:`trilay.kernels.reference`: node values ``[num_nodes, batch]`` with batch
contiguous, a layer a CSR over the layer below. A forward program owns a tile of
``BLOCK_N`` output nodes x ``BLOCK_B`` batch columns, walks the nodes' edges, gathers each
child row (one coalesced load per child) and reduces in registers: no edge-sized tensor and no
atomics. The backward walks the transposed CSR (child -> parent edges) the same way, so it too
is atomic-free and deterministic. Two consecutive layers can run as one forward and one
backward launch (:func:`pair_forward`, :func:`pair_backward`, planned by :func:`plan_fusion`):
the upper layer's programs compute the lower layer's nodes in registers, halving the dependent
launches of a deep circuit.

Reductions: ``sum``, ``prod``, ``logsumexp`` (online, one ``exp`` per edge), ``max``, ``min``,
and the fuzzy forms ``lukasiewicz_and`` (``max(0, sum - (n - 1))``), ``lukasiewicz_or``
(``min(1, sum)``) and ``prob_sum`` (``1 - prod(1 - x)``).

Dtypes: float32 and float64 compute in their own precision (the engine evaluates float16 and
bfloat16 in float32). On CPU tensors the kernels run only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``import triton``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .errors import DeviceError, SemiringError
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
        # total (new max) or the new term. -inf terms add nothing.
        t = tl.exp(-tl.abs(x - acc))
        t = tl.where(x == float("-inf"), 0.0, t)
        total = tl.where(x > acc, total * t + 1.0, total + t)
        acc = tl.maximum(acc, x)
    else:
        if REDUCE == 3:
            better = x > acc
        else:
            better = x < acc
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
        acc = tl.where(zeros > 0, 0.0, nonzero)
        if REDUCE == 7:
            acc = 1.0 - acc
    elif REDUCE == 2:
        acc = acc + tl.log(total)  # all -inf: -inf + log(0) = -inf
    elif REDUCE == 5:
        aux = acc - (length[:, None] - 1).to(acc.dtype)
        acc = tl.maximum(aux, 0.0)
    elif REDUCE == 6:
        acc = tl.minimum(acc, 1.0)
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
    values_ptr,  # [n_below, batch] the layer below
    child_ptr,  # [E] int32 row of values each edge reads
    offsets_ptr,  # [n + 1] int32 CSR offsets of each node's (or hub chunk's) edges
    out_ptr,  # [n, batch]
    aux_ptr,  # [n, batch] what the backward needs beyond out (see _layer_bwd_kernel)
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
    values_ptr,  # [n_below, batch] the layer below the lower layer
    low_child_ptr,  # [E_low] int32 the lower layer's CSR
    low_offsets_ptr,  # [n_low + 1] int32
    child_ptr,  # [E] int32 the upper layer's CSR, over the lower layer's nodes
    offsets_ptr,  # [n + 1] int32
    low_out_ptr,  # [n_low, batch] the lower layer's state, as _layer_fwd_kernel writes it
    low_aux_ptr,
    low_arg_ptr,
    out_ptr,  # [n, batch] the upper layer's state
    aux_ptr,
    arg_ptr,
    n,
    batch,
    LOW_REDUCE: tl.constexpr,
    LOW_NEUTRAL: tl.constexpr,
    REDUCE: tl.constexpr,
    NEUTRAL: tl.constexpr,
    STATE: tl.constexpr,  # store both layers' state for a backward; else only the upper out
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Two layers in one launch: each upper node reduces its children, computing each child
    (a lower node) in registers from the rows below. A lower node with several parents is
    computed once per parent and stored by each, the same value every time (the fusion plan
    bounds that recomputation); every lower node has a parent, so every row is written."""
    cols, node_mask, col_mask, start, length, where = _tile(offsets_ptr, n, batch, BLOCK_N, BLOCK_B)
    tile_mask = node_mask[:, None] & col_mask[None, :]
    acc, total, zeros, nonzero, arg = _start(
        start, NEUTRAL, values_ptr.dtype.element_ty, BLOCK_N, BLOCK_B
    )

    for j in range(0, tl.max(length, axis=0)):
        edge_mask = node_mask & (j < length)
        edge = start + j
        low = tl.load(child_ptr + edge, mask=edge_mask, other=0)
        mask = edge_mask[:, None] & col_mask[None, :]
        low_start = tl.load(low_offsets_ptr + low, mask=edge_mask, other=0)
        low_length = tl.load(low_offsets_ptr + low + 1, mask=edge_mask, other=0) - low_start

        low_acc, low_total, low_zeros, low_nonzero, low_arg = _reduce_segments(
            values_ptr,
            low_child_ptr,
            low_start,
            low_length,
            edge_mask,
            cols,
            col_mask,
            batch,
            LOW_REDUCE,
            LOW_NEUTRAL,
            BLOCK_N,
            BLOCK_B,
        )
        low_out, low_aux, low_arg = _finish(
            low_acc, low_total, low_zeros, low_nonzero, low_arg, low_length, LOW_REDUCE
        )
        if STATE:
            low_where = low[:, None].to(tl.int64) * batch + cols[None, :]
            _store(
                low_out_ptr,
                low_aux_ptr,
                low_arg_ptr,
                low_where,
                mask,
                low_out,
                low_aux,
                low_arg,
                LOW_REDUCE,
                True,
            )
        x = tl.where(mask, low_out, NEUTRAL)
        acc, total, zeros, nonzero, arg = _step(
            acc, total, zeros, nonzero, arg, x, edge[:, None], REDUCE
        )

    out, aux, arg = _finish(acc, total, zeros, nonzero, arg, length, REDUCE)
    _store(out_ptr, aux_ptr, arg_ptr, where, tile_mask, out, aux, arg, REDUCE, STATE)


# d out[p] / d x[c] for an edge p -> c, by reduction (o = out[p], x = x[c]):
#   sum: 1              prod: with a[p] the product of the non-zero children and z[p] their
#                       zero count: a / x if x != 0 and z = 0; a if x = 0 and z = 1; else 0
#                       (never a division by zero)
#   logsumexp: exp(x - o) (0 when o = -inf)     max/min: 1 on the arg edge only (ties: the
#                       first child in CSR order takes the whole gradient)
#   lukasiewicz_and: 1 if aux[p] = sum - (n - 1) >= 0     lukasiewicz_or: 1 if aux[p] = sum <= 1
#   prob_sum: the product of the others' (1 - x): the prod rule on 1 - x
@triton.jit
def _edge_grad(g, out_ptr, aux_ptr, arg_ptr, at, mask, edge, x, REDUCE: tl.constexpr):
    """``g * d out[p] / d x`` for a tile of edges ``p -> c``: ``g`` the parents' gradient,
    ``at`` their rows' offsets, ``edge`` the edge ids, ``x`` the children's values (``1 - x``
    for prob_sum); 0 where ``mask`` is off."""
    if REDUCE == 0:
        d = g
    elif REDUCE == 1 or REDUCE == 7:
        a = tl.load(aux_ptr + at, mask=mask, other=0.0)
        z = tl.load(arg_ptr + at, mask=mask, other=2)
        nonzero_x = x != 0.0
        others = tl.where(nonzero_x, a / tl.where(nonzero_x, x, 1.0), a)
        d = tl.where(z == (1 - nonzero_x.to(tl.int32)), g * others, 0.0)
    elif REDUCE == 2:
        o = tl.load(out_ptr + at, mask=mask, other=float("-inf"))
        d = tl.where(o == float("-inf"), 0.0, g * tl.exp(x - o))
    elif REDUCE == 3 or REDUCE == 4:
        a = tl.load(arg_ptr + at, mask=mask, other=-2)
        d = tl.where(a == edge, g, 0.0)
    elif REDUCE == 5:
        a = tl.load(aux_ptr + at, mask=mask, other=-1.0)
        d = tl.where(a >= 0.0, g, 0.0)
    else:
        a = tl.load(aux_ptr + at, mask=mask, other=2.0)
        d = tl.where(a <= 1.0, g, 0.0)
    return tl.where(mask, d, 0.0)


@triton.jit
def _arg_edge(parent_edge_ptr, idx, mask, REDUCE: tl.constexpr):
    """The edge ids at transposed-CSR positions ``idx``; only max/min read them."""
    edge = idx
    if REDUCE == 3 or REDUCE == 4:
        edge = tl.load(parent_edge_ptr + idx, mask=mask, other=-1)
    return edge


@triton.jit
def _parents_grad(
    grad_out_ptr,
    out_ptr,
    aux_ptr,
    arg_ptr,
    parent_edge_ptr,
    parent_ptr,
    start,
    count,
    row_mask,
    x,
    cols,
    col_mask,
    batch,
    REDUCE: tl.constexpr,
):
    """``sum over the parent edges p -> c of grad_out[p] * d out[p] / d x`` for each row's
    transposed-CSR range ``[start, start + count)`` (``x``: the rows' values, ``1 - x`` for
    prob_sum; ``count`` 0 on masked-off rows)."""
    acc = tl.zeros(x.shape, x.dtype)
    for j in range(0, tl.max(count, axis=0)):
        edge_mask = row_mask & (j < count)
        mask = edge_mask[:, None] & col_mask[None, :]
        idx = start + j
        parent = tl.load(parent_ptr + idx, mask=edge_mask, other=0).to(tl.int64)
        edge = _arg_edge(parent_edge_ptr, idx, edge_mask, REDUCE)
        at = parent[:, None] * batch + cols[None, :]
        g = tl.load(grad_out_ptr + at, mask=mask, other=0.0)
        acc += _edge_grad(g, out_ptr, aux_ptr, arg_ptr, at, mask, edge[:, None], x, REDUCE)
    return acc


# grad_in[c] = sum over the parent edges p -> c of grad_out[p] * d out[p] / d x[c].
@triton.jit
def _layer_bwd_kernel(
    grad_out_ptr,  # [n, batch]
    out_ptr,  # [n, batch] forward output
    aux_ptr,  # [n, batch] forward aux
    arg_ptr,  # [n, batch] int32 forward arg edge / zero count
    values_ptr,  # [n_below, batch] forward input
    parent_edge_ptr,  # [E] int32 edge ids in child order
    parent_ptr,  # [E] int32 parent node of each, same order
    parent_offsets_ptr,  # [rows + 1] int32 (per child, or per hub chunk)
    row_child_ptr,  # [rows] int32 child of each row when VIRTUAL_ROWS (hub chunks)
    grad_in_ptr,  # [rows, batch]
    n_rows,
    batch,
    REDUCE: tl.constexpr,
    VIRTUAL_ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    cols, row_mask, col_mask, start, count, where = _tile(
        parent_offsets_ptr, n_rows, batch, BLOCK_N, BLOCK_B
    )
    tile_mask = row_mask[:, None] & col_mask[None, :]
    if VIRTUAL_ROWS:
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        child = tl.load(row_child_ptr + rows, mask=row_mask, other=0).to(tl.int64)
        x = tl.load(values_ptr + child[:, None] * batch + cols[None, :], mask=tile_mask, other=1.0)
    else:
        x = tl.load(values_ptr + where, mask=tile_mask, other=1.0)
    if REDUCE == 7:
        x = 1.0 - x
    acc = _parents_grad(
        grad_out_ptr,
        out_ptr,
        aux_ptr,
        arg_ptr,
        parent_edge_ptr,
        parent_ptr,
        start,
        count,
        row_mask,
        x,
        cols,
        col_mask,
        batch,
        REDUCE,
    )
    tl.store(grad_in_ptr + where, acc, mask=tile_mask)


# Two layers' backward in one launch, for a fused pair (lower layer q over the rows below,
# upper layer p over q): grad_in[c] = sum over edges q -> c of grad_q[q] * d q / d x[c], with
# grad_q[q] = sum over edges p -> q of grad_out[p] * d p / d q recomputed for each edge q -> c
# instead of being stored (the fusion plan bounds the recomputation).
@triton.jit
def _pair_bwd_kernel(
    grad_out_ptr,  # [n, batch] gradient of the upper layer
    out_ptr,  # [n, batch] upper layer's forward state
    aux_ptr,
    arg_ptr,
    low_out_ptr,  # [n_low, batch] lower layer's forward state
    low_aux_ptr,
    low_arg_ptr,
    values_ptr,  # [n_below, batch] the lower layer's input
    parent_edge_ptr,  # [E] int32 the upper layer's transposed CSR
    parent_ptr,
    parent_offsets_ptr,  # [n_low + 1]
    low_parent_edge_ptr,  # [E_low] int32 the lower layer's transposed CSR
    low_parent_ptr,
    low_parent_offsets_ptr,  # [n_below + 1]
    grad_in_ptr,  # [n_below, batch]
    n_rows,
    batch,
    LOW_REDUCE: tl.constexpr,
    REDUCE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    cols, row_mask, col_mask, start, count, where = _tile(
        low_parent_offsets_ptr, n_rows, batch, BLOCK_N, BLOCK_B
    )
    tile_mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(values_ptr + where, mask=tile_mask, other=1.0)
    if LOW_REDUCE == 7:
        x = 1.0 - x
    acc = tl.zeros((BLOCK_N, BLOCK_B), values_ptr.dtype.element_ty)

    for j in range(0, tl.max(count, axis=0)):
        edge_mask = row_mask & (j < count)
        mask = edge_mask[:, None] & col_mask[None, :]
        idx = start + j
        low = tl.load(low_parent_ptr + idx, mask=edge_mask, other=0)
        low_edge = _arg_edge(low_parent_edge_ptr, idx, edge_mask, LOW_REDUCE)
        low_at = low[:, None].to(tl.int64) * batch + cols[None, :]
        low_x = tl.load(low_out_ptr + low_at, mask=mask, other=1.0)
        if REDUCE == 7:
            low_x = 1.0 - low_x

        up_start = tl.load(parent_offsets_ptr + low, mask=edge_mask, other=0)
        up_count = tl.load(parent_offsets_ptr + low + 1, mask=edge_mask, other=0) - up_start
        grad_low = _parents_grad(
            grad_out_ptr,
            out_ptr,
            aux_ptr,
            arg_ptr,
            parent_edge_ptr,
            parent_ptr,
            up_start,
            up_count,
            edge_mask,
            low_x,
            cols,
            col_mask,
            batch,
            REDUCE,
        )
        acc += _edge_grad(
            grad_low,
            low_out_ptr,
            low_aux_ptr,
            low_arg_ptr,
            low_at,
            mask,
            low_edge[:, None],
            x,
            LOW_REDUCE,
        )

    tl.store(grad_in_ptr + where, acc, mask=tile_mask)


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


def _launch(kernel, n: int, batch: int, args: tuple, **constexprs) -> None:
    """Launch ``kernel`` over tiles of ``n`` rows x ``batch`` columns (nothing when empty)."""
    if n and batch:
        block_n, block_b = _tiles(batch)
        grid = (triton.cdiv(n, block_n), triton.cdiv(batch, block_b))
        kernel[grid](*args, n, batch, BLOCK_N=block_n, BLOCK_B=block_b, **constexprs)


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not _interpreting():
        raise DeviceError(
            "the Triton kernels run on CUDA tensors, or on CPU under TRITON_INTERPRET=1 "
            "(set before importing triton); use backend='torch' on the CPU"
        )


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _code(reduce: str) -> int:
    try:
        return TRITON_REDUCTIONS[reduce]
    except KeyError:
        raise SemiringError(
            f"unknown reduction {reduce!r}; expected one of {sorted(TRITON_REDUCTIONS)}"
        ) from None


def layer_fwd(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    partial: bool = False,
    state: bool = True,
):
    """Launch the forward kernel: ``(out, aux, arg)``, ``out: [n, B]``; ``aux``/``arg`` are what
    the backward needs (``None`` where the reduction needs none, or without ``state``: for
    inference, only ``out`` is written).

    ``partial``: ``offsets`` cuts hub nodes into chunks; every chunk's raw state is returned
    (all three tensors) for :func:`layer_combine`.
    """
    code = _code(reduce)
    _check_device(values)
    values = values.contiguous()
    n = offsets.numel() - 1
    out, aux, arg = _outputs(
        n,
        values,
        partial or (state and code in _NEEDS_AUX),
        partial or (state and code in _NEEDS_ARG),
    )
    _launch(
        _layer_fwd_kernel,
        n,
        values.shape[1],
        (values, child, offsets, out, _or(aux, out), _or(arg, child)),
        REDUCE=code,
        NEUTRAL=_NEUTRAL[code],
        PARTIAL=partial,
        STATE=state,
    )
    return out, aux, arg


def layer_combine(
    part, chunk_of_node: torch.Tensor, offsets: torch.Tensor, reduce: str, state: bool = True
):
    """Combine hub chunks' raw states (``part``, from ``layer_fwd(..., partial=True)``) into
    each node's ``(out, aux, arg)``, exactly as the unsplit kernel computes them (``aux`` and
    ``arg`` only with ``state``)."""
    code = _code(reduce)
    part_out, part_aux, part_arg = part
    n = offsets.numel() - 1
    out, aux, arg = _outputs(
        n, part_out, state and code in _NEEDS_AUX, state and code in _NEEDS_ARG
    )
    _launch(
        _layer_combine_kernel,
        n,
        part_out.shape[1],
        (
            part_out,
            part_aux,
            part_arg,
            chunk_of_node,
            offsets,
            out,
            _or(aux, out),
            _or(arg, part_arg),
        ),
        REDUCE=code,
        NEUTRAL=_NEUTRAL[code],
        STATE=state,
    )
    return out, aux, arg


def layer_bwd(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    aux: torch.Tensor | None,
    arg: torch.Tensor | None,
    values: torch.Tensor,
    parent_edge: torch.Tensor,
    parent: torch.Tensor,
    parent_offsets: torch.Tensor,
    reduce: str,
    row_child: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the backward kernel: ``d loss / d values``, ``[n_below, B]``.

    With ``row_child``, ``parent_offsets`` is a hub plan's chunk CSR and the result is one
    partial gradient row per chunk (``[num_chunks, B]``), ``row_child`` naming each chunk's
    child.
    """
    code = _code(reduce)
    grad_out = grad_out.contiguous()
    n_rows = parent_offsets.numel() - 1
    grad_in, _, _ = _outputs(n_rows, values, False, False)
    args = (grad_out, out, _or(aux, out), _or(arg, parent_edge), values, parent_edge, parent)
    args += (parent_offsets, _or(row_child, parent_edge), grad_in)
    _launch(
        _layer_bwd_kernel,
        n_rows,
        values.shape[1],
        args,
        REDUCE=code,
        VIRTUAL_ROWS=row_child is not None,
    )
    return grad_in


class TritonLayer(NamedTuple):
    """One layer for :func:`circuit_forward_triton`: the int32 index tensors of
    :class:`trilay.engine.Layer` (hub plans may be empty), the layer's reduction, and whether
    it runs fused with the next layer (see :func:`plan_fusion`)."""

    child: torch.Tensor
    offsets: torch.Tensor
    parent_edge: torch.Tensor
    parent: torch.Tensor
    parent_offsets: torch.Tensor
    chunk_offsets: torch.Tensor
    chunk_of_node: torch.Tensor
    parent_chunk_offsets: torch.Tensor
    parent_chunk_of_child: torch.Tensor
    parent_chunk_child: torch.Tensor
    reduce: str
    fused_with_next: bool = False

    @property
    def has_hubs(self) -> bool:
        return bool(self.chunk_offsets.numel() or self.parent_chunk_offsets.numel())


def _arange(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int32, device=device)


def layer_forward(values: torch.Tensor, layer: TritonLayer, state: bool = True):
    """One layer's forward, split at hubs when the layer has a hub plan: each chunk of at
    most ``HUB_CHUNK`` edges is reduced by its own program, then each node's chunks are
    combined. Returns ``(out, aux, arg)`` (see :func:`layer_fwd` for ``state``)."""
    if layer.chunk_offsets.numel():
        part = layer_fwd(values, layer.child, layer.chunk_offsets, layer.reduce, partial=True)
        return layer_combine(part, layer.chunk_of_node, layer.offsets, layer.reduce, state)
    return layer_fwd(values, layer.child, layer.offsets, layer.reduce, state=state)


def layer_backward(grad_out, out, aux, arg, values, layer: TritonLayer) -> torch.Tensor:
    """One layer's backward, split at hub children (fan-out above ``HUB_CHUNK``): partial
    gradients per chunk of parent edges, then summed per child. No atomics either way."""
    if layer.parent_chunk_offsets.numel():
        partial = layer_bwd(
            grad_out,
            out,
            aux,
            arg,
            values,
            layer.parent_edge,
            layer.parent,
            layer.parent_chunk_offsets,
            layer.reduce,
            row_child=layer.parent_chunk_child,
        )
        chunks = _arange(partial.shape[0], values.device)
        return layer_fwd(partial, chunks, layer.parent_chunk_of_child, "sum")[0]
    return layer_bwd(
        grad_out,
        out,
        aux,
        arg,
        values,
        layer.parent_edge,
        layer.parent,
        layer.parent_offsets,
        layer.reduce,
    )


def pair_forward(values: torch.Tensor, low: TritonLayer, up: TritonLayer, state: bool = True):
    """Launch the fused forward of two consecutive layers (``low`` reads ``values``, ``up``
    reads ``low``): ``(low_state, up_state)``, each ``(out, aux, arg)`` exactly as
    :func:`layer_fwd` computes it for that layer. Without ``state`` (inference) the lower
    layer is never written: ``(None, (out, None, None))``."""
    low_code, code = _code(low.reduce), _code(up.reduce)
    _check_device(values)
    values = values.contiguous()
    n_low, n = low.offsets.numel() - 1, up.offsets.numel() - 1
    out, aux, arg = _outputs(n, values, state and code in _NEEDS_AUX, state and code in _NEEDS_ARG)
    low_out = low_aux = low_arg = None
    if state:
        low_out, low_aux, low_arg = _outputs(
            n_low, values, low_code in _NEEDS_AUX, low_code in _NEEDS_ARG
        )
    args = (values, low.child, low.offsets, up.child, up.offsets)
    args += (_or(low_out, out), _or(low_aux, out), _or(low_arg, low.child))
    args += (out, _or(aux, out), _or(arg, up.child))
    _launch(
        _pair_fwd_kernel,
        n,
        values.shape[1],
        args,
        LOW_REDUCE=low_code,
        LOW_NEUTRAL=_NEUTRAL[low_code],
        REDUCE=code,
        NEUTRAL=_NEUTRAL[code],
        STATE=state,
    )
    return ((low_out, low_aux, low_arg) if state else None), (out, aux, arg)


def pair_backward(grad_out, state, low_state, values, low: TritonLayer, up: TritonLayer):
    """Launch the fused backward of two consecutive layers: ``d loss / d values``
    (``[n_below, B]``) from the upper layer's gradient ``grad_out`` and both layers' forward
    states."""
    low_code, code = _code(low.reduce), _code(up.reduce)
    grad_out = grad_out.contiguous()
    out, aux, arg = state
    low_out, low_aux, low_arg = low_state
    grad_in, _, _ = _outputs(values.shape[0], values, False, False)
    args = (grad_out, out, _or(aux, out), _or(arg, up.parent_edge))
    args += (low_out, _or(low_aux, low_out), _or(low_arg, low.parent_edge), values)
    args += (up.parent_edge, up.parent, up.parent_offsets)
    args += (low.parent_edge, low.parent, low.parent_offsets, grad_in)
    _launch(
        _pair_bwd_kernel, values.shape[0], values.shape[1], args, LOW_REDUCE=low_code, REDUCE=code
    )
    return grad_in


#: The most work a fused pair may repeat: the lower layer's edges are walked once per parent
#: of their node, so a pair fuses when sum(fan_in * fan_out) <= this * sum(fan_in) over the
#: lower layer's nodes (1.0: only nodes with one parent each).
MAX_RECOMPUTE = 1.1


def plan_fusion(
    layers: Sequence[TritonLayer], max_recompute: float = MAX_RECOMPUTE
) -> list[TritonLayer]:
    """The layers with ``fused_with_next`` set where two consecutive layers run as one
    forward and one backward launch (pairs taken greedily from the bottom): neither has hub
    plans, every node of the lower one has a parent in the upper one (so the fused forward
    writes all its rows), and the recomputation stays within ``max_recompute``.

    Fusion halves the dependent kernel launches of a deep circuit, the cost that dominates
    small circuits on a GPU. Runs once when a module builds its Triton layers: it reads the
    index tensors' sizes back to the host (one sync per layer, not in the hot path).
    """
    planned = [layer._replace(fused_with_next=False) for layer in layers]
    k = 0
    while k + 1 < len(planned):
        if _fusable(planned[k], planned[k + 1], max_recompute):
            planned[k] = planned[k]._replace(fused_with_next=True)
            k += 2
        else:
            k += 1
    return planned


def _fusable(low: TritonLayer, up: TritonLayer, max_recompute: float) -> bool:
    if low.has_hubs or up.has_hubs:
        return False
    fan_in = (low.offsets[1:] - low.offsets[:-1]).to(torch.float64)
    fan_out = (up.parent_offsets[1:] - up.parent_offsets[:-1]).to(torch.float64)
    if fan_out.numel() and int(fan_out.min()) == 0:
        return False  # a node nobody reads: the fused forward would leave its row unwritten
    edges = float(fan_in.sum())
    return not edges or float((fan_in * fan_out).sum()) <= max_recompute * edges


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


def _layer_states(layers: Sequence[TritonLayer], state: Sequence[torch.Tensor]):
    """Each layer's ``(out, aux, arg)`` from the flat forward state, where a layer contributes
    ``aux`` (if its reduction has one), ``arg`` (likewise), then ``out``, in layer order."""
    states, at = [], 0
    for layer in layers:
        code = _code(layer.reduce)
        aux = arg = None
        if code in _NEEDS_AUX:
            aux, at = state[at], at + 1
        if code in _NEEDS_ARG:
            arg, at = state[at], at + 1
        states.append((state[at], aux, arg))
        at += 1
    return states


def _forward_steps(inputs: torch.Tensor, layers: Sequence[TritonLayer], state: bool):
    """Run the layers, one launch per layer or fused pair, yielding each step's layers'
    ``(out, aux, arg)`` (see :func:`layer_forward` and :func:`pair_forward` for ``state``).
    Nothing of a step is kept here once the next one has run."""
    values, k = inputs.contiguous(), 0
    while k < len(layers):
        if layers[k].fused_with_next:
            step = pair_forward(values, layers[k], layers[k + 1], state)
            k += 2
        else:
            step = (layer_forward(values, layers[k], state),)
            k += 1
        values = step[-1][0]
        yield step


def _circuit_forward(inputs: torch.Tensor, layers: Sequence[TritonLayer]):
    """Every layer's ``(out, aux, arg)``, in layer order, for a backward."""
    return [layer_state for step in _forward_steps(inputs, layers, True) for layer_state in step]


def _circuit_values(inputs: torch.Tensor, layers: Sequence[TritonLayer]) -> torch.Tensor:
    """The roots' values for inference: no aux / arg and no fused pair's lower layer written,
    and each layer freed once the next one is computed."""
    (last,) = deque(_forward_steps(inputs, layers, False), maxlen=1)  # keeps one step only
    return last[-1][0]


def _circuit_backward(grad, inputs, layers: Sequence[TritonLayer], states) -> torch.Tensor:
    """Every layer's backward kernels, last layer first: ``d loss / d inputs``."""
    k = len(layers) - 1
    while k >= 0:
        fused = k > 0 and layers[k - 1].fused_with_next
        bottom = k - 1 if fused else k
        below = inputs.contiguous() if bottom == 0 else states[bottom - 1][0]
        if fused:
            grad = pair_backward(grad, states[k], states[k - 1], below, layers[k - 1], layers[k])
        else:
            grad = layer_backward(grad, *states[k], below, layers[k])
        k = bottom - 1
    return grad


_NO_DOUBLE_BACKWARD = (
    "the Triton circuit backward is not differentiable (no double backward); use "
    "backend='torch' for higher-order gradients"
)


class CircuitFunction(torch.autograd.Function):
    """All layers in one autograd node, for use under ``torch.func`` transforms. Saves each
    layer's output (and, for the reductions that need them, a node-sized aux tensor and an
    int32 arg tensor): nothing edge-sized.

    ``apply(inputs: [n_0, B], layers)`` returns the flat state (see :func:`_layer_states`);
    its last tensor is the root layer's ``[n_L, B]``, the only differentiable output. The
    intermediate layers are outputs rather than ctx attributes so that torch.func sees them:
    under ``vmap`` the vmapped dimension joins the batch columns (one kernel launch per layer
    for the whole vmapped batch), and the backward is itself a vmappable Function
    (:class:`_CircuitBackward`), so ``vmap(grad(f))`` and ``jacrev`` work too. Outside the
    transforms :class:`_EagerCircuitFunction` does the same with one output (autograd spends
    about 0.5 µs per output of a Function: some 100 µs a call on a circuit of 80 layers).
    """

    @staticmethod
    def forward(inputs: torch.Tensor, layers: Sequence[TritonLayer]):
        states = _circuit_forward(inputs, layers)
        return tuple(t for out, aux, arg in states for t in (aux, arg, out) if t is not None)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.layers = inputs[1]
        ctx.mark_non_differentiable(*output[:-1])
        # The intermediate outputs get no gradient: no zero tensor (one fill each) for them.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], *output)

    @staticmethod
    def backward(ctx, *grads):
        if grads[-1] is None:
            return None, None
        inputs, *state = ctx.saved_tensors
        return apply_function(_CircuitBackward, grads[-1], inputs, ctx.layers, *state), None

    @staticmethod
    def vmap(info, in_dims, inputs, layers):
        if any(d is not None for d in torch.utils._pytree.tree_leaves(in_dims[1])):
            raise NotImplementedError("the circuit vmaps over its inputs, not over its layers")
        if in_dims[0] is None:
            state = CircuitFunction.apply(inputs, layers)
            return state, (None,) * len(state)
        width = info.batch_size
        state = CircuitFunction.apply(_fold_vmapped(inputs, in_dims[0], width), layers)
        return tuple(_unfold_vmapped(t, width) for t in state), (2,) * len(state)


class _CircuitBackward(torch.autograd.Function):
    """:func:`_circuit_backward` as a Function of its own, for its vmap rule (``vmap(grad(f))``
    runs the backward on vmapped tensors; ``jacrev`` vmaps the gradient alone). It has no
    backward itself: the Triton path is once differentiable."""

    @staticmethod
    def forward(grad, inputs, layers, *state):
        return _circuit_backward(grad, inputs, layers, _layer_states(layers, state))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(_NO_DOUBLE_BACKWARD)

    @staticmethod
    def vmap(info, in_dims, grad, inputs, layers, *state):
        if any(d is not None for d in torch.utils._pytree.tree_leaves(in_dims[2])):
            raise NotImplementedError("the circuit vmaps over its inputs, not over its layers")
        tensors = (grad, inputs, *state)
        dims = (in_dims[0], in_dims[1], *in_dims[3:])
        if all(d is None for d in dims):
            return _CircuitBackward.apply(grad, inputs, layers, *state), None
        width = info.batch_size
        flat = [_fold_vmapped(t, d, width) for t, d in zip(tensors, dims, strict=True)]
        result = _CircuitBackward.apply(flat[0], flat[1], layers, *flat[2:])
        return _unfold_vmapped(result, width), 2


class _EagerCircuitFunction(torch.autograd.Function):
    """:class:`CircuitFunction` outside ``torch.func`` transforms: the root as its only output,
    the forward state saved on the ctx."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, layers: Sequence[TritonLayer]):
        states = _circuit_forward(inputs, layers)
        ctx.layers = layers
        ctx.save_for_backward(inputs, *(t for state in states for t in state))
        return states[-1][0]

    @staticmethod
    @once_differentiable  # differentiating its result raises (the kernels record no graph)
    def backward(ctx, grad):
        inputs, *saved = ctx.saved_tensors
        states = [saved[k : k + 3] for k in range(0, len(saved), 3)]
        return _circuit_backward(grad, inputs, ctx.layers, states), None


def circuit_forward_triton(inputs: torch.Tensor, layers: Sequence[TritonLayer]) -> torch.Tensor:
    """All layers with the fused kernels: ``inputs: [n_0, B]`` -> ``[n_L, B]``, differentiable
    (once) and composable with ``torch.func`` (``vmap``, ``grad``, ``vmap(grad)``, ``jacrev``).
    With no gradient to prepare (grad mode off, or ``inputs`` not requiring grad) it writes
    only each layer's values, frees each layer once the next is computed, and skips the lower
    layer of every fused pair.

    Raises :class:`~trilay.kernels.errors.DeviceError` for CPU tensors outside the interpreter.
    """
    _check_device(inputs)
    if not layers:
        return inputs.contiguous()
    if not needs_grad(inputs):
        return _circuit_values(inputs, layers)
    if torch._C._are_functorch_transforms_active():
        return CircuitFunction.apply(inputs, tuple(layers))[-1]
    return _EagerCircuitFunction.apply(inputs, tuple(layers))


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
        parent_edge,
        parent,
        parent_offsets,
        reduce,
    )


@_layer_bwd_op.register_fake
def _(grad_out, out, aux, arg, values, parent_edge, parent, parent_offsets, reduce):
    return torch.empty_like(values)


def _layer_setup_context(ctx, inputs, output):
    values, _, _, parent_edge, parent, parent_offsets, reduce = inputs
    ctx.save_for_backward(values, parent_edge, parent, parent_offsets, *output)
    ctx.reduce = reduce


def _layer_backward(ctx, grad_out, grad_aux, grad_arg):
    values, parent_edge, parent, parent_offsets, out, aux, arg = ctx.saved_tensors
    args = (grad_out, out, aux, arg, values, parent_edge, parent, parent_offsets, ctx.reduce)
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
    def forward(grad_out, out, aux, arg, values, parent_edge, parent, parent_offsets, reduce):
        return _layer_bwd_op(
            grad_out, out, aux, arg, values, parent_edge, parent, parent_offsets, reduce
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
    info, in_dims, grad_out, out, aux, arg, values, parent_edge, parent, parent_offsets, reduce
):
    """``vmap(grad(f))`` and ``jacrev`` run the layer's backward on vmapped tensors: as in the
    forward, the vmapped dimension joins the batch columns (unvmapped tensors are repeated
    across them), one launch for the whole vmapped batch."""
    if any(d is not None for d in in_dims[5:]):
        raise NotImplementedError("trilay.layer vmaps over values only, not over the indices")
    tensors, dims = (grad_out, out, aux, arg, values), in_dims[:5]
    if all(d is None for d in dims):
        grad = _layer_bwd_op(*tensors, parent_edge, parent, parent_offsets, reduce)
        return grad, None
    width = info.batch_size
    # The empty aux / arg placeholders of reductions without them pass as they are.
    flat = [
        t if d is None and t.dim() == 1 else _fold_vmapped(t, d, width)
        for t, d in zip(tensors, dims, strict=True)
    ]
    grad = _layer_bwd_op(*flat, parent_edge, parent, parent_offsets, reduce)
    return _unfold_vmapped(grad, width), 2


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

    ``values: [n_below, B]`` float32/float64; the index tensors are a layer's int32 CSR and
    transposed CSR (see :class:`trilay.engine.Layer`); ``reduce`` one of
    :data:`TRITON_REDUCTIONS`. Returns ``[n, B]``. Differentiable (hand-written backward),
    traceable by ``torch.compile``, batchable by ``torch.func.vmap`` over ``values``, and
    per-example gradients (``vmap(grad(f))``) run one backward launch for the whole batch.
    Raises :class:`~trilay.kernels.errors.DeviceError` for CPU tensors outside the interpreter.
    """
    args = (values, child, offsets, parent_edge, parent, parent_offsets, reduce)
    if torch._C._are_functorch_transforms_active():
        return _LayerFunction.apply(*args)[0]
    return _layer_fwd_op(*args)[0]
