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
from typing import NamedTuple

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


def segment_reduce_torch(
    src: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    segment: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[i] = reduce(src[offsets[i]:offsets[i+1]])`` for ``src: [E, B]`` -> ``[n, B]``.

    ``segment: [E]`` is each row's segment (``i`` for the rows of segment ``i``); it is derived
    from ``offsets`` when omitted. The rows fold into their segments with ``index_add`` /
    ``scatter_reduce``, which on the CPU beat ``torch.segment_reduce`` at batch > 1.

    Exact gradients with zeros (``prod``: torch's scatter product backward counts zeros) and
    with ``-inf`` (``logsumexp`` of an all ``-inf`` segment is ``-inf`` with gradient 0, not
    NaN). ``max``/``min`` split the gradient evenly between tied children.
    """
    if reduce not in REDUCTIONS:
        raise SemiringError(f"unknown reduction {reduce!r}; expected one of {REDUCTIONS}")
    n = offsets.numel() - 1
    if segment is None:
        lengths = offsets[1:] - offsets[:-1]
        segment = torch.repeat_interleave(
            torch.arange(n, device=src.device), lengths, output_size=src.shape[0]
        )
    segment = segment.long()  # a no-op for the int64 ids compiled layers carry
    if reduce == "logsumexp":
        return _logsumexp(src, segment, n)
    if reduce == "lukasiewicz_and":
        fan_in = (offsets[1:] - offsets[:-1]).to(src.dtype).unsqueeze(1)
        return torch.clamp(_fold(src, segment, n, "sum") - (fan_in - 1), min=0)
    if reduce == "lukasiewicz_or":
        return torch.clamp(_fold(src, segment, n, "sum"), max=1)
    if reduce == "prob_sum":
        return 1 - _fold(1 - src, segment, n, "prod")
    return _fold(src, segment, n, reduce)


_SCATTER = {"prod": ("prod", 1.0), "max": ("amax", float("-inf")), "min": ("amin", float("inf"))}


def _fold(src: torch.Tensor, segment: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """``out[segment[e]] (op)= src[e]`` from the reduction's identity, ``[n, B]``."""
    shape = (n, src.shape[1])
    if reduce == "sum":
        return src.new_zeros(shape).index_add(0, segment, src)
    op, identity = _SCATTER[reduce]
    index = segment.unsqueeze(1).expand_as(src)
    return src.new_full(shape, identity).scatter_reduce(0, index, src, op, include_self=True)


def _logsumexp(src: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    # Shift by the segment max (constant w.r.t. autograd: logsumexp's gradient does not depend
    # on the shift). All -inf segments get shift 0 so that x - shift stays -inf, not NaN.
    shift = _fold(src.detach(), segment, n, "max").nan_to_num(neginf=0.0)
    total = _fold(torch.exp(src - shift.index_select(0, segment)), segment, n, "sum")
    log_total = _LogOfSum.apply(total) if _needs_grad(total) else torch.log(total)
    return log_total + shift


def _needs_grad(t: torch.Tensor) -> bool:
    # A custom autograd Function costs tens of microseconds per call even without autograd:
    # use one only when a backward will run.
    return t.requires_grad and torch.is_grad_enabled()


class _LogOfSum(torch.autograd.Function):
    """``log(total)`` for ``total >= 0`` whose backward is 0 where ``total = 0``.

    An all ``-inf`` segment has ``total = 0`` and every term's ``exp`` is 0: the plain
    ``1 / total`` derivative would make that ``inf * 0 = NaN``; the true gradient is 0.
    """

    @staticmethod
    def forward(ctx, total):
        ctx.save_for_backward(total)
        return torch.log(total)

    @staticmethod
    def backward(ctx, grad):
        (total,) = ctx.saved_tensors
        return torch.where(total > 0, grad / total, torch.zeros_like(grad))


def layer_forward_torch(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    segment: torch.Tensor | None = None,
) -> torch.Tensor:
    """One circuit layer: ``out[i] = reduce(values[child[offsets[i]:offsets[i+1]]])``.

    Args:
        values: ``[n_prev, B]`` the previous layer's node values.
        child: ``[E]`` int32/int64 row of ``values`` each edge reads.
        offsets: ``[n + 1]`` int32/int64 CSR offsets of each node's edges.
        reduce: one of :data:`REDUCTIONS`.
        segment: optional ``[E]`` node of each edge, see :func:`segment_reduce_torch`.

    Returns:
        ``[n, B]`` in ``values.dtype``.
    """
    # index_select's backward is an index_add over the edges: on the CPU it is sequential (so
    # deterministic) and measured faster than a segment sum over the transposed CSR.
    return segment_reduce_torch(values.index_select(0, child), offsets, reduce, segment)


class TorchLayer(NamedTuple):
    """One layer for :func:`circuit_forward_torch` (the arguments of
    :func:`layer_forward_torch` after ``values``)."""

    child: torch.Tensor
    offsets: torch.Tensor
    reduce: str
    segment: torch.Tensor | None = None


def circuit_forward_torch(inputs: torch.Tensor, layers: Sequence[TorchLayer]) -> torch.Tensor:
    """All layers in order: ``inputs: [n_0, B]`` -> the last layer's ``[n_L, B]``."""
    values = inputs
    for layer in layers:
        values = layer_forward_torch(values, *layer)
    return values
