"""The fused Triton kernels (in Triton's interpreter on CPU) against the torch reference."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA, models_of_cnf, random_cnf, random_weights
from trilay.engine import Circuit
from trilay.engine.errors import CircuitError, DeviceError, SemiringError
from trilay.kernels import fusion
from trilay.kernels import layer as triton_layer
from trilay.kernels.layer import TRITON_REDUCTIONS, layer_bwd, layer_fwd
from trilay.kernels.reference import segment_reduce_torch

REDUCTIONS = sorted(TRITON_REDUCTIONS)
#: Where the kernels run: the GPU when there is one, else the CPU in Triton's interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}
SEMIRINGS = ["real", "log", "mpe", "mpe_log", "godel"]
FUZZY = ["fuzzy_godel", "fuzzy_product", "fuzzy_lukasiewicz"]
MAX_SEMIRINGS = ("mpe", "mpe_log", "godel", "fuzzy_godel")


@pytest.fixture(autouse=True)
def nan_filled_outputs(monkeypatch):
    monkeypatch.setattr(triton_layer, "DEBUG_FILL_NAN", True)


# ---------------------------------------------------------------------------- one layer
def make_layer(lengths, n_below, seed):
    """A random CSR layer over ``n_below`` rows, with its transposed CSR."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    child = torch.randint(0, n_below, (int(offsets[-1]),), generator=g)
    parent_of_edge = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    parent_edge = torch.argsort(child, stable=True)
    parent_offsets = torch.zeros(n_below + 1, dtype=torch.int64)
    parent_offsets[1:] = torch.cumsum(torch.bincount(child, minlength=n_below), 0)
    i32 = lambda t: t.to(device=DEVICE, dtype=torch.int32)  # noqa: E731
    return (
        i32(child),
        i32(offsets),
        i32(parent_edge),
        i32(parent_of_edge[parent_edge]),
        i32(parent_offsets),
    )


def layer_values(reduce, n_below, batch, dtype, seed, special):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_below, batch, generator=g, dtype=dtype)
    # Distinct values keep max/min away from ties (where the kernel routes to one child and
    # the reference splits).
    x = x + torch.arange(x.numel(), dtype=dtype).reshape(x.shape) * 1e-4
    if reduce.startswith("lukasiewicz"):
        x = x / 2  # sums away from the clamp boundaries most of the time
    if special:
        hit = torch.rand(x.shape, generator=g) < 0.25
        x = torch.where(hit, torch.zeros_like(x) if reduce != "prob_sum" else torch.ones_like(x), x)
    if reduce == "logsumexp":
        x = x.log()  # zeros become -inf
    return x.to(DEVICE)


def backward_of(cot, state, x, index, reduce):
    """The layer kernel's backward: ``d (out * cot).sum() / d x``."""
    child, offsets, parent_edge, parent, parent_offsets = index
    out, aux, arg = state
    return layer_bwd(
        cot, out, aux, arg, x, child, offsets, parent_edge, parent, parent_offsets, reduce
    )


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("batch", [1, 7, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("special", [False, True])
def test_layer_matches_reference(reduce, batch, dtype, special):
    lengths = [1, 3, 1, 40, 2, 1, 9, 5]
    n_below = 23
    index = make_layer(lengths, n_below, seed=batch)
    child, offsets = index[:2]
    x = layer_values(reduce, n_below, batch, dtype, seed=batch + 1, special=special)
    state = layer_fwd(x, child, offsets, reduce)
    xr = x.clone().requires_grad_(True)
    ref = segment_reduce_torch(xr.index_select(0, child), offsets, reduce)
    torch.testing.assert_close(state[0], ref.detach(), **TOL[dtype])
    inferred, no_aux, no_arg = layer_fwd(x, child, offsets, reduce, state=False)
    assert no_aux is None and no_arg is None
    torch.testing.assert_close(inferred, state[0], rtol=0, atol=0, equal_nan=True)

    cot = torch.rand(state[0].shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    grad = backward_of(cot.to(DEVICE), state, x, index, reduce)
    (ref_grad,) = torch.autograd.grad((ref * cot.to(DEVICE)).sum(), xr)
    assert not grad.isnan().any()
    if special and reduce in ("max", "min"):
        # Tied zeros: the kernel routes to the first child, the reference splits; the total
        # gradient per parent agrees.
        torch.testing.assert_close(grad.sum(), ref_grad.sum(), **TOL[dtype])
    else:
        torch.testing.assert_close(grad, ref_grad, **TOL[dtype])


@pytest.mark.parametrize(
    "reduce", ["sum", "prod", "logsumexp", "max", "prob_sum", "lukasiewicz_and"]
)
def test_single_long_segment_and_unread_rows(reduce):
    index = make_layer([300], 40, seed=9)
    x = layer_values(reduce, 40, 3, torch.float64, seed=2, special=False)
    state = layer_fwd(x, *index[:2], reduce)
    xr = x.clone().requires_grad_(True)
    ref = segment_reduce_torch(xr.index_select(0, index[0]), index[1], reduce)
    torch.testing.assert_close(state[0], ref.detach())
    grad = backward_of(torch.ones_like(state[0]), state, x, index, reduce)
    torch.testing.assert_close(grad, torch.autograd.grad(ref.sum(), xr)[0])


def explicit_layer(segments, n_below):
    """The index tensors of a layer with these children per node (lists of rows below)."""
    i32 = lambda values: torch.tensor(values, dtype=torch.int32, device=DEVICE)  # noqa: E731
    child = [c for segment in segments for c in segment]
    offsets = [0]
    for segment in segments:
        offsets.append(offsets[-1] + len(segment))
    order = sorted(range(len(child)), key=lambda e: child[e])
    node_of_edge = [i for i, segment in enumerate(segments) for _ in segment]
    parent_offsets = [sum(c < j for c in child) for j in range(n_below + 1)]
    return (
        i32(child),
        i32(offsets),
        i32(order),
        i32([node_of_edge[e] for e in order]),
        i32(parent_offsets),
    )


def test_product_backward_exact_with_zeros():
    x = torch.tensor([[2.0], [3.0], [0.0], [4.0], [0.0], [5.0]], dtype=torch.float64)
    # node 0: 2*3 ; node 1: 0*4 (one zero) ; node 2: 0*0*5 (two zeros)
    index = explicit_layer([[0, 1], [2, 3], [2, 4, 5]], 6)
    state = layer_fwd(x.to(DEVICE), *index[:2], "prod")
    assert state[0][:, 0].tolist() == [6.0, 0.0, 0.0]
    grad = backward_of(torch.ones_like(state[0]), state, x.to(DEVICE), index, "prod")
    # x2 = 0 sits in node 1 (only zero: gets 4) and twice in node 2 (two zeros: 0).
    assert grad[:, 0].tolist() == [3.0, 2.0, 4.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([1e-30, 1e-30], torch.float32, [1e-30, 1e-30]),  # the product underflows to 0
        ([5e-324, 0.5], torch.float64, [0.5, 5e-324]),  # ... to 0 as well
        ([1e-20, 1e-20, 3.0], torch.float32, [3e-20, 3e-20, 1e-40]),  # to a subnormal
        ([1e30, 1e30], torch.float32, [1e30, 1e30]),  # overflows to inf
    ],
)
def test_product_backward_where_the_product_underflows(values, dtype, expected):
    """The derivative of a product is the product of the other factors whenever that is
    representable, however small or large the product itself (the kernel recomputes it where
    ``a / x`` lost digits), in the layer kernel, the circuit and the PyTorch path."""
    n = len(values)
    x = torch.tensor(values, dtype=dtype).reshape(n, 1)
    # The true derivatives rounded to the dtype (1e-40 is a float32 subnormal: 5 digits).
    truth = torch.tensor(expected, dtype=torch.float64).to(dtype).double()
    close = dict(rtol=1e-6, atol=2 * torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps)
    index = explicit_layer([list(range(n))], n)
    state = layer_fwd(x.to(DEVICE), *index[:2], "prod")
    grad = backward_of(torch.ones_like(state[0]), state, x.to(DEVICE), index, "prod")
    torch.testing.assert_close(grad[:, 0].double().cpu(), truth, **close)
    c = Circuit(n)
    c.add_root(c.conjoin([c.literal(v) for v in range(1, n + 1)]))
    for backend in ("triton", "torch"):
        compiled = c.compile(smooth=False).to(DEVICE)
        module = compiled.module("real", backend=backend, validate=False)  # weights above 1
        p = x.t().to(DEVICE).requires_grad_(True)
        (g,) = torch.autograd.grad(module(p).sum(), p)
        torch.testing.assert_close(g[0].double().cpu(), truth, **close)


@pytest.mark.parametrize("semiring", ["mpe", "godel", "fuzzy_godel", "fuzzy_lukasiewicz"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_propagates(semiring, backend):
    """``x1 OR x2`` (and its AND) at ``x = [nan, 0.3]``: NaN on every backend, as torch's own
    reductions give; through max/min the gradients are NaN too (torch's amax backward)."""
    c = Circuit(2)
    c.add_root(c.disjoin([c.literal(1), c.literal(2)]))
    c.add_root(c.conjoin([c.literal(1), c.literal(2)]))
    smooth = semiring in ("mpe", "godel")
    module = c.compile(smooth=smooth).to(DEVICE).module(semiring, backend=backend)
    x = torch.tensor([[float("nan"), 0.3]], device=DEVICE, requires_grad=True)
    out = module(x)
    assert out.isnan().all(), out
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    if semiring != "fuzzy_lukasiewicz":
        assert g.isnan().any(), g


def test_empty_batch_and_unknown_reduction():
    child, offsets, *_ = make_layer([2, 1], 3, seed=0)
    out, _, _ = layer_fwd(torch.zeros(3, 0, device=DEVICE), child, offsets, "sum")
    assert out.shape == (2, 0)
    with pytest.raises(SemiringError, match="unknown reduction"):
        layer_fwd(torch.zeros(3, 1, device=DEVICE), child, offsets, "mean")


def test_layer_op_opcheck_vmap_and_compile():
    index = make_layer([1, 3, 2, 5], 9, seed=4)
    child, offsets = index[:2]
    for reduce in ("logsumexp", "prod", "max"):
        x = layer_values(reduce, 9, 3, torch.float64, seed=1, special=True)
        torch.library.opcheck(torch.ops.trilay.layer_fwd.default, (x, *index, reduce))
        xr = x.clone().requires_grad_(True)
        out = triton_layer.layer(xr, *index, reduce)
        ref_in = x.clone().requires_grad_(True)
        ref = segment_reduce_torch(ref_in.index_select(0, child), offsets, reduce)
        torch.testing.assert_close(out, ref)
        if reduce != "max":  # tied zeros: routed to one child vs split (documented)
            torch.testing.assert_close(
                torch.autograd.grad(out.sum(), xr)[0], torch.autograd.grad(ref.sum(), ref_in)[0]
            )

    stacked = torch.stack([x, x.flip(1), x * 0.5])  # [3, 9, 3]
    vmapped = torch.func.vmap(lambda v: triton_layer.layer(v, *index, "sum"))(stacked)
    looped = torch.stack([triton_layer.layer(v, *index, "sum") for v in stacked])
    torch.testing.assert_close(vmapped, looped)

    # Per-example gradients run the op's backward under vmap (its own vmap rule), against
    # autograd through the torch reference.
    weight = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weight = weight.to(DEVICE)
    for reduce in ("logsumexp", "prod", "sum"):
        v = layer_values(reduce, 9, 3, torch.float64, seed=2, special=False)
        examples = torch.stack([v, v.flip(1), v * 0.5])

        def loss(values, reduce=reduce):
            return (triton_layer.layer(values, *index, reduce) * weight).sum()

        per_example = torch.func.vmap(torch.func.grad(loss))(examples)
        ref_in = examples.clone().requires_grad_(True)
        ref = sum(
            (segment_reduce_torch(e.index_select(0, child), offsets, reduce) * weight).sum()
            for e in ref_in
        )
        torch.testing.assert_close(per_example, torch.autograd.grad(ref, ref_in)[0])

    compiled = torch.compile(
        lambda v: triton_layer.layer(v, *index, "sum") * 2, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(x), triton_layer.layer(x, *index, "sum") * 2)


def test_layer_op_refuses_inconsistent_indices():
    """A bad index never reaches the kernel (where it would read out of bounds): every index
    tensor of the single-layer op is checked, again after an in-place change."""
    index = make_layer([1, 3, 2], 5, seed=1)
    x = torch.rand(5, 2, device=DEVICE)
    torch.testing.assert_close(
        triton_layer.layer(x, *index, "sum"),
        segment_reduce_torch(x.index_select(0, index[0]), index[1], "sum"),
    )

    def changed(position, at, value):
        tensors = [t.clone() for t in index]
        tensors[position][at] = value
        return tensors

    cases = {
        "a child out of range": changed(0, 0, 50_000_000),
        "a negative child": changed(0, 1, -1),
        "offsets descending": changed(1, 1, 5),
        "offsets not covering the edges": changed(1, 3, 5),
        "parent_edge not a permutation": changed(2, 0, int(index[2][1])),
        "parent not the edge's node": changed(3, 0, (int(index[3][0]) + 1) % 3),
        "parent_offsets not ascending": changed(4, 2, 0),
    }
    for problem, tensors in cases.items():
        with pytest.raises(CircuitError, match="layer indices|tensor"):
            triton_layer.layer(x, *tensors, "sum")
        assert problem
    child = index[0].clone()
    triton_layer.layer(x, child, *index[1:], "sum")  # checked and remembered
    child[0] = 50_000_000  # an in-place change is seen (the tensor's version moved)
    with pytest.raises(CircuitError, match="rows of values"):
        triton_layer.layer(x, child, *index[1:], "sum")


# ---------------------------------------------------------------------------- circuits
def test_cpu_without_interpreter_is_refused(monkeypatch):
    c = Circuit(2)
    c.add_root(c.conjoin([c.literal(1), c.literal(2)]))
    module = c.compile().module("real", backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DeviceError, match="TRITON_INTERPRET"):
        module(torch.rand(1, 2))


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_circuit_triton_matches_torch_path(semiring):
    c = Circuit()
    c.add_sdd_file(DATA / "road_r.sdd", DATA / "road_r.vtree")
    c.add_cnf(random_cnf(41, 4, seed=4))  # a second root sharing the leaves
    compiled = c.compile().to(DEVICE)
    torch_module = compiled.module(semiring, backend="torch")
    triton_module = compiled.module(semiring, backend="triton")
    p = random_weights(5, 41, 3, extremes=semiring in ("real", "log")).to(DEVICE)
    if semiring in ("log", "mpe_log"):
        p = p.log()
    neg = random_weights(5, 41, 4, extremes=False).to(DEVICE)
    neg = neg.log() if semiring in ("log", "mpe_log") else neg
    x1, x2 = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    y1, y2 = neg.clone().requires_grad_(True), neg.clone().requires_grad_(True)
    out_torch, out_triton = torch_module(x1, y1), triton_module(x2, y2)
    torch.testing.assert_close(out_triton, out_torch, rtol=1e-10, atol=1e-12)
    g_torch = torch.autograd.grad(out_torch.sum(), [x1, y1])
    g_triton = torch.autograd.grad(out_triton.sum(), [x2, y2])
    for a, b in zip(g_triton, g_torch, strict=True):
        assert torch.isfinite(a).all()
        if semiring in MAX_SEMIRINGS:
            # Ties route to one child in the kernel and are split by the reference.
            torch.testing.assert_close(a.sum(), b.sum(), rtol=1e-9, atol=1e-12)
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_circuit_gradcheck_float64():
    clauses = random_cnf(5, 4, seed=2)
    c = Circuit(5)
    c.add_cnf(clauses)
    module = c.compile().to(DEVICE).module("log", backend="triton")
    assert models_of_cnf(clauses, 5).shape[0] > 0
    x = random_weights(2, 5, 1, extremes=False).log().to(DEVICE).requires_grad_(True)
    assert torch.autograd.gradcheck(module, (x,))


def hub_circuit(num_vars, width, smooth):
    """An OR of ``width`` distinct conjunctions of all ``num_vars`` literals, each with
    literal 1: the OR has ``width`` children and literal 1 as many parents, so with ``width``
    above ``HUB_CHUNK`` both hub plans (forward and backward) are used."""
    c = Circuit(num_vars)
    terms = []
    for i in range(width):
        lits = [1] + [(v if (i >> (v - 2)) & 1 else -v) for v in range(2, num_vars + 1)]
        terms.append(c.conjoin([c.literal(lit) for lit in lits]))
    c.add_root(c.disjoin(terms))
    compiled = c.compile(smooth=smooth).to(DEVICE)
    assert compiled.node_hubs and compiled.parent_hubs
    return compiled


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "godel", *FUZZY[1:]])
def test_hub_nodes_split_into_chunks(semiring):
    """An OR with 600 children and a literal read by 600 parents: both take the two-step
    (chunked) path, and agree with the PyTorch path."""
    from trilay.engine.compiled import HUB_CHUNK

    assert 600 > 2 * HUB_CHUNK
    compiled = hub_circuit(12, 600, smooth=semiring in ("mpe", "godel"))
    p = random_weights(3, 12, 5, extremes=False).to(DEVICE)
    x = p.log() if semiring == "log" else p
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = compiled.module(semiring, backend="triton")(a)
    ref = compiled.module(semiring, backend="torch")(b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # inference: the hub chunks combined without aux / arg
        inferred = compiled.module(semiring, backend="triton")(x)
    torch.testing.assert_close(inferred, out, rtol=0, atol=0)
    (g,) = torch.autograd.grad(out.sum(), a)
    (g_ref,) = torch.autograd.grad(ref.sum(), b)
    if semiring in MAX_SEMIRINGS:  # ties: routed to one child vs split (documented)
        torch.testing.assert_close(g.sum(), g_ref.sum(), rtol=1e-9, atol=1e-12)
    else:
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_hub_root_with_repeated_roots():
    """A root that is a hub's child and repeated as a root: its gradient is its seeds (summed
    over its repeats) plus its parents' shares, also when its block is cut into chunks."""
    compiled_hub = hub_circuit(10, 300, smooth=False)
    c = Circuit(10)
    terms = []
    for i in range(300):
        lits = [1] + [(v if (i >> (v - 2)) & 1 else -v) for v in range(2, 11)]
        terms.append(c.conjoin([c.literal(lit) for lit in lits]))
    c.add_root(c.disjoin(terms))
    for root in (c.literal(1), c.literal(1), terms[0], c.literal(-3)):
        c.add_root(root)
    compiled = c.compile(smooth=False).to(DEVICE)
    assert compiled.parent_hubs and compiled_hub.parent_hubs
    x = random_weights(2, 10, 9, extremes=False).to(DEVICE)
    weight = torch.rand(2, 5, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grads = []
    for backend in ("triton", "torch"):
        xr = x.clone().requires_grad_(True)
        out = compiled.module("real", backend=backend)(xr)
        grads.append((out, torch.autograd.grad((out * weight.to(DEVICE)).sum(), xr)[0]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _small_circuit():
    clauses = random_cnf(5, 4, seed=2)
    c = Circuit(5)
    c.add_cnf(clauses)
    c.add_root(c.literal(-3))
    models = [models_of_cnf(clauses, 5), models_of_cnf([[-3]], 5)]
    return c.compile().to(DEVICE), [m.to(DEVICE) for m in models]


def _real_oracle(models, p):
    """Weighted model counts in plain torch: ``[..., V]`` -> ``[..., len(models)]``."""
    w = [torch.where(m, p[..., None, :], 1 - p[..., None, :]).prod(-1).sum(-1) for m in models]
    return torch.stack(w, dim=-1)


def test_circuit_under_vmap_launches_once_per_step(monkeypatch):
    """The vmapped dimension joins the batch columns: one forward and one backward launch per
    step (a layer, or a fused pair) for the whole vmapped batch (not one per example), for
    vmap and vmap(grad)."""
    compiled, models = _small_circuit()
    module = compiled.module("real", backend="triton")
    calls = {"forward": 0, "backward": 0}

    def counted(name, direction):
        launch = getattr(triton_layer, name)

        def count(*args, **kwargs):
            calls[direction] += 1
            return launch(*args, **kwargs)

        monkeypatch.setattr(triton_layer, name, count)

    for name, direction in (
        ("layer_forward", "forward"),
        ("pair_forward", "forward"),
        ("block_backward", "backward"),
        ("pair_backward", "backward"),
    ):
        counted(name, direction)
    x = random_weights(4, 5, 3, extremes=True).to(DEVICE)
    out = torch.func.vmap(module)(x)
    torch.testing.assert_close(out, _real_oracle(models, x))
    forward_steps = compiled.num_layers - len(module._forward_pairs)
    backward_steps = compiled.num_layers + 1 - len(module._backward_pairs)
    assert forward_steps < compiled.num_layers  # some layers run fused
    assert calls == {"forward": forward_steps, "backward": 0}
    per_example = torch.func.vmap(torch.func.grad(lambda p: module(p)[0]))(x)
    assert calls == {"forward": 2 * forward_steps, "backward": backward_steps}
    ref = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_real_oracle(models, ref)[:, 0].sum(), ref)
    torch.testing.assert_close(per_example, expected)


def test_circuit_jacobian_by_jacrev():
    """jacrev vmaps the backward over the cotangents while the saved forward state is not
    vmapped (the backward's vmap rule repeats it across the columns); against the Jacobian of
    the plain-torch oracle. Also under an outer vmap (per-example Jacobians)."""
    compiled, models = _small_circuit()
    module = compiled.module("real", backend="triton")
    x = random_weights(3, 5, 4, extremes=True).to(DEVICE)
    jac = torch.func.jacrev(module)(x[0])  # [roots, V]
    torch.testing.assert_close(jac, torch.func.jacrev(lambda p: _real_oracle(models, p))(x[0]))
    per_example = torch.func.vmap(torch.func.jacrev(module))(x)
    expected = torch.func.vmap(torch.func.jacrev(lambda p: _real_oracle(models, p)))(x)
    torch.testing.assert_close(per_example, expected)


def test_circuit_backward_is_once_differentiable():
    """A gradient with create_graph=True is still the gradient; differentiating it raises,
    with autograd and with torch.func, instead of returning a wrong second derivative."""
    compiled, models = _small_circuit()
    module = compiled.module("real", backend="triton")
    x = random_weights(2, 5, 5, extremes=False).to(DEVICE).requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x).sum(), x, create_graph=True)
    ref = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(grad, torch.autograd.grad(_real_oracle(models, ref).sum(), ref)[0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(grad.sum(), x)
    scale = torch.ones(
        2, 2, dtype=x.dtype, device=DEVICE, requires_grad=True
    )  # a grad_output with a graph
    (grad,) = torch.autograd.grad((module(x) * scale).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
    with pytest.raises(NotImplementedError, match="no double backward"):
        torch.func.jacrev(torch.func.jacrev(lambda p: module(p)[0]))(x[0].detach())


def test_hub_chunks_under_vmap_grad():
    """Hub nodes (split into chunks forward and backward) under vmap(grad): per-example
    gradients equal the batched call's (rows are independent), which equal the PyTorch path's."""
    from trilay.engine.compiled import HUB_CHUNK

    compiled = hub_circuit(10, HUB_CHUNK + 44, smooth=False)
    module = compiled.module("log", backend="triton")
    x = random_weights(2, 10, 6, extremes=False).log().to(DEVICE)
    per_example = torch.func.vmap(torch.func.grad(lambda p: module(p)[0]))(x)
    ref = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(compiled.module("log", backend="torch")(ref).sum(), ref)
    torch.testing.assert_close(per_example, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- fused pairs
def random_dag(seed, num_vars=7, nodes=40, sharing=0.3):
    """A random multi-rooted AND/OR circuit built with the public builders: nodes read up to
    four earlier nodes (literals, or nodes of any depth, so children sit in many lower
    layers); with probability ``sharing`` a child is reused (several parents)."""
    g = torch.Generator().manual_seed(seed)
    c = Circuit(num_vars)
    pool = [c.literal(v) for v in range(1, num_vars + 1)]
    pool += [c.literal(-v) for v in range(1, num_vars + 1)]
    fresh = list(pool)
    for i in range(nodes):
        k = int(torch.randint(2, 5, (1,), generator=g))
        kids = []
        for _ in range(k):
            if fresh and torch.rand(1, generator=g).item() >= sharing:  # a node nobody reads yet
                kids.append(fresh.pop(int(torch.randint(len(fresh), (1,), generator=g))))
            else:
                kids.append(pool[int(torch.randint(len(pool), (1,), generator=g))])
        node = c.conjoin(kids) if i % 3 else c.disjoin(kids)
        pool.append(node)
        fresh.append(node)
    for root in pool[-3:]:
        c.add_root(root)
    return c


def fused_and_not(compiled, semiring, monkeypatch, max_recompute):
    """Modules with fusion planned at ``max_recompute`` and without fusion."""
    monkeypatch.setattr(fusion, "MAX_RECOMPUTE", max_recompute)
    fused = compiled.module(semiring, backend="triton")
    layerwise = compiled.module(semiring, backend="triton", fuse_layers=False)
    return fused, layerwise


FUSED_CASES = (
    # every semiring at batch 1 with the default bound, and at batch 7 in float64 with every
    # possible pair fused; batch 129 (two column tiles) for the real and the max semirings
    [(s, 1, torch.float32, fusion.MAX_RECOMPUTE) for s in SEMIRINGS + FUZZY]
    + [(s, 7, torch.float64, float("inf")) for s in SEMIRINGS + FUZZY]
    + [(s, 129, torch.float32, float("inf")) for s in ("real", "mpe")]
)


@pytest.mark.parametrize(("semiring", "batch", "dtype", "max_recompute"), FUSED_CASES)
def test_fused_pairs_equal_layer_by_layer(semiring, batch, dtype, max_recompute, monkeypatch):
    """Random circuits whose nodes read rows of many lower layers, with fusion as planned and
    with every possible pair fused (nodes read by several parents: the recomputed, repeatedly
    stored case): the same values and gradients as layer by layer, bit for bit (the fused
    kernels reduce in the same order), with and without state; and the PyTorch path's."""
    smooth = semiring in ("mpe", "mpe_log", "godel")
    compiled = (
        random_dag(seed=batch, sharing=0.5 if max_recompute > 2 else 0.0)
        .compile(smooth=smooth)
        .to(DEVICE)
    )
    fused, layerwise = fused_and_not(compiled, semiring, monkeypatch, max_recompute)
    assert fused._forward_pairs and fused._backward_pairs
    p = random_weights(batch, compiled.num_vars, 8, dtype=dtype, extremes=True).to(DEVICE)
    x = p.log() if semiring in ("log", "mpe_log") else p
    g = torch.Generator().manual_seed(batch)
    weight = torch.rand(batch, compiled.num_roots, dtype=dtype, generator=g).to(DEVICE)
    results = []
    for module in (fused, layerwise, compiled.module(semiring, backend="torch")):
        xr = x.clone().requires_grad_(True)
        out = module(xr)
        results.append((out, torch.autograd.grad((out * weight).sum(), xr)[0]))
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    with torch.no_grad():  # inference: no state stored
        torch.testing.assert_close(fused(x), results[0][0], rtol=0, atol=0)
    # Against the reference: float32 sums of products over many layers drift by rounding.
    close = TOL[dtype] if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(results[0][0], results[2][0], **close)
    if semiring not in MAX_SEMIRINGS:  # ties: routed vs split (documented)
        torch.testing.assert_close(results[0][1], results[2][1], **close)


def test_fused_pairs_cover_both_orders(monkeypatch):
    """The random circuits above fuse AND-below-OR and OR-below-AND pairs, both directions."""
    seen = set()
    for seed in (1, 7, 129):
        compiled = random_dag(seed=seed, sharing=0.5).compile(smooth=False)
        fused, _ = fused_and_not(compiled, "real", monkeypatch, float("inf"))
        kinds = ["leaf", *compiled.layer_kinds]
        seen |= {
            ("forward", compiled.layer_kinds[k], compiled.layer_kinds[k + 1])
            for k in fused._forward_pairs
        }
        seen |= {("backward", kinds[j], kinds[j + 1]) for j in fused._backward_pairs}
    for direction in ("forward", "backward"):
        assert (direction, "and", "or") in seen and (direction, "or", "and") in seen, seen


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "godel", "fuzzy_product"])
def test_fused_circuit_gradcheck_float64(semiring, monkeypatch):
    compiled = (
        random_dag(seed=3, num_vars=5, nodes=12, sharing=0.5)
        .compile(smooth=semiring in ("mpe", "godel"))
        .to(DEVICE)
    )
    fused, _ = fused_and_not(compiled, semiring, monkeypatch, float("inf"))
    assert fused._forward_pairs and fused._backward_pairs
    x = random_weights(2, 5, 11, extremes=False).to(DEVICE)
    x = (x.log() if semiring == "log" else x).requires_grad_(True)
    assert torch.autograd.gradcheck(fused, (x,))


def test_fusion_plan_on_real_circuit():
    """sudoku_4 fuses pairs in both directions at the default bound, and the plan keeps its
    rules: no pair with a hub layer, the recomputation bound, orphans are the unread rows."""
    c = Circuit()
    c.add_sdd_file(DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree")
    compiled = c.compile(smooth=False)
    as_np = lambda t: t.numpy().astype("int64")  # noqa: E731
    args = (as_np(compiled.child), as_np(compiled.offsets), as_np(compiled.parent_offsets))
    args += (compiled.row_starts, set(compiled.node_hubs), set(compiled.parent_hubs))
    forward, backward = fusion.plan_fusion(*args)
    assert forward and backward
    assert all(k + 1 not in forward for k in forward)  # pairs do not overlap
    assert all(j + 1 not in backward for j in backward)
    for k, orphans in forward.items():
        lo, hi = compiled.layer_rows(k + 1)
        e0, e1 = compiled.layer_edges(k + 2)
        read = set(compiled.child[e0:e1].tolist())
        assert sorted(orphans.tolist()) == [r - lo for r in range(lo, hi) if r not in read]
    # Nothing may be recomputed: only backward pairs whose upper block has no parents remain.
    nothing, free = fusion.plan_fusion(*args, max_recompute=0.0)
    assert not nothing
    for j in free:
        lo, hi = compiled.layer_rows(j + 1)
        assert compiled.parent_offsets[lo] == compiled.parent_offsets[hi]
    everything, _ = fusion.plan_fusion(*args[:4], set(range(1, 100)), set(), max_recompute=1e9)
    assert not everything  # every layer a hub layer: nothing fuses
