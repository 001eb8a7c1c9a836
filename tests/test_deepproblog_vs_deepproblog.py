"""The DeepProbLog frontend against DeepProbLog 2.1.0 itself (skipped when it is not
importable: ``pip install Pillow && pip install --no-deps deepproblog==2.1.0``).

Oracle: DeepProbLog's exact engine on the same program and the same fixed-output networks (a
table of probabilities, no softmax): its query probability and its gradient w.r.t. the table,
which trilay's default ``gradient="deepproblog"`` must reproduce. DeepProbLog grounds the query
alone and ignores ``evidence/1``, so the programs have none (the evidence case is checked
against enumeration in test_deepproblog_neural.py).
"""

from __future__ import annotations

import pytest
import torch

try:
    from deepproblog.engines import ExactEngine
    from deepproblog.model import Model as DeepProbLogModel
    from deepproblog.network import Network
    from deepproblog.query import Query
except ImportError as e:  # the reason names what is missing (deepproblog, or PIL it imports)
    pytest.skip(f"DeepProbLog is not importable: {e!r}", allow_module_level=True)

from deepproblog_nets import Table  # noqa: E402
from problog.logic import Term  # noqa: E402
from trilay.frontends.deepproblog import Model  # noqa: E402
from trilay.frontends.deepproblog import mnist_addition as mnist  # noqa: E402

PROGRAM = """nn(net,[X],Y,[0,1,2]) :: d(X,Y).
nn(cnet,[X]) :: h(X).
0.4::coin.
q(X) :- d(X,2).
q(X) :- coin, \\+d(X,1).
add(X,Y,Z) :- d(X,A), d(Y,B), Z is A+B.
two(X) :- d(X,0).
two(X) :- d(X,1).
one(X) :- d(X,1).
r(X,Y) :- h(X), d(Y,0).
r(X,Y) :- \\+h(X), coin.
"""


class Indices:
    """DeepProbLog's tensor source: ``tensor(t(i))`` is the index ``i``."""

    def __getitem__(self, item):
        return torch.tensor(int(item[0]))


def _deepproblog(program, networks, query):
    """DeepProbLog's P(query) and the gradients of P w.r.t. the networks' tables."""
    nets = {name: Table(t) for name, t in networks.items()}
    model = DeepProbLogModel(program, [Network(n, name) for name, n in nets.items()], load=False)
    model.set_engine(ExactEngine(model))
    model.add_tensor_source("t", Indices())
    (result,) = model.solve([Query(Term.from_string(query))])
    (p,) = result.result.values()
    p.backward()
    return p.detach(), {name: n.weight.grad for name, n in nets.items()}


def _trilay(program, networks, query, inputs, **options):
    nets = {name: Table(t) for name, t in networks.items()}
    p = Model(program, nets, **options)([query], inputs)
    p.sum().backward()
    return p.detach()[0], {name: n.weight.grad for name, n in nets.items()}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "dpl_query, query",
    [
        ("add(tensor(t(0)),tensor(t(1)),2)", "add(i0, i1, 2)"),  # complete disjunctions
        ("q(tensor(t(0)))", "q(i0)"),  # true when the digit is "none": dL/dnone != 0
        ("two(tensor(t(1)))", "two(i1)"),  # two of three classes
        ("one(tensor(t(2)))", "one(i2)"),  # one class: a plain fact, weight (p, 1 - p)
        ("r(tensor(t(0)),tensor(t(2)))", "r(i0, i2)"),  # nn/2
    ],
)
def test_probability_and_gradient_match_deepproblog_on_a_table_network(dpl_query, query):
    g = torch.Generator().manual_seed(0)
    networks = {
        "net": torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1),
        "cnet": torch.rand(3, 1, generator=g, dtype=torch.float64),  # nn/2: one probability
    }
    inputs = {f"i{k}": torch.tensor([k]) for k in range(3)}
    want_p, want_grad = _deepproblog(PROGRAM, networks, dpl_query)
    got_p, got_grad = _trilay(PROGRAM, networks, query, inputs)
    torch.testing.assert_close(got_p, want_p)
    for name in networks:
        torch.testing.assert_close(got_grad[name], want_grad[name], msg=name)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mnist_addition_gradient_matches_deepproblog():
    # DeepProbLog's own MNIST-addition program (the sum as one is/2), N = 2.
    g = torch.Generator().manual_seed(1)
    table = {"mnist_net": torch.softmax(torch.randn(4, 10, generator=g, dtype=torch.float64), -1)}
    dpl_query = "multi_addition([tensor(t(0)),tensor(t(1))],[tensor(t(2)),tensor(t(3))],57)"
    want_p, want_grad = _deepproblog(mnist.DEEPPROBLOG_PROGRAM, table, dpl_query)
    inputs = {f"i{k}": torch.tensor([k]) for k in range(4)}
    for program in (mnist.DEEPPROBLOG_PROGRAM, mnist.PROGRAM):
        got_p, got_grad = _trilay(program, table, "multi_addition([i0,i1],[i2,i3],57)", inputs)
        torch.testing.assert_close(got_p, want_p)
        torch.testing.assert_close(got_grad["mnist_net"], want_grad["mnist_net"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_steps_give_deepproblogs_weights():
    # Two Adam steps of batch 8 on the same pairs, in the same order, from the same weights:
    # DeepProbLog's own training loop with its example's query style against trilay's Model
    # (a log_softmax head: DeepProbLog's gradient and the normalized one coincide).
    data = mnist.load_digits_split()
    expected = mnist.compare_deepproblog(1, data, "example", num_queries=16)["network"]
    train_x = data[0]
    generator, pairs, sums, _ = mnist._split(data, 1, 0)
    order = torch.randperm(len(pairs), generator=generator)[:16]
    net = mnist._network(train_x[0].numel(), 0)
    model = Model(mnist.DEEPPROBLOG_PROGRAM, {"mnist_net": net}, outputs="log_probs")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3, fused=True)
    for batch in order.split(8):
        loss = model.loss(mnist.queries(sums[batch], 1), mnist.inputs(train_x, pairs[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for got, want in zip(net.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
