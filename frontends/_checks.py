"""Input checks shared by the frontends."""

from __future__ import annotations

import torch
from trilay.engine.errors import ValueRangeError


def check_unit_interval(x: torch.Tensor, what: str, hint: str = "") -> None:
    """Raise :class:`~trilay.engine.errors.ValueRangeError` unless every value of ``x`` lies in
    ``[0, 1]`` (NaN does not); the message names ``what``, the range and what was found.

    One elementwise comparison and one reduction; on a CUDA tensor reading the result waits for
    the device (a host sync), which is why the callers have a ``validate=`` switch.
    """
    inside = (x >= 0) & (x <= 1)
    if bool(inside.all()):
        return
    outside = x.detach()[~inside]
    nan = torch.isnan(outside)
    found = []
    if (~nan).any():
        numbers = outside[~nan].double()
        found.append(
            f"{_count(numbers.numel(), 'value')} in [{numbers.min().item():.6g}, "
            f"{numbers.max().item():.6g}]"
        )
    if nan.any():
        found.append(_count(int(nan.sum()), "NaN"))
    raise ValueRangeError(f"{what} must lie in [0, 1]; got {' and '.join(found)} outside it{hint}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 or noun == "NaN" else f"{n} {noun}s"
