"""trilay.engine: the circuit IR, its compiler, and the compiled circuit as a torch module.

Typical use::

    from trilay.engine import Circuit
    c = Circuit()
    c.add_sdd_file("circuit.sdd", "circuit.vtree")
    module = c.compile().module("log")
    log_prob = module(log_weights)          # [..., V] -> [..., num_roots]
"""

from . import errors
from .circuit import MAX_VARS, Circuit
from .compiled import CompiledCircuit
from .module import CircuitModule
from .naive import evaluate_naive
from .semiring import SEMIRINGS, Semiring, get_semiring, log1mexp

__all__ = [
    "Circuit",
    "MAX_VARS",
    "CompiledCircuit",
    "CircuitModule",
    "Semiring",
    "SEMIRINGS",
    "get_semiring",
    "log1mexp",
    "evaluate_naive",
    "errors",
]
