"""A (Deep)ProbLog program, grounded and compiled by ProbLog, evaluated as one trilay circuit.

:class:`Program` parses the text with ``problog``, turns each neural predicate into the
annotated disjunction DeepProbLog makes of it, and prepares the clause database once.
:meth:`Program.compile` grounds a set of queries together (``DefaultEngine.ground_all``), breaks
cycles (``LogicDAG``), compiles one SDD with PySDD (``problog.sdd_formula.SDD``) and loads it into
one multi-rooted, smoothed trilay circuit: a root ``q AND C AND E`` per query and a last root
``C AND E``, where ``C`` is the annotated-disjunction constraint and ``E`` the evidence, so

    log P(q | E) = logWMC(q AND C AND E) - logWMC(C AND E).

Both roots are smoothed over every variable, so any factor a root's own variables do not fix
cancels in the difference.

Literal weights follow ProbLog's ``extract_weights`` and ``ConstraintAD.update_weights``: a fact
``p::f`` weighs ``(p, 1 - p)``; a choice of an annotated disjunction with two or more ground
choices weighs ``(p, 1)`` and the disjunction's extra "none" atom ``(1 - sum p, 1)``; a
disjunction with one ground choice is a plain fact. Neural weights are log-probability columns
of the networks' outputs: variable ``v``'s positive (negative) log-weight is the logsumexp of a
set of columns of a table ``[rows, K]`` holding every network block, the constants and a
``-inf`` pad, so that ``1 - p_j`` is the exact sum of the other classes and the "none" weight of
a neural disjunction with absent choices is the sum of the absent classes (zero when all are
present), never ``1 - sum`` in floating point.
"""

from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
from problog.constraint import ConstraintAD
from problog.engine import DefaultEngine
from problog.formula import LogicDAG, LogicFormula
from problog.logic import AnnotatedDisjunction, Clause, Constant, Or, Term, term2list
from problog.program import PrologFile, PrologString, SimpleProgram
from problog.sdd_formula import SDD
from trilay.engine import Circuit

from .errors import InvalidProbability, UnsupportedConstruct

#: Probability labels ProbLog accepts that are not probabilities (learning, decisions,
#: distributions): the frontend computes probabilities only.
_UNSUPPORTED_LABELS = {
    "t": "a learnable probability t(_) (ProbLog's LFI)",
    "?": "a decision fact ?:: (DTProbLog)",
    "decision": "a decision fact (DTProbLog)",
    "normal": "a continuous distribution",
    "beta": "a continuous distribution",
    "poisson": "a distribution",
    "uniform": "a continuous distribution",
}
#: Predicates of ProbLog's other tasks, which probabilistic inference would silently ignore.
_UNSUPPORTED_PREDICATES = {("utility", 2): "utility/2 (DTProbLog)"}


@dataclass(frozen=True)
class NeuralPredicate:
    """A network's declaration: ``nn/4`` (``size`` classes) or ``nn/2`` (``size`` = 2: true,
    false)."""

    network: str
    size: int
    categorical: bool
    line: int | None


# ---------------------------------------------------------------------------- the program
class Program:
    """A parsed ProbLog program with DeepProbLog's neural predicates, prepared once.

    Args:
        source: program text, or a path (``os.PathLike``) to a ``.pl`` file (``consult`` and
            ``use_module`` then resolve relative to it).

    Raises:
        UnsupportedConstruct: a construct outside probabilistic inference (``t(_)::``,
            ``?::``, distributions, ``utility/2``, ``nn/3`` deterministic networks), with its
            line.
    """

    def __init__(self, source: str | os.PathLike):
        if isinstance(source, os.PathLike):
            parsed = PrologFile(os.fspath(source))
            self.text = pathlib.Path(source).read_text()
        else:
            parsed = PrologString(source)
            self.text = source
        self.neural: dict[str, NeuralPredicate] = {}
        translated = SimpleProgram()
        changed = False
        for clause in parsed:
            line = self._line(clause)
            self._check_supported(clause, line)
            label = clause.probability if isinstance(clause, Term) else None
            if isinstance(label, Term) and label.functor == "nn":
                translated.add_clause(self._translate_nn(clause, label, line))
                changed = True
            else:
                translated.add_clause(clause)
        self.engine = DefaultEngine(label_all=True)
        # Translated clauses lose the file's directory; keep the original when nothing changed.
        self.db = self.engine.prepare(translated if changed else parsed)

    # ------------------------------------------------------------------ parsing
    def _line(self, term) -> int | None:
        location = getattr(term, "location", None)
        if not location:
            return None
        offset = location[1] if isinstance(location, tuple) else location
        return self.text.count("\n", 0, offset) + 1 if isinstance(offset, int) else None

    def _check_supported(self, clause, line: int | None) -> None:
        for head in _heads(clause):
            if not isinstance(head, Term):
                continue
            label = head.probability
            if isinstance(label, Term) and label.functor in _UNSUPPORTED_LABELS:
                raise UnsupportedConstruct(f"'{label}::'", line, _UNSUPPORTED_LABELS[label.functor])
            if isinstance(label, Term) and label.functor == "nn" and label.arity not in (2, 4):
                raise UnsupportedConstruct(
                    f"nn/{label.arity}", line, "neural predicates are nn/4 or nn/2"
                )
            what = _UNSUPPORTED_PREDICATES.get((head.functor, head.arity))
            if what is not None:
                raise UnsupportedConstruct(what, line)

    def _translate_nn(self, clause, label: Term, line: int | None):
        """``nn(Net, [X], Y, [d1..dn]) :: h(X, Y) :- body.`` becomes DeepProbLog's annotated
        disjunction ``nn(Net, [X], 0)::h(X, d1); ...; nn(Net, [X], n-1)::h(X, dn) :- body.``;
        ``nn(Net, [X]) :: h(X)`` stays a fact whose weight term names the network."""
        network = str(label.args[0])
        head = clause.head if isinstance(clause, Clause) else clause
        if label.arity == 2:
            self._declare(NeuralPredicate(network, 2, False, line))
            return clause
        net, inputs, output, domain = label.args
        values = term2list(domain, False)
        self._declare(NeuralPredicate(network, len(values), True, line))
        heads = [
            Term(head.functor, *head.args, p=Term("nn", net, inputs, Constant(j))).apply_term(
                {output: value}
            )
            for j, value in enumerate(values)
        ]
        if isinstance(clause, Clause):
            return AnnotatedDisjunction(heads, clause.body)
        return Or.from_list(heads)

    def _declare(self, pred: NeuralPredicate) -> None:
        known = self.neural.setdefault(pred.network, pred)
        if (known.size, known.categorical) != (pred.size, pred.categorical):
            raise UnsupportedConstruct(
                f"network {pred.network!r} declared twice with different outputs",
                pred.line,
                f"{known.size} and {pred.size} outputs",
            )

    # ------------------------------------------------------------------ compiling
    def compile_sdd(
        self, queries: list[Term] | None = None, minimize: bool = True
    ) -> CompiledQueries:
        """Ground ``queries`` (default: the program's ``query/1``) with the program's evidence
        and compile them into one PySDD manager (see :class:`CompiledQueries`).

        ``minimize``: ProbLog's ``sdd_auto_gc`` (PySDD's garbage collection and dynamic vtree
        minimization during compilation). Without it ProbLog grows a right-linear vtree and
        keeps every dead node: compiling 250 three-digit addition queries together did not
        finish in 15 minutes; with it, 35 s (2-core CPU)."""
        formula = self.engine.ground_all(
            self.db, target=LogicFormula(avoid_name_clash=True), queries=queries
        )
        dag = LogicDAG.create_from(formula, avoid_name_clash=True)
        sdd = SDD.create_from(dag, sdd_auto_gc=minimize)
        manager = sdd.get_manager()
        constraint = sdd.get_constraint_inode()
        evidence = manager.conjoin(constraint, *[sdd.get_inode(k) for _, k in sdd.evidence()])
        names, roots = [], []
        for name, key in sdd.queries():
            names.append(str(name))
            roots.append(manager.conjoin(sdd.get_inode(key), evidence))
        return CompiledQueries(sdd, names, roots, evidence)

    def compile(self, queries: list[Term] | None = None, minimize: bool = True) -> QueryCircuit:
        """Ground ``queries`` (default: the program's ``query/1``) with the program's evidence,
        compile them into one SDD (see :meth:`compile_sdd`) and one trilay circuit (see the
        module docstring)."""
        compiled = self.compile_sdd(queries, minimize)
        circuit = Circuit(num_vars=compiled.evidence.manager.var_count())
        for root in compiled.roots:
            circuit.add_sdd(root)
        circuit.add_sdd(compiled.evidence)
        weights = _literal_weights(compiled.sdd, self, circuit.num_vars)
        return QueryCircuit(circuit.compile(smooth=True), compiled.names, weights)


@dataclass
class CompiledQueries:
    """Ground queries compiled by ProbLog into one PySDD manager.

    ``roots[k]`` is the PySDD node of ``names[k] AND C AND E`` and ``evidence`` of ``C AND E``
    (``C`` the annotated-disjunction constraint, ``E`` the evidence); ``sdd`` is ProbLog's
    ``SDD`` formula (it owns the manager and the variables' weights)."""

    sdd: SDD
    names: list[str]
    roots: list
    evidence: object


# ---------------------------------------------------------------------------- literal weights
@dataclass
class _Weights:
    """Per variable, the table columns whose logsumexp is its positive / negative log-weight.

    ``blocks`` lists the network blocks ``(network, input names)`` of the table in order, each
    ``width`` columns wide; constants follow; the last column is ``-inf``."""

    blocks: list[tuple[str, tuple[str, ...]]]
    widths: list[int]
    constants: list[float]  # log-weights
    pos: list[list[tuple[str, int]]]  # per variable: ("block", column) or ("const", index)
    neg: list[list[tuple[str, int]]]


def _literal_weights(sdd, program: Program, num_vars: int) -> _Weights:
    """Each variable's log-weights as sets of table columns (ProbLog's weight rules); a
    manager variable no atom owns weighs ``(1, 1)``, a factor every root shares."""
    blocks: dict[tuple[str, tuple[str, ...]], int] = {}
    widths: list[int] = []
    constants: list[float] = []

    def const(value: float) -> list[tuple[str, int]]:
        constants.append(_log(value))
        return [("const", len(constants) - 1)]

    def block_columns(term: Term, columns) -> list[tuple[str, int]]:
        network = str(term.args[0])
        key = (network, tuple(str(x) for x in term2list(term.args[1], False)))
        if key not in blocks:
            blocks[key] = len(widths)
            widths.append(program.neural[network].size)
        start = sum(widths[: blocks[key]])
        return [("block", start + c) for c in columns]

    raw = sdd.get_weights()
    pos: dict[int, list] = {}
    neg: dict[int, list] = {}
    for atom, weight in raw.items():
        key = abs(atom)
        p_cols, n_cols = _plain_weight(weight, const, block_columns, program)
        pos[key], neg[key] = (p_cols, n_cols) if atom > 0 else (n_cols, p_cols)

    for c in sdd.constraints():
        if not isinstance(c, ConstraintAD) or not c.is_nontrivial():
            continue
        choices = [raw[n] for n in c.nodes]
        neural = [w for w in choices if isinstance(w, Term) and w.functor == "nn"]
        for n in c.nodes:
            neg[n] = const(1.0)
        if neural:
            size = program.neural[str(neural[0].args[0])].size
            present = {int(w.args[2]) for w in neural}
            absent = [j for j in range(size) if j not in present]
            pos[c.extra_node] = block_columns(neural[0], absent) if absent else const(0.0)
        else:
            total = sum(_probability(w) for w in choices)
            if total > 1.0 + 1e-9:
                raise InvalidProbability(
                    f"annotated disjunction with weights summing to {total} > 1: "
                    + "; ".join(str(sdd.get_node(n).name) for n in c.nodes)
                )
            pos[c.extra_node] = const(max(0.0, 1.0 - total))
        neg[c.extra_node] = const(1.0)

    unweighted = const(1.0)  # ProbLog's neutral weight (1, 1)
    by_var_pos, by_var_neg = [], []
    for var in range(1, num_vars + 1):
        atom = sdd.var2atom.get(var)
        by_var_pos.append(pos.get(atom, unweighted))
        by_var_neg.append(neg.get(atom, unweighted))
    return _Weights(list(blocks), widths, constants, by_var_pos, by_var_neg)


def _plain_weight(weight, const, block_columns, program: Program):
    """``(pos, neg)`` columns of an atom's weight outside a non-trivial disjunction."""
    if weight is True:
        return const(1.0), const(1.0)
    if weight is False:
        return const(0.0), const(1.0)
    if weight is None:
        return const(1.0), const(0.0)
    if isinstance(weight, Term) and weight.functor == "nn":
        network = str(weight.args[0])
        pred = program.neural.get(network)
        if pred is None:
            raise UnsupportedConstruct(f"weight term {weight}", None, "no such neural predicate")
        if weight.arity == 2:  # nn/2: columns (log p, log(1 - p))
            return block_columns(weight, [0]), block_columns(weight, [1])
        j = int(weight.args[2])
        others = [i for i in range(pred.size) if i != j]
        return block_columns(weight, [j]), block_columns(weight, others)
    p = _probability(weight)
    return const(p), const(1.0 - p)


def _probability(weight) -> float:
    try:
        p = float(weight)
    except Exception as e:  # problog raises its own types for non-numeric terms
        raise UnsupportedConstruct(
            f"weight {weight}", None, "only numeric probabilities and nn(...) are evaluated"
        ) from e
    if not -1e-9 <= p <= 1.0 + 1e-9:  # ProbLog's own tolerance
        raise InvalidProbability(f"probability {p} (from {weight}) is outside [0, 1]")
    return min(max(p, 0.0), 1.0)


def _heads(clause) -> list:
    """The head atoms of a parsed clause, fact or annotated disjunction."""
    if isinstance(clause, AnnotatedDisjunction):
        return list(clause.heads)
    if isinstance(clause, Clause):
        return [clause.head]
    if isinstance(clause, Or):
        return clause.to_list()
    return [clause]


def _log(value: float) -> float:
    return math.log(value) if value > 0.0 else -math.inf


# ---------------------------------------------------------------------------- the circuit
class QueryCircuit(torch.nn.Module):
    """The compiled circuit of a set of ground queries, with its literal-weight table layout.

    ``forward(blocks, rows, dtype)``: ``blocks[i]: [rows, widths[i]]`` log-probabilities of
    network block ``i`` (``self.blocks[i] = (network, input names)``) -> ``[rows, len(names)]``
    log conditional probabilities in ``dtype``, column ``k`` for query ``names[k]``.
    """

    def __init__(self, compiled, names: list[str], weights: _Weights):
        super().__init__()
        self.names = names
        self.blocks = weights.blocks
        self.widths = weights.widths
        self.module = compiled.module("log")
        self.num_nodes = compiled.num_nodes
        width = sum(weights.widths)
        pad = width + len(weights.constants)

        def columns(spec) -> list[int]:
            return [c if kind == "block" else width + c for kind, c in spec]

        most = max([len(s) for s in weights.pos] + [len(s) for s in weights.neg] + [1], default=1)
        index = np.full((2, len(weights.pos), most), pad, dtype=np.int64)
        for v, (p, n) in enumerate(zip(weights.pos, weights.neg, strict=True)):
            index[0, v, : len(p)] = columns(p)
            index[1, v, : len(n)] = columns(n)
        self.register_buffer("index", torch.from_numpy(index))  # [2, V, M]
        self.register_buffer(
            "constants",
            torch.tensor(weights.constants + [-math.inf], dtype=torch.float64),
        )

    def forward(self, blocks: list[torch.Tensor], rows: int, dtype: torch.dtype) -> torch.Tensor:
        """``blocks``: list of ``[rows, width_i]`` -> ``[rows, len(names)]`` log P(q | E)."""
        constants = self.constants.to(dtype).expand(rows, -1)
        table = torch.cat([b.to(dtype) for b in blocks] + [constants], dim=1)  # [rows, K]
        if self.index.shape[2] == 1:
            weights = table[:, self.index[:, :, 0]]  # [rows, 2, V]
        else:
            weights = _logsumexp(table[:, self.index])  # [rows, 2, V, M] -> [rows, 2, V]
        log_wmc = self.module(weights[:, 0], weights[:, 1])  # [rows, num_queries + 1]
        return log_wmc[:, :-1] - log_wmc[:, -1:]


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last axis whose gradient stays 0, not NaN, where every entry is
    ``-inf`` (a variable whose weight is exactly zero)."""
    top = x.detach().amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(x - top).sum(dim=-1)
    positive = total > 0
    safe = torch.where(positive, total, torch.ones_like(total))
    return torch.where(
        positive, torch.log(safe) + top.squeeze(-1), torch.full_like(total, -math.inf)
    )
