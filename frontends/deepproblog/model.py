"""The DeepProbLog model: networks feed one batched circuit per set of query templates.

A query names its tensor inputs by constants (``addition(a, b, 7)``); the call supplies, per
name, a tensor whose row ``i`` belongs to query ``i``. The ground structure of a query depends
only on its text, so the text is the cache key: a query is grounded and compiled once (with
the other new queries of its batch, into one multi-rooted circuit), and every later batch row
with that text, whatever its images, reuses the root. A batch runs each network once over all
the inputs it needs, and each circuit once over its rows, batch on the fast axis.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import torch
from problog.logic import Term
from trilay.engine.errors import ShapeError
from trilay.engine.semiring import log1mexp

from .errors import (
    InconsistentEvidenceError,
    NetworkOutputError,
    UnknownInput,
    UnknownNetwork,
    UnsupportedConstruct,
)
from .program import GRADIENTS, METHODS, Program, QueryCircuit

#: What the networks return: probabilities (softmax / sigmoid outputs, DeepProbLog's
#: convention) or log-probabilities (log_softmax / logsigmoid: exact for tiny probabilities).
OUTPUTS = ("probs", "log_probs")
REDUCTIONS = ("none", "mean", "sum")


class Model(torch.nn.Module):
    """A DeepProbLog program with its networks, evaluated by trilay circuits.

    Args:
        program: ProbLog text with neural predicates ``nn(Net, [X], Y, [d1, ..., dn]) :: h(X, Y).``
            (one categorical choice per input ``X``) and ``nn(Net, [X]) :: h(X).`` (a
            probability), or a path to a ``.pl`` file.
        networks: ``{name: torch.nn.Module}``. Network ``Net`` maps the input tensors of a
            ground atom, ``[rows, ...]`` each, to ``[rows, n]`` (``nn/4``) or ``[rows]`` /
            ``[rows, 1]`` (``nn/2``).
        outputs: ``"probs"`` or ``"log_probs"`` (see :data:`OUTPUTS`).
        check_outputs: check every network output is a distribution over its declared domain
            (one host sync per network call; turn off once a model is known to be right).
        tolerance: how far a distribution's sum may be from 1.
        gradient: ``"deepproblog"``: the gradient w.r.t. the networks' outputs is
            DeepProbLog's (it differentiates ``1 - sum p`` where a network's classes are
            complemented, so a table of probabilities or any head trains as in DeepProbLog);
            ``"normalized"``: the gradient of ``P(q | E)`` as a function of each output row
            normalized to sum 1 (no component along ``(1, ..., 1)``), without the extra
            forward pass per complemented block that DeepProbLog's costs. Both give the same
            values, and the same gradients w.r.t. the parameters of a softmax / log_softmax
            head (whose Jacobian maps ``(1, ..., 1)`` to zero).
        method: how ground queries become a circuit (``"auto"``, ``"direct"``, ``"sdd"``; see
            :meth:`~trilay.frontends.deepproblog.program.Program.compile`).
        minimize: PySDD's dynamic vtree minimization where an SDD is compiled.

    Raises:
        UnknownNetwork: a neural predicate names a network not in ``networks``.
        UnsupportedConstruct: see :class:`~trilay.frontends.deepproblog.program.Program`.
    """

    def __init__(
        self,
        program: str | os.PathLike | Program,
        networks: Mapping[str, torch.nn.Module] | None = None,
        *,
        outputs: str = "probs",
        check_outputs: bool = True,
        tolerance: float = 1e-4,
        gradient: str = "deepproblog",
        method: str = "auto",
        minimize: bool = False,
    ):
        super().__init__()
        for name, value, allowed in [
            ("outputs", outputs, OUTPUTS),
            ("gradient", gradient, GRADIENTS),
            ("method", method, METHODS),
        ]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.program = program if isinstance(program, Program) else Program(program)
        self.networks = torch.nn.ModuleDict(dict(networks or {}))
        for name, pred in self.program.neural.items():
            if name not in self.networks:
                raise UnknownNetwork(
                    f"line {pred.line}: neural predicate uses network {name!r}, not among the "
                    f"registered networks {sorted(self.networks)}"
                )
        self.outputs = outputs
        self.check_outputs = check_outputs
        self.tolerance = tolerance
        self.gradient = gradient
        self.method = method
        self.minimize = minimize
        self.circuits = torch.nn.ModuleList()
        self._where: dict[str, tuple[int, int]] = {}  # query text -> (circuit, column)

    # ------------------------------------------------------------------ compiling
    def prepare(self, queries: Sequence[str | Term]) -> None:
        """Ground and compile the queries not compiled yet, together, into one new circuit
        (call it with every query a training run will ask to get a single circuit)."""
        new = list(dict.fromkeys(t for t in map(_canonical, queries) if t not in self._where))
        if not new:
            return
        circuit = self.program.compile(
            [Term.from_string(t) for t in new], self.method, self.minimize
        )
        columns = {name: k for k, name in enumerate(circuit.names)}
        for text in new:
            self._where[text] = (len(self.circuits), columns[text])
        self.circuits.append(circuit.to(self._device()))

    def _device(self) -> torch.device:
        for p in self.networks.parameters():
            return p.device
        for circuit in self.circuits:
            return circuit.index.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ evaluation
    def log_prob(
        self,
        queries: Sequence[str | Term] | Sequence[Sequence[str | Term]],
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``log P(q_i | evidence)`` of each query: ``[batch]`` for a list of queries,
        ``[batch, k]`` for a list of ``k``-query lists. ``inputs[name]: [batch, ...]`` are the
        tensors the queries name, row ``i`` for query (list) ``i``."""
        nested = len(queries) > 0 and not isinstance(queries[0], (str, Term))
        rows = [list(q) for q in queries] if nested else [[q] for q in queries]
        width = len(rows[0]) if rows else 0
        if any(len(r) != width for r in rows):
            raise ShapeError("every batch row must ask the same number of queries")
        texts = [_canonical(q) for r in rows for q in r]
        inputs = dict(inputs or {})
        batch = len(rows)
        for name, tensor in inputs.items():
            if tensor.shape[0] != batch:
                raise ShapeError(
                    f"input {name!r} has {tensor.shape[0]} rows for a batch of {batch} queries"
                )
        if any(t not in self._where for t in texts):
            self.prepare(texts)
        where = [self._where[t] for t in texts]
        groups: dict[int, list[int]] = {}
        for flat, (c, _) in enumerate(where):
            groups.setdefault(c, []).append(flat)
        outputs = self._run_networks([self.circuits[c] for c in groups], inputs, batch)
        device = self.circuits[next(iter(groups))].index.device if groups else self._device()
        parts = []
        for c, flats in groups.items():
            circuit: QueryCircuit = self.circuits[c]
            columns = torch.tensor([where[f][1] for f in flats], device=device)
            if len(groups) == 1 and width == 1:  # the common case: no reindexing
                blocks = [outputs[b] for b in circuit.blocks]
            else:
                row = torch.tensor(flats, device=device) // width
                blocks = [
                    tuple(None if t is None else t[row] for t in outputs[b]) for b in circuit.blocks
                ]
            parts.append(
                circuit(
                    [log_p for log_p, _ in blocks],
                    columns,
                    [p for _, p in blocks],
                    self.gradient,
                )
            )
        if not parts:
            result = torch.empty(0, dtype=torch.get_default_dtype(), device=device)
        elif len(parts) == 1:
            result = parts[0]
        else:
            order = torch.tensor([f for flats in groups.values() for f in flats], device=device)
            result = torch.cat(parts)[torch.argsort(order)]
        return result.reshape(batch, width) if nested else result

    def forward(self, queries, inputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``P(q_i | evidence)``, shaped as :meth:`log_prob`."""
        return self.log_prob(queries, inputs).exp()

    def loss(self, queries, inputs=None, reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood ``-log P(q_i | evidence)`` of queries known to be true
        (``reduction``: ``"mean"``, ``"sum"`` or ``"none"``)."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        nll = -self.log_prob(queries, inputs)
        return nll if reduction == "none" else getattr(nll, reduction)()

    # ------------------------------------------------------------------ networks
    def _run_networks(
        self, circuits: list[QueryCircuit], inputs: Mapping[str, torch.Tensor], batch: int
    ) -> dict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, torch.Tensor]]:
        """Each network once over every input block the circuits need (the blocks stacked
        along the batch axis) -> ``{(network, input names): ([batch, width] log-probs,
        [batch, width] probs)}``."""
        needed: dict[str, list[tuple[str, ...]]] = {}
        for circuit in circuits:
            for network, names in circuit.blocks:
                if names not in needed.setdefault(network, []):
                    needed[network].append(names)
        result = {}
        for network, slots in needed.items():
            for names in slots:
                for name in names:
                    if name not in inputs:
                        raise UnknownInput(
                            f"network {network!r} needs input {name!r}; the call gave "
                            f"{sorted(inputs)}"
                        )
            args = [torch.cat([inputs[names[k]] for names in slots]) for k in range(len(slots[0]))]
            out = self.networks[network](*args)
            log_p, p = self._log_distribution(network, out, batch * len(slots))
            for i, names in enumerate(slots):
                part = slice(i * batch, (i + 1) * batch)
                result[(network, names)] = (log_p[part], None if p is None else p[part])
        return result

    def _log_distribution(
        self, network: str, out: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A network's output as ``[rows, width]`` log-probabilities and probabilities
        (``nn/2``: columns ``p``, ``1 - p``; ``None`` for log-probability outputs of ``nn/4``,
        computed where needed), checked when ``check_outputs``."""
        pred = self.program.neural[network]
        if not isinstance(out, torch.Tensor):
            raise NetworkOutputError(f"network {network!r} returned {type(out).__name__}")
        if not pred.categorical and out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        expected = (rows, pred.size) if pred.categorical else (rows,)
        if tuple(out.shape) != expected:
            raise NetworkOutputError(
                f"network {network!r} returned shape {tuple(out.shape)}; its declaration "
                f"(line {pred.line}) needs {expected}"
            )
        if not out.is_floating_point():
            raise NetworkOutputError(f"network {network!r} returned dtype {out.dtype}")
        log_p = out if self.outputs == "log_probs" else torch.log(out)
        if self.check_outputs:
            self._check(network, pred, out, log_p)
        if pred.categorical:  # probabilities: only DeepProbLog's gradient needs them
            return log_p, None if self.outputs == "log_probs" else out
        p = log_p.exp() if self.outputs == "log_probs" else out
        # log(1 - p) from what the network gave, not through exp(log p): exact near p = 1.
        log_not = log1mexp(out) if self.outputs == "log_probs" else torch.log1p(-out)
        return torch.stack([log_p, log_not], dim=1), torch.stack([p, 1 - p], dim=1)

    def _check(self, network, pred, out, log_p) -> None:
        p = log_p.exp() if self.outputs == "log_probs" else out
        if pred.categorical:
            total = p.sum(dim=1)
            bad = ((p < 0) | torch.isnan(p)).any() | ((total - 1).abs() > self.tolerance).any()
        else:
            bad = ((p < 0) | (p > 1 + self.tolerance) | torch.isnan(p)).any()
        # log(0) has no gradient to pass on: d/dp at p = 0 is lost in log space (NaN).
        tracked = self.outputs == "probs" and out.requires_grad and torch.is_grad_enabled()
        edge = (out == 0) if pred.categorical else (out == 0) | (out == 1)
        bad, zero = torch.stack([bad, edge.any() & tracked]).tolist()
        if zero:
            raise NetworkOutputError(
                f"network {network!r} (line {pred.line}) returned a probability of exactly "
                f"{'0' if pred.categorical else '0 or 1'} while gradients are tracked: its "
                "gradient is lost in log space; return log-probabilities (log_softmax, "
                "logsigmoid) with outputs='log_probs', which are exact there"
            )
        if bad:
            what = (
                f"a distribution over its {pred.size} classes"
                if pred.categorical
                else "a probability"
            )
            raise NetworkOutputError(
                f"network {network!r} (line {pred.line}) must return {what} per row "
                f"({self.outputs}: non-negative, summing to 1 within {self.tolerance}); got "
                f"min {p.min().item():.3g}, row sums {p.sum(dim=-1).min().item():.6g}.."
                f"{p.sum(dim=-1).max().item():.6g}"
            )


def evaluate(program: str | os.PathLike) -> dict[str, float]:
    """``{query: P(query | evidence)}`` for a ProbLog program without neural predicates
    (its ``query/1`` and ``evidence/1,2``), computed in float64 by one trilay circuit.

    Raises:
        UnsupportedConstruct: a construct outside probabilistic inference, or a neural predicate
            (use :class:`Model`).
        InconsistentEvidenceError: the evidence has probability 0.
        ProgramError: ProbLog rejects the program (parse or grounding error: unknown clause,
            non-ground query, negative cycle, ...), with ProbLog's message and position.
    """
    parsed = Program(program)
    if parsed.neural:
        first = next(iter(parsed.neural.values()))
        raise UnsupportedConstruct(
            "nn(...) in evaluate()", first.line, "programs with networks need Model"
        )
    circuit = parsed.compile()
    if not circuit.names:
        return {}
    log_p = circuit.log_prob_all([], 1, torch.float64)[0]
    if torch.isnan(log_p).any():  # -inf - -inf: the evidence has weight zero
        raise InconsistentEvidenceError("the evidence has probability 0")
    return {name: float(v) for name, v in zip(circuit.names, log_p.exp().tolist(), strict=True)}


def _canonical(query: str | Term) -> str:
    """A query's text as ProbLog prints its term (the cache key)."""
    return str(query) if isinstance(query, Term) else _canonical_text(str(query))


@functools.lru_cache(maxsize=1 << 16)
def _canonical_text(text: str) -> str:
    # Parsing costs about 0.25 ms a query, a third of a small training step: parse once.
    return str(Term.from_string(text))
