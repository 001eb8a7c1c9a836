"""The compiled, layered circuit: index tensors built once, moved to a device once.

All node values live in one buffer ``[num_nodes, batch]``, one row per node. Rows
``0..num_leaves-1`` are the leaves (false, true, ``+1..+V``, ``-1..-V``, and with smoothing
the tautologies ``v OR -v``, ``1..V``); then come the layers, each a contiguous block of rows
whose nodes share one reduction. A node reads its children from whatever lower rows they are
in: there are no pass-through (unary copy) nodes, so the layered circuit has exactly the
nodes of the simplified, deduplicated circuit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ._passes import transposed_csr
from .errors import CircuitError, ParseError

#: The file format :meth:`CompiledCircuit.save` writes. Version 1 (layers of pass-through
#: nodes, trilay before the linear layering) is refused with a request to recompile.
_FORMAT = "trilay.compiled/2"
_OLD_FORMATS = ("trilay.compiled/1",)

#: Nodes with more edges than this (fan-in, or fan-out in the transposed CSR) are split into
#: chunks of at most this many edges, reduced separately and combined, so that one hub (a sum
#: node with 10^4 children, a literal with 10^4 parents) does not serialize its layer.
HUB_CHUNK = 256

#: Row and edge counts must fit the int32 indices the kernels read.
MAX_INDEX = 2**31 - 1

KINDS = ("and", "or")

#: The circuit-wide index tensors of a :class:`CompiledCircuit`.
_INDEX_NAMES = (
    "child",
    "offsets",
    "roots",
    "parent_offsets",
    "parent_split",
    "parent",
    "parent_edge",
)


@dataclass(frozen=True)
class HubPlan:
    """A CSR's long segments cut into chunks of at most :data:`HUB_CHUNK` entries: segment
    ``i`` owns chunks ``chunk_of_segment[i]:chunk_of_segment[i+1]``, chunk ``t`` covers entries
    ``chunk_offsets[t]:chunk_offsets[t+1]`` of the CSR and belongs to ``segment_of_chunk[t]``
    (a row, for the transposed CSR's plans)."""

    chunk_offsets: torch.Tensor  # [S + 1] int32
    chunk_of_segment: torch.Tensor  # [n + 1] int32
    segment_of_chunk: torch.Tensor  # [S] int32

    def to(self, device) -> HubPlan:
        return HubPlan(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def hub_plan(offsets: np.ndarray, base: int = 0) -> HubPlan | None:
    """Chunks of the segments ``offsets[i]:offsets[i+1]`` (``None`` when none is longer than
    :data:`HUB_CHUNK`: the kernels then skip the two-step reduction); ``segment_of_chunk`` is
    offset by ``base``."""
    lengths = np.diff(offsets)
    if lengths.size == 0 or lengths.max() <= HUB_CHUNK:
        return None
    chunks = np.maximum(1, -(-lengths // HUB_CHUNK))
    chunk_of_segment = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(chunks, out=chunk_of_segment[1:])
    segment_of_chunk = np.repeat(np.arange(lengths.size), chunks)
    index_in_segment = np.arange(segment_of_chunk.size) - chunk_of_segment[segment_of_chunk]
    starts = offsets[segment_of_chunk] + index_in_segment * HUB_CHUNK
    as_int32 = _int32
    return HubPlan(
        as_int32(np.append(starts, offsets[-1])),
        as_int32(chunk_of_segment),
        as_int32(segment_of_chunk + base),
    )


def _int32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32))


class CompiledCircuit:
    """A circuit compiled to layers (see :meth:`trilay.engine.Circuit.compile`).

    Rows (one per node, the leaves first):

    - ``0..num_leaves-1``: false, true, ``+1..+V``, ``-1..-V`` and, when ``smooth``, the
      tautologies ``v OR -v`` for ``v = 1..V`` (``num_leaves`` is ``2V + 2``, or ``3V + 2``);
    - layer ``k`` (``1..num_layers``): rows ``row_starts[k]:row_starts[k+1]``, all AND
      (``layer_kinds[k-1] == "and"``) or all OR; every node reads only rows of lower layers.

    Index tensors (int32 unless said, built once, moved by :meth:`to`):

    - ``child: [E]``, ``offsets: [num_nodes - num_leaves + 1]``: internal row ``r`` reduces the
      rows ``child[offsets[r - num_leaves]:offsets[r - num_leaves + 1]]`` (ascending); edges are
      numbered in row order, so each layer's edges are contiguous;
    - ``roots: [num_roots]`` int64: the root rows, in root order (a root may be a leaf, and
      roots may repeat);
    - the transposed CSR, for backward passes without atomics: row ``c``'s parent edges are
      ``parent_offsets[c]:parent_offsets[c+1]``, those of AND parents first, up to
      ``parent_split[c]``, then those of OR parents; ``parent[...]`` the parent rows and
      ``parent_edge[...]`` the edge ids, ascending within each part;
    - hub plans (:class:`HubPlan`, ``None`` where no segment is longer than
      :data:`HUB_CHUNK`): ``node_hubs[k]`` cuts layer ``k``'s edge CSR, ``parent_hubs[k]`` the
      transposed CSR of layer ``k``'s rows (``k = 0``: the leaves).

    ``num_nodes``/``num_edges`` count every row and edge, the leaves included.
    """

    def __init__(
        self,
        num_vars: int,
        smooth: bool,
        fixed: dict[int, bool],
        layer_kinds: list[str],
        row_starts: list[int],
        child: torch.Tensor,
        offsets: torch.Tensor,
        roots: torch.Tensor,
    ):
        self.num_vars = int(num_vars)
        self.smooth = bool(smooth)
        self.fixed = dict(fixed)
        self.layer_kinds = list(layer_kinds)
        self.row_starts = [int(r) for r in row_starts]
        self.child = child
        self.offsets = offsets
        self.roots = roots
        off = offsets.cpu().numpy()
        self.edge_starts = [0] + off[np.asarray(self.row_starts[1:]) - self.num_leaves].tolist()
        self._derive(child.cpu().numpy(), off)

    @property
    def num_leaves(self) -> int:
        return self.row_starts[1]

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def num_roots(self) -> int:
        return self.roots.numel()

    @property
    def num_nodes(self) -> int:
        return self.row_starts[-1]

    @property
    def num_edges(self) -> int:
        return self.child.numel()

    @property
    def device(self) -> torch.device:
        return self.child.device

    def layer_rows(self, k: int) -> tuple[int, int]:
        """Layer ``k``'s rows ``(first, end)`` (``k = 0``: the leaves)."""
        return self.row_starts[k], self.row_starts[k + 1]

    def layer_edges(self, k: int) -> tuple[int, int]:
        """Layer ``k``'s edges ``(first, end)`` (``k >= 1``)."""
        return self.edge_starts[k], self.edge_starts[k + 1]

    def _derive(self, child: np.ndarray, offsets: np.ndarray) -> None:
        """The transposed CSR and the hub plans, from ``child`` and ``offsets``."""
        n0 = self.num_leaves
        device = self.device
        layer_is_or = np.array([False] + [k == "or" for k in self.layer_kinds])
        row_is_or = np.repeat(layer_is_or, np.diff(self.row_starts))
        parent_offsets, parent_split, parent, parent_edge = transposed_csr(
            child, offsets, row_is_or, n0
        )
        self.parent_offsets = torch.from_numpy(parent_offsets).to(device)
        self.parent_split = torch.from_numpy(parent_split).to(device)
        self.parent = torch.from_numpy(parent).to(device)
        self.parent_edge = torch.from_numpy(parent_edge).to(device)
        self.node_hubs: dict[int, HubPlan] = {}
        self.parent_hubs: dict[int, HubPlan] = {}
        # Only layers holding a hub get a plan: a 200,000-deep chain has 400,000 layers, and
        # a numpy call or two per layer cost it seconds.
        for k in self._hub_layers(offsets, n0):
            lo, hi = self.layer_rows(k)
            self.node_hubs[k] = hub_plan(offsets[lo - n0 : hi - n0 + 1]).to(device)
        for k in self._hub_layers(parent_offsets, 0):
            lo, hi = self.layer_rows(k)
            self.parent_hubs[k] = hub_plan(parent_offsets[lo : hi + 1], base=lo).to(device)

    def _hub_layers(self, offsets: np.ndarray, first_row: int) -> list[int]:
        """The layers with a segment ``offsets[i]:offsets[i+1]`` (row ``first_row + i``)
        longer than :data:`HUB_CHUNK`."""
        long_rows = np.flatnonzero(np.diff(offsets) > HUB_CHUNK) + first_row
        layers = np.searchsorted(self.row_starts, long_rows, side="right") - 1
        return np.unique(layers).tolist()

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every index tensor by name (hub plans as ``node_hub{k}_*`` / ``parent_hub{k}_*``)."""
        out = {name: getattr(self, name) for name in _INDEX_NAMES}
        for prefix, plans in (("node_hub", self.node_hubs), ("parent_hub", self.parent_hubs)):
            for k, plan in plans.items():
                for field in HubPlan.__dataclass_fields__:
                    out[f"{prefix}{k}_{field}"] = getattr(plan, field)
        return out

    def to(self, device: str | torch.device) -> CompiledCircuit:
        """Move every index tensor to ``device`` (in place); returns ``self``."""
        for name in _INDEX_NAMES:
            setattr(self, name, getattr(self, name).to(device))
        self.node_hubs = {k: p.to(device) for k, p in self.node_hubs.items()}
        self.parent_hubs = {k: p.to(device) for k, p in self.parent_hubs.items()}
        return self

    def module(self, semiring="real", **options):
        """A :class:`~trilay.engine.module.CircuitModule` evaluating it in ``semiring``;
        ``options`` are the module's (``backend``, ``memory_budget_mb``, ``cuda_graphs``,
        ``fuse_layers``, ``validate``)."""
        from .module import CircuitModule

        return CircuitModule(self, semiring, **options)

    def save(self, path: str | os.PathLike) -> None:
        """Write the compiled circuit to one file (read it back with :meth:`load`). Only the
        forward CSR is stored; the transposed CSR and hub plans are rebuilt on load."""
        torch.save(
            {
                "format": _FORMAT,
                "num_vars": self.num_vars,
                "smooth": self.smooth,
                "fixed": sorted(self.fixed.items()),
                "layer_kinds": list(self.layer_kinds),
                "row_starts": list(self.row_starts),
                "child": self.child.cpu(),
                "offsets": self.offsets.cpu(),
                "roots": self.roots.cpu(),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location=None) -> CompiledCircuit:
        """Read a file written by :meth:`save`; every field and index is checked first.

        Raises :class:`~trilay.engine.errors.ParseError` (naming the file and the problem) for
        a file that is not a compiled circuit of this version, or whose indices are out of
        range or inconsistent: a bad index never reaches a kernel.
        """
        where = os.fspath(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as err:
            raise ParseError(f"no such file ({err.strerror})", where) from err
        except Exception as err:  # torch raises many types for a file that is not its own
            raise ParseError(f"not a trilay compiled circuit ({err})", where) from err
        fields = _checked_fields(data, where)
        compiled = cls(**fields)
        return compiled if map_location is None else compiled.to(map_location)

    def __repr__(self) -> str:
        return (
            f"CompiledCircuit(num_vars={self.num_vars}, num_roots={self.num_roots}, "
            f"num_layers={self.num_layers}, num_nodes={self.num_nodes}, "
            f"num_edges={self.num_edges}, smooth={self.smooth}, device={self.device})"
        )


_FIELDS = {
    "format",
    "num_vars",
    "smooth",
    "fixed",
    "layer_kinds",
    "row_starts",
    "child",
    "offsets",
    "roots",
}


def _checked_fields(data, where: str) -> dict:
    """The constructor's arguments from a loaded file, after checking every one."""

    def bad(problem: str) -> ParseError:
        return ParseError(f"corrupt compiled circuit: {problem}", where)

    if not isinstance(data, dict):
        raise ParseError(f"not a trilay compiled circuit (expected {_FORMAT})", where)
    if data.get("format") in _OLD_FORMATS:
        raise ParseError(
            f"compiled by an older trilay ({data['format']}, layers with pass-through nodes); "
            f"this version reads {_FORMAT}: compile the circuit again and save it",
            where,
        )
    if data.get("format") != _FORMAT:
        raise ParseError(f"not a trilay compiled circuit (expected {_FORMAT})", where)
    if set(data) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(data)), sorted(set(data) - _FIELDS)
        raise bad(f"missing fields {missing}, unknown fields {extra}")
    num_vars, smooth = data["num_vars"], data["smooth"]
    if not _is_int(num_vars) or not 0 <= num_vars < MAX_INDEX // 3:
        raise bad(f"num_vars {num_vars!r} is not an integer in 0..{MAX_INDEX // 3 - 1}")
    if not isinstance(smooth, bool):
        raise bad(f"smooth {smooth!r} is not a bool")
    fixed = data["fixed"]
    if not isinstance(fixed, list) or not all(
        isinstance(p, (tuple, list))
        and len(p) == 2
        and _is_int(p[0])
        and 1 <= p[0] <= num_vars
        and isinstance(p[1], bool)
        for p in fixed
    ):
        raise bad(f"fixed must be a list of (variable in 1..{num_vars}, bool) pairs")
    if len({p[0] for p in fixed}) != len(fixed):
        raise bad("fixed names a variable twice")
    kinds = data["layer_kinds"]
    if not isinstance(kinds, list) or not all(k in KINDS for k in kinds):
        raise bad(f"layer_kinds must be a list of {KINDS}")
    starts = data["row_starts"]
    num_leaves = 2 * num_vars + 2 + (num_vars if smooth else 0)
    if (
        not isinstance(starts, list)
        or len(starts) != len(kinds) + 2
        or not all(_is_int(r) for r in starts)
    ):
        raise bad(f"row_starts must be {len(kinds) + 2} integers (one per layer, and the end)")
    if starts[0] != 0 or starts[1] != num_leaves:
        raise bad(f"row_starts must begin 0, {num_leaves} (the leaves of {num_vars} variables)")
    if any(b <= a for a, b in zip(starts[1:], starts[2:], strict=False)) or starts[-1] > MAX_INDEX:
        raise bad("row_starts must increase (no empty layer) and stay below 2^31")
    num_nodes = starts[-1]
    child = _index_tensor(data["child"], "child", bad)
    offsets = _index_tensor(data["offsets"], "offsets", bad)
    roots = _index_tensor(data["roots"], "roots", bad)
    if offsets.numel() != num_nodes - num_leaves + 1:
        raise bad(f"offsets has {offsets.numel()} entries, expected {num_nodes - num_leaves + 1}")
    off = offsets.numpy().astype(np.int64)
    if off[0] != 0 or off[-1] != child.numel() or np.any(np.diff(off) < 1):
        raise bad("offsets must start at 0, end at len(child) and give every node a child")
    row_of_edge = np.repeat(np.arange(num_leaves, num_nodes), np.diff(off))
    layer_of_edge = np.searchsorted(np.asarray(starts), row_of_edge, side="right") - 1
    kids = child.numpy().astype(np.int64)
    below = np.asarray(starts)[layer_of_edge]
    if kids.size and (kids.min() < 0 or np.any(kids >= below)):
        e = int(np.flatnonzero((kids < 0) | (kids >= below))[0])
        raise bad(f"edge {e} reads row {kids[e]}, not a row below its node's layer")
    r = roots.numpy()
    if r.size == 0 or r.min() < 0 or r.max() >= num_nodes:
        raise bad(f"roots must be 1 or more rows in 0..{num_nodes - 1}")
    return {
        "num_vars": num_vars,
        "smooth": smooth,
        "fixed": dict(fixed),
        "layer_kinds": kinds,
        "row_starts": starts,
        "child": child.to(torch.int32),
        "offsets": offsets.to(torch.int32),
        "roots": roots.to(torch.int64),
    }


def _index_tensor(t, name: str, bad) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
        raise bad(f"{name} must be a 1-D int32/int64 tensor")
    if t.numel() > MAX_INDEX:
        raise bad(f"{name} has more than 2^31 entries")
    return t.contiguous()


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_compiled(compiled: CompiledCircuit) -> None:
    """Raise :class:`~trilay.engine.errors.CircuitError` unless ``compiled`` satisfies the
    invariants :meth:`CompiledCircuit.load` checks (used by tests of the compiler)."""
    data = {
        "format": _FORMAT,
        "num_vars": compiled.num_vars,
        "smooth": compiled.smooth,
        "fixed": sorted(compiled.fixed.items()),
        "layer_kinds": compiled.layer_kinds,
        "row_starts": compiled.row_starts,
        "child": compiled.child.cpu(),
        "offsets": compiled.offsets.cpu(),
        "roots": compiled.roots.cpu(),
    }
    try:
        _checked_fields(data, "<compiled>")
    except ParseError as err:
        raise CircuitError(str(err)) from err
