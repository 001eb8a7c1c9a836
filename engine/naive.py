"""The naive baseline: one torch reduction per node, in topological order.

This is how DeepProbLog and the KLay paper's baseline evaluate a circuit. It evaluates the
:class:`~trilay.engine.circuit.Circuit` exactly as written (no simplification, no smoothing,
no layering), which also makes it an independent check of the compiler.
"""

from __future__ import annotations

import math

import torch
from trilay.kernels.reference import segment_reduce_torch

from .circuit import AND, FALSE, LITERAL, OR, TRUE, Circuit
from .semiring import Semiring, get_semiring


def evaluate_naive(
    circuit: Circuit,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    semiring: str | Semiring = "real",
) -> torch.Tensor:
    """``[..., V]`` literal weights -> ``[..., num_roots]`` root values, node by node."""
    semiring = get_semiring(semiring)
    lead = pos.shape[:-1]
    batch = math.prod(lead)
    pos = pos.reshape(batch, circuit.num_vars)
    neg = semiring.complement(pos) if neg is None else neg.reshape(batch, circuit.num_vars)
    zero = torch.full((batch,), semiring.zero, dtype=pos.dtype, device=pos.device)
    one = torch.full((batch,), semiring.one, dtype=pos.dtype, device=pos.device)
    reduction = {AND: semiring.prod, OR: semiring.sum}
    kind, lit, start, children, roots = circuit.arrays()
    kind, lit, start, children = kind.tolist(), lit.tolist(), start.tolist(), children.tolist()
    needed = _needed(circuit)
    values: list[torch.Tensor | None] = [None] * len(kind)
    for node in range(len(kind)):
        if not needed[node]:
            continue
        k = kind[node]
        if k == LITERAL:
            v = lit[node]
            values[node] = pos[:, v - 1] if v > 0 else neg[:, -v - 1]
        elif k == TRUE or (k == AND and start[node] == start[node + 1]):
            values[node] = one
        elif k == FALSE or (k == OR and start[node] == start[node + 1]):
            values[node] = zero
        else:
            kids = torch.stack([values[c] for c in children[start[node] : start[node + 1]]])
            offsets = torch.tensor([0, kids.shape[0]], device=pos.device)
            values[node] = segment_reduce_torch(kids, offsets, reduction[k])[0]
    out = torch.stack([values[r] for r in roots.tolist()], dim=-1)
    return out.reshape(*lead, len(roots))


def _needed(circuit: Circuit) -> list[bool]:
    """Which nodes some root reaches (children precede parents, so one reverse sweep)."""
    kind, _, start, children, roots = circuit.arrays()
    needed = [False] * len(kind)
    for r in roots.tolist():
        needed[r] = True
    start, children = start.tolist(), children.tolist()
    for node in range(len(kind) - 1, -1, -1):
        if needed[node]:
            for c in children[start[node] : start[node + 1]]:
                needed[c] = True
    return needed
