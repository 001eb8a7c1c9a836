"""The plain-torch layer op against a per-segment oracle, and gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
from trilay.kernels.errors import SemiringError
from trilay.kernels.reference import (
    REDUCTIONS,
    layer_forward_torch,
    segment_reduce_torch,
)

ORACLE = {
    "sum": lambda x: x.sum(0),
    "prod": lambda x: x.prod(0),
    "logsumexp": lambda x: torch.logsumexp(x, 0),
    "max": lambda x: x.amax(0),
    "min": lambda x: x.amin(0),
    "lukasiewicz_and": lambda x: torch.clamp(x.sum(0) - (x.shape[0] - 1), min=0),
    "lukasiewicz_or": lambda x: torch.clamp(x.sum(0), max=1),
    "prob_sum": lambda x: 1 - (1 - x).prod(0),
}


def per_segment(src, offsets, reduce):
    """One torch call per segment: the obvious, slow definition."""
    return torch.stack(
        [
            ORACLE[reduce](src[a:b])
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]
    )


def random_segments(lengths, batch, dtype, seed, special: bool):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    src = torch.rand(int(offsets[-1]), batch, generator=g, dtype=dtype)
    if special:
        src[torch.rand(src.shape, generator=g) < 0.2] = 0.0
    return src, offsets


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("batch", [1, 7, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("special", [False, True])
def test_segment_reduce_matches_per_segment_oracle(reduce, batch, dtype, special):
    lengths = [1, 3, 1, 40, 2, 1, 17]
    src, offsets = random_segments(lengths, batch, dtype, seed=batch, special=special)
    if reduce == "logsumexp":
        src = src.log()  # zeros become -inf
    out = segment_reduce_torch(src, offsets, reduce)
    torch.testing.assert_close(out, per_segment(src, offsets, reduce), **TOL[dtype])


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_gradcheck_float64(reduce):
    # Distinct values: max/min are differentiable away from ties.
    src, offsets = random_segments([1, 3, 2, 5], 3, torch.float64, seed=1, special=False)
    src = src + torch.arange(src.numel(), dtype=torch.float64).reshape(src.shape) * 1e-3
    src.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: segment_reduce_torch(s, offsets, reduce), (src,))


def test_product_gradient_is_exact_with_zeros():
    src = torch.tensor(
        [[2.0], [3.0], [0.0], [4.0], [0.0], [0.0], [5.0]], dtype=torch.float64, requires_grad=True
    )
    offsets = torch.tensor([0, 2, 4, 7])
    out = segment_reduce_torch(src, offsets, "prod")
    (grad,) = torch.autograd.grad(out.sum(), src)
    # no zero: product of the others; one zero: only it gets the others' product; two: nothing.
    assert grad[:, 0].tolist() == [3.0, 2.0, 4.0, 0.0, 0.0, 0.0, 0.0]


def test_logsumexp_of_all_minus_inf_is_minus_inf_with_zero_gradient():
    inf = float("inf")
    src = torch.tensor(
        [[-inf, 0.0], [-inf, -inf], [-inf, 1.0]], dtype=torch.float64, requires_grad=True
    )
    offsets = torch.tensor([0, 2, 3])
    out = segment_reduce_torch(src, offsets, "logsumexp")
    assert out[0].tolist() == [-inf, 0.0]
    (grad,) = torch.autograd.grad(out.sum(), src)
    assert torch.isfinite(grad).all()
    assert grad.tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]


def test_layer_forward_gathers_then_reduces():
    values = torch.tensor([[1.0], [2.0], [3.0]])
    out = layer_forward_torch(values, torch.tensor([2, 0, 1, 1]), torch.tensor([0, 2, 4]), "sum")
    assert out[:, 0].tolist() == [4.0, 4.0]


def test_unknown_reduction():
    with pytest.raises(SemiringError, match="unknown reduction 'mean'"):
        segment_reduce_torch(torch.zeros(2, 1), torch.tensor([0, 2]), "mean")
