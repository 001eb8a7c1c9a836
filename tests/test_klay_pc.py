"""Probabilistic circuits (``to_torch_module(probabilistic=True)``): normalized edge weights,
values and gradients against brute-force enumeration, exact sampling, and the error cases.

Oracles, written here:

- ``naive`` over the circuit *definition* with every OR node a uniform mixture (the module at
  ``weights = 0``): no knowledge of how edges are numbered;
- ``Oracle``: enumerate all ``2^V`` assignments ``x``, evaluate the weighted circuit at the
  indicators of ``x`` node by node (``C_w(x)``; OR nodes mix their children with
  ``softmax(weights[edges of the node])``) and sum ``prod_v p_v(x_v) * C_w(x)``; autograd
  through it gives the weight gradients. It walks KLay's layers of the circuit
  (``Circuit._get_indices()``, which equal klaycircuits' own: tests/test_klay.py), with the
  module's documented edge order, and nothing of the module's own evaluation;
- the exact distribution ``P(x) ∝ prod_v p_v(x_v) * C_w(x)`` for sampling, compared with a
  chi-square test whose power is shown on perturbed distributions.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from scipy.stats import chi2
from test_klay import DATA, Circuit, Definition, build, klaycircuits_012, naive, random_inputs
from trilay.engine.errors import CircuitError, SemiringError, ShapeError

# KLay's modules use torch.jit.script_method, deprecated in torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the sampling tests run a dozen [nodes, 20k] ops per layer, and on
    a shared 2-core runner OpenMP's second thread makes each wait for the scheduler (measured
    10-20x slower under load); the results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- circuits
def random_decomposable(seed: int, num_vars: int, depth: int = 4, num_roots: int = 1):
    """A random decomposable circuit (AND children over disjoint variables), neither smooth
    nor deterministic, with shared sub-circuits."""
    rng = random.Random(seed)
    d = Definition(num_vars)
    cache: dict[frozenset, list[int]] = {}

    def over(scope: list[int], level: int) -> int:
        key = frozenset(scope)
        if cache.get(key) and rng.random() < 0.25:
            return rng.choice(cache[key])
        if len(scope) == 1 or level == 0 or rng.random() < 0.15:
            v = rng.choice(scope)
            node = d.add("lit", v if rng.random() < 0.5 else -v)
        elif rng.random() < 0.5:
            shuffled = rng.sample(scope, len(scope))
            cut = sorted(rng.sample(range(1, len(scope)), min(len(scope) - 1, rng.randint(1, 2))))
            blocks = [shuffled[a:b] for a, b in zip([0, *cut], [*cut, len(scope)], strict=True)]
            node = d.add("and", [over(block, level - 1) for block in blocks])
        else:
            node = d.add("or", [over(scope, level - 1) for _ in range(rng.randint(2, 3))])
        cache.setdefault(key, []).append(node)
        return node

    variables = list(range(1, num_vars + 1))
    d.roots = [d.add("or", [over(variables, depth) for _ in range(3)]) for _ in range(num_roots)]
    return d


class Oracle:
    """Brute-force enumeration of a probabilistic circuit (see the module docstring)."""

    def __init__(self, d: Definition):
        ixs_in, ixs_out = build(d, Circuit())._get_indices()
        self.num_vars = v = d.num_vars
        # KLay's layers: AND layers first, then alternating (Circuit._get_indices).
        self.layers = [
            ("and" if k % 2 == 0 else "or", child.tolist(), offsets.tolist())
            for k, (child, offsets) in enumerate(zip(ixs_in, ixs_out, strict=True))
        ]
        self.assignments = torch.tensor(list(itertools.product([0, 1], repeat=v)), dtype=torch.bool)
        x = self.assignments.double().t()
        self.leaves = input_row(x, 1 - x)
        # The edge order the module documents: OR nodes with two or more children, layer by
        # layer, node by node, each node's edges in order.
        self.or_fan_ins = [
            offsets[i + 1] - offsets[i]
            for kind, _, offsets in self.layers
            if kind == "or"
            for i in range(len(offsets) - 1)
            if offsets[i + 1] - offsets[i] >= 2
        ]
        self.num_edges = sum(self.or_fan_ins)

    def node_values(self, weights: torch.Tensor | None, leaves: torch.Tensor) -> list[list]:
        """Every layer's node values of the weighted circuit at the input row ``leaves`` (with
        ``weights=None``, of the plain circuit: OR nodes sum their children)."""
        values = [list(leaves)]
        edge = 0
        for kind, child, offsets in self.layers:
            out = []
            for i in range(len(offsets) - 1):
                kids = [values[-1][c] for c in child[offsets[i] : offsets[i + 1]]]
                if kind == "and":
                    out.append(math.prod(kids))
                elif len(kids) == 1:
                    out.append(kids[0])
                elif weights is None:
                    out.append(sum(kids))
                else:
                    mix = torch.softmax(weights[edge : edge + len(kids)], dim=0)
                    out.append(sum(m * k for m, k in zip(mix, kids, strict=True)))
                    edge += len(kids)
            values.append(out)
        assert weights is None or edge == weights.numel()
        return values

    def edges(self) -> list[tuple[int, int, int]]:
        """The weighted edges in the module's order: ``(k, c, n)``, the child in row ``c`` of
        ``node_values``'s layer ``k`` under the ``n``-th weighted OR node."""
        out, node = [], 0
        for k, (kind, child, offsets) in enumerate(self.layers):
            for i in range(len(offsets) - 1):
                if kind == "or" and offsets[i + 1] - offsets[i] >= 2:
                    out += [(k, c, node) for c in child[offsets[i] : offsets[i + 1]]]
                    node += 1
        return out

    def circuit_at_indicators(self, weights: torch.Tensor) -> torch.Tensor:
        """``C_w(x)`` for every assignment: ``[2^V, roots]``."""
        return self.circuit_at(weights, self.leaves.to(weights.dtype))

    def circuit_at(self, weights: torch.Tensor, leaves: torch.Tensor) -> torch.Tensor:
        """The weighted circuit at KLay's input row ``leaves: [2V + 2, n]`` (false, true,
        ``+1, -1, +2, -2, ...``): ``[n, roots]``."""
        return torch.stack(self.node_values(weights, leaves)[-1], dim=-1)

    def joint(self, weights, probs) -> torch.Tensor:
        """``prod_v p_v(x_v) * C_w(x)``: ``probs [..., V]`` -> ``[..., 2^V, roots]``."""
        x = self.assignments
        lit = torch.where(x, probs[..., None, :], 1 - probs[..., None, :]).prod(-1)
        return lit[..., None] * self.circuit_at_indicators(weights)

    def value(self, weights, probs) -> torch.Tensor:
        return self.joint(weights, probs).sum(-2)


def input_row(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """KLay's input row of ``pos, neg: [V, n]``: ``[2V + 2, n]``, false, true, then ``+v, -v``
    for each variable."""
    literals = torch.stack([pos, neg], dim=1).reshape(-1, pos.shape[1])
    return torch.cat([torch.zeros(1, pos.shape[1]), torch.ones(1, pos.shape[1]), literals])


def pc_and_oracle(d: Definition, semiring: str, seed: int = 0):
    pc = build(d, Circuit()).to_torch_module(semiring, probabilistic=True).double()
    with torch.no_grad():
        pc.weights.copy_(
            2 * torch.randn(pc.weights.shape, generator=torch.Generator().manual_seed(seed))
        )
    return pc, Oracle(d)


def probs_of(x_pos, semiring):
    return x_pos.exp() if semiring == "log" else x_pos


# ---------------------------------------------------------------------------- weights
@pytest.mark.parametrize("seed", range(3))
def test_edge_weights_are_normalized_per_or_node(seed):
    d = random_decomposable(seed, num_vars=5)
    pc, oracle = pc_and_oracle(d, "real", seed)
    weights, node = pc.edge_weights().detach(), pc.edge_node.tolist()
    assert weights.numel() == oracle.num_edges and (weights > 0).all()
    # Each OR node's edges are contiguous, one group per OR node of the compiled circuit.
    groups = [list(g) for _, g in itertools.groupby(range(len(node)), key=lambda e: node[e])]
    assert sorted(node) == node and len(groups) == len(set(node))
    assert [len(g) for g in groups] == oracle.or_fan_ins
    for g in groups:
        torch.testing.assert_close(weights[g].sum(), torch.tensor(1.0, dtype=weights.dtype))
        torch.testing.assert_close(weights[g], torch.softmax(pc.weights.detach()[g], 0))
    torch.testing.assert_close(pc.log_edge_weights().exp(), pc.edge_weights())


@pytest.mark.parametrize("semiring", ["real", "log"])
@pytest.mark.parametrize("seed", range(4))
def test_uniform_weights_against_definition(seed, semiring):
    """At ``weights = 0`` every OR node is the mean of its children: the naive evaluator of the
    definition, no edge numbering needed."""
    d = random_decomposable(10 + seed, num_vars=5, num_roots=2)
    pc = build(d, Circuit()).to_torch_module(semiring, probabilistic=True).double()
    with torch.no_grad():
        pc.weights.zero_()
    p = random_inputs((4, 5), "real", seed)
    expected = naive(d, p, 1 - p, "uniform_mixture")
    x_pos = p.log() if semiring == "log" else p
    out = pc(x_pos)
    torch.testing.assert_close(out.exp() if semiring == "log" else out, expected)


@pytest.mark.parametrize("semiring", ["real", "log"])
@pytest.mark.parametrize("seed", range(4))
def test_value_and_gradients_against_enumeration(seed, semiring):
    d = random_decomposable(20 + seed, num_vars=5, num_roots=2)
    pc, oracle = pc_and_oracle(d, semiring, seed)
    for shape in [(5,), (3, 5), (2, 2, 5)]:
        x_pos = random_inputs(shape, semiring, seed).requires_grad_()
        pc.zero_grad()
        out = pc(x_pos)
        cot = torch.rand(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        (out * cot).sum().backward()
        w = pc.weights.detach().clone().requires_grad_()
        x_ref = x_pos.detach().clone().requires_grad_()
        ref = oracle.value(w, probs_of(x_ref, semiring))
        ref = ref.log() if semiring == "log" else ref
        (ref * cot).sum().backward()
        assert out.shape == shape[:-1] + (2,)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(pc.weights.grad, w.grad)
        torch.testing.assert_close(x_pos.grad, x_ref.grad)


def test_value_with_explicit_negative_weights():
    """``x_neg`` given: literal ``-v`` reads it (weights with ``p_v + q_v != 1``, where the
    enumeration identity does not hold for a non-smooth circuit): the oracle's node-by-node
    evaluation at those literal weights."""
    d = random_decomposable(30, num_vars=4)
    pc, oracle = pc_and_oracle(d, "real", 3)
    p, q = random_inputs((3, 4), "real", 1), random_inputs((3, 4), "real", 2)
    leaves = input_row(p.t(), q.t()).double()
    torch.testing.assert_close(pc(p, q), oracle.circuit_at(pc.weights.detach(), leaves))
    log_pc = build(d, Circuit()).to_torch_module("log", probabilistic=True).double()
    log_pc.load_state_dict(pc.state_dict())
    torch.testing.assert_close(log_pc(p.log(), q.log()).exp(), pc(p, q))


def klay_sum_edges(klay_pc) -> list[torch.Tensor]:
    """Per layer of KLay's probabilistic module, which of its edges belong to OR nodes with two
    or more children (the edges trilay weighs; KLay's layers are trilay's: test_klay.py)."""
    return [
        (torch.diff(layer.offsets) >= 2)[layer.ix_out] if hasattr(layer, "weights") else None
        for layer in klay_pc.layers
    ]


def set_klay_weights(klay_pc, pc) -> None:
    """Give KLay's module ``pc``'s edge weights (chain edges keep theirs: their normalized
    weight is 1 anyway)."""
    with torch.no_grad():
        for ref, mine, edges in zip(
            klay_pc.layers, pc.layers, klay_sum_edges(klay_pc), strict=True
        ):
            if edges is not None:
                ref.weights[edges] = mine.weights.detach().to(ref.weights.dtype)


def klay_edge_weights(klay_pc) -> torch.Tensor:
    """KLay's normalized weights of the edges trilay weighs, in trilay's order."""
    layers = zip(klay_pc.layers, klay_sum_edges(klay_pc), strict=True)
    return torch.cat([ref.get_edge_weights()[e] for ref, e in layers if e is not None])


@pytest.fixture
def klay():
    return klaycircuits_012()


def test_klay_parity_at_equal_weights(klay):
    """KLay's probabilistic circuit with trilay's random edge weights, on benchmark circuits: the
    same values. KLay takes [V] inputs only here."""
    for name in ("sudoku_4", "road_r"):
        for semiring in ("real", "log"):
            theirs, ours = klay.Circuit(), Circuit()
            theirs.add_sdd_from_file(str(DATA / f"{name}.sdd"))
            ours.add_sdd_from_file(DATA / f"{name}.sdd")
            ref = theirs.to_torch_module(semiring, probabilistic=True, compile=False)
            mine = ours.to_torch_module(semiring, probabilistic=True)
            set_klay_weights(ref, mine)
            x = random_inputs((mine.num_vars,), semiring, 4, dtype=torch.float32)
            expected = ref(x)
            scale = expected.abs().max().item()
            torch.testing.assert_close(mine(x), expected, rtol=1e-5, atol=1e-5 * scale)
            torch.testing.assert_close(klay_edge_weights(ref), mine.edge_weights())


# ---------------------------------------------------------------------------- to_pc, condition
def expected_edge_weights(oracle, values, prior=None) -> torch.Tensor:
    """Each weighted edge's child value (times its prior weight), normalized per OR node."""
    edges = oracle.edges()
    raw = torch.stack([values[k][c] for k, c, _ in edges])
    raw = raw if prior is None else raw * prior
    node = torch.tensor([n for _, _, n in edges])
    return raw / torch.zeros(int(node.max()) + 1, dtype=raw.dtype).index_add(0, node, raw)[node]


@pytest.mark.parametrize("semiring", ["real", "log"])
def test_to_pc_weighs_children_by_their_values(semiring):
    """``to_pc(x)``: each OR node's normalized edge weights are its children's values at ``x``
    over their sum (the oracle's plain node-by-node evaluation)."""
    d = random_decomposable(80, num_vars=5, num_roots=2)
    plain = build(d, Circuit()).to_torch_module(semiring).double()
    p = random_inputs((5,), "real", 3)
    pc = plain.to_pc(p.log() if semiring == "log" else p)
    assert isinstance(pc, type(build(d, Circuit()).to_torch_module(semiring, probabilistic=True)))
    assert pc.semiring == semiring and pc.is_probabilistic() and not plain.is_probabilistic()
    oracle = Oracle(d)
    values = oracle.node_values(None, input_row(p[:, None], 1 - p[:, None]))
    expected = expected_edge_weights(oracle, [[v[0] for v in layer] for layer in values])
    torch.testing.assert_close(pc.edge_weights(), expected)
    views = torch.cat([layer.get_edge_weights() for layer in pc.layers[1::2]])
    torch.testing.assert_close(views, expected)


@pytest.mark.parametrize("semiring", ["real", "log"])
def test_condition_against_enumeration(semiring):
    """``condition(x_pos, x_neg)`` on 0/1 evidence (integer tensors, as KLay's tests pass):
    every edge weight times its child's value at the evidence, renormalized; it returns the
    root values at the evidence. The conditioned circuit samples only assignments that agree
    with the evidence on the variables its branches fix."""
    d = random_decomposable(81, num_vars=5, num_roots=2)
    pc, oracle = pc_and_oracle(d, semiring, 2)
    pos, neg = torch.tensor([1, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 1])  # x1, not x2
    prior = pc.edge_weights().detach()
    values = oracle.node_values(pc.weights.detach(), input_row(pos[:, None], neg[:, None]).double())
    values = [[v[0] for v in layer] for layer in values]
    evidence = (pos, neg) if semiring == "real" else (pos.double().log(), neg.double().log())
    roots = pc.condition(*evidence)
    expected_roots = torch.stack(values[-1])
    torch.testing.assert_close(roots, expected_roots.log() if semiring == "log" else expected_roots)
    torch.testing.assert_close(pc.edge_weights(), expected_edge_weights(oracle, values, prior))


def test_condition_and_to_pc_parity(klay):
    """KLay's ``to_pc`` and ``condition`` give the same edge weights."""
    d = random_decomposable(82, num_vars=5)
    for semiring in ("real", "log"):
        x = random_inputs((5,), semiring, 1, dtype=torch.float32)
        mine = build(d, Circuit()).to_torch_module(semiring).to_pc(x)
        ref = build(d, klay.Circuit()).to_torch_module(semiring, compile=False).to_pc(x)
        torch.testing.assert_close(klay_edge_weights(ref), mine.edge_weights())
        pc = build(d, Circuit()).to_torch_module(semiring, probabilistic=True)
        ref = build(d, klay.Circuit()).to_torch_module(semiring, probabilistic=True, compile=False)
        set_klay_weights(ref, pc)
        y = random_inputs((5,), semiring, 2, dtype=torch.float32)
        pc.condition(x, y)
        ref.condition(x, y)
        torch.testing.assert_close(klay_edge_weights(ref), pc.edge_weights())


def test_condition_keeps_unreachable_nodes(klay):
    """An OR node whose children are all 0 under the evidence keeps its weights in
    ``condition`` and gets uniform ones in ``to_pc``, and the circuit stays finite; KLay sets
    their raw weights to -inf, which its ``log`` semiring turns into NaN outputs (a documented
    difference). Evidence of probability 0 is an error."""
    definition = Definition(3)
    x1, x2, x3, n3 = (definition.add("lit", v) for v in (1, 2, 3, -3))
    inner = definition.add("or", [definition.add("and", [x2, x3]), definition.add("and", [x2, n3])])
    definition.roots = [definition.add("or", [definition.add("and", [x1, inner]), n3])]
    inner_edges = [e for e, (k, _, _) in enumerate(Oracle(definition).edges()) if k == 1]
    evidence = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])  # x2 is false
    x = torch.rand(3)
    for semiring in ("real", "log"):
        pos, neg, y = (t if semiring == "real" else t.log() for t in (*evidence, x))
        pc = build(definition, Circuit()).to_torch_module(semiring, probabilistic=True)
        before = pc.edge_weights().detach()
        pc.condition(pos, neg)
        after = pc.edge_weights().detach()
        assert torch.isfinite(after).all() and torch.isfinite(pc(y)).all()
        torch.testing.assert_close(after[inner_edges], before[inner_edges])
        to_pc = build(definition, Circuit()).to_torch_module(semiring).to_pc(pos, neg)
        torch.testing.assert_close(to_pc.edge_weights()[inner_edges], torch.full((2,), 0.5))
        assert torch.isfinite(to_pc(y)).all()
    ref = build(definition, klay.Circuit()).to_torch_module("log", True, compile=False)
    ref.condition(*(t.log() for t in evidence))
    assert torch.isnan(ref(x.log())).all()
    pc = build(definition, Circuit()).to_torch_module("real", probabilistic=True)
    with pytest.raises(CircuitError, match="value 0"):
        pc.condition(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 0]))
    with pytest.raises(ShapeError, match="one weight vector"):
        pc.condition(torch.rand(2, 3))
    with pytest.raises(SemiringError):
        build(definition, Circuit()).to_torch_module("godel").to_pc(evidence[0])


# ---------------------------------------------------------------------------- sampling
N_SAMPLES = 20_000
ALPHA = 1e-4  # the chance that an exact sampler fails the test, for a fresh seed


def codes(samples: torch.Tensor) -> torch.Tensor:
    """``[..., V]`` bool -> the assignment's row in ``Oracle.assignments`` (first var = MSB)."""
    v = samples.shape[-1]
    return (samples.long() * (2 ** torch.arange(v - 1, -1, -1))).sum(-1)


def chi_square(samples: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic of ``samples [N, V]`` against ``probs [2^V]`` and its critical value
    at ``ALPHA``. Impossible assignments must never be drawn (asserted)."""
    counts = torch.bincount(codes(samples), minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "the sampler drew an assignment of probability 0"
    expected = probs[support] * counts.sum()
    stat = ((counts[support] - expected) ** 2 / expected).sum().item()
    return stat, chi2.ppf(1 - ALPHA, int(support.sum()) - 1)


def exact_distribution(oracle, pc, probs, root=0) -> torch.Tensor:
    joint = oracle.joint(pc.weights.detach(), probs)[..., root]
    return joint / joint.sum(-1, keepdim=True)


def draw_from(probs: torch.Tensor, oracle: Oracle, seed: int) -> torch.Tensor:
    rows = torch.multinomial(probs, N_SAMPLES, True, generator=torch.Generator().manual_seed(seed))
    return oracle.assignments[rows]


@pytest.mark.parametrize("seed", range(2))
def test_sample_is_exact(seed):
    d = random_decomposable(40 + seed, num_vars=4)
    pc, oracle = pc_and_oracle(d, "real", seed)
    p = torch.full((4,), 0.5, dtype=torch.float64)
    exact = exact_distribution(oracle, pc, p)
    samples = pc.sample(N_SAMPLES, generator=torch.Generator().manual_seed(seed))
    assert samples.shape == (N_SAMPLES, 4) and samples.dtype == torch.bool
    stat, critical = chi_square(samples, exact)
    assert stat < critical
    # The test has power: an exact sampler of slightly wrong distributions fails it. Wrong
    # ones: a 5% uniform mixture over the support, the circuit's weights ignored (KLay's
    # sampler with a flat prior), and the circuit's weights uniform.
    support = (exact > 0).double()
    flat_w = torch.zeros_like(pc.weights)
    wrong = [
        0.95 * exact + 0.05 * support / support.sum(),
        oracle.joint(flat_w, p)[:, 0] / oracle.joint(flat_w, p)[:, 0].sum(),
    ]
    for q in wrong:
        assert chi_square_against(draw_from(q, oracle, seed), exact) > critical


def chi_square_against(samples, probs) -> float:
    """Pearson's statistic, with samples outside the support counted as a certain rejection."""
    counts = torch.bincount(codes(samples), minlength=probs.numel()).double()
    support = probs > 0
    if counts[~support].sum() > 0:
        return math.inf
    expected = probs[support] * counts.sum()
    return ((counts[support] - expected) ** 2 / expected).sum().item()


@pytest.mark.parametrize("semiring", ["real", "log"])
def test_sample_under_batched_literal_weights(semiring):
    """``x_pos: [B, V]`` -> ``[N, B, V]``; row ``b`` follows ``P(x) ∝ prod p_b(x) C_w(x)``
    (and not the other row's distribution); the second root samples its own distribution."""
    d = random_decomposable(50, num_vars=4, num_roots=2)
    pc, oracle = pc_and_oracle(d, semiring, 5)
    x_pos = random_inputs((2, 4), semiring, 6)
    probs = probs_of(x_pos, semiring)
    root = 1 if semiring == "log" else 0
    n = N_SAMPLES // 2
    samples = pc.sample(n, x_pos, root=root, generator=torch.Generator().manual_seed(root))
    assert samples.shape == (n, 2, 4)
    exact = exact_distribution(oracle, pc, probs, root)
    for b in range(2):
        stat, critical = chi_square(samples[:, b], exact[b])
        assert stat < critical
        assert chi_square_against(samples[:, b], exact[1 - b]) > critical


def test_sample_respects_deterministic_literal_weights():
    """Probability 0/1 literal weights: variables pinned, impossible models never drawn."""
    d = random_decomposable(60, num_vars=4)
    pc, oracle = pc_and_oracle(d, "real", 7)
    # Pin the first two variables to their values in one of the circuit's models.
    model = oracle.assignments[oracle.circuit_at_indicators(pc.weights.detach())[:, 0] > 0][0]
    x_pos = torch.tensor([float(model[0]), float(model[1]), 0.5, 0.3], dtype=torch.float64)
    exact = exact_distribution(oracle, pc, x_pos)
    samples = pc.sample(5_000, x_pos, generator=torch.Generator().manual_seed(0))
    assert (samples[:, :2] == model[:2]).all()
    stat, critical = chi_square(samples, exact)
    assert stat < critical


def test_sample_shapes_and_reproducibility():
    d = random_decomposable(70, num_vars=5)
    pc = build(d, Circuit()).to_torch_module("log", probabilistic=True)
    assert pc.sample().shape == (5,)  # KLay's sample(): one assignment
    assert pc.sample(7).shape == (7, 5)
    x_pos = random_inputs((3, 2, 6), "log", 0)  # one extra column, ignored
    assert pc.sample(4, x_pos).shape == (4, 3, 2, 5)
    assert pc.sample(None, x_pos).shape == (3, 2, 5)
    first = pc.sample(100, generator=torch.Generator().manual_seed(3))
    again = pc.sample(100, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_sample_errors():
    c = Circuit()
    x = c.and_node([c.literal_node(1), c.literal_node(2)])
    c.set_root(c.or_node([x, c.and_node([c.literal_node(1), c.literal_node(-2)])]))
    c.set_root(c.false_node())
    pc = c.to_torch_module("real", probabilistic=True)
    for root in (2, -1):
        with pytest.raises(CircuitError, match="not one of"):
            pc.sample(3, root=root)
    with pytest.raises(CircuitError, match="probability 0"):
        pc.sample(3, torch.tensor([0.0, 0.5]))  # x1 is false: no model left
    with pytest.raises(CircuitError, match="probability 0"):
        pc.sample(3, root=1)  # the false root
    with pytest.raises(ShapeError):
        pc.sample(3, torch.tensor([0.5]))
    # num_samples is the leading dimension: KLay-style sample(-5) used to fail deep inside
    # torch ("numel: integer multiplication overflow") and sample(-1) to draw one sample.
    for count in (-5, -1, 0, 2.5, True, "3"):
        with pytest.raises(ShapeError, match="num_samples"):
            pc.sample(count)
    ok = pc.sample(2000, torch.tensor([0.5, 0.9]), generator=torch.Generator().manual_seed(0))
    assert ok[:, 0].all()  # every model has x1


def test_probabilistic_semirings_and_no_or_nodes():
    c = Circuit()
    c.set_root(c.and_node([c.literal_node(1), c.literal_node(-2)]))
    with pytest.raises(SemiringError):
        c.to_torch_module("godel", probabilistic=True)
    pc = c.to_torch_module("real", probabilistic=True)  # no OR node: no weights
    assert pc.weights.numel() == 0
    x = torch.tensor([[0.3, 0.6]])
    torch.testing.assert_close(pc(x), torch.tensor([[0.3 * 0.4]]))
    samples = pc.sample(50)
    assert samples[:, 0].all() and not samples[:, 1].any()
