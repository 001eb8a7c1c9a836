"""The numba CPU kernels (``backend="numba"``, what ``auto`` runs on CPU tensors) against the
oracles: brute-force enumeration of models, PySDD's counts and literal derivatives, the
PyTorch path (``backend="torch"``), autograd of the brute-force oracle and ``gradcheck``."""

from __future__ import annotations

import math
from contextlib import closing

import numba
import pytest
import torch
from conftest import DATA, brute_force, models_of_cnf, random_cnf, random_weights
from test_kernels import hub_circuit, random_dag
from trilay.engine import Circuit
from trilay.engine.errors import DeviceError, MemoryBudgetError, TransformError, ValueRangeError
from trilay.kernels import cpu

SEMIRINGS = ["real", "log", "mpe", "mpe_log", "godel"]
FUZZY = ["fuzzy_godel", "fuzzy_product", "fuzzy_lukasiewicz"]
LOG_SPACE = ("log", "mpe_log")
MAX_SEMIRINGS = ("mpe", "mpe_log", "godel", "fuzzy_godel")
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}

CLAUSES = random_cnf(6, 5, seed=3)
MODELS = [models_of_cnf(CLAUSES, 6), models_of_cnf([[2]], 6), models_of_cnf([[-4], [5]], 6)]


def cnf_circuit(smooth=True):
    """Three roots over 6 variables: a random 3-CNF, the literal 2 (a root that is a leaf) and
    ``-4 AND 5``."""
    c = Circuit(6)
    c.add_cnf(CLAUSES)
    c.add_root(c.literal(2))
    c.add_root(c.conjoin([c.literal(-4), c.literal(5)]))
    return c.compile(smooth=smooth)


def oracle(pos, neg, semiring):
    """``[B, 3]`` by enumerating the models of each root."""
    return torch.stack([brute_force(m, pos, neg, semiring) for m in MODELS], dim=-1)


def complement(pos, semiring):
    return torch.log(-torch.expm1(pos)) if semiring in LOG_SPACE else 1 - pos


def weights(batch, semiring, seed, dtype=torch.float64, extremes=True):
    """Literal weights for ``semiring``: probabilities with exact 0s and 1s (``extremes``), or
    their logs (0 becomes ``-inf``)."""
    p = random_weights(batch, 6, seed, dtype=dtype, extremes=extremes)
    return p.log() if semiring in LOG_SPACE else p


def grads_of(module, x, neg=None, weight=None):
    """``module(x, neg)`` and the gradients of ``(out * weight).sum()`` w.r.t. ``x`` (and
    ``neg``)."""
    x = x.clone().requires_grad_(True)
    inputs = [x]
    if neg is not None:
        neg = neg.clone().requires_grad_(True)
        inputs.append(neg)
    out = module(x, neg)
    weight = torch.ones_like(out) if weight is None else weight
    return out, torch.autograd.grad((out * weight).sum(), inputs)


def test_auto_runs_the_numba_kernels_on_the_cpu(monkeypatch):
    compiled = cnf_circuit()
    module = compiled.module("real")
    assert module.backend_for(torch.device("cpu")) == "numba"
    assert module.backend_for(torch.device("meta")) == "torch"
    calls = []
    launch = cpu.circuit_fwd
    monkeypatch.setattr(cpu, "circuit_fwd", lambda *a: calls.append(1) or launch(*a))
    module(weights(3, "real", 0))
    assert calls == [1]


# ---------------------------------------------------------------------------- values, gradients
@pytest.mark.parametrize("semiring", SEMIRINGS)
@pytest.mark.parametrize("batch", [0, 1, 7, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_against_brute_force(semiring, batch, dtype):
    """Exact 0s and 1s included (zero factors; ``-inf`` in log space), default and explicit
    ``neg``; inference writes the same bits as a forward that prepares a backward."""
    module = cnf_circuit().module(semiring, backend="numba")
    x = weights(batch, semiring, batch, dtype=dtype)
    expected = oracle(x.double(), complement(x.double(), semiring), semiring)
    out = module(x)
    assert out.dtype == dtype and out.shape == (batch, 3)
    torch.testing.assert_close(out.double(), expected, **TOL[dtype])
    neg = weights(batch, semiring, batch + 1, dtype=dtype, extremes=False)
    torch.testing.assert_close(
        module(x, neg).double(), oracle(x.double(), neg.double(), semiring), **TOL[dtype]
    )
    trained, _ = grads_of(module, x)
    torch.testing.assert_close(trained, out, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "mpe_log"])
@pytest.mark.parametrize("batch", [1, 7, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_against_autograd_of_brute_force(semiring, batch, dtype):
    """``d (out * w).sum()`` w.r.t. ``pos`` (default ``neg``) and w.r.t. ``pos`` and ``neg``:
    the brute-force oracle's autograd gradient (weights away from 0 and 1, where the
    complement's derivative is finite and the most probable model unique)."""
    module = cnf_circuit().module(semiring, backend="numba")
    x = weights(batch, semiring, 10 + batch, dtype=dtype, extremes=False)
    neg = weights(batch, semiring, 20 + batch, dtype=dtype, extremes=False)
    weight = torch.rand(batch, 3, generator=torch.Generator().manual_seed(batch), dtype=dtype)
    close = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for given in (None, neg):
        _, got = grads_of(module, x, given, weight)
        ref = x.double().requires_grad_(True)
        inputs = [ref]
        ref_neg = complement(ref, semiring)
        if given is not None:
            ref_neg = given.double().requires_grad_(True)
            inputs.append(ref_neg)
        expected = torch.autograd.grad((oracle(ref, ref_neg, semiring) * weight).sum(), inputs)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g.double(), e, **close)


@pytest.mark.parametrize("semiring", SEMIRINGS + FUZZY)
@pytest.mark.parametrize(("batch", "dtype"), [(1, torch.float32), (7, torch.float64)])
def test_random_circuits_against_the_torch_path(semiring, batch, dtype):
    """Random multi-rooted DAGs whose nodes read rows of many lower layers, every semiring and
    the fuzzy reductions, exact 0s and 1s in the weights: the PyTorch path's values and
    gradients (max / min: tied children get the whole gradient here and share it there, so
    the gradients' totals agree)."""
    smooth = semiring in ("mpe", "mpe_log", "godel")
    compiled = random_dag(seed=batch, sharing=0.5).compile(smooth=smooth)
    weight = torch.rand(batch, compiled.num_roots, dtype=dtype)
    close = TOL[dtype] if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    # Exact 0s and 1s tie a literal with its complement: there the max semirings' gradients
    # differ (routed vs split) even in total, so they are compared without them.
    for extremes in (True, False):
        x = random_weights(batch, compiled.num_vars, 8, dtype=dtype, extremes=extremes)
        x = x.log() if semiring in LOG_SPACE else x
        out, (g,) = grads_of(compiled.module(semiring, backend="numba"), x, weight=weight)
        ref, (g_ref,) = grads_of(compiled.module(semiring, backend="torch"), x, weight=weight)
        torch.testing.assert_close(out, ref, **close)
        assert not g.isnan().any()
        if semiring not in MAX_SEMIRINGS:
            torch.testing.assert_close(g, g_ref, **close)
        elif not extremes:
            torch.testing.assert_close(g.sum(), g_ref.sum(), **close)


@pytest.mark.parametrize("semiring", FUZZY)
def test_smoothed_fuzzy_circuits_against_the_torch_path(semiring):
    """Smoothing makes each variable's tautology ``pos OR neg`` a leaf, reduced by the OR
    reduction (here prob_sum, lukasiewicz_or, max) and differentiated through it: the PyTorch
    path's values and gradients w.r.t. ``pos`` and ``neg``."""
    compiled = random_dag(seed=5, nodes=30, sharing=0.5).compile(smooth=True)
    x = random_weights(4, compiled.num_vars, 6, extremes=False)
    neg = random_weights(4, compiled.num_vars, 7, extremes=False)
    assert (x + neg > 1).any() and (x + neg < 1).any()  # both sides of lukasiewicz_or's clamp
    out, grads = grads_of(compiled.module(semiring, backend="numba"), x, neg)
    ref, ref_grads = grads_of(compiled.module(semiring, backend="torch"), x, neg)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["sudoku_4", "road_r"])
def test_counts_and_derivatives_against_pysdd(name):
    """Weighted model counts and the derivatives w.r.t. every literal's weight (smoothed
    circuit, ``pos`` and ``neg`` independent): PySDD's ``propagate`` and
    ``literal_derivative``, in the real semiring and in log space
    (``d log W / d log w = w * dW/dw / W``)."""
    from pysdd.sdd import SddManager, Vtree

    manager = SddManager.from_vtree(Vtree.from_file(str(DATA / f"{name}.vtree").encode()))
    root = manager.read_sdd_file(str(DATA / f"{name}.sdd").encode())
    c = Circuit()
    c.add_sdd_file(DATA / f"{name}.sdd", DATA / f"{name}.vtree")
    compiled = c.compile()
    V = compiled.num_vars
    pos = random_weights(3, V, 1, extremes=False) * 1.5
    neg = random_weights(3, V, 2, extremes=False)
    unchecked = dict(backend="numba", validate=False)  # weights above 1: not probabilities
    real, (g_pos, g_neg) = grads_of(compiled.module("real", **unchecked), pos, neg)
    log, (l_pos, l_neg) = grads_of(compiled.module("log", **unchecked), pos.log(), neg.log())
    for row in range(3):
        wmc = root.wmc(log_mode=False)
        for v in range(1, V + 1):
            wmc.set_literal_weight(manager.literal(v), pos[row, v - 1].item())
            wmc.set_literal_weight(manager.literal(-v), neg[row, v - 1].item())
        total = wmc.propagate()
        d_pos = torch.tensor([wmc.literal_derivative(v) for v in range(1, V + 1)], dtype=pos.dtype)
        d_neg = torch.tensor([wmc.literal_derivative(-v) for v in range(1, V + 1)], dtype=pos.dtype)
        assert real[row, 0].item() == pytest.approx(total, rel=1e-10)
        assert log[row, 0].item() == pytest.approx(math.log(total), rel=1e-10)
        torch.testing.assert_close(g_pos[row], d_pos, rtol=1e-10, atol=0)
        torch.testing.assert_close(g_neg[row], d_neg, rtol=1e-10, atol=0)
        torch.testing.assert_close(l_pos[row], pos[row] * d_pos / total, rtol=1e-10, atol=0)
        torch.testing.assert_close(l_neg[row], neg[row] * d_neg / total, rtol=1e-10, atol=0)


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "fuzzy_product", "fuzzy_lukasiewicz"])
def test_gradcheck_float64(semiring):
    smooth = semiring == "mpe"
    compiled = random_dag(seed=3, num_vars=5, nodes=12, sharing=0.5).compile(smooth=smooth)
    module = compiled.module(semiring, backend="numba")
    x = random_weights(2, 5, 11, extremes=False)
    neg = random_weights(2, 5, 12, extremes=False)
    if semiring == "log":
        x, neg = x.log(), neg.log()
    if semiring == "fuzzy_lukasiewicz":  # sums away from the clamps' kinks
        x, neg = x / 4, neg / 4
    assert torch.autograd.gradcheck(module, (x.requires_grad_(True),))
    assert torch.autograd.gradcheck(module, (x, neg.requires_grad_(True)))


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([1e-30, 1e-30], torch.float32, [1e-30, 1e-30]),  # the product underflows to 0
        ([5e-324, 0.5], torch.float64, [0.5, 5e-324]),  # ... to 0 as well
        ([1e-20, 1e-20, 3.0], torch.float32, [3e-20, 3e-20, 1e-40]),  # to a subnormal
        ([1e30, 1e30], torch.float32, [1e30, 1e30]),  # overflows to inf
        ([1e-30, 1e-30, 1e30, 0.5], torch.float32, [5e-1, 5e-1, 5e-61, 1e-30]),
    ],
)
def test_product_derivative_where_the_product_underflows(values, dtype, expected):
    """The derivative of a product is the product of the other factors whenever that is
    representable, however small or large the product itself (recomputed, mantissas and
    exponents apart, where ``a / x`` lost digits). The last case's true derivatives (the
    third, 5e-61, is 0 in float32) pass through a partial product below float32's range."""
    n = len(values)
    c = Circuit(n)
    c.add_root(c.conjoin([c.literal(v) for v in range(1, n + 1)]))
    module = c.compile(smooth=False).module(
        "real", backend="numba", validate=False
    )  # weights above 1
    _, (g,) = grads_of(module, torch.tensor([values], dtype=dtype))
    truth = torch.tensor(expected, dtype=torch.float64).to(dtype).double()
    close = dict(rtol=1e-6, atol=2 * torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps)
    torch.testing.assert_close(g[0].double(), truth, **close)


def test_product_and_logsumexp_exact_with_zeros_and_minus_infinity():
    """Zero factors (a product with one zero passes the others' product to it, with two
    nothing), ``-inf`` terms (``exp(-inf - out) = 0``) and all ``-inf`` segments (``-inf``,
    gradient 0, no NaN): against the PyTorch path, whose rules are the same."""
    c = Circuit(4)
    a, b, d = c.literal(1), c.literal(2), c.literal(4)
    c.add_root(c.conjoin([a, b, c.literal(3)]))
    c.add_root(c.disjoin([c.conjoin([a, b]), c.conjoin([c.literal(-1), d])]))
    compiled = c.compile(smooth=False)
    p = torch.tensor([[0.0, 0.5, 0.25, 0.5], [0.0, 0.0, 0.5, 1.0], [1.0, 1.0, 0.0, 0.0]])
    for semiring, x in (("real", p), ("log", p.log())):
        x = x.double()
        neg = complement(x, semiring)
        out, g = grads_of(compiled.module(semiring, backend="numba"), x, neg)
        ref, g_ref = grads_of(compiled.module(semiring, backend="torch"), x, neg)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        for a_, b_ in zip(g, g_ref, strict=True):
            assert not a_.isnan().any()
            torch.testing.assert_close(a_, b_, rtol=1e-15, atol=0)


@pytest.mark.parametrize("semiring", ["mpe", "godel", "fuzzy_godel", "fuzzy_lukasiewicz", "real"])
def test_nan_propagates(semiring):
    """``x1 OR x2`` (and its AND) at ``x = [nan, 0.3]``: NaN, as torch's own reductions give;
    through max/min the gradients are NaN too."""
    c = Circuit(2)
    c.add_root(c.disjoin([c.literal(1), c.literal(2)]))
    c.add_root(c.conjoin([c.literal(1), c.literal(2)]))
    module = c.compile(smooth=semiring in ("mpe", "godel")).module(semiring, backend="numba")
    out, (g,) = grads_of(module, torch.tensor([[float("nan"), 0.3]]))
    assert out.isnan().all(), out
    if semiring in MAX_SEMIRINGS:
        assert g.isnan().any(), g


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "godel", "fuzzy_product"])
def test_hubs(semiring):
    """An OR of 600 conjunctions each reading literal 1 (a node with 600 children, a row with
    600 parents): the PyTorch path's values and gradients."""
    compiled = hub_circuit(12, 600, smooth=semiring in ("mpe", "godel"))
    x = random_weights(3, 12, 5, extremes=False)
    x = x.log() if semiring == "log" else x
    out, (g,) = grads_of(compiled.module(semiring, backend="numba"), x)
    ref, (g_ref,) = grads_of(compiled.module(semiring, backend="torch"), x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    if semiring in MAX_SEMIRINGS:
        torch.testing.assert_close(g.sum(), g_ref.sum(), rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_repeated_roots_and_roots_that_are_leaves():
    """Roots repeated (their gradients summed into one row), literals and constants as roots,
    a root that is also a child: the PyTorch path's values and per-root weighted gradients."""
    c = Circuit(4)
    inner = c.conjoin([c.literal(1), c.literal(-2)])
    top = c.disjoin([inner, c.conjoin([c.literal(3), c.literal(4)])])
    for root in (top, c.literal(1), inner, c.literal(1), c.true(), c.false(), top, c.literal(-3)):
        c.add_root(root)
    leaves_only = Circuit(4)  # no layer at all
    for root in (leaves_only.literal(2), leaves_only.literal(-1), leaves_only.true()):
        leaves_only.add_root(root)
    cases = [(c, False, "real"), (c, True, "log"), (c, True, "mpe"), (leaves_only, False, "log")]
    for circuit, smooth, semiring in cases:
        compiled = circuit.compile(smooth=smooth)
        weight = torch.rand(5, compiled.num_roots, generator=torch.Generator().manual_seed(2))
        x = random_weights(5, 4, 9, extremes=False)
        x = x.log() if semiring == "log" else x
        weight = weight.to(x.dtype)
        out, (g,) = grads_of(compiled.module(semiring, backend="numba"), x, weight=weight)
        ref, (g_ref,) = grads_of(compiled.module(semiring, backend="torch"), x, weight=weight)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- threads
def each_plan(monkeypatch):
    """Iterate under each parallel plan (close it to restore the thread count): one thread;
    two threads splitting the batch into column chunks (2 columns); two threads splitting each
    layer's rows."""
    before = torch.get_num_threads()
    try:
        for threads, chunk, min_work in ((1, 16, 1 << 15), (2, 2, 1 << 15), (2, 1 << 20, 0)):
            torch.set_num_threads(threads)
            monkeypatch.setattr(cpu, "CHUNK_COLUMNS", chunk)
            monkeypatch.setattr(cpu, "ROW_PARALLEL_MIN_WORK", min_work)
            yield threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "godel", *FUZZY[1:]])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_threads_give_the_same_bits(semiring, batch, monkeypatch):
    """One thread; two threads splitting the batch into column chunks; two threads splitting
    each layer's rows: the same values and gradients, bit for bit."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    parallel = []
    for name in ("_circuit_fwd_parallel", "_circuit_bwd_parallel"):
        kernel = getattr(cpu, name)

        def counted(*args, kernel=kernel):
            parallel.append(args[-3].size > 2)  # column chunks, or rows split
            return kernel(*args)

        monkeypatch.setattr(cpu, name, counted)
    smooth = semiring in ("mpe", "godel")
    compiled = random_dag(seed=batch, nodes=60, sharing=0.5).compile(smooth=smooth)
    x = random_weights(batch, compiled.num_vars, 3, dtype=torch.float32)
    x = x.log() if semiring == "log" else x
    weight = torch.rand(batch, compiled.num_roots)
    module = compiled.module(semiring, backend="numba")
    with closing(each_plan(monkeypatch)) as plans:  # the thread count restored on failure too
        results = [grads_of(module, x, weight=weight) for _ in plans]
    # Serial, then (batch > 1) chunks for forward and backward, then rows split for both.
    assert parallel == ([] if batch == 1 else [True, True]) + [False, False]
    for out, (g,) in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(g, results[0][1][0], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("log", [False, True])
def test_range_check_on_every_plan(log, monkeypatch):
    """The kernels' own range check (serial, column chunks, rows split) refuses one weight out
    of range in any column, names ``pos`` or ``neg`` and the value, and lets NaN through."""
    compiled = random_dag(seed=3, nodes=40, sharing=0.5).compile(smooth=False)
    module = compiled.module("log" if log else "real", backend="numba")
    good = random_weights(129, compiled.num_vars, 4, dtype=torch.float64, extremes=False)
    good = good.log() if log else good
    with closing(each_plan(monkeypatch)) as plans:
        for _ in plans:
            for column in (0, 128):
                bad = good.clone()
                bad[column, -1] = 0.5 if log else 1.25
                match = r"pos must hold.*1 value in \[(0.5|1.25),"
                with pytest.raises(ValueRangeError, match=match):
                    module(bad)
                with pytest.raises(ValueRangeError, match=r"neg must hold"):
                    module(good, bad)
            nan = good.clone()
            nan[128, 0] = float("nan")
            assert module(nan)[128].isnan().any() and not module(nan)[:128].isnan().any()


def test_parallel_plans():
    """Which split a batch gets: column chunks aligned to CHUNK_COLUMNS, row splitting for
    narrow batches of wide layers, serial otherwise (``torch.get_num_threads()`` threads)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threads, chunks = cpu._plan(129, 10)
        assert threads == 2 and chunks.tolist() == [0, 80, 129]
        assert cpu._plan(16, 10) == (1, None)
        assert cpu._plan(1, cpu.ROW_PARALLEL_MIN_WORK) == (2, None)
        torch.set_num_threads(1)
        assert cpu._plan(129, 10**9) == (1, None)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- torch.func
def test_vmap_and_per_example_gradients_one_call_per_direction(monkeypatch):
    """vmap of the forward, vmap(grad(f)) and autograd through vmap: the vmapped dimension
    joins the batch (one kernel call per direction), with the results of each row's own call
    and of the brute-force oracle's autograd."""
    module = cnf_circuit().module("real", backend="numba")
    calls = {"forward": 0, "backward": 0}
    for name, direction in (("circuit_fwd", "forward"), ("circuit_bwd", "backward")):
        launch = getattr(cpu, name)

        def counted(*args, launch=launch, direction=direction):
            calls[direction] += 1
            return launch(*args)

        monkeypatch.setattr(cpu, name, counted)
    x = weights(4, "real", 3, extremes=False)
    cot = torch.tensor([0.7, -1.3, 2.0], dtype=x.dtype)

    def loss(p):
        return (module(p) * cot).sum()

    vmapped = torch.func.vmap(module)(x)
    torch.testing.assert_close(vmapped, oracle(x, 1 - x, "real"))
    assert calls == {"forward": 1, "backward": 0}
    per_example = torch.func.vmap(torch.func.grad(loss))(x)
    assert calls == {"forward": 2, "backward": 1}
    ref = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((oracle(ref, 1 - ref, "real") * cot).sum(), ref)
    torch.testing.assert_close(per_example, expected)
    through = x.clone().requires_grad_(True)
    (torch.func.vmap(module)(through) * cot).sum().backward()
    torch.testing.assert_close(through.grad, expected)
    # The vmapped dimension last, neg shared by every example, and vmap over a batch.
    neg = weights(1, "real", 4, extremes=False)[0]
    shared = torch.func.vmap(module, in_dims=(1, None), out_dims=1)(x.t().contiguous(), neg)
    torch.testing.assert_close(shared, module(x, neg.expand_as(x)).t())
    nested = torch.func.vmap(module)(x.reshape(2, 2, 6))
    torch.testing.assert_close(nested, module(x).reshape(2, 2, 3))
    # A call inside vmap on weights that are not vmapped: computed once, not per example.
    expected = module(x[:1]).expand(4, 1, 3)
    calls["forward"] = 0
    constant = torch.func.vmap(lambda w: module(x[:1]) * w)(torch.ones(4, 1, dtype=x.dtype))
    assert calls["forward"] == 1
    torch.testing.assert_close(constant, expected)


@pytest.mark.parametrize("semiring", ["log", "mpe"])
def test_jacobians_by_jacrev(semiring):
    """jacrev vmaps the backward over the cotangents (the saved forward state unbatched), also
    under an outer vmap (per-example Jacobians): the PyTorch path's Jacobians."""
    compiled = cnf_circuit()
    module = compiled.module(semiring, backend="numba")
    reference = compiled.module(semiring, backend="torch")
    x = weights(3, semiring, 5, extremes=False)
    torch.testing.assert_close(torch.func.jacrev(module)(x[0]), torch.func.jacrev(reference)(x[0]))
    per_example = torch.func.vmap(torch.func.jacrev(module))(x)
    torch.testing.assert_close(per_example, torch.func.vmap(torch.func.jacrev(reference))(x))


def test_forward_mode_and_second_derivatives():
    """``backend="numba"`` refuses forward mode and second derivatives with TransformError
    (naming the PyTorch path); ``auto`` runs the PyTorch path where forward mode or nested
    gradient transforms are active at the call, so jvp and Hessians give the oracle's."""
    compiled = cnf_circuit()
    numba_module = compiled.module("real", backend="numba")
    auto = compiled.module("real")
    x = weights(2, "real", 6, extremes=False)
    tangent = torch.rand(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    with pytest.raises(TransformError, match="backend='torch'"):
        torch.func.jvp(numba_module, (x,), (tangent,))
    with (
        pytest.raises(TransformError, match="backend='torch'"),
        torch.autograd.forward_ad.dual_level(),
    ):
        numba_module(torch.autograd.forward_ad.make_dual(x, tangent))
    _, got = torch.func.jvp(auto, (x,), (tangent,))
    _, want = torch.func.jvp(lambda p: oracle(p, 1 - p, "real"), (x,), (tangent,))
    torch.testing.assert_close(got, want)

    row = x[0]
    expected = torch.func.hessian(lambda p: oracle(p[None], 1 - p[None], "real")[0, 0])(row)
    torch.testing.assert_close(torch.func.hessian(lambda p: auto(p)[0])(row), expected)
    second = torch.func.jacrev(torch.func.jacrev(lambda p: auto(p)[0]))(row)
    torch.testing.assert_close(second, expected)
    with pytest.raises(TransformError, match="second derivatives"):
        torch.func.jacrev(torch.func.jacrev(lambda p: numba_module(p)[0]))(row)
    for module in (numba_module, auto):  # a second derivative through autograd
        p = row.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(module(p)[0], p, create_graph=True)
        torch.testing.assert_close(g, torch.autograd.grad(auto(p)[0], p)[0])  # first: right
        with pytest.raises(TransformError, match="second derivatives"):
            torch.autograd.grad(g.sum(), p)


# ---------------------------------------------------------------------------- the module
def test_torch_compile():
    """``auto`` under torch.compile traces the PyTorch path (one graph, no break); an explicit
    ``numba`` runs its kernels outside the graph: both give the eager module's values and
    gradients."""
    compiled = cnf_circuit()
    x = weights(4, "log", 3, extremes=False)
    expected, expected_grad = grads_of(compiled.module("log"), x)
    for backend in ("auto", "numba"):
        torch._dynamo.reset()
        module = compiled.module("log", backend=backend)
        out, (g,) = grads_of(torch.compile(module, backend="eager", fullgraph=backend == "auto"), x)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(g, expected_grad[0])


def test_memory_budget_and_estimate():
    """With a gradient to prepare the kernels hold the node values, their gradients and, for
    the reductions with backward state, a value and an int32 per internal node; without,
    only the node values."""
    compiled = cnf_circuit()
    module = compiled.module("real", backend="numba", memory_budget_mb=1)
    n, n0, batch = compiled.num_nodes, compiled.num_leaves, 1000
    assert (
        module.estimate_bytes(batch, torch.float32, "numba")
        == (2 * n * 4 + (n - n0) * (4 + 4)) * batch
    )
    assert module.estimate_bytes(batch, torch.float32, "numba", grad=False) == n * 4 * batch
    big = 2**20 // (n * 4) + 1
    with pytest.raises(MemoryBudgetError):
        module(torch.rand(big, 6))
    with torch.no_grad():
        assert module(torch.rand(big // 4, 6)).shape == (big // 4, 3)


def test_half_precision_and_devices():
    compiled = cnf_circuit()
    module = compiled.module("log", backend="numba")
    x = weights(5, "log", 7, dtype=torch.float32, extremes=False)
    out = module(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), module(x.to(torch.bfloat16).float()).bfloat16().float())
    with pytest.raises(DeviceError, match="numba backend runs on the CPU"):
        compiled.module("log", backend="numba").to("meta")(x.to("meta"))
