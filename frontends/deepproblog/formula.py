"""A ground ProbLog formula compiled into one multi-rooted trilay circuit.

The input is ProbLog's ground, acyclic formula (``LogicDAG``: atoms, conjunctions,
disjunctions, negation as a negative key), its queries, its evidence and its
annotated-disjunction constraints. The output has a root ``q AND C AND E`` per query and a last
root ``C AND E`` (``C`` the annotated-disjunction constraint, ``E`` the evidence), over
variables numbered by :func:`order_variables`.

Two compilers:

- :func:`compile_direct` writes the formula itself as the circuit when it is a d-DNNF already:
  every conjunction's children mention disjoint atoms (decomposable) and every disjunction's
  children exclude each other (deterministic), which a check confirms on the way up (see
  :class:`_Node`). An annotated disjunction is one multi-valued variable there (its choices and
  ProbLog's extra "none" atom are its values, only positive literals appear, and exactly one
  value holds in every model), so ``C`` needs no clauses. Linear in the formula's size.
- :func:`compile_sdd` compiles any formula with PySDD on a vtree that follows the formula
  (:func:`structure_vtree`: right-linear over the groups in depth-first order from the
  queries, balanced within an annotated disjunction), each choice entered as its group's whole
  value: a chain-structured program (digit-wise addition with a carry) gets an SDD linear in
  its length (N = 15: 0.7 s, 5,683 SDD elements for one query), where ProbLog's compilation
  (PySDD's default vtree, the constraint conjoined last) grows about 3x per digit.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from problog.constraint import ConstraintAD
from pysdd.sdd import SddManager, Vtree
from trilay.engine import Circuit


@dataclass
class Variables:
    """The circuit's variables: ``atoms[v - 1]`` is the formula key of variable ``v``.

    ``groups`` partitions the variables: an annotated disjunction with two or more ground
    choices is one group (its choices, then its extra atom), any other atom a group of its
    own; ``block[g]`` says group ``g`` is an annotated disjunction."""

    atoms: list[int]
    var: dict[int, int]
    groups: list[tuple[int, ...]]
    block: list[bool]
    group_of: dict[int, int]


def order_variables(dag, roots: list) -> Variables:
    """Number the atoms reachable from ``roots`` (signed formula keys; ``0`` is true, ``None``
    false) in depth-first order, the atoms of an annotated disjunction consecutively."""
    members_of: dict[int, list[int]] = {}
    for c in dag.constraints():
        if isinstance(c, ConstraintAD) and c.is_nontrivial():
            members = sorted(c.nodes) + [c.extra_node]
            for n in members:
                members_of[n] = members
    atoms: list[int] = []
    var: dict[int, int] = {}
    groups: list[tuple[int, ...]] = []
    block: list[bool] = []
    seen: set[int] = set()
    stack = [abs(k) for k in reversed(roots) if k]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        node = dag.get_node(key)
        if type(node).__name__ != "atom":
            stack.extend(abs(c) for c in reversed(node.children) if c)
            continue
        members = members_of.get(key, [key])
        if members[0] in var:
            continue
        for member in members:
            var[member] = len(atoms) + 1
            atoms.append(member)
        groups.append(tuple(var[m] for m in members))
        block.append(len(members) > 1)
    group_of = {v: g for g, vs in enumerate(groups) for v in vs}
    return Variables(atoms, var, groups, block, group_of)


# ---------------------------------------------------------------------------- direct
class NotDecomposable(Exception):
    """The formula is not a d-DNNF as written (internal: the caller compiles an SDD)."""


@dataclass
class _Node:
    """A compiled sub-formula: its circuit node, the groups it mentions and, per group it
    restricts, the values its models can take (a bit mask over the group's values; a plain
    atom's values are bit 0 true, bit 1 false). ``groups is None``: no models (false)."""

    node: int
    groups: frozenset | None
    allowed: dict[int, int]


def compile_direct(dag, variables: Variables, queries: list, evidence: list) -> Circuit:
    """The circuit of ``queries`` (signed keys) with ``evidence`` (signed keys that must hold),
    written from the formula's own structure and smoothed per group.

    Raises:
        NotDecomposable: a conjunction whose children share an atom, a disjunction whose
            children are not shown to exclude each other, or a negated derived atom.
    """
    circuit = Circuit(num_vars=len(variables.atoms))
    built: dict = {}
    full: dict[int, int] = {}

    def whole(g: int) -> int:  # "group g takes some value": the smoothing factor
        if g not in full:
            vs = variables.groups[g]
            lits = list(vs) if variables.block[g] else [vs[0], -vs[0]]
            full[g] = circuit.disjoin([circuit.literal(v) for v in lits])
        return full[g]

    def leaf(key: int) -> _Node:
        v = variables.var[abs(key)]
        g = variables.group_of[v]
        if not variables.block[g]:
            lit = v if key > 0 else -v
            return _Node(circuit.literal(lit), frozenset([g]), {g: 1 if key > 0 else 2})
        position = variables.groups[g].index(v)
        if key > 0:
            return _Node(circuit.literal(v), frozenset([g]), {g: 1 << position})
        others = [u for u in variables.groups[g] if u != v]  # exactly one value holds
        mask = ((1 << len(variables.groups[g])) - 1) & ~(1 << position)
        return _Node(
            circuit.disjoin([circuit.literal(u) for u in others]), frozenset([g]), {g: mask}
        )

    def conjoin(children: list[_Node]) -> _Node:
        if any(c.groups is None for c in children):
            return _Node(circuit.false(), None, {})
        groups: set[int] = set()
        allowed: dict[int, int] = {}
        for c in children:
            if not groups.isdisjoint(c.groups):
                raise NotDecomposable("a conjunction's children share an atom")
            groups |= c.groups
            allowed.update(c.allowed)
        return _Node(circuit.conjoin([c.node for c in children]), frozenset(groups), allowed)

    def smooth(child: _Node, groups) -> int:
        missing = groups - child.groups
        if not missing:
            return child.node
        return circuit.conjoin([child.node] + [whole(g) for g in sorted(missing)])

    def disjoin(children: list[_Node]) -> _Node:
        children = [c for c in children if c.groups is not None]
        if not children:
            return _Node(circuit.false(), None, {})
        if len(children) == 1:
            return children[0]
        _check_exclusive(children)
        groups = frozenset().union(*(c.groups for c in children))
        common = set(children[0].allowed).intersection(*(c.allowed for c in children[1:]))
        allowed = {g: _union(c.allowed[g] for c in children) for g in common}
        node = circuit.disjoin([smooth(c, groups) for c in children])
        return _Node(node, groups, allowed)

    def build(root) -> _Node:
        stack = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in built:
                continue
            if key is None:
                built[key] = _Node(circuit.false(), None, {})
                continue
            if key == 0:
                built[key] = _Node(circuit.true(), frozenset(), {})
                continue
            node = dag.get_node(abs(key))
            kind = type(node).__name__
            if kind == "atom":
                built[key] = leaf(key)
            elif key < 0:
                raise NotDecomposable("a negated derived atom")
            elif not expanded:
                stack.append((key, True))
                stack.extend((c, False) for c in node.children if c not in built)
            else:
                children = [built[c] for c in node.children]
                built[key] = conjoin(children) if kind == "conj" else disjoin(children)
        return built[root]

    every = frozenset(range(len(variables.groups)))
    observed = conjoin([build(k) for k in evidence])
    for key in queries:
        root = conjoin([build(key), observed])
        circuit.add_root(circuit.false() if root.groups is None else smooth(root, every))
    circuit.add_root(circuit.false() if observed.groups is None else smooth(observed, every))
    return circuit


def _union(masks) -> int:
    result = 0
    for m in masks:
        result |= m
    return result


def _check_exclusive(children: list[_Node]) -> None:
    """Raise :class:`NotDecomposable` unless every two children restrict some group to
    disjoint value sets (then no model satisfies both)."""
    first = min(children, key=lambda c: len(c.allowed))
    for g in first.allowed:  # common case: one group tells every child apart
        masks = [c.allowed.get(g) for c in children]
        if None not in masks and sum(m.bit_count() for m in masks) == _union(masks).bit_count():
            return
    for i, a in enumerate(children):
        for b in children[i + 1 :]:
            if not any(g in b.allowed and not m & b.allowed[g] for g, m in a.allowed.items()):
                raise NotDecomposable("a disjunction's children are not mutually exclusive")


# ---------------------------------------------------------------------------- SDD
def structure_vtree(groups: list[tuple[int, ...]]) -> Vtree:
    """A vtree that follows the formula: right-linear over the groups in their order (a
    chain of positions, as the formula walks them), balanced over each group's variables."""
    lines: list[str] = []

    def node(kind: str, *args: int) -> int:  # vtree file lines: "L id var", "I id left right"
        lines.append(" ".join([kind, str(len(lines)), *map(str, args)]))
        return len(lines) - 1

    def balanced(vs) -> int:
        if len(vs) == 1:
            return node("L", vs[0])
        half = len(vs) // 2
        left, right = balanced(vs[:half]), balanced(vs[half:])
        return node("I", left, right)

    root = balanced(groups[-1] if groups else (1,))
    for group in reversed(groups[:-1]):
        left = balanced(group)
        root = node("I", left, root)
    with tempfile.TemporaryDirectory() as directory:  # PySDD reads vtrees from files only
        path = os.path.join(directory, "structure.vtree")
        with open(path, "w") as f:
            f.write(f"vtree {len(lines)}\n" + "\n".join(lines) + "\n")
        return Vtree.from_file(path.encode())


def compile_sdd(dag, variables: Variables, queries: list, evidence: list, minimize: bool = False):
    """PySDD nodes ``(manager, [q AND C AND E per query], C AND E)`` on
    :func:`structure_vtree` (``minimize``: PySDD's garbage collection and dynamic vtree
    minimization while compiling, as ProbLog's ``sdd_auto_gc``)."""
    manager = SddManager.from_vtree(structure_vtree(variables.groups))
    if minimize:
        manager.auto_gc_and_minimize_on()
    built: dict = {None: manager.false(), 0: manager.true()}

    def keep(node):
        if minimize:  # a referenced node survives garbage collection
            node.ref()
        return node

    def value(key):
        """An atom's literal; a choice of an annotated disjunction as the group's whole value
        (the choice and no other), so disjunctions over choices stay small before ``C``."""
        var = variables.var[abs(key)]
        group = variables.groups[variables.group_of[var]]
        if key < 0 or len(group) == 1:
            return manager.literal(var if key > 0 else -var)
        result = manager.literal(var)
        for other in group:
            if other != var:
                result = manager.conjoin(result, manager.literal(-other))
        return result

    def build(root):
        stack = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in built:
                continue
            node = dag.get_node(abs(key))
            kind = type(node).__name__
            if kind == "atom":
                built[key] = keep(value(key))
            elif key < 0:
                if -key not in built:
                    stack.extend([(key, True), (-key, False)])
                else:
                    built[key] = keep(manager.negate(built[-key]))
            elif not expanded:
                stack.append((key, True))
                stack.extend((c, False) for c in node.children if c not in built)
            else:
                combine = manager.conjoin if kind == "conj" else manager.disjoin
                result = manager.true() if kind == "conj" else manager.false()
                for c in node.children:
                    result = combine(result, built[c])
                built[key] = keep(result)
        return built[root]

    constraint = manager.true()
    for c in dag.constraints():
        for clause in c.as_clauses():
            if not all(abs(k) in variables.var for k in clause):
                continue  # a constraint on atoms no query or evidence reaches: a common factor
            lits = [manager.literal(variables.var[abs(k)] * (1 if k > 0 else -1)) for k in clause]
            disjunction = manager.false()
            for lit in lits:
                disjunction = manager.disjoin(disjunction, lit)
            constraint = keep(manager.conjoin(constraint, disjunction))
    observed = constraint
    for key in evidence:
        observed = keep(manager.conjoin(observed, build(key)))
    roots = [keep(manager.conjoin(build(key), observed)) for key in queries]
    return manager, roots, observed
