"""trilay's exception hierarchy.

It lives in the lowest package (``trilay.kernels``) so that kernels, engine and frontends raise
the same types; ``trilay.engine.errors`` re-exports it. Every error subclasses
:class:`TrilayError` and the builtin it refines, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TrilayError(Exception):
    """Base class of every error trilay raises on purpose."""


class ShapeError(TrilayError, ValueError):
    """A tensor has the wrong shape (e.g. literal weights ``[..., V]`` with the wrong ``V``)."""


class DTypeError(TrilayError, TypeError):
    """A tensor has a dtype trilay does not evaluate (integers, complex, ...)."""


class DeviceError(TrilayError, ValueError):
    """Tensors that must share a device do not, or the requested backend cannot run there."""


class SemiringError(TrilayError, ValueError):
    """Unknown semiring, or a semiring the compiled circuit cannot serve correctly."""


class CircuitError(TrilayError, ValueError):
    """A circuit is malformed: empty, cyclic, a root that is not a node, a literal out of range."""


class ParseError(TrilayError, ValueError):
    """A circuit or formula file is malformed; the message names the file and the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class TransformError(TrilayError, NotImplementedError):
    """A torch transform the chosen backend does not serve (forward-mode AD, a derivative of
    a derivative); the message names the backend that does."""


class ValueRangeError(TrilayError, ValueError):
    """A tensor holds values outside the range its meaning allows (probabilities or truth
    values outside ``[0, 1]``, NaN among them); the message names the range and what was
    found."""

    @classmethod
    def found(cls, name: str, requirement: str, outside) -> ValueRangeError:
        """The error for the values ``outside`` (a 1-D tensor or array, not empty) of the
        weights ``name`` that break ``requirement`` (``"must hold ..."``)."""
        count = len(outside)
        return cls(
            f"{name} {requirement}; got {count} value{'s' * (count != 1)} in "
            f"[{float(outside.min()):.6g}, {float(outside.max()):.6g}]"
        )


class MemoryBudgetError(TrilayError, MemoryError):
    """An evaluation would need more memory than the user's budget allows."""

    def __init__(self, asked: int, allowed: int, what: str = "this evaluation"):
        super().__init__(
            f"{what} needs about {asked:,} bytes but the memory budget allows {allowed:,} bytes"
        )
        self.asked = asked
        self.allowed = allowed


__all__ = [
    "TrilayError",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "SemiringError",
    "CircuitError",
    "ParseError",
    "MemoryBudgetError",
    "TransformError",
    "ValueRangeError",
]
