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
