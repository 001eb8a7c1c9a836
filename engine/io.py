"""Readers for circuit and formula files, and the PySDD bridge.

Every circuit loader returns a *local DAG* ``(kind, lit, child_start, children, root)``: int64
numpy arrays over local node ids ``0..n-1`` (node ``i``'s children are
``children[child_start[i]:child_start[i + 1]]``, every child id below its parent's, ``lit[i]``
the signed literal of a LITERAL node and 0 otherwise) and the local id of the output node.
:meth:`~trilay.engine.circuit.Circuit._append_arrays` shifts the ids and appends them.

Formats:

* SDD text files written by libsdd / PySDD (``sdd``, ``F``, ``T``, ``L``, ``D`` lines), with
  the optional vtree file (``vtree``, ``L``, ``I`` lines): :func:`read_sdd_file`.
* d-DNNF in c2d format (``nnf <nodes> <edges> <vars>`` header) or d4 format (``o/a/t/f <id> 0``
  declarations and ``<parent> <child> <lits>* 0`` edges): :func:`read_nnf_file`.
* DIMACS CNF: :func:`read_dimacs`, compiled by :func:`compile_cnf_with_pysdd`.

Malformed files raise :class:`~trilay.engine.errors.ParseError` naming the file and the
1-based line (``err.path``, ``err.line``); ``err.line`` is ``None`` only for errors about the
file as a whole (an empty file).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np

from ._segments import ranges
from .circuit import AND, FALSE, LITERAL, OR, TRUE
from .errors import CircuitError, ParseError

__all__ = [
    "read_sdd_file",
    "read_vtree_file",
    "sdd_node_arrays",
    "read_nnf_file",
    "read_dimacs",
    "compile_cnf_with_pysdd",
]

LocalDag = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]

#: Vtree types libsdd knows; any other string makes libsdd exit the process, so we check first.
VTREE_TYPES = ("right", "left", "vertical", "balanced", "random")

_FORWARD = "undefined or forward reference (cycle?) to node"

#: Literals beyond this are rejected (they would not fit the int64 arrays).
_MAX_VAR = 2**62


# ---------------------------------------------------------------------------- helpers
def _path_str(path) -> str:
    p = os.fspath(path)
    return os.fsdecode(p) if isinstance(p, bytes) else p


def _read_lines(path) -> list[str]:
    with open(os.fspath(path), "rb") as f:
        return _decode_lines(f.read())


def _decode_lines(data: bytes) -> list[str]:
    # split on '\n' only (str.splitlines also splits on \x0b, \x1c, ... and would shift line
    # numbers); a trailing '\r' disappears in str.split().
    return data.decode("utf-8", "replace").split("\n")


def _ints(toks: Sequence[str], path: str, lineno: int) -> list[int]:
    try:
        return [int(t) for t in toks]
    except ValueError:
        bad = next(t for t in toks if not _is_int_token(t))
        raise ParseError(f"expected an integer, got {bad!r}", path, lineno) from None


def _is_int_token(t: str) -> bool:
    try:
        int(t)
    except ValueError:
        return False
    return True


def _finish(
    kind: list[int], lit: list[int], counts: list[int], children: list[int], root: int
) -> LocalDag:
    child_start = np.zeros(len(counts) + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.asarray(counts, dtype=np.int64), out=child_start[1:])
    return (
        np.asarray(kind, dtype=np.int64),
        np.asarray(lit, dtype=np.int64),
        child_start,
        np.asarray(children, dtype=np.int64),
        int(root),
    )


_I64 = np.iinfo(np.int64)


def _numeric_lines(data: bytes, letters: bytes, header_word: str | None, numeric: bool = False):
    """Vectorized tokenizer for files made of one header line, ``c`` comment lines and node lines
    ``<letter> <int>*`` (and, with ``numeric``, lines of integers only): the fast path of the SDD,
    c2d and d4 readers.

    Returns ``(letter per node line (uint8; 0 for an all-integer line), integers per node line,
    offset of each node line's first integer, all integers flat, header tokens)``, or ``None``
    whenever the file has anything
    unusual (leading blanks, a non-integer, a second header, ...): the caller then runs its
    line-by-line parser, which accepts any valid file and reports errors with line numbers.
    """
    if b"\r" in data:
        data = data.replace(b"\r", b" ")
    arr = np.frombuffer(data, dtype=np.uint8)
    n = arr.size
    if n == 0:
        return None
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [n]))
    keep = starts < ends
    if not keep.all():
        starts, ends = starts[keep], ends[keep]
    first = arr[starts]
    table = np.zeros(256, dtype=bool)
    table[list(letters)] = True
    is_letter = table[first]
    is_num = np.zeros_like(is_letter)
    if numeric:
        is_num = ((first >= ord("0")) & (first <= ord("9"))) | (first == ord("-"))
    is_node = is_letter | is_num
    is_comment = first == ord("c")
    is_header = first == ord(header_word[0]) if header_word else np.zeros_like(is_node)
    if not (is_node | is_comment | is_header).all() or int(is_header.sum()) != (
        1 if header_word else 0
    ):
        return None
    node_starts, node_ends = starts[is_node], ends[is_node]
    if node_starts.size == 0:
        return None
    header = []
    if header_word:
        h = int(np.flatnonzero(is_header)[0])
        if starts[h] > node_starts[0]:
            return None
        header = data[starts[h] : ends[h]].split()
        if not header or header[0] != header_word.encode():
            return None
    # a letter must be followed by a blank
    let_starts, let_ends = starts[is_letter], ends[is_letter]
    if (let_ends - let_starts < 2).any():
        return None
    second = arr[let_starts + 1]
    if not ((second == 32) | (second == 9)).all():
        return None
    buf = arr.copy()
    for s, e in zip(starts[~is_node].tolist(), ends[~is_node].tolist(), strict=True):
        buf[s:e] = 32
    buf[let_starts] = 32
    # blanks: every byte <= 32; a control character that is not whitespace makes fromstring
    # stop early, which the count check below catches
    solid = buf > 32
    tok_start = np.flatnonzero(solid[1:] > solid[:-1]) + 1
    if solid[0]:
        tok_start = np.concatenate(([0], tok_start))
    lo = np.searchsorted(tok_start, node_starts)
    ntok = np.searchsorted(tok_start, node_ends) - lo
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            ints = np.fromstring(buf.tobytes(), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning, AttributeError):  # AttributeError: no fromstring
            return None
    if ints.size != tok_start.size or (
        ints.size and ((ints == _I64.max) | (ints == _I64.min)).any()
    ):
        return None
    letter = np.where(is_letter, first, 0)[is_node]
    return letter, ntok, lo, ints, [t.decode("ascii", "replace") for t in header]


def _index_of(ids: np.ndarray, refs: np.ndarray) -> np.ndarray | None:
    """Position in ``ids`` of each of ``refs``; ``None`` if ``ids`` has a duplicate or a ref is
    not in ``ids``."""
    m = ids.size
    positions = np.arange(m, dtype=np.int64)
    if m == 0:
        return None if refs.size else positions
    lo_id, hi_id = int(ids.min()), int(ids.max())
    if hi_id - lo_id < 4 * m + 1024:  # dense ids (as the tools write them): a lookup table
        table = np.full(hi_id - lo_id + 1, -1, dtype=np.int64)
        table[ids - lo_id] = positions
        if (table[ids - lo_id] != positions).any():
            return None
        if refs.size and (int(refs.min()) < lo_id or int(refs.max()) > hi_id):
            return None
        found = table[refs - lo_id]
        return None if (found < 0).any() else found
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if (sorted_ids[1:] == sorted_ids[:-1]).any():
        return None
    pos = np.searchsorted(sorted_ids, refs)
    pos[pos == m] = 0
    if (sorted_ids[pos] != refs).any():
        return None
    return order[pos]


# ---------------------------------------------------------------------------- vtree
def read_vtree_file(vtree_path) -> set[int]:
    """Parse a libsdd vtree file; returns the set of variables at its leaves."""
    path = _path_str(vtree_path)
    lines = _read_lines(vtree_path)
    header_line = header_count = None
    ids: set[int] = set()
    variables: set[int] = set()
    count = 0
    for lineno, line in enumerate(lines, 1):
        toks = line.split()
        if not toks or toks[0][0] == "c":
            continue
        t = toks[0]
        if t == "vtree":
            if header_line is not None:
                raise ParseError(
                    f"second 'vtree' header (first at line {header_line})", path, lineno
                )
            if len(toks) != 2:
                raise ParseError(
                    f"the header is 'vtree <count>', got {line.strip()!r}", path, lineno
                )
            header_count = _ints(toks[1:], path, lineno)[0]
            header_line = lineno
            continue
        if t not in ("L", "I"):
            raise ParseError(
                f"unknown vtree line type {t!r} (expected vtree, L, I or c)", path, lineno
            )
        if header_line is None:
            raise ParseError("vtree node line before the 'vtree <count>' header", path, lineno)
        want = 3 if t == "L" else 4
        if len(toks) != want:
            form = "L <id> <var>" if t == "L" else "I <id> <left> <right>"
            raise ParseError(f"a vtree {t} line is '{form}', got {len(toks)} tokens", path, lineno)
        nums = _ints(toks[1:], path, lineno)
        if nums[0] in ids:
            raise ParseError(f"duplicate vtree node id {nums[0]}", path, lineno)
        if t == "L":
            var = nums[1]
            if var < 1:
                raise ParseError(f"vtree variable {var} is not positive", path, lineno)
            if var in variables:
                raise ParseError(f"vtree variable {var} appears at two leaves", path, lineno)
            variables.add(var)
        else:
            for ref in nums[1:]:
                if ref not in ids:
                    raise ParseError(
                        f"{_FORWARD.replace('node', 'vtree node')} {ref}", path, lineno
                    )
        ids.add(nums[0])
        count += 1
    if header_line is None:
        raise ParseError("empty vtree file (no 'vtree <count>' header)", path, None)
    if count == 0:
        raise ParseError("vtree file has no nodes", path, header_line)
    if count != header_count:
        raise ParseError(
            f"header declares {header_count} vtree nodes but the file has {count}",
            path,
            header_line,
        )
    return variables


# ---------------------------------------------------------------------------- SDD
def read_sdd_file(sdd_path, vtree_path=None) -> tuple[LocalDag, int | None]:
    """Parse a libsdd / PySDD SDD text file (and optionally its vtree file).

    ``F``/``T``/``L`` lines become FALSE/TRUE/LITERAL nodes; a ``D`` line with ``k`` elements
    becomes an OR over ``k`` AND(prime, sub) nodes. The root is the node of the last node line.

    Returns ``(arrays, num_vars)``: the local DAG, and the largest variable of the vtree
    (``None`` without a vtree). With a vtree, every SDD literal's variable must be one of its
    leaves.
    """
    allowed = None
    num_vars = None
    if vtree_path is not None:
        allowed = read_vtree_file(vtree_path)
        num_vars = max(allowed)
    return _parse_sdd(sdd_path, allowed), num_vars


def _parse_sdd(sdd_path, allowed: set[int] | None) -> LocalDag:
    with open(os.fspath(sdd_path), "rb") as f:
        data = f.read()
    dag = _parse_sdd_fast(data, allowed)
    if dag is None:  # malformed or unusual: the line-by-line parser reports where
        dag = _parse_sdd_lines(_decode_lines(data), _path_str(sdd_path), allowed)
    return dag


_SDD_KIND = np.zeros(256, dtype=np.int64)
_SDD_KIND[[ord("F"), ord("T"), ord("L"), ord("D")]] = [FALSE, TRUE, LITERAL, OR]


def _parse_sdd_fast(data: bytes, allowed: set[int] | None) -> LocalDag | None:
    """Vectorized SDD parser for well-formed files; ``None`` when anything is off."""
    tok = _numeric_lines(data, b"DLTF", "sdd")
    if tok is None:
        return None
    letter, ntok, off, ints, header = tok
    m = letter.size
    if len(header) != 2 or not _is_int_token(header[1]) or int(header[1]) != m:
        return None
    is_d = letter == ord("D")
    is_l = letter == ord("L")
    want = np.where(is_l, 3, 1)
    if ((ntok != want) & ~is_d).any() or (ntok[is_d] < 3).any():
        return None
    k = np.zeros(m, dtype=np.int64)
    k[is_d] = ints[off[is_d] + 2]
    if (k < 0).any() or (ntok[is_d] != 3 + 2 * k[is_d]).any():
        return None
    ids = ints[off]
    lits = ints[off[is_l] + 2]
    if ((lits == 0) | (np.abs(lits) >= _MAX_VAR)).any():
        return None
    if allowed is not None:
        table = np.zeros(max(allowed) + 1, dtype=bool)
        table[list(allowed)] = True
        a = np.abs(lits)
        if (a >= table.size).any() or not table[a].all():
            return None
    refs = ints[ranges(off[is_d] + 3, off[is_d] + 3 + 2 * k[is_d])]
    def_line = _index_of(ids, refs)
    if def_line is None:
        return None
    d_lines = np.flatnonzero(is_d)
    if (def_line >= np.repeat(d_lines, 2 * k[is_d])).any():
        return None
    # local ids: a D line gives k ANDs then its OR; other lines one node
    local_of_line = np.cumsum(k + 1) - 1
    n = int(local_of_line[-1]) + 1
    kind = np.full(n, AND, dtype=np.int64)
    kind[local_of_line] = _SDD_KIND[letter]
    lit = np.zeros(n, dtype=np.int64)
    lit[local_of_line[is_l]] = lits
    counts = np.zeros(n, dtype=np.int64)
    and_ids = np.flatnonzero(kind == AND)
    counts[and_ids] = 2
    or_ids = local_of_line[is_d]
    kd = k[is_d]
    counts[or_ids] = kd
    child_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=child_start[1:])
    children = np.empty(int(child_start[-1]), dtype=np.int64)
    elem_local = local_of_line[def_line]
    children[child_start[and_ids]] = elem_local[0::2]
    children[child_start[and_ids] + 1] = elem_local[1::2]
    children[ranges(child_start[or_ids], child_start[or_ids] + kd)] = ranges(or_ids - kd, or_ids)
    return kind, lit, child_start, children, int(local_of_line[-1])


def _parse_sdd_lines(lines: list[str], path: str, allowed: set[int] | None) -> LocalDag:
    idmap: dict[int, int] = {}
    kind: list[int] = []
    lit: list[int] = []
    counts: list[int] = []
    children: list[int] = []
    header_line = header_count = None
    n_sdd = 0
    root = -1
    for lineno, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            continue
        t = toks[0]
        if t == "D":
            if header_line is None:
                raise ParseError("SDD node line before the 'sdd <count>' header", path, lineno)
            try:
                nums = [int(x) for x in toks[1:]]
            except ValueError:
                nums = _ints(toks[1:], path, lineno)
            if len(nums) < 3:
                raise ParseError(
                    f"a D line is 'D <id> <vtree> <k> {{<prime> <sub>}}*', got {len(toks)} tokens",
                    path,
                    lineno,
                )
            k = nums[2]
            if k < 0 or len(nums) != 3 + 2 * k:
                raise ParseError(
                    f"a D line with {k} elements has {4 + 2 * k} tokens, got {len(toks)}",
                    path,
                    lineno,
                )
            try:
                elems = [idmap[x] for x in nums[3:]]
            except KeyError as e:
                raise ParseError(f"{_FORWARD} {e.args[0]}", path, lineno) from None
            nid = nums[0]
            if nid in idmap:
                raise ParseError(f"duplicate SDD node id {nid}", path, lineno)
            base = len(kind)
            kind.extend([AND] * k)
            kind.append(OR)
            lit.extend([0] * (k + 1))
            counts.extend([2] * k)
            counts.append(k)
            children.extend(elems)
            children.extend(range(base, base + k))
            root = idmap[nid] = base + k
            n_sdd += 1
        elif t == "L":
            if header_line is None:
                raise ParseError("SDD node line before the 'sdd <count>' header", path, lineno)
            if len(toks) != 4:
                raise ParseError(
                    f"an L line is 'L <id> <vtree> <literal>', got {len(toks)} tokens", path, lineno
                )
            nid, _, l = _ints(toks[1:], path, lineno)
            if l == 0 or abs(l) >= _MAX_VAR:
                raise ParseError(
                    f"literal {l} (literals are +v or -v, 1 <= v < 2^62)", path, lineno
                )
            if allowed is not None and abs(l) not in allowed:
                raise ParseError(
                    f"literal {l}: variable {abs(l)} is not in the vtree", path, lineno
                )
            if nid in idmap:
                raise ParseError(f"duplicate SDD node id {nid}", path, lineno)
            root = idmap[nid] = len(kind)
            kind.append(LITERAL)
            lit.append(l)
            counts.append(0)
            n_sdd += 1
        elif t == "T" or t == "F":
            if header_line is None:
                raise ParseError("SDD node line before the 'sdd <count>' header", path, lineno)
            if len(toks) != 2:
                raise ParseError(f"a {t} line is '{t} <id>', got {len(toks)} tokens", path, lineno)
            nid = _ints(toks[1:], path, lineno)[0]
            if nid in idmap:
                raise ParseError(f"duplicate SDD node id {nid}", path, lineno)
            root = idmap[nid] = len(kind)
            kind.append(TRUE if t == "T" else FALSE)
            lit.append(0)
            counts.append(0)
            n_sdd += 1
        elif t[0] == "c":
            continue
        elif t == "sdd":
            if header_line is not None:
                raise ParseError(f"second 'sdd' header (first at line {header_line})", path, lineno)
            if len(toks) != 2:
                raise ParseError(f"the header is 'sdd <count>', got {line.strip()!r}", path, lineno)
            header_count = _ints(toks[1:], path, lineno)[0]
            header_line = lineno
        else:
            raise ParseError(
                f"unknown SDD line type {t!r} (expected sdd, F, T, L, D or c)", path, lineno
            )
    if header_line is None:
        raise ParseError("empty SDD file (no 'sdd <count>' header)", path, None)
    if n_sdd == 0:
        raise ParseError("SDD file has no nodes", path, header_line)
    if n_sdd != header_count:
        raise ParseError(
            f"header declares {header_count} SDD nodes but the file has {n_sdd}", path, header_line
        )
    return _finish(kind, lit, counts, children, root)


def sdd_node_arrays(node) -> LocalDag:
    """The local DAG of a PySDD ``SddNode`` (any node: decision, literal, true, false).

    libsdd saves the node to a temporary file (``SddManager.save``), which the text parser reads
    back: much faster than walking ``elements()`` from Python.
    """
    try:
        from pysdd.sdd import SddNode
    except ImportError as e:  # pragma: no cover - pysdd is a dependency
        raise CircuitError("loading an SddNode needs PySDD (pip install pysdd)") from e
    if not isinstance(node, SddNode):
        raise CircuitError(f"expected a PySDD SddNode, got {type(node).__name__}")
    if node.garbage_collected():
        raise CircuitError("the SddNode was garbage collected by its manager")
    fd, name = tempfile.mkstemp(prefix="trilay_", suffix=".sdd")
    os.close(fd)
    try:
        node.manager.save(os.fsencode(name), node)
        return _parse_sdd(name, None)
    finally:
        try:
            os.unlink(name)
        except OSError:  # pragma: no cover
            pass


# ---------------------------------------------------------------------------- d-DNNF
def read_nnf_file(path) -> tuple[LocalDag, int | None]:
    """Parse a d-DNNF file in c2d or d4 format (detected from the first non-comment line).

    c2d: ``nnf <nodes> <edges> <vars>`` header, then ``L <lit>``, ``A <c> <children>`` and
    ``O <var> <c> <children>`` lines numbered from 0; the root is the last node. Returns the
    header's variable count.

    d4: ``o|a|t|f <id> 0`` declare nodes; ``<parent> <child> <lits>* 0`` adds to ``parent`` the
    child ``child`` (no literals) or AND(child, lits...). Nodes may be referenced before they are
    declared; the nodes are sorted topologically (a cycle is a ParseError). The root is node 1
    (the first declared node if there is no node 1). Returns ``None`` as the variable count.
    """
    spath = _path_str(path)
    with open(os.fspath(path), "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):  # the first line that is not blank or a comment tells the format
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        toks = data[pos:end].split()
        pos = end + 1
        if not toks or toks[0][:1] == b"c":
            continue
        if toks[0] == b"nnf":
            fast = _parse_c2d_fast(data)
            return fast if fast is not None else _parse_c2d(_decode_lines(data), spath)
        dag = _parse_d4_fast(data)
        return (dag if dag is not None else _parse_d4(_decode_lines(data), spath)), None
    raise ParseError("empty NNF file (no nodes)", spath, None)


def _parse_c2d_fast(data: bytes) -> tuple[LocalDag, int] | None:
    """Vectorized c2d parser for well-formed files; ``None`` when anything is off."""
    tok = _numeric_lines(data, b"LAO", "nnf")
    if tok is None:
        return None
    letter, ntok, off, ints, header = tok
    if len(header) != 4 or not all(_is_int_token(h) for h in header[1:]):
        return None
    n_nodes, n_edges, n_vars = (int(h) for h in header[1:])
    m = letter.size
    if m != n_nodes or min(n_edges, n_vars) < 0 or n_vars >= _MAX_VAR:
        return None
    is_l = letter == ord("L")
    is_a = letter == ord("A")
    is_o = letter == ord("O")
    if (ntok[is_l] != 1).any() or (ntok[is_a] < 1).any() or (ntok[is_o] < 2).any():
        return None
    lits = ints[off[is_l]]
    if ((lits == 0) | (np.abs(lits) > n_vars)).any():
        return None
    dec = ints[off[is_o]]
    if ((dec < 0) | (dec > n_vars)).any():
        return None
    first_kid = off + np.where(is_o, 2, 1)
    c = np.zeros(m, dtype=np.int64)
    c[is_a] = ints[off[is_a]]
    c[is_o] = ints[off[is_o] + 1]
    if (c < 0).any() or (ntok[~is_l] != (first_kid - off + c)[~is_l]).any():
        return None
    if int(c.sum()) != n_edges:
        return None
    children = ints[ranges(first_kid, first_kid + c)]
    if children.size and ((children < 0) | (children >= np.repeat(np.arange(m), c))).any():
        return None
    kind = np.full(m, LITERAL, dtype=np.int64)
    kind[is_a] = np.where(c[is_a] > 0, AND, TRUE)
    kind[is_o] = np.where(c[is_o] > 0, OR, FALSE)
    lit = np.zeros(m, dtype=np.int64)
    lit[is_l] = lits
    child_start = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(c, out=child_start[1:])
    return (kind, lit, child_start, children, m - 1), n_vars


def _parse_c2d(lines: list[str], path: str) -> tuple[LocalDag, int]:
    kind: list[int] = []
    lit: list[int] = []
    counts: list[int] = []
    children: list[int] = []
    header_line = None
    n_nodes = n_edges = n_vars = 0
    for lineno, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            continue
        t = toks[0]
        if header_line is None:
            if t[0] == "c":
                continue
            if t != "nnf" or len(toks) != 4:
                raise ParseError(
                    f"the header is 'nnf <nodes> <edges> <vars>', got {line.strip()!r}",
                    path,
                    lineno,
                )
            n_nodes, n_edges, n_vars = _ints(toks[1:], path, lineno)
            if min(n_nodes, n_edges, n_vars) < 0:
                raise ParseError("negative count in the 'nnf' header", path, lineno)
            if n_vars >= _MAX_VAR:
                raise ParseError(f"variable count {n_vars} is too large", path, lineno)
            header_line = lineno
            continue
        idx = len(kind)
        if t in ("A", "O", "L") and idx >= n_nodes:
            raise ParseError(f"more nodes than the header's {n_nodes}", path, lineno)
        if t == "L":
            if len(toks) != 2:
                raise ParseError(
                    f"an L line is 'L <literal>', got {len(toks)} tokens", path, lineno
                )
            l = _ints(toks[1:], path, lineno)[0]
            if l == 0 or abs(l) > n_vars:
                raise ParseError(
                    f"literal {l} outside 1..{n_vars} (the header's variable count)", path, lineno
                )
            kind.append(LITERAL)
            lit.append(l)
            counts.append(0)
            continue
        if t == "A":
            nums = _ints(toks[1:], path, lineno)
            if not nums or len(nums) != 1 + nums[0] or nums[0] < 0:
                raise ParseError("an A line is 'A <c> <child>*c' with c children", path, lineno)
            kids = nums[1:]
            node_kind = AND if kids else TRUE
        elif t == "O":
            nums = _ints(toks[1:], path, lineno)
            if len(nums) < 2 or nums[1] < 0 or len(nums) != 2 + nums[1]:
                raise ParseError(
                    "an O line is 'O <var> <c> <child>*c' with c children", path, lineno
                )
            if not 0 <= nums[0] <= n_vars:
                raise ParseError(f"decision variable {nums[0]} outside 0..{n_vars}", path, lineno)
            kids = nums[2:]
            node_kind = OR if kids else FALSE
        elif t[0] == "c":
            continue
        else:
            raise ParseError(f"unknown c2d line type {t!r} (expected L, A, O or c)", path, lineno)
        for c in kids:
            if not 0 <= c < idx:
                raise ParseError(f"{_FORWARD} {c}", path, lineno)
        kind.append(node_kind)
        lit.append(0)
        counts.append(len(kids))
        children.extend(kids)
        n_edges_seen = len(children)
        if n_edges_seen > n_edges:
            raise ParseError(f"more edges than the header's {n_edges}", path, lineno)
    if not kind:
        raise ParseError("NNF file has no nodes", path, header_line)
    if len(kind) != n_nodes:
        raise ParseError(
            f"header declares {n_nodes} nodes but the file has {len(kind)}", path, header_line
        )
    if len(children) != n_edges:
        raise ParseError(
            f"header declares {n_edges} edges but the file has {len(children)}", path, header_line
        )
    return _finish(kind, lit, counts, children, len(kind) - 1), n_vars


_D4_KINDS = {"o": OR, "a": AND, "t": TRUE, "f": FALSE}


def _parse_d4_fast(data: bytes) -> LocalDag | None:
    """Vectorized d4 parser (Kahn's topological sort, one numpy step per level) for well-formed
    files; ``None`` when anything is off, including a cycle, or when the DAG is so deep that the
    line-by-line parser is quicker."""
    tok = _numeric_lines(data, b"oatf", None, numeric=True)
    if tok is None:
        return None
    letter, ntok, off, ints, _ = tok
    is_decl = letter != 0
    m = letter.size
    # every line ends with its only 0
    last = ints[off + ntok - 1] if m else ints[:0]
    if (ntok < 2).any() or (last != 0).any():
        return None
    zeros = np.bincount(np.repeat(np.arange(m), ntok)[ints == 0], minlength=m)
    if ((zeros != 1) & ~is_decl).any() or (ntok[is_decl] != 2).any() or (ntok[~is_decl] < 3).any():
        return None
    d_off = off[is_decl]
    n = d_off.size
    if n == 0:
        return None
    decl_kind = _D4_KIND[letter[is_decl]]
    e_off, e_ntok = off[~is_decl], ntok[~is_decl]
    n_edges = e_off.size
    ids = ints[d_off]
    ends = _index_of(ids, np.concatenate((ints[e_off], ints[e_off + 1])))
    if ends is None:
        return None
    parent, child = ends[:n_edges], ends[n_edges:]
    if ((decl_kind[parent] == TRUE) | (decl_kind[parent] == FALSE)).any():
        return None
    n_lits = e_ntok - 3
    lit_tok = ints[ranges(e_off + 2, e_off + 2 + n_lits)]
    if (np.abs(lit_tok) >= _MAX_VAR).any():
        return None

    # Kahn: a node is ready once all its children are
    outdeg = np.bincount(parent, minlength=n)
    by_child = np.argsort(child, kind="stable")
    in_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(child, minlength=n), out=in_start[1:])
    pending = outdeg.copy()
    frontier = np.flatnonzero(pending == 0)
    levels = []
    done = 0
    max_levels = max(1000, n // 50)
    while frontier.size:
        levels.append(frontier)
        done += frontier.size
        if len(levels) > max_levels:
            return None
        es = by_child[ranges(in_start[frontier], in_start[frontier + 1])]
        if es.size == 0:
            break
        ps, cnt = np.unique(parent[es], return_counts=True)
        pending[ps] -= cnt
        frontier = ps[pending[ps] == 0]
    if done != n:  # a cycle
        return None
    topo = np.concatenate(levels)

    ulits = np.unique(lit_tok)
    ulits = ulits[np.lexsort((ulits, np.abs(ulits)))]
    n_lit = ulits.size
    has_lit = n_lits > 0
    nle = np.bincount(parent[has_lit], minlength=n)  # edges with literals, per node
    local = np.empty(n, dtype=np.int64)
    local[topo] = n_lit + np.cumsum(1 + nle[topo]) - 1
    total = n_lit + n + int(has_lit.sum())
    kind = np.full(total, AND, dtype=np.int64)
    kind[:n_lit] = LITERAL
    kind[local] = decl_kind
    lit = np.zeros(total, dtype=np.int64)
    lit[:n_lit] = ulits
    # edges grouped by parent, file order within a parent
    by_parent = np.argsort(parent, kind="stable")
    out_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(outdeg, out=out_start[1:])
    ps = parent[by_parent]
    hl = has_lit[by_parent].astype(np.int64)
    excl = np.cumsum(hl) - hl
    rank = excl - excl[out_start[ps]]  # literal edges of the same parent before this one
    edge_and = np.full(n_edges, -1, dtype=np.int64)
    edge_and[by_parent] = np.where(hl > 0, local[ps] - nle[ps] + rank, -1)
    counts = np.zeros(total, dtype=np.int64)
    counts[local] = outdeg
    lit_edges = np.flatnonzero(has_lit)
    counts[edge_and[lit_edges]] = 1 + n_lits[lit_edges]
    child_start = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(counts, out=child_start[1:])
    children = np.empty(int(child_start[-1]), dtype=np.int64)
    kid = np.where(has_lit, edge_and, local[child])
    children[child_start[local[ps]] + np.arange(n_edges) - out_start[ps]] = kid[by_parent]
    children[child_start[edge_and[lit_edges]]] = local[child[lit_edges]]
    lit_edge_of_tok = np.repeat(np.arange(n_edges), n_lits)
    tok_rank = np.arange(lit_tok.size) - np.repeat(np.cumsum(n_lits) - n_lits, n_lits)
    children[child_start[edge_and[lit_edge_of_tok]] + 1 + tok_rank] = _lit_position(ulits, lit_tok)
    root = _index_of(ids, np.array([1], dtype=np.int64))
    root = 0 if root is None else int(root[0])
    return kind, lit, child_start, children, int(local[root])


def _lit_position(ulits: np.ndarray, lits: np.ndarray) -> np.ndarray:
    """Position in ``ulits`` (distinct, any order) of each of ``lits``."""
    order = np.argsort(ulits)
    return order[np.searchsorted(ulits[order], lits)]


_D4_KIND = np.zeros(256, dtype=np.int64)
_D4_KIND[[ord("o"), ord("a"), ord("t"), ord("f")]] = [OR, AND, TRUE, FALSE]


def _parse_d4(lines: list[str], path: str) -> LocalDag:
    index: dict[int, int] = {}  # d4 id -> declaration index
    decl_kind: list[int] = []
    decl_id: list[int] = []
    decl_line: list[int] = []
    e_parent: list[int] = []
    e_child: list[int] = []
    e_lits: list[list[int]] = []
    e_line: list[int] = []
    for lineno, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            continue
        t = toks[0]
        k = _D4_KINDS.get(t)
        if k is not None:
            if len(toks) != 3:
                if len(toks) == 2:
                    raise ParseError(f"missing trailing 0 on the '{t}' line", path, lineno)
                raise ParseError(
                    f"a node line is '{t} <id> 0', got {len(toks)} tokens", path, lineno
                )
            nid, zero = _ints(toks[1:], path, lineno)
            if zero != 0:
                raise ParseError(f"a node line is '{t} <id> 0': missing trailing 0", path, lineno)
            if nid in index:
                raise ParseError(
                    f"duplicate node id {nid} (first at line {decl_line[index[nid]]})", path, lineno
                )
            index[nid] = len(decl_kind)
            decl_kind.append(k)
            decl_id.append(nid)
            decl_line.append(lineno)
            continue
        if t[0] == "c":
            continue
        try:
            nums = [int(x) for x in toks]
        except ValueError:
            if not _is_int_token(t):
                raise ParseError(
                    f"unknown d4 line type {t!r} (expected o, a, t, f, c or an edge)", path, lineno
                ) from None
            nums = _ints(toks, path, lineno)
        if nums[-1] != 0:
            raise ParseError("missing trailing 0 on the edge line", path, lineno)
        if len(nums) < 3:
            raise ParseError("an edge line is '<parent> <child> <literal>* 0'", path, lineno)
        if 0 in nums[:-1]:
            raise ParseError("0 before the end of the edge line", path, lineno)
        big = [l for l in nums[2:-1] if abs(l) >= _MAX_VAR]
        if big:
            raise ParseError(f"literal {big[0]} is too large", path, lineno)
        e_parent.append(nums[0])
        e_child.append(nums[1])
        e_lits.append(nums[2:-1])
        e_line.append(lineno)
    if not decl_kind:
        raise ParseError("NNF file has no nodes", path, None)

    n = len(decl_kind)
    out: list[list[int]] = [[] for _ in range(n)]
    for e in range(len(e_parent)):
        for end in (e_parent[e], e_child[e]):
            if end not in index:
                raise ParseError(
                    f"edge mentions node {end}, which is never declared", path, e_line[e]
                )
        p = e_parent[e] = index[e_parent[e]]
        e_child[e] = index[e_child[e]]
        if decl_kind[p] in (TRUE, FALSE):
            raise ParseError(
                f"edge out of the constant node {decl_id[p]} (declared at line {decl_line[p]})",
                path,
                e_line[e],
            )
        out[p].append(e)

    # Literal nodes first: one per distinct literal on the edges.
    all_lits = sorted({l for ls in e_lits for l in ls}, key=lambda l: (abs(l), l))
    lit_node = {l: i for i, l in enumerate(all_lits)}
    kind: list[int] = [LITERAL] * len(all_lits)
    lit: list[int] = list(all_lits)
    counts: list[int] = [0] * len(all_lits)
    children: list[int] = []
    local = [-1] * n

    def emit(v: int) -> None:
        kids = []
        for e in out[v]:
            c = local[e_child[e]]
            if e_lits[e]:
                kids_e = [c] + [lit_node[l] for l in e_lits[e]]
                kind.append(AND)
                lit.append(0)
                counts.append(len(kids_e))
                children.extend(kids_e)
                c = len(kind) - 1
            kids.append(c)
        kind.append(decl_kind[v])
        lit.append(0)
        counts.append(len(kids))
        children.extend(kids)
        local[v] = len(kind) - 1

    root = index.get(1, 0)
    state = bytearray(n)  # 0 new, 1 on the DFS stack, 2 done
    for s in [root, *range(n)]:
        if state[s]:
            continue
        state[s] = 1
        stack = [[s, 0]]
        while stack:
            top = stack[-1]
            v, i = top
            adj = out[v]
            if i < len(adj):
                top[1] = i + 1
                c = e_child[adj[i]]
                st = state[c]
                if st == 0:
                    state[c] = 1
                    stack.append([c, 0])
                elif st == 1:
                    raise ParseError(
                        f"cycle through node {decl_id[c]} (edge {decl_id[v]} -> {decl_id[c]})",
                        path,
                        e_line[adj[i]],
                    )
            else:
                stack.pop()
                state[v] = 2
                emit(v)
    return _finish(kind, lit, counts, children, local[root])


# ---------------------------------------------------------------------------- CNF
def read_dimacs(path) -> tuple[list[list[int]], int]:
    """Parse a DIMACS CNF file: ``p cnf <vars> <clauses>``, ``c`` comments, clauses ended by 0
    (possibly spanning lines), an optional ``%`` end marker. Returns ``(clauses, num_vars)``.

    A last clause without its terminating 0 is accepted.
    """
    spath = _path_str(path)
    lines = _read_lines(path)
    header_line = None
    n_vars = n_clauses = 0
    clauses: list[list[int]] = []
    cur: list[int] = []
    for lineno, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            continue
        t = toks[0]
        if t[0] == "c":
            continue
        if t[0] == "%":
            break
        if t == "p":
            if header_line is not None:
                raise ParseError(f"second 'p' header (first at line {header_line})", spath, lineno)
            if len(toks) != 4 or toks[1] != "cnf":
                raise ParseError(
                    f"the header is 'p cnf <vars> <clauses>', got {line.strip()!r}", spath, lineno
                )
            n_vars, n_clauses = _ints(toks[2:], spath, lineno)
            if n_vars < 0 or n_clauses < 0:
                raise ParseError("negative count in the 'p cnf' header", spath, lineno)
            header_line = lineno
            continue
        if header_line is None:
            raise ParseError("clause before the 'p cnf <vars> <clauses>' header", spath, lineno)
        try:
            nums = [int(x) for x in toks]
        except ValueError:
            nums = _ints(toks, spath, lineno)
        for v in nums:
            if v == 0:
                clauses.append(cur)
                cur = []
            elif -n_vars <= v <= n_vars:
                cur.append(v)
            else:
                raise ParseError(
                    f"literal {v} beyond the header's {n_vars} variables", spath, lineno
                )
    if header_line is None:
        raise ParseError("missing 'p cnf <vars> <clauses>' header", spath, None)
    if cur:
        clauses.append(cur)
    if len(clauses) != n_clauses:
        raise ParseError(
            f"header declares {n_clauses} clauses but the file has {len(clauses)}",
            spath,
            header_line,
        )
    return clauses, n_vars


def compile_cnf_with_pysdd(
    clauses: Sequence[Sequence[int]], num_vars: int, vtree: str = "balanced"
):
    """Compile a CNF to an SDD with PySDD, conjoining the clauses one by one.

    The manager has automatic garbage collection and minimization off; it stays alive as long as
    the returned ``SddNode`` does (a PySDD node holds a reference to its manager).
    """
    from pysdd.sdd import SddManager, Vtree

    if isinstance(vtree, bytes):
        vtree = vtree.decode()
    if vtree not in VTREE_TYPES:
        raise CircuitError(
            f"unknown vtree type {vtree!r}; expected one of {', '.join(VTREE_TYPES)}"
        )
    if isinstance(num_vars, bool) or not isinstance(num_vars, (int, np.integer)) or num_vars < 0:
        raise CircuitError(f"num_vars must be a non-negative integer, got {num_vars!r}")
    num_vars = int(num_vars)
    checked: list[list[int]] = []
    for clause in clauses:
        row = []
        for l in clause:
            if (
                isinstance(l, bool)
                or not isinstance(l, (int, np.integer))
                or l == 0
                or abs(l) > num_vars
            ):
                raise CircuitError(
                    f"CNF literal {l!r} is not a non-zero integer within +-{num_vars}"
                )
            row.append(int(l))
        checked.append(row)
    n = max(num_vars, 1)  # libsdd needs at least one variable
    mgr = SddManager.from_vtree(Vtree(n, list(range(1, n + 1)), vtree))
    mgr.auto_gc_and_minimize_off()
    lits = {}
    root = mgr.true()
    for row in checked:
        c = mgr.false()
        for l in row:
            node = lits.get(l)
            if node is None:
                node = lits[l] = mgr.literal(l)
            c = c | node
        root = root & c
    return root
