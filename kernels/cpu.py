"""Fused CPU circuit kernels (numba): the whole circuit in one call per direction.

Layout as in :mod:`trilay.kernels.layer`: node values ``[num_nodes, batch]`` with batch
contiguous, one buffer for the whole circuit (:class:`trilay.engine.CompiledCircuit`), rows
``0..num_leaves-1`` the leaves, then the layers; internal row ``r`` reduces the rows
``child[offsets[r - n0]:offsets[r - n0 + 1]]``, all in lower layers. The forward writes the
leaf rows from the literal weights (``pos``, ``neg`` or the semiring's complement, and for a
smoothed circuit each variable's tautology ``pos OR neg``), then every node row bottom up,
folding each child row into the node's row column by column (vectorized over the batch, no
edge-sized intermediate), then gathers the roots. The backward walks the rows top down; each
row's gradient is its seed (from the roots) plus, over its parent edges (the transposed CSR,
AND parents first, then OR parents), ``grad[parent] * d parent / d row``: no atomics, and the
same operations in the same order whatever the thread count. It ends with the literal
weights' gradients (through the tautologies and the complement).

Reductions and their derivatives are the Triton kernels' (the same exactness rules): ``sum``,
``prod`` (zero counts; where the product of the non-zero factors is not a normal number, the
product of the other factors is recomputed, exact to rounding), ``logsumexp`` (two passes: the
max, then ``exp(x - max)``; gradient ``exp(x - out)``, 0 where ``out = -inf``), ``max`` /
``min`` (the first arg edge takes the gradient; a NaN value gives a NaN gradient),
``lukasiewicz_and``, ``lukasiewicz_or``, ``prob_sum``. NaN inputs give NaN values.

``exp`` is a branch-free polynomial (Cephes' ``expf`` / ``exp``, within an ulp or two of the
libm's) that LLVM vectorizes: the log-sum-exp's exponentials are most of the work at large
batches, and numba has no vector math library of its own.

Parallelism (numba ``prange``), with ``torch.get_num_threads()`` threads: batches wide enough
for two column chunks of :data:`CHUNK_COLUMNS` or more run the whole circuit once per chunk of
columns, one chunk per thread (no synchronization between layers); narrower batches split the
rows of each layer with at least :data:`ROW_PARALLEL_MIN_WORK` edge x column steps between the
threads. Every value and gradient is computed by the same operations either way, so the
results are the same bits on any number of threads.

Dtypes: float32 and float64, each in its own precision. Kernels compile once per dtype and are
cached on disk (numba ``cache=True``), and release the GIL while they run.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch.autograd import forward_ad

from .errors import SemiringError, TransformError, ValueRangeError
from .reference import REDUCTIONS, needs_grad, outside_weight_range


def _kernel(**options):
    """``numba.njit``, cached on disk, with numpy's error model: IEEE results (``x / 0`` is
    inf or NaN, never an exception, so divisions vectorize) and the flags a ``prange`` body
    compiles its callees with, so that parallel and serial callers share one compilation."""
    return njit(cache=True, error_model="numpy", **options)


#: Reduction codes inside the kernels: the index in :data:`REDUCTIONS` (the Triton codes).
CPU_REDUCTIONS = {name: code for code, name in enumerate(REDUCTIONS)}
_SUM, _PROD, _LSE, _MAX, _MIN, _LUK_AND, _LUK_OR, _PROB_SUM = range(8)
_NEEDS_AUX = (_PROD, _LUK_AND, _LUK_OR, _PROB_SUM)
_NEEDS_ARG = (_PROD, _MAX, _MIN, _PROB_SUM)

# How the negative literals' rows are made: given, 1 - pos, or log(1 - exp(pos)).
_NEG_GIVEN, _ONE_MINUS, _LOG1MEXP = range(3)
# The tautology rows (smoothed circuits): none, the semiring's one, or pos OR neg reduced.
_NO_TAUTOLOGY, _TAUTOLOGY_ONE, _TAUTOLOGY_REDUCED = range(3)
# The forward's check of the literal weights: none, probabilities [0, 1], log-probabilities
# [-inf, 0] (NaN passes: it propagates).
_NO_CHECK, _CHECK_PROB, _CHECK_LOG = range(3)

#: A batch is cut into column chunks (one per thread) only when each chunk gets at least this
#: many columns (a multiple of 16: chunks start on 64-byte lines).
CHUNK_COLUMNS = 16
#: A layer's rows are split between threads when its edges x batch columns reach this.
ROW_PARALLEL_MIN_WORK = 1 << 15


_NO_FORWARD_MODE = (
    "the numba CPU backend is reverse-mode only (no forward-mode AD / jvp); use "
    "backend='torch' (backend='auto' picks it when forward mode is active at the call)"
)
_NO_DOUBLE_BACKWARD = (
    "the numba CPU backend's backward is not differentiable (no second derivatives); use "
    "backend='torch' for higher-order gradients"
)


# ---------------------------------------------------------------------------- scalar helpers
@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _int64_bits_as_float64(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


def _typed(like, value):
    """``value`` as a scalar of the float type of ``like`` (a scalar or an array): inside the
    kernels a float64 constant would promote float32 arithmetic to float64."""
    raise NotImplementedError  # replaced by the overload inside numba


@overload(_typed)
def _typed_impl(like, value):
    dtype = like.dtype if isinstance(like, types.Array) else like
    if dtype == types.float32:
        return lambda like, value: np.float32(value)
    return lambda like, value: np.float64(value)


# Cephes' expf: n = round(x / ln 2), r = x - n ln 2 (in two parts), exp(r) a degree-7
# polynomial, scaled by 2^n as two powers of two (exact for subnormal results as well).
_F32 = np.float32
_E32_LOG2E, _E32_LN2_HI, _E32_LN2_LO = (
    _F32(1.4426950408889634),
    _F32(0.693359375),
    _F32(-2.12194440e-4),
)
_E32_P = tuple(
    _F32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1)
)
_E32_P5, _E32_ONE = _F32(5.0000001201e-1), _F32(1.0)
_E32_LOW, _E32_HIGH = _F32(-104.0), _F32(88.8)  # beyond: 0 and inf by the scaling itself
_E32_ROUND = _F32(12582912.0)  # 1.5 * 2^23: adding and subtracting it rounds to an integer


@_kernel()
def _exp32(x):
    xc = min(max(x, _E32_LOW), _E32_HIGH)
    n = (xc * _E32_LOG2E + _E32_ROUND) - _E32_ROUND
    r = xc - n * _E32_LN2_HI - n * _E32_LN2_LO
    p0, p1, p2, p3, p4 = _E32_P
    y = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + _E32_P5
    y = y * (r * r) + r + _E32_ONE
    k = np.int32(n)
    half = k >> np.int32(1)
    y = y * _int32_bits_as_float32((half + np.int32(127)) << np.int32(23))
    y = y * _int32_bits_as_float32((k - half + np.int32(127)) << np.int32(23))
    return y if x == x else x


# Cephes' exp: the same reduction, exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
_E64_LOG2E, _E64_LN2_HI, _E64_LN2_LO = (
    1.4426950408889634,
    6.93145751953125e-1,
    1.42860682030941723212e-6,
)
_E64_P = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_E64_Q = (
    3.00198505138664455042e-6,
    2.52448340349684104192e-3,
    2.27265548208155028766e-1,
    2.00000000000000000009e0,
)
_E64_LOW, _E64_HIGH = -746.0, 709.9
_E64_ROUND = 6755399441055744.0  # 1.5 * 2^52


@_kernel()
def _exp64(x):
    xc = min(max(x, _E64_LOW), _E64_HIGH)
    n = (xc * _E64_LOG2E + _E64_ROUND) - _E64_ROUND
    r = xc - n * _E64_LN2_HI - n * _E64_LN2_LO
    rr = r * r
    p0, p1, p2 = _E64_P
    q0, q1, q2, q3 = _E64_Q
    px = r * ((p0 * rr + p1) * rr + p2)
    y = px / ((((q0 * rr + q1) * rr + q2) * rr + q3) - px)
    y = 1.0 + 2.0 * y
    k = np.int64(n)
    half = k >> np.int64(1)
    y = y * _int64_bits_as_float64((half + np.int64(1023)) << np.int64(52))
    y = y * _int64_bits_as_float64((k - half + np.int64(1023)) << np.int64(52))
    return y if x == x else x


@_kernel(inline="always")
def _columns(c0, c1):
    """The batch columns ``c0..c1`` as unsigned indices: with signed ones numba checks every
    index for negative wraparound, and the column loops do not vectorize (5.6 -> 0.9 ns per
    ``exp`` term at batch 128, measured)."""
    return range(np.uint64(c0), np.uint64(c1))


def _exp(x):
    """``exp(x)`` for a float32 or float64 scalar, vectorizable (see the module docstring)."""
    raise NotImplementedError  # replaced by the overload inside numba


@overload(_exp)
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: _exp64(x)


@_kernel()
def _log1mexp(x):
    """``log(1 - exp(x))`` as :func:`trilay.engine.semiring.log1mexp` computes it."""
    if x > -0.6931471805599453:
        return math.log(-math.expm1(min(x, 0.0)))
    return math.log1p(-math.exp(x))


@_kernel()
def _better(code, x, best):
    """Whether ``x`` replaces ``best`` in a max (min): strictly greater (smaller), or the
    first NaN (which then stays: nothing compares greater than NaN)."""
    if code == _MAX:
        wins = x > best
    else:
        wins = x < best
    return wins or (x != x and best == best)


# ---------------------------------------------------------------------------- forward
@_kernel()
def _pair_value(code, a, b):
    """The OR reduction ``code`` of the two values ``[a, b]`` (a tautology ``pos OR neg``),
    as :func:`_layer_forward` computes it for a node of two children."""
    one, zero = _typed(a, 1.0), _typed(a, 0.0)
    if code == _SUM:
        return a + b
    if code == _LSE:
        m = b if b > a else a
        shift = m if abs(m) < np.inf else zero
        return shift + _typed(a, math.log(_exp(a - shift) + _exp(b - shift)))
    if code == _MAX or code == _MIN:
        return b if _better(code, b, a) else a
    if code == _PROB_SUM:
        fa, fb = one - a, one - b
        product = (fa if fa != 0 else one) * (fb if fb != 0 else one)
        return one - (zero if fa == 0 or fb == 0 else product)
    total = a + b  # lukasiewicz_or
    return total if total != total else min(total, one)


@_kernel(inline="always")
def _leaves_forward(values, pos, neg, complement, tautology, or_code, zero, one, c0, c1):
    """The leaf rows of columns ``c0..c1``: false and true (the semiring's ``zero`` and
    ``one``), ``pos``, the negative literals (``neg``, or the complement of ``pos``) and the
    tautologies (``pos OR neg``, or ``one``)."""
    num_vars = pos.shape[1]
    unit = _typed(values, 1.0)
    for c in _columns(c0, c1):
        values[0, c] = zero
        values[1, c] = one
    for v in range(num_vars):
        for c in _columns(c0, c1):
            x = pos[c, v]
            if complement == _NEG_GIVEN:
                y = neg[c, v]
            elif complement == _ONE_MINUS:
                y = unit - x
            else:
                y = _typed(x, _log1mexp(x))
            values[2 + v, c] = x
            values[2 + num_vars + v, c] = y
            if tautology == _TAUTOLOGY_ONE:
                values[2 + 2 * num_vars + v, c] = one
            elif tautology == _TAUTOLOGY_REDUCED:
                values[2 + 2 * num_vars + v, c] = _pair_value(or_code, x, y)


# One function per reduction, each looping over a layer's rows: a loop over rows that branches
# on the reduction per row runs five times slower at batch 1 (measured on seq_fun).
@_kernel(inline="always")
def _sum_forward(values, child, offsets, n0, r0, r1, clamp, aux, arg, state, t, c0, c1):
    """Rows ``r0..r1``: ``sum``, or with ``clamp`` its lukasiewicz form (``_LUK_AND``:
    ``max(0, sum - (n - 1))``, ``_LUK_OR``: ``min(1, sum)``, NaN kept), the sum before the
    clamp kept in ``aux`` for the backward."""
    one, zero = _typed(values, 1.0), _typed(values, 0.0)
    for r in range(r0, r1):
        e0, e1 = offsets[r - n0], offsets[r - n0 + 1]
        s = r - n0 if state else t
        k = child[e0]
        for c in _columns(c0, c1):
            values[r, c] = values[k, c]
        for e in range(e0 + 1, e1):
            k = child[e]
            for c in _columns(c0, c1):
                values[r, c] += values[k, c]
        if clamp == _LUK_AND:
            fan_in = _typed(values, e1 - e0 - 1)
            for c in _columns(c0, c1):
                shifted = values[r, c] - fan_in
                aux[s, c] = shifted
                values[r, c] = shifted if shifted != shifted else max(shifted, zero)
        elif clamp == _LUK_OR:
            for c in _columns(c0, c1):
                total = values[r, c]
                aux[s, c] = total
                values[r, c] = total if total != total else min(total, one)


@_kernel(inline="always")
def _prod_forward(values, child, offsets, n0, r0, r1, complement, aux, arg, state, t, c0, c1):
    """Rows ``r0..r1``: ``prod`` of the children, or with ``complement`` ``prob_sum``
    (``1 - prod(1 - x)``); ``aux`` keeps the product of the non-zero factors and ``arg`` their
    zero count (the value is 0 where a factor is)."""
    one, zero = _typed(values, 1.0), _typed(values, 0.0)
    for r in range(r0, r1):
        e0, e1 = offsets[r - n0], offsets[r - n0 + 1]
        s = r - n0 if state else t
        for c in _columns(c0, c1):
            aux[s, c] = one
            arg[s, c] = 0
        for e in range(e0, e1):
            k = child[e]
            for c in _columns(c0, c1):
                factor = one - values[k, c] if complement else values[k, c]
                is_zero = factor == 0
                arg[s, c] += np.int32(is_zero)
                aux[s, c] *= one if is_zero else factor
        for c in _columns(c0, c1):
            product = zero if arg[s, c] > 0 else aux[s, c]
            values[r, c] = one - product if complement else product


@_kernel(inline="always")
def _logsumexp_forward(values, child, offsets, n0, r0, r1, sums, t, c0, c1):
    """Rows ``r0..r1``: ``logsumexp``, in two passes: the max (a NaN first child stays, later
    NaNs never win), then the sum of ``exp(x - shift)`` in ``sums[t]``, the shift the max or 0
    where the max is infinite (all ``-inf``: ``log(0) = -inf``)."""
    zero = _typed(values, 0.0)
    for r in range(r0, r1):
        e0, e1 = offsets[r - n0], offsets[r - n0 + 1]
        k = child[e0]
        for c in _columns(c0, c1):
            values[r, c] = values[k, c]
        for e in range(e0 + 1, e1):
            k = child[e]
            for c in _columns(c0, c1):
                x = values[k, c]
                values[r, c] = x if x > values[r, c] else values[r, c]
        for c in _columns(c0, c1):
            m = values[r, c]
            values[r, c] = m if abs(m) < np.inf else zero
            sums[t, c] = zero
        for e in range(e0, e1):
            k = child[e]
            for c in _columns(c0, c1):
                sums[t, c] += _exp(values[k, c] - values[r, c])
        for c in _columns(c0, c1):
            values[r, c] = values[r, c] + _typed(values, math.log(sums[t, c]))


@_kernel(inline="always")
def _arg_forward(values, child, offsets, n0, r0, r1, is_max, arg, state, t, c0, c1):
    """Rows ``r0..r1``: ``max`` (``is_max``) or ``min``, and in ``arg`` the first edge that
    attains it (a NaN wins and stays, as in :func:`_better`)."""
    for r in range(r0, r1):
        e0, e1 = offsets[r - n0], offsets[r - n0 + 1]
        s = r - n0 if state else t
        k = child[e0]
        for c in _columns(c0, c1):
            values[r, c] = values[k, c]
            arg[s, c] = e0
        for e in range(e0 + 1, e1):
            k = child[e]
            for c in _columns(c0, c1):
                x = values[k, c]
                best = values[r, c]
                wins = (x > best) if is_max else (x < best)
                wins = wins | ((x != x) & (best == best))
                values[r, c] = x if wins else best
                arg[s, c] = e if wins else arg[s, c]


@_kernel(inline="always")
def _layer_forward(values, child, offsets, n0, r0, r1, code, aux, arg, state, sums, t, c0, c1):
    """Rows ``r0..r1`` of one layer reduced by ``code`` (columns ``c0..c1``). With ``state``,
    what the backward needs goes to rows ``r - n0`` of ``aux`` (the product of the non-zero
    factors of prod / prob_sum, the sum before the clamp of the lukasiewicz forms) and ``arg``
    (the zero count of prod / prob_sum, the arg edge of max / min); without, to the thread's
    scratch rows ``t``."""
    if code == _SUM or code == _LUK_AND or code == _LUK_OR:
        _sum_forward(values, child, offsets, n0, r0, r1, code, aux, arg, state, t, c0, c1)
    elif code == _PROD or code == _PROB_SUM:
        complement = code == _PROB_SUM
        _prod_forward(values, child, offsets, n0, r0, r1, complement, aux, arg, state, t, c0, c1)
    elif code == _LSE:
        _logsumexp_forward(values, child, offsets, n0, r0, r1, sums, t, c0, c1)
    else:
        _arg_forward(values, child, offsets, n0, r0, r1, code == _MAX, arg, state, t, c0, c1)


@_kernel(inline="always")
def _roots_forward(values, roots, out, c0, c1):
    """``out[c, i] = values[roots[i], c]`` for the columns ``c0..c1``."""
    for i in range(roots.size):
        r = roots[i]
        for c in _columns(c0, c1):
            out[c, i] = values[r, c]


@_kernel()
def _layers_forward(
    values, child, offsets, row_starts, layer_codes, aux, arg, state, sums, t, k0, k1, r_lo,
    r_hi, c0, c1,
):  # fmt: skip
    """Layers ``k0..k1`` (0-based) bottom up, of each only the rows in ``r_lo..r_hi``
    (columns ``c0..c1``): the one compiled copy of the reductions every caller but the
    batch-1 forward shares (one call for the whole circuit, or a thread's rows of a layer)."""
    n0 = row_starts[1]
    for k in range(k0, k1):
        r0, r1 = max(row_starts[k + 1], r_lo), min(row_starts[k + 2], r_hi)
        code = layer_codes[k]
        _layer_forward(values, child, offsets, n0, r0, r1, code, aux, arg, state, sums, t, c0, c1)


@_kernel(inline="always")
def _count_outside(x, check):
    """How many values of ``x`` lie outside the range ``check`` names (0 for ``_NO_CHECK``)."""
    count = 0
    if check == _NO_CHECK:
        return count
    for v in x.ravel():
        count += (v > 0) if check == _CHECK_LOG else (v < 0 or v > 1)
    return count


@_kernel(inline="always")
def _weights_outside(pos, neg, complement, check):
    """How many literal weights (``pos``, and ``neg`` where given) lie outside their range:
    checked in the kernel because a separate pass costs microseconds at batch 1."""
    given = _count_outside(neg, check) if complement == _NEG_GIVEN else 0
    return _count_outside(pos, check) + given


@_kernel(nogil=True)
def _circuit_fwd_serial(
    values, aux, arg, sums, state, pos, neg, complement, tautology, child, offsets,
    row_starts, layer_codes, or_code, zero, one, roots, out, check,
):  # fmt: skip
    """The forward on one thread; returns the count of weights outside their range (then
    nothing else is computed)."""
    outside = _weights_outside(pos, neg, complement, check)
    if outside:
        return outside
    batch, first, layers = values.shape[1], np.int64(0), layer_codes.size
    if batch != 1:
        _leaves_forward(values, pos, neg, complement, tautology, or_code, zero, one, first, batch)
        _layers_forward(
            values, child, offsets, row_starts, layer_codes, aux, arg, state, sums, first, first,
            layers, first, row_starts[-1], first, batch,
        )  # fmt: skip
        _roots_forward(values, roots, out, first, batch)
        return outside
    # Batch 1, inlined with constant column bounds: the column loops compile away and no call
    # is made per layer (a third of the time of the small circuits, measured on road_r).
    _leaves_forward(values, pos, neg, complement, tautology, or_code, zero, one, 0, 1)
    n0 = row_starts[1]
    for k in range(layers):
        r0, r1 = row_starts[k + 1], row_starts[k + 2]
        code = layer_codes[k]
        _layer_forward(values, child, offsets, n0, r0, r1, code, aux, arg, state, sums, 0, 0, 1)
    _roots_forward(values, roots, out, 0, 1)
    return outside


@_kernel()
def _row_split(offsets, first, r0, r1, t, threads):
    """The row of ``r0..r1`` where thread ``t``'s share of the segments ``offsets[r - first]``
    begins: the rows split between ``threads`` threads by their edges."""
    if t == threads:
        return r1
    e0, e1 = offsets[r0 - first], offsets[r1 - first]
    target = e0 + (e1 - e0) * t // threads
    return r0 + np.searchsorted(offsets[r0 - first : r1 - first], target)


@_kernel(parallel=True, nogil=True)
def _circuit_fwd_parallel(
    values, aux, arg, sums, state, pos, neg, complement, tautology, child, offsets,
    row_starts, layer_codes, or_code, zero, one, roots, out, check, chunks, threads, min_work,
):  # fmt: skip
    """Column chunks (``chunks``: their bounds, when more than one) in parallel, each the
    whole forward; else each layer with ``min_work`` edge x column steps or more split by
    rows between ``threads`` threads (scratch row ``t`` each). Returns the count of weights
    outside their range, as the serial forward."""
    outside = _weights_outside(pos, neg, complement, check)
    if outside:
        return outside
    # Callees get the argument types the serial path gives them (int64, never a literal or
    # prange's unsigned index), so that the parallel path reuses their compilation.
    batch, first, layers, rows = values.shape[1], np.int64(0), layer_codes.size, row_starts[-1]
    if chunks.size > 2:
        for t in prange(chunks.size - 1):
            c0, c1 = chunks[t], chunks[t + 1]
            _leaves_forward(values, pos, neg, complement, tautology, or_code, zero, one, c0, c1)
            _layers_forward(
                values, child, offsets, row_starts, layer_codes, aux, arg, state, sums, first,
                first, layers, first, rows, c0, c1,
            )  # fmt: skip
            _roots_forward(values, roots, out, c0, c1)
        return outside
    _leaves_forward(values, pos, neg, complement, tautology, or_code, zero, one, first, batch)
    n0 = row_starts[1]
    for k in range(layers):
        r0, r1 = row_starts[k + 1], row_starts[k + 2]
        if (offsets[r1 - n0] - offsets[r0 - n0]) * batch < min_work:
            _layers_forward(
                values, child, offsets, row_starts, layer_codes, aux, arg, state, sums, first, k,
                k + 1, first, rows, first, batch,
            )  # fmt: skip
            continue
        for t in prange(threads):
            row = np.int64(t)
            lo = _row_split(offsets, n0, r0, r1, row, threads)
            hi = _row_split(offsets, n0, r0, r1, row + 1, threads)
            _layers_forward(
                values, child, offsets, row_starts, layer_codes, aux, arg, state, sums, row, k,
                k + 1, lo, hi, first, batch,
            )  # fmt: skip
    _roots_forward(values, roots, out, first, batch)
    return outside


# ---------------------------------------------------------------------------- backward
# d out[p] / d x[c] for an edge p -> c, by reduction (o = out[p], x = x[c]), as in the Triton
# kernels:
#   sum: 1              prod: with a[p] the product of the non-zero children and z[p] their
#                       zero count: a / x if x != 0 and z = 0; a if x = 0 and z = 1; else 0
#                       (never a division by zero). Where a lost digits to underflow or
#                       overflow (not a normal number), a / x is not the product of the
#                       others: that product is recomputed over p's edges (_others_product).
#   logsumexp: exp(x - o) (0 when o = -inf)     max/min: 1 on the arg edge only (ties: the
#                       first child in CSR order takes the whole gradient); NaN when o is NaN
#   lukasiewicz_and: 1 if aux[p] = sum - (n - 1) >= 0     lukasiewicz_or: 1 if aux[p] = sum <= 1
#   prob_sum: the product of the others' (1 - x): the prod rule on 1 - x
# As in the forward, one function per reduction, each looping over a block's rows: a row's
# parent edges of one part (AND or OR) are pe0..pe1 = starts[r]..ends[r + end_shift].
@_kernel(inline="always")
def _sum_backward(grad, aux, parent, starts, ends, end_shift, r0, r1, clamp, n0, c0, c1):
    """``sum`` (every parent passes its gradient) and, with ``clamp``, its lukasiewicz forms
    (only where the sum in ``aux`` was inside the clamp: ``>= 0`` for ``_LUK_AND``, ``<= 1``
    for ``_LUK_OR``)."""
    one, zero = _typed(grad, 1.0), _typed(grad, 0.0)
    for r in range(r0, r1):
        for pe in range(starts[r], ends[r + end_shift]):
            p = parent[pe]
            s = p - n0
            if clamp == _LUK_AND:
                for c in _columns(c0, c1):
                    grad[r, c] += grad[p, c] if aux[s, c] >= 0 else zero
            elif clamp == _LUK_OR:
                for c in _columns(c0, c1):
                    grad[r, c] += grad[p, c] if aux[s, c] <= one else zero
            else:
                for c in _columns(c0, c1):
                    grad[r, c] += grad[p, c]


@_kernel(inline="always")
def _logsumexp_backward(grad, values, parent, starts, ends, end_shift, r0, r1, c0, c1):
    """``logsumexp``: ``grad[p] * exp(x - out[p])``, 0 where ``out[p] = -inf``."""
    zero = _typed(grad, 0.0)
    for r in range(r0, r1):
        for pe in range(starts[r], ends[r + end_shift]):
            p = parent[pe]
            for c in _columns(c0, c1):
                o = values[p, c]
                d = grad[p, c] * _exp(values[r, c] - o)
                grad[r, c] += zero if o == -np.inf else d


@_kernel(inline="always")
def _arg_backward(
    grad, values, arg, parent, parent_edge, starts, ends, end_shift, r0, r1, n0, c0, c1
):
    """``max`` / ``min``: the parent's gradient on its arg edge only; NaN where its value is."""
    zero = _typed(grad, 0.0)
    for r in range(r0, r1):
        for pe in range(starts[r], ends[r + end_shift]):
            p, e = parent[pe], parent_edge[pe]
            s = p - n0
            for c in _columns(c0, c1):
                o = values[p, c]
                d = grad[p, c] if arg[s, c] == e else zero
                grad[r, c] += o if o != o else d


@_kernel()
def _others_product(values, child, e0, e1, skip, c, complement):
    """The product of the factors (``x``, or ``1 - x`` with ``complement``) of column ``c``
    of the rows ``child[e0:e1]`` but edge ``skip``'s, correct to rounding whenever it is
    representable: mantissas multiplied and exponents summed apart (``frexp``), so that no
    partial product under- or overflows."""
    mantissa, exponent = 1.0, 0
    for e in range(e0, e1):
        if e != skip:
            x = np.float64(values[child[e], c])
            m, k = math.frexp(1.0 - x if complement else x)
            mantissa, k2 = math.frexp(mantissa * m)
            exponent += k + k2
    return _typed(values, math.ldexp(mantissa, exponent))


@_kernel(inline="always")
def _prod_backward(
    grad, values, aux, arg, child, offsets, parent, parent_edge, starts, ends, end_shift, r0,
    r1, complement, n0, tiny, c0, c1,
):  # fmt: skip
    """``prod`` (with ``complement``: ``prob_sum``, the rule on ``1 - x``): with ``a`` the
    product of the parent's non-zero factors and ``z`` their count, ``a / x`` where ``x != 0``
    and ``z = 0``, ``a`` where ``x = 0`` and ``z = 1``, else 0. Where ``a`` is not a normal
    number (digits lost to under- or overflow), the product of the others is recomputed."""
    one, zero = _typed(grad, 1.0), _typed(grad, 0.0)
    for r in range(r0, r1):
        for pe in range(starts[r], ends[r + end_shift]):
            p, e = parent[pe], parent_edge[pe]
            s = p - n0
            lost = 0
            for c in _columns(c0, c1):
                x = one - values[r, c] if complement else values[r, c]
                a, z = aux[s, c], arg[s, c]
                nonzero = x != 0
                others = a / x if nonzero else a
                kept = z == (0 if nonzero else 1)
                is_lost = nonzero & (z == 0) & (((abs(a) < tiny) & (a == a)) | (abs(a) == np.inf))
                lost += is_lost
                d = grad[p, c] * others if kept else zero
                grad[r, c] += zero if is_lost else d
            if lost:
                for c in _columns(c0, c1):
                    x = one - values[r, c] if complement else values[r, c]
                    a, z = aux[s, c], arg[s, c]
                    if (x != 0) & (z == 0) & (((abs(a) < tiny) & (a == a)) | (abs(a) == np.inf)):
                        product = _others_product(
                            values, child, offsets[s], offsets[s + 1], e, c, complement
                        )
                        grad[r, c] += grad[p, c] * product


@_kernel(inline="always")
def _part_backward(
    grad, values, aux, arg, child, offsets, parent, parent_edge, starts, ends, end_shift, r0,
    r1, code, n0, tiny, c0, c1,
):  # fmt: skip
    """Add to ``grad[r]`` for rows ``r0..r1`` (columns ``c0..c1``) ``grad[p] * d out[p] / d
    x[r]`` over one part of each row's parent edges (all its parents reduce by ``code``)."""
    if code == _SUM or code == _LUK_AND or code == _LUK_OR:
        _sum_backward(grad, aux, parent, starts, ends, end_shift, r0, r1, code, n0, c0, c1)
    elif code == _LSE:
        _logsumexp_backward(grad, values, parent, starts, ends, end_shift, r0, r1, c0, c1)
    elif code == _MAX or code == _MIN:
        _arg_backward(
            grad, values, arg, parent, parent_edge, starts, ends, end_shift, r0, r1, n0, c0, c1
        )
    else:
        _prod_backward(
            grad, values, aux, arg, child, offsets, parent, parent_edge, starts, ends, end_shift,
            r0, r1, code == _PROB_SUM, n0, tiny, c0, c1,
        )  # fmt: skip


@_kernel(inline="always")
def _block_backward(
    grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split, parent,
    parent_edge, seed_index, seed_offsets, seed_positions, n0, r0, r1, and_code, or_code, tiny,
    c0, c1,
):  # fmt: skip
    """The gradients of rows ``r0..r1`` (columns ``c0..c1``), every parent's final: each row's
    seed (the gradients of the roots at this row, summed over a repeated root), then its AND
    parents' and its OR parents' shares."""
    zero = _typed(grad, 0.0)
    for r in range(r0, r1):
        for c in _columns(c0, c1):
            grad[r, c] = zero
        i = seed_index[r]
        if i >= 0:
            for j in range(seed_offsets[i], seed_offsets[i + 1]):
                q = seed_positions[j]
                for c in _columns(c0, c1):
                    grad[r, c] += grad_out[c, q]
    _part_backward(
        grad, values, aux, arg, child, offsets, parent, parent_edge, parent_offsets,
        parent_split, np.int64(0), r0, r1, and_code, n0, tiny, c0, c1,
    )  # fmt: skip
    _part_backward(
        grad, values, aux, arg, child, offsets, parent, parent_edge, parent_split,
        parent_offsets, np.int64(1), r0, r1, or_code, n0, tiny, c0, c1,
    )  # fmt: skip


@_kernel()
def _pair_backward(code, g, a, b, t):
    """``g * d t / d a`` and ``g * d t / d b`` for the tautology ``t = [a, b]`` reduced by the
    OR reduction ``code`` (see :func:`_pair_value`)."""
    zero, one = _typed(g, 0.0), _typed(g, 1.0)
    if code == _SUM:
        return g, g
    if code == _LSE:
        if t == -np.inf:
            return zero, zero
        return g * _exp(a - t), g * _exp(b - t)
    if code == _MAX or code == _MIN:
        if t != t:
            return t, t
        second = _better(code, b, a)
        return (zero, g) if second else (g, zero)
    if code == _PROB_SUM:
        return g * (one - b), g * (one - a)
    d = g if a + b <= one else zero  # lukasiewicz_or
    return d, d


@_kernel()
def _leaves_backward(grad, values, pos, complement, tautology, or_code, grads, c0, c1):
    """The literal weights' gradients (``grads[0]``: ``pos``, ``grads[1]``: a given ``neg``,
    ``[B, V]`` each) from the leaf rows' gradients, through the tautologies and the
    complement (``-1``, or ``-exp(pos - neg)`` in log space, 0 where no gradient reaches it:
    at ``pos = 0`` the derivative is infinite)."""
    num_vars = pos.shape[1]
    zero = _typed(values, 0.0)
    for v in range(num_vars):
        for c in _columns(c0, c1):
            gp, gn = grad[2 + v, c], grad[2 + num_vars + v, c]
            x, y = values[2 + v, c], values[2 + num_vars + v, c]
            if tautology == _TAUTOLOGY_REDUCED:
                t = 2 + 2 * num_vars + v
                ga, gb = _pair_backward(or_code, grad[t, c], x, y, values[t, c])
                gp += ga
                gn += gb
            if complement == _NEG_GIVEN:
                grads[0, c, v] = gp
                grads[1, c, v] = gn
            elif complement == _ONE_MINUS:
                grads[0, c, v] = gp + -gn
            else:
                grads[0, c, v] = gp + (zero if gn == 0 else -gn * _typed(x, math.exp(x - y)))


@_kernel()
def _blocks_backward(
    grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split, parent,
    parent_edge, seed_index, seed_offsets, seed_positions, row_starts, and_code, or_code, tiny,
    k0, k1, r_lo, r_hi, c0, c1,
):  # fmt: skip
    """Row blocks ``k1 - 1`` down to ``k0`` (block 0 the leaves but false and true, block
    ``k`` layer ``k``), of each only the rows in ``r_lo..r_hi`` (columns ``c0..c1``): the one
    compiled copy of the reductions' derivatives (one call for the whole circuit, or a
    thread's rows of a block)."""
    n0 = row_starts[1]
    for k in range(k1 - 1, k0 - 1, -1):
        r0, r1 = max(row_starts[k], r_lo, 2), min(row_starts[k + 1], r_hi)
        _block_backward(
            grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split,
            parent, parent_edge, seed_index, seed_offsets, seed_positions, n0, r0, r1, and_code,
            or_code, tiny, c0, c1,
        )  # fmt: skip


@_kernel(nogil=True)
def _circuit_bwd_serial(
    grad, values, aux, arg, grad_out, pos, complement, tautology, child, offsets,
    parent_offsets, parent_split, parent, parent_edge, seed_index, seed_offsets, seed_positions,
    row_starts, and_code, or_code, tiny, grads,
):  # fmt: skip
    batch, first, blocks = values.shape[1], np.int64(0), row_starts.size - 1
    _blocks_backward(
        grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split, parent,
        parent_edge, seed_index, seed_offsets, seed_positions, row_starts, and_code, or_code,
        tiny, first, blocks, first, row_starts[-1], first, batch,
    )  # fmt: skip
    _leaves_backward(grad, values, pos, complement, tautology, or_code, grads, first, batch)


@_kernel(parallel=True, nogil=True)
def _circuit_bwd_parallel(
    grad, values, aux, arg, grad_out, pos, complement, tautology, child, offsets,
    parent_offsets, parent_split, parent, parent_edge, seed_index, seed_offsets, seed_positions,
    row_starts, and_code, or_code, tiny, grads, chunks, threads, min_work,
):  # fmt: skip
    """As :func:`_circuit_fwd_parallel`: column chunks, or each row block with ``min_work``
    parent edge x column steps or more split by rows between ``threads`` threads."""
    batch, first, blocks, rows = values.shape[1], np.int64(0), row_starts.size - 1, row_starts[-1]
    if chunks.size > 2:
        for t in prange(chunks.size - 1):
            c0, c1 = chunks[t], chunks[t + 1]
            _blocks_backward(
                grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split,
                parent, parent_edge, seed_index, seed_offsets, seed_positions, row_starts,
                and_code, or_code, tiny, first, blocks, first, rows, c0, c1,
            )  # fmt: skip
            _leaves_backward(grad, values, pos, complement, tautology, or_code, grads, c0, c1)
        return
    for k in range(blocks - 1, -1, -1):
        r0, r1 = max(row_starts[k], 2), row_starts[k + 1]
        if (parent_offsets[r1] - parent_offsets[r0]) * batch < min_work:
            _blocks_backward(
                grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split,
                parent, parent_edge, seed_index, seed_offsets, seed_positions, row_starts,
                and_code, or_code, tiny, k, k + 1, first, rows, first, batch,
            )  # fmt: skip
            continue
        for t in prange(threads):
            row = np.int64(t)
            lo = _row_split(parent_offsets, first, r0, r1, row, threads)
            hi = _row_split(parent_offsets, first, r0, r1, row + 1, threads)
            _blocks_backward(
                grad, values, aux, arg, grad_out, child, offsets, parent_offsets, parent_split,
                parent, parent_edge, seed_index, seed_offsets, seed_positions, row_starts,
                and_code, or_code, tiny, k, k + 1, lo, hi, first, batch,
            )  # fmt: skip
    _leaves_backward(grad, values, pos, complement, tautology, or_code, grads, first, batch)


# ---------------------------------------------------------------------------- launchers
class CpuCircuit(NamedTuple):
    """What the CPU kernels read: a module's index buffers as numpy arrays (shared memory),
    plus the semiring (see :class:`trilay.engine.CompiledCircuit` for the index arrays).

    ``layer_codes[k]``: layer ``k + 1``'s reduction (:data:`CPU_REDUCTIONS`). ``seed_index``:
    each row's index among the distinct root rows (-1 for the others); that root row's
    positions among the roots are ``seed_positions[seed_offsets[i]:seed_offsets[i + 1]]``.
    """

    num_vars: int
    smooth: bool
    log_space: bool
    zero: float
    one: float
    and_code: int
    or_code: int
    layer_codes: np.ndarray  # [L] int64
    row_starts: np.ndarray  # [L + 2] int64
    child: np.ndarray  # [E] int32
    offsets: np.ndarray  # [num_nodes - num_leaves + 1] int32
    parent_offsets: np.ndarray  # [num_nodes + 1] int32
    parent_split: np.ndarray  # [num_nodes] int32
    parent: np.ndarray  # [E] int32
    parent_edge: np.ndarray  # [E] int32
    roots: np.ndarray  # [num_roots] int64
    seed_index: np.ndarray  # [num_nodes] int32
    seed_offsets: np.ndarray  # [distinct roots + 1] int32
    seed_positions: np.ndarray  # [num_roots] int32
    widest_layer: int  # the most edges of one layer
    widest_block: int  # the most parent edges of one row block (a layer, or the leaves)
    with_aux: bool  # some layer's reduction needs an aux buffer for the backward
    with_arg: bool  # ... an arg buffer
    #: The forward's arguments that depend on the dtype and on whether ``neg`` is given
    #: only: ``(complement, tautology, child, ..., zero, one, roots)``, made once per module
    #: (building them per call is a tenth of a batch-1 forward).
    forward_constants: dict[tuple[np.dtype, bool], tuple]

    @property
    def num_leaves(self) -> int:
        return int(self.row_starts[1])

    @property
    def num_nodes(self) -> int:
        return int(self.row_starts[-1])

    @property
    def num_roots(self) -> int:
        return self.roots.size


def _code(reduce: str) -> int:
    try:
        return CPU_REDUCTIONS[reduce]
    except KeyError:
        raise SemiringError(
            f"unknown reduction {reduce!r}; expected one of {sorted(CPU_REDUCTIONS)}"
        ) from None


def cpu_circuit(
    tensors: dict[str, torch.Tensor],
    row_starts: list[int],
    layer_kinds: list[str],
    reductions: dict[str, str],
    zero: float,
    one: float,
    log_space: bool,
    smooth: bool,
    num_vars: int,
) -> CpuCircuit:
    """The kernels' view of a compiled circuit's index tensors (``tensors``: ``child``,
    ``offsets``, ``parent_offsets``, ``parent_split``, ``parent``, ``parent_edge``, ``roots``
    on the CPU) in a semiring: ``reductions`` of the ``"and"`` and ``"or"`` layers, the
    semiring's ``zero`` / ``one``, and whether its default complement is ``log1mexp``."""
    # DLPack: Tensor.numpy() refuses a plain tensor while a torch.func gradient transform runs.
    arrays = {name: np.from_dlpack(tensors[name]) for name in _INDEX_NAMES}
    roots = arrays["roots"].astype(np.int64)
    distinct, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
    num_nodes = row_starts[-1]
    seed_index = np.full(num_nodes, -1, dtype=np.int32)
    seed_index[distinct] = np.arange(distinct.size, dtype=np.int32)
    seed_offsets = np.zeros(distinct.size + 1, dtype=np.int32)
    np.cumsum(counts, out=seed_offsets[1:])
    starts = np.asarray(row_starts, dtype=np.int64)
    n0 = row_starts[1]
    edge_starts = arrays["offsets"].astype(np.int64)[starts[1:] - n0]
    parent_starts = arrays["parent_offsets"].astype(np.int64)[starts]
    codes = {_code(reductions[k]) for k in layer_kinds}
    layer_codes = np.array([_code(reductions[k]) for k in layer_kinds], dtype=np.int64)
    or_code = _code(reductions["or"])
    forward_constants = {}
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for neg_given in (False, True):
            complement, tautology = _modes(log_space, smooth, or_code, neg_given)
            forward_constants[dtype, neg_given] = (
                complement, tautology, arrays["child"], arrays["offsets"], starts, layer_codes,
                or_code, dtype.type(zero), dtype.type(one), roots,
            )  # fmt: skip
    return CpuCircuit(
        num_vars=num_vars,
        smooth=smooth,
        log_space=log_space,
        zero=zero,
        one=one,
        and_code=_code(reductions["and"]),
        or_code=or_code,
        layer_codes=layer_codes,
        row_starts=starts,
        roots=roots,
        seed_index=seed_index,
        seed_offsets=seed_offsets,
        seed_positions=np.argsort(inverse, kind="stable").astype(np.int32),
        widest_layer=int(np.diff(edge_starts).max(initial=0)),
        widest_block=int(np.diff(parent_starts).max(initial=0)),
        with_aux=bool(codes & set(_NEEDS_AUX)),
        with_arg=bool(codes & set(_NEEDS_ARG)),
        forward_constants=forward_constants,
        **{name: arrays[name] for name in _INDEX_NAMES if name != "roots"},
    )


_INDEX_NAMES = (
    "child",
    "offsets",
    "parent_offsets",
    "parent_split",
    "parent",
    "parent_edge",
    "roots",
)


def _plan(batch: int, widest: int) -> tuple[int, np.ndarray | None]:
    """``(threads, chunks)``: the threads to use (``torch.get_num_threads()``, at most numba's
    pool) and the column chunks' bounds (``None``: split rows instead; ``threads`` 1: serial,
    no layer being wide enough to split)."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads < 2:
        return 1, None
    count = min(threads, batch // CHUNK_COLUMNS)
    if count >= 2:
        width = -(-batch // count)
        width = -(-width // CHUNK_COLUMNS) * CHUNK_COLUMNS
        bounds = np.minimum(np.arange(0, batch + width, width, dtype=np.int64), batch)
        return threads, bounds
    if widest * batch < ROW_PARALLEL_MIN_WORK:
        return 1, None
    return threads, None


def _modes(log_space: bool, smooth: bool, or_code: int, neg_given: bool) -> tuple[int, int]:
    """How the kernels make the negative literals' rows and the tautologies' (as
    :meth:`trilay.engine.CircuitModule.leaves` does)."""
    complement = _NEG_GIVEN if neg_given else _LOG1MEXP if log_space else _ONE_MINUS
    if not smooth:
        return complement, _NO_TAUTOLOGY
    if not neg_given and or_code in (_SUM, _LSE):
        return complement, _TAUTOLOGY_ONE  # p + (1 - p) is one by definition, not rounding
    return complement, _TAUTOLOGY_REDUCED


def circuit_fwd(
    pos: np.ndarray,
    neg: np.ndarray | None,
    circuit: CpuCircuit,
    state: bool,
    requirement: str | None = None,
):
    """Launch the forward: ``(values, aux, arg, out)``: the value buffer ``[num_nodes, B]``,
    the backward's state ``[num_nodes - num_leaves, B]`` (with ``state`` where a reduction
    needs it, else ``[0, B]``) and the roots ``out: [B, num_roots]``, from ``pos`` / ``neg``
    ``[B, V]`` (C-contiguous float32/float64; ``neg`` ``None``: the semiring's complement).

    With a ``requirement`` (``"must hold probabilities in [0, 1] ..."``) the weights are
    checked against the semiring's range (``[-inf, 0]`` in log space, else ``[0, 1]``; NaN
    passes) in the same call, and :class:`ValueRangeError` names the first that breaks it."""
    batch, dtype = pos.shape[0], pos.dtype
    threads, chunks = _plan(batch, circuit.widest_layer)
    values = np.empty((circuit.num_nodes, batch), dtype)
    if state:
        internal = circuit.num_nodes - circuit.num_leaves
        aux = np.empty((internal if circuit.with_aux else 0, batch), dtype)
        arg = np.empty((internal if circuit.with_arg else 0, batch), np.int32)
    else:  # scratch rows, one per thread
        aux, arg = np.empty((threads, batch), dtype), np.empty((threads, batch), np.int32)
    sums = np.empty((threads, batch), dtype)
    out = np.empty((batch, circuit.num_roots), dtype)
    complement, *constants = circuit.forward_constants[dtype, neg is not None]
    check = _NO_CHECK if requirement is None else _CHECK_LOG if circuit.log_space else _CHECK_PROB
    args = (values, aux, arg, sums, state, pos, pos if neg is None else neg, complement)
    if threads == 1:
        outside = _circuit_fwd_serial(*args, *constants, out, check)
    else:
        no_chunks = _NO_CHUNKS if chunks is None else chunks
        outside = _circuit_fwd_parallel(
            *args, *constants, out, check, no_chunks, threads, ROW_PARALLEL_MIN_WORK
        )
    if outside:
        for name, x in (("pos", pos), ("neg", neg)):
            found = None if x is None else x[outside_weight_range(x, circuit.log_space)]
            if found is not None and found.size:
                raise ValueRangeError.found(name, requirement, found)
    return values, aux, arg, out


_NO_CHUNKS = np.zeros(0, dtype=np.int64)

#: The smallest normal number: a product of non-zero factors below it (or not finite) lost
#: digits to underflow (overflow), and the backward recomputes the other factors' product.
_TINY = {
    np.dtype(np.float32): np.float32(1.1754943508222875e-38),
    np.dtype(np.float64): 2.2250738585072014e-308,
}


def circuit_bwd(grad_out, pos, neg_given: bool, values, aux, arg, circuit: CpuCircuit):
    """Launch the backward: ``grads: [2, B, V]`` (``[1, B, V]`` without ``neg``), the
    gradients of ``pos`` (and ``neg``) from ``grad_out: [B, num_roots]`` and the forward's
    ``values`` / ``aux`` / ``arg`` (C-contiguous numpy arrays)."""
    batch, dtype = pos.shape[0], pos.dtype
    complement, tautology = _modes(circuit.log_space, circuit.smooth, circuit.or_code, neg_given)
    threads, chunks = _plan(batch, circuit.widest_block)
    grad = np.empty_like(values)
    grads = np.empty((2 if neg_given else 1, batch, circuit.num_vars), dtype)
    args = (grad, values, aux, arg, grad_out, pos, complement, tautology, circuit.child)
    args += (circuit.offsets, circuit.parent_offsets, circuit.parent_split, circuit.parent)
    args += (circuit.parent_edge, circuit.seed_index, circuit.seed_offsets)
    args += (circuit.seed_positions, circuit.row_starts, circuit.and_code, circuit.or_code)
    args += (_TINY[dtype], grads)
    if threads == 1:
        _circuit_bwd_serial(*args)
    else:
        no_chunks = _NO_CHUNKS if chunks is None else chunks
        _circuit_bwd_parallel(*args, no_chunks, threads, ROW_PARALLEL_MIN_WORK)
    return grads


# ---------------------------------------------------------------------------- autograd
def _array(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return (t.detach() if t.requires_grad else t).contiguous().numpy()


def _forward_tensors(pos, neg, circuit: CpuCircuit, state: bool, requirement: str | None):
    """:func:`circuit_fwd` on tensors: ``(values, aux, arg, out)`` as tensors."""
    arrays = circuit_fwd(_array(pos), _array(neg), circuit, state, requirement)
    return tuple(torch.from_numpy(a) for a in arrays)


def _grads(grad_out, pos, neg, state, circuit):
    """The backward, ``[1 or 2, B, V]``: as a Function that refuses to be differentiated where
    autograd records it (``create_graph=True``, ``torch.func``), else directly. ``state``:
    the forward's ``(values, aux, arg)``, tensors or numpy arrays."""
    if torch.is_grad_enabled():
        state = [s if isinstance(s, torch.Tensor) else torch.from_numpy(s) for s in state]
        return _CpuCircuitBackward.apply(grad_out, pos, neg, circuit, *state)
    arrays = [s if isinstance(s, np.ndarray) else _array(s) for s in state]
    grads = circuit_bwd(_array(grad_out), _array(pos), neg is not None, *arrays, circuit)
    return torch.from_numpy(grads)


class _EagerCpuFunction(torch.autograd.Function):
    """The whole circuit as one autograd node (outside ``torch.func`` transforms): the roots
    as the only output. The forward's buffers stay numpy arrays on the ctx (nothing else
    holds them); the weights are saved as tensors, so that writing to them in place before
    the backward raises, as autograd does."""

    @staticmethod
    def forward(ctx, pos, neg, circuit: CpuCircuit, requirement: str | None):
        values, aux, arg, out = circuit_fwd(_array(pos), _array(neg), circuit, True, requirement)
        ctx.circuit, ctx.state = circuit, (values, aux, arg)
        ctx.save_for_backward(pos, neg)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        pos, neg = ctx.saved_tensors
        grads = _grads(grad_out, pos, neg, ctx.state, ctx.circuit)
        return grads[0], None if neg is None else grads[1], None, None

    @staticmethod
    def jvp(ctx, *tangents):
        raise TransformError(_NO_FORWARD_MODE)


class CpuCircuitFunction(torch.autograd.Function):
    """The whole circuit as one autograd node under ``torch.func`` transforms.

    ``apply(pos, neg, circuit, requirement)`` (``requirement``: see :func:`circuit_fwd`)
    returns ``(values, aux, arg, roots)``: the forward's buffers are outputs
    (non-differentiable) rather than ctx attributes so that torch.func sees them; the roots
    ``[B, num_roots]`` are the one differentiable output. Under ``vmap`` the vmapped dimension
    joins the batch (one kernel call for the whole vmapped batch), and the backward is itself a
    vmappable Function (:class:`_CpuCircuitBackward`), so ``vmap(grad(f))`` and ``jacrev``
    work. Forward mode (``jvp``) raises :class:`TransformError`.
    """

    @staticmethod
    def forward(pos, neg, circuit: CpuCircuit, requirement: str | None):
        return _forward_tensors(pos, neg, circuit, True, requirement)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pos, neg, circuit, _ = inputs
        ctx.circuit = circuit
        ctx.mark_non_differentiable(*output[:3])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(pos, neg, *output[:3])

    @staticmethod
    def backward(ctx, grad_values, grad_aux, grad_arg, grad_out):
        if grad_out is None:
            return None, None, None, None
        pos, neg, *state = ctx.saved_tensors
        grads = _grads(grad_out, pos, neg, state, ctx.circuit)
        return grads[0], None if neg is None else grads[1], None, None

    @staticmethod
    def jvp(ctx, *tangents):
        raise TransformError(_NO_FORWARD_MODE)

    @staticmethod
    def vmap(info, in_dims, pos, neg, circuit, requirement):
        if in_dims[0] is None and in_dims[1] is None:
            return CpuCircuitFunction.apply(pos, neg, circuit, requirement), (None,) * 4
        width = info.batch_size
        pos_b, neg_b = (
            _fold_rows(t, d, width) for t, d in zip((pos, neg), in_dims[:2], strict=True)
        )
        values, aux, arg, out = CpuCircuitFunction.apply(pos_b, neg_b, circuit, requirement)
        state = tuple(_unfold_columns(t, width) for t in (values, aux, arg))
        return (*state, _unfold_rows(out, width)), (1, 1, 1, 0)


class _CpuCircuitBackward(torch.autograd.Function):
    """:func:`circuit_bwd` as a Function of its own, for its vmap rule (``vmap(grad(f))``
    runs the backward on vmapped tensors; ``jacrev`` vmaps the gradient alone). It has no
    backward itself: differentiating it raises :class:`TransformError`. ``pos`` and ``neg``
    are inputs so that differentiating the gradient reaches that refusal rather than a silent
    zero."""

    @staticmethod
    def forward(grad_out, pos, neg, circuit, values, aux, arg):
        arrays = [_array(t) for t in (grad_out, pos, values, aux, arg)]
        return torch.from_numpy(circuit_bwd(*arrays[:2], neg is not None, *arrays[2:], circuit))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise TransformError(_NO_DOUBLE_BACKWARD)

    @staticmethod
    def jvp(ctx, *tangents):
        raise TransformError(_NO_DOUBLE_BACKWARD)

    @staticmethod
    def vmap(info, in_dims, grad_out, pos, neg, circuit, values, aux, arg):
        if all(d is None for d in in_dims):
            return _CpuCircuitBackward.apply(grad_out, pos, neg, circuit, values, aux, arg), None
        width = info.batch_size
        rows = [
            _fold_rows(t, d, width) for t, d in zip((grad_out, pos, neg), in_dims[:3], strict=True)
        ]
        columns = [
            _fold_columns(t, d, width) for t, d in zip((values, aux, arg), in_dims[4:], strict=True)
        ]
        grads = _CpuCircuitBackward.apply(*rows, circuit, *columns)
        return grads.reshape(grads.shape[0], width, grads.shape[1] // width, grads.shape[2]), 1


def _fold_rows(t: torch.Tensor | None, dim: int | None, width: int) -> torch.Tensor | None:
    """A vmapped ``[B, X]`` (vmapped dimension ``dim``) as ``[width * B, X]``: row
    ``w * B + b``; an unbatched tensor (``dim`` None) repeated for every ``w``."""
    if t is None:
        return None
    t = t.expand(width, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.reshape(width * t.shape[1], t.shape[2])


def _unfold_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.reshape(width, t.shape[0] // width, t.shape[1])


def _fold_columns(t: torch.Tensor, dim: int | None, width: int) -> torch.Tensor:
    """A vmapped ``[n, B]`` as ``[n, width * B]`` (column ``w * B + b``, as :func:`_fold_rows`
    orders the rows)."""
    t = t.unsqueeze(1).expand(t.shape[0], width, t.shape[1]) if dim is None else t.movedim(dim, 1)
    return t.reshape(t.shape[0], width * t.shape[2])


def _unfold_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.reshape(t.shape[0], width, t.shape[1] // width)


def forward_mode_active(*tensors: torch.Tensor | None) -> bool:
    """Whether a forward-mode derivative (``torch.func.jvp``, ``jacfwd``, ``hessian``, or a
    dual tensor of ``torch.autograd.forward_ad``) or a derivative of a derivative through
    nested ``torch.func`` gradient transforms would run through this call: the transforms
    this backend does not serve."""
    if forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors
    ):
        return True
    if not torch._C._are_functorch_transforms_active():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    keys = [i.key() for i in retrieve_all_functorch_interpreters()]
    return TransformType.Jvp in keys or keys.count(TransformType.Grad) > 1


def circuit_forward_cpu(
    pos: torch.Tensor,
    neg: torch.Tensor | None,
    circuit: CpuCircuit,
    requirement: str | None = None,
) -> torch.Tensor:
    """The whole circuit with the CPU kernels: literal weights ``pos`` (and ``neg``, else the
    semiring's complement of ``pos``) ``[B, V]`` float32/float64 CPU tensors -> the roots
    ``[B, num_roots]``, differentiable once (reverse mode) and composable with ``torch.func``
    (``vmap``, ``grad``, ``vmap(grad)``, ``jacrev``). With no gradient to prepare it keeps no
    backward state. With a ``requirement`` the weights are checked against the semiring's
    range (:func:`circuit_fwd`).

    Raises :class:`TransformError` where forward-mode AD reaches it or its gradient is
    differentiated again (the PyTorch path, ``backend="torch"``, serves both).
    """
    if not (needs_grad(pos) or (neg is not None and needs_grad(neg))):
        out = circuit_fwd(_array(pos), _array(neg), circuit, False, requirement)[-1]
        return torch.from_numpy(out)
    if torch._C._are_functorch_transforms_active():
        return CpuCircuitFunction.apply(pos, neg, circuit, requirement)[-1]
    return super(torch.autograd.Function, _EagerCpuFunction).apply(pos, neg, circuit, requirement)
