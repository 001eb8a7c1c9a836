"""The plain-PyTorch layer op: gather + segment reduce, differentiable by autograd.

This is trilay's reference implementation (the oracle the Triton kernels are tested against),
the engine's CPU path, and the "scatter" baseline of the benchmarks (what KLay does: one index
and one segment reduction per layer).

Layout: node values are ``[num_nodes, batch]`` (batch contiguous). A layer is a CSR over the
previous layer: node ``i`` reduces the rows ``child[offsets[i]:offsets[i+1]]`` of the previous
layer. ``offsets`` is ascending, starts at 0 and ends at ``len(child)``; compiled circuits have
no empty segment, and an empty segment yields the reduction's identity here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import SemiringError

#: The segment reductions trilay evaluates. The last three are the fuzzy forms:
#: ``lukasiewicz_and = max(0, sum - (n - 1))``, ``lukasiewicz_or = min(1, sum)``,
#: ``prob_sum = 1 - prod(1 - x)``.
REDUCTIONS = (
    "sum",
    "prod",
    "logsumexp",
    "max",
    "min",
    "lukasiewicz_and",
    "lukasiewicz_or",
    "prob_sum",
)


def segment_reduce_torch(src: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    """``out[i] = reduce(src[offsets[i]:offsets[i+1]])`` for ``src: [E, B]`` -> ``[n, B]``.

    Exact gradients with zeros (``prod``: torch's segment product backward counts zeros) and
    with ``-inf`` (``logsumexp`` of an all ``-inf`` segment is ``-inf`` with gradient 0, not
    NaN). ``max``/``min`` split the gradient evenly between tied children.
    """
    if reduce == "logsumexp":
        return _segment_logsumexp(src, offsets)
    if reduce == "lukasiewicz_and":
        fan_in = (offsets[1:] - offsets[:-1]).to(src.dtype).unsqueeze(1)
        return torch.clamp(_segment(src, offsets, "sum") - (fan_in - 1), min=0)
    if reduce == "lukasiewicz_or":
        return torch.clamp(_segment(src, offsets, "sum"), max=1)
    if reduce == "prob_sum":
        return 1 - _segment(1 - src, offsets, "prod")
    if reduce not in REDUCTIONS:
        raise SemiringError(f"unknown reduction {reduce!r}; expected one of {REDUCTIONS}")
    return _segment(src, offsets, reduce)


def _segment(src: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    return torch.segment_reduce(src, reduce, offsets=offsets, axis=0, unsafe=True)


def _segment_logsumexp(src: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    # Shift by the segment max (constant w.r.t. autograd: logsumexp's gradient does not depend
    # on the shift). All -inf segments get shift 0 so that x - shift stays -inf, not NaN.
    shift = _segment(src.detach(), offsets, "max")
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    lengths = offsets[1:] - offsets[:-1]
    shift_per_edge = shift.repeat_interleave(lengths, dim=0, output_size=src.shape[0])
    total = _segment(torch.exp(src - shift_per_edge), offsets, "sum")
    # log(0) has an infinite derivative; route empty mass through a constant -inf instead so
    # the backward sees 0 * finite, never 0 * inf.
    positive = total > 0
    safe_total = torch.where(positive, total, torch.ones_like(total))
    return torch.where(
        positive, torch.log(safe_total) + shift, torch.full_like(total, float("-inf"))
    )


class _GatherRows(torch.autograd.Function):
    """``values[child]`` whose backward is a segment sum over the transposed CSR.

    ``d values[j] = sum(grad[e] for e in parent_edge[parent_offsets[j]:parent_offsets[j+1]])``:
    deterministic and without the serialized scatter-add of ``index_select``'s backward, which
    is slow for narrow rows (batch 1).
    """

    @staticmethod
    def forward(ctx, values, child, parent_edge, parent_offsets):
        ctx.save_for_backward(parent_edge, parent_offsets)
        return values.index_select(0, child)

    @staticmethod
    def backward(ctx, grad):
        parent_edge, parent_offsets = ctx.saved_tensors
        by_child = grad.index_select(0, parent_edge)
        return (
            _segment(by_child, parent_offsets, "sum"),
            None,
            None,
            None,
        )


def gather_rows(
    values: torch.Tensor,
    child: torch.Tensor,
    transpose: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``values[child]`` (``[n_prev, B]`` -> ``[E, B]``).

    With ``transpose = (parent_edge, parent_offsets)``, the child-sorted edge ids and their CSR
    offsets over ``values``' rows, the backward is a gather + segment sum instead of a
    scatter-add.
    """
    if transpose is None:
        return values.index_select(0, child)
    return _GatherRows.apply(values, child, *transpose)


def layer_forward_torch(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    transpose: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One circuit layer: ``out[i] = reduce(values[child[offsets[i]:offsets[i+1]]])``.

    Args:
        values: ``[n_prev, B]`` the previous layer's node values.
        child: ``[E]`` int32/int64 row of ``values`` each edge reads.
        offsets: ``[n + 1]`` int32/int64 CSR offsets of each node's edges.
        reduce: one of :data:`REDUCTIONS`.
        transpose: optional ``(parent_edge, parent_offsets)``, see :func:`gather_rows`.

    Returns:
        ``[n, B]`` in ``values.dtype``.
    """
    return segment_reduce_torch(gather_rows(values, child, transpose), offsets, reduce)


def circuit_forward_torch(
    inputs: torch.Tensor,
    layers: Sequence[
        tuple[torch.Tensor, torch.Tensor, str, tuple[torch.Tensor, torch.Tensor] | None]
    ],
) -> torch.Tensor:
    """All layers in order: ``inputs: [n_0, B]`` -> the last layer's ``[n_L, B]``.

    ``layers`` holds ``(child, offsets, reduce, transpose)`` per layer, each reading the layer
    before (see :func:`layer_forward_torch`).
    """
    values = inputs
    for child, offsets, reduce, transpose in layers:
        values = layer_forward_torch(values, child, offsets, reduce, transpose)
    return values
