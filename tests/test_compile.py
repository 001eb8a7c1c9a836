"""Every builder, compiled, against brute-force enumeration of models (values and gradients)."""

from __future__ import annotations

import functools
import itertools
import random

import numpy as np
import pytest
import torch
from conftest import (
    all_assignments,
    brute_force,
    models_of_cnf,
    random_cnf,
    random_weights,
    shannon_circuit,
)
from pysdd.sdd import SddManager, Vtree
from trilay.engine import Circuit, compiler
from trilay.engine.circuit import AND, OR
from trilay.engine.errors import CircuitError

# ----------------------------------------------------------------------------- writers
# Independent writers of the formats the loaders read, from a Circuit's arrays.


def write_c2d(circuit: Circuit, path) -> None:
    kind, lit, start, children, roots = circuit.arrays()
    (root,) = roots
    lines = []
    for node in range(root + 1):
        kids = children[start[node] : start[node + 1]].tolist()
        lines.append(
            {
                0: "O 0 0",
                1: "A 0",
                2: f"L {lit[node]}",
                3: " ".join(map(str, ["A", len(kids), *kids])),
                4: " ".join(map(str, ["O", 0, len(kids), *kids])),
            }[int(kind[node])]
        )
    edges = int(start[root + 1])
    path.write_text(f"nnf {root + 1} {edges} {circuit.num_vars}\n" + "\n".join(lines) + "\n")


def write_d4(circuit: Circuit, path) -> None:
    """d4 format, numbered so that parents come before children (the root is node 1)."""
    kind, lit, start, children, roots = circuit.arrays()
    (root,) = roots
    d4_id = {}
    decl, edges = [], []
    true_id = None
    for node in range(root, -1, -1):
        if int(kind[node]) == 2:
            continue
        d4_id[node] = len(d4_id) + 1
    for node in range(root, -1, -1):
        if node not in d4_id:
            continue
        k = int(kind[node])
        decl.append(f"{ {0: 'f', 1: 't', 3: 'a', 4: 'o'}[k] } {d4_id[node]} 0")
        for c in children[start[node] : start[node + 1]].tolist():
            if int(kind[c]) == 2:
                if true_id is None:
                    true_id = len(d4_id) + 1
                    d4_id[-1] = true_id
                edges.append(f"{d4_id[node]} {true_id} {lit[c]} 0")
            else:
                edges.append(f"{d4_id[node]} {d4_id[c]} 0")
    if true_id is not None:
        decl.append(f"t {true_id} 0")
    path.write_text("\n".join(decl + edges) + "\n")


# ----------------------------------------------------------------------------- builders
def sdd_of(clauses, num_vars):
    mgr = SddManager.from_vtree(Vtree(num_vars, list(range(1, num_vars + 1)), "balanced"))
    node = mgr.true()
    for clause in clauses:
        c = mgr.false()
        for lit in clause:
            c = c | mgr.literal(lit)
        node = node & c
    return mgr, node


def build(builder: str, clauses, num_vars, tmp_path) -> Circuit:
    models = models_of_cnf(clauses, num_vars)
    c = Circuit(num_vars)
    if builder == "programmatic":
        c.add_root(shannon_circuit(c, models, num_vars))
    elif builder == "cnf_list":
        c.add_cnf(clauses, num_vars=num_vars)
    elif builder == "dimacs":
        path = tmp_path / "f.cnf"
        body = "\n".join(" ".join(map(str, cl)) + " 0" for cl in clauses)
        path.write_text(f"c random\np cnf {num_vars} {len(clauses)}\n{body}\n")
        c.add_cnf(path)
    elif builder == "pysdd_node":
        mgr, node = sdd_of(clauses, num_vars)
        c.add_sdd(node)
    elif builder == "sdd_file":
        mgr, node = sdd_of(clauses, num_vars)
        node.save(str(tmp_path / "f.sdd").encode())
        mgr.vtree().save(str(tmp_path / "f.vtree").encode())
        c.add_sdd_file(tmp_path / "f.sdd", tmp_path / "f.vtree")
    elif builder in ("nnf_c2d", "nnf_d4"):
        source = Circuit(num_vars)
        source.add_root(shannon_circuit(source, models, num_vars))
        path = tmp_path / "f.nnf"
        (write_c2d if builder == "nnf_c2d" else write_d4)(source, path)
        c.add_nnf_file(path)
    else:
        raise ValueError(builder)
    return c


BUILDERS = ["programmatic", "cnf_list", "dimacs", "pysdd_node", "sdd_file", "nnf_c2d", "nnf_d4"]


def cnf_case(seed: int):
    rng = random.Random(seed)
    num_vars = rng.randint(3, 12)
    num_clauses = rng.randint(1, int(num_vars * 1.5))
    return random_cnf(num_vars, num_clauses, seed), num_vars


def check_against_brute_force(module, models, pos, neg, semiring, explicit_neg: bool):
    """Values and gradients of ``module`` against brute-force enumeration (real space oracle)."""
    B = pos.shape[0]
    cot = torch.rand(B, dtype=pos.dtype, generator=torch.Generator().manual_seed(0)) + 0.5
    # Oracle: brute force in real space, autograd for dW/dpos and dW/dneg.
    p = pos.clone().requires_grad_(True)
    n = neg.clone().requires_grad_(True) if explicit_neg else 1 - p
    w_true = brute_force(models, p, n, "real")
    inputs = [p, n] if explicit_neg else [p]
    grads_true = torch.autograd.grad((w_true * cot).sum(), inputs, allow_unused=True)

    log = semiring == "log"
    x = (pos.log() if log else pos).clone().requires_grad_(True)
    y = None
    if explicit_neg:
        y = (neg.log() if log else neg).clone().requires_grad_(True)
    out = module(x, y)[:, 0]
    expected = w_true.detach().log() if log else w_true.detach()
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)

    got = torch.autograd.grad(
        (out * cot).sum(), [x] + ([y] if explicit_neg else []), allow_unused=True
    )
    assert all(torch.isfinite(g).all() for g in got if g is not None), "NaN/inf in gradients"
    for g_true, g, w in zip(grads_true, got, [pos, neg][: len(got)], strict=True):
        g_true = torch.zeros_like(w) if g_true is None else g_true
        if log:
            # d log W / d log w = w * dW/dw / W, for rows where W > 0.
            live = w_true.detach() > 0
            g_true = (w * g_true / w_true.detach()[:, None])[live]
            g = g[live]
        torch.testing.assert_close(g, g_true, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("semiring", ["real", "log"])
@pytest.mark.parametrize("explicit_neg", [False, True])
def test_builders_match_brute_force(builder, seed, semiring, explicit_neg, tmp_path):
    clauses, num_vars = cnf_case(seed)
    models = models_of_cnf(clauses, num_vars)
    module = build(builder, clauses, num_vars, tmp_path).compile().module(semiring)
    pos = random_weights(6, num_vars, seed + 100)
    if explicit_neg:
        # Weights that do not sum to one: only a smoothed circuit counts them right.
        neg = random_weights(6, num_vars, seed + 200)
    else:
        neg = 1 - pos
        if semiring == "log":
            # At p = 1 the log complement's derivative is infinite (documented); 0 is exact.
            pos = torch.where(pos == 1, torch.full_like(pos, 0.75), pos)
            neg = 1 - pos
    check_against_brute_force(module, models, pos, neg, semiring, explicit_neg)


@pytest.mark.parametrize("smooth", [True, False])
def test_unsmoothed_is_exact_with_complement_weights(smooth, tmp_path):
    clauses, num_vars = cnf_case(7)
    models = models_of_cnf(clauses, num_vars)
    module = build("pysdd_node", clauses, num_vars, tmp_path).compile(smooth=smooth).module("real")
    pos = random_weights(5, num_vars, 3)
    check_against_brute_force(module, models, pos, 1 - pos, "real", explicit_neg=False)


@pytest.mark.parametrize("builder", ["programmatic", "pysdd_node", "nnf_d4"])
@pytest.mark.parametrize("semiring", ["mpe", "mpe_log", "godel"])
@pytest.mark.parametrize("seed", range(3))
def test_max_semirings_match_brute_force(builder, semiring, seed, tmp_path):
    clauses, num_vars = cnf_case(seed + 10)
    models = models_of_cnf(clauses, num_vars)
    module = build(builder, clauses, num_vars, tmp_path).compile().module(semiring)
    pos = random_weights(8, num_vars, seed, extremes=False)
    neg = random_weights(8, num_vars, seed + 1, extremes=False)
    expected = brute_force(models, pos, neg, "mpe" if semiring == "mpe_log" else semiring)
    if semiring == "mpe_log":
        out = module(pos.log(), neg.log())[:, 0].exp()
    else:
        out = module(pos, neg)[:, 0]
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    if semiring != "godel":
        default = module(pos.log() if semiring == "mpe_log" else pos)[:, 0]
        default = default.exp() if semiring == "mpe_log" else default
        torch.testing.assert_close(
            default, brute_force(models, pos, 1 - pos, "mpe"), rtol=1e-9, atol=1e-12
        )


def test_fixed_literals_condition_the_circuit(tmp_path):
    clauses, num_vars = cnf_case(3)
    models = models_of_cnf(clauses, num_vars)
    circuit = build("cnf_list", clauses, num_vars, tmp_path)
    fixed = {1: True, num_vars: False}
    module = circuit.compile(fixed=fixed).module("real")
    pos = random_weights(4, num_vars, 11, extremes=False)
    neg = random_weights(4, num_vars, 12, extremes=False)
    # Oracle: models agreeing with the fixed values; fixed variables contribute weight 1.
    keep = models[:, 0] & ~models[:, num_vars - 1]
    p, n = pos.clone(), neg.clone()
    p[:, [0, num_vars - 1]] = 1.0
    n[:, [0, num_vars - 1]] = 1.0
    torch.testing.assert_close(module(pos, neg)[:, 0], brute_force(models[keep], p, n, "real"))


def test_roots_keep_order_with_constants_literals_and_repeats():
    c = Circuit(3)
    x = c.disjoin(
        [c.conjoin([c.literal(1), c.literal(2)]), c.conjoin([c.literal(-1), c.literal(3)])]
    )
    roots = [x, c.literal(-2), c.true(), x, c.false(), c.literal(3), x]
    for r in roots:
        c.add_root(r)
    pos = random_weights(5, 3, 4)
    neg = random_weights(5, 3, 5)
    for smooth in (True, False):
        out = c.compile(smooth=smooth).module("real")(pos, neg)
        a = pos[:, 0] * pos[:, 1] + neg[:, 0] * pos[:, 2]
        lit_neg2, lit3 = neg[:, 1], pos[:, 2]
        if smooth:
            # Smoothing counts every variable: unmentioned ones contribute (pos + neg).
            s = pos + neg
            a = pos[:, 0] * pos[:, 1] * s[:, 2] + neg[:, 0] * pos[:, 2] * s[:, 1]
            lit_neg2 = lit_neg2 * s[:, 0] * s[:, 2]
            lit3 = lit3 * s[:, 0] * s[:, 1]
            one = s.prod(-1)
        else:
            one = torch.ones(5, dtype=pos.dtype)
        expected = torch.stack([a, lit_neg2, one, a, torch.zeros_like(a), lit3, a], dim=1)
        torch.testing.assert_close(out, expected)


def test_deduplication_merges_identical_roots(data_dir):
    once = Circuit()
    once.add_sdd_file(data_dir / "sudoku_4.sdd", data_dir / "sudoku_4.vtree")
    twice = Circuit()
    twice.add_sdd_file(data_dir / "sudoku_4.sdd", data_dir / "sudoku_4.vtree")
    twice.add_sdd_file(data_dir / "sudoku_4.sdd", data_dir / "sudoku_4.vtree")
    assert twice.num_nodes == 2 * once.num_nodes  # the loader made two separate copies
    for smooth in (True, False):
        a, b = once.compile(smooth=smooth), twice.compile(smooth=smooth)
        assert b.num_layers == a.num_layers
        assert a.num_nodes <= b.num_nodes <= a.num_nodes + 1
        pos = random_weights(3, a.num_vars, 1)
        out = b.module("real")(pos)
        torch.testing.assert_close(out[:, 0], out[:, 1])
        torch.testing.assert_close(out[:, :1], a.module("real")(pos))


def compiled_nodes(compiled) -> list[tuple[str, tuple[int, ...]]]:
    """Each internal row's ``(kind, children rows)``, read back from the index tensors."""
    child, offsets = compiled.child.tolist(), compiled.offsets.tolist()
    nodes = []
    for k, kind in enumerate(compiled.layer_kinds, start=1):
        lo, hi = compiled.layer_rows(k)
        for r in range(lo, hi):
            i = r - compiled.num_leaves
            nodes.append((kind, tuple(child[offsets[i] : offsets[i + 1]])))
    return nodes


def test_deduplication_within_a_circuit():
    c = Circuit(2)
    # Two structurally equal sub-circuits built separately, children in different order.
    s1 = c.conjoin([c.literal(1), c.literal(2)])
    s2 = c.conjoin([c.literal(2), c.literal(1)])
    c.add_root(c.disjoin([c.conjoin([s1, c.literal(-1)]), c.conjoin([c.literal(-1), s2])]))
    compiled = c.compile(smooth=False)
    x1, x2 = 2, 3  # leaf rows of +1, +2
    assert compiled_nodes(compiled).count(("and", (x1, x2))) == 1


def layer_invariants(compiled):
    """The layered circuit's contract (see CompiledCircuit), checked from plain lists."""
    n0, starts = compiled.num_leaves, compiled.row_starts
    assert n0 == 2 * compiled.num_vars + 2 + (compiled.num_vars if compiled.smooth else 0)
    assert starts[0] == 0 and starts[1] == n0
    assert all(b > a for a, b in itertools.pairwise(starts[1:])), "an empty layer"
    assert compiled.num_nodes == starts[-1]
    assert compiled.child.dtype == compiled.offsets.dtype == torch.int32
    nodes = compiled_nodes(compiled)
    assert len(nodes) == compiled.num_nodes - n0
    kind_of_row = ["leaf"] * n0 + [kind for kind, _ in nodes]
    for k in range(1, compiled.num_layers + 1):
        lo, hi = compiled.layer_rows(k)
        for kind, kids in nodes[lo - n0 : hi - n0]:
            assert kind == compiled.layer_kinds[k - 1]
            assert all(0 <= c < lo for c in kids), "a child not in a lower layer"
            assert list(kids) == sorted(kids)
            # No pass-through nodes: every internal node has two children or more.
            assert len(kids) >= 2, "a unary (pass-through) node"
    assert len(set(nodes)) == len(nodes), "two equal nodes"
    # Every row is a root or read by some node (nothing dead is evaluated).
    read = {c for _, kids in nodes for c in kids} | set(compiled.roots.tolist())
    assert set(range(n0, compiled.num_nodes)) <= read
    # The transposed CSR lists exactly the same edges: AND parents first, then OR parents.
    edges = [
        (c, e, n0 + i)
        for i, (_, kids) in enumerate(nodes)
        for e, c in zip(range(compiled.offsets[i], compiled.offsets[i + 1]), kids, strict=True)
    ]
    p_off, split = compiled.parent_offsets.tolist(), compiled.parent_split.tolist()
    parent, parent_edge = compiled.parent.tolist(), compiled.parent_edge.tolist()
    assert len(p_off) == compiled.num_nodes + 1
    for row in range(compiled.num_nodes):
        mine = sorted((kind_of_row[p] == "or", e, p) for c, e, p in edges if c == row)
        listed = [
            (j >= split[row], parent_edge[j], parent[j]) for j in range(p_off[row], p_off[row + 1])
        ]
        assert listed == mine
    assert all(0 <= r < compiled.num_nodes for r in compiled.roots.tolist())


def smoothness_invariants(compiled):
    """A smoothed circuit's contract, from each row's variables computed here bottom up: every
    OR's children mention the same variables, every AND's children disjoint ones (smoothing
    kept the circuit decomposable), and every non-false root all the free variables."""
    v, n0 = compiled.num_vars, compiled.num_leaves
    leaf_vars = [frozenset(), frozenset()] + [frozenset({(r - 2) % v + 1}) for r in range(2, n0)]
    variables = leaf_vars + [None] * (compiled.num_nodes - n0)
    for row, (kind, kids) in enumerate(compiled_nodes(compiled), start=n0):
        sets = [variables[c] for c in kids]
        union = frozenset().union(*sets)
        if kind == "or":
            assert all(s == union for s in sets), f"OR row {row} is not smooth"
        else:
            assert sum(map(len, sets)) == len(union), f"AND row {row} is not decomposable"
        variables[row] = union
    free = frozenset(range(1, v + 1)) - set(compiled.fixed)
    for root in compiled.roots.tolist():
        assert root == 0 or variables[root] == free, f"root row {root} misses variables"


@pytest.mark.parametrize("name", ["sudoku_4", "4-grid", "road_r"])
@pytest.mark.parametrize("smooth", [True, False])
def test_layer_invariants_on_real_circuits(name, smooth, data_dir):
    c = Circuit()
    c.add_sdd_file(data_dir / f"{name}.sdd", data_dir / f"{name}.vtree")
    c.add_sdd_file(data_dir / f"{name}.sdd", data_dir / f"{name}.vtree")
    c.add_root(c.literal(1))
    compiled = c.compile(smooth=smooth)
    layer_invariants(compiled)
    if smooth:
        smoothness_invariants(compiled)


def test_layer_invariants_small():
    for seed in range(5):
        clauses, num_vars = cnf_case(seed)
        c = Circuit(num_vars)
        c.add_cnf(clauses)
        c.add_root(c.true())
        c.add_root(c.literal(-1))
        compiled = c.compile()
        layer_invariants(compiled)
        smoothness_invariants(compiled)


def test_circuit_errors():
    with pytest.raises(CircuitError, match="no roots"):
        Circuit(2).compile()
    c = Circuit(2)
    with pytest.raises(CircuitError, match="declared variable count 2"):
        c.literal(3)
    with pytest.raises(CircuitError, match="non-zero"):
        c.literal(0)
    with pytest.raises(CircuitError, match="not a node"):
        c.add_root(5)
    with pytest.raises(CircuitError, match="not a node"):
        c.conjoin([c.literal(1), 17])
    c.add_root(c.literal(1))
    with pytest.raises(CircuitError, match="fixed variable 9"):
        c.compile(fixed={9: True})
    with pytest.raises(CircuitError, match="exceeds"):
        Circuit().add_cnf([[1, 5]], num_vars=3)


def test_compiled_structure_is_numpy_free_of_python_loops_on_big_input():
    """A wide random circuit compiles and evaluates like the naive per-node evaluator."""
    from trilay.engine import evaluate_naive

    rng = np.random.default_rng(0)
    c = Circuit(30)
    nodes = [c.literal(int(v)) for v in rng.choice(np.r_[-30:0, 1:31], 60)]
    for i in range(400):
        kids = rng.choice(len(nodes), size=int(rng.integers(1, 5)), replace=False).tolist()
        make = c.conjoin if i % 2 else c.disjoin
        nodes.append(make([nodes[k] for k in kids]))
    for r in nodes[-10:]:
        c.add_root(r)
    pos = random_weights(4, 30, 2).requires_grad_(True)
    out = c.compile(smooth=False).module("real")(pos)
    ref = evaluate_naive(c, pos)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out.sum(), pos)
    (g_ref,) = torch.autograd.grad(ref.sum(), pos)
    torch.testing.assert_close(g, g_ref)


def test_fuzzy_semirings_evaluate_the_formula_as_written():
    """Exactly-one over (0.2, 0.5, 0.7) as a DNF, by hand: product 0.385408, Gödel 0.5,
    Łukasiewicz 0.0 (issue 6's figures)."""
    c = Circuit(3)
    terms = [c.conjoin([c.literal(i if j == i else -j) for j in (1, 2, 3)]) for i in (1, 2, 3)]
    c.add_root(c.disjoin(terms))
    compiled = c.compile(smooth=False)
    p = torch.tensor([[0.2, 0.5, 0.7]], dtype=torch.float64)
    expected = {"fuzzy_product": 0.385408, "fuzzy_godel": 0.5, "fuzzy_lukasiewicz": 0.0}
    for semiring, value in expected.items():
        assert compiled.module(semiring)(p).item() == pytest.approx(value, abs=1e-12)
    # The CNF form gives other truth values (product 0.442728, Gödel 0.5, Łukasiewicz 0.8).
    c = Circuit(3)
    pairs = [c.disjoin([c.literal(-i), c.literal(-j)]) for i, j in ((1, 2), (1, 3), (2, 3))]
    c.add_root(c.conjoin([c.disjoin([c.literal(v) for v in (1, 2, 3)]), *pairs]))
    compiled = c.compile(smooth=False)
    expected = {"fuzzy_product": 0.442728, "fuzzy_godel": 0.5, "fuzzy_lukasiewicz": 0.8}
    for semiring, value in expected.items():
        assert compiled.module(semiring)(p).item() == pytest.approx(value, abs=1e-12)


def test_fixed_accepts_bools_and_int_keys_only():
    c = Circuit(3)
    c.add_root(c.conjoin([c.literal(1), c.literal(2)]))
    for fixed, problem in (
        ({1: "false"}, "True/False"),
        ({1: 2}, "True/False"),
        ({1: None}, "True/False"),
        ({True: True}, "not an integer"),
        ({1.0: True}, "not an integer"),
        ({0: True}, "1-based"),
        ([(1, True)], "dict"),
    ):
        with pytest.raises(CircuitError, match=problem):
            c.compile(fixed=fixed)
    p = random_weights(4, 3, 3)
    for value in (True, 1, np.bool_(True)):
        out = c.compile(fixed={1: value}, smooth=False).module("real")(p)[:, 0]
        torch.testing.assert_close(out, p[:, 1])  # x1 fixed true: the root is x2
    out = c.compile(fixed={np.int64(2): 0}, smooth=False).module("real")(p)[:, 0]
    assert (out == 0).all()


@pytest.mark.parametrize("semiring", ["log", "real"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_true_root_is_exactly_one(semiring, dtype):
    """Smoothing multiplies in each variable's ``p + (1 - p)``: with the default complement it
    is one by definition, so a root that is true evaluates to exactly the semiring's one (log:
    0, not rounding's 7.5e-8), and so does a tautology conjoined onto a formula."""
    c = Circuit(6)
    c.add_root(c.true())
    c.add_root(c.disjoin([c.literal(2), c.true()]))
    module = c.compile().module(semiring)
    p = random_weights(64, 6, 5, dtype=dtype, extremes=False)
    x = p.log() if semiring == "log" else p
    one = 0.0 if semiring == "log" else 1.0
    assert (module(x) == one).all()


def chain_circuit(depth: int) -> Circuit:
    """``n_k = OR(AND(n_{k-1}, x_k), -x_k)``: a sequence model's shape, ``depth`` deep."""
    c = Circuit(depth)
    node = c.literal(1)
    for k in range(2, depth + 1):
        node = c.disjoin([c.conjoin([node, c.literal(k)]), c.literal(-k)])
    c.add_root(node)
    return c


def internal_ir_nodes(c: Circuit) -> int:
    kind, *_ = c.arrays()
    return int(((kind == AND) | (kind == OR)).sum())


@pytest.mark.parametrize("depth", [50, pytest.param(200_000, marks=pytest.mark.slow)])
def test_deep_chain_layers_linearly(depth):
    """Layering adds no node (KLay's pass-through chains made ~2 D^2 of them) and smoothing
    O(log D) edges a level; values against brute force where it is feasible."""
    c = chain_circuit(depth)
    plain, smoothed = c.compile(smooth=False), c.compile()
    if depth <= 1000:
        smoothness_invariants(smoothed)
        smoothness_invariants(c.compile(fixed={2: True, depth // 2: False}))
    assert plain.num_nodes - plain.num_leaves == internal_ir_nodes(c) == 2 * (depth - 1)
    assert plain.num_layers == 2 * (depth - 1)
    assert smoothed.num_edges <= 4 * depth * max(1, int(np.log2(depth)))
    if depth <= 12:
        return
    # P(n_k) = P(n_{k-1}) p_k + (1 - p_k): against the recurrence itself.
    p = random_weights(3, depth, 4, extremes=False)
    expected = p[:, 0]
    for k in range(1, depth):
        expected = expected * p[:, k] + (1 - p[:, k])
    for compiled in (plain, smoothed):
        out = compiled.module("real")(p)[:, 0]
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("n", [3, 64, 1000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_smoothing_a_wide_or_costs_n_log_n_edges(n):
    """Each literal of an OR of ``n`` literals misses the other ``n - 1`` variables: smoothed
    with shared segment-tree gadgets it costs O(n log n) edges, not n^2; the values match the
    closed form (``p_i`` times the other variables' tautologies, summed)."""
    c = Circuit(n)
    c.add_root(c.disjoin([c.literal(v) for v in range(1, n + 1)]))
    compiled = c.compile()
    assert compiled.num_edges <= 4 * n * max(1, int(np.log2(n))) + 4 * n
    if n <= 1000:
        smoothness_invariants(compiled)
        p = random_weights(2, n, 6, extremes=False)
        neg = random_weights(2, n, 7, extremes=False)
        tautology = p + neg
        expected = sum(
            p[:, i] * tautology[:, :i].prod(-1) * tautology[:, i + 1 :].prod(-1) for i in range(n)
        )
        torch.testing.assert_close(compiled.module("real")(p, neg)[:, 0], expected)


def test_smoothing_a_wide_and_adds_nothing():
    c = Circuit(5000)
    c.add_root(c.conjoin([c.literal(v) for v in range(1, 5001)]))
    compiled = c.compile()
    assert compiled.num_nodes - compiled.num_leaves == 1 and compiled.num_edges == 5000


def smoothed_to_intervals(circuit: Circuit, monkeypatch, **options):
    """``circuit.compile(**options)`` (smoothed), and whether the compiler smoothed each node
    to an interval of positions (an SDD's way) rather than each OR to its children's variables
    (any d-DNNF's, which alone asks for :func:`variable_positions`)."""
    calls = []
    per_or = compiler._passes.variable_positions
    monkeypatch.setattr(
        compiler._passes, "variable_positions", lambda *a: calls.append(1) or per_or(*a)
    )
    compiled = circuit.compile(**options)
    monkeypatch.undo()
    return compiled, not calls


def models_of(formula, num_vars: int) -> torch.Tensor:
    x = all_assignments(num_vars)
    return x[torch.tensor([bool(formula(*row)) for row in x.tolist()], dtype=torch.bool)]


@pytest.mark.parametrize("seed", range(6))
def test_sdds_are_smoothed_to_vtree_intervals(seed, monkeypatch):
    """An SDD's nodes are smoothed to intervals of its vtree's variable order, whatever the
    vtree; the smoothed circuit is smooth and decomposable, counts weights that do not sum to
    one right, and fixing variables keeps it so."""
    rng = random.Random(seed)
    num_vars = rng.randint(5, 10)
    clauses = random_cnf(num_vars, rng.randint(2, 2 * num_vars), seed)
    order = rng.sample(range(1, num_vars + 1), num_vars)
    mgr = SddManager.from_vtree(Vtree(num_vars, order, rng.choice(["balanced", "left", "right"])))
    node = mgr.true()
    for clause in clauses:
        node = node & functools.reduce(lambda a, b: a | b, map(mgr.literal, clause))
    c = Circuit(num_vars)
    c.add_sdd(node)
    compiled, by_intervals = smoothed_to_intervals(c, monkeypatch)
    assert by_intervals
    smoothness_invariants(compiled)
    pos = random_weights(4, num_vars, seed)
    neg = random_weights(4, num_vars, seed + 1)
    models = models_of_cnf(clauses, num_vars)
    module = compiled.module("real")
    check_against_brute_force(module, models, pos, neg, "real", explicit_neg=True)
    fixed = {order[0]: True, order[-1]: False}
    conditioned, by_intervals = smoothed_to_intervals(c, monkeypatch, fixed=fixed)
    assert by_intervals
    smoothness_invariants(conditioned)
    keep = torch.ones(models.shape[0], dtype=torch.bool)
    for var, value in fixed.items():
        keep &= models[:, var - 1] == value
    out = conditioned.module("real")(pos, neg)[:, 0]
    free = [v - 1 for v in range(1, num_vars + 1) if v not in fixed]
    expected = brute_force(models[keep][:, free], pos[:, free], neg[:, free], "real")
    torch.testing.assert_close(out, expected)


def test_interval_targets_reach_their_fixpoint(monkeypatch):
    """A group of ORs widens after a parent has read its target (``o2`` after ``q``): the
    targets are a fixpoint, not one bottom-up pass (one pass would pad ``q`` with ``x3`` a
    second time: not decomposable, and the tautology counted twice)."""
    c = Circuit(4)
    x3, x1, x2, x4 = (c.literal(v) for v in (3, 1, 2, 4))  # positions: x3 first
    s = c.conjoin([x1, x2])
    o1 = c.disjoin([s, c.conjoin([c.literal(-1), x2])])
    c.add_root(c.conjoin([o1, x4]))  # x2 and x4
    c.add_root(c.disjoin([s, c.conjoin([c.literal(-1), x3])]))  # o2: x1 and x2, or not x1 and x3
    compiled, by_intervals = smoothed_to_intervals(c, monkeypatch)
    assert by_intervals
    smoothness_invariants(compiled)
    pos, neg = random_weights(3, 4, 1), random_weights(3, 4, 2)
    out = compiled.module("real")(pos, neg)
    for root, formula in enumerate(
        [lambda a, b, _, d: b and d, lambda a, b, x, _: a and b or not a and x]
    ):
        torch.testing.assert_close(
            out[:, root], brute_force(models_of(formula, 4), pos, neg, "real")
        )


def test_overlapping_targets_fall_back_to_smoothing_each_or(monkeypatch):
    """Where an AND's children's intervals overlap (here ``x2``'s position lies between
    ``x1``'s and ``x3``'s, under an OR of both), the compiler smooths each OR to its children's
    variables instead: still smooth, still exact."""
    c = Circuit(3)
    x1, x2, x3 = (c.literal(v) for v in (1, 2, 3))
    c.add_root(c.conjoin([c.disjoin([x1, c.conjoin([c.literal(-1), x3])]), x2]))
    compiled, by_intervals = smoothed_to_intervals(c, monkeypatch)
    assert not by_intervals
    smoothness_invariants(compiled)
    pos, neg = random_weights(3, 3, 1), random_weights(3, 3, 2)
    expected = brute_force(models_of(lambda a, b, x: (a or x) and b, 3), pos, neg, "real")
    torch.testing.assert_close(compiled.module("real")(pos, neg)[:, 0], expected)


def test_index_limit_counts_the_layered_circuit(data_dir, monkeypatch):
    """The int32 limit applies to the rows and edges the kernels index (the compiled
    circuit's), not to the nodes the compiler made and dropped (smoothing replaces most OR
    children): just at the limit compiles, one below it is refused, naming both counts."""
    from trilay.engine import compiler

    c = Circuit()
    c.add_sdd_file(data_dir / "sudoku_4.sdd", data_dir / "sudoku_4.vtree")
    compiled = c.compile()
    nodes, edges = compiled.num_nodes, compiled.num_edges
    monkeypatch.setattr(compiler, "MAX_INDEX", max(nodes, edges))
    assert c.compile().num_edges == edges
    monkeypatch.setattr(compiler, "MAX_INDEX", max(nodes, edges) - 1)
    with pytest.raises(CircuitError, match=f"{nodes} nodes and {edges} edges"):
        c.compile()
