"""Which consecutive layers the Triton path fuses into one launch (plain numpy, no Triton).

Fusing halves the dependent launches of a deep circuit, the cost that dominates small
circuits on a GPU; it repeats some work, which the plan bounds:

- **forward pair** (layer ``k``, layer ``k + 1``): each upper node computes its children in
  layer ``k`` in registers instead of loading them, so a lower node read by ``r`` upper nodes
  is reduced ``r`` times (``max(r, 1)``: the nodes no upper node reads, the *orphans*, are
  reduced once by programs of their own). The pair fuses when that work stays within
  ``max_recompute`` times the lower layer's edges.
- **backward pair** (row block ``j``, row block ``j + 1``; block 0 is the leaves): each lower
  row recomputes the gradient of each of its parents in the upper block from that parent's
  own parents instead of waiting for it, so an upper row with ``f`` parents and ``r``
  children below costs ``f`` loads per child edge. The pair fuses when those loads stay
  within ``max_recompute`` times the edges between the two blocks.

Neither kind of pair includes a layer (block) with a hub plan. Pairs are taken greedily from
the bottom; greedy from one end is a maximum matching on a chain of layers.
"""

from __future__ import annotations

import numpy as np

#: The most work a fused pair may repeat (1.0: nothing but loads replaced by registers).
MAX_RECOMPUTE = 1.1


def plan_fusion(
    child: np.ndarray,
    offsets: np.ndarray,
    parent_offsets: np.ndarray,
    row_starts: list[int],
    node_hub_layers,
    parent_hub_layers,
    max_recompute: float | None = None,
) -> tuple[dict[int, np.ndarray], set[int]]:
    """``(forward_pairs, backward_pairs)`` for a compiled circuit's arrays (int64 numpy):
    ``forward_pairs[k]`` fuses layer ``k + 1`` (1-based, as in the compiled circuit; 0-based
    ``k`` in the returned keys) with the next and holds its orphans (local rows); a row block
    ``j`` in ``backward_pairs`` fuses with block ``j + 1``. ``max_recompute`` defaults to
    :data:`MAX_RECOMPUTE`."""
    if max_recompute is None:
        max_recompute = MAX_RECOMPUTE
    n0 = row_starts[1]
    num_layers = len(row_starts) - 2
    fan_in = np.diff(offsets)
    fan_out = np.diff(parent_offsets)
    edge_parent = np.repeat(np.arange(n0, row_starts[-1]), fan_in)

    forward: dict[int, np.ndarray] = {}
    k = 1
    while k < num_layers:
        if k in node_hub_layers or k + 1 in node_hub_layers:
            k += 1
            continue
        lo, hi = row_starts[k], row_starts[k + 1]
        e0, e1 = offsets[row_starts[k + 1] - n0], offsets[row_starts[k + 2] - n0]
        kids = child[e0:e1]
        reads = np.bincount(kids[(kids >= lo) & (kids < hi)] - lo, minlength=hi - lo)
        lower_fan_in = fan_in[lo - n0 : hi - n0]
        work = float((lower_fan_in * np.maximum(reads, 1)).sum())
        if work <= max_recompute * float(lower_fan_in.sum()):
            forward[k - 1] = np.flatnonzero(reads == 0).astype(np.int32)
            k += 2
        else:
            k += 1

    backward: set[int] = set()
    j = 0
    while j + 1 <= num_layers:
        if j in parent_hub_layers or j + 1 in parent_hub_layers:
            j += 1
            continue
        lo, hi = row_starts[j], row_starts[j + 1]
        up_lo, up_hi = row_starts[j + 1], row_starts[j + 2]
        # Edges from an upper-block parent to a lower-block child.
        e0, e1 = offsets[up_lo - n0], offsets[up_hi - n0]
        kids, parents = child[e0:e1], edge_parent[e0:e1]
        between = (kids >= lo) & (kids < hi)
        loads = float(fan_out[parents[between]].sum())
        if loads <= max_recompute * max(1, int(between.sum())):
            backward.add(j)
            j += 2
        else:
            j += 1
    return forward, backward
