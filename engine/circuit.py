"""The circuit IR: a multi-rooted NNF DAG over variables ``1..V``, and its builders.

Nodes are integers handed out in creation order. A node's children always exist before it,
so creation order is a topological order and a builder can never close a cycle; loaders of
formats that allow forward references (d4) sort their nodes and reject cycles with a
:class:`~trilay.engine.errors.ParseError`.

The storage is flat numpy arrays (kind, literal, CSR of children) that grow by doubling, so
that :meth:`Circuit.compile` reads them without a copy, bulk loaders append whole arrays
without per-node Python work, and a circuit of millions of nodes costs bytes per node, not a
Python object per integer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import CircuitError

#: Node kinds, as stored in the IR.
FALSE, TRUE, LITERAL, AND, OR = 0, 1, 2, 3, 4

#: The largest variable a circuit may have (2^24 = 16,777,216). Every builder and file reader
#: refuses a variable or a declared variable count beyond it: the compiled circuit holds a leaf
#: per literal and takes ``[..., num_vars]`` inputs, so a stray huge id would otherwise turn
#: into a huge allocation in :meth:`Circuit.compile`.
MAX_VARS = 1 << 24


class Circuit:
    """A multi-rooted NNF circuit (literals, true, false, AND, OR) with shared sub-circuits.

    Build it with :meth:`literal`, :meth:`true`, :meth:`false`, :meth:`conjoin`,
    :meth:`disjoin` and :meth:`add_root`, or with the loaders (:meth:`add_sdd`,
    :meth:`add_sdd_file`, :meth:`add_nnf_file`, :meth:`add_cnf`), each of which adds one root
    and returns its index. Then :meth:`compile` it once and evaluate the result often.

    ``num_vars`` declares the variables ``1..num_vars``; a literal beyond it is an error. Left
    as ``None``, the variable count is the largest variable any builder has seen. Variables are
    at most :data:`MAX_VARS` (``2^24``); beyond it every builder raises
    :class:`~trilay.engine.errors.CircuitError` (file readers
    :class:`~trilay.engine.errors.ParseError`). A missing file raises
    :class:`~trilay.engine.errors.MissingFileError`, a ``FileNotFoundError``.
    """

    def __init__(self, num_vars: int | None = None):
        if num_vars is not None:
            num_vars = _var_count(num_vars, "num_vars")
        self._declared_vars = num_vars
        self._max_var = 0
        self._kind = _Growing(np.int8)
        self._lit = _Growing(np.int64)
        self._child_start = _Growing(np.int64)
        self._child_start.append(0)
        self._children = _Growing(np.int64)
        self._roots: list[int] = []
        self._interned: dict[tuple[int, int], int] = {}

    # ------------------------------------------------------------------ properties
    @property
    def num_vars(self) -> int:
        """Number of variables: declared, or the largest one seen."""
        return self._declared_vars if self._declared_vars is not None else self._max_var

    @property
    def num_nodes(self) -> int:
        return self._kind.size

    @property
    def num_edges(self) -> int:
        return self._children.size

    @property
    def num_roots(self) -> int:
        return len(self._roots)

    @property
    def roots(self) -> list[int]:
        return list(self._roots)

    def kind(self, node: int) -> int:
        return int(self._kind.array[self._check_node(node)])

    def literal_of(self, node: int) -> int:
        """The signed literal of a literal node (0 for other kinds)."""
        return int(self._lit.array[self._check_node(node)])

    def children(self, node: int) -> list[int]:
        node = self._check_node(node)
        start = self._child_start.array
        return self._children.array[start[node] : start[node + 1]].tolist()

    # ------------------------------------------------------------------ programmatic builders
    def literal(self, lit: int) -> int:
        """The node of literal ``lit``: ``+v`` for variable ``v`` true, ``-v`` for it false."""
        lit = _literal(lit, "a literal")
        self._check_var(abs(lit))
        return self._intern(LITERAL, lit)

    def true(self) -> int:
        return self._intern(TRUE, 0)

    def false(self) -> int:
        return self._intern(FALSE, 0)

    def conjoin(self, children: Iterable[int]) -> int:
        """An AND node over ``children`` (no children: true)."""
        return self._internal(AND, children)

    def disjoin(self, children: Iterable[int]) -> int:
        """An OR node over ``children`` (no children: false)."""
        return self._internal(OR, children)

    def add_root(self, node: int) -> int:
        """Make ``node`` an output; returns its root index (roots keep their order)."""
        self._roots.append(self._check_node(node))
        return len(self._roots) - 1

    # ------------------------------------------------------------------ loaders
    def add_sdd(self, node, num_vars: int | None = None) -> int:
        """Add a PySDD ``SddNode`` as a new root; returns the root index.

        The node is a function of its manager's variables ``1..manager.var_count()``, which
        the circuit's variable count then covers (as PySDD counts models: a variable the node
        does not mention still doubles its model count), even for a literal or a constant node.
        ``num_vars`` reads it over ``1..num_vars`` instead, which may be fewer than the
        manager's when the node mentions none of the others (variables quantified out).
        Raises :class:`~trilay.engine.errors.CircuitError` when that count exceeds the
        circuit's declared one, or the node mentions a variable beyond ``num_vars``.
        """
        from .io import sdd_node_arrays

        arrays = sdd_node_arrays(node)
        if num_vars is None:
            num_vars, source = node.manager.var_count(), "the SddNode's manager"
        else:
            num_vars, source = _var_count(num_vars, "num_vars"), f"add_sdd(num_vars={num_vars})"
            kind, lit = arrays[0], arrays[1]
            mentioned = np.abs(lit[kind == LITERAL])
            if mentioned.size and int(mentioned.max()) > num_vars:
                raise CircuitError(
                    f"the SddNode mentions variable {int(mentioned.max())}, beyond "
                    f"num_vars={num_vars}"
                )
        self._check_var(num_vars, declare=True, source=source)
        return self.add_root(self._append_arrays(*arrays))

    def add_sdd_file(
        self, sdd_path: str | os.PathLike, vtree_path: str | os.PathLike | None = None
    ) -> int:
        """Add an SDD text file (libsdd / PySDD format) as a new root; returns the root index.

        The vtree file, when given, declares the variable count (so variables the SDD does not
        mention still count, as in PySDD's model count) and is checked against the SDD.
        """
        from .io import read_sdd_file

        arrays, num_vars = read_sdd_file(sdd_path, vtree_path)
        if num_vars is not None:
            self._check_var(num_vars, declare=True, source=os.fspath(vtree_path))
        return self.add_root(self._append_arrays(*arrays))

    def add_nnf_file(self, path: str | os.PathLike) -> int:
        """Add a d-DNNF file in c2d (``nnf v e n`` header) or d4 format; returns the root index.

        c2d files declare their variable count. d4 files do not: there the count is the largest
        literal seen, so declare ``Circuit(num_vars=...)`` when some variable may not occur.
        """
        from .io import read_nnf_file

        arrays, num_vars = read_nnf_file(path)
        if num_vars is not None:
            self._check_var(num_vars, declare=True, source=os.fspath(path))
        return self.add_root(self._append_arrays(*arrays))

    def add_cnf(
        self,
        cnf: str | os.PathLike | Sequence[Sequence[int]],
        num_vars: int | None = None,
        vtree: str = "balanced",
    ) -> int:
        """Compile a CNF with PySDD and add it as a new root; returns the root index.

        ``cnf`` is a DIMACS file path or a list of clauses (each a list of non-zero signed
        literals). ``num_vars`` defaults to the DIMACS header, or the largest variable, or the
        circuit's declared count. ``vtree`` is PySDD's vtree type (``balanced``, ``right``,
        ``left``, ``vertical``, ...), over the variables the clauses mention (in their order):
        libsdd holds about a kilobyte per manager variable, so a count far above the variables
        used (``p cnf 16000000 1``) costs nothing.
        """
        from .io import compile_cnf_with_pysdd, read_dimacs, sdd_node_arrays

        if num_vars is not None:
            num_vars = _var_count(num_vars, "num_vars")
        if isinstance(cnf, (str, os.PathLike)):
            clauses, header_vars = read_dimacs(cnf)
            num_vars = header_vars if num_vars is None else num_vars
        else:
            try:
                clauses = [[_literal(lit, "a CNF literal") for lit in c] for c in cnf]
            except TypeError:
                raise CircuitError(
                    "a CNF is a DIMACS path or a sequence of clauses (sequences of literals), "
                    f"got {cnf!r:.80}"
                ) from None
        largest = max((abs(int(lit)) for c in clauses for lit in c), default=0)
        if num_vars is None:
            num_vars = max(largest, self.num_vars, 1)
        if largest > num_vars:
            raise CircuitError(f"CNF literal {largest} exceeds its variable count {num_vars}")
        self._check_var(num_vars, declare=True, source="CNF")
        used = np.unique(np.abs(np.asarray([lit for c in clauses for lit in c], dtype=np.int64)))
        local = {int(v): i + 1 for i, v in enumerate(used)}  # PySDD variable of each used one
        root = compile_cnf_with_pysdd(
            [[local[abs(lit)] if lit > 0 else -local[abs(lit)] for lit in c] for c in clauses],
            used.size,
            vtree,
        )
        kind, lit, child_start, children, node = sdd_node_arrays(root)
        variable = np.concatenate(([0], used))
        lit = np.sign(lit) * variable[np.abs(lit)]
        return self.add_root(self._append_arrays(kind, lit, child_start, children, node))

    # ------------------------------------------------------------------ compile
    def compile(self, *, smooth: bool = True, fixed: dict[int, bool] | None = None):
        """Compile to layers: simplify, smooth, merge duplicates, layerize.

        Args:
            smooth: make every OR node's children mention the same variables and every root
                mention all ``num_vars`` variables (inserting ``v OR -v``). Needed whenever a
                variable's two literal weights do not sum to the semiring's one (``mpe``,
                ``godel``, explicit ``neg`` weights such as ProbLog's); harmless otherwise,
                apart from the extra nodes. ``smooth=False`` gives the circuit as written.
            fixed: ``{var: bool}``: literals fixed true/false, folded in as constants.

        Returns:
            a :class:`~trilay.engine.compiled.CompiledCircuit`.
        """
        from .compiler import compile_circuit

        return compile_circuit(self, smooth=smooth, fixed=fixed)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(kind, lit, child_start, children, roots)``: read-only views of the storage
        (``kind`` int8, the others int64), valid until the next builder call."""
        views = (self._kind, self._lit, self._child_start, self._children)
        return (*(v.view() for v in views), np.asarray(self._roots, dtype=np.int64))

    # ------------------------------------------------------------------ internals
    def _intern(self, kind: int, lit: int) -> int:
        key = (kind, lit)
        node = self._interned.get(key)
        if node is None:
            node = self._kind.size
            self._kind.append(kind)
            self._lit.append(lit)
            self._child_start.append(self._children.size)
            self._interned[key] = node
        return node

    def _internal(self, kind: int, children: Iterable[int]) -> int:
        kids = [self._check_node(c) for c in children]
        node = self._kind.size
        self._kind.append(kind)
        self._lit.append(0)
        self._children.extend(np.asarray(kids, dtype=np.int64))
        self._child_start.append(self._children.size)
        return node

    def _append_arrays(
        self,
        kind: np.ndarray,
        lit: np.ndarray,
        child_start: np.ndarray,
        children: np.ndarray,
        root: int,
    ) -> int:
        """Append a loader's local DAG (ids ``0..n-1``, children before parents); returns the
        circuit id of its local node ``root``."""
        base = self._kind.size
        lits = np.abs(lit[kind == LITERAL])
        if lits.size:
            self._check_var(int(lits.max()))
        self._kind.extend(kind)
        self._lit.extend(lit)
        self._child_start.extend(child_start[1:] + self._children.size)
        self._children.extend(children + base)
        return base + int(root)

    def _check_node(self, node) -> int:
        if not _is_int(node) or not 0 <= node < self._kind.size:
            raise CircuitError(f"{node!r} is not a node of this circuit ({self._kind.size} nodes)")
        return int(node)

    def _check_var(self, var: int, declare: bool = False, source: str | None = None) -> None:
        if self._declared_vars is not None and var > self._declared_vars:
            what = f"{source} declares {var} variables" if declare else f"literal {var}"
            raise CircuitError(
                f"{what}, beyond the circuit's declared variable count {self._declared_vars}"
            )
        self._max_var = max(self._max_var, var)


class _Growing:
    """A 1-D numpy array that grows by doubling: amortized O(1) appends, no Python object per
    item. ``array[:size]`` holds the items."""

    def __init__(self, dtype):
        self.array = np.empty(16, dtype=dtype)
        self.size = 0

    def _reserve(self, extra: int) -> None:
        if self.size + extra > self.array.size:
            grown = np.empty(max(2 * self.array.size, self.size + extra), dtype=self.array.dtype)
            grown[: self.size] = self.array[: self.size]
            self.array = grown

    def append(self, item: int) -> None:
        self._reserve(1)
        self.array[self.size] = item
        self.size += 1

    def extend(self, items: np.ndarray) -> None:
        self._reserve(items.size)
        self.array[self.size : self.size + items.size] = items
        self.size += items.size

    def view(self) -> np.ndarray:
        out = self.array[: self.size]
        out = out.view()
        out.flags.writeable = False
        return out


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _literal(lit, what: str) -> int:
    """``lit`` as a literal (``+v`` or ``-v``, ``1 <= v <= MAX_VARS``), else CircuitError."""
    if not _is_int(lit) or lit == 0 or abs(lit) > MAX_VARS:
        raise CircuitError(
            f"{what} is a non-zero integer +v or -v with 1 <= v <= {MAX_VARS:,} (variables are "
            f"1-based: v is input column v - 1), got {lit!r}"
        )
    return int(lit)


def _var_count(n, name: str) -> int:
    """``n`` as a variable count (an integer in ``0..MAX_VARS``), else CircuitError."""
    if not _is_int(n) or not 0 <= n <= MAX_VARS:
        raise CircuitError(f"{name} must be an integer in 0..{MAX_VARS:,}, got {n!r}")
    return int(n)
