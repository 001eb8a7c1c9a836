"""KLay's torch modules on trilay's engine: :class:`CircuitModule` and
:class:`ProbabilisticCircuitModule`.

Both are built, as in KLay, from a circuit's layer index arrays (``Circuit._get_indices()``,
KLay's ``(ixs_in, ixs_out)``), and keep KLay's description of them as ``module.layers``. The
evaluation is trilay's: the layers become an engine circuit, compiled once (without smoothing:
the circuit as written) and evaluated by :class:`trilay.engine.CircuitModule` (Triton kernels
on CUDA tensors, the PyTorch path on the CPU).
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from trilay.engine import Circuit as _IR
from trilay.engine import get_semiring
from trilay.engine.errors import CircuitError, DTypeError, SemiringError, ShapeError
from trilay.engine.semiring import Semiring, log1mexp
from trilay.kernels.reference import gather_rows, segment_reduce_torch

#: KLay's semirings, evaluated on the circuit as written (no smoothing), as KLay does: the
#: max semirings take the max over the circuit's branches, not over complete models.
SEMIRINGS: dict[str, Semiring] = {
    "real": get_semiring("real"),
    "log": get_semiring("log"),
    "mpe": replace(get_semiring("mpe"), needs_smoothing=False),
    "godel": replace(get_semiring("godel"), needs_smoothing=False),
}
#: The semirings KLay offers probabilistic circuits in.
PROBABILISTIC_SEMIRINGS = ("real", "log")


def check_semiring(semiring: str, probabilistic: bool) -> None:
    """Raise :class:`~trilay.engine.errors.SemiringError` unless KLay offers ``semiring``
    (for probabilistic circuits: ``real`` and ``log``)."""
    names = PROBABILISTIC_SEMIRINGS if probabilistic else tuple(SEMIRINGS)
    if semiring not in names:
        kind = "probabilistic circuits" if probabilistic else "KLay circuits"
        raise SemiringError(f"unknown semiring {semiring!r} for {kind}; expected one of {names}")


def check_eps(eps: float, stacklevel: int) -> None:
    """Warn that a non-zero ``eps`` is ignored (trilay's log semiring is exact at 0)."""
    if eps:
        warnings.warn(
            f"eps={eps} is ignored: trilay's log semiring is exact at probability 0",
            stacklevel=stacklevel,
        )


# ---------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class _LayoutLayer:
    kind: str  # "and" | "or"
    child: np.ndarray  # [E] int64: rows of the layer below (layer 0: trilay's input rows)
    offsets: np.ndarray  # [n + 1] int64 CSR: node i's edges are offsets[i]:offsets[i + 1]


@dataclass(frozen=True)
class _Layout:
    """KLay's layers of a circuit, checked, with layer 1's children renumbered from KLay's
    input row (false, true, +1, -1, +2, -2, ...) to trilay's (false, true, +1..+V, -1..-V)."""

    num_vars: int
    ixs_in: list[np.ndarray]  # KLay's, as given
    ixs_out: list[np.ndarray]
    layers: list[_LayoutLayer]

    @classmethod
    def of(cls, ixs_in, ixs_out, num_vars: int | None) -> _Layout:
        """Check KLay's ``(ixs_in, ixs_out)``; ``num_vars`` defaults to the largest variable
        layer 1 reads.

        Raises:
            CircuitError: not one pair of 1-D integer arrays per layer, offsets not ascending
                from 0 to the edge count, a child index beyond the layer below, or
                ``num_vars`` below a variable the circuit reads.
        """
        if len(ixs_in) != len(ixs_out) or len(ixs_in) == 0:
            raise CircuitError(
                f"KLay's layers are one ixs_in and one ixs_out array per layer, got "
                f"{len(ixs_in)} and {len(ixs_out)}"
            )
        ins, outs = [], []
        width = None  # of the layer below; layer 0 (the input row) is as wide as it is read
        for k, (ix_in, ix_out) in enumerate(zip(ixs_in, ixs_out, strict=True), 1):
            ix_in, ix_out = _index_array(ix_in, k, "ixs_in"), _index_array(ix_out, k, "ixs_out")
            if ix_out.size == 0 or ix_out[0] != 0 or ix_out[-1] != ix_in.size:
                raise CircuitError(f"layer {k}: ixs_out must run from 0 to {ix_in.size}")
            if (np.diff(ix_out) < 0).any():
                raise CircuitError(f"layer {k}: ixs_out is not ascending")
            if ix_in.size and (ix_in.min() < 0 or (width is not None and ix_in.max() >= width)):
                raise CircuitError(f"layer {k}: a child index is outside the layer below")
            ins.append(ix_in)
            outs.append(ix_out)
            width = ix_out.size - 1
        first = ins[0]
        read = int(first.max() >> 1) if first.size else 0
        if num_vars is None:
            num_vars = read
        elif num_vars < read:
            raise CircuitError(f"num_vars={num_vars}, but the circuit reads variable {read}")
        var = first >> 1
        rows = np.where(first < 2, first, np.where(first % 2 == 0, 1 + var, 1 + num_vars + var))
        layers = [
            _LayoutLayer("and" if k % 2 == 0 else "or", rows if k == 0 else ix_in, ix_out)
            for k, (ix_in, ix_out) in enumerate(zip(ins, outs, strict=True))
        ]
        return cls(num_vars, ins, outs, layers)


def _index_array(x, layer: int, name: str) -> np.ndarray:
    array = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise CircuitError(f"layer {layer}: {name} must be a 1-D integer array")
    return array.astype(np.int64)


def _layout_circuit(layout: _Layout) -> tuple[_IR, list[list[int]]]:
    """The layout as an engine circuit (no roots): ``(circuit, nodes)``, ``nodes[k]`` the
    circuit's nodes of layout layer ``k`` (``nodes[0]`` the input rows)."""
    ir = _IR()
    n = layout.num_vars
    nodes = [[ir.false(), ir.true(), *map(ir.literal, range(1, n + 1))]]
    nodes[0] += [ir.literal(-v) for v in range(1, n + 1)]
    for layer in layout.layers:
        build = ir.conjoin if layer.kind == "and" else ir.disjoin
        below, child, offsets = nodes[-1], layer.child.tolist(), layer.offsets.tolist()
        nodes.append([build([below[c] for c in child[a:b]]) for a, b in _pairs(offsets)])
    return ir, nodes


def _pairs(offsets: list[int]):
    return zip(offsets[:-1], offsets[1:], strict=True)


def _or_edges(layout: _Layout) -> list[tuple[int, int]]:
    """The edges a probabilistic circuit weighs, in its edge order (``_weighted_circuit``'s):
    ``(k, c)`` for an edge of an OR node with two or more children in layout layer ``k + 1``
    into row ``c`` of layer ``k``."""
    edges = []
    for k, layer in enumerate(layout.layers):
        if layer.kind == "or":
            child = layer.child.tolist()
            for a, b in _pairs(layer.offsets.tolist()):
                if b - a >= 2:
                    edges += [(k, c) for c in child[a:b]]
    return edges


# ---------------------------------------------------------------------------- layer views
class LayerView:
    """Layer ``k`` of KLay's layout of the circuit (``module.layers[k]``; KLay's
    ``CircuitLayer``): a description, not what trilay evaluates.

    Attributes: ``kind`` (``"and"`` / ``"or"``), ``ix_in`` ``[E]`` (each edge's child in the
    layer below), ``offsets`` ``[n + 1]`` (node ``i``'s edges are ``offsets[i]:offsets[i+1]``),
    ``ix_out`` ``[E]`` (each edge's node), ``in_shape`` / ``out_shape``; int64 CPU tensors.
    """

    def __init__(self, kind: str, ix_in: np.ndarray, offsets: np.ndarray):
        self.kind = kind
        self.ix_in = torch.from_numpy(ix_in)
        self.offsets = torch.from_numpy(offsets)
        self.ix_out = torch.from_numpy(np.repeat(np.arange(offsets.size - 1), np.diff(offsets)))
        self.out_shape = (offsets.size - 1,)
        self.in_shape = (int(ix_in.max()) + 1 if ix_in.size else 0,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}, {self.out_shape[0]} nodes)"


class SumLayerView(LayerView):
    """An OR layer of a probabilistic circuit: its slice of the module's edge weights.

    ``weights`` is a view of :attr:`ProbabilisticCircuitModule.weights` (the edges of this
    layer's OR nodes with two or more children; a single-child chain node has weight 1 and no
    parameter): in-place writes reach the module (``layer.weights.data.zero_()``, as in KLay),
    and so does ``layer.weights = tensor``.
    """

    def __init__(self, module, edges: slice, ix_in, offsets):
        super().__init__("or", ix_in, offsets)
        self._module = module
        self._edges = edges

    @property
    def weights(self) -> torch.Tensor:
        return self._module.weights[self._edges]

    @weights.setter
    def weights(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            self._module.weights[self._edges] = value

    def get_edge_weights(self) -> torch.Tensor:
        """This layer's normalized edge weights."""
        return self._module.edge_weights()[self._edges]

    def get_log_edge_weights(self) -> torch.Tensor:
        return self._module.log_edge_weights()[self._edges]


# ---------------------------------------------------------------------------- modules
class CircuitModule(torch.nn.Module):
    """KLay's circuit module contract on trilay's engine.

    ``CircuitModule(ixs_in, ixs_out, semiring="real", eps=0, *, num_vars=None, **options)``
    takes KLay's layer index arrays (``Circuit._get_indices()``); ``num_vars`` (default: the
    largest variable the circuit reads) is the number of input columns it needs; ``options``
    are the engine module's (``backend``, ``memory_budget_mb``, ``cuda_graphs``).

    ``forward(x_pos, x_neg=None)``: literal weights ``x_pos: [..., V']`` (``V' >= V``; columns
    beyond the circuit's ``V`` variables are ignored) and optionally ``x_neg`` of the same shape
    (default: the semiring's complement, ``1 - x_pos`` or ``log(1 - exp(x_pos))`` in ``log``)
    -> root values ``[..., num_roots]`` (``[V'] -> [num_roots]``, ``[B, V'] -> [B, num_roots]``
    as in KLay). Works under autograd and ``torch.func.vmap`` (of the forward, gradients
    through it, and ``vmap(grad(...))``); on the PyTorch path (CPU tensors,
    ``backend="torch"``) also under ``torch.compile(fullgraph=True)``. The engine module is the
    submodule ``circuit`` (its index tensors are buffers).

    KLay's attributes: ``semiring`` (the name), ``zero`` / ``one`` (the semiring's values of
    false / true), ``layers`` (:class:`LayerView` per layer), :meth:`negate`,
    :meth:`encode_input`, :meth:`sparsity`, :meth:`to_pc`, :meth:`is_probabilistic`.

    Raises:
        SemiringError: an unknown semiring.
        CircuitError: malformed index arrays (not one pair of 1-D integer arrays per layer,
            offsets not ascending from 0, a child outside the layer below), or ``num_vars``
            below a variable they read.
        ShapeError: ``x_pos`` has fewer than ``V`` columns, or ``x_neg`` another shape.
        DTypeError: not a tensor, or not a floating dtype.
    """

    def __init__(
        self,
        ixs_in: Sequence,
        ixs_out: Sequence,
        semiring: str = "real",
        eps: float = 0,
        *,
        num_vars: int | None = None,
        **options,
    ):
        super().__init__()
        check_semiring(semiring, self.is_probabilistic())
        check_eps(eps, stacklevel=3)
        self.semiring = semiring
        self._semiring = SEMIRINGS[semiring]
        self.zero, self.one = self._semiring.zero, self._semiring.one
        self._layout = _Layout.of(ixs_in, ixs_out, num_vars)
        self._options = options
        self.num_vars = self._layout.num_vars
        ir = self._engine_circuit()
        self.circuit = ir.compile(smooth=False).module(self._semiring, **options)
        self.layers = self._layer_views()

    def _engine_circuit(self) -> _IR:
        ir, nodes = _layout_circuit(self._layout)
        for root in nodes[-1]:
            ir.add_root(root)
        return ir

    def _layer_views(self) -> list[LayerView]:
        layout = self._layout
        return [
            LayerView(layer.kind, ix_in, ix_out)
            for layer, ix_in, ix_out in zip(
                layout.layers, layout.ixs_in, layout.ixs_out, strict=True
            )
        ]

    def is_probabilistic(self) -> bool:
        return False

    def forward(self, x_pos: torch.Tensor, x_neg: torch.Tensor | None = None) -> torch.Tensor:
        pos, neg = self._inputs(x_pos, x_neg)
        return self.circuit(pos, neg)

    def negate(self, x: torch.Tensor, eps: float = 0) -> torch.Tensor:
        """The semiring's default negative-literal weight: ``1 - x``, in ``log``
        ``log(1 - exp(x))`` (exact; ``eps`` is ignored, see :func:`check_eps`)."""
        check_eps(eps, stacklevel=3)
        return self._semiring.complement(x)

    def encode_input(self, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        """KLay's input row of ``pos, neg: [..., V']``: ``[..., 2 + 2V']`` holding ``zero``,
        ``one``, then ``pos[..., v], neg[..., v]`` for each column ``v`` (``neg`` defaults to
        :meth:`negate`); a ``[B, V']`` input gives ``[2 + 2V', B]``, as KLay's layers read it.

        Raises:
            DTypeError, ShapeError: as :meth:`forward`.
        """
        self._columns(pos, "x_pos")
        if neg is None:
            neg = self.negate(pos)
        elif self._columns(neg, "x_neg").shape != pos.shape:
            raise ShapeError(f"x_neg has shape {list(neg.shape)}, x_pos has {list(pos.shape)}")
        units = torch.tensor([self.zero, self.one], dtype=pos.dtype, device=pos.device)
        x = torch.stack([pos, neg], dim=-1).flatten(-2)
        x = torch.cat([units.expand(*x.shape[:-1], 2), x], dim=-1)
        return x.mT if x.dim() == 2 else x

    def sparsity(self, nb_vars: int) -> float:
        """KLay's sparsity: the edges over the entries of dense matrices between consecutive
        layers (``nb_vars`` wide at the bottom)."""
        widths = [nb_vars] + [layer.out_shape[0] for layer in self.layers]
        dense = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        return sum(layer.ix_in.numel() for layer in self.layers) / dense

    def to_pc(self, x_pos: torch.Tensor, x_neg: torch.Tensor | None = None):
        """A :class:`ProbabilisticCircuitModule` of this circuit whose edge weights make each
        OR node pick a child in proportion to the child's value at ``x_pos`` (KLay's
        ``to_pc``): ``softmax(weights)`` over an OR node's edges is ``value(child) /
        sum(values)``. An OR node whose children are all 0 (unreachable at these weights) gets
        uniform weights.

        Args:
            x_pos, x_neg: ``[V']`` literal weights (one weight vector; integer and bool
                tensors are read as such values). The new module's weights take ``x_pos``'s
                floating dtype (or the default dtype) and device.

        Raises:
            SemiringError: the semiring is not ``real`` or ``log``.
            ShapeError: the inputs are not one ``[V']`` vector.
            CircuitError: every root has value 0 at these weights.
        """
        check_semiring(self.semiring, probabilistic=True)
        dtype = x_pos.dtype if _is_float(x_pos) else torch.get_default_dtype()
        pos, neg = self._evidence(x_pos, x_neg, dtype)
        pc = ProbabilisticCircuitModule(
            self._layout.ixs_in,
            self._layout.ixs_out,
            self.semiring,
            num_vars=self.num_vars,
            **self._options,
        ).to(device=pos.device, dtype=dtype)
        ir, nodes = _layout_circuit(self._layout)
        edges = _or_edges(self._layout)
        with torch.no_grad():
            values = _values(ir, nodes[-1] + [nodes[k][c] for k, c in edges], self, pos, neg)
            roots, log_child = values[: len(nodes[-1])], values[len(nodes[-1]) :]
            _check_possible(roots, self._semiring)
            log_child = log_child if self._semiring.log_space else torch.log(log_child)
            pc.weights.copy_(_unless_dead(log_child, pc.edge_node, pc.num_sum_nodes, 0.0))
        return pc

    def _evidence(self, x_pos, x_neg, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One weight vector ``[V']`` for :meth:`to_pc` / ``condition``, as ``dtype`` (integer
        and bool evidence read as values)."""
        x_pos = _as_values(x_pos, "x_pos", dtype)
        x_neg = None if x_neg is None else _as_values(x_neg, "x_neg", dtype)
        if x_pos.dim() != 1:
            raise ShapeError(f"x_pos must be one weight vector [V], got {list(x_pos.shape)}")
        return self._inputs(x_pos, x_neg)

    def _inputs(self, x_pos, x_neg) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The circuit's variables' columns ``x[..., :V]`` of ``x_pos`` and ``x_neg``."""
        pos = self._columns(x_pos, "x_pos")
        if x_neg is None:
            return pos, None
        neg = self._columns(x_neg, "x_neg")
        if x_neg.shape != x_pos.shape:  # before slicing: extra columns must agree too
            raise ShapeError(f"x_neg has shape {list(x_neg.shape)}, x_pos has {list(x_pos.shape)}")
        return pos, neg

    def _columns(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``x[..., :V]``, the circuit's variables' columns."""
        if not isinstance(x, torch.Tensor):
            raise DTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] < self.num_vars:
            raise ShapeError(
                f"{name} must have shape [..., V] with V >= {self.num_vars} (one weight per "
                f"variable), got {list(x.shape)}"
            )
        return x[..., : self.num_vars]


def _is_float(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _as_values(x, name: str, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise DTypeError(f"{name} must be real, got {x.dtype}")
    return x.to(dtype)


def _values(ir: _IR, roots: list[int], module: CircuitModule, pos, neg) -> torch.Tensor:
    """``ir`` with ``roots`` evaluated in ``module``'s semiring at one weight vector."""
    for root in roots:
        ir.add_root(root)
    engine = ir.compile(smooth=False).module(module._semiring, **module._options)
    return engine.to(pos.device)(pos, neg)


def _check_possible(roots: torch.Tensor, semiring: Semiring) -> None:
    if (roots == semiring.zero).all():
        raise CircuitError("every root has value 0 at these weights: no distribution to weigh")


def _unless_dead(
    log_child: torch.Tensor, edge_node: torch.Tensor, num_nodes: int, otherwise
) -> torch.Tensor:
    """``log_child`` per edge, except on the edges of OR nodes whose children are all 0 (no
    branch to prefer: they keep ``otherwise``)."""
    peak = log_child.new_full((num_nodes,), -math.inf)
    peak = peak.scatter_reduce(0, edge_node, log_child, "amax")
    dead = torch.isneginf(peak)[edge_node]
    return torch.where(dead, torch.as_tensor(otherwise, dtype=log_child.dtype), log_child)


class ProbabilisticCircuitModule(CircuitModule):
    """A probabilistic circuit (KLay's ``probabilistic=True``): every OR node with ``k >= 2``
    children weighs child ``j`` by ``softmax(weights[node])[j]``.

    The edge weights are one parameter ``weights: [num_edges]`` (unnormalized logits, standard
    normal at initialization, as in KLay), normalized per OR node on every forward. They enter
    the circuit as extra input variables: edge ``e`` of an OR node becomes ``AND(child, w_e)``,
    ``w_e`` fed with the normalized weight (its log in ``log``), so the engine evaluates the
    weighted circuit with its ordinary layers. The OR nodes are those of KLay's layout (after
    KLay's constant folding and merging of equal nodes); chain nodes (one child) have none.

    Edge order: edge ``e`` is the ``e``-th edge of the layout's OR nodes with two or more
    children, layer by layer, node by node, each node's edges in order; ``edge_node[e]`` is its
    OR node (0-based, ascending, so each node's edges are contiguous). ``layers[k].weights``
    of an OR layer is its slice (:class:`SumLayerView`).

    ``forward`` is :class:`CircuitModule`'s; :meth:`sample` draws assignments,
    :meth:`condition` conditions the edge weights on evidence.
    """

    def _engine_circuit(self) -> _IR:
        ir, edge_node, _ = _weighted_circuit(self._layout)
        self.num_sum_nodes = int(edge_node.max()) + 1 if edge_node.size else 0
        self.register_buffer("edge_node", torch.from_numpy(edge_node))
        self.weights = torch.nn.Parameter(torch.randn(edge_node.size))
        return ir

    def _layer_views(self) -> list[LayerView]:
        views, start = [], 0
        for layer, ix_in, ix_out in zip(
            self._layout.layers, self._layout.ixs_in, self._layout.ixs_out, strict=True
        ):
            if layer.kind == "and":
                views.append(LayerView("and", ix_in, ix_out))
                continue
            fan_in = np.diff(ix_out)
            stop = start + int(fan_in[fan_in >= 2].sum())
            views.append(SumLayerView(self, slice(start, stop), ix_in, ix_out))
            start = stop
        return views

    def is_probabilistic(self) -> bool:
        return True

    def log_edge_weights(self) -> torch.Tensor:
        """``[num_edges]`` log of the normalized edge weights (a log-softmax per OR node)."""
        w, node = self.weights, self.edge_node
        peak = w.new_full((self.num_sum_nodes,), -math.inf)
        peak = peak.scatter_reduce(0, node, w.detach(), "amax")
        shifted = torch.exp(w - peak[node])
        # scatter_add, not index_add: inductor's CPU codegen fails on an index_add into one row
        # (a circuit with one OR node), torch 2.13.
        log_norm = torch.log(w.new_zeros(self.num_sum_nodes).scatter_add(0, node, shifted))
        return w - peak[node] - log_norm[node]

    def edge_weights(self) -> torch.Tensor:
        """``[num_edges]`` normalized edge weights (they sum to 1 over each OR node's edges)."""
        return torch.exp(self.log_edge_weights())

    def forward(self, x_pos: torch.Tensor, x_neg: torch.Tensor | None = None) -> torch.Tensor:
        return self.circuit(*self._weighted_inputs(*self._inputs(x_pos, x_neg)))

    def _weighted_inputs(self, pos, neg) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted circuit's inputs: the literal weights, then the edge weights."""
        neg = self._semiring.complement(pos) if neg is None else neg
        weights = self.log_edge_weights() if self._semiring.log_space else self.edge_weights()
        weights = weights.to(pos.dtype).expand(*pos.shape[:-1], -1)
        # The weight variables occur only as positive literals: their negative weight is unused.
        return (
            torch.cat([pos, weights], dim=-1),
            torch.cat([neg, torch.full_like(weights, self._semiring.zero)], dim=-1),
        )

    @torch.no_grad()
    def condition(self, x_pos: torch.Tensor, x_neg: torch.Tensor | None = None) -> torch.Tensor:
        """Condition the edge weights on evidence, in place (KLay's ``condition``): each edge's
        weight is multiplied by its child's value at ``x_pos`` / ``x_neg`` (under the current
        weights) and renormalized, so each OR node picks a child with its posterior probability
        given the evidence. E.g. ``x_pos = [1, 1], x_neg = [1, 0]`` keeps only the branches
        where variable 2 is true. An OR node whose children are all 0 keeps its weights (it is
        unreachable under the evidence).

        Args:
            x_pos, x_neg: ``[V']`` evidence weights (integer and bool tensors are read as such
                values; ``x_neg`` defaults to the semiring's complement).

        Returns:
            ``[num_roots]`` the root values at the evidence, before conditioning.

        Raises:
            ShapeError: the evidence is not one ``[V']`` vector.
            CircuitError: every root has value 0 at the evidence.
        """
        pos, neg = self._evidence(x_pos, x_neg, self.weights.dtype)
        ir, _, edge_child = _weighted_circuit(self._layout)
        values = _values(ir, edge_child, self, *self._weighted_inputs(pos, neg))
        roots, log_child = values[: self.circuit.num_roots], values[self.circuit.num_roots :]
        _check_possible(roots, self._semiring)
        log_child = log_child if self._semiring.log_space else torch.log(log_child)
        posterior = self.log_edge_weights() + log_child
        kept = _unless_dead(posterior, self.edge_node, self.num_sum_nodes, self.weights)
        self.weights.copy_(kept)
        return roots

    def sample(
        self,
        num_samples: int | None = None,
        x_pos: torch.Tensor | None = None,
        *,
        root: int = 0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Exact samples of the circuit's distribution, drawn top-down, batched on the device.

        Every variable ``v`` has the literal weights ``p_v = x_pos[..., v]`` (probabilities; in
        ``log``, log-probabilities) and ``1 - p_v``; without ``x_pos``, ``p_v = 1/2``. An
        assignment ``x`` is drawn with probability

            P(x) = prod_v p_v(x_v) * C(x) / Z,   C(x) = the circuit at the indicators of x,

        ``Z = forward(x_pos)[..., root]``: each OR node picks one child with probability
        (edge weight * child value) / node value (Gumbel-max, one draw per node and sample),
        every AND node descends into all children, and variables the chosen branches do not
        mention are drawn from their own weights. Exact for decomposable circuits (SDDs and
        d-DNNFs are), smooth or not.

        Args:
            num_samples: samples per weight vector; ``None`` draws one and drops that dimension.
            x_pos: ``[..., V']`` literal weights (``V' >= V``, extra columns ignored).
            root: which root's distribution.
            generator: the random source (a fixed seed makes samples reproducible).

        Returns:
            ``[num_samples, ..., V]`` bool (``[..., V]`` when ``num_samples`` is ``None``; KLay's
            ``sample()`` is ``sample()`` here: ``[V]``).

        Raises:
            ShapeError: ``num_samples`` is not ``None`` or a positive integer.
            CircuitError: ``root`` is out of range, or the root has probability 0 under the
                weights (nothing to sample).
        """
        if num_samples is not None and not (_is_int(num_samples) and num_samples >= 1):
            raise ShapeError(
                "num_samples (the samples' leading dimension) must be None or a positive "
                f"integer, got {num_samples!r}"
            )
        if not 0 <= root < self.circuit.num_roots:
            raise CircuitError(f"root {root} is not one of 0..{self.circuit.num_roots - 1}")
        device = self.weights.device
        if x_pos is None:
            x_pos = torch.full((self.num_vars,), math.log(0.5), device=device)
        else:
            x_pos = self._columns(x_pos, "x_pos").to(device)
            x_pos = x_pos if self._semiring.log_space else torch.log(x_pos)
        lead = x_pos.shape[:-1]
        copies = 1 if num_samples is None else num_samples
        log_pos = x_pos.float().reshape(1, -1, self.num_vars).expand(copies, -1, -1)
        log_pos = log_pos.reshape(-1, self.num_vars).t()  # [V, S]
        chosen = self._sample_literals(log_pos, root, generator)  # [2V, S] literal rows
        # Decomposability: at most one literal of a variable is chosen; unmentioned ones are
        # drawn from their own weights.
        free = torch.rand(log_pos.shape, generator=generator, device=device) < log_pos.exp()
        mentioned = chosen[: self.num_vars] | chosen[self.num_vars :]
        x = torch.where(mentioned, chosen[: self.num_vars], free).t()
        shape = lead + (self.num_vars,)
        return x.reshape(shape) if num_samples is None else x.reshape((num_samples,) + shape)

    def _sample_literals(self, log_pos: torch.Tensor, root: int, generator) -> torch.Tensor:
        """Top-down pass: ``log_pos: [V, S]`` -> ``[2V, S]`` bool, the literal rows (``+1..+V``,
        ``-1..-V``) the sampled branches reach."""
        num_edges, num_samples = self.weights.numel(), log_pos.shape[1]
        weights = self.log_edge_weights().float()[:, None].expand(num_edges, num_samples)
        log_neg = log1mexp(log_pos)
        leaves = torch.cat(
            [
                torch.tensor([[-math.inf], [0.0]], device=log_pos.device).expand(-1, num_samples),
                log_pos,
                weights,
                log_neg,
                torch.full_like(weights, -math.inf),
            ]
        )
        circuit = self.circuit
        layers, _ = circuit.torch_layers()
        kinds = circuit.layer_kinds
        values = [leaves]  # every layer's [n, S] log values, kept for the top-down pass
        for layer, kind in zip(layers, kinds, strict=True):
            reduce = "logsumexp" if kind == "or" else "sum"
            edges = gather_rows(values, layer.gather)
            values.append(segment_reduce_torch(edges, layer.offsets, reduce, layer.segment))
        row = int(circuit.roots[root])
        top = bisect.bisect_right(circuit.row_starts, row) - 1
        local = row - circuit.row_starts[top]
        if not torch.isfinite(values[top][local]).all():
            raise CircuitError(f"root {root} has probability 0 under these weights")
        picked = [torch.zeros_like(v, dtype=torch.bool) for v in values]
        picked[top][local] = True
        for k in range(top, 0, -1):  # a layer's rows are final once every layer above is done
            layer = layers[k - 1]
            edge_on = picked[k].index_select(0, layer.segment)  # [E, S], edges in gather order
            if kinds[k - 1] == "or":
                # Gumbel-max over each node's edges picks child j with probability
                # exp(value_j) / sum_i exp(value_i).
                uniform = torch.rand(edge_on.shape, generator=generator, device=leaves.device)
                score = gather_rows(values, layer.gather) - torch.log(-torch.log(uniform))
                best = torch.full(picked[k].shape, -math.inf, device=leaves.device)
                best = best.scatter_reduce(0, _rows(layer.segment, score), score, "amax")
                edge_on &= score == best.index_select(0, layer.segment)
            at = 0
            for source, index in layer.gather.parts:
                reached = torch.zeros(picked[source].shape, device=leaves.device)
                reached.index_add_(0, index, edge_on[at : at + index.numel()].to(reached.dtype))
                picked[source] |= reached > 0
                at += index.numel()
        n = circuit.num_vars
        chosen = picked[0]
        return torch.cat([chosen[2 : 2 + self.num_vars], chosen[2 + n : 2 + n + self.num_vars]])


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _rows(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return index[:, None].expand_as(like)


def _weighted_circuit(layout: _Layout) -> tuple[_IR, np.ndarray, list[int]]:
    """The layered circuit rebuilt with a weight variable on every edge of every OR node with
    two or more children: ``(circuit, edge_node, edge_child)``, edge ``e``'s variable
    ``V + 1 + e``, ``edge_node[e]`` its OR node (0-based, in build order) and ``edge_child[e]``
    the circuit's node of its child."""
    num_vars = layout.num_vars
    ir = _IR()
    # Layer 0's rows: false, true, +1..+V, -1..-V (see _Layout).
    below = [ir.false(), ir.true()]
    below += [ir.literal(v) for v in range(1, num_vars + 1)]
    below += [ir.literal(-v) for v in range(1, num_vars + 1)]
    edge_node: list[int] = []
    edge_child: list[int] = []
    next_var = num_vars + 1
    for layer in layout.layers:
        child, offsets = layer.child.tolist(), layer.offsets.tolist()
        nodes = []
        for i in range(len(offsets) - 1):
            kids = [below[c] for c in child[offsets[i] : offsets[i + 1]]]
            if layer.kind == "and":
                nodes.append(ir.conjoin(kids))
            elif len(kids) == 1:  # a chain node: its one weight would always be 1
                nodes.append(kids[0])
            else:
                sum_node = edge_node[-1] + 1 if edge_node else 0
                weighted = []
                for kid in kids:
                    weighted.append(ir.conjoin([kid, ir.literal(next_var)]))
                    edge_node.append(sum_node)
                    edge_child.append(kid)
                    next_var += 1
                nodes.append(ir.disjoin(weighted))
        below = nodes
    for node in below:
        ir.add_root(node)
    return ir, np.asarray(edge_node, dtype=np.int64), edge_child
