"""Random ProbLog programs: the DeepProbLog frontend against ProbLog's own inference.

A seeded generator writes programs with probabilistic facts (numbers, fractions, products,
repeated facts), annotated disjunctions (with and without bodies, summing to 1 or less), rules
with conjunctions, disjunctions, negation, unification and anonymous variables, probabilistic
rules, a rule over a unary relation, rare positive and negative cycles, queries and evidence.
Oracle: ``problog.get_evaluatable("sdd")``. Where ProbLog answers, trilay gives the same
probabilities with both compilers (``direct``/``auto`` and ``sdd``); where ProbLog raises,
trilay raises a :class:`TrilayError` of ProbLog's kind. 80 programs run by default,
1,000 with ``-m slow``.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

problog = pytest.importorskip("problog")

from problog.program import PrologString  # noqa: E402
from trilay.engine.errors import TrilayError  # noqa: E402
from trilay.frontends.deepproblog import Program  # noqa: E402


def random_program(seed: int) -> str:
    """A random ProbLog program (see the module docstring)."""
    rng = random.Random(seed)
    lines = []
    facts = [f"f{i}" for i in range(rng.randint(1, 4))]

    def prob() -> str:
        choices = ["0.0", "1.0", "0.1", "0.25", "0.5", "0.7", "0.9", "1/3", "0.2*0.5"]
        return rng.choice([*choices, f"{rng.random():.3g}"])

    lines += [f"{prob()}::{f}." for f in facts]
    if rng.random() < 0.2:
        lines.append(f"{prob()}::{rng.choice(facts)}.")
    ads = []
    for j in range(rng.randint(0, 2)):
        ps = [rng.random() for _ in range(rng.randint(1, 3))]
        scale = rng.choice([1.0, 0.8, 0.5]) / sum(ps)
        heads = "; ".join(f"{p * scale:.3g}::c{j}({v})" for v, p in enumerate(ps))
        body = f" :- {rng.choice(facts)}" if rng.random() < 0.3 else ""
        lines.append(heads + body + ".")
        ads.append((j, len(ps)))
    lines.append(f"{prob()}::e(1). {prob()}::e(2).")
    heads = [f"h{i}" for i in range(rng.randint(1, 5))]

    def atom(i: int) -> str:
        options = [*facts, f"e({rng.randint(1, 2)})", "e(_)", "true", "fail"]
        options += [f"c{j}({rng.randrange(n)})" for j, n in ads]
        options += heads[:i] if rng.random() < 0.95 else heads  # rarely a cycle
        return rng.choice(options)

    def literal(i: int) -> str:
        r = rng.random()
        if r < 0.25:
            return "\\+" + atom(i)
        if r < 0.3:
            return f"({atom(i)} ; {atom(i)})"
        if r < 0.33:
            return "X = 1, e(X)"
        return atom(i)

    for i, h in enumerate(heads):
        for _ in range(rng.randint(1, 3)):
            body = ", ".join(literal(i) for _ in range(rng.randint(1, 3)))
            label = f"{prob()}::" if rng.random() < 0.2 else ""
            lines.append(f"{label}{h} :- {body}.")
    if rng.random() < 0.2:
        lines.append(f"{prob()}::{rng.choice(heads)}.")
    if rng.random() < 0.3:
        lines.append("g(X) :- e(X), \\+ f0.")
        heads.append(rng.choice(["g(1)", "g(2)", "g(X)"]))
    pool = heads + facts + [f"c{j}({v})" for j, n in ads for v in range(n)]
    for q in rng.sample(pool, min(len(pool), rng.randint(1, 3))):
        lines.append(f"query({q}).")
    for _ in range(rng.choice([0, 0, 1, 2])):
        observed = rng.choice(
            facts + [h for h in heads if h != "g(X)"] + [f"c{j}(0)" for j, _ in ads]
        )
        lines.append(f"evidence({observed}, {rng.choice(['true', 'false'])}).")
    return "\n".join(lines)


def _check(seed: int) -> None:
    text = random_program(seed)
    try:
        result = problog.get_evaluatable("sdd").create_from(PrologString(text)).evaluate()
        expected, error = {str(k): v for k, v in result.items()}, None
    except Exception as e:  # ProbLog rejects the program: trilay must too, typed
        expected, error = None, e
    for method in ("auto", "sdd"):
        try:
            circuit = Program(text).compile(method=method)
            log_p = circuit.log_prob_all([], 1, torch.float64)[0] if circuit.names else []
            if circuit.names and torch.isnan(log_p).any():
                raise TrilayError("the evidence has probability 0")
            got = dict(zip(circuit.names, torch.as_tensor(log_p).exp().tolist(), strict=True))
        except TrilayError as e:
            assert error is not None, f"seed {seed} ({method}): trilay raised {e!r}\n{text}"
            kind = getattr(e, "kind", None)
            if kind is not None:
                assert kind == type(error).__name__, f"seed {seed}: {e!r} for {error!r}"
            continue
        assert error is None, f"seed {seed} ({method}): ProbLog raised {error!r}\n{text}"
        for query, p in expected.items():
            assert math.isclose(got[query], p, abs_tol=1e-9), f"seed {seed} ({method}): {query}"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(80))
def test_random_programs_match_problog(seed):
    _check(seed)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(80, 1080))
def test_random_programs_match_problog_many(seed):
    _check(seed)
