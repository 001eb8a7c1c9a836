"""The real NeSy circuits (KLay's experiments) against PySDD's own counts."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DATA, random_weights
from pysdd.sdd import SddManager, Vtree
from trilay.engine import Circuit, evaluate_naive

NAMES = ["sudoku_4", "4-grid", "road_r", "seq_fun"]


def pysdd_root(name):
    manager = SddManager.from_vtree(Vtree.from_file(str(DATA / f"{name}.vtree").encode()))
    return manager, manager.read_sdd_file(str(DATA / f"{name}.sdd").encode())


def trilay_circuit(name):
    c = Circuit()
    c.add_sdd_file(DATA / f"{name}.sdd", DATA / f"{name}.vtree")
    return c


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("smooth", [True, False])
def test_model_count_equals_pysdd(name, smooth):
    manager, root = pysdd_root(name)
    compiled = trilay_circuit(name).compile(smooth=smooth)
    assert compiled.num_vars == manager.var_count()
    half = torch.full((1, compiled.num_vars), math.log(0.5), dtype=torch.float64)
    log_count = compiled.module("log")(half)[0, 0].item() + compiled.num_vars * math.log(2)
    # PySDD's log-space count with unit weights; global_model_count() is a 64-bit integer and
    # wraps for seq_fun (about 2^370 models), so it is compared only where it fits.
    unit = root.wmc(log_mode=True)
    assert log_count == pytest.approx(unit.propagate(), rel=1e-12)
    count = root.global_model_count()
    if log_count < 52 * math.log(2):
        prob = compiled.module("real")(half.exp())[0, 0].item()
        assert round(prob * 2**compiled.num_vars) == count


@pytest.mark.parametrize("name", NAMES)
def test_weighted_count_equals_pysdd_wmc(name):
    """Literal weights that do not sum to one: only a smoothed count matches PySDD's."""
    manager, root = pysdd_root(name)
    compiled = trilay_circuit(name).compile()
    V = compiled.num_vars
    pos = random_weights(2, V, 5, extremes=False) * 1.5
    neg = random_weights(2, V, 6, extremes=False)
    log_module = compiled.module("log", validate=False)  # unnormalized: weights above 1
    out = log_module(pos.log(), neg.log())
    for row in range(2):
        wmc = root.wmc(log_mode=True)
        for v in range(1, V + 1):
            wmc.set_literal_weight(manager.literal(v), math.log(pos[row, v - 1]))
            wmc.set_literal_weight(manager.literal(-v), math.log(neg[row, v - 1]))
        assert out[row, 0].item() == pytest.approx(wmc.propagate(), rel=1e-9)


@pytest.mark.parametrize("name", ["sudoku_4", "road_r"])
def test_gradients_equal_pysdd_literal_derivatives(name):
    manager, root = pysdd_root(name)
    compiled = trilay_circuit(name).compile()
    V = compiled.num_vars
    pos = random_weights(1, V, 8, extremes=False).requires_grad_(True)
    neg = random_weights(1, V, 9, extremes=False).requires_grad_(True)
    out = compiled.module("real")(pos, neg)
    g_pos, g_neg = torch.autograd.grad(out.sum(), [pos, neg])
    wmc = root.wmc(log_mode=False)
    for v in range(1, V + 1):
        wmc.set_literal_weight(manager.literal(v), pos[0, v - 1].item())
        wmc.set_literal_weight(manager.literal(-v), neg[0, v - 1].item())
    total = wmc.propagate()
    assert out.item() == pytest.approx(total, rel=1e-9)
    expected_pos = torch.tensor(
        [wmc.literal_derivative(manager.literal(v)) for v in range(1, V + 1)]
    )
    expected_neg = torch.tensor(
        [wmc.literal_derivative(manager.literal(-v)) for v in range(1, V + 1)]
    )
    torch.testing.assert_close(g_pos[0], expected_pos.to(g_pos.dtype), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_neg[0], expected_neg.to(g_neg.dtype), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["sudoku_4", "4-grid"])
def test_layered_equals_naive_per_node_autograd(name):
    """Unsmoothed, the layered circuit equals the circuit as written, evaluated node by node."""
    circuit = trilay_circuit(name)
    module = circuit.compile(smooth=False).module("log")
    x = random_weights(3, circuit.num_vars, 2).log().requires_grad_(True)
    out = module(x)
    ref = evaluate_naive(circuit, x, semiring="log")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_sudoku_cnf_compiles_to_288_models():
    c = Circuit()
    c.add_cnf(DATA / "sudoku_4.cnf")
    compiled = c.compile()
    half = torch.full((1, compiled.num_vars), 0.5, dtype=torch.float64)
    assert round(compiled.module("real")(half).item() * 2**compiled.num_vars) == 288
