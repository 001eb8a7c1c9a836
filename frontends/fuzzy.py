"""Fuzzy logic on trilay circuits: formulas evaluated truth-functionally, plus LTN quantifiers.

A fuzzy semantics evaluates a formula *as written*: compiling it (to d-DNNF, an SDD, ...) would
change its value. So the formula's own negation normal form is the circuit: negations are
pushed to the variables by De Morgan (exact for each logic's t-norm / t-conorm pair under
``1 - x``), nested and/or of one kind are flattened into single n-ary nodes, and the circuit is
compiled with ``smooth=False`` and evaluated in the engine's ``fuzzy_*`` semirings (the Triton
kernels on CUDA, the PyTorch path on CPU)::

    from trilay.frontends.fuzzy import FuzzyFormula, variables

    a, b, c = variables("a b c")
    rule = FuzzyFormula([(a & b) >> c, "a | ~c"], logic="product")  # a torch.nn.Module
    truth = rule(torch.rand(32, 3))  # [32, 3] truth values of a, b, c -> [32, 2]

- ``godel``: AND ``min``, OR ``max``; ``a -> b`` is Kleene-Dienes ``max(1 - a, b)``;
- ``product``: AND ``prod``, OR ``1 - prod(1 - x)``; ``a -> b`` is Reichenbach
  ``1 - a + a b``;
- ``lukasiewicz``: AND ``max(0, sum - (n - 1))``, OR ``min(1, sum)``; ``a -> b`` is
  Lukasiewicz's ``min(1, 1 - a + b)``;

with negation ``1 - x``. Implications are S-implications ``S(1 - a, b)``. Residuated
implications (Goedel's ``1 if a <= b else b``, Goguen's ``min(1, b / a)``) are not sums or
products of literals: asking for them raises :class:`~trilay.engine.errors.SemiringError`,
except for Lukasiewicz, whose residuum is its S-implication.

Quantifiers over a batch axis, as in Logic Tensor Networks (LTNtorch's ``AggregPMean`` /
``AggregPMeanError`` with their stable projections, ``eps = 1e-4``): :func:`exists` (p-mean)
and :func:`forall` (p-mean error); :func:`sat_agg` aggregates closed formulas.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from trilay.engine import Circuit
from trilay.engine.errors import CircuitError, DTypeError, ParseError, SemiringError, ShapeError

#: Logics and the engine semiring each evaluates in.
LOGICS = {"godel": "fuzzy_godel", "product": "fuzzy_product", "lukasiewicz": "fuzzy_lukasiewicz"}

#: LTN's projection margin: :func:`exists` maps truth values into ``[eps, 1]`` and
#: :func:`forall` into ``[0, 1 - eps]`` so that the p-th root's gradient stays finite.
EPS = 1e-4


# ---------------------------------------------------------------------------- formulas
class Formula:
    """A propositional formula. Combine with ``&`` (and), ``|`` (or), ``~`` (not) and ``>>``
    (implies); Python's ``>>`` binds tighter than ``&`` and ``|``, so parenthesize:
    ``(a & b) >> c``. ``True``/``False`` mix in as constants."""

    def __and__(self, other) -> Formula:
        return And((self, _formula(other)))

    def __rand__(self, other) -> Formula:
        return And((_formula(other), self))

    def __or__(self, other) -> Formula:
        return Or((self, _formula(other)))

    def __ror__(self, other) -> Formula:
        return Or((_formula(other), self))

    def __invert__(self) -> Formula:
        return Not(self)

    def __rshift__(self, other) -> Formula:
        return Implies(self, _formula(other))

    def __rrshift__(self, other) -> Formula:
        return Implies(_formula(other), self)

    def iff(self, other) -> Formula:
        """``(self -> other) & (other -> self)``."""
        return Iff(self, _formula(other))

    def __bool__(self):
        # `a and b` / `not a` would silently pick an operand instead of building a formula
        raise CircuitError("a Formula has no truth value in Python: use &, |, ~ and >>")


@dataclass(frozen=True, eq=False)
class Var(Formula):
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class Const(Formula):
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True, eq=False)
class Not(Formula):
    child: Formula

    def __str__(self) -> str:
        return f"~{_wrap(self.child)}"


@dataclass(frozen=True, eq=False)
class And(Formula):
    children: tuple[Formula, ...]

    def __str__(self) -> str:
        return " & ".join(_wrap(c) for c in self.children) if self.children else "true"


@dataclass(frozen=True, eq=False)
class Or(Formula):
    children: tuple[Formula, ...]

    def __str__(self) -> str:
        return " | ".join(_wrap(c) for c in self.children) if self.children else "false"


@dataclass(frozen=True, eq=False)
class Implies(Formula):
    premise: Formula
    conclusion: Formula

    def __str__(self) -> str:
        return f"{_wrap(self.premise)} -> {_wrap(self.conclusion)}"


@dataclass(frozen=True, eq=False)
class Iff(Formula):
    left: Formula
    right: Formula

    def __str__(self) -> str:
        return f"{_wrap(self.left)} <-> {_wrap(self.right)}"


def variables(names: str | Sequence[str]) -> tuple[Var, ...]:
    """``variables("a b c")`` or ``variables(["a", "b", "c"])``: one :class:`Var` per name."""
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    return tuple(Var(_name(n)) for n in names)


def conjoin(formulas: Sequence) -> Formula:
    """One n-ary AND (``true`` when empty)."""
    return And(tuple(_formula(f) for f in formulas))


def disjoin(formulas: Sequence) -> Formula:
    """One n-ary OR (``false`` when empty)."""
    return Or(tuple(_formula(f) for f in formulas))


def nnf(formula: Formula, negate: bool = False) -> Formula:
    """Negation normal form: ``Not`` only directly above a :class:`Var`, no implications, no
    constants inside and/or, nested and/or of one kind flattened. Exact in the three logics:
    their negation is involutive and their and/or are De Morgan duals, ``1 - T(x) = S(1 - x)``,
    associative and commutative, with identity ``1`` (and) / ``0`` (or) and absorbing ``0`` /
    ``1``. A sub-formula object used twice (as ``iff`` uses both sides twice) is converted
    once per polarity and shared, so nested ``iff`` chains stay linear."""
    return _nnf(formula, negate, {})


def _nnf(f: Formula, negate: bool, memo: dict) -> Formula:
    key = (id(f), negate)
    if key not in memo:
        memo[key] = (f, _nnf_node(f, negate, memo))  # f kept alive: its id stays unique
    return memo[key][1]


def _nnf_node(f: Formula, negate: bool, memo: dict) -> Formula:
    if isinstance(f, Var):
        return Not(f) if negate else f
    if isinstance(f, Const):
        return Const(f.value != negate)
    if isinstance(f, Not):
        return _nnf(f.child, not negate, memo)
    if isinstance(f, Implies):
        return _nnf_node(Or((Not(f.premise), f.conclusion)), negate, memo)
    if isinstance(f, Iff):
        both = (Implies(f.left, f.right), Implies(f.right, f.left))
        return _nnf_node(And(both), negate, memo)
    if isinstance(f, (And, Or)):
        conjunction = isinstance(f, And) != negate  # De Morgan swaps the kind
        kind = And if conjunction else Or
        children: list[Formula] = []
        for child in f.children:
            c = _nnf(child, negate, memo)
            if isinstance(c, Const):
                if c.value != conjunction:  # absorbing: false in an AND, true in an OR
                    return c
                continue  # the identity drops out
            children.extend(c.children if isinstance(c, kind) else (c,))
        if not children:
            return Const(conjunction)
        return children[0] if len(children) == 1 else kind(tuple(children))
    raise CircuitError(f"not a formula: {f!r}")


# ---------------------------------------------------------------------------- the parser
_TOKEN = re.compile(
    r"\s*(?:(<->|<=>)|(->|=>|>>)|(&&?|\band\b)|(\|\|?|\bor\b)|(~|!|\bnot\b)|(\()|(\))"
    r"|([A-Za-z_][A-Za-z0-9_.]*))"
)
_KINDS = ("iff", "implies", "and", "or", "not", "(", ")", "name")


def parse(text: str) -> Formula:
    """Parse a formula: names (``[A-Za-z_][A-Za-z0-9_.]*``), ``true``, ``false``,
    parentheses, and from tightest to loosest ``~ ! not``, ``& && and``, ``| || or``,
    ``-> => >>`` (right-associative), ``<-> <=>``. Raises
    :class:`~trilay.engine.errors.ParseError` naming the position."""
    if not isinstance(text, str):
        raise ParseError(f"a formula string is a str, got {type(text).__name__}")
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            column = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise ParseError(f"unexpected {text[column]!r} at column {column + 1} in {text!r}")
        kind = _KINDS[match.lastindex - 1]
        tokens.append((kind, match.group(match.lastindex), match.start(match.lastindex)))
        pos = match.end()
    return _Parser(text, tokens).parse()


class _Parser:
    """Recursive descent over the token list, one method per precedence level."""

    def __init__(self, text: str, tokens: list[tuple[str, str, int]]):
        self.text = text
        self.tokens = tokens
        self.i = 0

    def parse(self) -> Formula:
        f = self.iff()
        if self.i < len(self.tokens):
            self.fail("unexpected")
        return f

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def fail(self, what: str):
        if self.i < len(self.tokens):
            _, value, column = self.tokens[self.i]
            raise ParseError(f"{what} {value!r} at column {column + 1} in {self.text!r}")
        raise ParseError(f"{what} end of formula in {self.text!r}")

    def iff(self) -> Formula:
        f = self.implies()
        while self.peek() == "iff":
            self.i += 1
            f = Iff(f, self.implies())
        return f

    def implies(self) -> Formula:
        f = self.disjunction()
        if self.peek() == "implies":
            self.i += 1
            return Implies(f, self.implies())
        return f

    def disjunction(self) -> Formula:
        parts = [self.conjunction()]
        while self.peek() == "or":
            self.i += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conjunction(self) -> Formula:
        parts = [self.unary()]
        while self.peek() == "and":
            self.i += 1
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Formula:
        kind = self.peek()
        if kind == "not":
            self.i += 1
            return Not(self.unary())
        if kind == "(":
            self.i += 1
            f = self.iff()
            if self.peek() != ")":
                self.fail("expected ')' but found")
            self.i += 1
            return f
        if kind == "name":
            name = self.tokens[self.i][1]
            self.i += 1
            if name in ("true", "false"):
                return Const(name == "true")
            return Var(name)
        self.fail("expected a name, '~' or '(' but found")


# ---------------------------------------------------------------------------- the module
class FuzzyFormula(torch.nn.Module):
    """Fuzzy truth values of formulas, as a module: ``[..., n] -> [..., num_roots]``.

    Args:
        formulas: one formula or a sequence of them (one output column each, in order); each a
            :class:`Formula` or a string for :func:`parse`.
        logic: ``"godel"``, ``"product"`` or ``"lukasiewicz"`` (table in the module docstring).
        variables: the variable names of the input's last dimension, in order (names no
            formula uses are allowed); default: every name in order of first appearance,
            left to right, formula by formula (see the ``variables`` attribute).
        implication: ``"s"`` (S-implication ``S(1 - a, b)``) or ``"r"`` (residuated; only
            Lukasiewicz, where the two coincide).
        backend: the circuit module's backend (``"auto"``: Triton kernels on CUDA, PyTorch on
            CPU).

    ``forward(truth: [..., n])``: float16/32/64 truth values on the module's device. Raises
    :class:`~trilay.engine.errors.ShapeError` when the last dimension is not ``n``,
    :class:`~trilay.engine.errors.DTypeError` for non-float inputs; unknown logics and
    residuated implications raise :class:`~trilay.engine.errors.SemiringError` at
    construction. Values are not checked to lie in ``[0, 1]`` (that would need a device sync).

    Gradients: through min/max they go to the arg-min/arg-max child (the PyTorch path splits
    ties evenly, the Triton kernels give them to the first child); Lukasiewicz's clamps pass
    no gradient where they clamp.
    """

    def __init__(
        self,
        formulas,
        logic: str = "product",
        *,
        variables: Sequence[str] | None = None,
        implication: str = "s",
        backend: str = "auto",
    ):
        super().__init__()
        if logic not in LOGICS:
            raise SemiringError(f"unknown fuzzy logic {logic!r}; expected one of {list(LOGICS)}")
        if implication not in ("s", "r"):
            raise SemiringError(f"implication is 's' or 'r', got {implication!r}")
        if isinstance(formulas, (str, Formula)):
            formulas = [formulas]
        formulas = [parse(f) if isinstance(f, str) else f for f in formulas]
        if not formulas:
            raise CircuitError("FuzzyFormula needs at least one formula")
        for f in formulas:
            if not isinstance(f, Formula):
                raise CircuitError(f"not a formula: {f!r}")
        if implication == "r" and logic != "lukasiewicz" and any(map(_has_implication, formulas)):
            raise SemiringError(
                f"the residuated implication of the {logic} logic is not a t-norm/t-conorm "
                "of literals and has no circuit node; use implication='s' "
                f"({'Kleene-Dienes' if logic == 'godel' else 'Reichenbach'}) or 'lukasiewicz'"
            )
        self.logic = logic
        self.formulas = tuple(formulas)
        self.variables = _order(formulas, variables)
        self.circuit = (
            _build_circuit([nnf(f) for f in formulas], self.variables)
            .compile(smooth=False)
            .module(LOGICS[logic], backend=backend)
        )

    @property
    def num_vars(self) -> int:
        return len(self.variables)

    def forward(self, truth: torch.Tensor) -> torch.Tensor:
        if not isinstance(truth, torch.Tensor):
            raise DTypeError(f"FuzzyFormula takes a torch.Tensor, got {type(truth).__name__}")
        if not truth.is_floating_point():
            raise DTypeError(f"FuzzyFormula takes float truth values, got {truth.dtype}")
        if truth.dim() == 0 or truth.shape[-1] != self.num_vars:
            raise ShapeError(
                f"FuzzyFormula over {self.num_vars} variables {list(self.variables)} takes "
                f"[..., {self.num_vars}], got {list(truth.shape)}"
            )
        return self.circuit(truth)

    def extra_repr(self) -> str:
        shown = "; ".join(str(f) for f in self.formulas)
        return f"logic={self.logic}, variables={list(self.variables)}, formulas=[{shown}]"


def _build_circuit(formulas: list[Formula], names: tuple[str, ...]) -> Circuit:
    """One root per NNF formula; shared sub-formula objects become shared nodes."""
    column = {name: i + 1 for i, name in enumerate(names)}
    circuit = Circuit(num_vars=len(names))
    built: dict[int, int] = {}

    def node(f: Formula) -> int:
        key = id(f)
        if key not in built:
            if isinstance(f, Var):
                built[key] = circuit.literal(column[f.name])
            elif isinstance(f, Not):
                built[key] = circuit.literal(-column[f.child.name])
            elif isinstance(f, Const):
                built[key] = circuit.true() if f.value else circuit.false()
            elif isinstance(f, And):
                built[key] = circuit.conjoin([node(c) for c in f.children])
            else:
                built[key] = circuit.disjoin([node(c) for c in f.children])
        return built[key]

    for f in formulas:
        circuit.add_root(node(f))
    return circuit


def _order(formulas: list[Formula], given: Sequence[str] | None) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    stack = list(reversed(formulas))
    while stack:
        f = stack.pop()
        if isinstance(f, Var):
            seen.setdefault(f.name, None)
        else:
            stack.extend(reversed(_children(f)))
    if given is None:
        return tuple(seen)
    if isinstance(given, str):
        raise CircuitError("variables is a sequence of names, e.g. ['a', 'b'], not one string")
    names = tuple(_name(n) for n in given)
    if len(set(names)) != len(names):
        raise CircuitError(f"variables repeat a name: {list(names)}")
    missing = [n for n in seen if n not in names]
    if missing:
        raise CircuitError(f"variables {missing} occur in the formulas but not in variables")
    return names


def _children(f: Formula) -> tuple[Formula, ...]:
    if isinstance(f, Not):
        return (f.child,)
    if isinstance(f, (And, Or)):
        return f.children
    if isinstance(f, Implies):
        return (f.premise, f.conclusion)
    if isinstance(f, Iff):
        return (f.left, f.right)
    return ()


def _has_implication(f: Formula) -> bool:
    return isinstance(f, (Implies, Iff)) or any(map(_has_implication, _children(f)))


def _formula(x) -> Formula:
    if isinstance(x, Formula):
        return x
    if isinstance(x, bool):
        return Const(x)
    raise CircuitError(f"not a formula: {x!r} (combine Formula objects, True or False)")


def _name(n) -> str:
    if not isinstance(n, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", n):
        raise CircuitError(f"a variable name matches [A-Za-z_][A-Za-z0-9_.]*, got {n!r}")
    if n in ("true", "false", "and", "or", "not"):
        raise CircuitError(f"{n!r} is a keyword of the formula language, not a variable name")
    return n


def _wrap(f: Formula) -> str:
    return str(f) if isinstance(f, (Var, Const, Not)) else f"({f})"


# ---------------------------------------------------------------------------- quantifiers
def exists(
    truth: torch.Tensor,
    dim: int | Sequence[int] = 0,
    p: float = 2.0,
    *,
    stable: bool = True,
    keepdim: bool = False,
) -> torch.Tensor:
    """LTN's existential quantifier, the p-mean ``(mean(x^p))^(1/p)`` over ``dim``.

    ``stable`` first maps ``x -> (1 - eps) x + eps`` (``eps = 1e-4``) so that the p-th root
    never sees 0. ``p >= 1``; as ``p`` grows it tends to the max. ``[..., N, ...]`` ->
    ``[..., ...]`` (``keepdim`` keeps size-1 dims)."""
    x = _check_quantifier(truth, dim, p)
    if stable:
        x = (1 - EPS) * x + EPS
    return x.pow(p).mean(dim=dim, keepdim=keepdim).pow(1 / p)


def forall(
    truth: torch.Tensor,
    dim: int | Sequence[int] = 0,
    p: float = 2.0,
    *,
    stable: bool = True,
    keepdim: bool = False,
) -> torch.Tensor:
    """LTN's universal quantifier, the p-mean error ``1 - (mean((1 - x)^p))^(1/p)`` over
    ``dim``.

    ``stable`` first maps ``x -> (1 - eps) x`` (``eps = 1e-4``) so that the p-th root never
    sees 0. ``p >= 1``; as ``p`` grows it tends to the min. Shapes as :func:`exists`."""
    x = _check_quantifier(truth, dim, p)
    if stable:
        x = (1 - EPS) * x
    return 1 - (1 - x).pow(p).mean(dim=dim, keepdim=keepdim).pow(1 / p)


def sat_agg(*truths: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """LTN's ``SatAgg``: :func:`forall` over the truth values of closed formulas (scalars or
    same-shape tensors), the satisfaction of a knowledge base to maximize."""
    if not truths:
        raise ShapeError("sat_agg needs at least one truth value")
    shapes = {tuple(t.shape) for t in truths if isinstance(t, torch.Tensor)}
    if len(shapes) != 1 or not all(isinstance(t, torch.Tensor) for t in truths):
        raise ShapeError(f"sat_agg takes tensors of one shape, got {sorted(shapes)}")
    return forall(torch.stack(truths), dim=0, p=p)


def _check_quantifier(truth, dim, p) -> torch.Tensor:
    if not isinstance(truth, torch.Tensor) or not truth.is_floating_point():
        raise DTypeError(f"quantifiers take float truth values, got {truth!r:.80}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise SemiringError(f"the p-mean quantifiers need p >= 1, got {p!r}")
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -truth.dim() <= d < truth.dim():
            raise ShapeError(f"dim {d} is out of range for shape {list(truth.shape)}")
        if truth.shape[d] == 0:
            raise ShapeError(f"cannot quantify over the empty dim {d} of {list(truth.shape)}")
    return truth
