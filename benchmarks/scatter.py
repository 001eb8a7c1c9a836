"""The "scatter" baseline: one gather and one scatter reduction per layer, in plain torch.

This is how KLay evaluates a layered circuit: per layer, ``index_select`` gathers each edge's
child value (``[E, B]``), then ``index_add`` / ``scatter_reduce`` folds the edges into their
parent nodes (``[n, B]``), and autograd differentiates it (a scatter-add in the backward of the
gather). It is trilay's plain-torch reference op (:mod:`trilay.kernels.reference`) run over
trilay's compiled layers: on the CPU it is the computation trilay's own CPU path runs (they
differ by the module's input checks and caching); on a GPU it is the baseline trilay's Triton
kernels are measured against.
"""

from __future__ import annotations

import torch
from trilay.engine import CompiledCircuit, get_semiring
from trilay.kernels.reference import TorchLayer, circuit_forward_torch


class ScatterCircuit:
    """``__call__(pos: [B, V], neg=None) -> [B, num_roots]`` over ``compiled``'s layers.

    Node values are ``[num_nodes, B]``; layer 0 holds false, true, ``+1..+V``, ``-1..-V`` as
    in trilay.
    """

    def __init__(self, compiled: CompiledCircuit, semiring: str = "log"):
        self.semiring = get_semiring(semiring)
        reductions = {"and": self.semiring.prod, "or": self.semiring.sum}
        self.layers = [
            TorchLayer(
                layer.child.long(),  # int64 ids, as torch code (and KLay) has them: see engine
                layer.offsets,
                reductions[layer.kind],
                segment=layer.edge_parent.long(),
            )
            for layer in compiled.layers
        ]

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        if neg is None:
            neg = self.semiring.complement(pos)
        constants = torch.tensor(
            [[self.semiring.zero], [self.semiring.one]], dtype=pos.dtype, device=pos.device
        ).expand(2, pos.shape[0])
        values = torch.cat([constants, pos.t(), neg.t()], dim=0)
        return circuit_forward_torch(values, self.layers).t()
