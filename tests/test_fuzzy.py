"""Fuzzy logic frontend: hand values, values and gradients against a naive evaluator of the
formula as written (no NNF, binary connectives folded by hand), the parser, and quantifiers."""

from __future__ import annotations

import functools
import operator
import random

import pytest
import torch
from conftest import TRITON_DEVICE
from trilay.engine.errors import (
    CircuitError,
    DTypeError,
    OptionError,
    ParseError,
    SemiringError,
    ShapeError,
    ValueRangeError,
)
from trilay.frontends.fuzzy import (
    And,
    Const,
    FuzzyFormula,
    Iff,
    Implies,
    Not,
    Or,
    Var,
    conjoin,
    disjoin,
    exists,
    forall,
    nnf,
    parse,
    sat_agg,
    variables,
)

LOGICS = ["godel", "product", "lukasiewicz"]
F64 = dict(rtol=1e-12, atol=1e-12)

# The logics' binary connectives, written out independently of the engine's reductions.
T = {
    "godel": torch.minimum,
    "product": torch.mul,
    "lukasiewicz": lambda a, b: torch.clamp(a + b - 1, min=0),
}
S = {
    "godel": torch.maximum,
    "product": lambda a, b: a + b - a * b,
    "lukasiewicz": lambda a, b: torch.clamp(a + b, max=1),
}


def naive(f, x: torch.Tensor, logic: str, names: list[str]) -> torch.Tensor:
    """The formula as written, connective by connective: ``x: [..., n] -> [...]``."""
    if isinstance(f, Var):
        return x[..., names.index(f.name)]
    if isinstance(f, Const):
        return torch.full(x.shape[:-1], float(f.value), dtype=x.dtype)
    if isinstance(f, Not):
        return 1 - naive(f.child, x, logic, names)
    if isinstance(f, Implies):
        return S[logic](1 - naive(f.premise, x, logic, names), naive(f.conclusion, x, logic, names))
    if isinstance(f, Iff):
        a, b = naive(f.left, x, logic, names), naive(f.right, x, logic, names)
        return T[logic](S[logic](1 - a, b), S[logic](1 - b, a))
    values = [naive(c, x, logic, names) for c in f.children]
    if isinstance(f, And):
        return functools.reduce(T[logic], values, torch.ones(x.shape[:-1], dtype=x.dtype))
    return functools.reduce(S[logic], values, torch.zeros(x.shape[:-1], dtype=x.dtype))


def as_written(f, x: torch.Tensor, logic: str, names: list[str]) -> torch.Tensor:
    """:func:`naive` without recursion (post-order over the formula objects, each evaluated
    once), for formulas thousands of levels deep."""
    value: dict[int, torch.Tensor] = {}
    stack = [f]
    while stack:
        g = stack[-1]
        if id(g) in value:
            stack.pop()
            continue
        if isinstance(g, Var):
            value[id(g)] = x[..., names.index(g.name)]
        elif isinstance(g, Const):
            value[id(g)] = torch.full(x.shape[:-1], float(g.value), dtype=x.dtype)
        else:
            if isinstance(g, Not):
                kids = [g.child]
            elif isinstance(g, Implies):
                kids = [g.premise, g.conclusion]
            elif isinstance(g, Iff):
                kids = [g.left, g.right]
            else:
                kids = list(g.children)
            missing = [k for k in kids if id(k) not in value]
            if missing:
                stack.extend(missing)
                continue
            v = [value[id(k)] for k in kids]
            t, s = T[logic], S[logic]
            if isinstance(g, Not):
                value[id(g)] = 1 - v[0]
            elif isinstance(g, Implies):
                value[id(g)] = s(1 - v[0], v[1])
            elif isinstance(g, Iff):
                value[id(g)] = t(s(1 - v[0], v[1]), s(1 - v[1], v[0]))
            elif isinstance(g, And):
                value[id(g)] = functools.reduce(t, v, torch.ones(x.shape[:-1], dtype=x.dtype))
            else:
                value[id(g)] = functools.reduce(s, v, torch.zeros(x.shape[:-1], dtype=x.dtype))
        stack.pop()
    return value[id(f)]


def random_formula(rng: random.Random, names: list[str], depth: int):
    if depth == 0 or rng.random() < 0.2:
        if rng.random() < 0.05:
            return Const(rng.random() < 0.5)
        return Var(rng.choice(names))
    kind = rng.choice(["and", "or", "not", "implies", "iff"])
    if kind == "not":
        return Not(random_formula(rng, names, depth - 1))
    if kind == "implies":
        return Implies(*(random_formula(rng, names, depth - 1) for _ in range(2)))
    if kind == "iff":
        return Iff(*(random_formula(rng, names, depth - 1) for _ in range(2)))
    children = tuple(random_formula(rng, names, depth - 1) for _ in range(rng.randint(1, 4)))
    return And(children) if kind == "and" else Or(children)


X = variables("x1 x2 x3")
DNF = disjoin([conjoin([X[i]] + [~X[j] for j in range(3) if j != i]) for i in range(3)])
CNF = conjoin([disjoin(X)] + [~X[i] | ~X[j] for i in range(3) for j in range(i + 1, 3)])
P = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)


# ---------------------------------------------------------------------------- hand values
@pytest.mark.parametrize(
    "logic, dnf, cnf",
    [("product", 0.385408, 0.442728), ("godel", 0.5, 0.5), ("lukasiewicz", 0.0, 0.8)],
)
def test_exactly_one_issue_values(logic, dnf, cnf):
    out = FuzzyFormula([DNF, CNF], logic)(P)
    torch.testing.assert_close(out, torch.tensor([dnf, cnf], dtype=torch.float64), **F64)


@pytest.mark.parametrize("logic", LOGICS)
def test_implications_are_s_implications(logic):
    a, b = torch.meshgrid(
        torch.linspace(0, 1, 11, dtype=torch.float64),
        torch.linspace(0, 1, 11, dtype=torch.float64),
        indexing="ij",
    )
    x = torch.stack([a.flatten(), b.flatten()], -1)
    expected = {
        "godel": torch.maximum(1 - a, b),  # Kleene-Dienes
        "product": 1 - a + a * b,  # Reichenbach
        "lukasiewicz": torch.clamp(1 - a + b, max=1),  # Lukasiewicz
    }[logic].flatten()
    va, vb = variables("a b")
    out = FuzzyFormula([va >> vb, "a -> b", "~(a -> b)"], logic)(x)
    torch.testing.assert_close(out[:, 0], expected, **F64)
    torch.testing.assert_close(out[:, 1], expected, **F64)
    torch.testing.assert_close(out[:, 2], 1 - expected, **F64)


def test_residuated_implication_is_refused_except_lukasiewicz():
    for logic in ("godel", "product"):
        with pytest.raises(SemiringError, match="residuated"):
            FuzzyFormula("a -> b", logic, implication="r")
    FuzzyFormula("a & b", "godel", implication="r")  # no implication: nothing to refuse
    x = torch.rand(5, 2, dtype=torch.float64)
    r = FuzzyFormula("a -> b", "lukasiewicz", implication="r")(x)
    torch.testing.assert_close(r[:, 0], torch.clamp(1 - x[:, 0] + x[:, 1], max=1), **F64)


# ---------------------------------------------------------------------------- naive evaluator
@pytest.mark.parametrize("logic", LOGICS)
@pytest.mark.parametrize("seed", range(4))
def test_values_and_gradients_equal_naive_evaluator(logic, seed):
    rng = random.Random(seed)
    names = [f"v{i}" for i in range(6)]
    formulas = [random_formula(rng, names, depth=4) for _ in range(5)]
    module = FuzzyFormula(formulas, logic, variables=names)
    x = torch.rand(3, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = module(x1)
    expected = torch.stack([naive(f, x2, logic, names) for f in formulas], -1)
    assert out.shape == (3, 2, 5)
    torch.testing.assert_close(out, expected, **F64)
    weight = torch.rand(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **F64)


@pytest.mark.parametrize("logic", LOGICS)
def test_triton_backend_matches_torch(logic):
    """The Triton kernels' fuzzy reductions (the interpreter on CPU, see conftest)."""
    x = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    formulas = [DNF, CNF, X[0] >> (X[1] | ~X[2])]
    a = FuzzyFormula(formulas, logic, backend="triton").to(TRITON_DEVICE)(x1.to(TRITON_DEVICE))
    a = a.cpu()
    b = FuzzyFormula(formulas, logic, backend="torch")(x2)
    torch.testing.assert_close(a, b, **F64)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **F64)


def test_float32_input():
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(2))
    module = FuzzyFormula([DNF, CNF], "product")
    out = module(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, module(x.double()).float(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- structure
def test_nary_and_or_are_single_nodes():
    a, b, c, d = variables("a b c d")
    module = FuzzyFormula(a & (b & (c & d)), "godel")
    assert module.circuit.layer_kinds == ["and"]
    assert module.circuit.layer_sizes() == [(1, 4)]
    module = FuzzyFormula("~(a & b & c & d)", "product")  # De Morgan: one OR of negations
    assert module.circuit.layer_kinds[-1] == "or"
    assert module.circuit.layer_sizes()[-1] == (1, 4)


def test_repeated_subformulas_keep_their_multiplicity():
    """``a & a`` is ``a^2`` in the product logic: duplicate children must not merge."""
    a = Var("a")
    out = FuzzyFormula([a & a, a | a], "product")(torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([0.25, 0.75], dtype=torch.float64), **F64)


def test_iff_chain_stays_linear():
    """Both sides of an iff occur twice in its expansion; shared, 40 nested iffs stay small."""
    a, b = variables("a b")
    f = a
    for i in range(40):
        f = f.iff(b if i % 2 else a)
    module = FuzzyFormula(f, "lukasiewicz")
    assert sum(edges for _, edges in module.circuit.layer_sizes()) < 1000
    x = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(module(x)[:, 0], naive(f, x, "lukasiewicz", ["a", "b"]), **F64)


def test_python_boolean_operators_are_refused():
    a, b = variables("a b")
    with pytest.raises(CircuitError, match="&, |, ~"):
        a and b  # noqa: B018


def test_constants():
    a, b = variables("a b")
    module = FuzzyFormula([a & True, a | True, (a & False) | b, ~Const(True) | a], "lukasiewicz")
    x = torch.tensor([0.3, 0.6], dtype=torch.float64)
    torch.testing.assert_close(
        module(x), torch.tensor([0.3, 1.0, 0.6, 0.3], dtype=torch.float64), **F64
    )


# ---------------------------------------------------------------------------- the parser
def test_parser_precedence_and_forms():
    names = ["a", "b", "c", "d"]
    x = torch.rand(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a, b, c, d = variables(names)
    pairs = [
        ("a | b & c", a | (b & c)),
        ("~a & b", (~a) & b),
        ("a -> b -> c", a >> (b >> c)),
        ("a & b -> c | d", (a & b) >> (c | d)),
        ("a <-> b -> c", a.iff(b >> c)),
        ("not a and b or c", ((~a) & b) | c),
        ("!(a || b) && (c => d)", ~(a | b) & (c >> d)),
        ("a >> b", a >> b),
        ("true & a | false", (Const(True) & a) | Const(False)),
    ]
    for text, built in pairs:
        for logic in LOGICS:
            module = FuzzyFormula([text, built], logic, variables=names)
            out = module(x)
            torch.testing.assert_close(out[:, 0], out[:, 1], **F64)
            torch.testing.assert_close(out[:, 0], naive(built, x, logic, names), **F64)
    assert str(parse("a & b | ~c -> d")) == "((a & b) | ~c) -> d"
    words = parse("not a and b or c")
    assert isinstance(words, Or) and isinstance(words.children[0], And)


@pytest.mark.parametrize("text", ["a &", "(a | b", "a b", "a $ b", "& a", "", "a -> ", ")"])
def test_parse_errors(text):
    with pytest.raises(ParseError):
        parse(text)


def test_parse_error_names_the_column():
    with pytest.raises(ParseError, match="column 5"):
        parse("a & % b")


# ---------------------------------------------------------------------------- variables
def test_variable_order():
    x = torch.tensor([0.1, 0.2, 0.9], dtype=torch.float64)
    default = FuzzyFormula(["c & a", "b"], "product")
    assert default.variables == ("c", "a", "b")
    torch.testing.assert_close(default(x), torch.tensor([0.02, 0.9], dtype=torch.float64), **F64)
    given = FuzzyFormula(["c & a", "b"], "product", variables=["a", "b", "c", "unused"])
    x4 = torch.tensor([0.1, 0.2, 0.9, 0.5], dtype=torch.float64)
    torch.testing.assert_close(given(x4), torch.tensor([0.09, 0.2], dtype=torch.float64), **F64)


def test_errors():
    module = FuzzyFormula("a & b", "godel")
    with pytest.raises(ShapeError, match=r"\[\.\.\., 2\]"):
        module(torch.rand(4, 3))
    with pytest.raises(DTypeError):
        module(torch.ones(4, 2, dtype=torch.int32))
    with pytest.raises(SemiringError, match="unknown fuzzy logic"):
        FuzzyFormula("a", "goedel")
    with pytest.raises(SemiringError):
        FuzzyFormula("a", "godel", implication="x")
    with pytest.raises(CircuitError, match="not in variables"):
        FuzzyFormula("a & b", "godel", variables=["a"])
    with pytest.raises(CircuitError, match="repeat"):
        FuzzyFormula("a", "godel", variables=["a", "a"])
    with pytest.raises(CircuitError):
        FuzzyFormula([], "godel")
    with pytest.raises(CircuitError):
        FuzzyFormula([42], "godel")
    with pytest.raises(CircuitError):
        variables("a and")
    with pytest.raises(CircuitError):
        Var("a") & 1


# ---------------------------------------------------------------------------- depth
NAMES = ["a", "b", "c"]


def _deep(kind: str):
    """Formulas thousands of levels deep (text or objects), each a RecursionError before."""
    a, b, c = variables(NAMES)
    if kind == "parentheses":
        return "(" * 3000 + "a & (b" + ")" * 3001 + " | c"
    if kind == "negations":
        return "~" * 3001 + "(a -> b)"
    if kind == "implication chain":
        return " -> ".join(["a", "~b", "c"] * 700)
    if kind == "iff chain":
        return " <-> ".join(["a", "b", "c"] * 340)
    if kind == "alternating":  # a & (b | (a & (b | ...))): 1,000 and/or levels in the circuit
        return "".join("a & (" if i % 2 else "b | (" for i in range(1000)) + "c" + ")" * 1000
    if kind == "& left":  # Python's a & b & c & ...: And(And(And(a, b), c), ...)
        return functools.reduce(operator.and_, [a, b, c] * 1700)
    if kind == "& right":
        return functools.reduce(lambda rest, v: v & rest, [a, ~b, c] * 1700)
    if kind == "| of ~":  # ~(a | ~(b | ~(c | ...))): 1,020 and/or levels in the circuit
        return functools.reduce(lambda rest, v: ~(v | rest), [a, b, c] * 340)
    raise ValueError(kind)


DEEP = [
    "parentheses",
    "negations",
    "implication chain",
    "iff chain",
    "alternating",
    "& left",
    "& right",
    "| of ~",
]


@pytest.mark.parametrize("kind", DEEP)
def test_deep_formulas_match_the_formula_evaluated_as_written(kind):
    """Parsed, converted and built without recursion; the value is the formula's own,
    evaluated connective by connective in torch (``as_written``), in every logic."""
    formula = _deep(kind)
    tree = parse(formula) if isinstance(formula, str) else formula
    # values near 1 keep long products and Lukasiewicz sums away from their clamps
    x = 0.9 + 0.1 * torch.rand(
        6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7)
    )
    for logic in LOGICS:
        module = FuzzyFormula(formula, logic, variables=NAMES)
        torch.testing.assert_close(module(x)[:, 0], as_written(tree, x, logic, NAMES), **F64)
    # the text round trip goes through the same parser
    again = FuzzyFormula(str(tree), "product", variables=NAMES)
    torch.testing.assert_close(again(x), module(x) if logic == "product" else again(x))
    assert repr(tree).startswith(type(tree).__name__ + "(")


def test_deep_nnf_is_linear_and_keeps_multiplicity():
    """A 5,000-deep left-nested & chain flattens into one AND of 5,000 children; a chain of
    shared doublings x = x & x (2^60 copies of a) stays small and is still a^(2^60)."""
    a, b = variables("a b")
    chain = functools.reduce(operator.and_, [a, b] * 2500)
    flat = nnf(chain)
    assert isinstance(flat, And) and len(flat.children) == 5000
    doubled = a
    for _ in range(60):
        doubled = doubled & doubled
    module = FuzzyFormula(doubled, "product")
    assert sum(edges for _, edges in module.circuit.layer_sizes()) < 1000
    one = torch.tensor([[1.0]], dtype=torch.float64)
    assert module(one).item() == 1.0 and module(one * 0.999999).item() == 0.0


# ---------------------------------------------------------------------------- truth values
@pytest.mark.parametrize(
    "values, found",
    [
        ([1.5, 0.5], r"1 value in \[1\.5, 1\.5\]"),
        ([-0.25, 2.0], r"2 values in \[-0\.25, 2\]"),
        ([float("nan"), 0.5], "1 NaN"),
        ([float("inf"), float("nan")], r"1 value in \[inf, inf\] and 1 NaN"),
    ],
)
def test_truth_values_outside_unit_interval_are_refused(values, found):
    """Before: 1.5 gave 2.125 (product a | b with a = 1.5, b = 0.5...)."""
    x = torch.tensor([values], dtype=torch.float64)
    module = FuzzyFormula("a | b", "product")
    with pytest.raises(ValueRangeError, match=r"truth values, which must lie in \[0, 1\]"):
        module(x)
    with pytest.raises(ValueRangeError, match=found):
        module(x)
    with pytest.raises(ValueRangeError):
        exists(x[0])
    with pytest.raises(ValueRangeError):
        forall(x[0], dim=0)
    with pytest.raises(ValueRangeError):
        sat_agg(x[0, 0], torch.tensor(0.5, dtype=torch.float64))
    # the switch: unchecked, the formula is evaluated as given (no error)
    unchecked = FuzzyFormula("a | b", "product", validate=False)(x)
    assert unchecked.shape == (1, 1)
    exists(x[0], validate=False)
    with pytest.raises(OptionError):
        FuzzyFormula("a", "product", validate="no")


def test_truth_values_at_the_bounds_are_accepted():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    out = FuzzyFormula("a | b", "product")(x)
    torch.testing.assert_close(out, torch.ones(2, 1, dtype=torch.float64), **F64)


# ---------------------------------------------------------------------------- quantifiers
def test_quantifiers_hand_values():
    t = torch.tensor([[0.2, 0.9], [0.6, 0.3]], dtype=torch.float64)
    eps = 1e-4
    s = (1 - eps) * t + eps
    torch.testing.assert_close(exists(t), (s.pow(2).mean(0)).sqrt(), **F64)
    torch.testing.assert_close(exists(t, dim=1, p=3, stable=False), t.pow(3).mean(1).pow(1 / 3))
    u = (1 - eps) * t
    torch.testing.assert_close(forall(t), 1 - (1 - u).pow(2).mean(0).sqrt(), **F64)
    torch.testing.assert_close(
        forall(t, dim=(0, 1), stable=False), 1 - (1 - t).pow(2).mean().sqrt(), **F64
    )
    assert forall(t, dim=1, keepdim=True).shape == (2, 1)
    # p -> inf: exists tends to the max, forall to the min
    assert exists(t, dim=1, p=200, stable=False)[0].item() == pytest.approx(0.9, rel=1e-2)
    assert forall(t, dim=1, p=200, stable=False)[0].item() == pytest.approx(0.2, rel=1e-1)
    closed = [forall(t[:, 0]), exists(t[:, 1])]
    torch.testing.assert_close(sat_agg(*closed), forall(torch.stack(closed)), **F64)


def test_quantifier_gradients_are_finite_at_zero_and_one():
    for values in ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]):
        t = torch.tensor(values, requires_grad=True)
        (exists(t) + forall(t)).backward()
        assert torch.isfinite(t.grad).all()
    t = torch.ones(3, requires_grad=True)
    forall(t, stable=False).backward()
    assert not torch.isfinite(t.grad).all()  # why the projection is there


def test_quantifier_errors():
    t = torch.rand(3, 2)
    with pytest.raises(SemiringError):
        exists(t, p=0.5)
    with pytest.raises(ShapeError):
        forall(t, dim=2)
    with pytest.raises(ShapeError):
        forall(torch.rand(0, 2))
    with pytest.raises(DTypeError):
        exists(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ShapeError):
        sat_agg(torch.rand(2), torch.rand(3))
    with pytest.raises(ShapeError):
        sat_agg()


def test_ltn_style_training_step():
    """A module in a training loop: truth values from a network, a universally quantified
    constraint over the batch, and a gradient reaching the network."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid())
    rule = FuzzyFormula([CNF], "product")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    satisfaction = forall(rule(net(x))[:, 0])
    (1 - satisfaction).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("logic", LOGICS)
def test_cuda_matches_cpu(logic):
    module = FuzzyFormula([DNF, CNF, X[0] >> (X[1] | ~X[2])], logic)
    x = torch.rand(256, 3, generator=torch.Generator().manual_seed(4))
    expected = module(x)
    module.to("cuda")
    torch.testing.assert_close(module(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-6)
