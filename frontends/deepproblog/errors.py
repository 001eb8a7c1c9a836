"""Errors of the DeepProbLog frontend (all :class:`~trilay.engine.errors.TrilayError`)."""

from __future__ import annotations

from trilay.engine.errors import ShapeError, TrilayError


class UnsupportedConstruct(TrilayError, ValueError):
    """The program uses a construct the frontend does not evaluate; names it and its line."""

    def __init__(self, construct: str, line: int | None = None, detail: str = ""):
        where = f"line {line}: " if line is not None else ""
        super().__init__(
            f"{where}unsupported construct {construct}" + (f": {detail}" if detail else "")
        )
        self.construct = construct
        self.line = line


class UnknownNetwork(TrilayError, KeyError):
    """A neural predicate names a network that was not registered with the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownInput(TrilayError, KeyError):
    """A ground neural atom names a tensor input that the call did not provide."""

    def __str__(self) -> str:
        return str(self.args[0])


class NetworkOutputError(ShapeError):
    """A network's output is not a distribution over its declared domain (size, sign, sum)."""


class InvalidProbability(TrilayError, ValueError):
    """A probabilistic fact or annotated disjunction has a weight outside [0, 1]."""


class InconsistentEvidenceError(TrilayError, ValueError):
    """The evidence has probability zero, so no conditional probability exists."""


class ProgramError(TrilayError, ValueError):
    """ProbLog rejected the program while parsing or grounding it (a syntax error, an unknown
    clause, a non-ground query, a cycle through negation, ...).

    The message is ProbLog's own, with its position; ``kind`` is the name of ProbLog's error
    class (``"ParseError"``, ``"UnknownClause"``, ...), ``line`` and ``column`` its position in
    the program text (``None`` where ProbLog gives none), ``problog_error`` ProbLog's exception.
    """

    def __init__(self, error: Exception):
        self.problog_error = error
        self.kind = getattr(error, "errtype", None) or type(error).__name__
        location = getattr(error, "location", None)
        self.line, self.column = (location[1], location[2]) if location else (None, None)
        message = getattr(error, "message", None) or str(error) or "(no message)"
        super().__init__(f"ProbLog {self.kind}: {message}")
