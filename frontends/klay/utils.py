"""KLay's torch utilities (``klay.torch.utils``) on trilay's semirings."""

from __future__ import annotations

import math

import torch
from trilay.engine.semiring import log1mexp as _log1mexp

from .modules import check_eps

#: ``-log(2)``: where an accurate ``log(1 - exp(x))`` switches from ``expm1`` to ``log1p``.
CUTOFF = -math.log(2)


def log1mexp(x: torch.Tensor, eps: float = 0) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, exact at both ends (``-inf`` at ``x = 0``) with a
    NaN-free gradient: trilay's :func:`trilay.engine.log1mexp`. KLay adds ``eps`` inside the
    log (default ``1e-12``); here a non-zero ``eps`` is ignored with a warning."""
    check_eps(eps, stacklevel=3)
    return _log1mexp(x)


def negate_real(x: torch.Tensor, eps: float = 0) -> torch.Tensor:
    """``1 - x`` (``eps`` is unused, as in KLay)."""
    return 1 - x


def unroll_ixs(offsets: torch.Tensor) -> torch.Tensor:
    """CSR ``offsets: [n + 1]`` -> each edge's segment ``[offsets[-1]]`` (``0`` repeated
    ``offsets[1] - offsets[0]`` times, then ``1``, ...)."""
    counts = torch.diff(offsets)
    return torch.arange(counts.numel(), device=offsets.device).repeat_interleave(counts)


__all__ = ["CUTOFF", "log1mexp", "negate_real", "unroll_ixs"]
