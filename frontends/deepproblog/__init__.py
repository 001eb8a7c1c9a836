"""trilay.frontends.deepproblog: DeepProbLog programs on trilay circuits.

ProbLog parses, grounds and compiles (SDD, through PySDD); trilay evaluates the compiled
queries as one batched, differentiable circuit in log space, the networks' outputs as literal
weights::

    from trilay.frontends.deepproblog import Model, evaluate

    model = Model(program_text, networks={"mnist_net": net})
    p = model(["addition(a, b, 7)", "addition(a, b, 3)"], {"a": images_a, "b": images_b})  # [2]
    loss = model.loss(queries, inputs)  # -log P, mean over the batch

    evaluate("0.3::a. 0.5::b. q :- a, b. query(q).")  # {'q': 0.15}
"""

from .errors import (
    InconsistentEvidenceError,
    InvalidProbability,
    NetworkOutputError,
    ProgramError,
    UnknownInput,
    UnknownNetwork,
    UnsupportedConstruct,
)
from .model import Model, evaluate
from .program import Program

__all__ = [
    "Model",
    "evaluate",
    "Program",
    "UnsupportedConstruct",
    "UnknownNetwork",
    "UnknownInput",
    "NetworkOutputError",
    "InvalidProbability",
    "InconsistentEvidenceError",
    "ProgramError",
]
