"""The fuzzing tier: mutated and generated inputs against independent oracles (hypothesis).

Every property runs twice: in the default test run at a small, derandomized budget (the same
few dozen examples each run, a few seconds in all), and under ``-m slow`` at a large budget
with fresh random examples. Each crash class of issue 13 has a generator here:

* mutated valid SDD, vtree, c2d, d4 and DIMACS files (tokens swapped for huge numbers,
  non-ASCII digits, ``+1``, ``2_0``, keywords, other ids; lines dropped, repeated, swapped;
  bytes and blanks changed; files cut short) and generated vtrees (DAGs, forests) and headers
  (huge counts, ids and literals): trilay's reader accepts the file with the same result as the
  independent line-by-line reading of ``file_formats``, or both refuse it at the same line, and
  trilay with a ParseError: never another exception, never a crash;
* missing paths: every loader raises MissingFileError;
* literals, variable counts and CNF counts of any size and type: a CircuitError or a circuit;
* PySDD nodes in managers of any size (constants included): the circuit counts the manager's
  variables, as PySDD's model count does;
* formula texts: a Formula or a ParseError; random formulas hundreds of levels deep (thousands
  under ``-m slow``): the value of the formula evaluated as written;
* truth values and probabilities of any float (NaN, inf, out of range): a ValueRangeError
  exactly when one lies outside ``[0, 1]``.
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import file_formats as ref
import numpy as np
import pytest
import torch
from conftest import random_cnf
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_compile import sdd_of
from test_fuzzy import NAMES, as_written
from test_io import check_dag
from trilay.engine import Circuit, io
from trilay.engine.errors import (
    CircuitError,
    MissingFileError,
    ParseError,
    ValueRangeError,
)
from trilay.frontends.fuzzy import And, FuzzyFormula, Iff, Implies, Not, Or, Var, parse
from trilay.frontends.semantic_loss import SemanticLoss, exactly_one

pysdd = pytest.importorskip("pysdd.sdd")

# no example database and no explain phase: nothing is written into the working tree
_QUIET = dict(
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = settings(max_examples=25, derandomize=True, **_QUIET)
LARGE = settings(max_examples=1500, **_QUIET)


def both_budgets(strategy, check, small: int = 25, large: int = 1500):
    """The property ``check`` over ``strategy`` as two tests: one at the small budget
    (derandomized) for the default run, one marked ``slow`` at the large one."""
    quick = settings(SMALL, max_examples=small)(given(strategy)(check))
    thorough = pytest.mark.slow(settings(LARGE, max_examples=large)(given(strategy)(check)))
    return quick, thorough


# ----------------------------------------------------------------------------- seed files
def _seed_files() -> dict[str, list[bytes]]:
    """Valid files of every format from small random CNFs compiled by PySDD (written by
    libsdd, and by ``file_formats``' writers from a PySDD traversal), plus unusual layouts."""
    seeds: dict[str, list[bytes]] = {k: [] for k in ("sdd", "vtree", "nnf", "dimacs")}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(4):
            rng = random.Random(seed)
            n = rng.randint(2, 5)
            clauses = random_cnf(n, rng.randint(1, 2 * n), seed)
            vtree = ["balanced", "right", "left", "vertical"][seed]
            root = io.compile_cnf_with_pysdd(clauses, n, vtree)
            sdd, vt = Path(tmp, f"{seed}.sdd"), Path(tmp, f"{seed}.vtree")
            root.manager.save(str(sdd).encode(), root)
            root.manager.vtree().save(str(vt).encode())
            seeds["sdd"].append(sdd.read_bytes())
            seeds["vtree"].append(vt.read_bytes())
            seeds["nnf"] += [ref.c2d_text(root, n).encode(), ref.d4_text(root).encode()]
            body = "".join(" ".join(map(str, c)) + " 0\n" for c in clauses)
            seeds["dimacs"].append(f"c seed {seed}\np cnf {n} {len(clauses)}\n{body}".encode())
    seeds["sdd"].append(b"c odd\r\nsdd 3\r\n\tL 1 0 1\r\n\r\nF 0\nc mid\n D 2 0 1 1 0 \n")
    seeds["vtree"].append(b"vtree 3\nL 0 1\nc x\n  L 2 2\t\nI 1 0 2\n")
    seeds["nnf"] += [b"nnf 3 2 2\nL 1\r\nL -2\nc\nA 2 0 1\n", b"o 1 0\n1 2 3 0\nt 2 0\n"]
    seeds["dimacs"].append(b"p cnf 3 2\n1 -2\n 3 0 2 0\n%\n0\n")
    return seeds


SEEDS = _seed_files()

INTERESTING = [
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"2",
    b"-3",
    b"007",
    b"4611686018427387903",
    b"4611686018427387904",
    b"-4611686018427387904",
    b"99999999999999999999999",
    b"16777216",
    b"16777217",
    b"2147483647",
    b"1099511627776",
    b"+1",
    b"2_0",
    "\uff113".encode(),  # full-width 1, then 3
    "\u0662".encode(),  # Arabic-Indic 2
    b"1e3",
    b"0x1",
    b"-",
    b"--1",
    b"L",
    b"D",
    b"T",
    b"F",
    b"I",
    b"A",
    b"O",
    b"o",
    b"a",
    b"t",
    b"f",
    b"p",
    b"cnf",
    b"sdd",
    b"nnf",
    b"vtree",
    b"c",
    b"%",
    b"\x00",
    "\u00a0".encode(),
    b"x",
]
BLANKS = [b"\t", b"\r", b"\x0b", b"\x0c", b"  ", b"\r\n", b"\n"]


@st.composite
def mutated(draw, kind: str) -> bytes:
    """A seed file of ``kind`` with one to three random edits."""
    data = draw(st.sampled_from(SEEDS[kind]))
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")
        i = draw(st.integers(0, len(lines) - 1))
        tokens = lines[i].split(b" ")
        j = draw(st.integers(0, len(tokens) - 1))
        others = data.split() or [b"0"]
        token = draw(
            st.one_of(
                st.sampled_from(INTERESTING),
                st.integers(-12, 12).map(lambda v: str(v).encode()),
                st.sampled_from(others),
            )
        )
        edit = draw(st.integers(0, 9))
        if edit == 0:
            tokens[j] = token
        elif edit == 1:
            del tokens[j]
        elif edit == 2:
            tokens.insert(j, token)
        elif edit == 3:
            del lines[i]
        elif edit == 4:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif edit == 5:
            k = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        if edit <= 2:
            lines[i] = b" ".join(tokens)
        data = b"\n".join(lines)
        if edit == 6:
            k = draw(st.integers(0, len(data)))
            data = data[:k] + draw(st.binary(min_size=1, max_size=2)) + data[k + 1 :]
        elif edit == 7 and b" " in data:
            spaces = [k for k, byte in enumerate(data) if byte == ord(" ")]
            k = draw(st.sampled_from(spaces))
            data = data[:k] + draw(st.sampled_from(BLANKS)) + data[k + 1 :]
        elif edit == 8:
            data = data[: draw(st.integers(0, len(data)))]
    return data


def same_outcome(fast, slow):
    """Run trilay's reader and the reference reading: ``(trilay's result, reference's)`` when
    both accept; ``None`` when both refuse at the same line (trilay with a ParseError, which
    names that line). Any other exception from trilay fails the test."""
    try:
        got = fast()
    except ParseError as e:
        got = e
    try:
        want = slow()
    except ref.Refused as e:
        want = e
    if isinstance(got, ParseError) or isinstance(want, ref.Refused):
        assert isinstance(got, ParseError), f"trilay accepts, the reference refuses: {want}"
        assert isinstance(want, ref.Refused), f"trilay refuses, the reference accepts: {got}"
        assert got.line == want.line, f"trilay: {got}; reference: {want}"
        assert got.path == "f" and str(got).startswith(
            f"f:{got.line}: " if got.line is not None else "f: "
        )
        return None
    return got, want


def assert_same_dag(a, b) -> None:
    check_dag(a)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


def weights(seed: int):
    """A weight per literal, mod ``2^61 - 1``: polynomials that differ differ here (almost
    surely)."""
    return lambda l: (l * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9 + 1) % ref.PRIME


# ----------------------------------------------------------------------------- file properties
def _check_sdd(data: bytes) -> None:
    _check_sdd_paths(data, None)


def _check_sdd_with_vtree(data: bytes) -> None:
    _check_sdd_paths(data, [1, 2, 3])


def _check_sdd_paths(data: bytes, allowed: list[int] | None) -> None:
    """Both of the reader's paths (the compiled scan where it takes the file, and the
    vectorized grammar) against the reference reading; the scan takes no file the grammar
    refuses."""
    vtree = None if allowed is None else np.asarray(allowed)
    variables = None if allowed is None else set(allowed)
    for read in (io._parse_sdd, io._parse_sdd_lines):
        both = same_outcome(
            lambda read=read: read("f", data, vtree), lambda: ref.read_sdd(data, variables)
        )
        if both:
            assert_same_dag(*both)
        elif io._scan_sdd(data, vtree) is not None:
            raise AssertionError("the compiled scan takes a file the reference refuses")


def _check_vtree(data: bytes) -> None:
    both = same_outcome(lambda: io._parse_vtree("f", data), lambda: ref.read_vtree(data))
    if both:
        assert both[0].tolist() == both[1]


def _check_nnf(data: bytes) -> None:
    both = same_outcome(lambda: io._parse_nnf("f", data), lambda: ref.read_nnf(data))
    if both:
        (dag, num_vars), (form, reading) = both
        check_dag(dag)
        if form == "c2d":
            assert_same_dag(dag, reading[0])
            assert num_vars == reading[1]
        else:
            assert num_vars is None
            for seed in (1, 2):
                assert ref.evaluate_dag(dag, weights(seed)) == reading(weights(seed))


def _check_dimacs(data: bytes) -> None:
    both = same_outcome(lambda: io._parse_dimacs("f", data), lambda: ref.read_dimacs(data))
    if both:
        assert both[0] == both[1]


test_mutated_sdd, test_mutated_sdd_slow = both_budgets(mutated("sdd"), _check_sdd)
test_mutated_sdd_in_vtree, test_mutated_sdd_in_vtree_slow = both_budgets(
    mutated("sdd"), _check_sdd_with_vtree
)
test_mutated_vtree, test_mutated_vtree_slow = both_budgets(mutated("vtree"), _check_vtree)
test_mutated_nnf, test_mutated_nnf_slow = both_budgets(mutated("nnf"), _check_nnf)
test_mutated_dimacs, test_mutated_dimacs_slow = both_budgets(mutated("dimacs"), _check_dimacs)


@st.composite
def vtree_files(draw) -> bytes:
    """Vtree files with random structure: leaves and inner nodes whose children are random
    earlier ids, so DAGs (a child taken twice), forests (orphans) and trees all occur."""
    lines, ids = [], []
    for k in range(draw(st.integers(1, 7))):
        if ids and draw(st.booleans()):
            left, right = draw(st.sampled_from(ids)), draw(st.sampled_from(ids))
            lines.append(f"I {k} {left} {right}")
        else:
            lines.append(f"L {k} {draw(st.integers(0, 4))}")
        ids.append(k)
    count = draw(st.sampled_from([len(lines), len(lines) + 1]))
    return (f"vtree {count}\n" + "\n".join(lines) + "\n").encode()


test_vtree_shapes, test_vtree_shapes_slow = both_budgets(vtree_files(), _check_vtree)

HUGE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**62 - 1, 2**62, 2**24, 2**24 + 1, 2**31 - 1, 2**40, -(2**63)]),
)
NUMBER_TEXT = st.one_of(
    HUGE.map(str),
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=3),
)


@st.composite
def numbers_in_fields(draw) -> tuple[str, bytes]:
    """A small valid file of some format with one field replaced by a huge number or a short
    text of any characters (digits of other scripts, signs, underscores, blanks, ...)."""
    text = draw(NUMBER_TEXT)
    form, template = draw(
        st.sampled_from(
            [
                ("sdd", "sdd {}\nL 0 0 1\n"),
                ("sdd", "sdd 1\nL {} 0 1\n"),
                ("sdd", "sdd 1\nL 0 0 {}\n"),
                ("sdd", "sdd 2\nT 0\nD 1 0 {} 0 0\n"),
                ("vtree", "vtree 1\nL {} 1\n"),
                ("vtree", "vtree 1\nL 0 {}\n"),
                ("vtree", "vtree 3\nL 0 1\nL 1 2\nI 2 {} 1\n"),
                ("nnf", "nnf 1 0 {}\nL 1\n"),
                ("nnf", "nnf {} 0 1\nL 1\n"),
                ("nnf", "nnf 1 0 1\nL {}\n"),
                ("nnf", "nnf 2 1 1\nL 1\nA 1 {}\n"),
                ("nnf", "o 1 0\nt 2 0\n1 2 {} 0\n"),
                ("nnf", "o {} 0\nt 2 0\n"),
                ("nnf", "o 1 0\nt 2 0\n1 {} 0\n"),
                ("dimacs", "p cnf {} 1\n1 0\n"),
                ("dimacs", "p cnf 2 {}\n1 0\n"),
                ("dimacs", "p cnf 2 1\n{} 0\n"),
            ]
        )
    )
    return form, template.format(text).encode()


def _check_numbers(case) -> None:
    form, data = case
    check = {"sdd": _check_sdd, "vtree": _check_vtree, "nnf": _check_nnf, "dimacs": _check_dimacs}
    check[form](data)


test_numbers_in_fields, test_numbers_in_fields_slow = both_budgets(
    numbers_in_fields(), _check_numbers
)


# ----------------------------------------------------------------------------- loader properties
SUDOKU_SDD = Path(__file__).parent / "data" / "sudoku_4.sdd"
FILE_NAMES = st.text(alphabet=st.characters(exclude_characters="/"), min_size=1, max_size=300)


def _check_missing(name: str) -> None:
    """Any name in an empty directory (NUL characters, lone surrogates, overlong names)."""
    with tempfile.TemporaryDirectory() as tmp:
        missing = Path(tmp) / name
        loaders = [
            lambda: Circuit().add_sdd_file(missing),
            lambda: Circuit().add_sdd_file(SUDOKU_SDD, missing),
            lambda: Circuit().add_nnf_file(missing),
            lambda: Circuit().add_cnf(missing),
            lambda: io.read_vtree_file(missing),
        ]
        for load in loaders:
            with pytest.raises(MissingFileError) as info:
                load()
            assert isinstance(info.value, FileNotFoundError)


test_missing_files, test_missing_files_slow = both_budgets(FILE_NAMES, _check_missing, large=200)

ANYTHING = st.one_of(
    HUGE,
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=3),
)


def _is_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= ref.MAX_VARS


def _check_builders(values) -> None:
    """A literal, a declared count and a CNF's count of any value: a circuit or CircuitError."""
    lit, count = values
    c = Circuit()
    if not isinstance(lit, bool) and _is_count(abs(lit) if isinstance(lit, int) else None) and lit:
        assert c.kind(c.literal(lit)) == 2 and c.num_vars == abs(lit)
    else:
        with pytest.raises(CircuitError):
            c.literal(lit)
    if _is_count(count):
        assert Circuit(num_vars=count).num_vars == count
        if count >= 1:
            Circuit().add_cnf([[count], [-1]], num_vars=count)
    else:
        with pytest.raises(CircuitError):
            Circuit(num_vars=count)
        with pytest.raises(CircuitError):
            Circuit().add_cnf([[1]], num_vars=count)


test_builder_arguments, test_builder_arguments_slow = both_budgets(
    st.tuples(ANYTHING, ANYTHING), _check_builders
)


@st.composite
def sdd_nodes(draw):
    """A PySDD node in a manager of 1..6 variables over a random subset of them (a constant
    when the subset or the clause list is empty)."""
    n = draw(st.integers(1, 6))
    used = draw(st.lists(st.integers(1, n), max_size=n, unique=True))
    literal = st.sampled_from(used or [1]).flatmap(lambda v: st.sampled_from([v, -v]))
    clauses = draw(st.lists(st.lists(literal, min_size=1 if used else 0), max_size=4))
    return sdd_of(clauses, n)[1]


def _check_add_sdd(node) -> None:
    """The circuit counts the manager's variables: its model count is PySDD's."""
    c = Circuit()
    c.add_sdd(node)
    n = node.manager.var_count()
    assert c.num_vars == n
    ones = torch.ones(1, n, dtype=torch.float64)
    assert c.compile().module("real")(ones, ones).item() == node.global_model_count()


test_add_sdd_variable_counts, test_add_sdd_variable_counts_slow = both_budgets(
    sdd_nodes(), _check_add_sdd, small=10, large=150
)


# ----------------------------------------------------------------------------- fuzzy formulas
FORMULA_PIECES = "a b c true false & | ~ -> <-> ( ) ! and or not => $ \u00e9 1 \x00".split(" ")


def _check_formula_text(text: str) -> None:
    """A Formula or a ParseError; a Formula prints to text that parses back to itself."""
    try:
        formula = parse(text)
    except ParseError:
        return
    assert str(parse(str(formula))) == str(formula)


test_formula_texts, test_formula_texts_slow = both_budgets(
    st.lists(st.sampled_from(FORMULA_PIECES), max_size=30).map(" ".join), _check_formula_text
)


@st.composite
def deep_formulas(draw, most: int):
    """A random formula up to ``most`` levels deep, built bottom-up without recursion, and a
    logic."""
    a, b, c = (Var(n) for n in NAMES)
    f = draw(st.sampled_from([a, b, c]))
    for _ in range(draw(st.integers(1, most))):
        other = draw(st.sampled_from([a, ~b, c, a & c]))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            f = Not(f)
        elif kind == 1:
            f = And((f, other)) if draw(st.booleans()) else And((other, f))
        elif kind == 2:
            f = Or((other, f, other))
        elif kind == 3:
            f = Implies(f, other) if draw(st.booleans()) else Implies(other, f)
        else:
            f = Iff(f, other)
    return f, draw(st.sampled_from(["godel", "product", "lukasiewicz"]))


def _check_deep(case) -> None:
    formula, logic = case
    x = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = FuzzyFormula(formula, logic, variables=NAMES)(x)[:, 0]
    torch.testing.assert_close(got, as_written(formula, x, logic, NAMES), rtol=1e-9, atol=1e-12)


test_deep_formulas, _ = both_budgets(deep_formulas(150), _check_deep, small=5)
_, test_deep_formulas_slow = both_budgets(deep_formulas(2000), _check_deep, large=60)


# ----------------------------------------------------------------------------- value ranges
VALUES = st.lists(
    st.one_of(
        st.floats(0, 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 1.0, -0.0, 1.5, -1e-300, 1 + 2**-52, math.nan]),
    ),
    min_size=3,
    max_size=3,
)
FUZZY = FuzzyFormula("a | b & ~c", "product", variables=NAMES)
SEMANTIC = SemanticLoss(exactly_one(3), reduction="none")


def _check_ranges(rows) -> None:
    """ValueRangeError exactly when a truth value or probability lies outside [0, 1]."""
    x = torch.tensor(rows, dtype=torch.float64)
    outside = any(not 0 <= v <= 1 for row in rows for v in row)
    for module in (FUZZY, SEMANTIC):
        if outside:
            with pytest.raises(ValueRangeError, match=r"must lie in \[0, 1\]"):
                module(x)
        else:
            assert not module(x).isnan().any()


test_value_ranges, test_value_ranges_slow = both_budgets(
    st.lists(VALUES, min_size=1, max_size=3), _check_ranges
)
