"""The DeepProbLog frontend with neural predicates.

Oracles: hand computation from the issue (DeepProbLog's own test cases, the addition formula
sum_{i+j=S} p1[i] p2[j]), brute-force enumeration of the possible worlds (values and, through
autograd, gradients w.r.t. the network outputs), and the IDX format written by hand.
"""

from __future__ import annotations

import gzip
import itertools
import math
import struct

import numpy as np
import pytest
import torch

pytest.importorskip("problog")

from deepproblog_nets import Table  # noqa: E402
from trilay.frontends.deepproblog import (  # noqa: E402
    Model,
    NetworkOutputError,
    UnknownInput,
    UnknownNetwork,
)
from trilay.frontends.deepproblog import mnist_addition as mnist  # noqa: E402

DUMMY = """nn(dummy1,[X],Y,[a,b,c]) :: net1(X,Y).
test1(X1,Y1,X2,Y2) :- net1(X1,Y1), net1(X2,Y2)."""


def test_deepproblog_test_cases():
    model = Model(DUMMY, {"dummy1": Table([[0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])})
    inputs = {"i1": torch.tensor([0]), "i2": torch.tensor([1])}
    for query, expected in [
        ("test1(i1,a,i2,b)", 0.8 * 0.3),
        ("test1(i1,a,i2,a)", 0.8 * 0.2),
        ("test1(i1,a,i1,b)", 0.0),  # one input, two classes: mutually exclusive
        ("test1(i1,a,i1,a)", 0.8),
    ]:
        torch.testing.assert_close(
            model([query], inputs), torch.tensor([expected], dtype=torch.float64)
        )


def test_tiny_probability_survives_deepproblog_issue_17():
    p = 1e-8
    program = "nn(net,[X],Y,[a,b,c]) :: ch(X,Y).\nq(X) :- ch(X,a).\nq(X) :- ch(X,b)."
    for outputs, rows in [
        ("probs", [[p, p, 1 - 2 * p]]),
        ("log_probs", np.log([[p, p, 1 - 2 * p]])),
    ]:
        model = Model(program, {"net": Table(rows)}, outputs=outputs)
        got = model(["q(x)"], {"x": torch.tensor([0])})
        torch.testing.assert_close(
            got, torch.tensor([2 * p], dtype=torch.float64), rtol=1e-9, atol=0
        )
    model = Model(program, {"net": Table(np.log([[p, p, 1 - 2 * p]]))}, outputs="log_probs")
    model = model.float()
    got = model(["q(x)"], {"x": torch.tensor([0])})
    torch.testing.assert_close(got, torch.tensor([2 * p]), rtol=1e-5, atol=0)


def _addition_oracle(p1, p2):
    """[batch, 10] x2 -> [batch, 19]: sum over i + j = S of p1[i] p2[j]."""
    out = torch.zeros(p1.shape[0], 19, dtype=p1.dtype)
    for i, j in itertools.product(range(10), repeat=2):
        out[:, i + j] += p1[:, i] * p2[:, j]
    return out


def test_addition_batch_is_one_cached_circuit_and_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    table = torch.softmax(torch.randn(6, 10, generator=gen, dtype=torch.float64), -1)
    model = Model(mnist.PROGRAM, {"mnist_net": Table(table)})
    a, b = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    queries = [[f"addition(a0, b0, {s})" for s in range(19)]] * 3
    got = model(queries, {"a0": a, "b0": b})  # [3, 19]
    torch.testing.assert_close(got, _addition_oracle(table[a], table[b]))
    assert len(model.circuits) == 1
    # Same structure, other images and a subset of the sums: the cached circuit, no new one.
    got = model(["addition(a0, b0, 7)", "addition(a0, b0, 0)"], {"a0": b[:2], "b0": a[:2]})
    torch.testing.assert_close(got, _addition_oracle(table[b[:2]], table[a[:2]])[[0, 1], [7, 0]])
    assert len(model.circuits) == 1


@pytest.mark.parametrize(
    "program, method, sums",
    [
        ("carry", "direct", [0, 9, 57, 100, 131, 198]),
        ("carry", "sdd", [0, 9, 57, 100, 131, 198]),
        ("deepproblog", "direct", [57, 131]),  # grounds 10^4 digit tuples per sum: slow
    ],
)
def test_multi_digit_addition_against_enumeration(program, method, sums):
    gen = torch.Generator().manual_seed(1)
    table = torch.softmax(torch.randn(4, 10, generator=gen, dtype=torch.float64), -1)
    model = Model(mnist.PROGRAMS[program], {"mnist_net": Table(table)}, method=method)
    got = model(
        [f"multi_addition([a0,a1],[b0,b1],{s})" for s in sums],
        {k: torch.full((len(sums),), i) for i, k in enumerate(["a0", "a1", "b0", "b1"])},
    )
    expected = torch.zeros(199, dtype=torch.float64)
    for d in itertools.product(range(10), repeat=4):
        expected[10 * d[0] + d[1] + 10 * d[2] + d[3]] += torch.prod(table[range(4), list(d)])
    torch.testing.assert_close(got, expected[sums])


CONDITIONAL = """nn(cnet,[X]) :: heads(X).
nn(dnet,[X],Y,[0,1,2]) :: d(X,Y).
0.3::noise.
seen(X,Y) :- heads(X).
seen(X,Y) :- d(Y,2), noise.
seen(X,Y) :- d(Y,1).
evidence(seen(u,v)).
q(Y) :- d(Y,0).
r(X) :- heads(X)."""


def _brute_force(ph, pd, none_world):
    """P(q(v) | seen(u,v)), P(r(u) | seen(u,v)) by enumerating heads, d, noise. With
    ``none_world``, d also takes DeepProbLog's extra "none" value, weighing ``1 - sum(pd)``
    (0 on the simplex, but its gradient is DeepProbLog's)."""
    num_q = num_r = den = 0.0
    values = [0, 1, 2, "none"] if none_world else [0, 1, 2]
    for h, d, n in itertools.product([True, False], values, [True, False]):
        w_d = 1 - pd.sum() if d == "none" else pd[d]
        w = (ph if h else 1 - ph) * w_d * (0.3 if n else 0.7)
        if h or (d == 2 and n) or d == 1:
            den = den + w
            num_q = num_q + (w if d == 0 else 0.0)
            num_r = num_r + (w if h else 0.0)
    return num_q / den, num_r / den


@pytest.mark.parametrize("gradient", ["deepproblog", "normalized"])
def test_evidence_nn2_values_and_gradients_against_enumeration(gradient):
    ph = torch.tensor([0.35, 0.8], dtype=torch.float64)
    pd = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]], dtype=torch.float64)
    cnet, dnet = Table(ph), Table(pd)
    model = Model(CONDITIONAL, {"cnet": cnet, "dnet": dnet}, gradient=gradient)
    inputs = {"u": torch.tensor([0, 1]), "v": torch.tensor([1, 0])}
    got = model([["q(v)", "r(u)"]] * 2, inputs)  # [2, 2]
    got.log().sum().backward()

    ph2 = ph.detach().clone().requires_grad_()
    pd2 = pd.detach().clone().requires_grad_()
    none_world = gradient == "deepproblog"
    expected = torch.stack(
        [torch.stack(_brute_force(ph2[u], pd2[v], none_world)) for u, v in [(0, 1), (1, 0)]]
    )
    expected.log().sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cnet.weight.grad, ph2.grad)
    torch.testing.assert_close(dnet.weight.grad, pd2.grad)


class LogSoftmaxTable(torch.nn.Module):
    """Logits per input index, returned as log-probabilities (a network's log_softmax head)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, index):
        return torch.log_softmax(self.logits[index.long().view(-1)], -1)


def test_addition_gradients_against_autograd_through_the_formula():
    # The circuit returns WMC(q AND C) / WMC(C); WMC(C) = sum_i p_i is 1 on the simplex but
    # has a gradient along (1, ..., 1) w.r.t. raw outputs, which softmax projects out: compare
    # the gradients w.r.t. the network's parameters (the logits), what training uses.
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    net = LogSoftmaxTable(logits)
    model = Model(mnist.PROGRAM, {"mnist_net": net}, outputs="log_probs")
    a, b, s = torch.tensor([0, 2]), torch.tensor([1, 3]), [4, 11]
    loss = model.loss([f"addition(a0, b0, {x})" for x in s], {"a0": a, "b0": b})
    loss.backward()
    oracle_logits = logits.clone().requires_grad_()
    p = torch.softmax(oracle_logits, -1)
    expected = -_addition_oracle(p[a], p[b])[[0, 1], s].log().mean()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(net.logits.grad, oracle_logits.grad)


def test_errors_name_the_problem():
    with pytest.raises(UnknownNetwork, match="dummy1"):
        Model(DUMMY, {"other": Table([[1.0, 0, 0]])})
    inputs = {"i1": torch.tensor([0]), "i2": torch.tensor([0])}
    for rows, what in [
        ([[0.5, 0.5]], "shape"),  # two classes for a three-value domain
        ([[1.2, -0.1, -0.1]], "non-negative"),
        ([[0.5, 0.3, 0.1]], "summing to 1"),
    ]:
        with pytest.raises(NetworkOutputError, match=what):
            Model(DUMMY, {"dummy1": Table(rows)})(["test1(i1,a,i2,b)"], inputs)
    with pytest.raises(UnknownInput, match="i2"):
        Model(DUMMY, {"dummy1": Table([[1.0, 0, 0]])})(["test1(i1,a,i2,b)"], {"i1": inputs["i1"]})


def test_idx_loader_reads_generated_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)

    def write(path, array, opener=open):
        with opener(path, "wb") as f:
            f.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape))
            f.write(array.tobytes())

    write(tmp_path / "train-images-idx3-ubyte.gz", images, gzip.open)
    write(tmp_path / "train-labels-idx1-ubyte", labels)
    write(tmp_path / "t10k-images-idx3-ubyte", images[:2])
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:2], gzip.open)
    train_x, train_y, test_x, test_y = mnist.load_mnist(tmp_path)
    torch.testing.assert_close(train_x, torch.tensor(images, dtype=torch.float32)[:, None] / 255)
    assert train_y.tolist() == labels.tolist() and test_y.tolist() == labels[:2].tolist()
    assert test_x.shape == (2, 1, 4, 3)
    (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="magic"):
        mnist.load_idx(tmp_path / "bad")


def test_mnist_addition_single_digit_learns_from_sums_only():
    # 1,200 training / 597 held-out test images; 12 epochs of 600 pairs take a few seconds.
    result = mnist.train(1, log=lambda line: None)
    assert result["test_pairs"] == 298
    assert max(result["accuracy"][-3:]) > 0.9


def test_mnist_addition_command_reports_each_size(capsys):
    mnist.main(["--digits", "1", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "N=1 epoch 1:" in out
    summary = out.split("summary:")[1]
    assert "trilay       N=1: compile" in summary and "after 1 epoch" in summary


def test_nn2_complement_is_exact_near_probability_one():
    # P(not h) = 1 - p from the network's own output: with log_probs, exp(log p) rounds to 1
    # below |log p| ~ 1e-16, and 1 - that would be 0.
    program = "nn(net,[X]) :: h(X).\nq(X) :- \\+h(X)."
    log_p = -1e-17
    for outputs, row, expected in [
        ("probs", [1 - 2**-40], 2**-40),  # 1 - 2**-40 is exact in float64
        ("log_probs", [log_p], -math.expm1(log_p)),
    ]:
        model = Model(program, {"net": Table(row)}, outputs=outputs)
        got = model(["q(x)"], {"x": torch.tensor([0])})
        torch.testing.assert_close(
            got, torch.tensor([expected], dtype=torch.float64), rtol=1e-9, atol=0
        )


def test_exact_zero_probability_with_gradients_is_a_typed_error_not_nan():
    # d/dp at p = 0 is lost in log space: torch's log gives NaN gradients. Without gradients
    # the value is exact; with log-probabilities the gradient w.r.t. log p is exact (0 there,
    # DeepProbLog's d/dp = [1, 1, 0] times p), against the formula P = p_a + p_b.
    program = "nn(net,[X],Y,[a,b,c]) :: d(X,Y).\nq(X) :- d(X,a).\nq(X) :- d(X,b)."
    x = {"x": torch.tensor([0])}
    with pytest.raises(NetworkOutputError, match="exactly 0"):
        Model(program, {"net": Table([[0.5, 0.5, 0.0]])})(["q(x)"], x)
    with torch.no_grad():
        got = Model(program, {"net": Table([[0.5, 0.5, 0.0]])})(["q(x)"], x)
    torch.testing.assert_close(got, torch.tensor([1.0], dtype=torch.float64))
    net = Table([[math.log(0.5), math.log(0.5), -math.inf]])
    Model(program, {"net": net}, outputs="log_probs")(["q(x)"], x).sum().backward()
    torch.testing.assert_close(
        net.weight.grad, torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    )
