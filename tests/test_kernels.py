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
)
from trilay.kernels.reference import segment_reduce_torch

REDUCTIONS = sorted(TRITON_REDUCTIONS)
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
    i32 = lambda t: t.to(torch.int32)  # noqa: E731
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
    return x


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

    cot = torch.rand(out.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
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
    x = torch.tensor([[2.0], [3.0], [0.0], [4.0], [0.0], [5.0]], dtype=torch.float64)
    # node 0: 2*3 ; node 1: 0*4 (one zero) ; node 2: 0*0*5 (two zeros)
    child = torch.tensor([0, 1, 2, 3, 2, 4, 5], dtype=torch.int32)
    offsets = torch.tensor([0, 2, 4, 7], dtype=torch.int32)
    parent_edge = torch.argsort(child.long(), stable=True).to(torch.int32)
    parent = torch.tensor([0, 0, 1, 1, 2, 2, 2], dtype=torch.int32)[parent_edge.long()]
    parent_offsets = torch.tensor([0, 1, 2, 4, 5, 6, 7], dtype=torch.int32)
    out, aux, arg = layer_fwd(x, child, offsets, "prod")
    assert out[:, 0].tolist() == [6.0, 0.0, 0.0]
    grad = layer_bwd(
        torch.ones_like(out), out, aux, arg, x, parent_edge, parent, parent_offsets, "prod"
    )
    # x2 = 0 sits in node 1 (only zero: gets 4) and twice in node 2 (two zeros: 0).
    assert grad[:, 0].tolist() == [3.0, 2.0, 4.0, 0.0, 0.0, 0.0]


def test_empty_batch_and_unknown_reduction():
    child, offsets, *_ = make_layer([2, 1], 3, seed=0)
    out, _, _ = layer_fwd(torch.zeros(3, 0), child, offsets, "sum")
    assert out.shape == (2, 0)
    with pytest.raises(SemiringError, match="unknown reduction"):
        layer_fwd(torch.zeros(3, 1), child, offsets, "mean")


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    child, offsets, *_ = make_layer([2], 3, seed=0)
    with pytest.raises(DeviceError, match="TRITON_INTERPRET"):
        empty = torch.zeros(0, dtype=torch.int32)
        plain = TritonLayer(child, offsets, child, child, offsets, *[empty] * 5, "sum")
        circuit_forward_triton(torch.zeros(3, 1), [plain])


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "mpe_log", "godel"])
def test_circuit_triton_matches_torch_path(semiring):
    c = Circuit()
    c.add_sdd_file(DATA / "road_r.sdd", DATA / "road_r.vtree")
    c.add_cnf(random_cnf(41, 4, seed=4))  # a second root sharing the leaves
    compiled = c.compile()
    torch_module = compiled.module(semiring, backend="torch")
    triton_module = compiled.module(semiring, backend="triton")
    p = random_weights(5, 41, 3, extremes=semiring in ("real", "log"))
    if semiring in ("log", "mpe_log"):
        p = p.log()
    neg = random_weights(5, 41, 4, extremes=False)
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
    module = c.compile().module("log", backend="triton")
    assert models_of_cnf(clauses, 5).shape[0] > 0
    x = random_weights(2, 5, 1, extremes=False).log().requires_grad_(True)
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

    compiled = torch.compile(
        lambda v: triton_layer.layer(v, *index, "sum") * 2, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(x), triton_layer.layer(x, *index, "sum") * 2)


@pytest.mark.parametrize(
    "semiring", ["real", "log", "mpe", "godel", "fuzzy_product", "fuzzy_lukasiewicz"]
)
def test_hub_nodes_split_into_chunks(semiring):
    """An OR with 600 children and a literal read by 600 parents: both take the two-step
    (chunked) path, and agree with the PyTorch path."""
    from trilay.engine.compiled import HUB_CHUNK

    width = 600
    assert width > 2 * HUB_CHUNK
    c = Circuit(12)
    terms = []
    for i in range(width):
        lits = [1] + [(v if (i >> (v - 2)) & 1 else -v) for v in range(2, 12)]
        terms.append(c.conjoin([c.literal(lit) for lit in lits]))
    c.add_root(c.disjoin(terms))
    compiled = c.compile(smooth=semiring in ("mpe", "godel"))
    assert any(layer.chunk_offsets.numel() for layer in compiled.layers)
    assert any(layer.parent_chunk_offsets.numel() for layer in compiled.layers)
    p = random_weights(3, 12, 5, extremes=False)
    x = p.log() if semiring == "log" else p
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = compiled.module(semiring, backend="triton")(a)
    ref = compiled.module(semiring, backend="torch")(b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
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
    return c.compile(), [models_of_cnf(clauses, 5), models_of_cnf([[-3]], 5)]


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
    forward, backward = triton_layer.layer_forward, triton_layer.layer_backward

    def counted_forward(*args):
        calls["forward"] += 1
        return forward(*args)

    def counted_backward(*args):
        calls["backward"] += 1
        return backward(*args)

    monkeypatch.setattr(triton_layer, "layer_forward", counted_forward)
    monkeypatch.setattr(triton_layer, "layer_backward", counted_backward)
    x = random_weights(4, 5, 3, extremes=True)
    out = torch.func.vmap(module)(x)
    torch.testing.assert_close(out, _real_oracle(models, x))
    assert calls == {"forward": compiled.num_layers, "backward": 0}
    per_example = torch.func.vmap(torch.func.grad(lambda p: module(p)[0]))(x)
    assert calls == {"forward": 2 * compiled.num_layers, "backward": compiled.num_layers}
    ref = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_real_oracle(models, ref)[:, 0].sum(), ref)
    torch.testing.assert_close(per_example, expected)


def test_circuit_jacobian_by_jacrev():
    """jacrev vmaps the backward over the cotangents while the saved forward state is not
    vmapped (the backward's vmap rule repeats it across the columns); against the Jacobian of
    the plain-torch oracle. Also under an outer vmap (per-example Jacobians)."""
    compiled, models = _small_circuit()
    module = compiled.module("real", backend="triton")
    x = random_weights(3, 5, 4, extremes=True)
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
    x = random_weights(2, 5, 5, extremes=False).requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x).sum(), x, create_graph=True)
    ref = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(grad, torch.autograd.grad(_real_oracle(models, ref).sum(), ref)[0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(grad.sum(), x)
    scale = torch.ones(2, 2, dtype=x.dtype, requires_grad=True)  # a grad_output with a graph
    (grad,) = torch.autograd.grad((module(x) * scale).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
    with pytest.raises(NotImplementedError, match="no double backward"):
        torch.func.jacrev(torch.func.jacrev(lambda p: module(p)[0]))(x[0].detach())


def test_hub_chunks_under_vmap_grad():
    """Hub nodes (split into chunks forward and backward) under vmap(grad): per-example
    gradients equal the batched call's (rows are independent), which equal the PyTorch path's."""
    from trilay.engine.compiled import HUB_CHUNK

    width = HUB_CHUNK + 44
    c = Circuit(10)
    terms = []
    for i in range(width):
        lits = [1] + [(v if (i >> (v - 2)) & 1 else -v) for v in range(2, 11)]
        terms.append(c.conjoin([c.literal(lit) for lit in lits]))
    c.add_root(c.disjoin(terms))
    compiled = c.compile(smooth=False)
    assert any(layer.chunk_offsets.numel() for layer in compiled.layers)
    assert any(layer.parent_chunk_offsets.numel() for layer in compiled.layers)
    module = compiled.module("log", backend="triton")
    x = random_weights(2, 10, 6, extremes=False).log()
    per_example = torch.func.vmap(torch.func.grad(lambda p: module(p)[0]))(x)
    ref = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(compiled.module("log", backend="torch")(ref).sum(), ref)
    torch.testing.assert_close(per_example, expected, rtol=1e-10, atol=1e-12)
