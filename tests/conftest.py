"""Shared oracles for the tests: brute-force enumeration of models and small formula makers.

Nothing here uses trilay's compiler: the oracles enumerate assignments directly.
"""

from __future__ import annotations

import os

import torch

# Triton kernels run on the CPU in Triton's interpreter; it must be chosen before triton is
# imported. With a GPU the real kernels run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402
import pathlib
import random

import pytest  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"

#: Where tests of the Triton backend put their tensors: the GPU when there is one (the real
#: kernels), else the CPU (the interpreter).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_cnf(num_vars: int, num_clauses: int, seed: int, width: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    clauses = []
    for _ in range(num_clauses):
        vs = rng.sample(range(1, num_vars + 1), min(width, num_vars))
        clauses.append([v if rng.random() < 0.5 else -v for v in vs])
    return clauses


def all_assignments(num_vars: int) -> torch.Tensor:
    """``[2^V, V]`` bool, every assignment."""
    return torch.tensor(
        list(itertools.product([False, True], repeat=num_vars)), dtype=torch.bool
    ).reshape(-1, num_vars)


def models_of_cnf(clauses, num_vars: int) -> torch.Tensor:
    """``[M, V]`` bool: the assignments that satisfy every clause."""
    x = all_assignments(num_vars)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for clause in clauses:
        sat = torch.zeros_like(ok)
        for lit in clause:
            sat |= x[:, abs(lit) - 1] if lit > 0 else ~x[:, abs(lit) - 1]
        ok &= sat
    return x[ok]


def brute_force(
    models: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, semiring: str
) -> torch.Tensor:
    """The semiring's value of the formula with these models: ``[B, V]`` weights -> ``[B]``.

    real: sum over models of the product of literal weights; log: the same in log space;
    mpe / mpe_log: max instead of sum; godel: max over models of the min literal weight.
    """
    if models.shape[0] == 0:
        zero = float("-inf") if semiring in ("log", "mpe_log") else 0.0
        # 0 * (a finite stand-in for pos): connected to pos, zero gradient, NaN-free at -inf.
        return torch.full(pos.shape[:1], zero, dtype=pos.dtype) + 0 * pos.nan_to_num(0, 0, 0).sum(
            -1
        )
    w = torch.where(models[None], pos[:, None, :], neg[:, None, :])  # [B, M, V]
    if semiring == "real":
        return w.prod(-1).sum(-1)
    if semiring == "log":
        return torch.logsumexp(w.sum(-1), dim=-1)
    if semiring == "mpe":
        return w.prod(-1).amax(-1)
    if semiring == "mpe_log":
        return w.sum(-1).amax(-1)
    if semiring == "godel":
        return w.amin(-1).amax(-1) if w.shape[-1] else torch.ones(w.shape[:1], dtype=w.dtype)
    raise ValueError(semiring)


def shannon_circuit(circuit, models: torch.Tensor, num_vars: int) -> int:
    """A decision-tree d-DNNF of the function with these models, built with the programmatic
    API; variables the function does not depend on are skipped (so it is not smooth)."""
    table = {tuple(m.tolist()) for m in models}
    memo: dict[tuple, int] = {}

    def build(prefix: tuple[bool, ...]) -> int:
        rest = num_vars - len(prefix)
        sub = frozenset(a[len(prefix) :] for a in table if a[: len(prefix)] == prefix)
        key = (len(prefix), sub)
        if key in memo:
            return memo[key]
        if not sub:
            node = circuit.false()
        elif len(sub) == 2**rest:
            node = circuit.true()
        else:
            v = len(prefix) + 1
            hi, lo = build(prefix + (True,)), build(prefix + (False,))
            if {a[1:] for a in sub if a[0]} == {a[1:] for a in sub if not a[0]}:
                node = hi  # the function does not depend on v here
            else:
                node = circuit.disjoin(
                    [
                        circuit.conjoin([circuit.literal(v), hi]),
                        circuit.conjoin([circuit.literal(-v), lo]),
                    ]
                )
        memo[key] = node
        return node

    return build(())


def random_weights(
    batch: int, num_vars: int, seed: int, dtype=torch.float64, extremes: bool = True
):
    """Probabilities in (0, 1), with exact 0s and 1s mixed in when ``extremes``."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(batch, num_vars, generator=g, dtype=dtype)
    if extremes and num_vars:
        mask = torch.rand(batch, num_vars, generator=g) < 0.15
        p = torch.where(mask, torch.randint(0, 2, (batch, num_vars), generator=g).to(dtype), p)
    return p


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA
