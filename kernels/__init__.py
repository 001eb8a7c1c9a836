"""trilay.kernels: the layer ops (gather + segment reduce) and trilay's error types.

``reference`` holds the plain-PyTorch op (the CPU path, the oracle and the scatter baseline);
the fused Triton kernels plug in beside it.
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
