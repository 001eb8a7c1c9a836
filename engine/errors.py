"""The trilay exception hierarchy (defined in :mod:`trilay.kernels.errors`, re-exported here)."""

from trilay.kernels.errors import (  # noqa: F401
    CircuitError,
    DeviceError,
    DTypeError,
    ParseError,
    SemiringError,
    ShapeError,
    TrilayError,
)

__all__ = [
    "TrilayError",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "SemiringError",
    "CircuitError",
    "ParseError",
]
