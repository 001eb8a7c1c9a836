"""Tests of trilay.engine.io: the SDD / vtree, c2d, d4 and DIMACS readers and the PySDD bridge.

Oracles, none of which use trilay's parsers:
* truth tables: the local DAG is evaluated as Boolean logic on every assignment (numpy, below)
  and compared with the CNF it came from, or with a formula written by hand;
* model counts: a small big-int counter for deterministic decomposable NNF (smoothing on the fly
  with variable sets) is compared with PySDD's ``global_model_count`` of the same file;
* PySDD's own enumeration of models, and files written from a PySDD traversal
  (``elements()``, ``literal``, ...) rather than by trilay;
* the independent line-by-line readings of ``file_formats`` (sharing no code with trilay):
  the parser must accept what they accept, with the same result, and refuse what they refuse,
  naming the same line.
"""

from __future__ import annotations

import gc
import math
import pathlib
import random

import file_formats as ref
import numpy as np
import pytest
import torch
from trilay.engine import errors, io
from trilay.engine.circuit import AND, FALSE, LITERAL, OR, TRUE, Circuit
from trilay.engine.errors import CircuitError, ParseError

pysdd = pytest.importorskip("pysdd.sdd")
SddManager, Vtree = pysdd.SddManager, pysdd.Vtree

DATA = pathlib.Path(__file__).parent / "data"
REAL = {  # name -> PySDD's global_model_count (as in the data README)
    "sudoku_4": 288,
    "4-grid": 14_248,
    "road_r": 4_985_868,
    "seq_fun": 6_360_148_465_518_903_296,  # wrong: libsdd's 64-bit count overflows (2^370 models)
}
OVERFLOWS = {"seq_fun"}


# ----------------------------------------------------------------------------- oracles
def check_dag(arrays) -> None:
    """The local-DAG contract: shapes, dtypes, CSR, children before parents, literals."""
    kind, lit, child_start, children, root = arrays
    n = kind.size
    for a in (kind, lit, child_start, children):
        assert isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 1
    assert isinstance(root, int) and 0 <= root < n
    assert lit.size == n and child_start.size == n + 1 and child_start[0] == 0
    assert child_start[-1] == children.size and (np.diff(child_start) >= 0).all()
    assert np.isin(kind, [FALSE, TRUE, LITERAL, AND, OR]).all()
    assert ((lit != 0) == (kind == LITERAL)).all()
    leaf = (kind == FALSE) | (kind == TRUE) | (kind == LITERAL)
    assert (np.diff(child_start)[leaf] == 0).all()
    parent = np.repeat(np.arange(n), np.diff(child_start))
    assert (children >= 0).all() and (children < parent).all()


def truth_table(arrays, num_vars: int) -> np.ndarray:
    """``[2^V]`` bool: the root evaluated on every assignment (row i: bit j of i is x_{j+1})."""
    kind, lit, child_start, children, root = arrays
    rows = np.arange(2**num_vars)
    x = ((rows[:, None] >> np.arange(num_vars)[None, :]) & 1).astype(bool)
    val = np.empty((kind.size, rows.size), dtype=bool)
    for i in range(kind.size):
        k = int(kind[i])
        kids = children[child_start[i] : child_start[i + 1]]
        if k == FALSE:
            val[i] = False
        elif k == TRUE:
            val[i] = True
        elif k == LITERAL:
            v = abs(int(lit[i]))
            assert v <= num_vars
            val[i] = x[:, v - 1] if lit[i] > 0 else ~x[:, v - 1]
        elif k == AND:
            val[i] = val[kids].all(0) if kids.size else True
        else:
            val[i] = val[kids].any(0) if kids.size else False
    return val[root]


def cnf_table(clauses, num_vars: int) -> np.ndarray:
    rows = np.arange(2**num_vars)
    x = ((rows[:, None] >> np.arange(num_vars)[None, :]) & 1).astype(bool)
    ok = np.ones(rows.size, dtype=bool)
    for clause in clauses:
        sat = np.zeros(rows.size, dtype=bool)
        for l in clause:
            sat |= x[:, abs(l) - 1] if l > 0 else ~x[:, abs(l) - 1]
        ok &= sat
    return ok


def ddnnf_model_count(arrays, num_vars: int) -> int:
    """Model count over ``1..num_vars`` of a deterministic, decomposable NNF (exact big ints)."""
    kind, lit, child_start, children, root = arrays
    count: list[int] = []
    vs: list[frozenset] = []
    for i in range(kind.size):
        k = int(kind[i])
        kids = children[child_start[i] : child_start[i + 1]].tolist()
        if k == FALSE:
            count.append(0), vs.append(frozenset())
        elif k == TRUE:
            count.append(1), vs.append(frozenset())
        elif k == LITERAL:
            count.append(1), vs.append(frozenset([abs(int(lit[i]))]))
        elif k == AND:
            c, s = 1, frozenset()
            for j in kids:
                assert not (s & vs[j]), "not decomposable"
                c, s = c * count[j], s | vs[j]
            count.append(c), vs.append(s)
        else:
            s = frozenset().union(*(vs[j] for j in kids))
            count.append(sum(count[j] << (len(s) - len(vs[j])) for j in kids)), vs.append(s)
    assert max(vs[root], default=0) <= num_vars
    return count[root] << (num_vars - len(vs[root]))


def random_cnf(num_vars: int, num_clauses: int, seed: int, width: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [
            v if rng.random() < 0.5 else -v
            for v in rng.sample(range(1, num_vars + 1), min(width, num_vars))
        ]
        for _ in range(num_clauses)
    ]


def write(tmp_path, name: str, text: str) -> pathlib.Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def expect_error(func, path, line, match, reference=None):
    """``func(path)`` raises ParseError at ``line`` matching ``match``; ``reference`` (a reader
    of ``file_formats``), when given, refuses the same bytes at the same line."""
    with pytest.raises(ParseError, match=match) as info:
        func(path)
    err = info.value
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert str(err).startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    if reference is not None:
        with pytest.raises(ref.Refused) as refused:
            reference(pathlib.Path(path).read_bytes())
        assert refused.value.line == line, str(refused.value)
    return err


def compile_and_save(tmp_path, clauses, num_vars, vtree="balanced", name="f"):
    root = io.compile_cnf_with_pysdd(clauses, num_vars, vtree)
    sdd, vt = tmp_path / f"{name}.sdd", tmp_path / f"{name}.vtree"
    root.manager.save(str(sdd).encode(), root)
    root.manager.vtree().save(str(vt).encode())
    return root, sdd, vt


# ----------------------------------------------------------------------------- real SDD files
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_sdd_files(name):
    sdd, vt = DATA / f"{name}.sdd", DATA / f"{name}.vtree"
    arrays, num_vars = io.read_sdd_file(sdd, vt)
    check_dag(arrays)
    kind, lit, child_start, children, root = arrays

    # counts against the file's own lines
    lines = [l.split() for l in sdd.read_text().splitlines()]
    by_type = {t: [l for l in lines if l and l[0] == t] for t in "FTLD"}
    header = next(l for l in lines if l and l[0] == "sdd")
    assert int(header[1]) == sum(len(v) for v in by_type.values())
    assert (kind == FALSE).sum() == len(by_type["F"]) and (kind == TRUE).sum() == len(by_type["T"])
    assert (kind == OR).sum() == len(by_type["D"])
    elements = {(l[j], l[j + 1]) for l in by_type["D"] for j in range(4, len(l), 2)}
    assert (kind == AND).sum() == len(elements)  # each distinct (prime, sub) once
    assert (np.diff(child_start)[kind == OR] == [int(l[3]) for l in by_type["D"]]).all()
    assert sorted(lit[kind == LITERAL].tolist()) == sorted(int(l[3]) for l in by_type["L"])
    assert (np.diff(child_start)[kind == AND] == 2).all()

    # against PySDD reading the same files
    mgr = SddManager.from_vtree(Vtree.from_file(str(vt).encode()))
    node = mgr.read_sdd_file(str(sdd).encode())
    assert num_vars == mgr.var_count()
    assert node.global_model_count() == REAL[name]
    count = ddnnf_model_count(arrays, num_vars)
    log2_pysdd = node.wmc(log_mode=True).propagate() / math.log(2)  # unit weights: log of the count
    assert math.log2(count) == pytest.approx(log2_pysdd, rel=1e-12)
    if name in OVERFLOWS:
        assert count.bit_length() > 64
    else:
        assert count == REAL[name]
    # the root mentions the same variables as the file's literals
    assert set(np.abs(lit[kind == LITERAL]).tolist()) == {abs(int(l[3])) for l in by_type["L"]}

    # the same DAG as the independent reading
    slow = ref.read_sdd(sdd.read_bytes(), set(ref.read_vtree(vt.read_bytes())))
    for a, b in zip(arrays, slow, strict=True):
        assert np.array_equal(a, b)
    # read by the compiled scan (the common form), and the same by the vectorized grammar
    allowed = io._parse_vtree(str(vt), vt.read_bytes())
    assert io._scan_sdd(sdd.read_bytes(), allowed) is not None
    for a, b in zip(arrays, io._parse_sdd_lines(str(sdd), sdd.read_bytes(), allowed), strict=True):
        assert np.array_equal(a, b)


def test_sudoku_models_match_pysdd_enumeration():
    sdd, vt = DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree"
    arrays, num_vars = io.read_sdd_file(sdd, vt)
    mgr = SddManager.from_vtree(Vtree.from_file(str(vt).encode()))
    node = mgr.read_sdd_file(str(sdd).encode())
    models = [m for m in node.models()]
    assert len(models) == 288
    kind, lit, child_start, children, root = arrays
    x = np.array([[m[v] for v in range(1, num_vars + 1)] for m in models], dtype=bool)
    val = np.empty((kind.size, len(models)), dtype=bool)
    for i in range(kind.size):
        kids = children[child_start[i] : child_start[i + 1]]
        k = kind[i]
        if k == LITERAL:
            val[i] = x[:, abs(lit[i]) - 1] if lit[i] > 0 else ~x[:, abs(lit[i]) - 1]
        elif k in (TRUE, FALSE):
            val[i] = k == TRUE
        else:
            val[i] = val[kids].all(0) if k == AND else val[kids].any(0)
    assert val[root].all()  # every PySDD model satisfies the DAG; with equal counts: same function


def test_sdd_without_vtree_and_str_paths(tmp_path):
    arrays, num_vars = io.read_sdd_file(str(DATA / "road_r.sdd"))
    assert num_vars is None
    check_dag(arrays)
    assert ddnnf_model_count(arrays, 41) == REAL["road_r"]


def test_sdd_unusual_layout_is_the_same_file(tmp_path):
    """Leading blanks, tabs, CRLF and interleaved comments: valid, so parsed the same."""
    src = (DATA / "sudoku_4.sdd").read_text().splitlines()
    odd = []
    for i, line in enumerate(src):
        odd.append(("  " if i % 3 == 0 else "") + line.replace(" ", "\t" if i % 2 else "  "))
        if i % 50 == 0:
            odd.append("c a comment")
    p = tmp_path / "odd.sdd"
    p.write_bytes("\r\n".join(odd).encode())
    a, _ = io.read_sdd_file(p, DATA / "sudoku_4.vtree")
    b, _ = io.read_sdd_file(DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


def test_sdd_sparse_ids_and_any_order(tmp_path):
    """Ids need not be dense or ordered; only defined before use."""
    text = "sdd 6\nL 900 0 1\nL 5 2 2\nL 7000000000 0 -1\nF 12\nT 3\nD 41 1 2 900 5 7000000000 12\n"
    p = write(tmp_path, "s.sdd", text)
    arrays, _ = io.read_sdd_file(p)
    check_dag(arrays)
    for a, b in zip(arrays, ref.read_sdd(text.encode()), strict=True):
        assert np.array_equal(a, b)
    assert truth_table(arrays, 2).tolist() == [False, False, False, True]  # (x1 & x2) | (-x1 & F)


# ----------------------------------------------------------------------------- PySDD round trips
@pytest.mark.parametrize("seed", range(8))
def test_random_cnf_sdd_round_trip(tmp_path, seed):
    rng = random.Random(seed)
    num_vars = rng.randint(3, 10)
    clauses = random_cnf(num_vars, rng.randint(1, 3 * num_vars), seed)
    vtree = ["balanced", "right", "left", "vertical"][seed % 4]
    root, sdd, vt = compile_and_save(tmp_path, clauses, num_vars, vtree)
    want = cnf_table(clauses, num_vars)

    direct = io.sdd_node_arrays(root)
    check_dag(direct)
    assert np.array_equal(truth_table(direct, num_vars), want)

    arrays, nv = io.read_sdd_file(sdd, vt)
    assert nv == num_vars
    check_dag(arrays)
    assert np.array_equal(truth_table(arrays, num_vars), want)
    assert ddnnf_model_count(arrays, num_vars) == root.global_model_count() == int(want.sum())


def test_constant_and_literal_roots(tmp_path):
    for clauses, n, k in [([], 3, TRUE), ([[1], [-1]], 3, FALSE), ([[-2]], 3, LITERAL)]:
        root = io.compile_cnf_with_pysdd(clauses, n)
        arrays = io.sdd_node_arrays(root)
        check_dag(arrays)
        assert arrays[0].size == 1 and arrays[0][arrays[4]] == k
        assert np.array_equal(truth_table(arrays, n), cnf_table(clauses, n))
    mgr = SddManager.from_vtree(Vtree(2, [1, 2], "balanced"))
    for node, k in [(mgr.true(), TRUE), (mgr.false(), FALSE), (mgr.literal(2), LITERAL)]:
        assert io.sdd_node_arrays(node)[0].tolist() == [k]


def test_sdd_node_arrays_rejects_other_objects():
    with pytest.raises(CircuitError):
        io.sdd_node_arrays("not a node")


def test_compiled_node_outlives_its_manager_reference():
    def make():
        return io.compile_cnf_with_pysdd([[1, 2], [-1, 3], [2, -3]], 3)

    root = make()
    gc.collect()
    for _ in range(3):  # the manager stays alive through the node
        io.compile_cnf_with_pysdd(random_cnf(8, 20, 1), 8)
        gc.collect()
    assert root.global_model_count() == int(cnf_table([[1, 2], [-1, 3], [2, -3]], 3).sum())
    assert np.array_equal(
        truth_table(io.sdd_node_arrays(root), 3), cnf_table([[1, 2], [-1, 3], [2, -3]], 3)
    )


def test_compile_cnf_checks_arguments():
    with pytest.raises(CircuitError, match="vtree"):
        io.compile_cnf_with_pysdd([[1]], 2, "sideways")
    with pytest.raises(CircuitError, match="literal"):
        io.compile_cnf_with_pysdd([[1, 3]], 2)
    with pytest.raises(CircuitError, match="literal"):
        io.compile_cnf_with_pysdd([[0]], 2)
    with pytest.raises(CircuitError):
        io.compile_cnf_with_pysdd([[1]], -1)


def test_large_sdd_agrees_with_the_reference_reading(tmp_path):
    root, sdd, vt = compile_and_save(tmp_path, random_cnf(40, 20, 7), 40, name="big")
    fast, _ = io.read_sdd_file(sdd, vt)
    slow = ref.read_sdd(sdd.read_bytes())
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)
    assert ddnnf_model_count(fast, 40) == root.global_model_count()


# ----------------------------------------------------------------------------- SDD / vtree errors
VT2 = "vtree 3\nL 0 1\nL 2 2\nI 1 0 2\n"


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("sdd 1\nX 0\n", 2, "unknown SDD line type 'X'"),
        ("c hi\nsdd 1\nL 0 0\n", 3, "an L line"),
        ("sdd 1\nT a\n", 2, "expected an integer, got 'a'"),
        ("sdd 2\nD 0 1 1 1 1\nT 1\n", 2, r"undefined or forward reference \(cycle\?\) to node 1"),
        ("sdd 2\nT 0\nF 0\n", 3, "duplicate SDD node id 0"),
        ("c x\nsdd 3\nT 0\n", 2, "header declares 3 SDD nodes but the file has 1"),
        ("sdd 1\nT 0\nsdd 1\n", 3, "second 'sdd' header"),
        ("T 0\nsdd 1\n", 1, "before the 'sdd <count>' header"),
        ("sdd 0\n", 1, "no nodes"),
        ("", None, "empty SDD file"),
        ("c only a comment\n", None, "empty SDD file"),
        ("sdd 3\nT 0\nF 1\nD 2 1 2 0 1\n", 4, "a D line with 2 elements has 8 tokens, got 6"),
        ("sdd 2\nT 0\nD 2 1 0 0 0\n", 3, "a D line with 0 elements"),
        ("sdd 1\nL 0 0 0\n", 2, "literal 0"),
        ("sdd 1\nL 0 0 -4611686018427387904\n", 2, "integer -4611686018427387904 is out of range"),
        ("sdd 1\nL 0 0 99999999999999999999999\n", 2, "integer 99999999999999999999999 is out"),
        ("sdd 1\nL 0 0 16777217\n", 2, "literal 16777217 .* v <= 16,777,216"),
        ("sdd 1\nL 0 0 -2147483647\n", 2, "literal -2147483647"),
        ("sdd 1\nL 0 0 \uff113\n", 2, "expected an integer, got '\uff113'"),  # full-width 1
        ("sdd 1\nL 0 0 \u0662\n", 2, "expected an integer, got '\u0662'"),  # Arabic-Indic 2
        ("sdd 1\nL 0 0 +1\n", 2, "expected an integer, got '\\+1'"),
        ("sdd 1\nL 0 0 2_0\n", 2, "expected an integer, got '2_0'"),
        ("sdd 1\nT -5\n", 2, "expected a non-negative integer, got '-5'"),
        ("sdd 1\nT\xa00\n", 2, "unknown SDD line type"),  # a no-break space is no blank
        ("sdd \uff11\nT 0\n", 1, "expected an integer"),
        ("c x\nsdd 2\nT 0\nsdd 2\nF 0\n", 4, "second 'sdd' header \\(first at line 2\\)"),
        ("sdd 3\nT 0\nD 1 0 1 0 0\nD 1 0 1 0 7\n", 4, "forward reference"),  # ref before dup
        ("sdd 3\nT 0\nD 1 0 1 0 x\nD 1 0 1 0 0\n", 3, "expected an integer"),
        ("sdd 3\nT 0\nD 2 0 1 0 9\nL 0 0 0\n", 3, "forward reference"),  # earlier than L
        ("sdd\n", 1, "the header is 'sdd <count>'"),
        ("sdd 1\nT 0 0\n", 2, "a T line"),
    ],
)
def test_sdd_parse_errors(tmp_path, text, line, match):
    p = write(tmp_path, "bad.sdd", text)
    expect_error(io.read_sdd_file, p, line, match, ref.read_sdd)


def test_sdd_node_id_limit(monkeypatch):
    """Past the reader's node id limit (2^31 - 1, lowered here), a CircuitError names the file
    and its node and element counts (from the file's lines), on both paths."""
    sdd = DATA / "road_r.sdd"
    lines = [l.split() for l in sdd.read_text().splitlines()]
    nodes = sum(1 for l in lines if l and l[0] in ("F", "T", "L", "D"))
    elements = sum(int(l[3]) for l in lines if l and l[0] == "D")
    monkeypatch.setattr(io, "MAX_NODES", nodes + elements - 1)
    message = f"{nodes:,} SDD nodes with {elements:,} elements"
    for read in (io._parse_sdd, io._parse_sdd_lines):
        with pytest.raises(errors.CircuitError, match=f"road_r.sdd: {message}"):
            read(str(sdd), sdd.read_bytes())
    monkeypatch.setattr(io, "MAX_NODES", nodes + elements)
    io._parse_sdd(str(sdd), sdd.read_bytes())


def test_sdd_literal_outside_vtree(tmp_path):
    vt = write(tmp_path, "v.vtree", VT2)
    p = write(tmp_path, "x.sdd", "sdd 3\nL 0 0 1\nL 1 2 -3\nD 2 1 1 0 1\n")
    err = expect_error(lambda q: io.read_sdd_file(q, vt), p, 3, "variable 3 is not in the vtree")
    assert "-3" in str(err)
    ok = write(tmp_path, "ok.sdd", "sdd 3\nL 0 0 1\nL 1 2 -2\nD 2 1 1 0 1\n")
    arrays, n = io.read_sdd_file(ok, vt)
    assert n == 2 and truth_table(arrays, 2).tolist() == cnf_table([[1], [-2]], 2).tolist()


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("vtree 3\nL 0 1\nL 2 2\nI 1 0 5\n", 4, "forward reference"),
        ("vtree 2\nL 0 1\nL 0 2\n", 3, "duplicate vtree node id 0"),
        ("vtree 2\nL 0 1\nL 1 1\n", 3, "variable 1 appears at two leaves"),
        ("vtree 4\nL 0 1\nL 2 2\nI 1 0 2\n", 1, "header declares 4 vtree nodes"),
        ("vtree 1\nX 0 1\n", 2, "unknown vtree line type"),
        ("vtree 1\nL 0\n", 2, "a vtree L line"),
        ("", None, "empty vtree file"),
        ("L 0 1\n", 1, "before the 'vtree <count>' header"),
        ("vtree 3\nL 0 1\nL 1 4611686018427387903\nI 2 0 1\n", 3, "beyond trilay's limit"),
        ("vtree 1\nL 0 0\n", 2, "variable 0 is not positive"),
        ("vtree 1\nL 0 \uff11\n", 2, "expected an integer"),
        # a DAG: node 0 is the child of two I nodes (and a left child twice over)
        ("vtree 5\nL 0 1\nL 1 2\nI 2 0 1\nI 3 0 2\n", 5, "already a child of the I node at line 4"),
        ("vtree 2\nL 0 1\nI 1 0 0\n", 3, "vtree node 0 is already a child"),
        # a forest: two trees
        ("vtree 4\nL 0 1\nL 1 2\nI 2 0 1\nL 3 3\n", 4, "vtree node 2 is no I node's child"),
        ("vtree 2\nL 0 1\nL 1 2\n", 2, "a vtree is one tree, not a forest"),
        ("vtree 2\nL 0 1\nL 1 2\nvtree 2\n", 4, "second 'vtree' header"),
    ],
)
def test_vtree_parse_errors(tmp_path, text, line, match):
    vt = write(tmp_path, "bad.vtree", text)
    sdd = write(tmp_path, "ok.sdd", "sdd 1\nT 0\n")
    expect_error(lambda q: io.read_sdd_file(sdd, q), vt, line, match, ref.read_vtree)


# ----------------------------------------------------------------------------- c2d
XOR_C2D = """nnf 7 6 2
L 1
L 2
L -1
L -2
A 2 0 3
A 2 2 1
O 1 2 4 5
"""


def test_c2d_xor(tmp_path):
    arrays, n = io.read_nnf_file(write(tmp_path, "xor.nnf", XOR_C2D))
    check_dag(arrays)
    assert n == 2 and arrays[4] == 6
    assert truth_table(arrays, 2).tolist() == [False, True, True, False]


def test_c2d_constants_and_comments(tmp_path):
    t, _ = io.read_nnf_file(write(tmp_path, "t.nnf", "c true\nnnf 1 0 3\nA 0\n"))
    f, _ = io.read_nnf_file(write(tmp_path, "f.nnf", "nnf 1 0 3\nO 0 0\n"))
    assert t[0].tolist() == [TRUE] and f[0].tolist() == [FALSE]
    g, n = io.read_nnf_file(
        write(tmp_path, "g.nnf", "nnf 4 3 3\nL -3\nA 0\nc mid\nO 0 0\nO 0 3 0 1 2\n")
    )
    assert n == 3 and truth_table(g, 3).all()


@pytest.mark.parametrize("seed", range(4))
def test_c2d_from_pysdd(tmp_path, seed):
    num_vars = 4 + seed
    clauses = random_cnf(num_vars, 2 * num_vars, 100 + seed)
    root = io.compile_cnf_with_pysdd(clauses, num_vars)
    p = tmp_path / "g.nnf"
    p.write_text(ref.c2d_text(root, num_vars))
    arrays, n = io.read_nnf_file(p)
    check_dag(arrays)
    assert n == num_vars
    assert np.array_equal(truth_table(arrays, num_vars), cnf_table(clauses, num_vars))
    slow, _ = ref.read_c2d(p.read_bytes())
    for a, b in zip(arrays, slow, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("nnf 2 0\nL 1\n", 1, "the header is 'nnf <nodes> <edges> <vars>'"),
        ("nnf 1 0 1\nL 2\n", 2, "literal 2 outside 1..1"),
        ("nnf 1 0 1\nL 0\n", 2, "literal 0"),
        ("nnf 2 1 1\nA 1 1\nL 1\n", 2, "undefined or forward reference"),
        ("nnf 2 1 1\nL 1\nA 1 1\n", 3, "undefined or forward reference"),
        ("nnf 3 0 1\nL 1\n", 1, "header declares 3 nodes but the file has 1"),
        ("nnf 2 3 1\nL 1\nA 1 0\n", 1, "header declares 3 edges but the file has 1"),
        ("nnf 2 1 1\nL 1\nA 2 0 0\n", 3, "more edges than the header's 1"),
        ("nnf 1 0 1\nL 1\nL -1\n", 3, "more nodes than the header's 1"),
        ("nnf 2 1 1\nL 1\nA 2 0\n", 3, "an A line"),
        ("nnf 2 1 1\nL 1\nO 0 1\n", 3, "an O line"),
        ("nnf 2 1 1\nL 1\nO 2 1 0\n", 3, "decision variable 2"),
        ("nnf 1 0 1\nX 1\n", 2, "unknown c2d line type 'X'"),
        ("nnf 1 0 1\nL x\n", 2, "expected an integer, got 'x'"),
        ("nnf 0 0 1\n", 1, "no nodes"),
        ("nnf 1 0 1099511627776\nL 1\n", 1, "variable count 1099511627776 is beyond trilay"),
        ("nnf 128 231 1099511627776\nL 1\n", 1, "variable count 1099511627776"),
        ("nnf 1 0 1\nL +1\n", 2, "expected an integer, got '\\+1'"),
        ("nnf 1 0 1\nL \u0661\n", 2, "expected an integer"),
        ("nnf 1 0 -1\nL 1\n", 1, "expected a non-negative integer, got '-1'"),
        ("nnf 2 1 1\nL 1\nA 1 -0\n", 3, "expected a non-negative integer, got '-0'"),
        ("nnf 1 0 1\nnnf 1 0 1\n", 2, "second 'nnf' header"),
    ],
)
def test_c2d_parse_errors(tmp_path, text, line, match):
    reference = ref.read_c2d if line is not None else None
    expect_error(io.read_nnf_file, write(tmp_path, "bad.nnf", text), line, match, reference)


# ----------------------------------------------------------------------------- d4
XOR_D4 = """c xor, edges before their child is declared
o 1 0
1 2 1 -2 0
1 3 -1 0
t 2 0
a 3 0
3 4 0
3 5 0
f 6 0
o 4 0
4 2 2 0
4 6 0
t 5 0
"""


def test_d4_xor_children_after_parents(tmp_path):
    p = write(tmp_path, "xor.nnf", XOR_D4)
    arrays, n = io.read_nnf_file(p)
    assert n is None
    check_dag(arrays)
    assert truth_table(arrays, 2).tolist() == [False, True, True, False]
    weight = {1: 3, -1: 5, 2: 7, -2: 11}.get
    assert ref.evaluate_dag(arrays, weight) == ref.read_d4(p.read_bytes())(weight)


def test_d4_root_is_node_1_and_constants(tmp_path):
    # node 1 declared last: it is still the root
    arrays, _ = io.read_nnf_file(write(tmp_path, "r.nnf", "t 2 0\nf 3 0\no 1 0\n1 3 0\n1 2 -1 0\n"))
    assert truth_table(arrays, 1).tolist() == [True, False]
    t, _ = io.read_nnf_file(write(tmp_path, "t.nnf", "t 1 0\n"))
    assert t[0].tolist() == [TRUE]
    empty_or, _ = io.read_nnf_file(write(tmp_path, "o.nnf", "o 1 0\n"))
    assert truth_table(empty_or, 1).tolist() == [False, False]


@pytest.mark.parametrize("seed", range(4))
def test_d4_from_pysdd(tmp_path, seed):
    num_vars = 4 + seed
    clauses = random_cnf(num_vars, 2 * num_vars, 200 + seed)
    root = io.compile_cnf_with_pysdd(clauses, num_vars, "right" if seed % 2 else "balanced")
    p = tmp_path / "g.nnf"
    p.write_text(ref.d4_text(root))
    want = cnf_table(clauses, num_vars)
    arrays, n = io.read_nnf_file(p)
    assert n is None
    check_dag(arrays)
    assert np.array_equal(truth_table(arrays, num_vars), want)
    assert ddnnf_model_count(arrays, num_vars) == int(want.sum())
    weight = random.Random(seed).randrange
    weights = {l: weight(ref.PRIME) for v in range(1, num_vars + 1) for l in (v, -v)}
    assert ref.evaluate_dag(arrays, weights.get) == ref.read_d4(p.read_bytes())(weights.get)


def test_d4_deeper_than_the_vectorized_levels(tmp_path):
    """A 3,000-node chain (past the level-by-level sort's limit, so the node-by-node sort
    finishes it) reads as the reference reading evaluates it; closed into a cycle, the first
    edge of the cycle in file order is named."""
    n = 3000
    decls = [f"o {i} 0" for i in range(1, n)] + [f"t {n} 0"]
    edges = [f"{i} {i + 1} {(-1) ** i * (i % 7 + 1)} 0" for i in range(1, n)]
    text = "\n".join(decls + edges[::-1]) + "\n"
    arrays, _ = io.read_nnf_file(write(tmp_path, "chain.nnf", text))
    check_dag(arrays)
    weight = {l: 3 + (l % 11) for v in range(1, 8) for l in (v, -v)}.get
    assert ref.evaluate_dag(arrays, weight) == ref.read_d4(text.encode())(weight)
    cyclic = write(tmp_path, "cycle.nnf", text.replace(f"t {n} 0", f"o {n} 0") + f"{n} 1 0\n")
    expect_error(
        io.read_nnf_file, cyclic, n + 1, r"cycle through node 3000 \(edge 2999", ref.read_d4
    )


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("o 1 0\na 2 0\n1 2 0\n2 1 0\n", 3, "cycle through node 2 \\(edge 1 -> 2\\)"),
        ("o 1 0\na 2 0\na 3 0\n1 2 0\n2 3 0\n3 2 0\n", 5, "cycle through node 3"),
        ("o 1 0\n1 1 0\n", 2, "cycle"),
        ("o 1 0\nt 2 0\n1 2\n", 3, "missing trailing 0"),
        ("o 1 0\nt 2 0\n1 2 3\n", 3, "missing trailing 0"),
        ("o 1\n", 1, "missing trailing 0"),
        ("o 1 5\n", 1, "missing trailing 0"),
        ("o 1 0\n1 5 0\n", 2, "node 5, which is never declared"),
        ("o 1 0\no 1 0\n", 2, "duplicate node id 1"),
        ("o 1 0\nt 2 0\n1 x 0\n", 3, "expected an integer, got 'x'"),
        ("o 1 0\nz 2 0\n", 2, "unknown d4 line type 'z'"),
        ("o 1 0\nt 2 0\n1 2 0 3 0\n", 3, "0 before the end"),
        ("o 1 0\nt 2 0\n1 0\n", 3, "an edge line"),
        ("o 1 0\nt 2 0\n1 2 4611686018427387904 0\n", 3, "integer 4611686018427387904 is out"),
        ("o 1 0\nt 2 0\n1 2 2147483647 0\n", 3, "literal 2147483647: variable beyond trilay"),
        ("o 1 0\nt 2 0\n1 2 \uff11 0\n", 3, "expected an integer"),
        ("o 1 0\nt 2 0\n1 2 2_0 0\n", 3, "expected an integer, got '2_0'"),
        ("o 1 0\nt 2 0\n-1 2 0\n", 3, "expected a non-negative integer, got '-1'"),
        ("o 0 0\n", 1, "node id 0"),
        ("o 1 0\nt 2 0\n1 2 0\no 1 0\n1 3 0\n", 4, "duplicate node id 1 \\(first at line 1\\)"),
        ("t 1 0\no 2 0\n1 2 0\n", 3, "edge out of the constant node 1"),
        ("c only comments\n", None, "empty NNF file"),
    ],
)
def test_d4_parse_errors(tmp_path, text, line, match):
    reference = ref.read_d4 if line is not None else None
    expect_error(io.read_nnf_file, write(tmp_path, "bad.nnf", text), line, match, reference)


# ----------------------------------------------------------------------------- DIMACS
def test_dimacs_sudoku_model_count():
    clauses, num_vars = io.read_dimacs(DATA / "sudoku_4.cnf")
    assert num_vars == 64
    header = next(l for l in (DATA / "sudoku_4.cnf").read_text().splitlines() if l.startswith("p"))
    assert len(clauses) == int(header.split()[3])
    root = io.compile_cnf_with_pysdd(clauses, num_vars)
    assert root.global_model_count() == 288
    assert ddnnf_model_count(io.sdd_node_arrays(root), num_vars) == 288


def test_dimacs_spanning_clauses_and_end_marker(tmp_path):
    p = write(tmp_path, "a.cnf", "c hello\np cnf 3 3\n1 -2\n  3 0 2 0\n\n0\n%\n0\ngarbage\n")
    assert io.read_dimacs(p) == ([[1, -2, 3], [2], []], 3)
    q = write(tmp_path, "b.cnf", "p cnf 2 2\r\n1 0\r\n-2\r\n")  # last clause without its 0
    assert io.read_dimacs(q) == ([[1], [-2]], 2)


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("1 2 0\n", 1, "clause before the 'p cnf"),
        ("c nothing\n", None, "missing 'p cnf"),
        ("p cnf 2 1\n1 3 0\n", 2, "literal 3 beyond the header's 2 variables"),
        ("p cnf 2 1\n1 -3 0\n", 2, "literal -3"),
        ("p cnf 2 1\n1 x 0\n", 2, "expected an integer, got 'x'"),
        ("c hi\np cnf 2 3\n1 0\n", 2, "header declares 3 clauses but the file has 1"),
        ("p cnf 2\n", 1, "the header is 'p cnf <vars> <clauses>'"),
        ("p dnf 2 1\n", 1, "the header is"),
        ("p cnf 2 1\np cnf 2 1\n", 2, "second 'p' header"),
        ("p cnf a 1\n", 1, "expected an integer"),
        ("p cnf 1099511627776 7\n1 0\n", 1, "variable count 1099511627776 is beyond trilay"),
        ("p cnf 2 1\n\uff11 0\n", 2, "expected an integer"),
        ("p cnf 2 1\n+1 0\n", 2, "expected an integer, got '\\+1'"),
        ("p cnf 2 -1\n", 1, "expected a non-negative integer, got '-1'"),
        ("p cnf 2 1\n1 0\nx\n%\n", 3, "expected an integer, got 'x'"),
    ],
)
def test_dimacs_parse_errors(tmp_path, text, line, match):
    reference = ref.read_dimacs
    expect_error(io.read_dimacs, write(tmp_path, "bad.cnf", text), line, match, reference)


# ----------------------------------------------------------------------------- Circuit wiring
def test_circuit_loaders_use_io(tmp_path):
    c = Circuit()
    r0 = c.add_sdd_file(DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree")
    r1 = c.add_nnf_file(write(tmp_path, "xor.nnf", XOR_D4))
    r2 = c.add_cnf([[1, 2], [-1]], num_vars=64)
    assert (r0, r1, r2) == (0, 1, 2) and c.num_vars == 64
    kind, lit, child_start, children, roots = c.arrays()
    assert kind.size == c.num_nodes and roots.size == 3


def pysdd_wmc(node, pos, neg) -> float:
    """PySDD's own weighted model count of ``node`` over its manager's variables."""
    wmc = node.wmc(log_mode=False)
    for v in range(1, node.manager.var_count() + 1):
        wmc.set_literal_weight(node.manager.literal(v), float(pos[v - 1]))
        wmc.set_literal_weight(node.manager.literal(-v), float(neg[v - 1]))
    return wmc.propagate()


SDD_NODES = {  # in a manager of 5 variables
    "x1 & x3": lambda m: m.literal(1) & m.literal(3),
    "-x2": lambda m: m.literal(-2),
    "x5": lambda m: m.literal(5),
    "true": lambda m: m.true(),
    "false": lambda m: m.false(),
    "x1 | x4": lambda m: m.literal(1) | m.literal(4),
}


@pytest.mark.parametrize("name", list(SDD_NODES))
def test_add_sdd_counts_every_variable_of_the_manager(name):
    """A node is a function of its manager's variables: x1 & x3 in a 5-variable manager has
    PySDD model count 8 and takes [B, 5] weights (issue 13: it took [B, 3], constants [B, 0])."""
    mgr = SddManager.from_vtree(Vtree(5, [1, 2, 3, 4, 5], "balanced"))
    node = SDD_NODES[name](mgr)
    c = Circuit()
    c.add_sdd(node)
    assert c.num_vars == 5
    module = c.compile().module("real")
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.rand(4, 5, generator=g, dtype=torch.float64), torch.rand(4, 5, generator=g)
    got = module(pos, neg.double())[:, 0]
    want = [pysdd_wmc(node, pos[b], neg[b]) for b in range(4)]
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-300)
    ones = torch.ones(1, 5, dtype=torch.float64)
    assert module(ones, ones)[0, 0].item() == node.global_model_count()


def test_add_sdd_num_vars_reads_the_node_over_fewer_variables():
    mgr = SddManager.from_vtree(Vtree(5, [1, 2, 3, 4, 5], "balanced"))
    node = mgr.literal(1) & mgr.literal(-2)
    c = Circuit(num_vars=3)
    with pytest.raises(CircuitError, match="declares 5 variables.*declared variable count 3"):
        c.add_sdd(node)
    c.add_sdd(node, num_vars=3)  # variables 4 and 5 are not mentioned: quantified out
    assert c.num_vars == 3
    ones = torch.ones(1, 3, dtype=torch.float64)
    assert c.compile().module("real")(ones, ones).item() == node.model_count() * 2 == 2
    with pytest.raises(CircuitError, match="mentions variable 2, beyond num_vars=1"):
        Circuit().add_sdd(node, num_vars=1)


def test_missing_files_raise_one_error_type(tmp_path):
    """Every loader: MissingFileError, which is both a TrilayError and a FileNotFoundError."""
    missing = tmp_path / "nowhere"
    good_sdd, good_vtree = DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree"
    loaders = {
        "read_sdd_file": lambda: io.read_sdd_file(missing),
        "read_sdd_file vtree": lambda: io.read_sdd_file(good_sdd, missing),
        "read_vtree_file": lambda: io.read_vtree_file(missing),
        "read_nnf_file": lambda: io.read_nnf_file(missing),
        "read_dimacs": lambda: io.read_dimacs(missing),
        "add_sdd_file": lambda: Circuit().add_sdd_file(missing, good_vtree),
        "add_sdd_file vtree": lambda: Circuit().add_sdd_file(good_sdd, missing),
        "add_nnf_file": lambda: Circuit().add_nnf_file(missing),
        "add_cnf": lambda: Circuit().add_cnf(missing),
        "add_cnf str": lambda: Circuit().add_cnf(str(missing)),
        "directory": lambda: Circuit().add_nnf_file(tmp_path),
    }
    for name, load in loaders.items():
        with pytest.raises(FileNotFoundError) as info:
            load()
        assert isinstance(info.value, errors.MissingFileError), name
        assert isinstance(info.value, errors.TrilayError), name
        assert info.value.filename in (str(missing), str(tmp_path)), name


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda c: c.literal(2**62), "1 <= v <= 16,777,216"),
        (lambda c: c.literal(-(2**70)), "1 <= v <= 16,777,216"),
        (lambda c: c.literal(2**24 + 1), "got 16777217"),
        (lambda c: c.literal(0), "variables are 1-based"),
        (lambda c: Circuit(num_vars=2**40), "num_vars must be an integer in 0..16,777,216"),
        (lambda c: Circuit(num_vars=-1), "num_vars must be an integer"),
        (lambda c: c.add_cnf([[1]], num_vars=-1), "num_vars must be an integer in 0..16,777,216"),
        (lambda c: c.add_cnf([[1]], num_vars=2**40), "num_vars must be an integer"),
        (lambda c: c.add_cnf([[1]], num_vars=1.5), "num_vars must be an integer"),
        (lambda c: c.add_cnf([[2**40]]), "a CNF literal .* got 1099511627776"),
        (lambda c: c.add_cnf([[1, "2"]]), "a CNF literal .* got '2'"),
        (lambda c: c.add_cnf([1, 2]), "a CNF is a DIMACS path or a sequence of clauses"),
    ],
)
def test_builders_bound_variables_and_counts(build, match):
    with pytest.raises(CircuitError, match=match):
        build(Circuit())


def test_add_cnf_negative_count_from_a_file_header(tmp_path):
    with pytest.raises(ParseError, match="expected a non-negative integer, got '-1'"):
        Circuit().add_cnf(write(tmp_path, "n.cnf", "p cnf -1 1\n1 0\n"))


def test_the_variable_limit_itself_is_a_variable():
    """MAX_VARS is the largest variable, not one past it."""
    c = Circuit()
    c.add_root(c.literal(-(2**24)))
    assert c.num_vars == 2**24 == ref.MAX_VARS
