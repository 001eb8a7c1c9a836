"""Vectorized helpers over CSR segments, shared by the loaders and the compiler."""

from __future__ import annotations

import numpy as np


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair ``(s, e)``, without a Python loop."""
    lengths = ends - starts
    out_start = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(out_start - starts, lengths)
