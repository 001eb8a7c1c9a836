"""The plain-PyTorch layer op: gather + segment reduce, differentiable by autograd.

This is trilay's reference implementation (the oracle the fused kernels are tested against),
the engine's ``backend="torch"`` (the path with forward-mode AD and second derivatives), and the
"scatter" baseline of the benchmarks (what KLay does: one index and one segment reduction per
layer).

Layout: node values are ``[num_nodes, batch]`` (batch contiguous). A layer is a CSR over the
previous layer: node ``i`` reduces the rows ``child[offsets[i]:offsets[i+1]]`` of the previous
layer. ``offsets`` is ascending, starts at 0 and ends at ``len(child)``; compiled circuits have
no empty segment, and an empty segment yields the reduction's identity here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.autograd import forward_ad

from .errors import SemiringError

#: The segment reductions trilay evaluates. The last three are the fuzzy forms:
#: ``lukasiewicz_and = max(0, sum - (n - 1))``, ``lukasiewicz_or = min(1, sum)``,
#: ``prob_sum = 1 - prod(1 - x)``.
REDUCTIONS = (
    "sum",
    "prod",
    "logsumexp",
    "max",
    "min",
    "lukasiewicz_and",
    "lukasiewicz_or",
    "prob_sum",
)


def apply_function(function: type[torch.autograd.Function], *args):
    """``function.apply(*args)`` for a new-style autograd Function (``forward`` without ctx,
    no default arguments, all arguments passed positionally), with its forward-mode rule
    (``function.with_jvp``, see :func:`jvp_in_subclass`) outside ``torch.compile``.

    Without a ``torch.func`` transform, torch's ``Function.apply`` binds the arguments to
    ``forward``'s signature and walks them as a pytree (about 50 µs a call) before calling the
    C++ ``apply``, which then makes the same autograd node: this calls it directly.
    """
    if torch.compiler.is_compiling():
        return function.apply(*args)
    function = getattr(function, "with_jvp", function)
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)


def jvp_in_subclass(function: type[torch.autograd.Function]):
    """Class decorator: moves the Function's custom ``jvp`` into a subclass,
    ``function.with_jvp``, which :func:`apply_function` applies outside ``torch.compile``.

    Dynamo refuses to trace a Function that defines a custom ``jvp`` (and resolves a Function
    only by its name, not through an attribute), so the name is the Function without it;
    forward mode is not traced by ``torch.compile`` anyway.
    """
    jvp = function.__dict__["jvp"]
    del function.jvp
    function.with_jvp = type(
        f"{function.__name__}WithJvp", (function,), {"jvp": jvp, "__doc__": function.__doc__}
    )
    return function


def outside_weight_range(x, log_space: bool):
    """Mask of the literal weights ``x`` (a tensor or a numpy array) outside their range:
    ``[-inf, 0]`` with ``log_space``, else ``[0, 1]``. NaN is inside: it compares false with
    every bound and propagates through the circuit instead."""
    return x > 0 if log_space else (x < 0) | (x > 1)


def needs_grad(t: torch.Tensor) -> bool:
    """Whether a derivative may run through ``t``: it requires grad, or a ``torch.func``
    transform is active (a vmapped tensor reports ``requires_grad=False`` even when the tensor
    it wraps requires grad, as under ``grad(vmap(f))`` or autograd through ``vmap``), or a
    forward-mode dual level is open (``torch.autograd.forward_ad``: torch's own scatter
    product drops the tangent there, silently).

    A custom autograd Function costs tens of microseconds per call even without autograd: the
    reductions use theirs only where this holds.
    """
    if torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and t.requires_grad


def segment_reduce_torch(
    src: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    segment: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[i] = reduce(src[offsets[i]:offsets[i+1]])`` for ``src: [E, B]`` -> ``[n, B]``.

    ``segment: [E]`` is each row's segment (``i`` for the rows of segment ``i``; then the rows
    may come in any order, ``offsets`` giving only the segments' sizes); it is derived from
    ``offsets`` when omitted. The rows fold into their segments with ``index_add`` /
    ``scatter_reduce``, which on the CPU beat ``torch.segment_reduce`` at batch > 1.

    Exact gradients with zeros (``prod``: per-segment zero counts, see :class:`_SegmentProd`)
    and with ``-inf`` (``logsumexp`` of an all ``-inf`` segment is ``-inf`` with gradient 0,
    not NaN). ``max``/``min`` split the gradient evenly between tied children. Every
    reduction and its derivatives compose with ``torch.func`` (``vmap``, ``grad``,
    ``vmap(grad)``, ``jvp``, ``hessian``) and make no host sync; ``prod`` is exact with zeros
    to second order.
    """
    if reduce not in REDUCTIONS:
        raise SemiringError(f"unknown reduction {reduce!r}; expected one of {REDUCTIONS}")
    n = offsets.numel() - 1
    if segment is None:
        lengths = offsets[1:] - offsets[:-1]
        segment = torch.repeat_interleave(
            torch.arange(n, device=src.device), lengths, output_size=src.shape[0]
        )
    segment = segment.long()  # a no-op for the int64 ids compiled layers carry
    if reduce == "logsumexp":
        return _logsumexp(src, segment, n)
    if reduce == "lukasiewicz_and":
        fan_in = (offsets[1:] - offsets[:-1]).to(src.dtype).unsqueeze(1)
        return torch.clamp(_fold(src, segment, n, "sum") - (fan_in - 1), min=0)
    if reduce == "lukasiewicz_or":
        return torch.clamp(_fold(src, segment, n, "sum"), max=1)
    if reduce == "prob_sum":
        return 1 - _fold(1 - src, segment, n, "prod")
    return _fold(src, segment, n, reduce)


_SCATTER = {"prod": ("prod", 1.0), "max": ("amax", float("-inf")), "min": ("amin", float("inf"))}


def _fold(src: torch.Tensor, segment: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """``out[segment[e]] (op)= src[e]`` from the reduction's identity, ``[n, B]``."""
    if reduce == "prod" and needs_grad(src):
        # torch's own scatter product backward syncs with the host (.item()) and so fails
        # under vmap(grad); this one counts zeros instead.
        return apply_function(_SegmentProd, src, segment, n)
    return _scatter(src, segment, n, reduce)


def _scatter(src: torch.Tensor, segment: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """:func:`_fold` with torch's own autograd formulas."""
    shape = (n, src.shape[1])
    if reduce == "sum":
        return src.new_zeros(shape).index_add(0, segment, src)
    op, identity = _SCATTER[reduce]
    index = segment.unsqueeze(1).expand_as(src)
    return src.new_full(shape, identity).scatter_reduce(0, index, src, op, include_self=True)


def _prod_parts(src: torch.Tensor, segment: torch.Tensor, n: int):
    """``(is_zero, factors, a, z)`` of the segment product: ``is_zero`` 1.0 where ``src`` is 0,
    ``factors`` the factors with the zeros replaced by 1 (exactly: ``x + 0 = x``), ``a[i]`` the
    product of segment ``i``'s non-zero factors and ``z[i]`` its zero count (exact)."""
    is_zero = (src == 0).to(src.dtype)
    factors = src + is_zero
    return (
        is_zero,
        factors,
        _scatter(factors, segment, n, "prod"),
        _scatter(is_zero, segment, n, "sum"),
    )


def _others_product(src: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """For each row ``e``, the product of the other factors of its segment (zero factors
    counted as 1), in float64, correct to rounding whenever it is representable: computed as
    a product of mantissas (``frexp``, centred on 1 so that a long product stays in range) and
    a sum of exponents, not as ``a / src[e]``, which is 0 or inf once ``a`` under- or
    overflows (``[1e-30, 1e-30]`` in float32 has the derivatives ``[1e-30, 1e-30]``, though
    their product is 0 there)."""
    factors = torch.where(src == 0, torch.ones_like(src), src).double()
    mantissa, exponent = torch.frexp(factors)
    low = mantissa.abs() < math.sqrt(0.5)
    mantissa = torch.where(low, mantissa * 2, mantissa)
    exponent = (exponent - low.to(exponent.dtype)).double()
    mantissas = _scatter(mantissa, segment, n, "prod").index_select(0, segment) / mantissa
    scale = _scatter(exponent, segment, n, "sum").index_select(0, segment) - exponent
    half = torch.floor(scale / 2)  # two steps: 2^scale alone can leave the float64 range
    return mantissas * torch.exp2(half) * torch.exp2(scale - half)


def _prod_vjp(grad: torch.Tensor, src: torch.Tensor, segment: torch.Tensor, n: int):
    """``grad[segment[e]] * d out / d src[e]``: the product of the other factors
    (:func:`_others_product`), kept where no other factor of the segment is zero, i.e. where
    the segment's zero count equals the factor's own."""
    is_zero = (src == 0).to(src.dtype)
    zeros = _scatter(is_zero, segment, n, "sum")
    kept = zeros.index_select(0, segment) == is_zero
    others = _others_product(src, segment, n).to(src.dtype)
    return torch.where(kept, grad.index_select(0, segment) * others, 0.0)


def _prod_hvp(v: torch.Tensor, src: torch.Tensor, segment: torch.Tensor, n: int):
    """``sum over e != k of v[e] * prod(src[j] for j not in {e, k})`` for each edge ``k`` (over
    its segment): the product's Hessian (symmetric) times ``v``, exact with zeros.

    With ``S`` the sum of ``v / x`` over the non-zero factors and ``V0`` the sum of ``v`` over
    the zero ones: a non-zero ``x_k`` gets ``a / x_k * (S - v_k / x_k)`` if ``z = 0``,
    ``a / x_k * V0`` if ``z = 1``, else 0; a zero one gets ``a * S`` if ``z = 1``,
    ``a * (V0 - v_k)`` if ``z = 2``, else 0.
    """
    is_zero, factors, a, z = _prod_parts(src, segment, n)
    z, a = z.index_select(0, segment), a.index_select(0, segment)
    w = v / factors
    s = _scatter(w - w * is_zero, segment, n, "sum").index_select(0, segment)
    v0 = _scatter(v * is_zero, segment, n, "sum").index_select(0, segment)
    nonzero_case = torch.where(z == 0, s - w, torch.where(z == 1, v0, 0.0)) * a / factors
    zero_case = torch.where(z == 1, s, torch.where(z == 2, v0 - v, 0.0)) * a
    return torch.where(is_zero == 1, zero_case, nonzero_case)


@jvp_in_subclass
class _SegmentProd(torch.autograd.Function):
    """The segment product ``out[i] = prod(src[e] for segment[e] = i)`` with derivatives that
    are exact with zeros.

    With ``z[i]`` segment ``i``'s zero count, ``d out[i] / d src[e]`` is the product of the
    other factors if ``z = 0``, or ``z = 1`` and ``src[e]`` is the zero; else 0
    (:func:`_prod_vjp`; the forward mode sums the same terms): never a division by zero, no
    NaN, and right where the product itself under- or overflows. The derivative is computed
    in the backward, so the forward costs what the plain scatter product does. A
    backward that will itself be differentiated (``create_graph``, ``torch.func``) runs as
    :class:`_SegmentProdGrad`, exact with zeros to second order.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(src, segment, n):
        return _scatter(src, segment, n, "prod")

    @staticmethod
    def setup_context(ctx, inputs, output):
        src, segment, n = inputs
        ctx.save_for_backward(src, segment)
        ctx.save_for_forward(src, segment)
        ctx.n = n

    @staticmethod
    def backward(ctx, grad):
        src, segment = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True or torch.func: differentiated again
            return apply_function(_SegmentProdGrad, grad, src, segment, ctx.n), None, None
        return _prod_vjp(grad, src, segment, ctx.n), None, None

    @staticmethod
    def jvp(ctx, src_t, segment_t, n_t):
        src, segment = ctx.saved_tensors
        others = _prod_vjp(src.new_ones(ctx.n, src.shape[1]), src, segment, ctx.n)
        return _scatter(src_t * others, segment, ctx.n, "sum")


@jvp_in_subclass
class _SegmentProdGrad(torch.autograd.Function):
    """:func:`_prod_vjp` as a Function whose own derivatives (the product's second
    derivatives, :func:`_prod_hvp`) are exact with zeros."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, src, segment, n):
        return _prod_vjp(grad, src, segment, n)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, src, segment, n = inputs
        ctx.save_for_backward(grad, src, segment)
        ctx.save_for_forward(grad, src, segment)
        ctx.n = n

    @staticmethod
    def backward(ctx, v):
        grad, src, segment = ctx.saved_tensors
        others = _prod_vjp(torch.ones_like(grad), src, segment, ctx.n)
        grad_grad = _scatter(v * others, segment, ctx.n, "sum")
        grad_src = grad.index_select(0, segment) * _prod_hvp(v, src, segment, ctx.n)
        return grad_grad, grad_src, None, None

    @staticmethod
    def jvp(ctx, grad_t, src_t, segment_t, n_t):
        grad, src, segment = ctx.saved_tensors
        out_t = torch.zeros_like(src)
        if grad_t is not None:
            out_t = out_t + _prod_vjp(grad_t, src, segment, ctx.n)
        if src_t is not None:
            out_t = out_t + grad.index_select(0, segment) * _prod_hvp(src_t, src, segment, ctx.n)
        return out_t


def _logsumexp(src: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    # Shift by the segment max (constant w.r.t. autograd: logsumexp's gradient does not depend
    # on the shift). All -inf segments get shift 0 so that x - shift stays -inf, not NaN.
    shift = _fold(src.detach(), segment, n, "max").nan_to_num(neginf=0.0)
    total = _fold(torch.exp(src - shift.index_select(0, segment)), segment, n, "sum")
    log_total = apply_function(_LogOfSum, total) if needs_grad(total) else torch.log(total)
    return log_total + shift


@jvp_in_subclass
class _LogOfSum(torch.autograd.Function):
    """``log(total)`` for ``total >= 0`` whose backward is 0 where ``total = 0``.

    An all ``-inf`` segment has ``total = 0`` and every term's ``exp`` is 0: the plain
    ``1 / total`` derivative would make that ``inf * 0 = NaN``; the true gradient is 0.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(total):
        return torch.log(total)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (total,) = ctx.saved_tensors
        return torch.where(total > 0, grad / total, torch.zeros_like(grad))

    @staticmethod
    def jvp(ctx, total_t):
        (total,) = ctx.saved_tensors
        return torch.where(total > 0, total_t / total, torch.zeros_like(total_t))


def layer_forward_torch(
    values: torch.Tensor,
    child: torch.Tensor,
    offsets: torch.Tensor,
    reduce: str,
    segment: torch.Tensor | None = None,
) -> torch.Tensor:
    """One circuit layer: ``out[i] = reduce(values[child[offsets[i]:offsets[i+1]]])``.

    Args:
        values: ``[n_prev, B]`` the previous layer's node values.
        child: ``[E]`` int32/int64 row of ``values`` each edge reads (int64 on the CPU: the
            backward's ``index_add`` is several times slower with int32 ids).
        offsets: ``[n + 1]`` int32/int64 CSR offsets of each node's edges.
        reduce: one of :data:`REDUCTIONS`.
        segment: optional ``[E]`` node of each edge, see :func:`segment_reduce_torch`.

    Returns:
        ``[n, B]`` in ``values.dtype``.
    """
    # index_select's backward is an index_add over the edges: on the CPU it is sequential (so
    # deterministic) and measured faster than a segment sum over the transposed CSR (with
    # int64 ids).
    return segment_reduce_torch(values.index_select(0, child), offsets, reduce, segment)


class TorchGather(NamedTuple):
    """Rows gathered from several tensors, ``cat([tensors[s].index_select(0, index) for s,
    index in parts])``, then put in order by ``order`` (``None``: the parts' order is the
    order wanted)."""

    parts: tuple[tuple[int, torch.Tensor], ...]
    order: torch.Tensor | None = None


def gather_rows(tensors: Sequence[torch.Tensor], gather: TorchGather) -> torch.Tensor:
    """The rows ``gather`` names, ``[rows, B]``."""
    pieces = [tensors[s].index_select(0, index) for s, index in gather.parts]
    rows = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return rows if gather.order is None else rows.index_select(0, gather.order)


class TorchLayer(NamedTuple):
    """One layer for :func:`circuit_forward_torch`: its nodes' children gathered from the
    tensors of lower layers (``gather``, one part per layer read), folded into the nodes by
    ``segment`` (``[E]`` int64, each gathered row's node, in gather order); ``offsets`` is the
    layer's CSR (its node count and fan-ins) and ``reduce`` its reduction."""

    gather: TorchGather
    offsets: torch.Tensor
    segment: torch.Tensor
    reduce: str


def circuit_forward_torch(
    inputs: torch.Tensor, layers: Sequence[TorchLayer], roots: TorchGather
) -> torch.Tensor:
    """Every layer in order, then the roots: ``inputs: [n_0, B]`` (the leaves) ->
    ``[num_roots, B]``. Each layer is a tensor of its own and reads its children from any lower
    one (one ``index_select`` per layer read), so autograd, ``torch.func`` and forward-mode AD
    differentiate it as they do any torch code."""
    values = [inputs]
    for layer in layers:
        src = gather_rows(values, layer.gather)
        values.append(segment_reduce_torch(src, layer.offsets, layer.reduce, layer.segment))
    return gather_rows(values, roots)
