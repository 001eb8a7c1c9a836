"""KLay's ``Circuit``: a layered, hash-consed NNF DAG built node by node.

The node store follows KLay 0.1.2's (``src/circuit.cpp``, ``src/node.cpp``):

- literals, ``true`` and ``false`` sit in layer 0; an AND node sits in the lowest odd layer
  above all its children, an OR node in the lowest even one;
- a child more than one layer below its parent is lifted by a chain of single-child *dummy*
  nodes (AND on odd layers, OR on even ones), shared by every parent that needs them;
- ``and_node`` / ``or_node`` fold constants as they add (a ``false`` child makes an AND
  ``false``, ``true`` children drop out, no child left gives ``true``, one child left is
  returned as it is; dually for OR) and return the existing node when an equal one is already
  there: same kind and the same children as a multiset (order does not matter, repetitions
  do: ``and_node([a, a])`` is not ``a``).

So :meth:`Circuit.nb_nodes` counts what KLay counts (dummy nodes included) and equal nodes are
one :class:`NodePtr`. :meth:`Circuit._get_indices` gives KLay's layer index arrays, and the
torch modules are built from them; unlike KLay it does not change the circuit (see the package
docstring for what else differs).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from trilay.engine.circuit import AND, FALSE, LITERAL, OR, TRUE
from trilay.engine.errors import CircuitError
from trilay.engine.io import read_nnf_file, read_sdd_file, sdd_node_arrays

from .modules import CircuitModule, ProbabilisticCircuitModule, check_eps, check_semiring

#: KLay stores a literal as ``(var << 1) + sign`` in a C ``int``: variables below 2**30.
MAX_VAR = 2**30 - 1

_LABEL = {FALSE: "F", TRUE: "T", LITERAL: "L", AND: "A", OR: "O"}
_circuit_serials = itertools.count()


@dataclass(frozen=True)
class NodePtr:
    """A node of a :class:`Circuit` (KLay's ``NodePtr``). Equal nodes are equal pointers; a
    pointer is valid only in the circuit that made it, until :meth:`Circuit.remove_unused_nodes`
    removes its node."""

    node: int  # the node's id in its circuit (ids are never reused)
    serial: int  # the owning circuit's serial number
    circuit: Circuit = field(compare=False, repr=False)

    def get_ix(self) -> int:
        """The node's index in its layer (KLay's ``ix``; for a literal ``+v`` / ``-v`` its input
        row ``2v`` / ``2v + 1``, for ``false`` / ``true`` 0 / 1)."""
        return self.circuit._ix[self.circuit._check_node(self)]

    def __repr__(self) -> str:
        return f"NodePtr({self.node})"


class Circuit:
    """A multi-rooted NNF circuit with KLay's construction API and node semantics.

    Build it node by node (:meth:`literal_node`, :meth:`true_node`, :meth:`false_node`,
    :meth:`and_node`, :meth:`or_node`, :meth:`set_root`) or load SDD / d4 circuits, each of
    which becomes a root (:meth:`add_sdd`, :meth:`add_sdd_from_file`, :meth:`add_d4_from_file`).
    Roots are outputs in the order they were set. Variables are ``1..V``, ``V`` the largest
    variable of any literal node; literal ``+v`` reads column ``v - 1`` of ``x_pos``, ``-v`` of
    ``x_neg``. :meth:`to_torch_module` evaluates it.

    Raises:
        CircuitError: a literal that is not a non-zero integer (or beyond ``MAX_VAR``), a child
            or root that is not a :class:`NodePtr` of this circuit (or was removed), a circuit
            with no root where one is needed.
    """

    def __init__(self):
        self._serial = next(_circuit_serials)
        self._kind: list[int] = []
        self._lit: list[int] = []
        self._layer: list[int] = []
        self._children: list[tuple[int, ...]] = []  # in the layer just below (dummies between)
        self._ix: list[int] = []
        self._alive: list[bool] = []
        self._layers: list[list[int]] = [[]]  # node ids of each layer, in ix order
        self._index: dict[tuple, int] = {}  # hash-consing: (kind, literal) or (kind, children)
        self._roots: list[int] = []
        self._max_var = 0

    # ------------------------------------------------------------------ nodes
    def literal_node(self, literal: int) -> NodePtr:
        """The node of literal ``literal`` (``+v`` or ``-v``)."""
        return self._ptr(self._literal(_literal(literal)))

    def true_node(self) -> NodePtr:
        return self._ptr(self._constant(TRUE))

    def false_node(self) -> NodePtr:
        return self._ptr(self._constant(FALSE))

    def and_node(self, children: Sequence[NodePtr]) -> NodePtr:
        """An AND over ``children``, constants folded (no children left: ``true``; one: that
        child), or the equal AND node already in the circuit."""
        return self._ptr(self._gate(AND, self._nodes(children)))

    def or_node(self, children: Sequence[NodePtr]) -> NodePtr:
        """An OR over ``children``, constants folded (no children left: ``false``; one: that
        child), or the equal OR node already in the circuit."""
        return self._ptr(self._gate(OR, self._nodes(children)))

    def set_root(self, root: NodePtr) -> None:
        """Make ``root`` the next output (outputs keep the order roots were set in)."""
        self._roots.append(self._check_node(root))

    def nb_nodes(self) -> int:
        """Number of nodes in the circuit, dummy nodes included (as KLay counts them)."""
        return sum(len(layer) for layer in self._layers)

    def nb_root_nodes(self) -> int:
        return len(self._roots)

    def remove_unused_nodes(self) -> None:
        """Remove the nodes above layer 0 that no root reaches. Pointers to them become invalid
        (using one raises :class:`~trilay.engine.errors.CircuitError`)."""
        if len(self._layers) <= 1:
            return
        used = self._used()
        for depth in range(1, len(self._layers)):
            for node in self._layers[depth]:
                if not used[node]:
                    self._alive[node] = False
                    del self._index[self._key(node)]
            self._layers[depth] = _kept(self._layers[depth], used)
            for ix, node in enumerate(self._layers[depth]):
                self._ix[node] = ix
        while len(self._layers) > 1 and not self._layers[-1]:
            self._layers.pop()

    def print(self) -> None:
        """Print every layer's nodes and their children, as KLay's ``print`` does (a node is
        ``<kind><layer>/<ix>``, kinds ``T F L A O``)."""
        for layer in self._layers:
            print("--- next layer ---")
            for node in layer:
                kids = "".join(self._label(child) + "," for child in self._children[node])
                print(f"{self._label(node)} connects to {kids}")
            print()

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
    ) -> CircuitModule:
        """The circuit as a torch module: :class:`~trilay.frontends.klay.CircuitModule`, or
        with ``probabilistic=True`` a :class:`~trilay.frontends.klay.ProbabilisticCircuitModule`
        (learnable, normalized weights on the edges of every OR node).

        Args:
            semiring: ``"log"``, ``"real"``, ``"mpe"`` or ``"godel"`` (probabilistic circuits:
                ``"log"`` or ``"real"``).
            probabilistic: build a probabilistic circuit.
            eps: accepted for KLay compatibility and ignored, with a warning when non-zero.
            compile: wrap the module in :func:`torch.compile`.
            options: the engine module's options (``backend``, ``memory_budget_mb``,
                ``cuda_graphs``; see :class:`trilay.engine.CircuitModule`).

        The circuit is not modified: every call builds the module of the circuit as it is now.

        Raises:
            SemiringError: an unknown semiring, or one probabilistic circuits do not support.
            CircuitError: the circuit has no root (set one with :meth:`set_root`).
        """
        check_semiring(semiring, probabilistic)
        check_eps(eps, stacklevel=3)
        cls = ProbabilisticCircuitModule if probabilistic else CircuitModule
        module = cls(*self._get_indices(), semiring=semiring, num_vars=self._max_var, **options)
        return torch.compile(module) if compile else module

    def _get_indices(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """KLay's layer index arrays of the circuit: ``(ixs_in, ixs_out)``, one int64 array
        each per layer ``1..L``: layer ``k``'s node ``i`` has the children
        ``ixs_in[k][ixs_out[k][i]:ixs_out[k][i + 1]]`` (indices into layer ``k - 1``; layer 0 is
        the input row ``[false, true, +1, -1, +2, -2, ...]``). Odd layers are AND layers, even
        ones OR layers; the last holds one node per root, in root order.

        The layers hold the nodes some root reaches, then a root layer on top, as KLay's
        ``_get_indices`` builds them; unlike KLay's, the circuit is left unchanged.

        Raises:
            CircuitError: the circuit has no root.
        """
        if not self._roots:
            raise CircuitError(
                "the circuit has no roots: mark its outputs with set_root (or add a circuit "
                "with add_sdd, add_sdd_from_file or add_d4_from_file)"
            )
        used = self._used()
        stored = len(self._kind)
        top = max(self._layer[root] for root in self._roots)
        rows = [self._layers[0]] + [_kept(self._layers[d], used) for d in range(1, top + 1)]
        rows.append([])
        children = {node: self._children[node] for layer in rows[1:] for node in layer}
        layer_of = {node: depth for depth, layer in enumerate(rows) for node in layer}
        above: dict[int, int] = {}  # node -> its dummy (a stored node, or virtual: id >= stored)

        def add(node: int, depth: int, kids: tuple[int, ...]) -> int:
            if node not in layer_of:
                layer_of[node] = depth
                rows[depth].append(node)
                children[node] = kids
            return node

        virtual = itertools.count(stored)
        for root in self._roots:  # lift every root to the root layer, top + 1
            node = root
            while layer_of[node] < top:
                if node not in above:
                    dummy = self._index.get(self._dummy_key(node)) if node < stored else None
                    if dummy is None or not used[dummy]:  # KLay deleted it: a new one
                        dummy = next(virtual)
                    above[node] = add(dummy, layer_of[node] + 1, (node,))
                node = above[node]
            add(next(virtual), top + 1, (node,))  # one node per root, even for a root set twice
        ixs_in, ixs_out = [], []
        for depth, layer in enumerate(rows[1:], 1):
            below = rows[depth - 1]
            position = (
                {node: self._ix[node] for node in below}
                if depth == 1
                else {node: i for i, node in enumerate(below)}
            )
            kids = [children[node] for node in layer]
            offsets = np.zeros(len(kids) + 1, dtype=np.int64)
            np.cumsum([len(k) for k in kids], out=offsets[1:])
            ixs_out.append(offsets)
            ixs_in.append(np.array([position[c] for k in kids for c in k], dtype=np.int64))
        return ixs_in, ixs_out

    # ------------------------------------------------------------------ internals
    def _ptr(self, node: int) -> NodePtr:
        return NodePtr(node, self._serial, self)

    def _check_node(self, ptr) -> int:
        if not isinstance(ptr, NodePtr) or ptr.serial != self._serial:
            raise CircuitError(f"{ptr!r} is not a node of this circuit")
        if not self._alive[ptr.node]:
            raise CircuitError(f"{ptr!r} was removed by remove_unused_nodes")
        return ptr.node

    def _nodes(self, ptrs: Sequence[NodePtr]) -> list[int]:
        if isinstance(ptrs, NodePtr) or not isinstance(ptrs, Iterable):
            raise CircuitError(f"children are a list of NodePtr, got {type(ptrs).__name__}")
        return [self._check_node(ptr) for ptr in ptrs]

    def _label(self, node: int) -> str:
        return f"{_LABEL[self._kind[node]]}{self._layer[node]}/{self._ix[node]}"

    def _key(self, node: int) -> tuple:
        kind = self._kind[node]
        if kind in (AND, OR):
            return (kind, tuple(sorted(self._children[node])))
        return (kind, self._lit[node])

    def _dummy_key(self, node: int) -> tuple:
        return (AND if self._layer[node] % 2 == 0 else OR, (node,))

    def _intern(self, key: tuple, layer: int, children: tuple[int, ...], lit: int = 0) -> int:
        """The stored node equal to ``key``, or a new one."""
        node = self._index.get(key)
        if node is not None:
            return node
        node = len(self._kind)
        kind = key[0]
        self._kind.append(kind)
        self._lit.append(lit)
        self._layer.append(layer)
        self._children.append(children)
        self._alive.append(True)
        while len(self._layers) <= layer:
            self._layers.append([])
        if layer == 0:  # leaves: the input row (false 0, true 1, +v 2v, -v 2v + 1)
            self._ix.append(kind if kind != LITERAL else 2 * abs(lit) + (lit < 0))
        else:
            self._ix.append(len(self._layers[layer]))
        self._layers[layer].append(node)
        self._index[key] = node
        return node

    def _literal(self, lit: int) -> int:
        self._max_var = max(self._max_var, abs(lit))
        return self._intern((LITERAL, lit), 0, (), lit)

    def _constant(self, kind: int) -> int:
        return self._intern((kind, 0), 0, ())

    def _gate(self, kind: int, kids: list[int]) -> int:
        """KLay's ``add_node_level_compressed``: fold constants, then add (or find) the node."""
        absorbing, neutral = (FALSE, TRUE) if kind == AND else (TRUE, FALSE)
        if any(self._kind[k] == absorbing for k in kids):
            return self._constant(absorbing)
        kids = [k for k in kids if self._kind[k] != neutral]
        if not kids:
            return self._constant(neutral)
        if len(kids) == 1:
            return kids[0]
        layer = max(self._layer[k] for k in kids) + 1
        if (layer % 2 == 1) != (kind == AND):  # AND nodes on odd layers, OR nodes on even ones
            layer += 1
        adjacent = tuple(self._lift(k, layer - 1) for k in kids)
        return self._intern((kind, tuple(sorted(adjacent))), layer, adjacent)

    def _lift(self, node: int, layer: int) -> int:
        """``node`` carried up to ``layer`` by a chain of (shared) dummy nodes."""
        while self._layer[node] < layer:
            node = self._intern(self._dummy_key(node), self._layer[node] + 1, (node,))
        return node

    def _used(self) -> list[bool]:
        """Which nodes a root reaches (layer-0 nodes are always kept, as in KLay)."""
        used = [self._layer[node] == 0 for node in range(len(self._kind))]
        for root in self._roots:
            used[root] = True
        for layer in reversed(self._layers):
            for node in layer:
                if used[node]:
                    for child in self._children[node]:
                        used[child] = True
        return used

    def _add(self, arrays, true_lits: Sequence[int], false_lits: Sequence[int]) -> NodePtr:
        """Add a loader's local DAG ``(kind, lit, child_start, children, root)`` node by node,
        with the fixed literals replaced by constants; set its root as a root."""
        kind, lit, start, children, root = arrays
        true_lits = {_literal(x) for x in true_lits}
        false_lits = {_literal(x) for x in false_lits}
        both = true_lits & false_lits
        if both:
            raise CircuitError(f"literals {sorted(both)} are both in true_lits and false_lits")
        fixed = {**{x: TRUE for x in true_lits}, **{x: FALSE for x in false_lits}}
        ids: list[int] = []
        start, children = start.tolist(), children.tolist()
        for node, (k, literal) in enumerate(zip(kind.tolist(), lit.tolist(), strict=True)):
            if k == LITERAL:
                ids.append(
                    self._constant(fixed[literal]) if literal in fixed else self._literal(literal)
                )
            elif k in (TRUE, FALSE):
                ids.append(self._constant(k))
            else:
                ids.append(self._gate(k, [ids[c] for c in children[start[node] : start[node + 1]]]))
        self._roots.append(ids[int(root)])
        return self._ptr(ids[int(root)])


def _kept(layer: list[int], used: list[bool]) -> list[int]:
    """``layer`` without its unused nodes, in the order KLay leaves it: its hash set (emhash8)
    erases a node by moving the layer's last node into its place."""
    layer = list(layer)
    i = 0
    while i < len(layer):
        if used[layer[i]]:
            i += 1
        else:
            layer[i] = layer[-1]
            layer.pop()
    return layer


def _literal(lit) -> int:
    """A literal as a Python int, checked: a non-zero integer whose variable KLay can store."""
    if not isinstance(lit, (int, np.integer)) or isinstance(lit, bool) or lit == 0:
        raise CircuitError(f"a literal is a non-zero integer +v or -v, got {lit!r}")
    if abs(int(lit)) > MAX_VAR:
        raise CircuitError(
            f"literal {lit}: variables are at most {MAX_VAR} (KLay stores 2v + sign in 32 bits)"
        )
    return int(lit)


# ---------------------------------------------------------------------------- structural checks
@dataclass(frozen=True)
class SDNNFViolation:
    """One node breaking a property: ``property`` (``"decomposability"`` or ``"smoothness"``),
    the node's ``ix`` and ``layer`` (as :meth:`Circuit.print` shows them), ``node_hash`` (the
    node's id in its circuit; KLay: its Merkle hash), ``detail`` (the variables at fault) and
    ``node`` (its :class:`NodePtr`)."""

    property: str
    ix: int
    layer: int
    node_hash: int
    detail: str
    node: NodePtr = field(repr=False)

    def __repr__(self) -> str:
        return f"[{self.property}] node_hash={self.node_hash}: {self.detail}"


@dataclass(frozen=True)
class SDNNFResult:
    """The result of :func:`check_sdnnf` / :func:`check_decomposability` /
    :func:`check_smooth` (KLay's ``SDNNFResult``): which properties hold, the AND / OR node
    counts (dummy nodes included), the number of distinct variables, and the violations found
    (at most ``max_violations`` of them; the flags count every node)."""

    is_nnf: bool = True  # every KLay circuit is an NNF
    is_decomposable: bool = True
    is_smooth: bool = True
    n_and: int = 0
    n_or: int = 0
    n_vars_found: int = 0
    violations: list[SDNNFViolation] = field(default_factory=list)

    @property
    def is_dnnf(self) -> bool:
        return self.is_nnf and self.is_decomposable

    @property
    def is_sdnnf(self) -> bool:
        return self.is_dnnf and self.is_smooth

    def summary(self) -> str:
        """A few lines for people: the properties, the node counts and the violations."""

        def tick(b: bool) -> str:
            return "v" if b else "x"

        rule = "  ----------------------------------------\n"
        text = (
            f"\n  NNF            {tick(self.is_nnf)}   (klay guarantee)\n"
            f"  Decomposable   {tick(self.is_decomposable)}\n"
            f"  Smooth         {tick(self.is_smooth)}\n{rule}"
            f"  DNNF           {tick(self.is_dnnf)}\n"
            f"  s-DNNF         {tick(self.is_sdnnf)}\n{rule}"
            f"  AND nodes: {self.n_and}\n  OR  nodes: {self.n_or}\n{rule}"
        )
        if self.violations:
            text += f"  Violations ({len(self.violations)}):\n"
            text += "".join(
                f"    * [{v.property}] node_ix={v.ix}: {v.detail}\n" for v in self.violations
            )
        return text


def check_sdnnf(circuit: Circuit, max_violations: int = 50) -> SDNNFResult:
    """Check decomposability (no variable under two children of an AND node) and smoothness
    (every child of an OR node over the same variables) of every node in ``circuit``, used or
    not; see :class:`SDNNFResult`.

    Raises:
        CircuitError: ``circuit`` is not a :class:`Circuit`, or ``max_violations`` is not a
            non-negative integer.
    """
    return _check(circuit, max_violations, decomposability=True, smoothness=True)


def check_decomposability(circuit: Circuit, max_violations: int = 50) -> SDNNFResult:
    """:func:`check_sdnnf` for decomposability only (``is_smooth`` stays true)."""
    return _check(circuit, max_violations, decomposability=True, smoothness=False)


def check_smooth(circuit: Circuit, max_violations: int = 50) -> SDNNFResult:
    """:func:`check_sdnnf` for smoothness only (``is_decomposable`` stays true)."""
    return _check(circuit, max_violations, decomposability=False, smoothness=True)


def _check(circuit, max_violations, decomposability: bool, smoothness: bool) -> SDNNFResult:
    if not isinstance(circuit, Circuit):
        raise CircuitError(f"expected a klay Circuit, got {type(circuit).__name__}")
    if not isinstance(max_violations, (int, np.integer)) or max_violations < 0:
        raise CircuitError(f"max_violations must be a non-negative integer, got {max_violations!r}")
    c = circuit
    variables = {abs(c._lit[n]) for n in c._layers[0] if c._kind[n] == LITERAL}
    if not variables:
        return SDNNFResult()
    support: dict[int, int] = {}  # node -> bit set of its variables (bit v - 1)
    counts = {AND: 0, OR: 0}
    flags = {"decomposability": True, "smoothness": True}
    violations: list[SDNNFViolation] = []

    def violate(prop: str, node: int, detail: str) -> None:
        flags[prop] = False
        if len(violations) < max_violations:
            v = SDNNFViolation(prop, c._ix[node], c._layer[node], node, detail, c._ptr(node))
            violations.append(v)

    for layer in c._layers:
        for node in layer:
            kind, kids = c._kind[node], c._children[node]
            if kind == LITERAL:
                support[node] = 1 << (abs(c._lit[node]) - 1)
                continue
            support[node] = _union(support[k] for k in kids)
            if kind in counts:
                counts[kind] += 1
            if len(kids) <= 1:
                continue
            if kind == AND and decomposability:
                running = 0
                for i, kid in enumerate(kids):
                    if running & support[kid]:
                        violate(
                            "decomposability",
                            node,
                            f"child {i} (support={_scope(support[kid])}) overlaps running "
                            f"support={_scope(running)}",
                        )
                        break
                    running |= support[kid]
            elif kind == OR and smoothness:
                first = support[kids[0]]
                for i, kid in enumerate(kids[1:], 1):
                    if support[kid] != first:
                        violate(
                            "smoothness",
                            node,
                            f"child 0 scope={_scope(first)}, child {i} scope="
                            f"{_scope(support[kid])}, symmetric difference="
                            f"{_scope(first ^ support[kid])}",
                        )
                        break
    return SDNNFResult(
        is_decomposable=flags["decomposability"],
        is_smooth=flags["smoothness"],
        n_and=counts[AND],
        n_or=counts[OR],
        n_vars_found=len(variables),
        violations=violations,
    )


def _union(sets) -> int:
    out = 0
    for s in sets:
        out |= s
    return out


def _scope(bits: int) -> str:
    """``{1, 3}`` for the bit set of variables 1 and 3."""
    variables = [str(i + 1) for i in range(bits.bit_length()) if bits >> i & 1]
    return "{" + ", ".join(variables) + "}"


#: KLay 0.1.2's top-level names (what the switch's ``klay`` module holds).
__all__ = [
    "Circuit",
    "NodePtr",
    "check_sdnnf",
    "check_decomposability",
    "check_smooth",
    "SDNNFResult",
    "SDNNFViolation",
]
