"""The KLay-compatible modules under torch's transforms and interop: torch.func.vmap (DeepLog's
per-example calls), torch.compile without graph breaks, gradcheck in float64, and DLPack.

Oracles: the module's own batched call (vmap must equal it), autograd of the naive evaluator
of the circuit definition, finite differences (gradcheck), and data pointers (zero copy).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_klay import (
    KLAY_SEMIRINGS,
    Circuit,
    build,
    default_neg,
    naive,
    random_dag,
    random_inputs,
)

V = 5


@pytest.fixture(scope="module")
def definition():
    return random_dag(11, num_vars=V, num_internal=30, num_roots=3)


def modules(d, semiring):
    c = build(d, Circuit())
    plain = c.to_torch_module(semiring)
    pc = c.to_torch_module(semiring, probabilistic=True) if semiring in ("real", "log") else None
    return plain, pc


# ---------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
def test_vmap_equals_batched_call(definition, semiring):
    plain, pc = modules(definition, semiring)
    x_pos = random_inputs((6, V), semiring, 0)
    x_neg = random_inputs((6, V), semiring, 1)
    for module in [plain] if pc is None else [plain, pc]:
        torch.testing.assert_close(torch.func.vmap(module)(x_pos), module(x_pos))
        torch.testing.assert_close(torch.func.vmap(module)(x_pos, x_neg), module(x_pos, x_neg))
        # x_neg shared by every example (in_dims=None), and vmap over [B, B2, V] inputs.
        shared = torch.func.vmap(module, in_dims=(0, None))(x_pos, x_neg[0])
        torch.testing.assert_close(shared, module(x_pos, x_neg[:1].expand(6, V)))
        nested = x_pos.reshape(2, 3, V)
        torch.testing.assert_close(torch.func.vmap(module)(nested), module(nested))


@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
def test_gradients_through_vmap(definition, semiring):
    """Autograd through a vmapped forward, and torch.func.grad of it, equal the gradients of
    the naive evaluator's batched call."""
    plain, _ = modules(definition, semiring)
    x_pos = random_inputs((6, V), semiring, 2)
    cot = torch.rand(6, 3, dtype=torch.float64) + 0.1

    def loss_naive(p):
        return (naive(definition, p, default_neg(p, semiring), semiring) * cot).sum()

    expected = torch.func.grad(loss_naive)(x_pos)
    pos = x_pos.clone().requires_grad_()
    (torch.func.vmap(plain)(pos) * cot).sum().backward()
    torch.testing.assert_close(pos.grad, expected)
    got = torch.func.grad(lambda p: (torch.func.vmap(plain)(p) * cot).sum())(x_pos)
    torch.testing.assert_close(got, expected)


def test_pc_weight_gradients_through_vmap(definition):
    """Per-example literal weights under vmap, gradients w.r.t. the shared circuit weights."""
    _, pc = modules(definition, "log")
    x_pos = random_inputs((6, V), "log", 3)
    torch.func.vmap(pc)(x_pos).sum().backward()
    via_vmap = pc.weights.grad.clone()
    pc.weights.grad = None
    pc(x_pos).sum().backward()
    torch.testing.assert_close(via_vmap, pc.weights.grad)


@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
def test_per_example_gradients_vmap_of_grad(definition, semiring):
    """vmap(grad(f)): per-example input gradients (KLay supports it through torch's slow
    fallback)."""
    plain, _ = modules(definition, semiring)
    x_pos = random_inputs((4, V), semiring, 4)

    def f(p):
        return plain(p).sum()

    per_example = torch.func.vmap(torch.func.grad(f))(x_pos)
    torch.testing.assert_close(per_example, torch.stack([torch.func.grad(f)(x) for x in x_pos]))


def test_vmap_on_the_triton_path(definition):
    """The Triton kernels (CUDA tensors, or the CPU in Triton's interpreter) under vmap."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and not in Triton's interpreter")
    module = build(definition, Circuit()).to_torch_module("real", backend="triton").to(device)
    x_pos = random_inputs((4, V), "real", 0).to(device)
    expected = module(x_pos)
    torch.testing.assert_close(torch.func.vmap(module)(x_pos), expected)


# ---------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("semiring", KLAY_SEMIRINGS)
def test_compile_fullgraph_no_breaks(definition, semiring):
    plain, pc = modules(definition, semiring)
    x_pos = random_inputs((4, V), semiring, 5)
    for module in [plain] if pc is None else [plain, pc]:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(module)(x_pos)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        compiled = torch.compile(module, fullgraph=True, backend="eager")
        pos = x_pos.clone().requires_grad_()
        (compiled(pos) * torch.arange(1.0, 4.0, dtype=torch.float64)).sum().backward()
        ref = x_pos.clone().requires_grad_()
        (module(ref) * torch.arange(1.0, 4.0, dtype=torch.float64)).sum().backward()
        torch.testing.assert_close(pos.grad, ref.grad)


def test_compile_aot_autograd():
    """AOTAutograd traces forward and backward (what inductor compiles; here the aot_eager
    backend, inductor costs too long on a CPU): log semiring (its custom autograd Functions),
    plain and probabilistic, gradients w.r.t. x_pos, x_neg and the circuit weights."""
    d = random_dag(12, num_vars=3, num_internal=8, num_roots=2, constants=False)
    x_pos, x_neg = random_inputs((4, 3), "log", 6), random_inputs((4, 3), "log", 7)
    torch._dynamo.reset()
    for module in modules(d, "log"):
        results = []
        for run in (torch.compile(module, fullgraph=True, backend="aot_eager"), module):
            module.zero_grad()
            pos, neg = x_pos.clone().requires_grad_(), x_neg.clone().requires_grad_()
            out = run(pos, neg)
            (out * torch.tensor([1.0, -2.0], dtype=out.dtype)).sum().backward()
            extra = [p.grad.clone() for p in module.parameters()]
            results.append([out.detach(), pos.grad, neg.grad, *extra])
        for got, expected in zip(*results, strict=True):
            torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("semiring", ["real", "log"])
def test_gradcheck_float64(semiring):
    d = random_dag(13, num_vars=4, num_internal=14, num_roots=2, constants=False)
    c = build(d, Circuit())
    plain = c.to_torch_module(semiring)
    x_pos = random_inputs((3, 4), semiring, 8).requires_grad_()
    x_neg = random_inputs((3, 4), semiring, 9).requires_grad_()
    assert torch.isfinite(plain(x_pos, x_neg)).all()  # finite differences need finite values
    assert torch.autograd.gradcheck(plain, (x_pos,))
    assert torch.autograd.gradcheck(plain, (x_pos, x_neg))
    pc = c.to_torch_module(semiring, probabilistic=True).double()
    weights = pc.weights.detach().clone().requires_grad_()

    def pc_of(w, p):
        return torch.func.functional_call(pc, {"weights": w}, (p,))

    assert torch.autograd.gradcheck(pc_of, (weights, x_pos))


# ---------------------------------------------------------------------------- DLPack
def test_dlpack_zero_copy(definition):
    plain, _ = modules(definition, "real")
    array = np.random.default_rng(0).uniform(0.05, 0.95, size=(4, V))
    x = torch.from_dlpack(array)
    assert x.data_ptr() == array.__array_interface__["data"][0]  # a view of numpy's memory
    out = plain(x)
    torch.testing.assert_close(out, plain(torch.tensor(array)))
    # The output leaves through DLPack without a copy, to numpy and back to torch.
    exported = np.from_dlpack(out)
    assert exported.__array_interface__["data"][0] == out.data_ptr()
    np.testing.assert_array_equal(exported, out.numpy())
    again = torch.from_dlpack(torch.utils.dlpack.to_dlpack(out))
    assert again.data_ptr() == out.data_ptr()
    # Gradients reach a leaf made from numpy memory.
    leaf = torch.from_dlpack(array).requires_grad_()
    plain(leaf).sum().backward()
    expected = torch.func.grad(lambda p: naive(definition, p, 1 - p, "real").sum())(x)
    torch.testing.assert_close(leaf.grad, expected)
    np.testing.assert_array_equal(array, x.numpy())  # the input was not written to
