"""A KLay-compatible backend: KLay's ``Circuit`` API, evaluated by trilay.

`KLay <https://github.com/ML-KULeuven/klay>`_ (PyPI ``klaycircuits``) is the circuit backend
other frameworks call; this module mirrors its construction API and its torch module contract,
so that switching is one import::

    # from klay import Circuit
    from trilay.frontends.klay import Circuit

    circuit = Circuit()
    circuit.add_sdd(sdd_node)  # or add_sdd_from_file / add_d4_from_file
    module = circuit.to_torch_module(semiring="log")  # a torch.nn.Module
    log_p = module(x_pos)  # [B, V] -> [B, roots]; [V] -> [roots]

The module evaluates the circuit *as written*, like KLay: no smoothing, so ``mpe`` and
``godel`` are KLay's max-product and max-min over the circuit's own branches (for the true
maximum over complete models use :mod:`trilay.engine` with ``compile(smooth=True)``).

Outputs and input gradients equal KLay's in all four semirings (``real``, ``log``, ``mpe``,
``godel``), for ``[V]`` and ``[B, V]`` inputs, with and without ``x_neg`` (tests/test_klay.py).
Where this differs from KLay 0.1.2 (each checked against klaycircuits 0.1.2 there):

- ``to_torch_module`` leaves the circuit unchanged (KLay adds a root layer on every call, so a
  second module of the same circuit is one layer deeper) and ``compile`` defaults to ``False``:
  on the GPU trilay runs one fused kernel per layer without compiling, and on the CPU
  inductor's compile of a circuit costs seconds to minutes. ``compile=True`` wraps the module
  in :func:`torch.compile` (the default inductor backend); on the PyTorch path the module
  traces with ``fullgraph=True``, without graph breaks (the Triton path is not verified under
  ``torch.compile``: no GPU yet, and dynamo cannot trace Triton's interpreter).
- ``eps`` is accepted and ignored, with a warning when non-zero: trilay's log semiring is exact
  at probability 0 (``-inf`` with zero gradients, never NaN). KLay adds ``eps`` inside each
  log-sum (``log(sum + eps)``) and ignores it in the default negation.
- Inputs may have any leading batch shape, ``[..., V] -> [..., roots]`` (KLay takes ``[V]`` or
  ``[B, V]`` only, and its probabilistic circuits ``[V]`` only). Extra trailing columns beyond
  the circuit's variables are ignored, as in KLay; fewer raise
  :class:`~trilay.engine.errors.ShapeError` (KLay: ``IndexError``), as does an ``x_neg`` of
  another shape. float32/float64 evaluate in their own precision, float16/bfloat16 in float32;
  other dtypes raise :class:`~trilay.engine.errors.DTypeError` (KLay computes integer inputs in
  integer arithmetic).
- ``nb_nodes()`` counts the nodes added to the circuit, literals and constants once each. KLay
  merges equal nodes as they are added (two ``and_node`` calls on the same children return one
  node) and counts the chain and root nodes each ``to_torch_module`` call inserts.
- Errors are trilay's typed errors (``SemiringError``, ``CircuitError``, ``ShapeError`` are
  ``ValueError`` subclasses, as KLay's unknown-semiring ``ValueError``; ``DTypeError`` a
  ``TypeError``). KLay raises ``RuntimeError`` for a circuit with no root, and crashes the
  process (segmentation fault) for an empty circuit or a ``NodePtr`` of another circuit.
- A literal in both ``true_lits`` and ``false_lits`` is a ``CircuitError`` (KLay fixes it
  true). ``add_d4_from_file`` reads d4's edge lines in any order (KLay needs each node's edges
  before the node is used as a child) and reads c2d's format too.
- ``mpe`` / ``godel`` gradients split evenly between tied children, as ``amax`` does. KLay's
  backward (``torch.segment_reduce``'s) gives every tied child the whole upstream gradient when
  it is negative.
- ``torch.func.vmap`` of the forward, gradients through it and ``vmap(grad(f))`` (per-example
  gradients) work in every semiring, on the PyTorch path and on the Triton path (CUDA tensors
  by default), whose vmap rule folds the vmapped dimension into the batch: one kernel launch
  per layer for the whole vmapped batch. KLay's module runs both through torch's slow
  fallback.
- Probabilistic circuits keep one flat ``weights`` parameter over the edges of the OR nodes
  with two or more children (KLay: one per sum layer, chain nodes included), so state dicts do
  not carry over; at equal (e.g. all-zero) weights both compute the same values. They sample
  exactly, in batches, optionally under literal weights
  (:meth:`ProbabilisticCircuitModule.sample`); KLay's ``sample()`` draws one assignment, picks
  each OR child by its edge weight alone (ignoring the children's values), ignores the literal
  weights, and leaves variables a branch does not mention false.
- Not provided: KLay's ``condition``, ``to_pc``, ``remove_unused_nodes``, ``print`` and
  ``to_jax_function``.
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from trilay.engine import Circuit as _IR
from trilay.engine import CompiledCircuit, get_semiring
from trilay.engine.circuit import AND, FALSE, LITERAL, TRUE
from trilay.engine.errors import CircuitError, DTypeError, SemiringError, ShapeError
from trilay.engine.io import read_nnf_file, read_sdd_file, sdd_node_arrays
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

__all__ = [
    "Circuit",
    "CircuitModule",
    "NodePtr",
    "ProbabilisticCircuitModule",
    "SEMIRINGS",
]


@dataclass(frozen=True)
class NodePtr:
    """A node of a :class:`Circuit` (KLay's ``NodePtr``): valid only in the circuit that made it."""

    index: int
    owner: int  # id() of the owning Circuit: a pointer from another circuit is an error

    def get_ix(self) -> int:
        return self.index


class Circuit:
    """A multi-rooted NNF circuit with KLay's construction API.

    Build it node by node (:meth:`literal_node`, :meth:`true_node`, :meth:`false_node`,
    :meth:`and_node`, :meth:`or_node`, :meth:`set_root`) or load SDD / d4 circuits, each of
    which becomes a root (:meth:`add_sdd`, :meth:`add_sdd_from_file`, :meth:`add_d4_from_file`).
    Roots are outputs in the order they were set. Variables are ``1..V``, ``V`` the largest
    variable any node mentions; literal ``+v`` is column ``v - 1`` of ``x_pos``, ``-v`` of
    ``x_neg``.
    """

    def __init__(self):
        self._ir = _IR()

    # ------------------------------------------------------------------ nodes
    def literal_node(self, literal: int) -> NodePtr:
        """The node of literal ``literal`` (``+v`` or ``-v``)."""
        return self._ptr(self._ir.literal(literal))

    def true_node(self) -> NodePtr:
        return self._ptr(self._ir.true())

    def false_node(self) -> NodePtr:
        return self._ptr(self._ir.false())

    def and_node(self, children: Sequence[NodePtr]) -> NodePtr:
        """An AND over ``children`` (no children: true)."""
        return self._ptr(self._ir.conjoin(self._indices(children)))

    def or_node(self, children: Sequence[NodePtr]) -> NodePtr:
        """An OR over ``children`` (no children: false)."""
        return self._ptr(self._ir.disjoin(self._indices(children)))

    def set_root(self, root: NodePtr) -> None:
        """Make ``root`` the next output (outputs keep the order roots were set in)."""
        self._ir.add_root(self._indices([root])[0])

    def nb_nodes(self) -> int:
        """Number of nodes added to the circuit (shared literals and constants count once)."""
        return self._ir.num_nodes

    def nb_root_nodes(self) -> int:
        return self._ir.num_roots

    # ------------------------------------------------------------------ loaders
    def add_sdd(
        self, sdd, true_lits: Sequence[int] = (), false_lits: Sequence[int] = ()
    ) -> NodePtr:
        """Add a PySDD ``SddNode`` as a new root; returns its node.

        ``true_lits`` / ``false_lits``: literals replaced by true / false (a literal only, as in
        KLay: fixing ``+v`` leaves ``-v`` a free literal).
        """
        return self._add(sdd_node_arrays(sdd), true_lits, false_lits)

    def add_sdd_from_file(
        self,
        filename: str | os.PathLike,
        true_lits: Sequence[int] = (),
        false_lits: Sequence[int] = (),
    ) -> NodePtr:
        """Add an SDD text file (libsdd / PySDD format) as a new root; see :meth:`add_sdd`."""
        arrays, _ = read_sdd_file(filename)
        return self._add(arrays, true_lits, false_lits)

    def add_d4_from_file(
        self,
        filename: str | os.PathLike,
        true_lits: Sequence[int] = (),
        false_lits: Sequence[int] = (),
    ) -> NodePtr:
        """Add a d-DNNF in d4's output format (c2d's format is read too) as a new root; see
        :meth:`add_sdd`."""
        arrays, _ = read_nnf_file(filename)
        return self._add(arrays, true_lits, false_lits)

    # ------------------------------------------------------------------ to torch
    def to_torch_module(
        self,
        semiring: str = "log",
        probabilistic: bool = False,
        eps: float = 0,
        compile: bool = False,
        **options,
    ) -> torch.nn.Module:
        """The circuit as a torch module: :class:`CircuitModule`, or with
        ``probabilistic=True`` a :class:`ProbabilisticCircuitModule` (learnable, normalized
        weights on the edges of every OR node).

        Args:
            semiring: ``"log"``, ``"real"``, ``"mpe"`` or ``"godel"`` (probabilistic circuits:
                ``"log"`` or ``"real"``).
            probabilistic: build a probabilistic circuit.
            eps: accepted for KLay compatibility and ignored (see the module docstring).
            compile: wrap the module in :func:`torch.compile`.
            options: the engine module's options (``backend``, ``memory_budget_mb``,
                ``cuda_graphs``; see :class:`trilay.engine.CircuitModule`).

        The circuit is not modified: every call compiles the circuit as it is now.

        Raises:
            SemiringError: an unknown semiring, or one probabilistic circuits do not support.
            CircuitError: the circuit has no root.
        """
        names = PROBABILISTIC_SEMIRINGS if probabilistic else tuple(SEMIRINGS)
        if semiring not in names:
            kind = "probabilistic circuits" if probabilistic else "KLay circuits"
            raise SemiringError(
                f"unknown semiring {semiring!r} for {kind}; expected one of {names}"
            )
        if eps:
            warnings.warn(
                f"eps={eps} is ignored: trilay's log semiring is exact at probability 0",
                stacklevel=2,
            )
        compiled = self._ir.compile(smooth=False)
        cls = ProbabilisticCircuitModule if probabilistic else CircuitModule
        module = cls(compiled, semiring, **options)
        return torch.compile(module) if compile else module

    # ------------------------------------------------------------------ internals
    def _ptr(self, index: int) -> NodePtr:
        return NodePtr(index, id(self))

    def _indices(self, nodes: Sequence[NodePtr]) -> list[int]:
        for node in nodes:
            if not isinstance(node, NodePtr) or node.owner != id(self):
                raise CircuitError(f"{node!r} is not a node of this circuit")
        return [node.index for node in nodes]

    def _add(self, arrays, true_lits: Sequence[int], false_lits: Sequence[int]) -> NodePtr:
        """Append a loader's local DAG ``(kind, lit, child_start, children, root)`` with the
        fixed literals replaced by constants; set its root as a root."""
        kind, lit, start, children, root = arrays
        kind = kind.copy()
        true_lits, false_lits = _literals(true_lits), _literals(false_lits)
        both = set(true_lits) & set(false_lits)
        if both:
            raise CircuitError(f"literals {sorted(both)} are both in true_lits and false_lits")
        is_literal = kind == LITERAL
        kind[is_literal & np.isin(lit, true_lits)] = TRUE
        kind[is_literal & np.isin(lit, false_lits)] = FALSE
        # The loader's nodes are topologically ordered: rebuild them through the public
        # builders (one Python step per node; loaders of the engine would not substitute).
        ir = self._ir
        ids = np.zeros(kind.size, dtype=np.int64)
        build = {TRUE: ir.true, FALSE: ir.false}
        for node, (k, literal) in enumerate(zip(kind.tolist(), lit.tolist(), strict=True)):
            if k == LITERAL:
                ids[node] = ir.literal(literal)
            elif k in build:
                ids[node] = build[k]()
            else:
                kids = ids[children[start[node] : start[node + 1]]].tolist()
                ids[node] = ir.conjoin(kids) if k == AND else ir.disjoin(kids)
        ir.add_root(int(ids[root]))
        return self._ptr(int(ids[root]))


def _literals(lits: Sequence[int]) -> list[int]:
    out = []
    for lit in lits:
        if not isinstance(lit, (int, np.integer)) or isinstance(lit, bool) or lit == 0:
            raise CircuitError(f"a literal is a non-zero integer +v or -v, got {lit!r}")
        out.append(int(lit))
    return out


class CircuitModule(torch.nn.Module):
    """KLay's circuit module contract on trilay's engine.

    ``forward(x_pos, x_neg=None)``: literal weights ``x_pos: [..., V']`` (``V' >= V``; columns
    beyond the circuit's ``V`` variables are ignored) and optionally ``x_neg`` of the same shape
    (default: the semiring's complement, ``1 - x_pos`` or ``log(1 - exp(x_pos))`` in ``log``)
    -> root values ``[..., num_roots]`` (``[V'] -> [num_roots]``, ``[B, V'] -> [B, num_roots]``
    as in KLay). Works under autograd and ``torch.func.vmap`` (of the forward, gradients
    through it, and ``vmap(grad(...))``); on the PyTorch path (CPU tensors,
    ``backend="torch"``) also under ``torch.compile(fullgraph=True)``. The engine module is the
    submodule ``circuit`` (its index tensors are buffers).

    Raises:
        ShapeError: ``x_pos`` has fewer than ``V`` columns, or ``x_neg`` another shape.
        DTypeError: not a tensor, or not a floating dtype.
    """

    def __init__(self, compiled: CompiledCircuit, semiring: str, **options):
        super().__init__()
        self.semiring = SEMIRINGS[semiring]
        self.num_vars = compiled.num_vars
        self.circuit = compiled.module(self.semiring, **options)

    def forward(self, x_pos: torch.Tensor, x_neg: torch.Tensor | None = None) -> torch.Tensor:
        pos, neg = self._inputs(x_pos, x_neg)
        return self.circuit(pos, neg)

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


class ProbabilisticCircuitModule(CircuitModule):
    """A probabilistic circuit (KLay's ``probabilistic=True``): every OR node with ``k >= 2``
    children weighs child ``j`` by ``softmax(weights[node])[j]``.

    The edge weights are one parameter ``weights: [num_edges]`` (unnormalized logits, standard
    normal at initialization, as in KLay), normalized per OR node on every forward. They enter
    the circuit as extra input variables: edge ``e`` of an OR node becomes ``AND(child, w_e)``,
    ``w_e`` fed with the normalized weight (its log in ``log``), so the engine evaluates the
    weighted circuit with its ordinary layers. The OR nodes are those of the compiled circuit
    (after constant folding and merging of equal sub-circuits, as KLay's).

    Edge order: edge ``e`` is the ``e``-th edge of the compiled circuit's OR nodes, row by row
    (:class:`~trilay.engine.CompiledCircuit`: layer by layer), each node's edges in CSR
    order; ``edge_node[e]`` is its OR node (0-based, ascending, so each node's
    edges are contiguous).

    ``forward`` is :class:`CircuitModule`'s; :meth:`sample` draws assignments.
    """

    def __init__(self, compiled: CompiledCircuit, semiring: str, **options):
        ir, edge_node = _weighted_circuit(compiled)
        super().__init__(ir.compile(smooth=False), semiring, **options)
        self.num_vars = compiled.num_vars
        self.num_sum_nodes = int(edge_node.max()) + 1 if edge_node.size else 0
        self.register_buffer("edge_node", torch.from_numpy(edge_node))
        self.weights = torch.nn.Parameter(torch.randn(edge_node.size))

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
        pos, neg = self._inputs(x_pos, x_neg)
        neg = self.semiring.complement(pos) if neg is None else neg
        weights = self.log_edge_weights() if self.semiring.log_space else self.edge_weights()
        weights = weights.to(pos.dtype).expand(*pos.shape[:-1], -1)
        # The weight variables occur only as positive literals: their negative weight is unused.
        return self.circuit(
            torch.cat([pos, weights], dim=-1),
            torch.cat([neg, torch.full_like(weights, self.semiring.zero)], dim=-1),
        )

    @torch.no_grad()
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
            CircuitError: ``root`` is out of range, or the root has probability 0 under the
                weights (nothing to sample).
        """
        if not 0 <= root < self.circuit.num_roots:
            raise CircuitError(f"root {root} is not one of 0..{self.circuit.num_roots - 1}")
        device = self.weights.device
        if x_pos is None:
            x_pos = torch.full((self.num_vars,), math.log(0.5), device=device)
        else:
            x_pos = self._columns(x_pos, "x_pos").to(device)
            x_pos = x_pos if self.semiring.log_space else torch.log(x_pos)
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
        values = [leaves]  # every layer's [n, S] log values, kept for the top-down pass
        kinds = circuit.layer_kinds
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
        for k in range(top, 0, -1):
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


def _rows(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return index[:, None].expand_as(like)


def _weighted_circuit(compiled: CompiledCircuit) -> tuple[_IR, np.ndarray]:
    """The compiled circuit rebuilt with a weight variable on every edge of every OR node with
    two or more children: ``(circuit, edge_node)``, edge ``e``'s variable ``V + 1 + e`` and
    ``edge_node[e]`` its OR node (0-based, in build order: rows ascending)."""
    if compiled.smooth:
        raise CircuitError("a probabilistic circuit is built from the circuit as written")
    num_vars = compiled.num_vars
    ir = _IR()
    # The leaf rows: false, true, +1..+V, -1..-V (see CompiledCircuit).
    rows = [ir.false(), ir.true()]
    rows += [ir.literal(v) for v in range(1, num_vars + 1)]
    rows += [ir.literal(-v) for v in range(1, num_vars + 1)]
    child, offsets = compiled.child.tolist(), compiled.offsets.tolist()
    edge_node: list[int] = []
    next_var = num_vars + 1
    for k, kind in enumerate(compiled.layer_kinds, start=1):
        first, end = compiled.layer_rows(k)
        for i in range(first - compiled.num_leaves, end - compiled.num_leaves):
            kids = [rows[c] for c in child[offsets[i] : offsets[i + 1]]]
            if kind == "and":
                rows.append(ir.conjoin(kids))
                continue
            sum_node = edge_node[-1] + 1 if edge_node else 0
            weighted = []
            for kid in kids:  # an OR node has two children or more (no unary nodes)
                weighted.append(ir.conjoin([kid, ir.literal(next_var)]))
                edge_node.append(sum_node)
                next_var += 1
            rows.append(ir.disjoin(weighted))
    for root in compiled.roots.tolist():
        ir.add_root(rows[root])
    return ir, np.asarray(edge_node, dtype=np.int64)
