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


def naive_product(src, offsets):
    """Each segment's product as a chain of multiplications: autograd through ``mul`` is the
    product rule, exact with any number of zeros."""
    rows = []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        acc = torch.ones_like(src[0])
        for e in range(a, b):
            acc = acc * src[e]
        rows.append(acc)
    return torch.stack(rows)


def segments_with_zeros():
    """Segments with no zero, one, two and three zeros (per batch column, in other places)."""
    src = torch.tensor(
        [
            [2.0, 0.0, 0.5],  # segment 0: column 0 no zero, column 1 one, column 2 none
            [3.0, 4.0, 0.0],  #   column 2: one zero
            [0.5, 0.0, 1.5],  #   column 1: two zeros
            [0.0, 0.0, 0.0],  # segment 1 (single child): a zero, in every column
            [0.0, 7.0, 0.25],  # segment 2
            [0.0, 0.5, 0.0],  #   column 0: three zeros
            [0.0, 3.0, 2.0],
            [1.5, 0.0, 0.0],  #   column 1: one zero; column 2: two zeros
        ],
        dtype=torch.float64,
    )
    return src, torch.tensor([0, 3, 4, 8])


def test_product_backward_with_zeros_matches_the_product_rule():
    src, offsets = segments_with_zeros()
    cot = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [0.25, 2.0, 1.5]], dtype=src.dtype)
    ours = src.clone().requires_grad_(True)
    ref = src.clone().requires_grad_(True)
    out = segment_reduce_torch(ours, offsets, "prod")
    expected = naive_product(ref, offsets)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad((out * cot).sum(), ours)
    (grad_ref,) = torch.autograd.grad((expected * cot).sum(), ref)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, grad_ref, rtol=1e-15, atol=0)
    # Spot checks by hand: column 0 of segment 0 has no zero (others' product), segment 2's
    # column 0 three zeros (all 0), column 1 of segment 2 one zero (it alone gets 7*0.5*3).
    assert grad[:, 0].tolist()[:3] == [3.0 * 0.5, 2.0 * 0.5, 2.0 * 3.0]
    assert grad[4:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert grad[4:, 1].tolist() == [0.0, 0.0, 0.0, 2.0 * 7.0 * 0.5 * 3.0]
    # Finite differences, first and second order (the product is a polynomial: smooth at 0).
    prod = lambda s: segment_reduce_torch(s, offsets, "prod")  # noqa: E731
    assert torch.autograd.gradcheck(prod, (src.clone().requires_grad_(True),))
    assert torch.autograd.gradgradcheck(prod, (src.clone().requires_grad_(True),))


@pytest.mark.parametrize("reduce", ["prod", "prob_sum"])
def test_product_derivatives_with_zeros_under_torch_func(reduce):
    """Per-example gradients (vmap of grad), full Jacobians (jacrev: vmap over the cotangents
    with the saved inputs unbatched), forward mode (jvp) and per-example Hessians against the
    naive product's."""
    src, offsets = segments_with_zeros()
    if reduce == "prob_sum":  # 1 - prod(1 - x): its zero factors are the ones
        src = 1 - src

    def naive(s):
        return naive_product(s, offsets) if reduce == "prod" else 1 - naive_product(1 - s, offsets)

    stacked = torch.stack([src, src.flip(0), src * 0.5])  # [3, E, B]
    cot = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [0.25, 2.0, 1.5]], dtype=src.dtype)

    def loss(s):
        return (segment_reduce_torch(s, offsets, reduce) * cot).sum()

    per_example = torch.func.vmap(torch.func.grad(loss))(stacked)
    expected = torch.stack([torch.func.grad(lambda s: (naive(s) * cot).sum())(s) for s in stacked])
    assert torch.isfinite(per_example).all()
    torch.testing.assert_close(per_example, expected, rtol=1e-15, atol=0)
    jac = torch.func.jacrev(lambda s: segment_reduce_torch(s, offsets, reduce))(src)
    torch.testing.assert_close(jac, torch.func.jacrev(naive)(src), rtol=1e-15, atol=0)
    tangent = torch.rand(src.shape, generator=torch.Generator().manual_seed(0), dtype=src.dtype)
    _, jvp = torch.func.jvp(lambda s: segment_reduce_torch(s, offsets, reduce), (src,), (tangent,))
    torch.testing.assert_close(jvp, torch.func.jvp(naive, (src,), (tangent,))[1])
    # Second derivatives, reverse over reverse and forward over reverse, per example.
    for hessian in (torch.func.hessian, lambda f: torch.func.jacrev(torch.func.jacrev(f))):
        got = torch.func.vmap(hessian(loss))(stacked)
        want = torch.func.vmap(hessian(lambda s: (naive(s) * cot).sum()))(stacked)
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_vmap_and_per_example_gradients_match_per_segment_oracle(reduce):
    """vmap over a leading dimension equals the oracle per example; vmap(grad) equals plain
    autograd through the oracle, example by example (zeros for the products, -inf terms for
    logsumexp; distinct values so that max/min have no ties)."""
    lengths = [1, 3, 2, 5, 1]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    g = torch.Generator().manual_seed(3)
    src = torch.rand(4, int(offsets[-1]), 2, generator=g, dtype=torch.float64)
    src = src + torch.arange(src[0].numel(), dtype=src.dtype).reshape(src[0].shape) * 1e-3
    if reduce.startswith("lukasiewicz"):
        src = src / 2
    hit = torch.rand(src.shape, generator=g) < 0.3
    # Each segment's first term stays finite for logsumexp: the oracle's gradient of an all
    # -inf segment is NaN (that case is tested on its own below).
    if reduce == "logsumexp":
        hit[:, offsets[:-1]] = False
    if reduce in ("prod", "logsumexp"):
        src = torch.where(hit, torch.zeros_like(src), src)
    if reduce == "prob_sum":
        src = torch.where(hit, torch.ones_like(src), src)
    if reduce == "logsumexp":
        src = src.log()
    cot = torch.rand(len(lengths), 2, generator=g, dtype=src.dtype) + 0.5

    def reduce_ours(s):
        return segment_reduce_torch(s, offsets, reduce)

    expected = torch.stack([per_segment(s, offsets, reduce) for s in src])
    torch.testing.assert_close(torch.func.vmap(reduce_ours)(src), expected, **TOL[src.dtype])
    per_example = torch.func.vmap(torch.func.grad(lambda s: (reduce_ours(s) * cot).sum()))(src)
    oracle = []
    for s in src:
        s = s.clone().requires_grad_(True)
        oracle.append(torch.autograd.grad((per_segment(s, offsets, reduce) * cot).sum(), s)[0])
    assert torch.isfinite(per_example).all()
    torch.testing.assert_close(per_example, torch.stack(oracle), **TOL[src.dtype])


def test_logsumexp_of_all_minus_inf_under_vmap_grad_has_zero_gradient():
    inf = float("inf")
    src = torch.tensor([[-inf, 0.0], [-inf, -inf], [-inf, 1.0]], dtype=torch.float64)
    stacked = torch.stack([src, src.flip(1)])
    offsets = torch.tensor([0, 2, 3])
    per_example = torch.func.vmap(
        torch.func.grad(lambda s: segment_reduce_torch(s, offsets, "logsumexp").sum())
    )(stacked)
    # d logsumexp / d x_e = softmax weight: 1 for the only finite term, 0 for -inf terms and
    # for the all -inf segment (its value -inf does not depend on them).
    assert per_example[0].tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    assert per_example[1].tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
