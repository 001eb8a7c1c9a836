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
from trilay.engine.errors import (
    CircuitError,
    DTypeError,
    OptionError,
    ParseError,
    SemiringError,
    ShapeError,
)

from ._checks import check_unit_interval

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

    def __str__(self) -> str:
        return _render(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_render(self)!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Var(Formula):
    name: str


@dataclass(frozen=True, eq=False, repr=False)
class Const(Formula):
    value: bool


@dataclass(frozen=True, eq=False, repr=False)
class Not(Formula):
    child: Formula


@dataclass(frozen=True, eq=False, repr=False)
class And(Formula):
    children: tuple[Formula, ...]


@dataclass(frozen=True, eq=False, repr=False)
class Or(Formula):
    children: tuple[Formula, ...]


@dataclass(frozen=True, eq=False, repr=False)
class Implies(Formula):
    premise: Formula
    conclusion: Formula


@dataclass(frozen=True, eq=False, repr=False)
class Iff(Formula):
    left: Formula
    right: Formula


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
    once per polarity and shared, and a shared and/or stays one node rather than being copied
    into its users (unless it has at most four children), so the result is linear in the
    formula's size. Iterative: any depth."""
    return _nnf_all([formula], negate)[0]


class _Node:
    """An and/or of the NNF before flattening: its kind (And or Or) and its children (_Node or
    a leaf Formula: Var, Not(Var), Const)."""

    __slots__ = ("kind", "kids", "uses", "same_kind_uses", "flat", "formula")

    def __init__(self, kind: type, kids: list):
        self.kind, self.kids = kind, kids
        self.uses = self.same_kind_uses = 0
        self.flat: list | None = None  # its children once flattened
        self.formula: Formula | None = None


def _nnf_all(formulas: Sequence[Formula], negate: bool = False) -> list[Formula]:
    """:func:`nnf` of each formula, sub-formulas shared across them. Three passes with explicit
    stacks: negations pushed down and constants folded (post-order, memoized per object and
    polarity); uses counted; and/or nodes built (post-order), each absorbing the same-kind
    children only it uses and copying the small shared ones."""
    done: dict[tuple[int, bool], object] = {}  # (id, polarity) -> _Node or leaf Formula
    parts: dict[tuple[int, bool], tuple] = {}  # also keeps the formulas alive: ids stay unique
    stack = [(f, negate) for f in formulas]
    while stack:
        f, neg = stack[-1]
        key = (id(f), neg)
        if key in done:
            stack.pop()
            continue
        if key not in parts:
            parts[key] = (f, *_nnf_step(f, neg))
        _, kind, requests = parts[key]
        todo = [r for r in requests if (id(r[0]), r[1]) not in done]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        done[key] = _fold(kind, [done[(id(g), n)] for g, n in requests])
    roots = [done[(id(f), negate)] for f in formulas]

    # uses: a node used once, by a node of its own kind, is flattened into it; a root is used
    # by the caller
    seen: set[int] = set()
    todo = [r for r in roots if isinstance(r, _Node)]
    for r in todo:
        r.uses += 1
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for kid in node.kids:
            if isinstance(kid, _Node):
                kid.uses += 1
                kid.same_kind_uses += kid.kind is node.kind
                todo.append(kid)

    todo = [r for r in roots if isinstance(r, _Node)]
    while todo:
        node = todo[-1]
        if node.formula is not None:
            todo.pop()
            continue
        flat, missing = _flattened(node)
        if missing:
            todo.extend(missing)
            continue
        todo.pop()
        node.flat = flat
        node.formula = node.kind(tuple(k.formula if isinstance(k, _Node) else k for k in flat))
    return [r.formula if isinstance(r, _Node) else r for r in roots]


def _nnf_step(f: Formula, negate: bool) -> tuple[object, list[tuple[Formula, bool]]]:
    """One step of pushing negations down: ``(kind, [(sub-formula, polarity), ...])``, kind a
    leaf Formula (no sub-formulas), ``None`` (the one sub-formula's result as it is), or And /
    Or over the sub-formulas' results."""
    if isinstance(f, Var):
        return (Not(f) if negate else f), []
    if isinstance(f, Const):
        return Const(f.value != negate), []
    if isinstance(f, Not):
        return None, [(f.child, not negate)]
    if isinstance(f, Implies):  # ~p | c
        return (And if negate else Or), [(f.premise, not negate), (f.conclusion, negate)]
    if isinstance(f, Iff):  # (l -> r) & (r -> l)
        return (Or if negate else And), [
            (Implies(f.left, f.right), negate),
            (Implies(f.right, f.left), negate),
        ]
    if isinstance(f, (And, Or)):
        return (And if isinstance(f, And) != negate else Or), [(c, negate) for c in f.children]
    raise CircuitError(f"not a formula: {f!r:.80}")


def _fold(kind, kids: list):
    """Constants folded into an and/or (absorbing ones win, identities drop out)."""
    if kind is None:
        return kids[0]
    if not isinstance(kind, type):  # a leaf
        return kind
    conjunction = kind is And
    out = []
    for kid in kids:
        if isinstance(kid, Const):
            if kid.value != conjunction:  # absorbing: false in an AND, true in an OR
                return kid
            continue
        out.append(kid)
    if not out:
        return Const(conjunction)
    return out[0] if len(out) == 1 else _Node(kind, out)


#: A shared and/or with at most this many (flattened) children is copied into its same-kind
#: users: fewer layers, and the copies cost at most this much per use.
_COPY_AT_MOST = 4


def _flattened(node: _Node) -> tuple[list, list]:
    """``(children, missing)``: ``node``'s children with each same-kind child that only it
    uses replaced by that child's children, recursively, in order, and each small shared
    same-kind child by its flattened children; ``missing``: the shared nodes met that are not
    flattened yet (to do first)."""
    out, missing = [], []
    stack = list(reversed(node.kids))
    while stack:
        kid = stack.pop()
        if not isinstance(kid, _Node):
            out.append(kid)
        elif kid.uses == 1 and kid.same_kind_uses == 1:
            stack.extend(reversed(kid.kids))
        elif kid.flat is None:
            missing.append(kid)
        elif kid.kind is node.kind and len(kid.flat) <= _COPY_AT_MOST:
            out.extend(kid.flat)
        else:
            out.append(kid)
    return out, missing


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
    return _parse_tokens(text, tokens)


#: Binding strength of the binary connectives (``~`` binds tighter than all).
_PRECEDENCE = {"iff": 1, "implies": 2, "or": 3, "and": 4}


def _parse_tokens(text: str, tokens: list[tuple[str, str, int]]) -> Formula:
    """Operator precedence parsing with explicit stacks (any nesting depth): ``&`` and ``|``
    chains become one n-ary node, ``->`` groups to the right, ``<->`` to the left."""

    def fail(what: str, i: int):
        if i < len(tokens):
            _, value, column = tokens[i]
            raise ParseError(f"{what} {value!r} at column {column + 1} in {text!r}")
        raise ParseError(f"{what} end of formula in {text!r}")

    operands: list[Formula] = []
    # "(", "not", or [connective, number of operators in its chain]
    operators: list = []

    def reduce() -> None:
        top = operators.pop()
        if top == "not":
            operands.append(Not(operands.pop()))
            return
        kind, count = top
        if kind in ("and", "or"):
            parts = tuple(operands[-count - 1 :])
            del operands[-count - 1 :]
            operands.append(And(parts) if kind == "and" else Or(parts))
            return
        right = operands.pop()
        left = operands.pop()
        operands.append(Implies(left, right) if kind == "implies" else Iff(left, right))

    expect_operand = True
    for i, (kind, value, _) in enumerate(tokens):
        if expect_operand:
            if kind in ("not", "("):
                operators.append(kind)
            elif kind == "name":
                constant = value in ("true", "false")
                operands.append(Const(value == "true") if constant else Var(value))
                expect_operand = False
            else:
                fail("expected a name, '~' or '(' but found", i)
        elif kind == ")":
            while operators and operators[-1] != "(":
                reduce()
            if not operators:
                fail("unexpected", i)
            operators.pop()
        elif kind in _PRECEDENCE:
            strength = _PRECEDENCE[kind]
            while operators and operators[-1] != "(":
                top = operators[-1]
                top_strength = 5 if top == "not" else _PRECEDENCE[top[0]]
                # tighter connectives finish first; "<->" also finishes an earlier "<->"
                if top_strength > strength or (kind == "iff" and top_strength == strength):
                    reduce()
                else:
                    break
            top = operators[-1] if operators else None
            if kind in ("and", "or") and isinstance(top, list) and top[0] == kind:
                top[1] += 1
            else:
                operators.append([kind, 1])
            expect_operand = True
        else:
            fail("unexpected", i)
    if expect_operand:
        fail("expected a name, '~' or '(' but found", len(tokens))
    while operators:
        if operators[-1] == "(":
            fail("expected ')' but found", len(tokens))
        reduce()
    return operands[0]


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
        validate: check that truth values lie in ``[0, 1]``. One comparison over the input; on
            CUDA reading its result is a host sync, so ``validate=False`` skips it (also needed
            under ``torch.compile`` without graph breaks, or ``torch.func.vmap``), and then
            values outside ``[0, 1]`` give values that are no truth values.

    ``forward(truth: [..., n])``: float16/32/64 truth values on the module's device. Raises
    :class:`~trilay.engine.errors.ShapeError` when the last dimension is not ``n``,
    :class:`~trilay.engine.errors.DTypeError` for non-float inputs and
    :class:`~trilay.engine.errors.ValueRangeError` for values outside ``[0, 1]`` (NaN
    included); unknown logics and residuated implications raise
    :class:`~trilay.engine.errors.SemiringError` at construction. Formulas of any nesting
    depth are parsed, converted and built without recursion.

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
        validate: bool = True,
    ):
        super().__init__()
        if not isinstance(validate, bool):
            raise OptionError(f"validate is True or False, got {validate!r}")
        self.validate = validate
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
            _build_circuit(_nnf_all(formulas), self.variables)
            .compile(smooth=False)
            .module(LOGICS[logic], backend=backend, validate=False)  # checked in forward
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
        if self.validate:
            check_unit_interval(truth, "FuzzyFormula takes truth values, which")
        return self.circuit(truth)

    def extra_repr(self) -> str:
        shown = "; ".join(str(f) for f in self.formulas)
        return f"logic={self.logic}, variables={list(self.variables)}, formulas=[{shown}]"


def _build_circuit(formulas: list[Formula], names: tuple[str, ...]) -> Circuit:
    """One root per NNF formula; shared sub-formula objects become shared nodes (post-order
    with an explicit stack: any depth)."""
    column = {name: i + 1 for i, name in enumerate(names)}
    circuit = Circuit(num_vars=len(names))
    built: dict[int, int] = {}
    stack = list(formulas)
    while stack:
        f = stack[-1]
        if id(f) in built:
            stack.pop()
            continue
        if isinstance(f, (And, Or)):
            missing = [c for c in f.children if id(c) not in built]
            if missing:
                stack.extend(missing)
                continue
            kids = [built[id(c)] for c in f.children]
            node = circuit.conjoin(kids) if isinstance(f, And) else circuit.disjoin(kids)
        elif isinstance(f, Var):
            node = circuit.literal(column[f.name])
        elif isinstance(f, Not):
            node = circuit.literal(-column[f.child.name])
        else:
            node = circuit.true() if f.value else circuit.false()
        built[id(f)] = node
        stack.pop()
    for f in formulas:
        circuit.add_root(built[id(f)])
    return circuit


def _order(formulas: list[Formula], given: Sequence[str] | None) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    visited: set[int] = set()  # a shared sub-formula is walked once
    stack = list(reversed(formulas))
    while stack:
        f = stack.pop()
        if id(f) in visited:
            continue
        visited.add(id(f))
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
    visited: set[int] = set()
    stack = [f]
    while stack:
        g = stack.pop()
        if isinstance(g, (Implies, Iff)):
            return True
        if id(g) not in visited:
            visited.add(id(g))
            stack.extend(_children(g))
    return False


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


def _render(f: Formula) -> str:
    """The formula as text (``~``, ``&``, ``|``, ``->``, ``<->``, parentheses around every
    compound operand), built piece by piece with an explicit stack: any depth, linear time."""
    out: list[str] = []
    stack: list = [f]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        else:
            stack.extend(reversed(_pieces(item)))
    return "".join(out)


def _pieces(f: Formula) -> list:
    """The text of ``f`` one level deep: strings and operand formulas, in order."""
    if isinstance(f, Var):
        return [f.name]
    if isinstance(f, Const):
        return ["true" if f.value else "false"]
    if isinstance(f, Not):
        return ["~", *_operand(f.child)]
    if isinstance(f, (Implies, Iff)):
        left, right = (f.premise, f.conclusion) if isinstance(f, Implies) else (f.left, f.right)
        return [*_operand(left), " -> " if isinstance(f, Implies) else " <-> ", *_operand(right)]
    if not f.children:
        return ["true" if isinstance(f, And) else "false"]
    pieces: list = []
    for i, child in enumerate(f.children):
        if i:
            pieces.append(" & " if isinstance(f, And) else " | ")
        pieces.extend(_operand(child))
    return pieces


def _operand(f: Formula) -> list:
    return [f] if isinstance(f, (Var, Const, Not)) else ["(", f, ")"]


# ---------------------------------------------------------------------------- quantifiers
def exists(
    truth: torch.Tensor,
    dim: int | Sequence[int] = 0,
    p: float = 2.0,
    *,
    stable: bool = True,
    keepdim: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """LTN's existential quantifier, the p-mean ``(mean(x^p))^(1/p)`` over ``dim``.

    ``stable`` first maps ``x -> (1 - eps) x + eps`` (``eps = 1e-4``) so that the p-th root
    never sees 0. ``p >= 1``; as ``p`` grows it tends to the max. ``[..., N, ...]`` ->
    ``[..., ...]`` (``keepdim`` keeps size-1 dims). Truth values outside ``[0, 1]`` (NaN
    included) raise :class:`~trilay.engine.errors.ValueRangeError` unless ``validate=False``
    (the check is a host sync on CUDA, as in :class:`FuzzyFormula`)."""
    x = _check_quantifier(truth, dim, p, validate)
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
    validate: bool = True,
) -> torch.Tensor:
    """LTN's universal quantifier, the p-mean error ``1 - (mean((1 - x)^p))^(1/p)`` over
    ``dim``.

    ``stable`` first maps ``x -> (1 - eps) x`` (``eps = 1e-4``) so that the p-th root never
    sees 0. ``p >= 1``; as ``p`` grows it tends to the min. Shapes and ``validate`` as
    :func:`exists`."""
    x = _check_quantifier(truth, dim, p, validate)
    if stable:
        x = (1 - EPS) * x
    return 1 - (1 - x).pow(p).mean(dim=dim, keepdim=keepdim).pow(1 / p)


def sat_agg(*truths: torch.Tensor, p: float = 2.0, validate: bool = True) -> torch.Tensor:
    """LTN's ``SatAgg``: :func:`forall` over the truth values of closed formulas (scalars or
    same-shape tensors), the satisfaction of a knowledge base to maximize."""
    if not truths:
        raise ShapeError("sat_agg needs at least one truth value")
    shapes = {tuple(t.shape) for t in truths if isinstance(t, torch.Tensor)}
    if len(shapes) != 1 or not all(isinstance(t, torch.Tensor) for t in truths):
        raise ShapeError(f"sat_agg takes tensors of one shape, got {sorted(shapes)}")
    return forall(torch.stack(truths), dim=0, p=p, validate=validate)


def _check_quantifier(truth, dim, p, validate: bool) -> torch.Tensor:
    if not isinstance(truth, torch.Tensor) or not truth.is_floating_point():
        raise DTypeError(f"quantifiers take float truth values, got {truth!r:.80}")
    if not isinstance(validate, bool):
        raise OptionError(f"validate is True or False, got {validate!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise SemiringError(f"the p-mean quantifiers need p >= 1, got {p!r}")
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -truth.dim() <= d < truth.dim():
            raise ShapeError(f"dim {d} is out of range for shape {list(truth.shape)}")
        if truth.shape[d] == 0:
            raise ShapeError(f"cannot quantify over the empty dim {d} of {list(truth.shape)}")
    if validate:
        check_unit_interval(truth, "quantifiers take truth values, which")
    return truth
