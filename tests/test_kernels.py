"""The fused Triton layer kernels (in Triton's interpreter on CPU) against the torch reference."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA, models_of_cnf, random_cnf, random_weights
from trilay.engine import Circuit
from trilay.engine.errors import DeviceError, SemiringError
from trilay.kernels import layer as triton_layer
from trilay.kernels.layer import (
    TRITON_REDUCTIONS,
    TritonLayer,
    circuit_forward_triton,
    layer_bwd,
    layer_fwd,
    pair_backward,
    pair_forward,
    plan_fusion,
)
from trilay.kernels.reference import segment_reduce_torch

REDUCTIONS = sorted(TRITON_REDUCTIONS)
#: Where the kernels run: the GPU when there is one, else the CPU in Triton's interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(autouse=True)
def nan_filled_outputs(monkeypatch):
    monkeypatch.setattr(triton_layer, "DEBUG_FILL_NAN", True)


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


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("batch", [1, 7, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("special", [False, True])
def test_layer_matches_reference(reduce, batch, dtype, special):
    lengths = [1, 3, 1, 40, 2, 1, 9, 5]
    n_below = 23
    child, offsets, parent_edge, parent, parent_offsets = make_layer(lengths, n_below, seed=batch)
    x = layer_values(reduce, n_below, batch, dtype, seed=batch + 1, special=special)
    out, aux, arg = layer_fwd(x, child, offsets, reduce)
    xr = x.clone().requires_grad_(True)
    ref = segment_reduce_torch(xr.index_select(0, child), offsets, reduce)
    torch.testing.assert_close(out, ref.detach(), **TOL[dtype])
    inferred, no_aux, no_arg = layer_fwd(x, child, offsets, reduce, state=False)
    assert no_aux is None and no_arg is None
    torch.testing.assert_close(inferred, out, rtol=0, atol=0, equal_nan=True)

    cot = torch.rand(out.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    cot = cot.to(DEVICE)
    grad = layer_bwd(cot, out, aux, arg, x, parent_edge, parent, parent_offsets, reduce)
    (ref_grad,) = torch.autograd.grad((ref * cot).sum(), xr)
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
    child, offsets, parent_edge, parent, parent_offsets = make_layer([300], 40, seed=9)
    x = layer_values(reduce, 40, 3, torch.float64, seed=2, special=False)
    out, aux, arg = layer_fwd(x, child, offsets, reduce)
    xr = x.clone().requires_grad_(True)
    ref = segment_reduce_torch(xr.index_select(0, child), offsets, reduce)
    torch.testing.assert_close(out, ref.detach())
    grad = layer_bwd(
        torch.ones_like(out), out, aux, arg, x, parent_edge, parent, parent_offsets, reduce
    )
    torch.testing.assert_close(grad, torch.autograd.grad(ref.sum(), xr)[0])


def test_product_backward_exact_with_zeros():
    on = dict(device=DEVICE)
    x = torch.tensor([[2.0], [3.0], [0.0], [4.0], [0.0], [5.0]], dtype=torch.float64, **on)
    # node 0: 2*3 ; node 1: 0*4 (one zero) ; node 2: 0*0*5 (two zeros)
    child = torch.tensor([0, 1, 2, 3, 2, 4, 5], dtype=torch.int32, **on)
    offsets = torch.tensor([0, 2, 4, 7], dtype=torch.int32, **on)
    parent_edge = torch.argsort(child.long(), stable=True).to(torch.int32)
    parent = torch.tensor([0, 0, 1, 1, 2, 2, 2], dtype=torch.int32, **on)[parent_edge.long()]
    parent_offsets = torch.tensor([0, 1, 2, 4, 5, 6, 7], dtype=torch.int32, **on)
    out, aux, arg = layer_fwd(x, child, offsets, "prod")
    assert out[:, 0].tolist() == [6.0, 0.0, 0.0]
    grad = layer_bwd(
        torch.ones_like(out), out, aux, arg, x, parent_edge, parent, parent_offsets, "prod"
    )
    # x2 = 0 sits in node 1 (only zero: gets 4) and twice in node 2 (two zeros: 0).
    assert grad[:, 0].tolist() == [3.0, 2.0, 4.0, 0.0, 0.0, 0.0]


def test_empty_batch_and_unknown_reduction():
    child, offsets, *_ = make_layer([2, 1], 3, seed=0)
    out, _, _ = layer_fwd(torch.zeros(3, 0, device=DEVICE), child, offsets, "sum")
    assert out.shape == (2, 0)
    with pytest.raises(SemiringError, match="unknown reduction"):
        layer_fwd(torch.zeros(3, 1, device=DEVICE), child, offsets, "mean")


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    child, offsets, *_ = (t.cpu() for t in make_layer([2], 3, seed=0))
    with pytest.raises(DeviceError, match="TRITON_INTERPRET"):
        empty = torch.zeros(0, dtype=torch.int32)
        plain = TritonLayer(child, offsets, child, child, offsets, *[empty] * 5, "sum")
        circuit_forward_triton(torch.zeros(3, 1), [plain])


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "mpe_log", "godel"])
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
        if semiring in ("mpe", "mpe_log", "godel"):
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


def test_layer_op_opcheck_vmap_and_compile():
    child, offsets, parent_edge, parent, parent_offsets = make_layer([1, 3, 2, 5], 9, seed=4)
    index = (child, offsets, parent_edge, parent, parent_offsets)
    for reduce in ("logsumexp", "prod", "max"):
        x = layer_values(reduce, 9, 3, torch.float64, seed=1, special=True)
        args = (x, *index, reduce)
        torch.library.opcheck(torch.ops.trilay.layer_fwd.default, args)
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
    assert any(layer.chunk_offsets.numel() for layer in compiled.layers)
    assert any(layer.parent_chunk_offsets.numel() for layer in compiled.layers)
    return compiled


@pytest.mark.parametrize(
    "semiring", ["real", "log", "mpe", "godel", "fuzzy_product", "fuzzy_lukasiewicz"]
)
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
    if semiring in ("mpe", "godel"):  # ties: routed to one child vs split (documented)
        torch.testing.assert_close(g.sum(), g_ref.sum(), rtol=1e-9, atol=1e-12)
    else:
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


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


def test_circuit_under_vmap_launches_once_per_layer(monkeypatch):
    """The vmapped dimension joins the batch columns: one forward and one backward launch per
    layer for the whole vmapped batch (not one per example), for vmap and vmap(grad)."""
    compiled, models = _small_circuit()
    module = compiled.module("real", backend="triton")
    calls = {"forward": 0, "backward": 0}

    def counted(name, direction):
        launch = getattr(triton_layer, name)

        def count(*args, **kwargs):
            calls[direction] += 1
            return launch(*args, **kwargs)

        monkeypatch.setattr(triton_layer, name, count)

    counted("layer_forward", "forward")
    counted("pair_forward", "forward")
    counted("layer_backward", "backward")
    counted("pair_backward", "backward")
    x = random_weights(4, 5, 3, extremes=True).to(DEVICE)
    out = torch.func.vmap(module)(x)
    torch.testing.assert_close(out, _real_oracle(models, x))
    steps = compiled.num_layers - sum(
        layer.fused_with_next for layer in module._layers_for("triton")
    )
    assert steps < compiled.num_layers  # some layers run fused
    assert calls == {"forward": steps, "backward": 0}
    per_example = torch.func.vmap(torch.func.grad(lambda p: module(p)[0]))(x)
    assert calls == {"forward": 2 * steps, "backward": steps}
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


# Pairs of consecutive layers as the semirings stack them (AND below OR), and the other way
# round (the fusion plan pairs greedily, so an OR layer can be the lower one).
SEMIRING_PAIRS = [
    ("prod", "sum"),
    ("sum", "logsumexp"),
    ("prod", "max"),
    ("sum", "max"),
    ("min", "max"),
    ("lukasiewicz_and", "lukasiewicz_or"),
    ("prod", "prob_sum"),
]
PAIRS = SEMIRING_PAIRS + [(up, low) for low, up in SEMIRING_PAIRS]


def triton_layer_of(lengths, n_below, seed, reduce, min_fan_out=0):
    """A random :class:`TritonLayer` (no hub plans) over ``n_below`` rows; with
    ``min_fan_out``, every row below is read at least that often."""
    while True:
        child, offsets, parent_edge, parent, parent_offsets = make_layer(lengths, n_below, seed)
        if (parent_offsets.diff() >= min_fan_out).all():
            break
        seed += 1000
    empty = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    return TritonLayer(child, offsets, parent_edge, parent, parent_offsets, *[empty] * 5, reduce)


@pytest.mark.parametrize(("low_reduce", "reduce"), PAIRS)
@pytest.mark.parametrize(
    ("batch", "dtype"), [(1, torch.float32), (7, torch.float64), (129, torch.float32)]
)
@pytest.mark.parametrize("special", [False, True])
def test_fused_pair_matches_reference(low_reduce, reduce, batch, dtype, special):
    """Two layers in one forward and one backward launch, against the torch reference applied
    twice and autograd through it. Lower nodes are read by up to several upper nodes (the
    recomputed and repeatedly stored case), segments have 1 to 9 edges."""
    n_below, low_lengths, lengths = 13, [1, 2, 3, 1, 5, 2, 9, 1, 4], [2, 1, 5, 3, 1, 4]
    low = triton_layer_of(low_lengths, n_below, batch, low_reduce)
    up = triton_layer_of(lengths, len(low_lengths), batch + 1, reduce, min_fan_out=1)
    x = layer_values(low_reduce, n_below, batch, dtype, seed=batch + 2, special=special)
    (low_out, low_aux, low_arg), (out, aux, arg) = pair_forward(x, low, up)

    xr = x.clone().requires_grad_(True)
    ref_low = segment_reduce_torch(xr.index_select(0, low.child), low.offsets, low_reduce)
    ref = segment_reduce_torch(ref_low.index_select(0, up.child), up.offsets, reduce)
    torch.testing.assert_close(low_out, ref_low.detach(), **TOL[dtype])
    torch.testing.assert_close(out, ref.detach(), **TOL[dtype], equal_nan=False)
    # The stored state is the unfused kernels' (the backward of either kind reads it).
    for fused, alone in zip(
        (low_out, low_aux, low_arg, out, aux, arg),
        (
            *layer_fwd(x, low.child, low.offsets, low_reduce),
            *layer_fwd(low_out, up.child, up.offsets, reduce),
        ),
        strict=True,
    ):
        assert (fused is None) == (alone is None)
        if fused is not None:
            torch.testing.assert_close(fused, alone, rtol=0, atol=0, equal_nan=True)

    # Inference: only the upper layer's values, the same bits.
    none, (inferred, no_aux, no_arg) = pair_forward(x, low, up, state=False)
    assert none is None and no_aux is None and no_arg is None
    torch.testing.assert_close(inferred, out, rtol=0, atol=0)

    cot = torch.rand(out.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    cot = cot.to(DEVICE)
    grad = pair_backward(cot, (out, aux, arg), (low_out, low_aux, low_arg), x, low, up)
    (ref_grad,) = torch.autograd.grad((ref * cot).sum(), xr)
    assert not grad.isnan().any()
    # The two unfused backward kernels (each tested against the reference above) in sequence.
    grad_low = layer_bwd(
        cot, out, aux, arg, low_out, up.parent_edge, up.parent, up.parent_offsets, reduce
    )
    unfused = layer_bwd(
        grad_low,
        low_out,
        low_aux,
        low_arg,
        x,
        low.parent_edge,
        low.parent,
        low.parent_offsets,
        low_reduce,
    )
    torch.testing.assert_close(grad, unfused, rtol=0, atol=0)
    if not ({"max", "min"} & {low_reduce, reduce} and (special or low_reduce in ("max", "min"))):
        # Without tied values (where the kernels route the gradient to the first child and
        # the reference splits it; a max below a max ties whenever two lower nodes share
        # their best child).
        torch.testing.assert_close(grad, ref_grad, **TOL[dtype])


@pytest.mark.parametrize(("low_reduce", "reduce"), SEMIRING_PAIRS)
def test_fused_pair_gradcheck_float64(low_reduce, reduce):
    low = triton_layer_of([2, 3, 1, 2], 5, 3, low_reduce)
    up = triton_layer_of([2, 3], 4, 4, reduce, min_fan_out=1)

    class Pair(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            low_state, state = pair_forward(x, low, up)
            ctx.save_for_backward(x)
            ctx.states = low_state, state
            return state[0]

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return pair_backward(grad, ctx.states[1], ctx.states[0], x, low, up)

    x = layer_values(low_reduce, 5, 2, torch.float64, seed=7, special=False)
    assert torch.autograd.gradcheck(Pair.apply, (x.requires_grad_(True),))


def csr_layer(segments, n_below, reduce):
    """A :class:`TritonLayer` with these children per node (lists of rows below)."""
    i32 = lambda values: torch.tensor(values, dtype=torch.int32, device=DEVICE)  # noqa: E731
    child = [c for segment in segments for c in segment]
    offsets = [0]
    for segment in segments:
        offsets.append(offsets[-1] + len(segment))
    order = sorted(range(len(child)), key=lambda e: child[e])
    node_of_edge = [i for i, segment in enumerate(segments) for _ in segment]
    parent_offsets = [sum(c < j for c in child) for j in range(n_below + 1)]
    empty = i32([])
    return TritonLayer(
        i32(child),
        i32(offsets),
        i32(order),
        i32([node_of_edge[e] for e in order]),
        i32(parent_offsets),
        *[empty] * 5,
        reduce,
    )


def test_fusion_plan():
    """Pairs fuse greedily from the bottom when the lower nodes are each read once (or the
    recomputation bound allows more), never across a node nobody reads, never with hubs."""
    once = [
        csr_layer([[0, 1], [2], [1, 2, 3]], 4, "prod"),
        csr_layer([[0], [2], [1]], 3, "sum"),
        csr_layer([[0, 1], [2]], 3, "prod"),
        csr_layer([[1], [0]], 2, "sum"),
    ]
    assert [layer.fused_with_next for layer in plan_fusion(once)] == [True, False, True, False]
    # The middle pair (sum below prod) fuses when the first does not.
    hub = [once[0]._replace(chunk_offsets=csr_layer([[0]], 1, "sum").offsets)] + once[1:]
    assert [layer.fused_with_next for layer in plan_fusion(hub)] == [False, True, False, False]

    # Each lower node read twice: twice the lower layer's work.
    shared = [csr_layer([[0, 1], [1, 2]], 3, "prod"), csr_layer([[0, 1], [1, 0]], 2, "sum")]
    assert [layer.fused_with_next for layer in plan_fusion(shared)] == [False, False]
    assert plan_fusion(shared, max_recompute=2.0)[0].fused_with_next
    assert not plan_fusion(shared, max_recompute=1.99)[0].fused_with_next

    unread = [csr_layer([[0], [1], [2]], 3, "prod"), csr_layer([[0, 2]], 3, "sum")]
    assert not plan_fusion(unread, max_recompute=float("inf"))[0].fused_with_next


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "godel", "fuzzy_lukasiewicz"])
def test_fused_circuit_equals_layer_by_layer(semiring):
    """The whole circuit with and without fusion: the same values and gradients, bit for bit
    (the fused kernels reduce in the same order), and the PyTorch path's."""
    c = Circuit()
    c.add_sdd_file(DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree")
    compiled = c.compile(smooth=semiring in ("mpe", "godel")).to(DEVICE)
    fused = compiled.module(semiring, backend="triton")
    assert any(layer.fused_with_next for layer in fused._layers_for("triton"))
    layerwise = compiled.module(semiring, backend="triton", fuse_layers=False)
    assert not any(layer.fused_with_next for layer in layerwise._layers_for("triton"))
    p = random_weights(3, compiled.num_vars, 8, extremes=semiring == "real").to(DEVICE)
    x = p.log() if semiring == "log" else p
    results = []
    for module in (fused, layerwise, compiled.module(semiring, backend="torch")):
        xr = x.clone().requires_grad_(True)
        out = module(xr)
        results.append((out, torch.autograd.grad(out.sum(), xr)[0]))
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():  # inference: no state stored, the fused pairs' lower layers skipped
        for module in (fused, layerwise):
            torch.testing.assert_close(module(x), results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][0], results[2][0], rtol=1e-10, atol=1e-12)
    if semiring not in ("mpe", "godel"):  # ties: routed vs split (documented)
        torch.testing.assert_close(results[0][1], results[2][1], rtol=1e-9, atol=1e-12)
