"""Independent slow readings of trilay's file formats, and writers of files from PySDD nodes.

The readers follow the grammars documented in ``trilay.engine.io`` (its module docstring) line
by line in plain Python, sharing no code with it: they are the oracle of the parser tests and
of the differential fuzz tests. Each returns what the fast reader returns (or, for d4, a
function that evaluates the circuit) or raises :class:`Refused` with the line of the first
error in file order (``None`` for a file with no content).

The writers make c2d and d4 files from a PySDD traversal (``elements()``, ``literal``, ...),
not from trilay.
"""

from __future__ import annotations

import re

import numpy as np
from trilay.engine.circuit import AND, FALSE, LITERAL, OR, TRUE

#: The documented limits: variables 1..2^24, integers of magnitude below 2^62.
MAX_VARS = 2**24
MAX_INT = 2**62
_SIGNED = re.compile(rb"-?[0-9]+")
_UNSIGNED = re.compile(rb"[0-9]+")


class Refused(Exception):
    """The reference reader refuses the file at ``line`` (1-based; ``None``: the whole file)."""

    def __init__(self, line: int | None, why: str):
        super().__init__(f"line {line}: {why}")
        self.line = line


def content_lines(data: bytes):
    """``(line number, tokens)`` of each line that is neither blank nor a comment."""
    for number, line in enumerate(data.split(b"\n"), 1):
        tokens = line.split()  # bytes.split(): ASCII whitespace only
        if tokens and not tokens[0].startswith(b"c"):
            yield number, tokens


def integer(token: bytes, line: int, signed: bool) -> int:
    if not (_SIGNED if signed else _UNSIGNED).fullmatch(token):
        raise Refused(line, f"not an integer: {token!r}")
    value = int(token)
    if abs(value) >= MAX_INT:
        raise Refused(line, f"out of range: {token!r}")
    return value


def integers(tokens, line: int, signed=lambda position: False) -> list[int]:
    return [integer(t, line, signed(j)) for j, t in enumerate(tokens)]


def count_header(seen, tokens, line: int) -> tuple[int, int]:
    """A ``<word> <count>`` header: ``(count, line)``, unless it is the second one."""
    if seen is not None:
        raise Refused(line, "second header")
    if len(tokens) != 2:
        raise Refused(line, "header arity")
    return integers(tokens[1:], line)[0], line


# ----------------------------------------------------------------------------- vtree
def read_vtree(data: bytes) -> list[int]:
    """The sorted variables of a vtree file."""
    header = None
    node_of: dict[int, int] = {}  # id -> node number
    parent_line: dict[int, int] = {}  # node number -> line of the I node that took it
    variables: set[int] = set()
    ids: list[int] = []
    lines: list[int] = []
    for line, tokens in content_lines(data):
        word = tokens[0]
        if word == b"vtree":
            header = count_header(header, tokens, line)
            continue
        if word not in (b"L", b"I"):
            raise Refused(line, "unknown line")
        if header is None:
            raise Refused(line, "node before header")
        if len(tokens) != (3 if word == b"L" else 4):
            raise Refused(line, "node arity")
        nums = integers(tokens[1:], line)
        if word == b"L" and not 1 <= nums[1] <= MAX_VARS:
            raise Refused(line, "variable range")
        if nums[0] in node_of:
            raise Refused(line, "duplicate id")
        if word == b"I":
            kids = [node_of.get(ref) for ref in nums[1:]]
            if None in kids:
                raise Refused(line, "undefined child")
            for kid in kids:
                if kid in parent_line:
                    raise Refused(line, "child reused")
                parent_line[kid] = line
        elif nums[1] in variables:
            raise Refused(line, "variable at two leaves")
        else:
            variables.add(nums[1])
        node_of[nums[0]] = len(ids)
        ids.append(nums[0])
        lines.append(line)
    if header is None:
        raise Refused(None, "empty")
    if not ids:
        raise Refused(header[1], "no nodes")
    if header[0] != len(ids):
        raise Refused(header[1], "count")
    for node in range(len(ids) - 1):
        if node not in parent_line:
            raise Refused(lines[node], "forest")
    return sorted(variables)


# ----------------------------------------------------------------------------- SDD
def read_sdd(data: bytes, vtree_variables=None):
    """The local DAG of an SDD file: the literals first, by their vtree nodes (ties in line
    order), then the other nodes in line order, a ``D`` line's OR after the ANDs of those of
    its elements no earlier line has (one AND per distinct (prime, sub) pair)."""
    header = None
    local: dict[int, int] = {}  # SDD id -> local node
    element: dict[tuple[int, int], int] = {}  # (prime, sub) local nodes -> their AND
    kind, lit, children = [], [], []
    literal_vtree: dict[int, int] = {}  # literal node -> its vtree node
    count = 0
    for line, tokens in content_lines(data):
        word = tokens[0]
        if word == b"sdd":
            header = count_header(header, tokens, line)
            continue
        if word not in (b"F", b"T", b"L", b"D"):
            raise Refused(line, "unknown line")
        if header is None:
            raise Refused(line, "node before header")
        if word in (b"F", b"T") and len(tokens) != 2:
            raise Refused(line, "arity")
        if word == b"L" and len(tokens) != 4:
            raise Refused(line, "arity")
        if word == b"D" and len(tokens) < 4:
            raise Refused(line, "arity")
        nums = integers(tokens[1:], line, signed=lambda j, word=word: word == b"L" and j == 2)
        if word == b"D" and len(tokens) - 4 != 2 * nums[2]:
            raise Refused(line, "element count")
        if word == b"L":
            literal = nums[2]
            if literal == 0 or abs(literal) > MAX_VARS:
                raise Refused(line, "literal range")
            if vtree_variables is not None and abs(literal) not in vtree_variables:
                raise Refused(line, "not in the vtree")
        if word == b"D":
            elements = []
            for ref in nums[3:]:
                if ref not in local:
                    raise Refused(line, "undefined element")
                elements.append(local[ref])
        if nums[0] in local:
            raise Refused(line, "duplicate id")
        if word == b"D":
            ands = []
            for pair in zip(elements[0::2], elements[1::2], strict=True):
                if pair not in element:
                    kind.append(AND), lit.append(0), children.append(list(pair))
                    element[pair] = len(kind) - 1
                ands.append(element[pair])
            kind.append(OR), lit.append(0), children.append(ands)
        else:
            kind.append({b"F": FALSE, b"T": TRUE, b"L": LITERAL}[word])
            lit.append(nums[2] if word == b"L" else 0)
            children.append([])
        if word == b"L":
            literal_vtree[len(kind) - 1] = nums[1]
        local[nums[0]] = len(kind) - 1
        last_id = nums[0]
        count += 1
    if header is None:
        raise Refused(None, "empty")
    if count == 0:
        raise Refused(header[1], "no nodes")
    if header[0] != count:
        raise Refused(header[1], "count")
    # Renumber: the literals first, by vtree node, then the rest in order.
    new_order = sorted(
        range(len(kind)), key=lambda i: (kind[i] != LITERAL, literal_vtree.get(i, 0), i)
    )
    new_id = {old: new for new, old in enumerate(new_order)}
    return _dag(
        [kind[i] for i in new_order],
        [lit[i] for i in new_order],
        [[new_id[c] for c in children[i]] for i in new_order],
        new_id[local[last_id]],
    )


def _dag(kind, lit, children, root):
    child_start = np.zeros(len(kind) + 1, dtype=np.int64)
    child_start[1:] = np.cumsum([len(c) for c in children])
    flat = [c for cs in children for c in cs]
    return (
        np.asarray(kind, dtype=np.int64),
        np.asarray(lit, dtype=np.int64),
        child_start,
        np.asarray(flat, dtype=np.int64),
        root,
    )


# ----------------------------------------------------------------------------- c2d
def read_c2d(data: bytes):
    """``(local DAG, variable count)`` of a c2d file (its first content line is ``nnf``)."""
    header = None
    kind, lit, children = [], [], []
    edges = 0
    for line, tokens in content_lines(data):
        word = tokens[0]
        if header is None:
            if len(tokens) != 4:
                raise Refused(line, "header arity")
            n_nodes, n_edges, n_vars = integers(tokens[1:], line)
            if n_vars > MAX_VARS:
                raise Refused(line, "variable count")
            header = line
            continue
        if word == b"nnf":
            raise Refused(line, "second header")
        if word not in (b"L", b"A", b"O"):
            raise Refused(line, "unknown line")
        if len(kind) >= n_nodes:
            raise Refused(line, "more nodes")
        least = {b"L": 2, b"A": 2, b"O": 3}[word]
        if len(tokens) < least or (word == b"L" and len(tokens) != 2):
            raise Refused(line, "arity")
        nums = integers(tokens[1:], line, signed=lambda j, word=word: word == b"L")
        if word == b"L":
            if nums[0] == 0 or abs(nums[0]) > n_vars:
                raise Refused(line, "literal range")
            kind.append(LITERAL), lit.append(nums[0]), children.append([])
            continue
        kids = nums[1:] if word == b"A" else nums[2:]
        if len(kids) != nums[0 if word == b"A" else 1]:
            raise Refused(line, "child count")
        if word == b"O" and nums[0] > n_vars:
            raise Refused(line, "decision variable")
        if any(k >= len(kind) for k in kids):
            raise Refused(line, "forward child")
        edges += len(kids)
        if edges > n_edges:
            raise Refused(line, "more edges")
        if word == b"A":
            kind.append(AND if kids else TRUE)
        else:
            kind.append(OR if kids else FALSE)
        lit.append(0), children.append(kids)
    if not kind:
        raise Refused(header, "no nodes")
    if len(kind) != n_nodes or edges != n_edges:
        raise Refused(header, "count")
    return _dag(kind, lit, children, len(kind) - 1), n_vars


# ----------------------------------------------------------------------------- d-DNNF
def read_nnf(data: bytes):
    """``("c2d", (local DAG, variable count))`` when the first content line is an ``nnf``
    header, else ``("d4", evaluate)``."""
    first = next(content_lines(data), None)
    if first is None:
        raise Refused(None, "empty")
    if first[1][0] == b"nnf":
        return "c2d", read_c2d(data)
    return "d4", read_d4(data)


def read_d4(data: bytes):
    """A d4 file as ``evaluate(weight) -> int``: the circuit's value mod ``2^61 - 1`` with
    literal ``l`` weighted ``weight(l)`` (sum for o, product for a, 1 for t, 0 for f; an edge
    multiplies its child by its literals)."""
    kinds = {b"o": "o", b"a": "a", b"t": "t", b"f": "f"}
    declared: dict[int, tuple[str, int]] = {}  # id -> (kind, line)
    first_id = None
    edges = []  # (parent, child, literals, line)
    for line, tokens in content_lines(data):
        word = tokens[0]
        if word in kinds:
            if len(tokens) != 3:
                raise Refused(line, "arity")
            nid, zero = integers(tokens[1:], line)
            if zero != 0:
                raise Refused(line, "trailing 0")
            if nid == 0:
                raise Refused(line, "id 0")
            if nid in declared:
                raise Refused(line, "duplicate")
            declared[nid] = (kinds[word], line)
            first_id = nid if first_id is None else first_id
            continue
        if not _SIGNED.fullmatch(word):
            raise Refused(line, "unknown line")
        nums = integers(tokens, line, signed=lambda j: j >= 2)
        if nums[-1] != 0:
            raise Refused(line, "trailing 0")
        if len(nums) < 3:
            raise Refused(line, "arity")
        if 0 in nums[:-1]:
            raise Refused(line, "early 0")
        if any(abs(l) > MAX_VARS for l in nums[2:-1]):
            raise Refused(line, "literal range")
        edges.append((nums[0], nums[1], nums[2:-1], line))
    if not declared:
        raise Refused(None, "no nodes")
    for parent, child, _, line in edges:
        if parent not in declared or child not in declared:
            raise Refused(line, "undeclared")
        if declared[parent][0] in ("t", "f"):
            raise Refused(line, "constant parent")
    out: dict[int, list] = {}
    for parent, child, lits, _ in edges:
        out.setdefault(parent, []).append((child, lits))
    # a cycle: peeling childless nodes off (Kahn) leaves some; then the first edge on one is
    # the first whose parent is reachable from its child
    children_left = {v: len(out.get(v, [])) for v in declared}
    parents = {}
    for parent, child, _, _ in edges:
        parents.setdefault(child, []).append(parent)
    ready = [v for v, k in children_left.items() if k == 0]
    while ready:
        for p in parents.get(ready.pop(), []):
            children_left[p] -= 1
            if children_left[p] == 0:
                ready.append(p)
    for parent, child, _, line in edges if any(children_left.values()) else []:
        seen, todo = {child}, [child]
        while todo:
            for nxt, _ in out.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt), todo.append(nxt)
        if parent in seen:
            raise Refused(line, "cycle")
    root = 1 if 1 in declared else first_id

    def evaluate(weight) -> int:
        value: dict[int, int] = {}
        todo = [root]
        while todo:
            v = todo[-1]
            missing = [c for c, _ in out.get(v, []) if c not in value]
            if missing:
                todo.extend(missing)
                continue
            todo.pop()
            terms = []
            for c, lits in out.get(v, []):
                term = value[c]
                for l in lits:
                    term = term * weight(l) % PRIME
                terms.append(term)
            k = declared[v][0]
            if k == "o":
                value[v] = sum(terms) % PRIME
            elif k == "a":
                value[v] = int(np.prod([1] + terms, dtype=object)) % PRIME
            else:
                value[v] = 1 if k == "t" else 0
        return value[root]

    return evaluate


PRIME = 2**61 - 1


def evaluate_dag(arrays, weight) -> int:
    """A local DAG's value mod ``2^61 - 1`` (OR: sum, AND: product)."""
    kind, lit, child_start, children, root = arrays
    value = []
    for i in range(kind.size):
        kids = [value[c] for c in children[child_start[i] : child_start[i + 1]].tolist()]
        k = int(kind[i])
        if k == LITERAL:
            value.append(weight(int(lit[i])))
        elif k in (TRUE, FALSE):
            value.append(int(k == TRUE))
        elif k == AND:
            v = 1
            for x in kids:
                v = v * x % PRIME
            value.append(v)
        else:
            value.append(sum(kids) % PRIME)
    return value[root]


# ----------------------------------------------------------------------------- DIMACS
def read_dimacs(data: bytes):
    """``(clauses, variable count)`` of a DIMACS file."""
    header = None
    flat: list[int] = []
    for line, tokens in content_lines(data):
        if tokens[0].startswith(b"%"):
            break
        if tokens[0] == b"p":
            if header is not None:
                raise Refused(line, "second header")
            if len(tokens) != 4 or tokens[1] != b"cnf":
                raise Refused(line, "header shape")
            n_vars, n_clauses = integers(tokens[2:], line)
            if n_vars > MAX_VARS:
                raise Refused(line, "variable count")
            header = line
            continue
        if header is None:
            raise Refused(line, "clause before header")
        nums = integers(tokens, line, signed=lambda j: True)
        if any(abs(v) > n_vars for v in nums):
            raise Refused(line, "literal range")
        flat.extend(nums)
    if header is None:
        raise Refused(None, "no header")
    clauses, current = [], []
    for v in flat:
        if v == 0:
            clauses.append(current)
            current = []
        else:
            current.append(v)
    if current:
        clauses.append(current)
    if len(clauses) != n_clauses:
        raise Refused(header, "count")
    return clauses, n_vars


# ----------------------------------------------------------------------------- PySDD -> files
def pysdd_nodes(root):
    """Topologically ordered unique nodes of a PySDD SDD, by a PySDD traversal."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node.id in seen:
            continue
        if expanded or not node.is_decision():
            seen.add(node.id)
            order.append(node)
            continue
        stack.append((node, True))
        for prime, sub in node.elements():
            stack.extend([(sub, False), (prime, False)])
    return order


def c2d_text(root, num_vars: int) -> str:
    """The SDD as c2d text: a decision node is an O over one A(prime, sub) per element."""
    lines, index, edges = [], {}, 0
    for node in pysdd_nodes(root):
        if node.is_true():
            lines.append("A 0")
        elif node.is_false():
            lines.append("O 0 0")
        elif node.is_literal():
            lines.append(f"L {node.literal}")
        else:
            ands = []
            for prime, sub in node.elements():
                lines.append(f"A 2 {index[prime.id]} {index[sub.id]}")
                edges += 2
                ands.append(len(lines) - 1)
            lines.append(f"O 0 {len(ands)} " + " ".join(map(str, ands)))
            edges += len(ands)
        index[node.id] = len(lines) - 1
    return f"nnf {len(lines)} {edges} {num_vars}\n" + "\n".join(lines) + "\n"


def d4_text(root) -> str:
    """The SDD as d4 text, parents declared before children (root = node 1); an element whose
    prime is a literal becomes an edge labelled with it, other elements an ``a`` node."""
    nodes = pysdd_nodes(root)[::-1]  # parents first
    ids = {node.id: i + 1 for i, node in enumerate(nodes)}
    decls, edges, extra = [], [], len(nodes)
    for node in nodes:
        me = ids[node.id]
        if node.is_true():
            decls.append(f"t {me} 0")
        elif node.is_false():
            decls.append(f"f {me} 0")
        elif node.is_literal():  # a literal: an AND with no children, its edge carries it
            decls.append(f"a {me} 0")
            extra += 1
            decls.append(f"t {extra} 0")
            edges.append(f"{me} {extra} {node.literal} 0")
        else:
            decls.append(f"o {me} 0")
            for prime, sub in node.elements():
                if prime.is_literal():
                    edges.append(f"{me} {ids[sub.id]} {prime.literal} 0")
                else:
                    extra += 1
                    decls.append(f"a {extra} 0")
                    edges += [
                        f"{me} {extra} 0",
                        f"{extra} {ids[prime.id]} 0",
                        f"{extra} {ids[sub.id]} 0",
                    ]
    return "c written by the test\n" + "\n".join(decls + edges) + "\n"
