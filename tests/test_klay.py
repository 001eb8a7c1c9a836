"""The KLay-compatible API (``trilay.frontends.klay``): construction, loaders, errors, and
parity with klaycircuits 0.1.2 itself.

Oracles: KLay's own torch module (outputs and input gradients, every semiring KLay has, on the
benchmark circuits, on random CNFs compiled by PySDD and on random hand-built circuits), and a
naive per-node evaluator of the circuit definition written here (differentiated by autograd),
which also covers everything when KLay is not installed.

The helpers (circuit definitions, ``build``, ``naive``) are shared with the other
``test_klay_*`` files.
"""

from __future__ import annotations

import importlib.metadata
import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import trilay.frontends.klay as klay_api
from conftest import DATA, random_cnf
from pysdd.sdd import SddManager, Vtree
from trilay.engine.errors import CircuitError, DTypeError, SemiringError, ShapeError
from trilay.frontends.klay import Circuit, check_decomposability, check_sdnnf, check_smooth

# KLay's modules use torch.jit.script_method, deprecated in torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")

KLAY_SEMIRINGS = ("real", "log", "mpe", "godel")
FILES = ("sudoku_4", "4-grid", "road_r", "seq_fun")


# ---------------------------------------------------------------------------- definitions
@dataclass
class Definition:
    """A circuit as data: ``nodes[i]`` is ``("lit", l)``, ``("true",)``, ``("false",)``,
    ``("and", [i, ...])`` or ``("or", [i, ...])`` (children are earlier nodes); ``roots`` lists
    node indices in output order."""

    num_vars: int
    nodes: list[tuple] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)

    def add(self, *node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1


def random_dag(
    seed: int, num_vars: int, num_internal: int, num_roots: int = 2, constants: bool = True
) -> Definition:
    """Any NNF DAG (not decomposable, not smooth), with repeated children, single-child and
    (rarely) empty nodes, and true/false leaves when ``constants``."""
    rng = random.Random(seed)
    d = Definition(num_vars)
    for v in range(1, num_vars + 1):
        d.add("lit", v)
        d.add("lit", -v)
    if constants:
        d.add("true")
        d.add("false")
    for _ in range(num_internal):
        fan_in = rng.choice([0, 1, 2, 2, 3, 3, 4]) if constants else rng.choice([1, 2, 3, 4])
        recent = max(0, len(d.nodes) - 6)
        kids = [
            rng.randrange(recent, len(d.nodes))
            if rng.random() < 0.6
            else rng.randrange(len(d.nodes))
            for _ in range(fan_in)
        ]
        d.add(rng.choice(["and", "or"]), kids)
    d.roots = [len(d.nodes) - 1] + rng.sample(range(len(d.nodes)), num_roots - 1)
    return d


def add_node(circuit, node: tuple, ptrs: list):
    """Add definition node ``node`` (children: indices into ``ptrs``) with KLay's node API."""
    kind = node[0]
    if kind == "lit":
        return circuit.literal_node(node[1])
    if kind == "true":
        return circuit.true_node()
    if kind == "false":
        return circuit.false_node()
    make = circuit.and_node if kind == "and" else circuit.or_node
    return make([ptrs[c] for c in node[1]])


def node_pointers(d: Definition, circuit) -> list:
    """Build ``d``'s nodes (not its roots) in ``circuit``; returns their pointers."""
    ptrs: list = []
    for node in d.nodes:
        ptrs.append(add_node(circuit, node, ptrs))
    return ptrs


def build(d: Definition, circuit):
    """Build ``d`` with KLay's node API (trilay's or KLay's ``Circuit``); returns the circuit."""
    ptrs = node_pointers(d, circuit)
    for r in d.roots:
        circuit.set_root(ptrs[r])
    return circuit


def sdd_definition(sdd, num_vars: int, true_lits=(), false_lits=()) -> Definition:
    """A PySDD node as a definition (decision node = OR of AND(prime, sub)), with the literals
    in ``true_lits`` / ``false_lits`` replaced by constants: written here, from PySDD's node
    API, independently of trilay's loaders."""
    d = Definition(num_vars)
    memo: dict[int, int] = {}

    def visit(node) -> int:
        if node.id in memo:
            return memo[node.id]
        if node.is_true():
            out = d.add("true")
        elif node.is_false():
            out = d.add("false")
        elif node.is_literal():
            lit = node.literal
            out = d.add(
                "true" if lit in true_lits else "false" if lit in false_lits else "lit", lit
            )
        else:
            ands = [d.add("and", [visit(p), visit(s)]) for p, s in node.elements()]
            out = d.add("or", ands)
        memo[node.id] = out
        return out

    d.roots = [visit(sdd)]
    return d


_OPS = {  # semiring -> (OR over a stacked dim, AND over it, zero, one)
    "real": (lambda x: x.sum(0), lambda x: x.prod(0), 0.0, 1.0),
    "log": (lambda x: torch.logsumexp(x, 0), lambda x: x.sum(0), -float("inf"), 0.0),
    "mpe": (lambda x: x.amax(0), lambda x: x.prod(0), 0.0, 1.0),
    "godel": (lambda x: x.amax(0), lambda x: x.amin(0), 0.0, 1.0),
    # A probabilistic circuit with uniform weights: every OR node the mean of its children.
    "uniform_mixture": (lambda x: x.mean(0), lambda x: x.prod(0), 0.0, 1.0),
}


def default_neg(x_pos: torch.Tensor, semiring: str) -> torch.Tensor:
    """KLay's documented default negation: ``1 - x``, in log ``log(1 - exp(x))``."""
    return torch.log(-torch.expm1(x_pos)) if semiring == "log" else 1 - x_pos


def naive(d: Definition, x_pos, x_neg, semiring: str) -> torch.Tensor:
    """Per-node evaluation of the definition: ``[..., V]`` -> ``[..., roots]``.

    Constants propagate as KLay's and trilay's loaders fold them (an AND with a false child is
    false and drops true children; an OR with a true child is true and drops false children;
    an empty AND is true, an empty OR false); every other node is the semiring's sum/product of
    its children as written (repeated children counted each time)."""
    add, mul, zero, one = _OPS[semiring]
    vals: list = []
    for node in d.nodes:
        kind = node[0]
        if kind == "lit":
            lit = node[1]
            vals.append(x_pos[..., lit - 1] if lit > 0 else x_neg[..., -lit - 1])
        elif kind in ("true", "false"):
            vals.append(kind == "true")
        else:
            kids = [vals[c] for c in node[1]]
            absorbing, neutral = (False, True) if kind == "and" else (True, False)
            if any(k is absorbing for k in kids):
                vals.append(absorbing)
                continue
            kids = [k for k in kids if k is not neutral]
            if not kids:
                vals.append(neutral)
            elif len(kids) == 1:
                vals.append(kids[0])
            else:
                vals.append((mul if kind == "and" else add)(torch.stack(kids)))
    lead = x_pos.shape[:-1]
    outs = [
        torch.full(lead, one if v else zero, dtype=x_pos.dtype) if isinstance(v, bool) else v
        for v in (vals[r] for r in d.roots)
    ]
    return torch.stack(outs, dim=-1)


def random_inputs(shape, semiring: str, seed: int, dtype=torch.float64):
    """Literal weights away from 0 and 1 (in log space for ``log``)."""
    g = torch.Generator().manual_seed(seed)
    p = 0.05 + 0.9 * torch.rand(shape, generator=g, dtype=dtype)
    return p.log() if semiring == "log" else p


# ---------------------------------------------------------------------------- comparing
def outputs_and_grads(module, x_pos, x_neg, seed: int, positive: bool = False):
    """``module(x_pos, x_neg)`` and the gradients of a random projection of it w.r.t. the
    inputs (``x_neg`` only when passed); ``positive``: a projection with positive weights."""
    pos = x_pos.clone().requires_grad_()
    neg = None if x_neg is None else x_neg.clone().requires_grad_()
    out = module(pos, neg)
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(out.shape, generator=g, dtype=out.dtype)
    weights = weights.abs() + 0.1 if positive else weights
    # Roots that are constants (or do not depend on the inputs) have no grad_fn.
    inputs = [pos] if neg is None else [pos, neg]
    if not out.requires_grad:
        return out.detach(), [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(inputs, grads, strict=True)]
    return out.detach(), grads


def assert_same(actual, expected, rtol=1e-9):
    """Equal up to ``rtol`` relative to each tensor's largest finite magnitude (real-semiring
    values of the benchmark circuits are ~1e-18: an absolute tolerance would hide them)."""
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def check_parity(ours, theirs, num_vars: int, semiring: str, seed: int, neg: bool, batch):
    shape = (num_vars,) if batch is None else (batch, num_vars)
    x_pos = random_inputs(shape, semiring, seed)
    x_neg = random_inputs(shape, semiring, seed + 1) if neg else None
    # KLay's max/min gradients are wrong at ties under a negative upstream gradient (see
    # test_klay_max_gradient_at_ties_defect): compare those semirings under a positive one.
    positive = semiring in ("mpe", "godel")
    out, grads = outputs_and_grads(ours, x_pos, x_neg, seed, positive)
    ref_out, ref_grads = outputs_and_grads(theirs, x_pos, x_neg, seed, positive)
    assert out.shape == ref_out.shape
    assert_same(out, ref_out)
    for gr, ref in zip(grads, ref_grads, strict=True):
        assert_same(gr, ref)


def klay_module(circuit, semiring: str, **kwargs):
    return circuit.to_torch_module(semiring=semiring, compile=False, **kwargs)


@pytest.fixture(scope="module")
def klay():
    return klaycircuits_012()


def klaycircuits_012():
    """KLay 0.1.2, what the parity tests and the documented differences are about (skips the
    test without it)."""
    module = pytest.importorskip("klay", reason="klaycircuits is not installed: no KLay to compare")
    version = importlib.metadata.version("klaycircuits")
    if version != "0.1.2":
        pytest.skip(f"the parity tests are with klaycircuits 0.1.2, this is {version}")
    return module


# ---------------------------------------------------------------------------- parity: files
@pytest.fixture(scope="module")
def file_circuits(klay):
    """``name -> (trilay Circuit, KLay Circuit, num_vars)``: each SDD loaded once per library
    (KLay through PySDD's manager, trilay through ``add_sdd_from_file``)."""
    out = {}
    for name in FILES:
        vtree = Vtree.from_file(str(DATA / f"{name}.vtree").encode())
        manager = SddManager.from_vtree(vtree)
        sdd = manager.read_sdd_file(str(DATA / f"{name}.sdd").encode())
        theirs = klay.Circuit()
        theirs.add_sdd(sdd)
        ours = Circuit()
        ours.add_sdd_from_file(DATA / f"{name}.sdd")
        out[name] = (ours, theirs, manager.var_count())
    return out


@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
@pytest.mark.parametrize("name", FILES)
def test_parity_benchmark_circuits(file_circuits, name, semiring):
    ours, theirs, num_vars = file_circuits[name]
    mine, ref = ours.to_torch_module(semiring), klay_module(theirs, semiring)
    for neg, batch in [(False, None), (True, 3)]:
        check_parity(mine, ref, num_vars, semiring, seed=len(name), neg=neg, batch=batch)


def test_parity_float32(file_circuits):
    ours, theirs, num_vars = file_circuits["road_r"]
    x_pos = random_inputs((4, num_vars), "log", 3, dtype=torch.float32)
    out, (grad,) = outputs_and_grads(ours.to_torch_module("log"), x_pos, None, 0)
    ref, (ref_grad,) = outputs_and_grads(klay_module(theirs, "log"), x_pos, None, 0)
    assert out.dtype == torch.float32
    assert_same(out, ref, rtol=1e-5)
    assert_same(grad, ref_grad, rtol=1e-4)


# ---------------------------------------------------------------------------- parity: random
def compile_cnf(clauses, num_vars: int):
    manager = SddManager(num_vars, False)
    sdd = manager.true()
    for clause in clauses:
        c = manager.false()
        for lit in clause:
            c = c | (manager.literal(lit))
        sdd = sdd & c
    return manager, sdd


@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
@pytest.mark.parametrize("seed", range(3))
def test_parity_random_cnf(klay, seed, semiring):
    num_vars = 6 + 2 * seed
    manager, sdd = compile_cnf(random_cnf(num_vars, num_vars, seed), num_vars)
    other = compile_cnf(random_cnf(num_vars, num_vars // 2, seed + 10), num_vars)[1]
    # Two roots: the second one conditioned, to exercise true_lits / false_lits.
    ours, theirs = Circuit(), klay.Circuit()
    for c in (ours, theirs):
        c.add_sdd(sdd)
        c.add_sdd(other, true_lits=[1, -3], false_lits=[2])
    mine, ref = ours.to_torch_module(semiring), klay_module(theirs, semiring)
    for neg, batch in [(False, None), (True, 5)]:
        check_parity(mine, ref, num_vars, semiring, seed, neg, batch)


@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
@pytest.mark.parametrize("seed", range(4))
def test_parity_random_dag(klay, seed, semiring):
    d = random_dag(seed, num_vars=5, num_internal=25, num_roots=3)
    mine = build(d, Circuit()).to_torch_module(semiring)
    ref = klay_module(build(d, klay.Circuit()), semiring)
    for neg, batch in [(False, None), (False, 4), (True, 4)]:
        check_parity(mine, ref, d.num_vars, semiring, seed, neg, batch)


# ---------------------------------------------------------------------------- the naive oracle
@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
@pytest.mark.parametrize("seed", range(6))
def test_random_dag_against_naive(seed, semiring):
    d = random_dag(100 + seed, num_vars=5, num_internal=30, num_roots=3)
    module = build(d, Circuit()).to_torch_module(semiring)
    x_pos = random_inputs((4, d.num_vars), semiring, seed)
    for x_neg in (None, random_inputs((4, d.num_vars), semiring, seed + 1)):
        out, grads = outputs_and_grads(module, x_pos, x_neg, seed)
        if x_neg is None:  # KLay's documented default negation, differentiated by autograd

            def oracle(p, _):
                return naive(d, p, default_neg(p, semiring), semiring)

        else:

            def oracle(p, n):
                return naive(d, p, n, semiring)

        ref, ref_grads = outputs_and_grads(oracle, x_pos, x_neg, seed)
        assert_same(out, ref)
        for got, expected in zip(grads, ref_grads, strict=True):
            assert_same(got, expected)


@pytest.mark.parametrize("seed", range(3))
def test_add_sdd_fixed_literals_against_naive(seed):
    num_vars = 7
    _, sdd = compile_cnf(random_cnf(num_vars, 6, 50 + seed), num_vars)
    rng = random.Random(seed)
    lits = rng.sample([v * s for v in range(1, num_vars + 1) for s in (1, -1)], 4)
    true_lits, false_lits = lits[:2], lits[2:]  # distinct literals (+v and -v may both occur)
    c = Circuit()
    c.add_sdd(sdd, true_lits=true_lits, false_lits=false_lits)
    d = sdd_definition(sdd, num_vars, true_lits, false_lits)
    for semiring in KLAY_SEMIRINGS:
        x_pos = random_inputs((3, num_vars), semiring, seed)
        x_neg = random_inputs((3, num_vars), semiring, seed + 7)
        assert_same(c.to_torch_module(semiring)(x_pos, x_neg), naive(d, x_pos, x_neg, semiring))


def test_sdd_file_equals_sdd_node():
    """``add_sdd_from_file`` and ``add_sdd`` of the same SDD are one circuit (the naive oracle
    from PySDD's node API on sudoku_4)."""
    vtree = Vtree.from_file(str(DATA / "sudoku_4.vtree").encode())
    manager = SddManager.from_vtree(vtree)
    sdd = manager.read_sdd_file(str(DATA / "sudoku_4.sdd").encode())
    from_file, from_node = Circuit(), Circuit()
    from_file.add_sdd_from_file(str(DATA / "sudoku_4.sdd"), true_lits=[5], false_lits=[-9])
    from_node.add_sdd(sdd, true_lits=[5], false_lits=[-9])
    d = sdd_definition(sdd, manager.var_count(), true_lits=[5], false_lits=[-9])
    x_pos = random_inputs((2, 64), "log", 0)
    ref = naive(d, x_pos, default_neg(x_pos, "log"), "log")
    assert_same(from_file.to_torch_module("log")(x_pos), ref)
    assert_same(from_node.to_torch_module("log")(x_pos), ref)


# ---------------------------------------------------------------------------- d4 files
def write_d4(d: Definition, path, shuffle: int | None = None) -> None:
    """Write a single-rooted definition in d4's format: node 1 is the root, literals ride on
    edges into one ``t`` node. Edges come bottom-up, as d4 writes them (KLay needs that
    order), or in a random order when ``shuffle`` is a seed."""
    (root,) = d.roots
    order = [root] + [i for i in range(len(d.nodes)) if i != root]
    ids = {node: k + 1 for k, node in enumerate(order)}
    true_id = len(order) + 1
    lines, edges = [], []
    for node in order:
        kind = d.nodes[node][0]
        lines.append(f"{'o' if kind == 'or' else 'a'} {ids[node]} 0")
    for node, (kind, arg) in enumerate(d.nodes):  # children before parents
        if kind == "lit":  # an AND whose one edge carries the literal
            edges.append(f"{ids[node]} {true_id} {arg} 0")
        else:
            edges += [f"{ids[node]} {ids[child]} 0" for child in arg]
    if shuffle is not None:
        random.Random(shuffle).shuffle(edges)
    lines.append(f"t {true_id} 0")
    path.write_text("\n".join(lines + edges) + "\n")


@pytest.mark.parametrize("seed", range(3))
def test_d4_file_against_naive(tmp_path, seed):
    d = random_dag(200 + seed, num_vars=4, num_internal=12, num_roots=1, constants=False)
    x_pos = random_inputs((3, 4), "real", seed)
    x_neg = random_inputs((3, 4), "real", seed + 1)
    ref = naive(d, x_pos, x_neg, "real")
    for shuffle in (None, seed):  # trilay reads the edges in any order
        write_d4(d, tmp_path / "c.nnf", shuffle)
        ours = Circuit()
        ours.add_d4_from_file(tmp_path / "c.nnf")
        assert_same(ours.to_torch_module("real")(x_pos, x_neg), ref)


@pytest.mark.parametrize("seed", range(3))
def test_d4_file_parity(klay, tmp_path, seed):
    d = random_dag(200 + seed, num_vars=4, num_internal=12, num_roots=1, constants=False)
    write_d4(d, tmp_path / "c.nnf")
    ours, theirs = Circuit(), klay.Circuit()
    ours.add_d4_from_file(tmp_path / "c.nnf")
    theirs.add_d4_from_file(str(tmp_path / "c.nnf"))
    for semiring in KLAY_SEMIRINGS:
        check_parity(
            ours.to_torch_module(semiring),
            klay_module(theirs, semiring),
            4,
            semiring,
            seed,
            True,
            3,
        )


# ---------------------------------------------------------------------------- API contract
def build_comparing(d: Definition, ours, theirs) -> tuple[list, list]:
    """Build ``d`` with both circuits node by node, checking after each node that they count
    the same nodes; returns both pointer lists."""
    pointers = ([], [])
    for node in d.nodes:
        for circuit, ptrs in zip((ours, theirs), pointers, strict=True):
            ptrs.append(add_node(circuit, node, ptrs))
        assert ours.nb_nodes() == theirs.nb_nodes(), node
    return pointers


def same_indices(ours, theirs) -> bool:
    (ins, outs), (their_ins, their_outs) = ours._get_indices(), theirs._get_indices()
    pairs = list(zip(ins + outs, their_ins + their_outs, strict=True))
    return len(ins) == len(their_ins) and all(np.array_equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("seed", range(12))
def test_node_semantics_equal_klays(klay, seed):
    """Constant folding, merging of equal nodes (children in any order, repeats kept), dummy
    nodes: after every node the same count as KLay 0.1.2, the same pointer identities and
    layer indices, then the same layer index arrays (``_get_indices``); and the same after
    ``remove_unused_nodes``."""
    d = random_dag(300 + seed, num_vars=5, num_internal=25, num_roots=3)
    ours, theirs = Circuit(), klay.Circuit()
    mine, ref = build_comparing(d, ours, theirs)
    n = len(d.nodes)
    assert [[mine[i] == mine[j] for j in range(n)] for i in range(n)] == [
        [ref[i] == ref[j] for j in range(n)] for i in range(n)
    ]
    assert [p.get_ix() for p in mine] == [p.get_ix() for p in ref]
    for r in d.roots:
        ours.set_root(mine[r])
        theirs.set_root(ref[r])
    pruned, their_pruned = Circuit(), klay.Circuit()
    kept, their_kept = build_comparing(d, pruned, their_pruned)
    for r in d.roots:
        pruned.set_root(kept[r])
        their_pruned.set_root(their_kept[r])
    pruned.remove_unused_nodes()
    their_pruned.remove_unused_nodes()
    assert pruned.nb_nodes() == their_pruned.nb_nodes()
    reached = [kept[r] for r in d.roots]
    assert [p.get_ix() for p in reached] == [their_kept[r].get_ix() for r in d.roots]
    assert same_indices(ours, theirs)  # last: KLay's _get_indices changes its circuit
    assert same_indices(pruned, their_pruned)


@pytest.mark.parametrize("name", FILES)
def test_loaded_circuits_equal_klays(klay, name):
    """The benchmark SDDs, from the file and from PySDD's node: the same node count and layer
    index arrays as KLay's."""
    vtree = Vtree.from_file(str(DATA / f"{name}.vtree").encode())
    sdd = SddManager.from_vtree(vtree).read_sdd_file(str(DATA / f"{name}.sdd").encode())
    for load in (
        lambda c: c.add_sdd_from_file(str(DATA / f"{name}.sdd")),
        lambda c: c.add_sdd(sdd, true_lits=[3], false_lits=[-5, 7]),
    ):
        ours, theirs = Circuit(), klay.Circuit()
        load(ours)
        load(theirs)
        assert ours.nb_nodes() == theirs.nb_nodes()
        assert same_indices(ours, theirs)


def test_print_equals_klays(klay, capfd):
    d = random_dag(7, num_vars=3, num_internal=8, num_roots=2)
    ours, theirs = build(d, Circuit()), build(d, klay.Circuit())
    theirs.print()
    expected = capfd.readouterr().out
    ours.print()
    assert capfd.readouterr().out == expected and expected.count("--- next layer ---") > 1


def test_node_pointers():
    c = Circuit()
    a = c.literal_node(1)
    assert a == c.literal_node(1) and hash(a) == hash(c.literal_node(1))
    assert c.and_node([a, c.literal_node(-2)]) == c.and_node([c.literal_node(-2), a])
    assert c.nb_root_nodes() == 0
    x = c.or_node([a, c.literal_node(2)])
    c.set_root(a)
    c.set_root(a)
    assert c.nb_root_nodes() == 2
    assert {a: 1}[c.literal_node(1)] == 1
    c.remove_unused_nodes()  # x is unused
    with pytest.raises(CircuitError, match="removed"):
        c.and_node([x, a])
    with pytest.raises(CircuitError, match="removed"):
        x.get_ix()


def definition_scopes(d: Definition) -> list[frozenset | bool]:
    """Each node's variables, or ``True`` / ``False`` for a node that folds to a constant (as
    ``naive`` folds them)."""
    scopes: list = []
    for node in d.nodes:
        kind = node[0]
        if kind == "lit":
            scopes.append(frozenset([abs(node[1])]))
        elif kind in ("true", "false"):
            scopes.append(kind == "true")
        else:
            absorbing, neutral = (False, True) if kind == "and" else (True, False)
            kids = [scopes[c] for c in node[1]]
            if any(k is absorbing for k in kids):
                scopes.append(absorbing)
                continue
            kids = [k for k in kids if k is not neutral]
            scopes.append(
                neutral if not kids else kids[0] if len(kids) == 1 else frozenset().union(*kids)
            )
    return scopes


@pytest.mark.parametrize("seed", range(6))
def test_structural_checks_against_definition(seed):
    """The nodes ``check_sdnnf`` reports are the definition's AND nodes with children sharing
    a variable and OR nodes with children over different variables (scopes computed here,
    after constant folding), each reported once however often it was built."""
    d = random_dag(400 + seed, num_vars=6, num_internal=30, num_roots=2)
    c = Circuit()
    ptrs = node_pointers(d, c)
    scopes = definition_scopes(d)
    expected = {"decomposability": set(), "smoothness": set()}
    for i, node in enumerate(d.nodes):
        if node[0] not in ("and", "or") or isinstance(scopes[i], bool):
            continue
        kids = [scopes[k] for k in node[1] if not isinstance(scopes[k], bool)]
        if len(kids) < 2:
            continue
        if node[0] == "and" and sum(map(len, kids)) != len(frozenset().union(*kids)):
            expected["decomposability"].add(ptrs[i])
        if node[0] == "or" and len(set(kids)) > 1:
            expected["smoothness"].add(ptrs[i])
    assert expected["decomposability"] or expected["smoothness"]  # the test sees violations
    result = check_sdnnf(c, max_violations=10**6)
    found = {prop: {v.node for v in result.violations if v.property == prop} for prop in expected}
    assert found == expected
    assert result.is_decomposable == (not expected["decomposability"])
    assert result.is_smooth == (not expected["smoothness"])
    assert result.n_vars_found == d.num_vars
    only = {
        "decomposability": check_decomposability(c, 10**6),
        "smoothness": check_smooth(c, 10**6),
    }
    for prop, partial in only.items():
        assert {v.node for v in partial.violations} == expected[prop]
        assert {v.property for v in partial.violations} <= {prop}
    assert len(check_sdnnf(c, max_violations=1).violations) == min(1, len(result.violations))


@pytest.mark.parametrize("seed", range(6))
def test_structural_checks_equal_klays(klay, seed):
    """The same flags, counts (dummy nodes included) and violating nodes, in the same order, as
    KLay's checks (details aside: see test_structural_check_details_differ_from_klay_012)."""
    d = random_dag(400 + seed, num_vars=6, num_internal=30, num_roots=2)
    ours, theirs = Circuit(), klay.Circuit()
    node_pointers(d, ours)
    node_pointers(d, theirs)
    for name in ("check_sdnnf", "check_decomposability", "check_smooth"):
        for limit in (50, 2):
            mine, ref = (getattr(m, name)(c, limit) for m, c in ((klay_api, ours), (klay, theirs)))
            fields = ("is_nnf", "is_decomposable", "is_smooth", "is_dnnf", "is_sdnnf", "n_and")
            fields += ("n_or", "n_vars_found")
            assert [getattr(mine, f) for f in fields] == [getattr(ref, f) for f in fields]
            assert [(v.property, v.ix, v.layer) for v in mine.violations] == [
                (v.property, v.ix, v.layer) for v in ref.violations
            ]


@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
def test_module_attributes_equal_klays(klay, semiring):
    """KLay's module attributes: the semiring's name, zero and one, the layers' index arrays
    and shapes, ``sparsity``, ``encode_input``, ``negate``, ``is_probabilistic``."""
    d = random_dag(20, num_vars=4, num_internal=20, num_roots=2)
    probabilistic = (False, True) if semiring in ("real", "log") else (False,)
    for pc in probabilistic:
        mine = build(d, Circuit()).to_torch_module(semiring, probabilistic=pc)
        ref = klay_module(build(d, klay.Circuit()), semiring, probabilistic=pc)
        assert (mine.semiring, mine.zero, mine.one) == (ref.semiring, ref.zero, ref.one)
        assert mine.is_probabilistic() == ref.is_probabilistic() == pc
        assert len(mine.layers) == len(ref.layers)
        for ours, theirs in zip(mine.layers, ref.layers, strict=True):
            for name in ("ix_in", "offsets", "ix_out"):
                assert torch.equal(getattr(ours, name), getattr(theirs, name))
            assert (ours.in_shape, ours.out_shape) == (theirs.in_shape, theirs.out_shape)
        assert mine.sparsity(4) == pytest.approx(ref.sparsity(4))
    for shape in [(4,), (3, 4)]:
        x, y = random_inputs(shape, semiring, 0), random_inputs(shape, semiring, 1)
        torch.testing.assert_close(mine.encode_input(x, y), ref.encode_input(x, y))
        torch.testing.assert_close(mine.encode_input(x), ref.encode_input(x, None))
        torch.testing.assert_close(mine.negate(x), ref.negate(x, 0))


def test_to_torch_module_leaves_circuit_unchanged():
    d = random_dag(7, num_vars=4, num_internal=15, num_roots=2)
    c = build(d, Circuit())
    nodes, roots = c.nb_nodes(), c.nb_root_nodes()
    indices = c._get_indices()
    first = c.to_torch_module("real")
    second = c.to_torch_module("real")
    assert (c.nb_nodes(), c.nb_root_nodes()) == (nodes, roots)
    again = c._get_indices()
    pairs = zip(indices[0] + indices[1], again[0] + again[1], strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    assert len(first.layers) == len(second.layers) == len(indices[0])
    assert first.circuit.layer_kinds == second.circuit.layer_kinds
    x = random_inputs((3, 4), "real", 1)
    torch.testing.assert_close(first(x), second(x), rtol=0, atol=0)


def test_shapes_and_extra_columns():
    """``[V] -> [R]``, ``[B, V] -> [B, R]``, any leading shape; extra columns ignored."""
    d = random_dag(8, num_vars=4, num_internal=15, num_roots=3)
    module = build(d, Circuit()).to_torch_module("log")
    x = random_inputs((2, 3, 6), "log", 0)  # two columns beyond the circuit's 4 variables
    ref = naive(d, x[..., :4], default_neg(x[..., :4], "log"), "log")
    assert module(x).shape == (2, 3, 3)
    assert_same(module(x), ref)
    assert_same(module(x[0]), ref[0])
    assert_same(module(x[0, 0]), ref[0, 0])
    assert module(x[0, 0]).shape == (3,)
    # float32 and float16 inputs give outputs of their dtype (float16 evaluated in float32).
    for dtype, rtol in [(torch.float32, 1e-5), (torch.float16, 1e-2)]:
        out = module(x.to(dtype))
        assert out.dtype == dtype
        assert_same(out.double(), ref, rtol=rtol)


def test_literals_number_columns():
    """Literal ``+v`` reads column ``v - 1`` of ``x_pos``, ``-v`` of ``x_neg``."""
    c = Circuit()
    c.set_root(c.literal_node(3))
    c.set_root(c.literal_node(-2))
    x_pos, x_neg = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5, 0.6])
    torch.testing.assert_close(c.to_torch_module("real")(x_pos, x_neg), torch.tensor([0.3, 0.5]))


def test_eps_is_ignored_with_a_warning():
    d = random_dag(9, num_vars=4, num_internal=12)
    c = build(d, Circuit())
    x = random_inputs((3, 4), "log", 2)
    with pytest.warns(UserWarning, match="eps"):
        module = c.to_torch_module("log", eps=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = c.to_torch_module("log", eps=0)
    torch.testing.assert_close(module(x), plain(x), rtol=0, atol=0)


def test_compile_flag_wraps_in_torch_compile():
    c = build(random_dag(10, 3, 6), Circuit())
    module = c.to_torch_module("real", compile=True)  # not called: inductor costs seconds
    assert isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
    assert type(module._orig_mod).__name__ == "CircuitModule"


# ---------------------------------------------------------------------------- errors
def test_construction_errors():
    c = Circuit()
    # The KLay API names its own root setter (the engine's is add_root).
    for no_root in (lambda: c.to_torch_module("real"), c._get_indices):
        with pytest.raises(CircuitError, match="no roots: mark its outputs with set_root"):
            no_root()
    with pytest.raises(CircuitError, match="non-zero"):
        c.literal_node(0)
    for too_large in (2**30, -(2**40), 2**70):
        with pytest.raises(CircuitError, match="at most 1073741823"):
            c.literal_node(too_large)
    with pytest.raises(CircuitError, match="non-zero integer"):
        c.literal_node(1.0)
    other = Circuit()
    foreign = other.literal_node(1)
    with pytest.raises(CircuitError, match="not a node of this circuit"):
        c.and_node([foreign])
    with pytest.raises(CircuitError, match="not a node of this circuit"):
        c.set_root(foreign)
    with pytest.raises(CircuitError, match="not a node"):
        c.or_node([3])
    with pytest.raises(CircuitError, match="list of NodePtr"):
        c.and_node(c.literal_node(1))
    _, sdd = compile_cnf([[1, 2]], 2)
    with pytest.raises(CircuitError, match="both in true_lits and false_lits"):
        c.add_sdd(sdd, true_lits=[1], false_lits=[1])
    with pytest.raises(CircuitError, match="non-zero integer"):
        c.add_sdd(sdd, true_lits=[True])


def test_semiring_errors():
    c = Circuit()
    c.set_root(c.literal_node(1))
    with pytest.raises(SemiringError, match="unknown semiring"):
        c.to_torch_module("tropical")
    with pytest.raises(SemiringError, match="probabilistic"):
        c.to_torch_module("mpe", probabilistic=True)
    with pytest.raises(ValueError):  # KLay raises ValueError: callers catching it still do
        c.to_torch_module("godel", probabilistic=True)


def test_input_errors():
    c = Circuit()
    c.set_root(c.and_node([c.literal_node(1), c.literal_node(-3)]))
    module = c.to_torch_module("real")
    with pytest.raises(ShapeError, match="V >= 3"):
        module(torch.rand(4, 2))
    with pytest.raises(ShapeError):
        module(torch.tensor(0.5))
    with pytest.raises(ShapeError, match="x_neg"):
        module(torch.rand(4, 3), torch.rand(4, 4))
    with pytest.raises(DTypeError):
        module(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(DTypeError):
        module([0.5, 0.5, 0.5])


# ---------------------------------------------------------------------------- KLay's behaviour
def test_documented_differences_hold_for_klay_012(klay):
    """The module docstring's claims about KLay 0.1.2, checked against KLay itself."""
    c = klay.Circuit()
    a, b = c.literal_node(1), c.literal_node(2)
    x = c.and_node([a, b])
    c.set_root(c.or_node([x, c.literal_node(-1)]))
    before = c.nb_nodes()
    depth = [len(klay_module(c, "real").layers) for _ in range(2)]
    assert depth[1] == depth[0] + 1 and c.nb_nodes() > before  # a root layer per call
    module = klay_module(c, "real")
    with pytest.raises(IndexError):  # too few columns: KLay's IndexError, trilay's ShapeError
        module(torch.rand(1))
    with pytest.raises(IndexError):  # [B1, B2, V]: KLay takes [V] or [B, V] only
        module(torch.rand(2, 3, 2))
    with pytest.raises(RuntimeError, match="no roots"):
        d = klay.Circuit()
        d.literal_node(1)
        d.to_torch_module(compile=False)
    # Fixing a literal true and false at once: KLay keeps "true", trilay refuses.
    manager, sdd = compile_cnf([[1, 2]], 2)
    e = klay.Circuit()
    e.add_sdd(sdd, true_lits=[1], false_lits=[1])
    torch.testing.assert_close(
        klay_module(e, "real")(torch.tensor([0.3, 0.6])), torch.tensor([1.0])
    )
    # Probabilistic circuits: batched inputs fail in KLay; its sample() takes no weights.
    pc = klay_module(c, "real", probabilistic=True)
    with pytest.raises(RuntimeError):
        pc(torch.rand(3, 2))
    assert pc.sample().shape == (2,)
    # KLay weighs the edges of chain nodes too (their normalized weight is 1); trilay does not.
    assert sum_layer_sizes(klay_module(chains(klay.Circuit()), "real", probabilistic=True)) == [
        3,
        2,
    ]
    assert sum_layer_sizes(chains(Circuit()).to_torch_module("real", probabilistic=True)) == [2, 0]


def chains(c):
    """A circuit whose OR layers hold chain nodes: ``or(and(1, 2), -1)`` and
    ``and(that, 3)`` as roots (3 is carried to layer 2 by a chain OR, both roots to the root
    layer by chain nodes)."""
    o = c.or_node([c.and_node([c.literal_node(1), c.literal_node(2)]), c.literal_node(-1)])
    c.set_root(o)
    c.set_root(c.and_node([o, c.literal_node(3)]))
    return c


def sum_layer_sizes(pc) -> list[int]:
    return [layer.weights.numel() for layer in pc.layers[1::2]]


def test_structural_check_details_differ_from_klay_012(klay):
    """KLay's smoothness detail always names child 1 and lists only variables 1..n_vars_found;
    trilay names the child and its variables."""
    definition = Definition(12)
    for v in (2, 11, 12):
        definition.add("lit", v)
    definition.add("and", [0, 2])
    definition.add("and", [0, 1])
    definition.add("or", [3, 3, 4])  # children over {2, 12}, {2, 12}, {2, 11}
    definition.roots = [5]
    (theirs,) = klay.check_sdnnf(build(definition, klay.Circuit())).violations
    (ours,) = check_sdnnf(build(definition, Circuit())).violations
    assert theirs.detail == "child 0 scope={2}, child 1 scope={2}, symmetric difference={}"
    assert ours.detail == (
        "child 0 scope={2, 12}, child 2 scope={2, 11}, symmetric difference={11, 12}"
    )
    assert theirs.property == ours.property == "smoothness"
    assert (theirs.ix, theirs.layer) == (ours.ix, ours.layer)


def test_klay_max_gradient_at_ties_defect(klay, file_circuits):
    """KLay's mpe/godel backward is torch.segment_reduce's, which does not split a negative
    upstream gradient between tied children (each gets all of it); trilay splits it evenly, as
    autograd through the naive evaluator (amax/amin) does."""
    ours, theirs, num_vars = file_circuits["sudoku_4"]
    x_pos = random_inputs((3, num_vars), "godel", 8)
    ups = -torch.ones(3, 1, dtype=torch.float64)
    grads = []
    for module in (ours.to_torch_module("godel"), klay_module(theirs, "godel")):
        pos = x_pos.clone().requires_grad_()
        (module(pos) * ups).sum().backward()
        grads.append(pos.grad)
    vtree = Vtree.from_file(str(DATA / "sudoku_4.vtree").encode())
    manager = SddManager.from_vtree(vtree)
    d = sdd_definition(manager.read_sdd_file(str(DATA / "sudoku_4.sdd").encode()), num_vars)
    pos = x_pos.clone().requires_grad_()
    (naive(d, pos, 1 - pos, "godel") * ups).sum().backward()
    assert_same(grads[0], pos.grad)
    assert not torch.allclose(grads[1], pos.grad)  # KLay over-counts at ties
    assert grads[1].abs().sum() > pos.grad.abs().sum()
