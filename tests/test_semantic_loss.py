"""Semantic loss: closed forms, helpers' models against brute force, gradients against autograd
through brute-force enumeration, and the edges (probabilities 0 and 1, impossible constraints).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import (
    DATA,
    TRITON_DEVICE,
    all_assignments,
    models_of_cnf,
    random_cnf,
    shannon_circuit,
)
from pysdd.sdd import SddManager, Vtree
from trilay.engine import Circuit
from trilay.engine.errors import (
    CircuitError,
    DTypeError,
    OptionError,
    ShapeError,
    ValueRangeError,
)
from trilay.frontends.semantic_loss import (
    Constraint,
    SemanticLoss,
    at_least_k,
    at_most_k,
    cnf,
    exactly_k,
    exactly_one,
    grid_4x4_files,
    grid_edges,
    grid_path,
    implies,
    permutation,
)

F64 = dict(rtol=1e-10, atol=1e-12)


def indicator(constraint: Constraint, x: torch.Tensor) -> torch.Tensor:
    """The constraint's circuit on complete assignments ``x: [B, n]`` (0/1) -> ``[B]``."""
    module = constraint.circuit().compile().module("real")
    x = x.to(torch.float64)
    return module(x, 1 - x)[:, 0]


def brute_wmc(models: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``sum over models of prod(p or 1 - p)``: ``models: [M, n]`` bool, ``p: [..., n]``."""
    w = torch.where(models, p[..., None, :], 1 - p[..., None, :])
    return w.prod(-1).sum(-1)


# ---------------------------------------------------------------------------- closed forms
def test_exactly_one_issue_values():
    p = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64, requires_grad=True)
    loss = SemanticLoss(exactly_one(3))(p)
    loss.backward()
    assert math.exp(-loss.item()) == pytest.approx(0.43, rel=1e-14)
    assert loss.item() == pytest.approx(0.843970070294529, rel=1e-14)
    expected = torch.tensor(
        [0.813953488372093, 0.8837209302325582, 0.23255813953488375], dtype=torch.float64
    )
    torch.testing.assert_close(p.grad, expected, **F64)


def test_exactly_one_closed_form_batch():
    p = torch.rand(4, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    wmc = sum(
        p[..., i] * torch.cat([1 - p[..., :i], 1 - p[..., i + 1 :]], -1).prod(-1) for i in range(7)
    )
    loss = SemanticLoss(exactly_one(7), reduction="none")(p)
    assert loss.shape == (4, 5)
    torch.testing.assert_close(loss, -wmc.log(), **F64)


# ---------------------------------------------------------------------------- helpers' models
def _grid_ok(x, edges, ends):
    """Is ``x`` (edge bits) one simple path between ``ends``? Degrees 1 at the ends and 0 or 2
    elsewhere, and the chosen edges connected: a path plus no cycles."""
    chosen = [e for e, bit in zip(edges, x, strict=True) if bit]
    if not chosen:
        return False
    degree: dict = {}
    for a, b in chosen:
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
    if any(degree.get(node, 0) != 1 for node in ends):
        return False
    if any(d != 2 for node, d in degree.items() if node not in ends):
        return False
    reached, frontier = {ends[0]}, [ends[0]]
    while frontier:
        node = frontier.pop()
        for a, b in chosen:
            for u, v in ((a, b), (b, a)):
                if u == node and v not in reached:
                    reached.add(v)
                    frontier.append(v)
    return reached == set(degree)


def _grid_with_ends_ok(x, rows, cols):
    edges = grid_edges(rows, cols)
    marks = x[len(edges) :]
    nodes = itertools.product(range(rows), range(cols))
    ends = [node for node, m in zip(nodes, marks, strict=True) if m]
    return len(ends) == 2 and _grid_ok(x[: len(edges)], edges, ends)


def _rows_cols_one(x, n):
    m = x.reshape(-1, n, n).int()
    return (m.sum(1) == 1).all(-1) & (m.sum(2) == 1).all(-1)


HELPERS = {
    "exactly_one(5)": (exactly_one(5), 5, lambda x: x.sum(-1) == 1),
    "exactly_k(6, 3)": (exactly_k(6, 3), 6, lambda x: x.sum(-1) == 3),
    "exactly_k([2,4,5], 2)": (
        exactly_k([2, 4, 5], 2, num_vars=6),
        6,
        lambda x: x[:, [1, 3, 4]].sum(-1) == 2,
    ),
    "at_most_k(6, 2)": (at_most_k(6, 2), 6, lambda x: x.sum(-1) <= 2),
    "at_most_k(4, 4)": (at_most_k(4, 4), 4, lambda x: x.sum(-1) <= 4),
    "at_least_k(6, 3)": (at_least_k(6, 3), 6, lambda x: x.sum(-1) >= 3),
    "at_least_k([1,3], 1)": (at_least_k([1, 3], 1, num_vars=4), 4, lambda x: x[:, 0] | x[:, 2]),
    "implies(1, 2)": (implies(1, 2, num_vars=3), 3, lambda x: ~x[:, 0] | x[:, 1]),
    "implies([1,-2],[3,4])": (
        implies([1, -2], [3, 4]),
        4,
        lambda x: ~(x[:, 0] & ~x[:, 1]) | x[:, 2] | x[:, 3],
    ),
    "permutation(3)": (permutation(3), 9, lambda x: _rows_cols_one(x, 3)),
    "permutation(4)": (permutation(4), 16, lambda x: _rows_cols_one(x, 4)),
    # x4 is auxiliary: exists x4. (x1 | x4) & (x2 | -x4) is x1 | x2; x3 stays free
    "cnf aux": (cnf([[1, 4], [2, -4]], num_vars=3), 3, lambda x: x[:, 0] | x[:, 1]),
    # Tseitin: x3 <-> (x1 & x2), x3 asserted, x3 auxiliary
    "cnf tseitin": (
        cnf([[-3, 1], [-3, 2], [3, -1, -2], [3]], num_vars=2),
        2,
        lambda x: x[:, 0] & x[:, 1],
    ),
    "and/or/not": (
        (exactly_one(3) & implies(1, 4, num_vars=4)) | ~at_least_k(4, 1),
        4,
        lambda x: ((x[:, :3].sum(-1) == 1) & (~x[:, 0] | x[:, 3])) | (x.sum(-1) == 0),
    ),
    "grid 2x3 ends given": (
        grid_path(2, 3, (0, 0), (1, 2)),
        7,
        lambda x: torch.tensor(
            [_grid_ok(r.tolist(), grid_edges(2, 3), [(0, 0), (1, 2)]) for r in x]
        ),
    ),
    "grid 3x3 ends given": (
        grid_path(3, 3, (0, 1), (2, 2)),
        12,
        lambda x: torch.tensor(
            [_grid_ok(r.tolist(), grid_edges(3, 3), [(0, 1), (2, 2)]) for r in x]
        ),
    ),
    "grid 2x3 ends marked": (
        grid_path(2, 3),
        13,
        lambda x: torch.tensor([_grid_with_ends_ok(r.tolist(), 2, 3) for r in x]),
    ),
}


@pytest.mark.parametrize("name", list(HELPERS))
def test_helper_models_equal_brute_force(name):
    constraint, n, predicate = HELPERS[name]
    assert constraint.num_vars == n
    x = all_assignments(n)
    expected = predicate(x).to(torch.float64)
    assert expected.sum() > 0
    torch.testing.assert_close(indicator(constraint, x), expected, rtol=0, atol=1e-12)


def test_permutation_of_4_has_24_models():
    assert indicator(permutation(4), all_assignments(16)).sum().item() == pytest.approx(24)


@pytest.mark.parametrize("n", [5, 6, 7])
def test_permutation_counts(n):
    half = torch.full((n * n,), 0.5, dtype=torch.float64)
    loss = SemanticLoss(permutation(n))(half).item()
    assert 2 ** (n * n) * math.exp(-loss) == pytest.approx(math.factorial(n), rel=1e-12)


def _simple_paths(rows, cols, source, target):
    """Every simple path as a set of edges, by depth-first search."""
    adjacent: dict = {}
    for a, b in grid_edges(rows, cols):
        adjacent.setdefault(a, []).append(b)
        adjacent.setdefault(b, []).append(a)
    found = []

    def walk(node, visited, used):
        if node == target:
            found.append(frozenset(used))
            return
        for nxt in adjacent[node]:
            if nxt not in visited:
                walk(nxt, visited | {nxt}, used + [frozenset((node, nxt))])

    walk(source, {source}, [])
    return found


def test_grid_3x3_ends_marked_matches_enumerated_paths():
    """21 variables: too many to enumerate assignments, so the enumerated paths are checked to
    be models and their number to be the model count."""
    rows = cols = 3
    edges = grid_edges(rows, cols)
    nodes = list(itertools.product(range(rows), range(cols)))
    assignments = []
    for i, s in enumerate(nodes):
        for t in nodes[i + 1 :]:
            for path in _simple_paths(rows, cols, s, t):
                bits = [frozenset(e) in path for e in edges] + [n in (s, t) for n in nodes]
                assignments.append(bits)
    x = torch.tensor(assignments)
    assert len(set(map(tuple, assignments))) == len(assignments)
    constraint = grid_path(rows, cols)
    assert indicator(constraint, x).min().item() == 1.0
    ones = torch.ones(1, constraint.num_vars, dtype=torch.float64)
    count = constraint.circuit().compile().module("real")(ones, ones).item()
    assert count == pytest.approx(len(assignments))


@pytest.mark.parametrize("size, paths", [(3, 12), (4, 184)])
def test_grid_corner_to_corner_path_counts(size, paths):
    """Self-avoiding corner-to-corner paths of an n x n grid: 2, 12, 184, 8512 (OEIS A007764)."""
    constraint = grid_path(size, size, (0, 0), (size - 1, size - 1))
    assert len(_simple_paths(size, size, (0, 0), (size - 1, size - 1))) == paths
    half = torch.full((constraint.num_vars,), 0.5, dtype=torch.float64)
    loss = SemanticLoss(constraint)(half).item()
    assert 2**constraint.num_vars * math.exp(-loss) == pytest.approx(paths, rel=1e-12)


def test_grid_4x4_file_has_14248_models():
    loss_fn = SemanticLoss(grid_4x4_files())
    assert loss_fn.num_vars == 40
    half = torch.full((40,), 0.5, dtype=torch.float64)
    assert 2**40 * math.exp(-loss_fn(half).item()) == pytest.approx(14_248, rel=1e-12)


def test_grid_path_4x4_is_the_shipped_file():
    """Built in the file's own manager, the two SDDs are one canonical node: the same function
    with the same variable layout."""
    sdd, vtree = grid_4x4_files()
    manager = SddManager.from_vtree(Vtree.from_file(vtree.encode()))
    shipped = manager.read_sdd_file(sdd.encode())
    assert grid_path(4, 4).sdd(manager).id == shipped.id


# ---------------------------------------------------------------------------- the edges
def test_impossible_is_inf_not_nan():
    p = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = SemanticLoss(exactly_one(3), reduction="none")(p)
    assert torch.isinf(loss).all() and (loss > 0).all()
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()

    x = torch.tensor([[math.inf, math.inf, -math.inf]], requires_grad=True)
    loss = SemanticLoss(exactly_one(3), from_logits=True)(x)
    assert loss.item() == math.inf
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_unsatisfiable_constraint_is_inf_everywhere():
    p = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    loss = SemanticLoss([[1], [-1]], num_vars=2, reduction="sum")(p)
    assert loss.item() == math.inf
    loss.backward()
    assert torch.isfinite(p.grad).all()


def test_probabilities_zero_and_one_are_finite_where_satisfiable():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0]], dtype=torch.float64, requires_grad=True)
    loss = SemanticLoss(exactly_one(3), reduction="none")(p)
    torch.testing.assert_close(loss, torch.tensor([0.0, math.log(2)], dtype=torch.float64))
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()
    # Where the dropped share (documented) is zero, the gradient is exact: row 0 everywhere,
    # row 1 for x1 (p = 0, P(alpha, x1) = 0) and x2 (interior).
    expected = torch.tensor([[-1.0, 1.0, 1.0], [1.0, 2.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(p.grad[0], expected[0])
    torch.testing.assert_close(p.grad[1, :2], expected[1, :2])


def test_saturated_logits_are_finite_and_exact():
    x = torch.tensor([[40.0, -40.0, -40.0], [-40.0, 0.0, 40.0]], dtype=torch.float64)
    x.requires_grad_(True)
    loss = SemanticLoss(exactly_one(3), from_logits=True, reduction="none")(x)
    torch.testing.assert_close(loss, torch.tensor([0.0, math.log(2)], dtype=torch.float64))
    models = torch.eye(3, dtype=torch.bool)
    y = x.detach().clone().requires_grad_(True)
    (-brute_wmc(models, torch.sigmoid(y)).log()).sum().backward()
    loss.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, **F64)


# ---------------------------------------------------------------------------- gradients
CLAUSES = random_cnf(7, 6, seed=11)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_and_gradient_equal_brute_force(from_logits, reduction):
    models = models_of_cnf(CLAUSES, 7)
    assert models.shape[0] > 0
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 3, 7, dtype=torch.float64, generator=g) * 2).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    loss = SemanticLoss(CLAUSES, from_logits=from_logits, reduction=reduction)(
        x if from_logits else torch.sigmoid(x)
    )
    expected = -brute_wmc(models, torch.sigmoid(y)).log()
    expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected, **F64)
    weight = torch.rand(loss.shape, dtype=torch.float64, generator=g)
    (loss * weight).sum().backward()
    (expected * weight).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, **F64)


def test_probability_gradient_equals_brute_force():
    constraint = at_most_k(5, 2) & implies([1], [4, 5])
    x = all_assignments(5)
    models = x[indicator(constraint, x) > 0.5]
    p = torch.rand(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p1, p2 = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    SemanticLoss(constraint, reduction="sum")(p1).backward()
    (-brute_wmc(models, p2).log()).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, **F64)


def test_logits_and_probabilities_agree():
    x = torch.randn(16, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    by_logits = SemanticLoss(permutation(3), from_logits=True)(x1)
    by_probs = SemanticLoss(permutation(3))(torch.sigmoid(x2))
    torch.testing.assert_close(by_logits, by_probs, **F64)
    by_logits.backward()
    by_probs.backward()
    torch.testing.assert_close(x1.grad, x2.grad, **F64)


def test_float32_and_float16():
    p = torch.rand(8, 5, generator=torch.Generator().manual_seed(4))
    loss_fn = SemanticLoss(exactly_one(5), reduction="none")
    reference = loss_fn(p.double())
    torch.testing.assert_close(loss_fn(p), reference.float(), rtol=1e-5, atol=1e-6)
    half = loss_fn(p.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), reference, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------- input forms
def _count(loss_fn: SemanticLoss) -> float:
    half = torch.full((loss_fn.num_vars,), 0.5, dtype=torch.float64)
    return 2**loss_fn.num_vars * math.exp(-loss_fn(half).item())


def test_constraint_forms():
    assert _count(SemanticLoss(DATA / "sudoku_4.cnf")) == pytest.approx(288, rel=1e-12)
    assert _count(SemanticLoss(str(DATA / "sudoku_4.cnf"))) == pytest.approx(288, rel=1e-12)
    assert _count(SemanticLoss((DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree"))) == pytest.approx(
        288, rel=1e-12
    )
    models = models_of_cnf(CLAUSES, 7)
    assert _count(SemanticLoss(CLAUSES)) == pytest.approx(models.shape[0], rel=1e-12)
    assert _count(SemanticLoss(CLAUSES, num_vars=9)) == pytest.approx(4 * models.shape[0])
    # a PySDD node: the manager declares the variables, including unused ones
    manager = SddManager.from_vtree(Vtree(4, [1, 2, 3, 4], "balanced"))
    node = manager.literal(1) | manager.literal(2)
    loss_fn = SemanticLoss(node)
    assert loss_fn.num_vars == 4 and _count(loss_fn) == pytest.approx(12)
    # a programmatic d-DNNF
    circuit = Circuit(7)
    circuit.add_root(shannon_circuit(circuit, models, 7))
    assert _count(SemanticLoss(circuit)) == pytest.approx(models.shape[0], rel=1e-12)


def test_is_a_module_with_the_circuit_as_submodule():
    loss_fn = SemanticLoss(exactly_one(4))
    assert dict(loss_fn.named_children())["circuit"] is loss_fn.circuit
    circuit_buffers = {f"circuit.{name}" for name, _ in loss_fn.circuit.named_buffers()}
    assert circuit_buffers and set(loss_fn.state_dict()) == circuit_buffers
    loss_fn.to(torch.float64)  # casts floats only: the index buffers keep their int dtypes
    assert all(b.dtype in (torch.int32, torch.int64) for b in loss_fn.buffers())


def test_triton_backend_matches_torch():
    """The Triton kernels (the interpreter on CPU, see conftest) give the same loss."""
    p = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    p1, p2 = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    a = SemanticLoss(at_least_k(4, 2), backend="triton").to(TRITON_DEVICE)(p1.to(TRITON_DEVICE))
    a = a.cpu()
    b = SemanticLoss(at_least_k(4, 2), backend="torch")(p2)
    torch.testing.assert_close(a, b, **F64)
    a.backward()
    b.backward()
    torch.testing.assert_close(p1.grad, p2.grad, **F64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    loss_fn = SemanticLoss(grid_4x4_files(), from_logits=True, reduction="none")
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(6))
    expected = loss_fn(x)
    loss_fn.to("cuda")
    torch.testing.assert_close(loss_fn(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- errors
def test_errors():
    loss_fn = SemanticLoss(exactly_one(3))
    with pytest.raises(ShapeError, match=r"\[\.\.\., 3\]"):
        loss_fn(torch.rand(2, 4))
    with pytest.raises(ShapeError):
        loss_fn(torch.tensor(0.5))
    with pytest.raises(DTypeError):
        loss_fn(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(DTypeError):
        loss_fn([0.1, 0.2, 0.3])
    with pytest.raises(OptionError, match="unknown reduction 'max'"):
        SemanticLoss(exactly_one(3), reduction="max")
    with pytest.raises(OptionError, match="reduction"):
        SemanticLoss(exactly_one(3), reduction=None)
    with pytest.raises(OptionError, match="from_logits is True or False"):
        SemanticLoss(exactly_one(3), from_logits="yes")
    with pytest.raises(CircuitError, match="constraint is"):
        SemanticLoss(3.5)
    with pytest.raises(CircuitError, match="too few"):
        SemanticLoss(exactly_one(3), num_vars=2)
    two_roots = Circuit(2)
    two_roots.add_root(two_roots.literal(1))
    two_roots.add_root(two_roots.literal(2))
    with pytest.raises(CircuitError, match="one root"):
        SemanticLoss(two_roots)


@pytest.mark.parametrize(
    "x, found",
    [
        ([[-1.2, 0.3, 2.5]], r"2 values in \[-1\.2, 2\.5\]"),  # logits given as probabilities
        ([[0.2, 1.0000001, 0.5]], r"1 value in \[1, 1\]"),
        ([[0.2, float("nan"), 0.5]], "1 NaN"),
    ],
)
def test_probabilities_outside_unit_interval_are_refused(x, found):
    """Before: a NaN loss (logits passed with the default from_logits=False)."""
    x = torch.tensor(x, dtype=torch.float64)
    loss_fn = SemanticLoss(exactly_one(3))
    with pytest.raises(ValueRangeError, match=r"probabilities, which must lie in \[0, 1\]"):
        loss_fn(x)
    with pytest.raises(ValueRangeError, match=found + ".*pass from_logits=True"):
        loss_fn(x)
    # the same numbers as logits are fine, and the check can be switched off
    logits = SemanticLoss(exactly_one(3), from_logits=True)(x.nan_to_num(0.0))
    assert torch.isfinite(logits)
    assert SemanticLoss(exactly_one(3), validate=False)(x).isnan()


def test_probabilities_at_the_bounds_are_accepted():
    p = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert SemanticLoss(exactly_one(3))(p).item() == 0.0


def pysdd_log_wmc(node, p) -> float:
    """PySDD's own log weighted model count over the node's manager variables."""
    wmc = node.wmc(log_mode=False)
    for v in range(1, node.manager.var_count() + 1):
        wmc.set_literal_weight(node.manager.literal(v), float(p[v - 1]))
        wmc.set_literal_weight(node.manager.literal(-v), 1 - float(p[v - 1]))
    return math.log(wmc.propagate())


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.true(),
        lambda m: m.literal(-2),
        lambda m: m.literal(1) & m.literal(3),
        lambda m: m.literal(5) | m.literal(-1),
    ],
)
def test_sdd_node_constraints_cover_the_managers_variables(make):
    """A PySDD node in a 5-variable manager, constants and literals included: the loss takes
    [..., 5] and equals -log of PySDD's own weighted model count."""
    node = make(SddManager.from_vtree(Vtree(5, [1, 2, 3, 4, 5], "balanced")))
    loss_fn = SemanticLoss(node, reduction="none")
    assert loss_fn.num_vars == 5
    p = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    want = torch.tensor([-pysdd_log_wmc(node, row) for row in p], dtype=torch.float64)
    torch.testing.assert_close(loss_fn(p), want, **F64)


def test_sdd_node_with_fewer_variables_than_its_manager():
    node = SddManager.from_vtree(Vtree(5, [1, 2, 3, 4, 5], "balanced")).literal(2)
    p = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    loss = SemanticLoss(node, num_vars=2, reduction="none")(p)
    torch.testing.assert_close(loss, torch.tensor([-math.log(0.8)], dtype=torch.float64), **F64)
    with pytest.raises(CircuitError, match="mentions variable 2"):
        SemanticLoss(node, num_vars=1)


def test_literal_errors_say_variables_are_one_based():
    with pytest.raises(CircuitError, match=r"1-based \(variable v is input column v - 1\)"):
        implies(0, 1)
    with pytest.raises(CircuitError, match="1-based"):
        exactly_one([0, 1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: exactly_one(0),
        lambda: exactly_k(3, 4),
        lambda: exactly_k(3, -1),
        lambda: exactly_k(3, True),
        lambda: at_least_k(2, 3),
        lambda: at_most_k([1, 1], 1),
        lambda: exactly_one([2, 3], num_vars=2),
        lambda: exactly_one(True),
        lambda: exactly_one("12"),
        lambda: implies([], []),
        lambda: implies(0, 1),
        lambda: permutation(0),
        lambda: grid_path(3, 3, (0, 0), (0, 0)),
        lambda: grid_path(3, 3, (0, 0), (3, 3)),
        lambda: grid_path(3, 3, (0, 0)),
        lambda: grid_path(1, 1),
        lambda: cnf([[1, 0]]),
        lambda: cnf([]),
    ],
)
def test_helper_errors(make):
    with pytest.raises(CircuitError):
        make()
