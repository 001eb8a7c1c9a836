"""A (Deep)ProbLog program, grounded by ProbLog, compiled and evaluated as one trilay circuit.

:class:`Program` parses the text with ``problog``, turns each neural predicate into the
annotated disjunction DeepProbLog makes of it, and prepares the clause database once.
:meth:`Program.compile` grounds a set of queries together (``DefaultEngine.ground_all``),
breaks cycles (``LogicDAG``) and compiles the ground formula into one multi-rooted trilay
circuit (:mod:`.formula`: directly when the formula is a d-DNNF as written, otherwise through
an SDD): a root ``q AND C AND E`` per query and a last root ``C AND E``, where ``C`` is the
annotated-disjunction constraint and ``E`` the evidence, so

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

Those exact complements make ``P(q | E)`` invariant to scaling a network's output row, so its
gradient has no component along ``(1, ..., 1)``. DeepProbLog differentiates ``1 - sum p`` as
written, which adds ``-dL/dc`` to every class of the block for each complement ``c``;
:meth:`QueryCircuit.forward` adds that term when asked (``gradient="deepproblog"``), from
``dL/dc = sum_k dL/dlogP_k * (B_k / WMC_k - B_E / WMC_E)``, ``B`` the circuit's roots with the
complement's literal weighing 1 and the block's other literals 0 (one extra forward pass per
complement, without gradient). The values are the same either way.
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
from problog.errors import InconsistentEvidenceError as ProbLogInconsistentEvidence
from problog.errors import ProbLogError
from problog.formula import LogicDAG, LogicFormula
from problog.logic import AnnotatedDisjunction, Clause, Constant, Or, Term, term2list
from problog.program import PrologFile, PrologString, SimpleProgram
from trilay.engine.errors import TrilayError

from .errors import (
    InconsistentEvidenceError,
    InvalidProbability,
    ProgramError,
    UnsupportedConstruct,
)
from .formula import NotDecomposable, Variables, compile_direct, compile_sdd, order_variables

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

#: How :meth:`Program.compile` turns the ground formula into a circuit.
METHODS = ("auto", "direct", "sdd")
#: Gradients w.r.t. the networks' outputs (see the module docstring).
GRADIENTS = ("deepproblog", "normalized")


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
            ``?::``, distributions, ``utility/2``, ``nn/3`` deterministic networks) or a
            malformed neural predicate (a domain that is not a non-empty list), with its line.
        ProgramError: ProbLog cannot parse the program (its message and position).
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
        with _problog_errors():
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
            # Translated clauses lose the file's directory; keep the original when unchanged.
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
        values = _fixed_list(domain)
        if not values:
            raise UnsupportedConstruct(
                f"nn({network}, ..., {domain})",
                line,
                "the domain (4th argument) must be a non-empty list of values, e.g. [0,1,2]",
            )
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

    # ------------------------------------------------------------------ grounding
    def ground(self, queries: list[Term] | None = None) -> GroundQueries:
        """Ground ``queries`` (default: the program's ``query/1``) with the program's evidence.

        Raises:
            ProgramError: ProbLog's grounding errors (unknown clause, non-ground query,
                negative cycle, ...), with ProbLog's message and position.
            InconsistentEvidenceError: ProbLog found the evidence false while grounding.
        """
        with _problog_errors():
            formula = self.engine.ground_all(
                self.db, target=LogicFormula(avoid_name_clash=True), queries=queries
            )
            dag = LogicDAG.create_from(formula, avoid_name_clash=True)
        names = [str(name) for name, _ in dag.queries()]
        keys = [key for _, key in dag.queries()]
        evidence = [key for _, key in dag.evidence()]
        return GroundQueries(dag, names, keys, evidence, order_variables(dag, keys + evidence))

    # ------------------------------------------------------------------ compiling
    def compile_sdd(
        self, queries: list[Term] | None = None, minimize: bool = False
    ) -> CompiledQueries:
        """Ground ``queries`` (default: the program's ``query/1``) with the program's evidence
        and compile them into one PySDD manager (see :class:`CompiledQueries` and
        :func:`~.formula.compile_sdd`)."""
        ground = self.ground(queries)
        manager, roots, evidence = compile_sdd(
            ground.dag, ground.variables, ground.keys, ground.evidence, minimize
        )
        return CompiledQueries(manager, ground.names, roots, evidence)

    def compile(
        self, queries: list[Term] | None = None, method: str = "auto", minimize: bool = False
    ) -> QueryCircuit:
        """Ground ``queries`` (default: the program's ``query/1``) with the program's evidence
        and compile them into one trilay circuit (see the module docstring).

        ``method``: ``"direct"`` writes the ground formula as the circuit and raises
        :class:`UnsupportedConstruct` unless it is decomposable and deterministic as written;
        ``"sdd"`` compiles an SDD (``minimize``: PySDD's dynamic vtree minimization);
        ``"auto"`` is ``"direct"`` where the check passes and ``"sdd"`` elsewhere."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        ground = self.ground(queries)
        circuit = None
        if method != "sdd":
            try:
                circuit = ground.direct().compile(smooth=False)
            except NotDecomposable as e:
                if method == "direct":
                    raise UnsupportedConstruct("method='direct'", None, str(e)) from e
        if circuit is None:
            circuit = ground.sdd(minimize).compile(smooth=True)
        weights = _literal_weights(ground.dag, ground.variables, self)
        return QueryCircuit(circuit, ground.names, weights, ground.factored())


@dataclass
class GroundQueries:
    """Ground queries: ProbLog's acyclic formula, the queries' names and keys, the evidence's
    keys (negative: the atom is false) and the circuit's variables."""

    dag: LogicDAG
    names: list[str]
    keys: list
    evidence: list
    variables: Variables

    def factored(self) -> bool:
        """Whether ``WMC(C AND E)`` is a product over the variables' groups: no evidence, and
        no constraint but annotated disjunctions (each over its own atoms)."""
        return not self.evidence and all(
            isinstance(c, ConstraintAD) for c in self.dag.constraints()
        )

    def direct(self):
        """The formula as a circuit (:func:`~.formula.compile_direct`)."""
        if any(not isinstance(c, ConstraintAD) for c in self.dag.constraints()):
            raise NotDecomposable("a constraint other than an annotated disjunction")
        return compile_direct(self.dag, self.variables, self.keys, self.evidence)

    def sdd(self, minimize: bool):
        """The formula compiled to an SDD, loaded as a circuit."""
        from trilay.engine import Circuit

        manager, roots, evidence = compile_sdd(
            self.dag, self.variables, self.keys, self.evidence, minimize
        )
        circuit = Circuit(num_vars=len(self.variables.atoms))
        for root in roots:
            circuit.add_sdd(root)
        circuit.add_sdd(evidence)
        return circuit


@dataclass
class CompiledQueries:
    """Ground queries compiled into one PySDD manager: ``roots[k]`` is the node of
    ``names[k] AND C AND E`` and ``evidence`` of ``C AND E``."""

    manager: object
    names: list[str]
    roots: list
    evidence: object


class _problog_errors:
    """Re-raise ProbLog's errors as the frontend's (a context manager): its own error types,
    and any other exception raised inside ProbLog's code (an ``AssertionError`` where ProbLog
    fails on a program its own inference fails on too)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, ProbLogInconsistentEvidence):
            raise InconsistentEvidenceError(f"ProbLog: {error}") from error
        if isinstance(error, ProbLogError) or (
            isinstance(error, Exception)
            and not isinstance(error, TrilayError)
            and _raised_in_problog(traceback)
        ):
            raise ProgramError(error) from error
        return False


def _raised_in_problog(traceback) -> bool:
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return "problog" in pathlib.Path(traceback.tb_frame.f_code.co_filename).parts


def _fixed_list(term) -> list | None:
    """The items of a Prolog list term, or ``None`` when it is not a fixed list."""
    try:
        return term2list(term, False)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- literal weights
@dataclass
class _Weights:
    """Per variable, the table columns whose logsumexp is its positive / negative log-weight.

    ``blocks`` lists the network blocks ``(network, input names)`` of the table in order, each
    ``width`` columns wide; constants follow; the last column is ``-inf``. ``complements``
    lists the weights DeepProbLog computes as ``1 - sum p`` over a categorical block:
    ``(block, variable, positive side?, variables of the block's present choices)``."""

    blocks: list[tuple[str, tuple[str, ...]]]
    widths: list[int]
    constants: list[float]  # log-weights
    pos: list[list[tuple[str, int]]]  # per variable: ("block", column) or ("const", index)
    neg: list[list[tuple[str, int]]]
    complements: list[tuple[int, int, bool, list[int]]]


def _literal_weights(dag, variables: Variables, program: Program) -> _Weights:
    """Each variable's log-weights as sets of table columns (ProbLog's weight rules)."""
    blocks: dict[tuple[str, tuple[str, ...]], int] = {}
    widths: list[int] = []
    constants: list[float] = []
    complements: list[tuple[int, int, bool, list[int]]] = []

    def const(value: float) -> list[tuple[str, int]]:
        constants.append(_log(value))
        return [("const", len(constants) - 1)]

    def block_of(term: Term) -> int:
        network = str(term.args[0])
        key = (network, tuple(str(x) for x in term2list(term.args[1], False)))
        if key not in blocks:
            blocks[key] = len(widths)
            widths.append(program.neural[network].size)
        return blocks[key]

    def block_columns(term: Term, columns) -> list[tuple[str, int]]:
        start = sum(widths[: block_of(term)])
        return [("block", start + c) for c in columns]

    raw = dag.get_weights()
    pos: dict[int, list] = {}
    neg: dict[int, list] = {}
    in_ad = set()
    for c in dag.constraints():
        if isinstance(c, ConstraintAD) and c.is_nontrivial() and c.extra_node in variables.var:
            in_ad.update(c.nodes)
    for atom in variables.atoms:
        weight = raw.get(atom, True)
        pos[atom], neg[atom] = _plain_weight(weight, const, block_columns, program)
        if isinstance(weight, Term) and weight.functor == "nn" and weight.arity == 3:
            if atom not in in_ad:  # a lone choice: its negative weight is 1 - p
                var = variables.var[atom]
                complements.append((block_of(weight), var, False, [var]))

    for c in dag.constraints():
        if not isinstance(c, ConstraintAD) or not c.is_nontrivial():
            continue
        if c.extra_node not in variables.var:
            continue  # no query or evidence reaches it: a factor every root shares
        choices = [raw[n] for n in c.nodes]
        neural = [w for w in choices if isinstance(w, Term) and w.functor == "nn"]
        for n in c.nodes:
            neg[n] = const(1.0)
        if neural:
            size = program.neural[str(neural[0].args[0])].size
            present = {int(w.args[2]) for w in neural}
            absent = [j for j in range(size) if j not in present]
            pos[c.extra_node] = block_columns(neural[0], absent) if absent else const(0.0)
            complements.append(
                (
                    block_of(neural[0]),
                    variables.var[c.extra_node],
                    True,
                    [variables.var[n] for n in sorted(c.nodes)],
                )
            )
        else:
            total = sum(_probability(w) for w in choices)
            if total > 1.0 + 1e-9:
                raise InvalidProbability(
                    f"annotated disjunction with weights summing to {total} > 1: "
                    + "; ".join(str(dag.get_node(n).name) for n in c.nodes)
                )
            pos[c.extra_node] = const(max(0.0, 1.0 - total))
        neg[c.extra_node] = const(1.0)

    return _Weights(
        list(blocks),
        widths,
        constants,
        [pos[a] for a in variables.atoms],
        [neg[a] for a in variables.atoms],
        complements,
    )


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

    ``forward(blocks, columns, probs, gradient)``: ``blocks[i]: [rows, widths[i]]``
    log-probabilities of network block ``i`` (``self.blocks[i] = (network, input names)``),
    ``columns: [rows]`` int64 query indices (into ``names``) -> ``[rows]`` ``log P(q | E)`` in
    the blocks' dtype (float64 without blocks). ``log_prob_all`` gives every query,
    ``[rows, len(names)]``.
    """

    def __init__(self, compiled, names: list[str], weights: _Weights, factored: bool = False):
        super().__init__()
        self.names = names
        self.blocks = weights.blocks
        self.widths = weights.widths
        self.module = compiled.module("log")
        self.num_nodes = compiled.num_nodes
        self.num_layers = compiled.num_layers
        width = sum(weights.widths)
        pad = width + len(weights.constants)

        def columns(spec) -> list[int]:
            return [c if kind == "block" else width + c for kind, c in spec]

        most = max([len(s) for s in weights.pos] + [len(s) for s in weights.neg] + [1])
        index = np.full((2, len(weights.pos), most), pad, dtype=np.int64)
        for v, (p, n) in enumerate(zip(weights.pos, weights.neg, strict=True)):
            index[0, v, : len(p)] = columns(p)
            index[1, v, : len(n)] = columns(n)
        self.register_buffer("index", torch.from_numpy(index))  # [2, V, M]
        self.register_buffer(
            "constants", torch.tensor(weights.constants + [-math.inf], dtype=torch.float64)
        )
        # DeepProbLog's gradient: per complement, its block, the variables whose positive
        # weight is 0 in its forced row, and the (side, variable) weighing 1 there.
        comps = weights.complements
        self.complement_blocks = [b for b, _, _, _ in comps]
        zeros = [(i, v - 1) for i, (_, _, _, present) in enumerate(comps) for v in present]
        self.register_buffer("forced_zero", torch.tensor(zeros, dtype=torch.long).reshape(-1, 2))
        ones = [(i, 0 if positive else 1, v - 1) for i, (_, v, positive, _) in enumerate(comps)]
        self.register_buffer("forced_one", torch.tensor(ones, dtype=torch.long).reshape(-1, 3))
        # Closed form: where WMC(C AND E) is a product over groups, its ratio B_E / WMC_E is
        # 1 / (the block's total mass); where a query root has no model with a complement's
        # literal true (B = 0 for all weights: probed once with weights 1/2), its ratio is 0.
        # When every query's roots are both, no forced pass is needed: dlogP/dc = -1 / mass.
        self.closed_form = False
        if factored and comps:
            with torch.no_grad():
                half = torch.full((1, 2, compiled.num_vars), math.log(0.5), dtype=torch.float64)
                cofactor = self._forced(half)[:, 0, :-1]  # [C, num_queries]
            self.closed_form = bool((cofactor == -math.inf).all())

    def _weights(self, blocks: list[torch.Tensor], rows: int, dtype) -> torch.Tensor:
        """``[rows, 2, V]`` log-weights (positive, negative) from the blocks."""
        constants = self.constants.to(dtype).expand(rows, -1)
        table = torch.cat([b.to(dtype) for b in blocks] + [constants], dim=1)  # [rows, K]
        if self.index.shape[2] == 1:
            return table[:, self.index[:, :, 0]]
        return _logsumexp(table[:, self.index])  # [rows, 2, V, M] -> [rows, 2, V]

    def log_prob_all(self, blocks: list[torch.Tensor], rows: int, dtype) -> torch.Tensor:
        """``[rows, len(names)]`` log P(q | E) of every query (gradient ``"normalized"``)."""
        weights = self._weights(blocks, rows, dtype)
        log_wmc = self.module(weights[:, 0], weights[:, 1])  # [rows, num_queries + 1]
        return log_wmc[:, :-1] - log_wmc[:, -1:]

    def forward(
        self,
        blocks: list[torch.Tensor],
        columns: torch.Tensor,
        probs: list[torch.Tensor] | None = None,
        gradient: str = "deepproblog",
    ) -> torch.Tensor:
        """``[rows]`` log P(q_columns[i] | E); ``probs[i]``: block ``i`` as probabilities (the
        network's own output; ``None``: ``exp`` of ``blocks[i]``), needed for DeepProbLog's
        gradient only."""
        rows = columns.shape[0]
        dtype = blocks[0].dtype if blocks else torch.float64
        weights = self._weights(blocks, rows, dtype)
        log_wmc = self.module(weights[:, 0], weights[:, 1])  # [rows, num_queries + 1]
        log_q = log_wmc.gather(1, columns[:, None])[:, 0]
        log_e = log_wmc[:, -1]
        result = log_q - log_e
        tracked = any(b.requires_grad for b in blocks) and torch.is_grad_enabled()
        if gradient != "deepproblog" or not self.complement_blocks or not tracked:
            return result
        probs = probs or [None] * len(blocks)
        mass = torch.stack(
            [
                (blocks[b].exp() if probs[b] is None else probs[b]).sum(dim=1)
                for b in self.complement_blocks
            ]
        )  # [C, rows]
        if self.closed_form:
            # Value 0; gradient -rho = 1 / mass for every class of the complement's block.
            return result + ((mass - mass.detach()) / mass.detach()).sum(dim=0)
        with torch.no_grad():
            forced = self._forced(weights.detach())  # [C, rows, num_queries + 1]
            at = torch.arange(rows, device=columns.device)
            ratio_q = torch.exp(forced[:, at, columns] - log_q.detach())
            ratio_e = torch.exp(forced[:, :, -1] - log_e.detach())
            # dlogP/dc; where P(q) = 0 it is infinite (the loss is too): left out, not NaN.
            rho = torch.nan_to_num(ratio_q - ratio_e, nan=0.0, posinf=0.0, neginf=0.0)
        # Value 0; gradient -rho for every class of the complement's block.
        return result + (rho.to(dtype) * (mass.detach() - mass)).sum(dim=0)

    def _forced(self, weights: torch.Tensor) -> torch.Tensor:
        """Per complement, the roots with its literal weighing 1 and its block's present
        choices 0: ``[C, rows, num_queries + 1]`` log-WMCs."""
        count = len(self.complement_blocks)
        forced = weights.unsqueeze(0).repeat(count, 1, 1, 1)  # [C, rows, 2, V]
        zero, one = self.forced_zero, self.forced_one
        forced[zero[:, 0], :, 0, zero[:, 1]] = -math.inf
        forced[one[:, 0], :, one[:, 1], one[:, 2]] = 0.0
        flat = forced.reshape(-1, *weights.shape[1:])
        return self.module(flat[:, 0], flat[:, 1]).reshape(count, weights.shape[0], -1)


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
