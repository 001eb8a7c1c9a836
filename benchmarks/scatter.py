"""The "scatter" baseline: one gather and one scatter reduction per layer, in plain torch.

This is how KLay evaluates a layered circuit: per layer, ``index_select`` gathers each edge's
child value (``[E, B]``), then ``index_add`` / ``scatter_reduce`` folds the edges into their
parent nodes (``[n, B]``). Autograd differentiates it (scatter-add in the backward of the
gather). It reads the structure of trilay's compiled layers, so it evaluates exactly the
circuit trilay evaluates, but with none of trilay's kernels.
"""

from __future__ import annotations

import math

import torch
from trilay.engine import CompiledCircuit, get_semiring


class ScatterCircuit:
    """``__call__(pos: [B, V], neg=None) -> [B, num_roots]`` over ``compiled``'s layers.

    Semirings ``real`` (sum / prod) and ``log`` (logsumexp / sum). Node values are
    ``[num_nodes, B]``, layer 0 holds false, true, ``+1..+V``, ``-1..-V`` as in trilay.
    """

    def __init__(self, compiled: CompiledCircuit, semiring: str = "log"):
        self.semiring = get_semiring(semiring)
        if self.semiring.name not in ("real", "log"):
            raise ValueError(f"the scatter baseline evaluates real and log, not {semiring!r}")
        self.num_vars = compiled.num_vars
        reductions = {"and": self.semiring.prod, "or": self.semiring.sum}
        self.layers = []
        for layer in compiled.layers:
            offsets = layer.offsets.long()
            n = offsets.numel() - 1
            parent = torch.repeat_interleave(
                torch.arange(n, device=offsets.device), offsets[1:] - offsets[:-1]
            )
            self.layers.append((layer.child.long(), parent, n, reductions[layer.kind]))

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        if neg is None:
            neg = self.semiring.complement(pos)
        batch = pos.shape[0]
        constants = torch.tensor(
            [[self.semiring.zero], [self.semiring.one]], dtype=pos.dtype, device=pos.device
        ).expand(2, batch)
        values = torch.cat([constants, pos.t(), neg.t()], dim=0)
        for child, parent, n, reduce in self.layers:
            values = _scatter_layer(values.index_select(0, child), parent, n, reduce)
        return values.t()


def _scatter_layer(edges: torch.Tensor, parent: torch.Tensor, n: int, reduce: str):
    """Fold ``edges: [E, B]`` into ``[n, B]``: ``out[parent[e]] (+)= edges[e]``."""
    shape = (n, edges.shape[1])
    if reduce == "sum":
        return edges.new_zeros(shape).index_add(0, parent, edges)
    if reduce == "prod":
        index = parent[:, None].expand_as(edges)
        return edges.new_ones(shape).scatter_reduce(0, index, edges, "prod", include_self=True)
    if reduce == "logsumexp":
        # Shift by the segment max (a constant for autograd); an all -inf segment gets shift 0
        # so that edges - shift stays -inf, not NaN.
        index = parent[:, None].expand_as(edges)
        shift = edges.new_full(shape, -math.inf).scatter_reduce(
            0, index, edges.detach(), "amax", include_self=True
        )
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        total = edges.new_zeros(shape).index_add(
            0, parent, torch.exp(edges - shift.index_select(0, parent))
        )
        positive = total > 0
        safe = torch.where(positive, total, torch.ones_like(total))
        return torch.where(positive, torch.log(safe) + shift, torch.full_like(total, -math.inf))
    raise ValueError(f"unknown reduction {reduce!r}")
