"""trilay.kernels: the layer ops (gather + segment reduce) and trilay's error types.

``reference`` holds the plain-PyTorch op (the oracle, ``backend="torch"`` and the scatter
baseline); ``layer`` the fused Triton kernels (CUDA) and ``cpu`` the fused numba kernels (the
CPU path), each imported where it is used.
"""

from . import errors
from .reference import (
    REDUCTIONS,
    circuit_forward_torch,
    gather_rows,
    layer_forward_torch,
    segment_reduce_torch,
)

__all__ = [
    "REDUCTIONS",
    "circuit_forward_torch",
    "gather_rows",
    "layer_forward_torch",
    "segment_reduce_torch",
    "errors",
]
