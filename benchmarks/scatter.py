"""The "scatter" baseline: KLay's layering, one gather and one scatter reduction per layer.

This is how KLay evaluates a circuit: its layers (KLay's algorithms 2 and 3) hold, besides
each layer's own nodes, a unary pass-through copy of every lower node that a higher layer
reads, so that every edge joins adjacent layers, and a last layer of the roots in order. Per
layer, ``index_select`` gathers each edge's child value (``[E, B]``), then ``index_add`` /
``scatter_reduce`` folds the edges into their nodes (``[n, B]``), and autograd differentiates
it (a scatter-add in the backward of the gather). The reduction is trilay's plain-torch
reference op (:func:`trilay.kernels.reference.layer_forward_torch`); on a GPU this is the
baseline trilay's Triton kernels are measured against, on the CPU the baseline of trilay's
CPU path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from trilay.engine import CompiledCircuit, get_semiring
from trilay.kernels.reference import layer_forward_torch


class PaddedLayer(NamedTuple):
    """One KLay layer: node ``i`` reduces rows ``child[offsets[i]:offsets[i+1]]`` of the layer
    below; ``segment`` is each edge's node (int64, torch's scatter index)."""

    child: torch.Tensor
    offsets: torch.Tensor
    segment: torch.Tensor
    kind: str


def klay_layers(compiled: CompiledCircuit) -> list[PaddedLayer]:
    """``compiled``'s nodes in KLay's layering: layer ``k`` holds trilay's layer ``k`` and a
    unary copy of every lower node some higher layer (or the root layer) reads; a last layer
    of unary nodes holds the roots in order."""
    if compiled.smooth:
        raise ValueError("the scatter baseline evaluates circuits compiled with smooth=False")
    starts = np.asarray(compiled.row_starts)
    n, n0, num_layers = compiled.num_nodes, compiled.num_leaves, compiled.num_layers
    child = compiled.child.cpu().numpy().astype(np.int64)
    offsets = compiled.offsets.cpu().numpy().astype(np.int64)
    fan_in = np.diff(offsets)
    layer_of_row = np.repeat(np.arange(num_layers + 1), np.diff(starts))
    edge_parent = np.repeat(np.arange(n0, n), fan_in)
    roots = compiled.roots.cpu().numpy()
    # Each node is carried up (by unary copies) to the highest layer that reads it.
    need = layer_of_row.copy()
    np.maximum.at(need, child, layer_of_row[edge_parent] - 1)
    np.maximum.at(need, roots, num_layers)
    position = np.full(n, -1, dtype=np.int64)
    prev = np.arange(n0)
    position[prev] = prev
    layers = []
    for k in range(1, num_layers + 2):
        if k <= num_layers:
            own = np.arange(starts[k], starts[k + 1])
            copies = np.flatnonzero((layer_of_row < k) & (need >= k))
            kids = np.concatenate(
                [
                    position[child[offsets[own[0] - n0] : offsets[own[-1] - n0 + 1]]],
                    position[copies],
                ]
            )
            lengths = np.concatenate([fan_in[own - n0], np.ones(copies.size, dtype=np.int64)])
            members = np.concatenate([own, copies])
            kind = compiled.layer_kinds[k - 1]
        else:  # KLay's root layer
            kids, lengths, members, kind = (
                position[roots],
                np.ones(roots.size, np.int64),
                roots,
                "or",
            )
        if np.any(kids < 0):
            raise AssertionError("internal error: an edge skips a layer")
        csr = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=csr[1:])
        layers.append(
            PaddedLayer(
                torch.from_numpy(kids),
                torch.from_numpy(csr),
                torch.from_numpy(np.repeat(np.arange(lengths.size), lengths)),
                kind,
            )
        )
        position[prev] = -1
        prev = members
        position[prev] = np.arange(prev.size)
    return layers


class ScatterCircuit:
    """``__call__(pos: [B, V], neg=None) -> [B, num_roots]`` over ``compiled``'s nodes in
    KLay's layering (:func:`klay_layers`), int64 ids as torch code (and KLay) has them.

    Node values are ``[num_nodes, B]``; the leaves are false, true, ``+1..+V``, ``-1..-V`` as
    in trilay.
    """

    def __init__(self, compiled: CompiledCircuit, semiring: str = "log"):
        self.semiring = get_semiring(semiring)
        reductions = {"and": self.semiring.prod, "or": self.semiring.sum}
        device = compiled.device
        self.layers = [
            (
                layer.child.to(device),
                layer.offsets.to(device),
                reductions[layer.kind],
                layer.segment.to(device),
            )
            for layer in klay_layers(compiled)
        ]

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        if neg is None:
            neg = self.semiring.complement(pos)
        constants = torch.tensor(
            [[self.semiring.zero], [self.semiring.one]], dtype=pos.dtype, device=pos.device
        ).expand(2, pos.shape[0])
        values = torch.cat([constants, pos.t(), neg.t()], dim=0)
        for child, offsets, reduce, segment in self.layers:
            values = layer_forward_torch(values, child, offsets, reduce, segment)
        return values.t()
