"""Semirings: which reduction an OR layer and an AND layer perform, and their constants.

===========  ===========  ============  ======  =====  ===============================
name         OR (sum)     AND (product)  zero    one    default complement of ``pos``
===========  ===========  ============  ======  =====  ===============================
``real``     sum          prod          0       1      ``1 - pos``
``log``      logsumexp    sum           -inf    0      ``log1mexp(pos) = log(1 - e^pos)``
``mpe``      max          prod          0       1      ``1 - pos``
``mpe_log``  max          sum           -inf    0      ``log1mexp(pos)``
``godel``    max          min           0       1      ``1 - pos``
===========  ===========  ============  ======  =====  ===============================

``mpe``, ``mpe_log`` and ``godel`` take a max over models, so a variable a branch does not
mention must still contribute its better literal: they need a smoothed circuit.

The fuzzy logics evaluate a formula *as written* (truth-functionally, no smoothing needed):

=====================  ===================  ==========================
name                   OR (t-conorm)        AND (t-norm)
=====================  ===================  ==========================
``fuzzy_godel``        max                  min
``fuzzy_product``      ``1 - prod(1 - x)``  prod
``fuzzy_lukasiewicz``  ``min(1, sum)``      ``max(0, sum - (n - 1))``
=====================  ===================  ==========================

with negation ``1 - x``; compile their formulas with ``smooth=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from trilay.kernels.reference import apply_function, jvp_in_subclass, needs_grad

from .errors import SemiringError


@jvp_in_subclass
class _Log1mexp(torch.autograd.Function):
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends, NaN-free backward.

    The derivative ``-exp(x) / (1 - exp(x))`` is infinite at ``x = 0`` (probability 1), where
    the complement is ``-inf`` and every gradient reaching it is 0; the backward returns 0
    there instead of ``0 * inf = NaN``. That drops the complement's share of
    ``d out / d pos`` at exactly ``pos = 0``: pass ``neg`` explicitly (for instance
    ``logsigmoid(-logits)``) when weights reach probability 1 and that share matters.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return _log1mexp_value(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)
        ctx.save_for_forward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        ratio = torch.exp(x - y)  # p / (1 - p); inf at p = 1
        return torch.where(grad == 0, torch.zeros_like(grad), -grad * ratio)

    @staticmethod
    def jvp(ctx, x_t):
        x, y = ctx.saved_tensors
        return torch.where(x_t == 0, torch.zeros_like(x_t), -x_t * torch.exp(x - y))


def _log1mexp_value(x: torch.Tensor) -> torch.Tensor:
    # expm1 near 0 and log1p far from it keep full precision at both ends.
    return torch.where(
        x > -math.log(2.0),
        torch.log(-torch.expm1(torch.minimum(x, torch.zeros_like(x)))),
        torch.log1p(-torch.exp(x)),
    )


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))``: the log-space complement of a log-probability."""
    if needs_grad(x):
        return apply_function(_Log1mexp, x)
    return _log1mexp_value(x)  # no autograd node: a custom Function costs tens of µs a call


@dataclass(frozen=True)
class Semiring:
    """A commutative semiring as trilay evaluates it.

    ``sum`` and ``prod`` name the reductions of OR and AND layers (see
    :data:`trilay.kernels.reference.REDUCTIONS`); ``zero``/``one`` are the values of false/true.
    """

    name: str
    sum: str
    prod: str
    zero: float
    one: float
    log_space: bool
    needs_smoothing: bool

    def complement(self, pos: torch.Tensor) -> torch.Tensor:
        """The default negative-literal weight for positive-literal weight ``pos``."""
        return log1mexp(pos) if self.log_space else 1.0 - pos


SEMIRINGS: dict[str, Semiring] = {
    s.name: s
    for s in (
        Semiring("real", "sum", "prod", 0.0, 1.0, log_space=False, needs_smoothing=False),
        Semiring("log", "logsumexp", "sum", -math.inf, 0.0, log_space=True, needs_smoothing=False),
        Semiring("mpe", "max", "prod", 0.0, 1.0, log_space=False, needs_smoothing=True),
        Semiring("mpe_log", "max", "sum", -math.inf, 0.0, log_space=True, needs_smoothing=True),
        Semiring("godel", "max", "min", 0.0, 1.0, log_space=False, needs_smoothing=True),
        Semiring("fuzzy_godel", "max", "min", 0.0, 1.0, log_space=False, needs_smoothing=False),
        Semiring(
            "fuzzy_product", "prob_sum", "prod", 0.0, 1.0, log_space=False, needs_smoothing=False
        ),
        Semiring(
            "fuzzy_lukasiewicz",
            "lukasiewicz_or",
            "lukasiewicz_and",
            0.0,
            1.0,
            log_space=False,
            needs_smoothing=False,
        ),
    )
}


def get_semiring(semiring: str | Semiring) -> Semiring:
    """Look a semiring up by name (or pass a :class:`Semiring` through)."""
    if isinstance(semiring, Semiring):
        return semiring
    try:
        return SEMIRINGS[semiring]
    except (KeyError, TypeError):
        raise SemiringError(
            f"unknown semiring {semiring!r}; expected one of {sorted(SEMIRINGS)}"
        ) from None
