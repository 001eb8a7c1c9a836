"""The DeepProbLog frontend on plain ProbLog programs: ProbLog's own system tests.

Oracle: the expected outcomes written in each program's comments, read by ProbLog's own reader
(``problog.test.test_constraint.read_result``); where a program states none, ProbLog's own
inference (``get_evaluatable().create_from(...).evaluate()``).
"""

from __future__ import annotations

import math
import pathlib

import pytest

problog = pytest.importorskip("problog")

from problog.test.test_constraint import read_result  # noqa: E402
from trilay.engine.errors import TrilayError  # noqa: E402
from trilay.frontends.deepproblog import (  # noqa: E402
    InvalidProbability,
    Program,
    ProgramError,
    UnsupportedConstruct,
    evaluate,
)

SUITE = pathlib.Path(__file__).parent / "data" / "problog"
PROGRAMS = sorted(p for p in SUITE.glob("*.pl") if not p.name.startswith(("consult_nested",)))


def _key(text: str) -> str:
    return text.replace(" ", "")


@pytest.mark.filterwarnings("ignore::UserWarning")  # ProbLog's parser warns about '=='
@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_problog_system_program(path):
    expected = read_result(str(path))
    if isinstance(expected, str):  # "% ERROR <name>": ProbLog raises <name>
        with pytest.raises(TrilayError) as info:
            evaluate(path)
        kind = getattr(info.value, "kind", type(info.value).__name__)
        assert kind == expected.split()[0]
        return
    got = {_key(k): v for k, v in evaluate(path).items()}
    want = {_key(k): v for k, v in (expected[0] if expected else {}).items()}
    if not want:  # no stated outcome: ProbLog's own inference is the oracle
        result = problog.get_evaluatable("sdd").create_from(problog.program.PrologFile(str(path)))
        want = {_key(str(k)): v for k, v in result.evaluate().items()}
    for query, p in want.items():
        assert query in got, f"{path.name}: query {query} missing from {sorted(got)}"
        assert math.isclose(got[query], p, abs_tol=1e-6), f"{path.name}: {query}"


def test_suite_is_mostly_supported():
    # 103 of the suite's 107 programs (the other 4 need files the suite does not ship).
    assert len(list(SUITE.glob("*.pl"))) == 103


def test_conditional_and_tiny_probabilities_against_hand_computation():
    # P(g | not h) for the AD 0.2::g; 0.5::h = 0.2 / 0.5; times P(not f) = 0.7.
    got = evaluate("0.2::g; 0.5::h. 0.3::f. q :- g, \\+f. query(q). evidence(h, false).")
    assert math.isclose(got["q"], 0.4 * 0.7, rel_tol=1e-12)
    # deepproblog issue 17: P(q) = 2p, with p far below float32 resolution of 1 - 2p.
    p = 1e-8
    got = evaluate(f"{p}::a; {p}::b; {1 - 2 * p}::c. q :- a. q :- b. query(q).")
    assert math.isclose(got["q"], 2 * p, rel_tol=1e-9)


@pytest.mark.parametrize(
    "program, construct, line",
    [
        ("0.5::a.\nt(0.5)::b.\nquery(b).", "t(0.5)", 2),
        ("?::a.\nquery(a).", "?", 1),
        ("a.\nb.\nutility(a, 3).\nquery(b).", "utility/2", 3),
        ("nn(net, [X], Y) :: f(X, Y).\nquery(f(x, 1)).", "nn/3", 1),
        ("normal(0, 1)::x.\nquery(x).", "normal", 1),
        ("nn(net, [X], Y, [a, b]) :: f(X, Y).\nquery(f(i, a)).", "nn(...) in evaluate", 1),
    ],
)
def test_unsupported_constructs_name_the_construct_and_line(program, construct, line):
    with pytest.raises(UnsupportedConstruct) as info:
        evaluate(program)
    assert construct in str(info.value) and info.value.line == line
    assert isinstance(info.value, TrilayError)


def test_invalid_probability_is_a_typed_error():
    with pytest.raises(InvalidProbability):
        evaluate("0.7::a; 0.6::b. query(a). query(b).")


@pytest.mark.parametrize(
    "program",
    [
        "a :- b c.\nquery(a).",  # ParseError
        "0.5::a.\nquery(q).",  # UnknownClause
        "0.5::a.\nq :- \\+q.\nquery(q).",  # NegativeCycle
        "0.5::p(1).\nquery(p(X)).\nquery(X).",  # GroundingError, no position
    ],
)
def test_problog_errors_are_typed_with_problogs_message_and_position(program):
    # Oracle: ProbLog's own exception for the same program.
    with pytest.raises(problog.errors.ProbLogError) as problogs:
        problog.get_evaluatable("sdd").create_from(problog.program.PrologString(program))
    with pytest.raises(ProgramError) as info:
        evaluate(program)
    error = info.value
    assert isinstance(error, TrilayError)
    assert error.kind == type(problogs.value).__name__
    assert problogs.value.message in str(error)
    location = problogs.value.location
    assert (error.line, error.column) == ((location[1], location[2]) if location else (None, None))


@pytest.mark.parametrize(
    "declaration", ["nn(net, [X], Y, 5)", "nn(net, [X], Y, [])", "nn(net, [X], Y, [a|T])"]
)
def test_neural_domain_that_is_not_a_non_empty_list_names_its_line(declaration):
    with pytest.raises(UnsupportedConstruct, match="domain") as info:
        Program(f"0.5::a.\n{declaration} :: d(X, Y).\nq :- d(x, 1).")
    assert info.value.line == 2
