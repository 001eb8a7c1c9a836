"""How the DeepProbLog frontend compiles ground formulas (frontends/deepproblog/formula.py).

Oracles: a dynamic program over the digits with a carry (the distribution of the sum of two
N-digit numbers whose digits are independent categoricals, computed in plain Python), and
ProbLog's own inference (random programs: tests/test_deepproblog_fuzz.py).
"""

from __future__ import annotations

import pytest
import torch

problog = pytest.importorskip("problog")

from deepproblog_nets import Table  # noqa: E402
from problog.logic import Term  # noqa: E402
from problog.program import PrologString  # noqa: E402
from trilay.frontends.deepproblog import Model, Program, UnsupportedConstruct  # noqa: E402
from trilay.frontends.deepproblog import mnist_addition as mnist  # noqa: E402


def _sum_distribution(a: list[list[float]], b: list[list[float]], total: int) -> float:
    """P(A + B = total) for numbers with digit distributions ``a[i]``, ``b[i]`` (most
    significant first), by a dynamic program over the columns and the carry."""
    carry = {0: 1.0}  # P(carry into the current column, columns so far match ``total``)
    for i in reversed(range(len(a))):
        want = total // 10 ** (len(a) - 1 - i) % 10
        nxt = {0: 0.0, 1: 0.0}
        for c, p in carry.items():
            for x in range(10):
                for y in range(10):
                    if (x + y + c) % 10 == want:
                        nxt[(x + y + c) // 10] += p * a[i][x] * b[i][y]
        carry = nxt
    return carry.get(total // 10 ** len(a), 0.0) if total // 10 ** len(a) <= 1 else 0.0


@pytest.mark.parametrize("digits", [3, 15])
def test_carry_program_is_exact_at_any_length(digits):
    gen = torch.Generator().manual_seed(digits)
    table = torch.softmax(3 * torch.randn(2 * digits, 10, generator=gen, dtype=torch.float64), -1)
    names = [f"a{i}" for i in range(digits)] + [f"b{i}" for i in range(digits)]
    inputs = {name: torch.tensor([k]) for k, name in enumerate(names)}
    likely = table.argmax(-1).tolist()
    number = [int("".join(map(str, likely[k * digits : (k + 1) * digits]))) for k in range(2)]
    model = Model(mnist.PROGRAM, {"mnist_net": Table(table)})
    totals = [sum(number), sum(number) + 1, 10**digits - 1, 0]
    got = model(mnist.queries(totals, digits), {k: v.expand(4) for k, v in inputs.items()})
    a, b = table[:digits].tolist(), table[digits:].tolist()
    expected = [_sum_distribution(a, b, total) for total in totals]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_carry_program_compiles_directly_and_linearly():
    # The ground formula of the carry program is a d-DNNF as written: the direct compiler
    # takes it, and its circuit (before layering) grows by the same count per digit.
    sizes = {}
    for digits in (5, 10, 15):
        (query,) = mnist.queries([10**digits - 1], digits)
        ground = Program(mnist.PROGRAM).ground([Term.from_string(query)])
        sizes[digits] = ground.direct().num_nodes
    assert sizes[15] - sizes[10] == sizes[10] - sizes[5]


@pytest.mark.parametrize(
    "program, reason",
    [
        ("0.3::a. 0.4::b. q :- a. q :- b. query(q).", "mutually exclusive"),
        ("0.3::a. 0.4::b. 0.5::c. r :- a, b. s :- b, c. q :- r, s. query(q).", "share an atom"),
        ("0.3::a. 0.4::b. r :- a, b. q :- \\+r. query(q).", "negated derived atom"),
    ],
)
def test_direct_compile_refuses_what_is_not_a_d_dnnf_and_auto_falls_back(program, reason):
    with pytest.raises(UnsupportedConstruct, match=reason):
        Program(program).compile(method="direct")
    expected = problog.get_evaluatable("sdd").create_from(PrologString(program)).evaluate()
    circuit = Program(program).compile()  # auto: through an SDD
    p = circuit.log_prob_all([], 1, torch.float64)[0, 0].exp().item()
    assert abs(p - next(iter(expected.values()))) < 1e-12
