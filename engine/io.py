"""Readers for circuit and formula files, and the PySDD bridge.

Every circuit loader returns a *local DAG* ``(kind, lit, child_start, children, root)``: int64
numpy arrays over local node ids ``0..n-1`` (node ``i``'s children are
``children[child_start[i]:child_start[i + 1]]``, every child id below its parent's, ``lit[i]``
the signed literal of a LITERAL node and 0 otherwise) and the local id of the output node.
:meth:`~trilay.engine.circuit.Circuit._append_arrays` shifts the ids and appends them.

Formats:

* SDD text files written by libsdd / PySDD (``sdd <count>``, ``F <id>``, ``T <id>``,
  ``L <id> <vtree> <literal>``, ``D <id> <vtree> <k> {<prime> <sub>}*k``; a node line refers
  only to ids defined on earlier lines; the root is the last node line), with the optional
  vtree file (``vtree <count>``, ``L <id> <var>``, ``I <id> <left> <right>``; children defined
  on earlier lines, each node the child of at most one ``I`` node, one tree whose root is the
  last line): :func:`read_sdd_file`, :func:`read_vtree_file`.
* d-DNNF in c2d format (``nnf <nodes> <edges> <vars>`` header first, then ``L <literal>``,
  ``A <c> <child>*c``, ``O <var> <c> <child>*c`` lines numbered from 0, children numbered below
  their parent) or d4 format (``o|a|t|f <id> 0`` declarations, positive ids, and
  ``<parent> <child> <literal>* 0`` edges, in any order): :func:`read_nnf_file`.
* DIMACS CNF (``p cnf <vars> <clauses>`` header, then clauses ended by ``0``, possibly spanning
  lines, the last one possibly without its ``0``; a line starting with ``%`` ends the file):
  :func:`read_dimacs`, compiled by :func:`compile_cnf_with_pysdd`.

Lexical rules, shared by every format: lines end at ``\\n``; tokens are separated by ASCII blanks
(space, tab, CR, VT, FF); blank lines are skipped, and so is every line whose first token begins
with ``c`` (a comment). Integers are ASCII digits (leading zeros allowed), with a leading ``-``
only where the format has negative numbers (literals), of magnitude below ``2^62``
(:data:`MAX_INT`). Variables are ``1..MAX_VARS`` (:data:`trilay.engine.circuit.MAX_VARS`,
``2^24``), and so is a header's variable count at most. Header counts of nodes, edges and
clauses are checked against the lines that follow; nothing is allocated from them.

Each format has one grammar and one reader: a vectorized pass over the whole file (numpy, no
per-line Python work) that either accepts the file or raises
:class:`~trilay.engine.errors.ParseError` naming the file and the 1-based line of the first
error in file order (``err.path``, ``err.line``): the first line that breaks a rule of its own
(a token, an arity, a range) or refers to what the lines before it do not define (an undefined
or duplicate id, a reused vtree child). Rules only the whole file can check come after: header
counts (named at the header), d4's undeclared nodes, constant parents and cycles (named at the
first edge at fault in file order), a vtree forest. ``err.line`` is ``None`` only for a file
with no content at all. A missing file raises :class:`~trilay.engine.errors.MissingFileError`.
SDD files, the big ones (hundreds of MB from PySDD), first take a compiled byte scan
(:mod:`trilay.engine._sdd`) that reads a well-formed file in the common form (dense ids, short
integers) without the grammar's per-token arrays; any other file goes to the grammar, which
accepts the same files and reads the same DAG (the fuzz tests check both paths).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from ._sdd import BLANK, MAX_NODES, scan_sdd, sdd_local_dag
from ._segments import ranges
from .circuit import AND, FALSE, LITERAL, MAX_VARS, OR, TRUE
from .errors import CircuitError, MissingFileError, ParseError

__all__ = [
    "MAX_INT",
    "read_sdd_file",
    "read_vtree_file",
    "sdd_node_arrays",
    "read_nnf_file",
    "read_dimacs",
    "compile_cnf_with_pysdd",
]

LocalDag = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]

#: Every integer in a file has a magnitude below this (ids, counts and literals alike).
MAX_INT = 2**62

#: Vtree types libsdd knows; any other string makes libsdd exit the process, so we check first.
VTREE_TYPES = ("right", "left", "vertical", "balanced", "random")

_FORWARD = "undefined or forward reference (cycle?) to node"
_LIMIT = f"trilay's limit of {MAX_VARS:,} variables"

#: Byte classes: token bytes (not ASCII blanks) and, among them, the ones that are no digit.
_SOLID = ~BLANK
_NONDIGIT = _SOLID.copy()
_NONDIGIT[list(b"0123456789")] = False
#: Tokens with up to this many digits are read by numpy; longer ones (rare) one by one.
_SHORT_DIGITS = 18


# ---------------------------------------------------------------------------- reading files
def _path_str(path) -> str:
    p = os.fspath(path)
    return os.fsdecode(p) if isinstance(p, bytes) else p


def _read(path) -> tuple[str, bytes]:
    """``(path as str, the file's bytes)``. A path that names no readable file (missing, a
    directory, under a file, too long, with a NUL character) raises MissingFileError; other
    OS errors (permissions, I/O) propagate as they are."""
    spath = _path_str(path)
    try:
        with open(os.fspath(path), "rb") as f:
            return spath, f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise MissingFileError(spath, e.strerror.lower()) from None
    except ValueError as e:  # an embedded NUL character
        raise MissingFileError(spath, f"not a path: {e}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise MissingFileError(spath, e.strerror.lower()) from None
        raise


class _Lines:
    """A file's content lines and their tokens, with every integer read, in one vectorized pass.

    Content lines (neither blank nor comments) are numbered ``0..size-1``: ``lineno[i]`` is the
    1-based file line of content line ``i``, ``first[i]`` the index of its first token and
    ``ntok[i]`` its token count. Per token: ``line`` (its content line, -1 in a comment),
    ``pos`` (its position in the line), ``value`` (int64, 0 unless ``is_int``), ``is_int``
    (integer syntax and magnitude below :data:`MAX_INT`), ``syntax`` (``-?[0-9]+``, of any
    magnitude) and ``negative`` (a leading ``-``).
    """

    def __init__(self, data: bytes, path: str):
        self.path = path
        self._data = data
        arr = np.frombuffer(data, dtype=np.uint8)
        self._arr = arr
        solid = _SOLID[arr]
        step = np.diff(solid.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(step == 1)
        ends = np.flatnonzero(step == -1)
        self._starts, self._ends = starts, ends
        num_tok = starts.size
        # 0-based line of each token: the newlines before it, counted gap by gap
        gap = np.searchsorted(starts, np.flatnonzero(arr == ord("\n")))
        line = np.cumsum(np.bincount(gap, minlength=num_tok + 1)[:num_tok])
        new_line = np.ones(num_tok, dtype=bool)
        new_line[1:] = line[1:] != line[:-1]
        line_first = np.flatnonzero(new_line)
        line_ntok = np.diff(line_first, append=num_tok)
        content = arr[starts[line_first]] != ord("c")
        self.first = line_first[content]
        self.ntok = line_ntok[content]
        self.lineno = line[self.first] + 1
        self.size = int(self.first.size)
        in_content = np.repeat(content, line_ntok)
        self.line = np.full(num_tok, -1, dtype=np.int64)
        self.line[in_content] = np.repeat(np.arange(self.size), self.ntok)
        self.pos = np.arange(num_tok) - np.repeat(line_first, line_ntok)

        # integers: -?[0-9]+, checked byte by byte, read by numpy from a copy of the file in
        # which every other token is blanked out (numpy's blanks are the grammar's)
        negative = arr[starts] == ord("-")
        nondigit = _NONDIGIT[arr]
        nondigit[starts[negative]] = False
        has_nondigit = np.logical_or.reduceat(nondigit, starts) if num_tok else nondigit[:0]
        digits = ends - starts - negative
        syntax = ~has_nondigit & (digits > 0) & in_content
        short = syntax & (digits <= _SHORT_DIGITS)
        value = np.zeros(num_tok, dtype=np.int64)
        if short.any():
            text = arr.copy()
            text[ranges(starts[~short], ends[~short])] = ord(" ")
            parsed = np.fromstring(text.tobytes(), dtype=np.int64, sep=" ")
            assert parsed.size == int(short.sum()), "integer tokens and numbers read differ"
            value[short] = parsed
        is_int = short.copy()
        for t in np.flatnonzero(syntax & ~short).tolist():
            number = int(data[starts[t] : ends[t]])  # validated ASCII: int() reads it exactly
            if abs(number) < MAX_INT:
                value[t], is_int[t] = number, True
        self.value, self.is_int, self.syntax, self.negative = value, is_int, syntax, negative

    # ------------------------------------------------------------------ per content line
    def is_word(self, word: bytes) -> np.ndarray:
        """Mask over content lines: the first token is exactly ``word``."""
        start = self._starts[self.first]
        mask = self._ends[self.first] - start == len(word)
        for j, byte in enumerate(word):
            mask &= self._arr[np.minimum(start + j, self._arr.size - 1)] == byte
        return mask

    def first_byte_is(self, byte: bytes) -> np.ndarray:
        """Mask over content lines: the first token begins with ``byte``."""
        return self._arr[self._starts[self.first]] == ord(byte)

    def field(self, j: int) -> np.ndarray:
        """The integer value of each content line's token ``j`` (0 where there is none)."""
        if self.value.size == 0:
            return np.zeros(self.size, dtype=np.int64)
        has = self.ntok > j
        return np.where(has, self.value[np.minimum(self.first + j, self.value.size - 1)], 0)

    def on_lines(self, mask: np.ndarray) -> np.ndarray:
        """Mask over tokens: the token is on a content line where ``mask`` holds."""
        return np.append(mask, False)[self.line]

    def word(self, i: int) -> str:
        return self.token(int(self.first[i]))

    def token(self, t: int) -> str:
        return self._data[self._starts[t] : self._ends[t]].decode("utf-8", "replace")

    def text(self, i: int) -> str:
        last = int(self.first[i] + self.ntok[i] - 1)
        return self._data[self._starts[self.first[i]] : self._ends[last]].decode("utf-8", "replace")

    # ------------------------------------------------------------------ rules
    def integer_rule(self, tokens: np.ndarray, signed: np.ndarray) -> tuple[np.ndarray, Callable]:
        """The rule "each of ``tokens`` (a mask over tokens) is an integer, negative only where
        ``signed`` allows": ``(mask over content lines breaking it, message of a line)``."""
        bad = np.flatnonzero(tokens & (~self.is_int | (self.negative & ~signed)))
        lines = np.zeros(self.size, dtype=bool)
        lines[self.line[bad]] = True

        def message(i: int) -> str:
            t = int(bad[np.searchsorted(self.line[bad], i)])
            text = self.token(t)
            if not self.syntax[t]:
                return f"expected an integer, got {text!r}"
            if not self.is_int[t]:
                return f"integer {text} is out of range (magnitudes are below 2^62)"
            return f"expected a non-negative integer, got {text!r}"

        return lines, message

    def raise_first(self, *stages: Callable[[int], list]) -> None:
        """Raise the first error in file order over the ``stages`` (each a function of the
        number of leading content lines it may read, returning ``(mask, message)`` rules in the
        order a line checks them): the first stage's earliest error, unless a later stage finds
        one earlier in the lines before it (their rules need those lines well formed)."""
        found = None
        limit = self.size
        for stage in stages:
            hit = _first_hit(stage(limit))
            if hit is not None and (found is None or hit[0] < found[0]):
                found = hit
                limit = hit[0]
        if found is not None:
            i, message = found
            text = message(i) if callable(message) else message
            raise ParseError(text, self.path, int(self.lineno[i]))

    def fail(self, i: int, message: str):
        raise ParseError(message, self.path, int(self.lineno[i]))

    def check_count(self, header: int, nodes: int, what: str) -> None:
        """The rules at the end of a file with a ``<word> <count>`` header on content line
        ``header``: the file has content, it has nodes, and ``count`` of them."""
        if self.size == 0:
            word = what.lower()
            raise ParseError(f"empty {what} file (no '{word} <count>' header)", self.path, None)
        if nodes == 0:
            self.fail(header, f"{what} file has no nodes")
        count = int(self.field(1)[header])
        if count != nodes:
            self.fail(header, f"header declares {count} {what} nodes but the file has {nodes}")


def _first_hit(rules: list) -> tuple[int, object] | None:
    """The earliest line any rule flags; on one line, the first rule in order."""
    found = None
    for mask, message in rules:
        hit = np.flatnonzero(mask)
        if hit.size and (found is None or hit[0] < found[0]):
            found = (int(hit[0]), message)
    return found


def _first_index(mask: np.ndarray) -> int:
    hit = np.flatnonzero(mask)
    return int(hit[0]) if hit.size else mask.size


def _definitions(ids: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """For ids defined in order: ``(duplicate, resolve)``: ``duplicate[j]`` is true where
    ``ids[j]`` was defined before, and ``resolve(refs)`` gives the position of each ref's first
    definition (-1 where it has none). Dense ids (as the tools write them) go through a lookup
    table, others through a sort."""
    positions = np.arange(ids.size, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(0, dtype=bool), lambda refs: np.full(refs.size, -1, dtype=np.int64)
    low, high = int(ids.min()), int(ids.max())
    if high - low < 4 * ids.size + 1024:
        table = np.full(high - low + 1, ids.size, dtype=np.int64)
        np.minimum.at(table, ids - low, positions)
        duplicate = table[ids - low] != positions

        def resolve(refs: np.ndarray) -> np.ndarray:
            inside = (refs >= low) & (refs <= high)
            found = np.where(inside, table[np.where(inside, refs - low, 0)], ids.size)
            return np.where(found < ids.size, found, -1)

        return duplicate, resolve
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    again = np.zeros(ids.size, dtype=bool)
    again[1:] = sorted_ids[1:] == sorted_ids[:-1]
    duplicate = np.zeros(ids.size, dtype=bool)
    duplicate[order[again]] = True
    unique_ids, unique_pos = sorted_ids[~again], order[~again]

    def resolve(refs: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(unique_ids, refs), unique_ids.size - 1)
        return np.where(unique_ids[at] == refs, unique_pos[at], -1)

    return duplicate, resolve


def _line_mask(size: int, lines: np.ndarray) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[lines] = True
    return mask


def _per_line_message(lines: np.ndarray, describe: Callable[[int], str]) -> Callable:
    """A message for content line ``i``: ``describe(j)`` of the first ``j`` with
    ``lines[j] == i`` (``lines`` ascending)."""
    return lambda i: describe(int(np.searchsorted(lines, i)))


# ---------------------------------------------------------------------------- vtree
def read_vtree_file(vtree_path) -> set[int]:
    """Parse a libsdd vtree file; returns the set of variables at its leaves."""
    return set(_parse_vtree(*_read(vtree_path)).tolist())


def _parse_vtree(path: str, data: bytes) -> np.ndarray:
    """The variables at the vtree's leaves, sorted."""
    t = _Lines(data, path)
    m = t.size
    idx = np.arange(m)
    header = t.is_word(b"vtree")
    is_l, is_i = t.is_word(b"L"), t.is_word(b"I")
    node = is_l | is_i
    h = _first_index(header)
    arity = np.where(is_l, 3, 4)
    var = t.field(2)
    ints, int_message = t.integer_rule(
        t.on_lines(header | node) & (t.pos > 0), np.zeros(t.value.size, dtype=bool)
    )

    def local(limit: int) -> list:
        return [
            (
                ~(header | node),
                lambda i: f"unknown vtree line type {t.word(i)!r} (expected vtree, L, I or c)",
            ),
            (header & (idx > h), lambda i: f"second 'vtree' header (first at line {t.lineno[h]})"),
            (
                header & (t.ntok != 2),
                lambda i: f"the header is 'vtree <count>', got {t.text(i)!r}",
            ),
            (node & (idx < h), "vtree node line before the 'vtree <count>' header"),
            (
                node & (t.ntok != arity),
                lambda i: (
                    f"a vtree {t.word(i)} line is "
                    f"'{'L <id> <var>' if is_l[i] else 'I <id> <left> <right>'}', "
                    f"got {t.ntok[i]} tokens"
                ),
            ),
            (ints, int_message),
            (
                is_l & (var > MAX_VARS),
                lambda i: f"vtree variable {var[i]} is beyond {_LIMIT}",
            ),
            (is_l & (var == 0), "vtree variable 0 is not positive (variables are 1-based)"),
        ]

    def across(limit: int) -> list:
        lines = np.flatnonzero(node[:limit])
        duplicate, resolve = _definitions(t.field(1)[lines])
        inner = np.flatnonzero(is_i[lines])
        # children in reading order (left before right) and the node each one resolves to
        kids = np.stack([t.field(2)[lines[inner]], t.field(3)[lines[inner]]], 1).ravel()
        owner = np.repeat(inner, 2)
        target = resolve(kids)
        undefined = (target < 0) | (target >= owner)
        defined = np.flatnonzero(~undefined)
        again, first_use = _definitions(target[defined])
        reused = defined[again]
        first_owner = owner[defined[first_use(target[reused])]]
        leaves = np.flatnonzero(is_l[lines])
        leaf_again, _ = _definitions(var[lines[leaves]])
        bad_ref, bad_use = lines[owner[undefined]], lines[owner[reused]]
        return [
            (
                _line_mask(m, lines[duplicate]),
                lambda i: f"duplicate vtree node id {t.field(1)[i]}",
            ),
            (
                _line_mask(m, bad_ref),
                _per_line_message(
                    bad_ref,
                    lambda j: f"{_FORWARD.replace('node', 'vtree node')} {kids[undefined][j]}",
                ),
            ),
            (
                _line_mask(m, bad_use),
                _per_line_message(
                    bad_use,
                    lambda j: (
                        f"vtree node {kids[reused[j]]} is already a child of the I node at line "
                        f"{t.lineno[lines[first_owner[j]]]} (a vtree is a tree)"
                    ),
                ),
            ),
            (
                _line_mask(m, lines[leaves[leaf_again]]),
                lambda i: f"vtree variable {var[i]} appears at two leaves",
            ),
        ]

    t.raise_first(local, across)
    lines = np.flatnonzero(node)
    t.check_count(h, lines.size, "vtree")
    # a tree: every node but the root (the last line) is some I node's child
    ids = t.field(1)[lines]
    kids = np.concatenate((t.field(2)[lines[is_i[lines]]], t.field(3)[lines[is_i[lines]]]))
    orphan = ~np.isin(ids, kids)
    orphan[-1] = False
    if orphan.any():
        j = int(np.flatnonzero(orphan)[0])
        t.fail(
            lines[j],
            f"vtree node {ids[j]} is no I node's child and not the root (the last node, line "
            f"{t.lineno[lines[-1]]}): a vtree is one tree, not a forest",
        )
    return np.sort(var[lines[is_l[lines]]])


# ---------------------------------------------------------------------------- SDD
def read_sdd_file(sdd_path, vtree_path=None) -> tuple[LocalDag, int | None]:
    """Parse a libsdd / PySDD SDD text file (and optionally its vtree file).

    ``F``/``T``/``L`` lines become FALSE/TRUE/LITERAL nodes, the literals first, ordered by
    their vtree nodes (the vtree's variable order, which smoothing uses); a ``D`` line with
    ``k`` elements becomes an OR over ``k`` AND(prime, sub) nodes, one AND per distinct pair in
    the file. The root is the node of the last node line.

    Returns ``(arrays, num_vars)``: the local DAG, and the largest variable of the vtree
    (``None`` without a vtree). With a vtree, every SDD literal's variable must be one of its
    leaves.
    """
    allowed = None
    num_vars = None
    if vtree_path is not None:
        allowed = _parse_vtree(*_read(vtree_path))
        num_vars = int(allowed[-1])
    return _parse_sdd(*_read(sdd_path), allowed), num_vars


def _parse_sdd(path: str, data: bytes, allowed: np.ndarray | None = None) -> LocalDag:
    """The local DAG of an SDD file; ``allowed``: the vtree's variables (sorted), if any.

    A well-formed file in the common form takes the compiled scan (:func:`_scan_sdd`: a byte
    loop, without the per-token arrays that cost a 174 MB file 2.8 GB and most of the time);
    any other goes through the vectorized grammar (:func:`_parse_sdd_lines`), which accepts the
    same files with the same DAG and names the first error of the others."""
    scanned = _scan_sdd(data, allowed)
    if scanned is not None:
        return _sdd_local_dag(path, *scanned)
    return _parse_sdd_lines(path, data, allowed)


def _scan_sdd(data: bytes, allowed: np.ndarray | None = None) -> tuple | None:
    """:func:`~trilay.engine._sdd.scan_sdd`'s node lines ``(line_kind, line_lit, line_vtree,
    line_k, refs)``, or ``None`` where it leaves the file to the grammar."""
    arr = np.frombuffer(data, dtype=np.uint8)
    in_vtree = np.zeros(0, dtype=np.bool_)  # empty: no vtree
    if allowed is not None:
        in_vtree = np.zeros(int(allowed.max(initial=0)) + 1, dtype=np.bool_)
        in_vtree[allowed] = True
    num_lines = int(np.count_nonzero(arr == ord("\n"))) + 1
    ok, *scanned = scan_sdd(arr, num_lines, in_vtree, MAX_VARS)
    return tuple(scanned) if ok else None


def _parse_sdd_lines(path: str, data: bytes, allowed: np.ndarray | None = None) -> LocalDag:
    t = _Lines(data, path)
    m = t.size
    idx = np.arange(m)
    header = t.is_word(b"sdd")
    is_f, is_t, is_l, is_d = (t.is_word(w) for w in (b"F", b"T", b"L", b"D"))
    node = is_f | is_t | is_l | is_d
    h = _first_index(header)
    lit = np.where(is_l, t.field(3), 0)
    k = np.where(is_d, t.field(3), 0)
    ints, int_message = t.integer_rule(
        t.on_lines(header | node) & (t.pos > 0), t.on_lines(is_l) & (t.pos == 3)
    )
    outside = np.zeros(m, dtype=bool)
    if allowed is not None:
        outside = is_l & ~np.isin(np.abs(lit), allowed)

    def local(limit: int) -> list:
        return [
            (
                ~(header | node),
                lambda i: f"unknown SDD line type {t.word(i)!r} (expected sdd, F, T, L, D or c)",
            ),
            (header & (idx > h), lambda i: f"second 'sdd' header (first at line {t.lineno[h]})"),
            (header & (t.ntok != 2), lambda i: f"the header is 'sdd <count>', got {t.text(i)!r}"),
            (node & (idx < h), "SDD node line before the 'sdd <count>' header"),
            (
                (is_f | is_t) & (t.ntok != 2),
                lambda i: f"a {t.word(i)} line is '{t.word(i)} <id>', got {t.ntok[i]} tokens",
            ),
            (
                is_l & (t.ntok != 4),
                lambda i: f"an L line is 'L <id> <vtree> <literal>', got {t.ntok[i]} tokens",
            ),
            (
                is_d & (t.ntok < 4),
                lambda i: (
                    f"a D line is 'D <id> <vtree> <k> {{<prime> <sub>}}*', got {t.ntok[i]} tokens"
                ),
            ),
            (ints, int_message),
            (
                is_d & (t.ntok - 4 != 2 * k),
                lambda i: (
                    f"a D line with {k[i]} elements has {4 + 2 * int(k[i])} tokens, got {t.ntok[i]}"
                ),
            ),
            (
                is_l & ((lit == 0) | (np.abs(lit) > MAX_VARS)),
                lambda i: f"literal {lit[i]} (literals are +v or -v for 1 <= v <= {MAX_VARS:,})",
            ),
            (outside, lambda i: f"literal {lit[i]}: variable {abs(lit[i])} is not in the vtree"),
        ]

    def across(limit: int) -> list:
        lines = np.flatnonzero(node[:limit])
        duplicate, resolve = _definitions(t.field(1)[lines])
        dl = np.flatnonzero(is_d[lines])
        first_ref = t.first[lines[dl]] + 4
        refs = t.value[ranges(first_ref, first_ref + 2 * k[lines[dl]])]
        owner = np.repeat(dl, 2 * k[lines[dl]])
        target = resolve(refs)
        bad = (target < 0) | (target >= owner)
        bad_lines = lines[owner[bad]]
        return [
            (
                _line_mask(m, bad_lines),
                _per_line_message(bad_lines, lambda j: f"{_FORWARD} {refs[bad][j]}"),
            ),
            (_line_mask(m, lines[duplicate]), lambda i: f"duplicate SDD node id {t.field(1)[i]}"),
        ]

    t.raise_first(local, across)
    lines = np.flatnonzero(node)
    t.check_count(h, lines.size, "SDD")
    return _sdd_dag(t, lines, is_l[lines], is_d[lines], is_t[lines], lit[lines], k[lines])


def _sdd_dag(
    t: _Lines,
    lines: np.ndarray,
    is_l: np.ndarray,
    is_d: np.ndarray,
    is_t: np.ndarray,
    lit: np.ndarray,
    k: np.ndarray,
) -> LocalDag:
    """The local DAG of a checked SDD file's node lines."""
    _, resolve = _definitions(t.field(1)[lines])
    first_ref = t.first[lines[is_d]] + 4
    refs = resolve(t.value[ranges(first_ref, first_ref + 2 * k[is_d])])
    line_kind = np.where(is_d, OR, np.where(is_l, LITERAL, np.where(is_t, TRUE, FALSE)))
    vtree = np.where(is_l, t.field(2)[lines], 0)
    return _sdd_local_dag(t.path, line_kind, lit, vtree, k, refs)


def _sdd_local_dag(path, line_kind, line_lit, line_vtree, line_k, refs) -> LocalDag:
    """:func:`~trilay.engine._sdd.sdd_local_dag` (a D line gives an OR over its elements, each
    distinct element one AND node), within its node id limit."""
    if line_kind.size + refs.size // 2 > MAX_NODES:
        raise CircuitError(
            f"{path}: {line_kind.size:,} SDD nodes with {refs.size // 2:,} elements; the "
            f"reader's node ids allow at most {MAX_NODES:,} nodes"
        )
    return sdd_local_dag(line_kind, line_lit, line_vtree, line_k, refs)


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
        return _parse_sdd(*_read(name))
    finally:
        try:
            os.unlink(name)
        except OSError:  # pragma: no cover
            pass


# ---------------------------------------------------------------------------- d-DNNF
def read_nnf_file(path) -> tuple[LocalDag, int | None]:
    """Parse a d-DNNF file in c2d or d4 format: c2d when the first content line is an ``nnf``
    header, d4 otherwise.

    c2d: ``nnf <nodes> <edges> <vars>`` header, then ``L <lit>``, ``A <c> <children>`` and
    ``O <var> <c> <children>`` lines numbered from 0; the root is the last node. Returns the
    header's variable count.

    d4: ``o|a|t|f <id> 0`` declare nodes; ``<parent> <child> <lits>* 0`` adds to ``parent`` the
    child ``child`` (no literals) or AND(child, lits...). Nodes may be referenced before they are
    declared; the nodes are sorted topologically (a cycle is a ParseError). The root is node 1
    (the first declared node if there is no node 1). Returns ``None`` as the variable count.
    """
    return _parse_nnf(*_read(path))


def _parse_nnf(path: str, data: bytes) -> tuple[LocalDag, int | None]:
    t = _Lines(data, path)
    if t.size == 0:
        raise ParseError("empty NNF file (no nodes)", path, None)
    if t.is_word(b"nnf")[0]:
        return _parse_c2d(t)
    return _parse_d4(t), None


def _parse_c2d(t: _Lines) -> tuple[LocalDag, int]:
    m = t.size
    idx = np.arange(m)
    header = t.is_word(b"nnf")
    is_l, is_a, is_o = t.is_word(b"L"), t.is_word(b"A"), t.is_word(b"O")
    node = is_l | is_a | is_o
    n_nodes, n_edges, n_vars = (int(t.field(j)[0]) for j in (1, 2, 3))
    ordinal = np.cumsum(node) - 1
    lit = np.where(is_l, t.field(1), 0)
    base = np.where(is_o, 3, 2)  # token of the first child
    c = np.where(is_a, t.field(1), np.where(is_o, t.field(2), 0))
    shaped = (is_a | is_o) & (t.ntok - base == c)
    ints, int_message = t.integer_rule(
        t.on_lines(header | node) & (t.pos > 0), t.on_lines(is_l) & (t.pos == 1)
    )
    kid_tok = ranges(t.first[shaped] + base[shaped], t.first[shaped] + t.ntok[shaped])
    kid_line = np.repeat(np.flatnonzero(shaped), c[shaped])
    forward = kid_line[t.value[kid_tok] >= ordinal[kid_line]]
    edges_so_far = np.cumsum(np.where(shaped, c, 0))
    rules = [
        (
            (idx == 0) & (t.ntok != 4),
            lambda i: f"the header is 'nnf <nodes> <edges> <vars>', got {t.text(i)!r}",
        ),
        (header & (idx > 0), f"second 'nnf' header (first at line {t.lineno[0]})"),
        (
            ~(header | node),
            lambda i: f"unknown c2d line type {t.word(i)!r} (expected L, A, O or c)",
        ),
        (node & (ordinal >= n_nodes), f"more nodes than the header's {n_nodes}"),
        (is_l & (t.ntok != 2), lambda i: f"an L line is 'L <literal>', got {t.ntok[i]} tokens"),
        (is_a & (t.ntok < 2), "an A line is 'A <c> <child>*c' with c children"),
        (is_o & (t.ntok < 3), "an O line is 'O <var> <c> <child>*c' with c children"),
        (ints, int_message),
        (
            (idx == 0) & (n_vars > MAX_VARS),
            f"the header's variable count {n_vars} is beyond {_LIMIT}",
        ),
        (
            is_l & ((lit == 0) | (np.abs(lit) > n_vars)),
            lambda i: f"literal {lit[i]} outside 1..{n_vars} (the header's variable count)",
        ),
        (is_a & ~shaped, "an A line is 'A <c> <child>*c' with c children"),
        (is_o & ~shaped, "an O line is 'O <var> <c> <child>*c' with c children"),
        (
            is_o & (t.field(1) > n_vars),
            lambda i: f"decision variable {t.field(1)[i]} outside 0..{n_vars}",
        ),
        (
            _line_mask(m, forward),
            lambda i: (
                f"{_FORWARD} "
                f"{t.value[kid_tok][(kid_line == i) & (t.value[kid_tok] >= ordinal[i])][0]}"
            ),
        ),
        (node & (edges_so_far > n_edges), f"more edges than the header's {n_edges}"),
    ]
    t.raise_first(lambda limit: rules)
    lines = np.flatnonzero(node)
    if lines.size == 0:
        t.fail(0, "NNF file has no nodes")
    if lines.size != n_nodes:
        t.fail(0, f"header declares {n_nodes} nodes but the file has {lines.size}")
    if int(edges_so_far[-1]) != n_edges:
        t.fail(0, f"header declares {n_edges} edges but the file has {int(edges_so_far[-1])}")
    c = c[lines]
    kind = np.full(lines.size, LITERAL, dtype=np.int64)
    kind[is_a[lines]] = np.where(c[is_a[lines]] > 0, AND, TRUE)
    kind[is_o[lines]] = np.where(c[is_o[lines]] > 0, OR, FALSE)
    child_start = np.zeros(lines.size + 1, dtype=np.int64)
    np.cumsum(c, out=child_start[1:])
    return (kind, lit[lines], child_start, t.value[kid_tok], lines.size - 1), n_vars


_D4_WORDS = (b"o", b"a", b"t", b"f")
_D4_KIND = np.array([OR, AND, TRUE, FALSE], dtype=np.int64)


def _parse_d4(t: _Lines) -> LocalDag:
    m = t.size
    which = np.full(m, -1, dtype=np.int64)  # index into _D4_WORDS, -1: not a declaration
    for j, w in enumerate(_D4_WORDS):
        which[t.is_word(w)] = j
    decl = which >= 0
    edge = ~decl & t.syntax[t.first]
    last = t.value[t.first + t.ntok - 1]
    is_edge_tok = t.on_lines(edge)
    ints, int_message = t.integer_rule(
        t.on_lines(decl) & (t.pos > 0) | is_edge_tok, is_edge_tok & (t.pos >= 2)
    )
    last_pos = np.append(t.ntok - 1, 0)[t.line]
    early_zero = is_edge_tok & (t.pos < last_pos) & t.is_int & (t.value == 0)
    big_lit = is_edge_tok & (t.pos >= 2) & (t.pos < last_pos) & (np.abs(t.value) > MAX_VARS)
    ids = t.field(1)

    def local(limit: int) -> list:
        return [
            (
                ~(decl | edge),
                lambda i: f"unknown d4 line type {t.word(i)!r} (expected o, a, t, f, c or an edge)",
            ),
            (decl & (t.ntok == 2), lambda i: f"missing trailing 0 on the '{t.word(i)}' line"),
            (
                decl & (t.ntok != 3),
                lambda i: f"a node line is '{t.word(i)} <id> 0', got {t.ntok[i]} tokens",
            ),
            (ints, int_message),
            (
                decl & (last != 0),
                lambda i: f"a node line is '{t.word(i)} <id> 0': missing trailing 0",
            ),
            (decl & (ids == 0), "node id 0: d4 node ids are positive"),
            (edge & (last != 0), "missing trailing 0 on the edge line"),
            (edge & (t.ntok < 3), "an edge line is '<parent> <child> <literal>* 0'"),
            (_line_mask(m, t.line[early_zero]), "0 before the end of the edge line"),
            (
                _line_mask(m, t.line[big_lit]),
                lambda i: (
                    f"literal {t.value[big_lit & (t.line == i)][0]}: variable beyond {_LIMIT}"
                ),
            ),
        ]

    def across(limit: int) -> list:
        lines = np.flatnonzero(decl[:limit])
        duplicate, resolve = _definitions(ids[lines])
        first_line = lines[resolve(ids[lines])]
        return [
            (
                _line_mask(m, lines[duplicate]),
                lambda i: (
                    f"duplicate node id {ids[i]} "
                    f"(first at line {t.lineno[first_line[np.searchsorted(lines, i)]]})"
                ),
            )
        ]

    t.raise_first(local, across)
    decl_lines = np.flatnonzero(decl)
    if decl_lines.size == 0:
        raise ParseError("NNF file has no nodes", t.path, None)
    n = decl_lines.size
    decl_kind = _D4_KIND[which[decl_lines]]
    decl_ids = ids[decl_lines]
    _, resolve = _definitions(decl_ids)
    edge_lines = np.flatnonzero(edge)
    parent = resolve(t.field(0)[edge_lines])
    child = resolve(t.field(1)[edge_lines])
    constant = (parent >= 0) & np.isin(decl_kind[np.maximum(parent, 0)], (TRUE, FALSE))
    at_fault = (parent < 0) | (child < 0) | constant
    if at_fault.any():
        e = int(np.flatnonzero(at_fault)[0])
        if parent[e] < 0 or child[e] < 0:
            end = t.field(0)[edge_lines[e]] if parent[e] < 0 else t.field(1)[edge_lines[e]]
            t.fail(edge_lines[e], f"edge mentions node {end}, which is never declared")
        p = int(parent[e])
        t.fail(
            edge_lines[e],
            f"edge out of the constant node {decl_ids[p]} "
            f"(declared at line {t.lineno[decl_lines[p]]})",
        )
    order = _children_first(n, parent, child)
    if order is None:
        e = _first_cycle_edge(n, parent, child)
        p, c = decl_ids[parent[e]], decl_ids[child[e]]
        t.fail(edge_lines[e], f"cycle through node {c} (edge {p} -> {c})")
    n_lits = t.ntok[edge_lines] - 3
    lit_tok = ranges(t.first[edge_lines] + 2, t.first[edge_lines] + 2 + n_lits)
    root = resolve(np.array([1], dtype=np.int64))[0]
    return _d4_dag(n, decl_kind, parent, child, n_lits, t.value[lit_tok], order, max(int(root), 0))


def _children_first(n: int, parent: np.ndarray, child: np.ndarray) -> np.ndarray | None:
    """A topological order of the d4 nodes, children before parents (Kahn's algorithm, one
    numpy step per level; a deep, narrow DAG finishes node by node), or ``None`` on a cycle."""
    by_child = np.argsort(child, kind="stable")
    in_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(child, minlength=n), out=in_start[1:])
    pending = np.bincount(parent, minlength=n)
    frontier = np.flatnonzero(pending == 0)
    levels = []
    max_levels = max(1000, n // 50)
    while frontier.size and len(levels) < max_levels:
        levels.append(frontier)
        es = by_child[ranges(in_start[frontier], in_start[frontier + 1])]
        ps, cnt = np.unique(parent[es], return_counts=True)
        pending[ps] -= cnt
        frontier = ps[pending[ps] == 0]
    if frontier.size:  # deep: node by node from here
        pend, starts, edges, parents = (
            pending.tolist(),
            in_start.tolist(),
            by_child.tolist(),
            parent.tolist(),
        )
        rest = []
        stack = frontier.tolist()
        while stack:
            v = stack.pop()
            rest.append(v)
            for e in edges[starts[v] : starts[v + 1]]:
                p = parents[e]
                pend[p] -= 1
                if pend[p] == 0:
                    stack.append(p)
        levels.append(np.asarray(rest, dtype=np.int64))
    order = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
    return order if order.size == n else None


def _first_cycle_edge(n: int, parent: np.ndarray, child: np.ndarray) -> int:
    """The first edge (in file order) that lies on a cycle: its two ends are in one strongly
    connected component (Tarjan's algorithm, iterative; only run on a file with a cycle)."""
    out: list[list[int]] = [[] for _ in range(n)]
    for p, c in zip(parent.tolist(), child.tolist(), strict=True):
        out[p].append(c)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    component = [-1] * n
    stack: list[int] = []
    counter = 0
    for s in range(n):
        if index[s] >= 0:
            continue
        work = [(s, 0)]
        index[s] = low[s] = counter
        counter += 1
        stack.append(s)
        on_stack[s] = True
        while work:
            v, i = work[-1]
            if i < len(out[v]):
                work[-1] = (v, i + 1)
                w = out[v][i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    component[w] = v
                    if w == v:
                        break
    comp = np.asarray(component)
    return int(np.flatnonzero(comp[parent] == comp[child])[0])


def _d4_dag(
    n: int,
    decl_kind: np.ndarray,
    parent: np.ndarray,
    child: np.ndarray,
    n_lits: np.ndarray,
    lit_tok: np.ndarray,
    topo: np.ndarray,
    root: int,
) -> LocalDag:
    """The local DAG of checked d4 declarations and edges: one LITERAL node per distinct
    literal first, then the declared nodes in ``topo`` order, each preceded by the AND nodes of
    its edges that carry literals."""
    n_edges = parent.size
    ulits = np.unique(lit_tok)
    ulits = ulits[np.lexsort((ulits, np.abs(ulits)))]
    n_lit = ulits.size
    has_lit = n_lits > 0
    outdeg = np.bincount(parent, minlength=n)
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
    position = np.searchsorted(np.sort(ulits), lit_tok)
    children[child_start[edge_and[lit_edge_of_tok]] + 1 + tok_rank] = np.argsort(ulits)[position]
    return kind, lit, child_start, children, int(local[root])


# ---------------------------------------------------------------------------- CNF
def read_dimacs(path) -> tuple[list[list[int]], int]:
    """Parse a DIMACS CNF file: ``p cnf <vars> <clauses>``, ``c`` comments, clauses ended by 0
    (possibly spanning lines), an optional ``%`` end marker. Returns ``(clauses, num_vars)``.

    A last clause without its terminating 0 is accepted.
    """
    return _parse_dimacs(*_read(path))


def _parse_dimacs(spath: str, data: bytes) -> tuple[list[list[int]], int]:
    t = _Lines(data, spath)
    end = _first_index(t.first_byte_is(b"%"))
    idx = np.arange(t.size)
    header = t.is_word(b"p") & (idx < end)
    clause = ~header & (idx < end)
    h = _first_index(header)
    shaped = h < end and t.ntok[h] == 4 and t.token(int(t.first[h]) + 1) == "cnf"
    n_vars = int(t.field(2)[h]) if h < end else 0
    on_clause = t.on_lines(clause)
    ints, int_message = t.integer_rule(t.on_lines(header) & (t.pos >= 2) | on_clause, on_clause)
    big = on_clause & (np.abs(t.value) > n_vars)
    rules = [
        (header & (idx > h), lambda i: f"second 'p' header (first at line {t.lineno[h]})"),
        (
            (idx == h) & (not shaped),
            lambda i: f"the header is 'p cnf <vars> <clauses>', got {t.text(i)!r}",
        ),
        (clause & (idx < h), "clause before the 'p cnf <vars> <clauses>' header"),
        (ints, int_message),
        (
            (idx == h) & (n_vars > MAX_VARS),
            f"the header's variable count {n_vars} is beyond {_LIMIT}",
        ),
        (
            _line_mask(t.size, t.line[big]),
            lambda i: (
                f"literal {t.value[big & (t.line == i)][0]} beyond the header's {n_vars} variables"
            ),
        ),
    ]
    t.raise_first(lambda limit: rules)
    if h >= end:
        raise ParseError("missing 'p cnf <vars> <clauses>' header", spath, None)
    literals = t.value[on_clause]
    zeros = np.flatnonzero(literals == 0)
    starts = np.concatenate(([0], zeros + 1))
    stops = np.concatenate((zeros, [literals.size]))
    if starts[-1] == stops[-1]:  # the file ends with its last clause's 0
        starts, stops = starts[:-1], stops[:-1]
    values = literals.tolist()
    clauses = [values[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    n_clauses = int(t.field(3)[h])
    if len(clauses) != n_clauses:
        t.fail(h, f"header declares {n_clauses} clauses but the file has {len(clauses)}")
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
    if (
        isinstance(num_vars, bool)
        or not isinstance(num_vars, (int, np.integer))
        or not 0 <= num_vars <= MAX_VARS
    ):
        raise CircuitError(f"num_vars must be an integer in 0..{MAX_VARS:,}, got {num_vars!r}")
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
