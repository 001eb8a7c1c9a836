"""The compiled circuit as a module: batch shapes, dtypes, persistence, and errors."""

from __future__ import annotations

import io
import math
import os

import pytest
import torch
from conftest import (
    DATA,
    TRITON_DEVICE,
    brute_force,
    models_of_cnf,
    random_cnf,
    random_weights,
)
from trilay.engine import Circuit, CompiledCircuit, log1mexp
from trilay.engine.errors import (
    DeviceError,
    DTypeError,
    MemoryBudgetError,
    OptionError,
    ParseError,
    SemiringError,
    ShapeError,
    TrilayError,
    ValueRangeError,
)

CLAUSES = random_cnf(6, 5, seed=3)
MODELS = models_of_cnf(CLAUSES, 6)


@pytest.fixture
def compiled() -> CompiledCircuit:
    c = Circuit(6)
    c.add_cnf(CLAUSES)
    c.add_root(c.literal(2))
    return c.compile()


def expected(pos, neg=None):
    neg = 1 - pos if neg is None else neg
    flat_p, flat_n = pos.reshape(-1, 6), neg.reshape(-1, 6)
    first = brute_force(MODELS, flat_p, flat_n, "real")
    second = brute_force(models_of_cnf([[2]], 6), flat_p, flat_n, "real")
    return torch.stack([first, second], -1).reshape(*pos.shape[:-1], 2)


def test_leading_batch_dimensions(compiled):
    module = compiled.module("real")
    pos = random_weights(12, 6, 0).reshape(2, 3, 2, 6)
    out = module(pos)
    assert out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out, expected(pos))
    single = module(pos[0, 0, 0])
    assert single.shape == (2,)
    torch.testing.assert_close(single, expected(pos[0, 0, 0:1])[0])


def test_empty_batch(compiled):
    out = compiled.module("log")(torch.zeros(0, 6))
    assert out.shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_evaluates_in_float32(compiled, dtype):
    pos = random_weights(4, 6, 1, dtype=torch.float32)
    out = compiled.module("real")(pos.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected(pos.double()).float(), rtol=1e-2, atol=1e-2)


def test_float32_matches_float64(compiled):
    pos = random_weights(4, 6, 2)
    out32 = compiled.module("log")(pos.float().log())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected(pos).log(), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(compiled, tmp_path):
    path = tmp_path / "c.trilay"
    compiled.save(path)
    loaded = CompiledCircuit.load(path)
    pos = random_weights(5, 6, 3)
    for semiring in ("real", "mpe", "godel"):
        torch.testing.assert_close(loaded.module(semiring)(pos), compiled.module(semiring)(pos))
    assert (loaded.num_nodes, loaded.num_edges, loaded.num_layers) == (
        compiled.num_nodes,
        compiled.num_edges,
        compiled.num_layers,
    )


def test_module_state_dict_and_torch_save(compiled):
    module = compiled.module("real")
    names = set(module.state_dict())
    assert {"child", "offsets", "roots", "parent_offsets", "parent", "parent_edge"} <= names
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    pos = random_weights(3, 6, 4)
    torch.testing.assert_close(restored(pos), module(pos))
    other = compiled.module("real")
    other.load_state_dict(module.state_dict())
    torch.testing.assert_close(other(pos), module(pos))


def test_to_device_moves_buffers(compiled):
    module = compiled.module("real").to(torch.float64)  # dtype casts leave int buffers alone
    assert module.child.dtype == torch.int32
    meta = compiled.module("real").to("meta")
    assert meta.device.type == "meta"


def test_evaluating_after_a_move_uses_the_moved_buffers(compiled):
    # Layer views are slices of the buffers taken per call: a move must not leave them behind.
    module = compiled.module("real")
    pos = random_weights(3, 6, 4)
    torch.testing.assert_close(module(pos), expected(pos))
    out = module.to("meta")(pos.to("meta"))
    assert out.device.type == "meta" and out.shape == (3, 2)
    module = compiled.module("real")
    torch.testing.assert_close(module(pos), expected(pos))
    replaced = {name: t.clone() for name, t in compiled.module("real").state_dict().items()}
    module.load_state_dict(replaced, assign=True)
    layers, _ = module.torch_layers()
    assert layers[0].segment.data_ptr() == replaced["torch_segment"].data_ptr()
    torch.testing.assert_close(module(pos), expected(pos))


def test_errors(compiled, tmp_path):
    module = compiled.module("real")
    with pytest.raises(ShapeError, match=r"\[\.\.\., 6\]"):
        module(torch.rand(3, 5))
    with pytest.raises(ShapeError):
        module(torch.tensor(0.5))
    with pytest.raises(DTypeError, match="torch.int64"):
        module(torch.ones(2, 6, dtype=torch.int64))
    with pytest.raises(DTypeError, match="torch.Tensor"):
        module([[0.5] * 6])
    with pytest.raises(ShapeError, match="neg has shape"):
        module(torch.rand(2, 6), torch.rand(3, 6))
    with pytest.raises(DTypeError, match="neg has dtype"):
        module(torch.rand(2, 6), torch.rand(2, 6, dtype=torch.float64))
    with pytest.raises(DeviceError, match="meta"):
        module(torch.rand(2, 6, device="meta"))
    with pytest.raises(SemiringError, match="unknown semiring 'tropical'"):
        compiled.module("tropical")
    with pytest.raises(DeviceError, match="unknown backend"):
        compiled.module("real", backend="cuda-magic")
    c = Circuit(6)
    c.add_cnf(CLAUSES)
    unsmoothed = c.compile(smooth=False)
    for semiring in ("mpe", "mpe_log", "godel"):
        with pytest.raises(SemiringError, match="smooth=True"):
            unsmoothed.module(semiring)
    bad = tmp_path / "bad.trilay"
    bad.write_bytes(b"not a circuit")
    with pytest.raises(ParseError, match="bad.trilay"):
        CompiledCircuit.load(bad)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ParseError, match="not a trilay compiled circuit"):
        CompiledCircuit.load(tmp_path / "other.pt")
    # Every error is a TrilayError and the builtin it refines.
    assert issubclass(ShapeError, TrilayError) and issubclass(ShapeError, ValueError)
    assert issubclass(DTypeError, TypeError)


def test_log_semiring_probability_zero_and_one_have_finite_exact_gradients():
    """-inf log weights (probability 0) evaluate exactly, with gradients and no NaN.

    Oracle: PySDD's weighted count and literal derivatives in real space, with
    d log W / d log w = w * dW/dw / W.
    """
    from pysdd.sdd import SddManager, Vtree

    manager = SddManager.from_vtree(Vtree.from_file(str(DATA / "sudoku_4.vtree").encode()))
    root = manager.read_sdd_file(str(DATA / "sudoku_4.sdd").encode())
    c = Circuit()
    c.add_sdd_file(DATA / "sudoku_4.sdd", DATA / "sudoku_4.vtree")
    module = c.compile().module("log")
    p = random_weights(4, 64, 7)  # exact zeros and ones mixed in
    x = p.log().requires_grad_(True)
    y = (1 - p).log().requires_grad_(True)
    out = module(x, y)[:, 0]
    gx, gy = torch.autograd.grad(out.sum(), [x, y])
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    checked = 0
    for row in range(4):
        wmc = root.wmc(log_mode=False)
        for v in range(1, 65):
            wmc.set_literal_weight(manager.literal(v), p[row, v - 1].item())
            wmc.set_literal_weight(manager.literal(-v), 1 - p[row, v - 1].item())
        total = wmc.propagate()
        if total == 0:
            assert out[row].item() == float("-inf")
            continue
        checked += 1
        assert out[row].item() == pytest.approx(math.log(total), rel=1e-9)
        d_pos = torch.tensor(
            [wmc.literal_derivative(manager.literal(v)) for v in range(1, 65)], dtype=p.dtype
        )
        d_neg = torch.tensor(
            [wmc.literal_derivative(manager.literal(-v)) for v in range(1, 65)], dtype=p.dtype
        )
        torch.testing.assert_close(gx[row], p[row] * d_pos / total)
        torch.testing.assert_close(gy[row], (1 - p[row]) * d_neg / total)
    assert checked >= 1


def test_memory_budget_fails_closed(compiled):
    module = compiled.module("log", memory_budget_mb=1)
    small = module(torch.rand(4, 6).log())  # far below 1 MiB
    assert small.shape == (4, 2)
    batch = 200_000
    backend = module.backend_for(torch.device("cpu"))
    asked = module.estimate_bytes(batch, torch.float32, backend)
    # Independent lower bound: the float32 values of every compiled node must be held.
    assert asked >= compiled.num_nodes * batch * 4
    with pytest.raises(MemoryBudgetError, match=rf"{asked:,} bytes.*{2**20:,} bytes"):
        module(torch.zeros(batch, 6, requires_grad=True))
    # Inference holds less (no state for a backward), but at least its inputs and roots.
    inference = module.estimate_bytes(batch, torch.float32, backend, grad=False)
    assert (2 * 6 + 2 + 2) * batch * 4 <= inference < asked
    with pytest.raises(MemoryBudgetError, match=rf"{inference:,} bytes"):
        module(torch.zeros(batch, 6))
    # A budget between the two: inference runs, training is refused.
    module.memory_budget_mb = (inference + asked) / 2 / 2**20
    with torch.no_grad():
        assert module(torch.zeros(batch, 6, requires_grad=True)).shape == (batch, 2)
    with pytest.raises(MemoryBudgetError):
        module(torch.zeros(batch, 6, requires_grad=True))


@pytest.mark.parametrize("budget", [float("nan"), -1, 0, "10", True, [10]])
def test_memory_budget_must_be_a_positive_number(compiled, budget):
    with pytest.raises(OptionError, match="memory_budget_mb"):
        compiled.module("log", memory_budget_mb=budget)


def test_an_infinite_memory_budget_is_no_limit(compiled):
    module = compiled.module("log", memory_budget_mb=float("inf"))
    assert module.memory_budget_mb is None
    assert module(torch.rand(3, 6).log()).shape == (3, 2)


@pytest.mark.parametrize(
    ("semiring", "value", "backend"),
    [
        ("real", 1.5, "torch"),  # before: 0.25, silently
        ("real", -0.5, "triton"),
        ("mpe", 1.5, "torch"),
        ("godel", 2.0, "torch"),
        ("log", math.log(2.5), "torch"),  # probabilities passed as log-probabilities
        ("mpe_log", 0.1, "triton"),
        # the numba kernels check the weights in their forward's own pass
        ("real", -0.5, "numba"),
        ("godel", 2.0, "numba"),
        ("log", math.log(2.5), "numba"),
        ("mpe_log", 0.1, "numba"),
    ],
)
def test_weights_outside_the_semiring_range_are_refused(compiled, semiring, value, backend):
    """A typed error names the range and the values found, for pos and for neg, before any
    layer runs; validate=False lets unnormalized weights through; NaN propagates."""
    log = semiring in ("log", "mpe_log")
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    module = compiled.to(device).module(semiring, backend=backend)
    good = random_weights(2, 6, 1, extremes=False)
    good = (good.log() if log else good).to(device)
    bad = good.clone()
    bad[1, 3] = value
    what = r"log-probabilities in \[-inf, 0\]" if log else r"probabilities in \[0, 1\]"
    if device == "cpu":
        with pytest.raises(ValueRangeError, match=rf"pos must hold {what}.*1 value in"):
            module(bad)
        with pytest.raises(ValueRangeError, match="1 value in"):  # a column-major view
            module(bad.t().contiguous().t())
        with pytest.raises(ValueRangeError, match="neg must hold"):
            module(good, bad)
    unchecked = compiled.to(device).module(semiring, backend=backend, validate=False)
    assert unchecked(bad).shape == (2, 2)
    nan = good.clone()
    nan[0, 0] = float("nan")
    out = module(nan)
    assert out[0].isnan().any() and not out[1].isnan().any()
    if device == "cpu":  # a NaN beside an out-of-range value hides nothing
        nan[1, 3] = value
        with pytest.raises(ValueRangeError, match="1 value in"):
            module(nan)


def test_range_check_under_vmap_grad_and_compile(compiled):
    module = compiled.module("real")
    bad = random_weights(3, 6, 2, extremes=False)
    bad[2, 0] = 1.5
    with pytest.raises(ValueRangeError, match="pos must hold"):
        torch.func.vmap(module)(bad)
    with pytest.raises(ValueRangeError, match="pos must hold"):
        torch.func.grad(lambda x: module(x).sum())(bad)
    with pytest.raises(ValueRangeError, match="1 value in"):
        module(bad.requires_grad_())
    with pytest.raises(RuntimeError, match=r"probabilities in \[0, 1\]"):
        torch.compile(module, fullgraph=True, backend="eager")(bad)


@pytest.mark.parametrize("option", ["validate", "cuda_graphs", "fuse_layers"])
def test_flags_must_be_bools(compiled, option):
    with pytest.raises(OptionError, match=option):
        compiled.module("real", **{option: "yes"})


# ---------------------------------------------------------------------------- torch.func
SEMIRINGS = ("real", "log", "mpe", "mpe_log", "godel")
LOG_SPACE = ("log", "mpe_log")


def oracle(pos, semiring):
    """Both roots by brute force, the negative weights the complement computed in plain torch."""
    neg = torch.log(-torch.expm1(pos)) if semiring in LOG_SPACE else 1 - pos
    second = models_of_cnf([[2]], 6)
    return torch.stack(
        [brute_force(m, pos, neg, semiring) for m in (MODELS, second)], dim=-1
    ).reshape(*pos.shape[:-1], 2)


def device_for(backend: str) -> str:
    if backend in ("torch", "numba"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and not in Triton's interpreter")
    return "cpu"


def weights(semiring, seed, extremes, device):
    p = random_weights(3, 6, seed, extremes=extremes)
    return (p.log() if semiring in LOG_SPACE else p).to(device)


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_vmap_equals_the_batched_call(compiled, semiring, backend):
    device = device_for(backend)
    module = compiled.module(semiring, backend=backend).to(device)
    x = weights(semiring, 0, extremes=True, device=device)  # exact 0s and 1s: zeros, -inf
    y = weights(semiring, 1, extremes=False, device=device)
    batched = module(x)
    torch.testing.assert_close(batched.cpu(), oracle(x.cpu(), semiring))
    torch.testing.assert_close(torch.func.vmap(module)(x), batched)
    torch.testing.assert_close(torch.func.vmap(module)(x, y), module(x, y))
    # The vmapped dimension last, and neg shared by every example.
    last = torch.func.vmap(module, in_dims=1, out_dims=1)(x.t().contiguous())
    torch.testing.assert_close(last, batched.t())
    shared = torch.func.vmap(module, in_dims=(0, None))(x, y[0])
    torch.testing.assert_close(shared, module(x, y[:1].expand_as(y)))


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_per_example_gradients_under_vmap(compiled, semiring, backend):
    """vmap(grad(f)) equals each row's own autograd gradient, and autograd through a vmapped
    call, and grad of it, equal their sum (exact 0s and 1s included: zero factors, -inf log
    weights). Without them, and in the semirings whose gradient is unique there (no ties),
    vmap(grad(f)) equals plain-torch autograd of the brute-force oracle."""
    device = device_for(backend)
    module = compiled.module(semiring, backend=backend).to(device)
    cot = torch.tensor([0.7, -1.3], dtype=torch.float64, device=device)

    def loss(p):
        return (module(p) * cot).sum()

    x = weights(semiring, 2, extremes=True, device=device)
    rows = []
    for row in x:
        row = row.clone().requires_grad_(True)
        rows.append(torch.autograd.grad(loss(row), row)[0])
    rows = torch.stack(rows)
    per_example = torch.func.vmap(torch.func.grad(loss))(x)
    assert torch.isfinite(per_example).all()
    torch.testing.assert_close(per_example, rows)
    through = x.clone().requires_grad_(True)
    (torch.func.vmap(module)(through) * cot).sum().backward()
    torch.testing.assert_close(through.grad, rows)
    of_vmap = torch.func.grad(lambda p: (torch.func.vmap(module)(p) * cot).sum())(x)
    torch.testing.assert_close(of_vmap, rows)

    if semiring != "godel":  # godel: a max over models of their min weight ties often
        smooth = weights(semiring, 3, extremes=False, device=device)
        ref = smooth.cpu().clone().requires_grad_(True)
        (expected,) = torch.autograd.grad((oracle(ref, semiring) * cot.cpu()).sum(), ref)
        got = torch.func.vmap(torch.func.grad(loss))(smooth)
        torch.testing.assert_close(got.cpu(), expected)


def test_log1mexp_under_vmap_grad():
    """log(1 - e^x) and its derivative -e^x / (1 - e^x) per example. At x = 0 the complement
    is -inf: a zero gradient reaching it (as in a circuit, where a -inf term has softmax
    weight 0) gives 0, not 0 * inf = NaN; a non-zero one gives the limit, -inf."""
    x = torch.tensor(
        [[-2.0, -0.1, 0.0, -float("inf")], [-1e-8, -30.0, -0.7, 0.0]], dtype=torch.float64
    )
    upstream = torch.tensor([[1.5, -0.5, 0.0, 2.0], [1.0, 3.0, 0.25, 1.0]], dtype=x.dtype)
    per_example = torch.func.vmap(torch.func.grad(lambda v, w: (log1mexp(v) * w).sum()))(
        x, upstream
    )
    derivative = torch.exp(x) / torch.expm1(x)  # for x < 0; 0 at x = -inf
    expected = torch.where(x < 0, upstream * derivative, -torch.inf)  # x = 0: the limit
    expected[0, 2] = 0.0  # x = 0 with a zero upstream gradient
    torch.testing.assert_close(per_example, expected, rtol=1e-12, atol=0)
    finite = (x < 0) & (x > -torch.inf)
    values = torch.func.vmap(log1mexp)(x)
    torch.testing.assert_close(values[finite], torch.log(-torch.expm1(x[finite])))
    assert (values[x == 0] == -torch.inf).all() and (values[x == -torch.inf] == 0).all()


def test_torch_path_gathers_with_int64_ids(compiled):
    """index_select's CPU backward (an index_add) is several times slower with int32 ids at
    batch 1: the PyTorch path's layers carry int64 child ids, built once."""
    layers, roots = compiled.module("log", backend="torch").torch_layers()
    indices = [index for layer in layers for _, index in layer.gather.parts]
    indices += [index for _, index in roots.parts]
    assert indices and all(index.dtype == torch.int64 for index in indices)
    assert all(layer.segment.dtype == torch.int64 for layer in layers)


@pytest.mark.parametrize("semiring", ["real", "log"])
def test_forward_mode_and_hessians_on_the_torch_path(compiled, semiring):
    """jvp and per-example Hessians (forward over reverse) of the PyTorch path against the
    brute-force oracle's (the Triton path is once differentiable, reverse mode only)."""
    module = compiled.module(semiring, backend="torch")
    x = weights(semiring, 4, extremes=False, device="cpu")
    tangent = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    _, got = torch.func.jvp(module, (x,), (tangent,))
    _, want = torch.func.jvp(lambda p: oracle(p, semiring), (x,), (tangent,))
    torch.testing.assert_close(got, want)
    with torch.autograd.forward_ad.dual_level():  # dual tensors, as torch.autograd's own API
        dual = module(torch.autograd.forward_ad.make_dual(x, tangent))
        got = torch.autograd.forward_ad.unpack_dual(dual).tangent
    assert got is not None  # torch's scatter product used to drop it
    torch.testing.assert_close(got, want)
    cot = torch.tensor([0.7, -1.3], dtype=x.dtype)
    hessians = torch.func.vmap(torch.func.hessian(lambda p: (module(p) * cot).sum()))(x)
    per_row = lambda p: (oracle(p[None], semiring)[0] * cot).sum()  # noqa: E731
    expected = torch.func.vmap(torch.func.hessian(per_row))(x)
    torch.testing.assert_close(hessians, expected)
