"""Semantic loss (Xu et al., ICML 2018): ``-log`` of the probability that a constraint holds.

For a constraint ``alpha`` over Boolean outputs ``x_1..x_n`` with predicted probabilities
``p: [..., n]``,

    loss = -log WMC(alpha; p) = -log sum_{x |= alpha} prod_i (p_i if x_i else 1 - p_i),

computed in log space by trilay's compiled circuit, on the input's device, with the constraint
compiled once (when the :class:`SemanticLoss` is built)::

    from trilay.frontends.semantic_loss import SemanticLoss, exactly_one

    loss_fn = SemanticLoss(exactly_one(10), from_logits=True)  # a torch.nn.Module
    loss = loss_fn(logits)  # logits: [batch, 10] -> loss: [] (reduction="mean")

Constraints come as

- a :class:`Constraint`, from the helpers :func:`exactly_one`, :func:`exactly_k`,
  :func:`at_most_k`, :func:`at_least_k`, :func:`implies`, :func:`permutation`,
  :func:`grid_path` and :func:`cnf`, combined with ``&``, ``|`` and ``~``;
- a CNF: a DIMACS file path or a list of clauses (lists of signed literals);
- a PySDD ``SddNode``;
- an SDD file pair ``(sdd_path, vtree_path)``, e.g. :func:`grid_4x4_files`;
- a single-rooted :class:`trilay.engine.Circuit`, which must be a deterministic, decomposable
  NNF (d-DNNF): weighted model counting is only exact on those.

Helpers build their SDDs with PySDD directly (cardinalities by the counting recursion, paths by
a memoized walk), so they introduce no auxiliary variables; :func:`cnf` quantifies the
auxiliary variables of an encoding out existentially. Variable ``v`` of a constraint is column
``v - 1`` of the input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np
import torch
from trilay.engine import Circuit
from trilay.engine.errors import CircuitError, DTypeError, OptionError, ShapeError
from trilay.engine.io import read_dimacs

from ._checks import check_unit_interval

#: Reductions of :class:`SemanticLoss`, as in ``torch.nn`` losses.
REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------- constraints
class Constraint:
    """A Boolean constraint over variables ``1..num_vars``, built as a PySDD SDD on demand.

    ``build(manager)`` returns the constraint's ``SddNode`` in a PySDD manager with at least
    ``manager_vars`` variables; variables above ``num_vars`` (auxiliary ones) must not occur in
    the result. Building lazily is what lets ``a & b``, ``a | b`` and ``~a`` combine
    constraints inside one manager. ``vtree(var_count)``, when given, makes the vtree of a new
    manager (default: balanced over ``1..var_count``); combinations use the first one given.
    """

    def __init__(
        self,
        num_vars: int,
        build: Callable,
        description: str = "constraint",
        manager_vars: int | None = None,
        vtree: Callable | None = None,
    ):
        if not _is_int(num_vars) or num_vars < 1:
            raise CircuitError(f"a constraint needs at least one variable, got {num_vars!r}")
        self.num_vars = int(num_vars)
        self.manager_vars = max(self.num_vars, manager_vars or 0)
        self.description = description
        self._build = build
        self._vtree = vtree

    def sdd(self, manager=None):
        """The constraint as a PySDD ``SddNode``, in ``manager`` or in a new one over
        ``1..manager_vars`` (automatic garbage collection and minimization off; the node keeps
        its manager alive)."""
        if manager is None:
            manager = _new_manager(self.manager_vars, self._vtree)
        elif manager.var_count() < self.manager_vars:
            raise CircuitError(
                f"{self.description} needs a manager with {self.manager_vars} variables, "
                f"this one has {manager.var_count()}"
            )
        return self._build(manager)

    def circuit(self, num_vars: int | None = None) -> Circuit:
        """A one-root :class:`~trilay.engine.Circuit` of the constraint over ``num_vars``
        variables (default: its own; more adds unconstrained variables)."""
        n = self.num_vars if num_vars is None else num_vars
        if not _is_int(n) or n < self.num_vars:
            raise CircuitError(
                f"{self.description} is over {self.num_vars} variables; num_vars={n!r} is too few"
            )
        circuit = Circuit(num_vars=int(n))
        # over its own variables: a manager's auxiliary ones are quantified out of the node
        circuit.add_sdd(self.sdd(), num_vars=self.num_vars)
        return circuit

    def __and__(self, other: Constraint) -> Constraint:
        return self._combine(other, "&", lambda a, b: a & b)

    def __or__(self, other: Constraint) -> Constraint:
        return self._combine(other, "|", lambda a, b: a | b)

    def __invert__(self) -> Constraint:
        return Constraint(
            self.num_vars,
            lambda m: ~self._build(m),
            f"~({self.description})",
            self.manager_vars,
            self._vtree,
        )

    def _combine(self, other, symbol: str, op) -> Constraint:
        if not isinstance(other, Constraint):
            return NotImplemented
        return Constraint(
            max(self.num_vars, other.num_vars),
            lambda m: op(self._build(m), other._build(m)),
            f"({self.description}) {symbol} ({other.description})",
            max(self.manager_vars, other.manager_vars),
            self._vtree or other._vtree,
        )

    def __repr__(self) -> str:
        return f"Constraint({self.description}, num_vars={self.num_vars})"


def cnf(
    clauses: str | os.PathLike | Sequence[Sequence[int]], num_vars: int | None = None
) -> Constraint:
    """A CNF (DIMACS path or list of clauses) as a :class:`Constraint` over ``1..num_vars``.

    ``num_vars`` defaults to the DIMACS header's count, or the largest variable of the list.
    Variables above ``num_vars`` are auxiliary (a Tseitin or cardinality encoding's): they are
    quantified out existentially, so the constraint's models are the assignments of
    ``1..num_vars`` that extend to a model of the CNF.
    """
    if isinstance(clauses, (str, os.PathLike)):
        rows, header_vars = read_dimacs(clauses)
    else:
        rows, header_vars = [list(c) for c in clauses], 0
    for row in rows:
        for lit in row:
            if not _is_int(lit) or lit == 0:
                raise CircuitError(f"a CNF literal is a non-zero integer, got {lit!r}")
    largest = max([header_vars] + [abs(int(lit)) for row in rows for lit in row])
    n = largest if num_vars is None else num_vars
    if not _is_int(n) or n < 1:
        raise CircuitError(f"num_vars must be a positive integer, got {n!r}")
    n = int(n)
    total = max(n, largest)

    def build(manager):
        root = manager.true()
        for row in rows:
            clause = manager.false()
            for lit in row:
                clause = clause | manager.literal(int(lit))
            root = root & clause
        if total > n:
            aux = np.zeros(manager.var_count() + 1, dtype=np.int32)
            aux[n + 1 : total + 1] = 1
            root = manager.exists_multiple(aux, root)
        return root

    return Constraint(n, build, f"cnf({len(rows)} clauses)", total)


def exactly_k(variables: int | Sequence[int], k: int, num_vars: int | None = None) -> Constraint:
    """Exactly ``k`` of ``variables`` are true (``variables``: a count ``n`` for ``1..n``, or
    a sequence of variable ids; ``num_vars`` defaults to the largest of them)."""
    vs, n = _variables(variables, num_vars)
    k = _count(k, "k")
    if k > len(vs):
        raise CircuitError(f"exactly {k} of {len(vs)} variables: the constraint has no models")
    return Constraint(n, lambda m: _counting(m, vs, k, exact=True), f"exactly_{k}({len(vs)})")


def exactly_one(variables: int | Sequence[int], num_vars: int | None = None) -> Constraint:
    """Exactly one of ``variables`` is true (see :func:`exactly_k`)."""
    return exactly_k(variables, 1, num_vars)


def at_least_k(variables: int | Sequence[int], k: int, num_vars: int | None = None) -> Constraint:
    """At least ``k`` of ``variables`` are true (see :func:`exactly_k`)."""
    vs, n = _variables(variables, num_vars)
    k = _count(k, "k")
    if k > len(vs):
        raise CircuitError(f"at least {k} of {len(vs)} variables: the constraint has no models")
    return Constraint(n, lambda m: _counting(m, vs, k, exact=False), f"at_least_{k}({len(vs)})")


def at_most_k(variables: int | Sequence[int], k: int, num_vars: int | None = None) -> Constraint:
    """At most ``k`` of ``variables`` are true (see :func:`exactly_k`)."""
    vs, n = _variables(variables, num_vars)
    k = _count(k, "k")
    if k >= len(vs):
        return Constraint(n, lambda m: m.true(), f"at_most_{k}({len(vs)})")
    return Constraint(n, lambda m: ~_counting(m, vs, k + 1, exact=False), f"at_most_{k}({len(vs)})")


def implies(
    premise: int | Sequence[int], conclusion: int | Sequence[int], num_vars: int | None = None
) -> Constraint:
    """``AND(premise) -> OR(conclusion)``, i.e. the clause ``OR(-premise) | OR(conclusion)``.

    Each side is one signed literal (``3``, ``-2``; variables are 1-based, variable ``v`` is
    input column ``v - 1``) or a sequence of them: the premise is their conjunction, the
    conclusion their disjunction. ``implies(4, 1)`` says "label 4 implies
    label 1" (a hierarchy edge); ``implies([1, 2], [-3])`` says "1 and 2 exclude 3".
    """
    pre = [premise] if _is_int(premise) else list(premise)
    post = [conclusion] if _is_int(conclusion) else list(conclusion)
    clause = [-_literal(lit) for lit in pre] + [_literal(lit) for lit in post]
    if not clause:
        raise CircuitError("implies() with no premise and no conclusion is false")
    largest = max(abs(lit) for lit in clause)
    n = largest if num_vars is None else num_vars
    if not _is_int(n) or n < largest:
        raise CircuitError(f"num_vars={n!r} is smaller than literal {largest}")
    constraint = cnf([clause], int(n))
    constraint.description = f"implies({pre}, {post})"
    return constraint


def permutation(n: int) -> Constraint:
    """Every row and every column of an ``n x n`` 0/1 matrix has exactly one true entry (``n!``
    models). Entry ``(r, c)`` (0-based) is variable ``r * n + c + 1``: the input is the
    matrix flattened row-major, ``[..., n * n]``."""
    n = _count(n, "n")
    if n < 1:
        raise CircuitError("permutation(n) needs n >= 1")
    rows = [[r * n + c + 1 for c in range(n)] for r in range(n)]
    cols = [[r * n + c + 1 for r in range(n)] for c in range(n)]

    def build(manager):
        root = manager.true()
        for group in rows + cols:
            root = root & _counting(manager, group, 1, exact=True)
        return root

    return Constraint(n * n, build, f"permutation({n})")


# ---------------------------------------------------------------------------- grid paths
def grid_edges(rows: int, cols: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The edges of a ``rows x cols`` grid graph in variable order: edge ``i`` is variable
    ``i + 1``. Horizontal edges ``(r, c)-(r, c+1)`` first, row by row; then vertical edges
    ``(r, c)-(r+1, c)``, column by column (the layout of Xu et al.'s 4x4 grid file)."""
    rows, cols = _count(rows, "rows"), _count(cols, "cols")
    horizontal = [((r, c), (r, c + 1)) for r in range(rows) for c in range(cols - 1)]
    vertical = [((r, c), (r + 1, c)) for c in range(cols) for r in range(rows - 1)]
    return horizontal + vertical


def grid_path(
    rows: int,
    cols: int,
    source: tuple[int, int] | None = None,
    target: tuple[int, int] | None = None,
) -> Constraint:
    """The true edges form one simple path (Xu et al.'s path task on a grid graph).

    With ``source`` and ``target`` (``(row, col)``, 0-based, distinct) the constraint is over
    the edge variables only (:func:`grid_edges`) and its models are the simple paths between
    the two nodes. Without them it also has one variable per node, ``E + r * cols + c + 1``
    for ``E`` edges, marking the path's two end points, and its models are the simple paths
    between any two distinct nodes with their ends marked: for a 4x4 grid that is the
    constraint of :func:`grid_4x4_files` (40 variables, 14,248 models), with which the end
    points are fed in as probabilities 0 and 1.

    The SDD is built by a walk from each source, memoized on (current node, visited set,
    target): exponential in the grid size, fine up to about 5x5.
    """
    edges = grid_edges(rows, cols)
    nodes = [(r, c) for r in range(rows) for c in range(cols)]
    if (source is None) != (target is None):
        raise CircuitError("grid_path: give both source and target, or neither")
    if source is not None:
        for name, node in (("source", source), ("target", target)):
            if tuple(node) not in nodes:
                raise CircuitError(f"grid_path: {name} {node!r} is not a node of the grid")
        if tuple(source) == tuple(target):
            raise CircuitError("grid_path: source and target must differ")
    if len(nodes) < 2:
        raise CircuitError("grid_path: the grid needs at least two nodes")
    num_edges = len(edges)
    node_var = {node: num_edges + i + 1 for i, node in enumerate(nodes)}

    def build(manager):
        paths = _GridPaths(manager, edges)
        if source is not None:
            return paths.between(tuple(source), tuple(target))
        root = manager.false()
        for i, s in enumerate(nodes):
            for t in nodes[i + 1 :]:
                ends = manager.true()
                for node, var in node_var.items():
                    ends = ends & manager.literal(var if node in (s, t) else -var)
                root = root | (ends & paths.between(s, t))
        return root

    ends = f", {tuple(source)} -> {tuple(target)}" if source is not None else ""
    description = f"grid_path({rows}x{cols}{ends})"
    if source is not None:
        return Constraint(num_edges, build, description)
    return Constraint(num_edges + len(nodes), build, description, vtree=_ends_first(num_edges))


def _ends_first(num_edges: int) -> Callable:
    """A vtree whose primes are over the end-point variables (``num_edges + 1..``): each pair
    of ends is then one prime with its paths as the sub, built without any search (in a
    balanced vtree over ``1..V`` the 4x4 grid takes 20 times longer)."""

    def vtree(var_count: int):
        from pysdd.sdd import Vtree

        is_end = [0] * (num_edges + 1) + [1] * (var_count - num_edges)
        return Vtree.new_with_X_constrained(var_count, is_end, "balanced")

    return vtree


class _GridPaths:
    """Simple paths of a grid graph as SDDs over its edge variables."""

    def __init__(self, manager, edges):
        self.manager = manager
        self.edges = edges
        self.adjacent: dict[tuple, list[tuple[tuple, int]]] = {}
        for i, (a, b) in enumerate(edges):
            self.adjacent.setdefault(a, []).append((b, i + 1))
            self.adjacent.setdefault(b, []).append((a, i + 1))
        self.memo: dict[tuple, object] = {}

    def between(self, source, target):
        return self._rest(source, frozenset([source]), target)

    def _none(self, variables):
        m = self.manager
        out = m.true()
        for v in variables:
            out = out & m.literal(-v)
        return out

    def _rest(self, cur, visited, target):
        """The edges with an end outside ``visited``, given a path from the source through
        ``visited`` that has just entered ``cur``: every edge is decided when its later end is
        entered, so each model is one complete edge assignment (one path, counted once)."""
        key = (cur, visited, target)
        if key in self.memo:
            return self.memo[key]
        if cur == target:
            out = self._none(
                i + 1 for i, (a, b) in enumerate(self.edges) if a not in visited or b not in visited
            )
        else:
            out = self.manager.false()
            onward = [(n, v) for n, v in self.adjacent[cur] if n not in visited]
            for n, v in onward:
                # leave cur along v only, and close n's edges back into the visited set
                others = [w for m, w in onward if m != n]
                back = [w for m, w in self.adjacent[n] if m in visited and m != cur]
                step = self.manager.literal(v) & self._none(others + back)
                out = out | (step & self._rest(n, visited | {n}, target))
        self.memo[key] = out
        return out


def grid_4x4_files() -> tuple[str, str]:
    """``(sdd_path, vtree_path)`` of the compiled 4x4 grid path constraint shipped with trilay
    (from KLay's experiments): 24 edge and 16 end-point variables, 14,248 models, the same
    function as ``grid_path(4, 4)``. Pass the pair to :class:`SemanticLoss`."""
    data = resources.files("trilay.frontends") / "data"
    return str(data / "4-grid.sdd"), str(data / "4-grid.vtree")


# ---------------------------------------------------------------------------- the loss
class SemanticLoss(torch.nn.Module):
    """``-log P(constraint)`` under independent Bernoulli outputs, as a module.

    Args:
        constraint: a :class:`Constraint`, CNF (DIMACS path or clause list), PySDD
            ``SddNode``, ``(sdd_path, vtree_path)`` pair, or one-root d-DNNF
            :class:`~trilay.engine.Circuit` (see the module docstring).
        num_vars: the input's last dimension ``n``; defaults to the constraint's variable count
            (the manager's for an ``SddNode``). More than the constraint mentions is allowed:
            the extra variables are unconstrained.
        from_logits: inputs are logits ``x`` (weights ``logsigmoid(x)``, ``logsigmoid(-x)``:
            exact everywhere, the better choice) rather than probabilities ``p`` (weights
            ``log p``, ``log1p(-p)``).
        reduction: ``"none"`` (loss ``[...]``), ``"mean"`` or ``"sum"`` (a scalar).
        backend: the circuit module's backend (``"auto"``: Triton kernels on CUDA, PyTorch
            on CPU).
        validate: check that probabilities lie in ``[0, 1]`` (``from_logits=False`` only;
            logits take any value). One comparison over the input; on CUDA reading its result
            is a host sync, so ``validate=False`` skips it (also needed under ``torch.compile``
            without graph breaks, or ``torch.func.vmap``), and then a value outside
            ``[0, 1]`` gives a NaN loss.

    ``forward(x: [..., n]) -> loss``: float16/32/64 inputs on the module's device (move it
    with ``.to(device)``; the compiled circuit is the submodule ``circuit``). Raises
    :class:`~trilay.engine.errors.ShapeError` when the last dimension is not ``n``,
    :class:`~trilay.engine.errors.DTypeError` for non-float inputs and
    :class:`~trilay.engine.errors.ValueRangeError` for probabilities outside ``[0, 1]``
    (NaN included: logits passed as probabilities, most often). An unknown ``reduction``
    raises :class:`~trilay.engine.errors.OptionError` at construction.

    Values: the loss is ``+inf`` (never NaN) where the weights give the constraint probability
    0, and finite where they do not, including at probabilities exactly 0 and 1.

    Gradients are exact for logits. For probabilities, ``d/dp`` combines ``d/d log p`` divided
    by ``p`` and ``d/d log(1 - p)`` divided by ``1 - p``; at ``p_i`` exactly 0 (resp. 1) the
    first (resp. second) share is dropped instead of computing ``0 * inf``, so the gradient
    there is finite but misses ``-P(alpha | x_i) / P(alpha)`` (resp.
    ``+P(alpha | not x_i) / P(alpha)``), which the log-space backward cannot recover (its
    gradient at ``log p_i = -inf`` is 0): pass logits when outputs saturate.
    """

    def __init__(
        self,
        constraint,
        *,
        num_vars: int | None = None,
        from_logits: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
        validate: bool = True,
    ):
        super().__init__()
        if not isinstance(reduction, str) or reduction not in REDUCTIONS:
            raise OptionError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        for name, flag in (("from_logits", from_logits), ("validate", validate)):
            if not isinstance(flag, bool):
                raise OptionError(f"{name} is True or False, got {flag!r}")
        self.reduction = reduction
        self.from_logits = from_logits
        self.validate = validate
        circuit = constraint_circuit(constraint, num_vars)
        self.num_vars = circuit.num_vars
        # Smoothed so that every root mentions every variable: the count is then over complete
        # assignments whatever the weights (the two literal probabilities sum to one only up
        # to rounding).
        # The loss checks its own inputs (probabilities, before their logs); the circuit gets
        # log-probabilities it computed.
        self.circuit = circuit.compile(smooth=True).module("log", backend=backend, validate=False)

    def log_probability(self, x: torch.Tensor) -> torch.Tensor:
        """``log P(constraint)``: ``[..., n] -> [...]`` (``-inf`` where it is impossible)."""
        self._check(x)
        if self.from_logits:
            pos = torch.nn.functional.logsigmoid(x)
            neg = torch.nn.functional.logsigmoid(-x)
        else:
            pos, neg = _LogProbabilities.apply(x)
        return self.circuit(pos, neg)[..., 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss = -self.log_probability(x)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def _check(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise DTypeError(f"SemanticLoss takes a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DTypeError(f"SemanticLoss takes float probabilities or logits, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.num_vars:
            raise ShapeError(
                f"SemanticLoss over {self.num_vars} variables takes [..., {self.num_vars}], "
                f"got {list(x.shape)}"
            )
        if self.validate and not self.from_logits:
            check_unit_interval(
                x,
                "SemanticLoss(from_logits=False) takes probabilities, which",
                " (logits? pass from_logits=True)",
            )

    def extra_repr(self) -> str:
        inputs = "logits" if self.from_logits else "probabilities"
        return f"num_vars={self.num_vars}, inputs={inputs}, reduction={self.reduction}"


class _LogProbabilities(torch.autograd.Function):
    """``p -> (log p, log(1 - p))`` with a backward that never forms ``0 * inf``.

    ``d/dp = g_pos / p - g_neg / (1 - p)``; a share whose denominator is 0 is dropped (its
    ``g`` is 0 whenever the constraint stays possible, since the circuit's log-space backward
    gives ``-inf`` leaves zero gradient below a finite root).
    """

    @staticmethod
    def forward(ctx, p):
        ctx.save_for_backward(p)
        return torch.log(p), torch.log1p(-p)

    @staticmethod
    def backward(ctx, g_pos, g_neg):
        (p,) = ctx.saved_tensors
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        from_pos = torch.where(p > 0, g_pos / p, zero)
        from_neg = torch.where(p < 1, g_neg / (1 - p), zero)
        return from_pos - from_neg


def constraint_circuit(constraint, num_vars: int | None = None) -> Circuit:
    """The one-root :class:`~trilay.engine.Circuit` of any constraint form
    :class:`SemanticLoss` accepts, over ``num_vars`` variables (default: the constraint's)."""
    if num_vars is not None and (not _is_int(num_vars) or num_vars < 1):
        raise CircuitError(f"num_vars must be a positive integer, got {num_vars!r}")
    if isinstance(constraint, Constraint):
        return constraint.circuit(num_vars)
    if isinstance(constraint, Circuit):
        if constraint.num_roots != 1:
            raise CircuitError(
                f"a constraint circuit has one root, this one has {constraint.num_roots}"
            )
        if num_vars is not None and num_vars != constraint.num_vars:
            raise CircuitError(
                f"the circuit is over {constraint.num_vars} variables, num_vars={num_vars}"
            )
        return constraint
    if _is_file_pair(constraint):
        circuit = Circuit(num_vars=num_vars)
        circuit.add_sdd_file(*constraint)
        return circuit
    if isinstance(constraint, (str, os.PathLike)) or _is_clause_list(constraint):
        return cnf(constraint, num_vars).circuit()
    try:
        from pysdd.sdd import SddNode
    except ImportError:  # pragma: no cover - pysdd is a dependency
        SddNode = ()
    if isinstance(constraint, SddNode):
        n = constraint.manager.var_count() if num_vars is None else num_vars
        circuit = Circuit(num_vars=n)
        circuit.add_sdd(constraint, num_vars=n)
        return circuit
    raise CircuitError(
        "a constraint is a Constraint, a CNF (DIMACS path or clause list), a PySDD SddNode, an "
        f"(sdd_path, vtree_path) pair or a trilay Circuit; got {type(constraint).__name__}"
    )


# ---------------------------------------------------------------------------- internals
def _new_manager(num_vars: int, vtree: Callable | None = None):
    from pysdd.sdd import SddManager, Vtree

    if vtree is None:
        vtree = lambda n: Vtree(n, list(range(1, n + 1)), "balanced")  # noqa: E731
    manager = SddManager.from_vtree(vtree(num_vars))
    manager.auto_gc_and_minimize_off()
    return manager


def _counting(manager, variables: Sequence[int], k: int, exact: bool):
    """At least (or exactly) ``k`` of ``variables`` true, by the recursion over the suffix
    ``x_i..x_m``: ``C(i, j) = (x_i & C(i+1, j-1)) | (-x_i & C(i+1, j))``. ``O(m k)`` applies,
    no auxiliary variables."""
    # reached[j]: the suffix has exactly j (exact) or at least j (not exact) true variables
    reached = [manager.true()] + [manager.false()] * k
    for v in reversed(variables):
        pos, neg = manager.literal(v), manager.literal(-v)
        first = neg & reached[0] if exact else manager.true()
        reached = [first] + [(pos & reached[j - 1]) | (neg & reached[j]) for j in range(1, k + 1)]
    return reached[k]


def _variables(variables, num_vars) -> tuple[list[int], int]:
    if _is_int(variables):
        if variables < 1:
            raise CircuitError(f"a constraint needs at least one variable, got {variables}")
        vs = list(range(1, int(variables) + 1))
    else:
        if not isinstance(variables, Sequence) or isinstance(variables, str):
            raise CircuitError(f"variables are a count or a sequence of ids, got {variables!r}")
        vs = list(variables)
        if not vs:
            raise CircuitError("a constraint needs at least one variable")
        for v in vs:
            if not _is_int(v) or v < 1:
                raise CircuitError(
                    f"variables are positive integers (1-based: variable v is input column "
                    f"v - 1), got {v!r}"
                )
        vs = [int(v) for v in vs]
        if len(set(vs)) != len(vs):
            raise CircuitError(f"variables repeat: {vs}")
    n = max(vs) if num_vars is None else num_vars
    if not _is_int(n) or n < max(vs):
        raise CircuitError(f"num_vars={n!r} is smaller than variable {max(vs)}")
    return vs, int(n)


def _count(k, name: str) -> int:
    if not _is_int(k) or k < 0:
        raise CircuitError(f"{name} must be a non-negative integer, got {k!r}")
    return int(k)


def _literal(lit) -> int:
    if not _is_int(lit) or lit == 0:
        raise CircuitError(
            "a literal is a non-zero integer +v or -v; variables are 1-based (variable v is "
            f"input column v - 1), got {lit!r}"
        )
    return int(lit)


def _is_file_pair(x) -> bool:
    return (
        isinstance(x, tuple) and len(x) == 2 and all(isinstance(p, (str, os.PathLike)) for p in x)
    )


def _is_clause_list(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(c, (list, tuple)) for c in x)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
