"""The compiled, layered circuit: index tensors per layer, built once, moved to a device once."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from .errors import CircuitError, ParseError

_FORMAT = "trilay.compiled/1"

#: Nodes with more edges than this (fan-in, or fan-out in the transposed CSR) are split into
#: chunks of at most this many edges, reduced separately and combined, so that one hub (a sum
#: node with 10^4 children, a literal with 10^4 parents) does not serialize its layer.
HUB_CHUNK = 256


@dataclass
class Layer:
    """One layer of a compiled circuit, a CSR over the layer below.

    Node ``i`` of this layer reduces the rows ``child[offsets[i]:offsets[i+1]]`` of the layer
    below (AND layers with the semiring's product, OR layers with its sum). The transposed CSR
    lists, for each node ``j`` of the layer below, the edges that read it,
    ``parent_edge[parent_offsets[j]:parent_offsets[j+1]]`` (ascending), and the nodes of this
    layer they belong to, ``parent[...]`` over the same range: a backward pass walks it without
    atomics. Index tensors are int32, but ``edge_parent`` (each edge's node, the PyTorch path's
    scatter index), which is int64 because torch's scatter ops take no other.

    Hub plans (empty when no node has more than :data:`HUB_CHUNK` edges): ``chunk_offsets``
    cuts the edge CSR into chunks of at most ``HUB_CHUNK`` edges, node ``i`` owning chunks
    ``chunk_of_node[i]:chunk_of_node[i+1]``; ``parent_chunk_offsets`` /
    ``parent_chunk_of_child`` do the same for the transposed CSR, ``parent_chunk_child`` naming
    each chunk's child.
    """

    kind: str  # "and" or "or"
    child: torch.Tensor  # [E] position in the layer below, ascending within each node
    offsets: torch.Tensor  # [n + 1]
    parent_offsets: torch.Tensor  # [n_below + 1]
    parent: torch.Tensor  # [E] node of this layer, edges in child order
    parent_edge: torch.Tensor  # [E] edge id, edges in child order
    edge_parent: torch.Tensor  # [E] int64 node of this layer, edges in their own order
    chunk_offsets: torch.Tensor  # [S + 1] or empty
    chunk_of_node: torch.Tensor  # [n + 1] or empty
    parent_chunk_offsets: torch.Tensor  # [T + 1] or empty
    parent_chunk_of_child: torch.Tensor  # [n_below + 1] or empty
    parent_chunk_child: torch.Tensor  # [T] or empty

    @property
    def num_nodes(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_edges(self) -> int:
        return self.child.numel()

    @classmethod
    def build(cls, child: np.ndarray, lengths: np.ndarray, num_below: int, kind: str) -> Layer:
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        parent_of_edge = np.repeat(np.arange(lengths.size), lengths)
        by_child = np.argsort(child, kind="stable")
        parent_offsets = np.zeros(num_below + 1, dtype=np.int64)
        np.cumsum(np.bincount(child, minlength=num_below), out=parent_offsets[1:])
        as_int32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32))  # noqa: E731
        chunk_offsets, chunk_of_node, _ = _hub_plan(offsets)
        parent_chunk_offsets, parent_chunk_of_child, parent_chunk_child = _hub_plan(parent_offsets)
        return cls(
            kind=kind,
            child=as_int32(child),
            offsets=as_int32(offsets),
            parent_offsets=as_int32(parent_offsets),
            parent=as_int32(parent_of_edge[by_child]),
            parent_edge=as_int32(by_child),
            edge_parent=torch.from_numpy(parent_of_edge.astype(np.int64)),
            chunk_offsets=as_int32(chunk_offsets),
            chunk_of_node=as_int32(chunk_of_node),
            parent_chunk_offsets=as_int32(parent_chunk_offsets),
            parent_chunk_of_child=as_int32(parent_chunk_of_child),
            parent_chunk_child=as_int32(parent_chunk_child),
        )

    @classmethod
    def index_names(cls) -> tuple[str, ...]:
        """Names of the index tensors (every field but ``kind``)."""
        return _INDEX_NAMES

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.index_names()}


_INDEX_NAMES = tuple(f.name for f in fields(Layer) if f.name != "kind")


def _hub_plan(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a CSR's segments into chunks of at most :data:`HUB_CHUNK` edges.

    Returns ``(chunk_offsets, chunk_of_segment, segment_of_chunk)``, all empty when no segment
    is longer than the limit (the kernels then skip the two-step reduction).
    """
    lengths = np.diff(offsets)
    if lengths.size == 0 or lengths.max() <= HUB_CHUNK:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    chunks = np.maximum(1, -(-lengths // HUB_CHUNK))
    chunk_of_segment = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(chunks, out=chunk_of_segment[1:])
    segment_of_chunk = np.repeat(np.arange(lengths.size), chunks)
    index_in_segment = np.arange(segment_of_chunk.size) - chunk_of_segment[segment_of_chunk]
    starts = offsets[segment_of_chunk] + index_in_segment * HUB_CHUNK
    return np.append(starts, offsets[-1]), chunk_of_segment, segment_of_chunk


class CompiledCircuit:
    """A circuit compiled to layers (see :meth:`trilay.engine.Circuit.compile`).

    Layer 0 holds the inputs in a fixed order: false, true, ``+1..+V``, ``-1..-V``
    (``2V + 2`` rows). Layers ``1..num_layers`` alternate AND (odd) and OR (even); the last
    holds the roots in order. ``num_nodes``/``num_edges`` count every layer, layer 0 included.
    """

    def __init__(
        self,
        num_vars: int,
        layers: list[Layer],
        num_roots: int,
        smooth: bool,
        fixed: dict[int, bool],
    ):
        self.num_vars = num_vars
        self.layers = layers
        self.num_roots = num_roots
        self.smooth = smooth
        self.fixed = dict(fixed)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_nodes(self) -> int:
        return 2 * self.num_vars + 2 + sum(layer.num_nodes for layer in self.layers)

    @property
    def num_edges(self) -> int:
        return sum(layer.num_edges for layer in self.layers)

    @property
    def device(self) -> torch.device:
        return self.layers[0].child.device

    def to(self, device: str | torch.device) -> CompiledCircuit:
        """Move every index tensor to ``device`` (in place); returns ``self``."""
        for layer in self.layers:
            for name, tensor in layer.tensors().items():
                setattr(layer, name, tensor.to(device))
        return self

    def module(self, semiring="real", **options):
        """A :class:`~trilay.engine.module.CircuitModule` evaluating it in ``semiring``;
        ``options`` are the module's (``backend``, ``memory_budget_mb``, ``cuda_graphs``,
        ``fuse_layers``)."""
        from .module import CircuitModule

        return CircuitModule(self, semiring, **options)

    def save(self, path: str | os.PathLike) -> None:
        """Write the compiled circuit to one file (read it back with :meth:`load`)."""
        torch.save(
            {
                "format": _FORMAT,
                "num_vars": self.num_vars,
                "num_roots": self.num_roots,
                "smooth": self.smooth,
                "fixed": sorted(self.fixed.items()),
                "layers": [
                    {"kind": layer.kind, **{k: t.cpu() for k, t in layer.tensors().items()}}
                    for layer in self.layers
                ],
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location=None) -> CompiledCircuit:
        """Read a file written by :meth:`save`."""
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises many types for a file that is not its own
            raise ParseError(f"not a trilay compiled circuit ({err})", os.fspath(path)) from err
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ParseError(f"not a trilay compiled circuit (expected {_FORMAT})", os.fspath(path))
        layers = [Layer(**layer) for layer in data["layers"]]
        if not layers:
            raise CircuitError(f"{os.fspath(path)}: a compiled circuit has at least one layer")
        return cls(
            num_vars=data["num_vars"],
            layers=layers,
            num_roots=data["num_roots"],
            smooth=data["smooth"],
            fixed=dict(data["fixed"]),
        )

    def __repr__(self) -> str:
        return (
            f"CompiledCircuit(num_vars={self.num_vars}, num_roots={self.num_roots}, "
            f"num_layers={self.num_layers}, num_nodes={self.num_nodes}, "
            f"num_edges={self.num_edges}, smooth={self.smooth}, device={self.device})"
        )
