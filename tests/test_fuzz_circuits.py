"""The fuzzing tier for evaluation: random circuits on every backend against oracles that do
not use the compiler.

Random multi-rooted AND/OR circuits (children from any depth, shared and repeated children,
constants, literals as roots, repeated roots) compiled as written, in a random semiring at
random weights (exact 0 and 1, so ``-inf`` in log space; a NaN now and then), on the PyTorch
path and on the Triton path (the interpreter on CPU), against the naive per-node evaluator
(:func:`trilay.engine.evaluate_naive`, autograd for the gradients); and random d-DNNFs,
smoothed, against brute-force enumeration of their models. A small derandomized budget runs by
default; ``-m slow`` runs a large one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TRITON_DEVICE, all_assignments, brute_force, shannon_circuit
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from trilay.engine import Circuit, evaluate_naive
from trilay.engine.circuit import AND, FALSE, TRUE

_QUIET = dict(
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = settings(max_examples=12, derandomize=True, **_QUIET)
LARGE = settings(max_examples=400, **_QUIET)
MAX_SEMIRINGS = ("mpe", "mpe_log", "godel", "fuzzy_godel")


@st.composite
def circuits(draw):
    """``(circuit, num_vars)``: a random circuit built with the public builders."""
    num_vars = draw(st.integers(1, 5))
    c = Circuit(num_vars)
    pool = [c.literal(draw(st.sampled_from([1, -1])) * v) for v in range(1, num_vars + 1)]
    if draw(st.booleans()):
        pool.append(draw(st.sampled_from([c.true(), c.false()])))
    for _ in range(draw(st.integers(1, 14))):
        kids = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=4))
        if draw(st.booleans()):
            kids.append(c.literal(draw(st.integers(1, num_vars)) * draw(st.sampled_from([1, -1]))))
        pool.append((c.conjoin if draw(st.booleans()) else c.disjoin)(kids))
    roots = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    for root in [pool[-1], *roots]:
        c.add_root(root)
    return c, num_vars


def _random_weights(draw, batch, num_vars):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    p = torch.rand(batch, num_vars, generator=g, dtype=torch.float64)
    special = torch.rand(batch, num_vars, generator=g) < 0.2
    return torch.where(special, torch.randint(0, 2, p.shape, generator=g).double(), p)


@st.composite
def as_written(draw):
    """Any circuit, compiled as written, in any semiring: against the naive evaluator."""
    c, num_vars = draw(circuits())
    semiring = draw(
        st.sampled_from(("real", "log", "fuzzy_godel", "fuzzy_product", "fuzzy_lukasiewicz"))
    )
    p = _random_weights(draw, draw(st.sampled_from([1, 3, 7])), num_vars)
    if draw(st.integers(0, 9)) == 0:
        p[0, 0] = float("nan")
    return c, semiring, p


@st.composite
def smoothed(draw):
    """A d-DNNF (a decision diagram over a random model set), smoothed, in a semiring that
    counts or maximizes over models, with default or explicit negative weights: against the
    brute-force enumeration of its models."""
    num_vars = draw(st.integers(1, 5))
    rows = draw(st.lists(st.integers(0, 2**num_vars - 1), max_size=2**num_vars))
    assignments = all_assignments(num_vars)
    models = assignments[sorted(set(rows))]
    c = Circuit(num_vars)
    c.add_root(shannon_circuit(c, models, num_vars))
    semiring = draw(st.sampled_from(("real", "log", "mpe", "mpe_log", "godel")))
    batch = draw(st.sampled_from([1, 3, 7]))
    p = _random_weights(draw, batch, num_vars)
    neg = _random_weights(draw, batch, num_vars) if draw(st.booleans()) else None
    return c, models, semiring, p, neg


def _has_constants(c: Circuit) -> bool:
    kind, _, start, _, _ = c.arrays()
    empty = start[1:] == start[:-1]
    return bool(((kind == TRUE) | (kind == FALSE) | ((kind >= AND) & empty)).any())


def _log_space(semiring) -> bool:
    return semiring in ("log", "mpe_log")


def _both_backends(compiled, semiring, pos, neg):
    """``[(out, grads)]`` on the PyTorch path and the Triton path."""
    weight = torch.rand(
        pos.shape[0], compiled.num_roots, generator=torch.Generator().manual_seed(1)
    )
    results = []
    for backend, device in (("torch", "cpu"), ("triton", TRITON_DEVICE)):
        module = compiled.to(device).module(semiring, backend=backend)
        x = pos.to(device).requires_grad_(True)
        y = None if neg is None else neg.to(device).requires_grad_(True)
        out = module(x, y)
        wanted = [x] if y is None else [x, y]
        loss = (out * weight.double().to(device)).sum()
        results.append((out.cpu(), [g.cpu() for g in torch.autograd.grad(loss, wanted)]))
    (out_torch, g_torch), (out_triton, g_triton) = results
    torch.testing.assert_close(out_triton, out_torch, rtol=1e-9, atol=1e-12, equal_nan=True)
    # Gradients: not through ties (the kernels route, the reference splits), nor at NaN weights
    # (where every gradient order gives NaNs in its own places).
    if semiring not in MAX_SEMIRINGS and not torch.isnan(pos).any():
        for a, b in zip(g_triton, g_torch, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, equal_nan=True)
    return out_torch, g_torch, weight.double()


def _check_as_written(case):
    c, semiring, p = case
    pos = p.log() if _log_space(semiring) else p
    out, grads, weight = _both_backends(c.compile(smooth=False), semiring, pos, None)
    if torch.isnan(p).any() or _has_constants(c):
        # Both backends agree; the naive evaluator does not fold constants as the compiler
        # does (AND(NaN, false) is false once compiled, NaN node by node; OR(true, x) is true,
        # which in real arithmetic is 1 + x unless the OR is deterministic, as in a d-DNNF; a
        # folded Lukasiewicz AND(x, false) has no kink at x = 1 left).
        return
    x = pos.clone().requires_grad_(True)
    ref = evaluate_naive(c, x, None, semiring)  # the circuit as written, no compiler involved
    torch.testing.assert_close(out, ref.detach(), rtol=1e-9, atol=1e-12)
    if semiring not in MAX_SEMIRINGS:
        loss = (ref * weight).sum()
        (g_ref,) = (
            torch.autograd.grad(loss, x, allow_unused=True) if loss.requires_grad else (None,)
        )
        g_ref = torch.zeros_like(x) if g_ref is None else g_ref  # roots that read no weight
        torch.testing.assert_close(grads[0], g_ref, rtol=1e-8, atol=1e-10)


def _check_smoothed(case):
    c, models, semiring, p, neg = case
    n = 1 - p if neg is None else neg
    if _log_space(semiring):
        pos, neg, n = p.log(), None if neg is None else neg.log(), n.log()
    else:
        pos = p
    out, _, _ = _both_backends(c.compile(), semiring, pos, neg)
    expected = brute_force(models, pos, n, semiring)
    torch.testing.assert_close(out[:, 0], expected, rtol=1e-9, atol=1e-12)


@SMALL
@given(as_written())
def test_circuits_as_written_agree_with_the_naive_evaluator(case):
    _check_as_written(case)


@SMALL
@given(smoothed())
def test_smoothed_decision_diagrams_agree_with_enumeration(case):
    _check_smoothed(case)


@pytest.mark.slow
@LARGE
@given(as_written())
def test_circuits_as_written_thoroughly(case):
    _check_as_written(case)


@pytest.mark.slow
@LARGE
@given(smoothed())
def test_smoothed_decision_diagrams_thoroughly(case):
    _check_smoothed(case)
