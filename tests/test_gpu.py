"""GPU-only checks: the Triton path on CUDA, no host syncs in the hot path."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA, random_weights
from trilay.engine import Circuit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def compiled():
    c = Circuit(64)
    for name in ("sudoku_4", "4-grid"):
        c.add_sdd_file(DATA / f"{name}.sdd", DATA / f"{name}.vtree")
    return c.compile().to("cuda")


@pytest.mark.parametrize("semiring", ["real", "log", "mpe", "godel"])
@pytest.mark.parametrize("batch", [1, 128])
def test_cuda_triton_matches_torch_path(compiled, semiring, batch):
    module = compiled.module(semiring)
    assert module.backend_for(torch.device("cuda")) == "triton"
    reference = compiled.module(semiring, backend="torch")
    p = random_weights(batch, compiled.num_vars, 1, dtype=torch.float64).cuda()
    x = (p.clamp_min(1e-3).log() if semiring == "log" else p).requires_grad_(True)
    out = module(x)
    ref = reference(x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    if semiring in ("real", "log"):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_forward_backward_without_host_syncs(compiled):
    module = compiled.module("log")
    x = torch.rand(128, compiled.num_vars, device="cuda").log().requires_grad_(True)
    module(x).sum().backward()  # warm-up: compile kernels outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        module(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graphs_replay_matches_eager(compiled):
    eager = compiled.module("log")
    graphed = compiled.module("log", cuda_graphs=True)
    for _ in range(3):  # the first call captures, later calls replay with new values
        x = torch.rand(64, compiled.num_vars, device="cuda").log()
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_a, out_b = eager(a), graphed(b)
        torch.testing.assert_close(out_b, out_a)
        (ga,) = torch.autograd.grad(out_a.sum(), a)
        (gb,) = torch.autograd.grad(out_b.sum(), b)
        torch.testing.assert_close(gb, ga)


def test_cuda_graphs_forward_only_and_new_shapes(compiled):
    """Inputs that need no gradient capture a forward-only graph; a new batch size or dtype
    captures its own graph rather than replaying a wrong one."""
    eager = compiled.module("real")
    graphed = compiled.module("real", cuda_graphs=True)
    for batch, dtype in (
        (8, torch.float32),
        (8, torch.float32),
        (3, torch.float32),
        (3, torch.float64),
    ):
        p = torch.rand(batch, compiled.num_vars, device="cuda", dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(graphed(p), eager(p))
    assert len(graphed._graphs) == 3


def test_torch_compile_of_the_triton_path(compiled):
    """torch.compile over a module on CUDA (the Triton path): same values and gradients as
    eager."""
    module = compiled.module("log")
    compiled_module = torch.compile(module)
    x = torch.rand(16, compiled.num_vars, device="cuda").log()
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = module(a), compiled_module(b)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(
        torch.autograd.grad(out_b.sum(), b)[0], torch.autograd.grad(out_a.sum(), a)[0]
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(compiled, dtype):
    module = compiled.module("log")
    p = torch.rand(32, compiled.num_vars, device="cuda").clamp_min(1e-2)
    x = p.log().to(dtype).requires_grad_(True)
    out = module(x)
    assert out.dtype == dtype
    ref = module(x.detach().float())  # the float32 evaluation of the same rounded weights
    torch.testing.assert_close(out.float(), ref.to(dtype).float())
    (g,) = torch.autograd.grad(out.float().sum(), x)
    assert g.dtype == dtype and torch.isfinite(g.float()).all()
