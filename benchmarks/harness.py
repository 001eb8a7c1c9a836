"""The harness: workloads x providers x batch sizes x modes, gated by correctness, then timed.

For each workload it loads the circuit once for its statistics and for the reference (trilay's
PyTorch path in float64). For each provider it times ``setup`` (load + compile), then per batch
size and mode it makes one first call, compares its output (and, for forward+backward, the
gradient of ``out.sum()`` with respect to ``pos``) with the reference, and times the provider
only when it agrees: a provider that disagrees is reported ``WRONG`` and not timed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .providers import Context, Provider, all_providers, load_circuit
from .workloads import get_workload

MODES = ("forward", "forward+backward")
_MODE_ALIASES = {"fwd": "forward", "fwd+bwd": "forward+backward", "backward": "forward+backward"}

#: Gate tolerances per timing dtype: ``|out - ref| <= atol * max|ref| + rtol * |ref|``
#: (plus a few of the dtype's smallest normals, so float32 underflow in the real semiring
#: is not called wrong). Gradients use the same rule. In float32 the providers were measured
#: 10x to 40x inside these bounds on the real circuits and 3-CNF (log and real semirings);
#: an error of 0.01 in a log-probability (1% in probability) or 1% in a gradient is caught.
TOLERANCES = {
    torch.float32: {"rtol": 5e-5, "atol": 5e-6},
    torch.float64: {"rtol": 1e-9, "atol": 1e-11},
}


@dataclass
class Settings:
    """One run of the harness (the command line's options)."""

    workloads: list[str]
    providers: list[str]
    batch_sizes: list[int]
    modes: list[str] = field(default_factory=lambda: list(MODES))
    semiring: str = "log"
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 10
    warmup: int = 2
    min_repeat_s: float = 0.002  # a repeat loops a fast call until it lasts this long
    max_row_s: float = 2.0  # fewer repeats (never below 3) when a row would take longer
    naive_node_limit: int = 20_000
    cache_dir: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


#: Row statuses that carry a time: measured, measured on a busy machine, timed once.
TIMED = ("ok", "noisy", "budget")


def normalize_mode(mode: str) -> str:
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    return mode


def bytes_moved(compiled, batch: int, elem: int, mode: str) -> int:
    """The bytes a layered evaluation must move at least: the bandwidth figure's numerator.

    With ``N`` nodes (``n_0`` of them leaves), ``E`` edges, value size ``s`` bytes and int32
    indices, the forward reads every node's value once, writes every internal node's, and
    reads the CSR (child per edge, offsets per internal node); the backward reads every value
    and every internal node's gradient once, writes every node's gradient, and walks the
    transposed CSR (parent and parent edge per edge, offsets and split per node)::

        forward  = s*B*(N + (N - n_0)) + 4*(E + (N - n_0) + 1)
        backward = s*B*(N + (N - n_0) + N) + 4*(2*E + 2*N + 1)

    forward+backward is their sum. The same bytes are credited to every provider (an
    effective bandwidth for those that do not work this way), so GB/s compares providers as
    time does, and against the device's peak it says how far from the memory limit a
    provider is.
    """
    n, n0, e = compiled.num_nodes, compiled.num_leaves, compiled.num_edges
    total = elem * batch * (2 * n - n0) + 4 * (e + n - n0 + 1)
    if mode == "forward+backward":
        total += elem * batch * (3 * n - n0) + 4 * (2 * e + 2 * n + 1)
    return total


def make_inputs(batch: int, num_vars: int, semiring: str, dtype, device, seed: int):
    """``[batch, V]`` literal weights: probabilities in [0.05, 0.95] (their logs in log)."""
    g = torch.Generator().manual_seed(seed)
    p = 0.05 + 0.9 * torch.rand(batch, num_vars, generator=g, dtype=torch.float64)
    weights = p.log() if semiring == "log" else p
    return weights.to(device=device, dtype=dtype)


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> tuple[bool, float]:
    """Gate one tensor against the reference; returns ``(ok, max abs error)``."""
    if out.shape != ref.shape:
        return False, math.inf
    out = out.detach().to(device=ref.device, dtype=torch.float64)
    tol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    finite = torch.isfinite(ref)
    same_inf = (out == ref) & ~finite
    err = torch.where(finite, (out - ref).abs(), torch.zeros_like(ref))
    err = torch.where(finite | same_inf, err, torch.full_like(ref, math.inf))
    err = torch.nan_to_num(err, nan=math.inf)
    scale = ref[finite].abs().max().item() if finite.any() else 0.0
    bound = tol["atol"] * scale + tol["rtol"] * ref.abs() + 16 * torch.finfo(dtype).tiny
    bound = torch.where(finite, bound, torch.zeros_like(bound))
    max_err = err.max().item() if err.numel() else 0.0
    return bool((err <= bound).all()), max_err


class Timer:
    """Median and spread of a call's time: ``perf_counter`` on CPU, CUDA events on GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn: Callable[[], object]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def loop(self, fn: Callable[[], object], inner: int) -> float:
        """Seconds per call over ``inner`` back-to-back calls."""
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


#: A row whose repeats spread wider than this (75th over 25th percentile) is flagged "noisy":
#: the machine was busy while it ran, and its median is not to be compared as is.
NOISY_SPREAD = 1.5


def measure(fn, timer: Timer, first_s: float, settings: Settings) -> dict:
    """Warm up, then time ``repeats`` repeats of ``inner`` calls; returns the figures.

    A call slower than the row budget (``max_row_s``) is timed once (status ``budget``): a
    second call, as the first (the gate's) may include one-time work such as compiling."""
    if first_s > settings.max_row_s:
        second_s = timer.once(fn)
        if second_s > settings.max_row_s:
            ms = 1e3 * second_s
            figures = dict(median_ms=ms, q25_ms=ms, q75_ms=ms, min_ms=ms, max_ms=ms)
            return {**figures, "repeats": 1, "inner": 1, "over_budget": True}
        first_s = second_s
    estimate = first_s
    if first_s < settings.max_row_s / 4:  # a slow first call is its own warm-up
        warm = [timer.once(fn) for _ in range(max(1, settings.warmup))]
        estimate = min(warm)
    inner = max(1, min(10_000, math.ceil(settings.min_repeat_s / max(estimate, 1e-9))))
    repeats = settings.repeats
    affordable = int(settings.max_row_s / max(estimate * inner, 1e-9))
    repeats = max(min(3, repeats), min(repeats, affordable))
    times = sorted(timer.loop(fn, inner) for _ in range(repeats))
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {
        "median_ms": 1e3 * statistics.median(times),
        "q25_ms": 1e3 * q[0],
        "q75_ms": 1e3 * q[2],
        "min_ms": 1e3 * times[0],
        "max_ms": 1e3 * times[-1],
        "repeats": repeats,
        "inner": inner,
        "over_budget": False,
    }


def peak_memory(fn, device: torch.device) -> int | None:
    """Peak device memory of one call above what was allocated before it (GPU only)."""
    if device.type != "cuda":
        return None  # no allocator statistics for CPU tensors
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base


def describe_workload(name: str, settings: Settings) -> tuple[dict, object, object]:
    """Load a workload once: its statistics, the compiled circuit and the reference module."""
    workload = get_workload(name, settings.cache_dir)
    circuit = load_circuit(workload)
    compiled = circuit.compile(smooth=False)
    info = {
        "workload": workload.name,
        "source": workload.source,
        "vars": compiled.num_vars,
        "ir_nodes": circuit.num_nodes,
        "ir_edges": circuit.num_edges,
        "nodes": compiled.num_nodes,
        "edges": compiled.num_edges,
        "layers": compiled.num_layers,
    }
    reference = compiled.module(settings.semiring, backend="torch")
    reference = reference.to(settings.device)
    return info, workload, (compiled, reference)


def call_once(fn, pos: torch.Tensor, mode: str):
    """One call in ``mode``; returns ``(out, grad)`` (grad ``None`` in forward mode)."""
    if mode == "forward":
        with torch.no_grad():
            return fn(pos), None
    x = pos.detach().requires_grad_(True)
    out = fn(x)
    out.sum().backward()
    return out, x.grad


def run(
    settings: Settings,
    providers: dict[str, Provider] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], list[dict]]:
    """Run the grid; returns ``(workload infos, rows)``, one row per
    (workload, provider, batch, mode) with a ``status`` of ``ok``, ``WRONG``, ``skipped`` or
    ``error`` and its ``reason``."""
    registry = providers if providers is not None else all_providers()
    unknown = [p for p in settings.providers if p not in registry]
    if unknown:
        raise ValueError(f"unknown providers {unknown}; expected some of {list(registry)}")
    infos, rows = [], []
    for name in settings.workloads:
        info, workload_rows = _run_workload(name, settings, registry, log)
        infos.append(info)
        rows.extend(workload_rows)
    return infos, rows


def _run_workload(name, settings, registry, log) -> tuple[dict, list[dict]]:
    device = torch.device(settings.device)
    dtype = getattr(torch, settings.dtype)
    modes = [normalize_mode(m) for m in settings.modes]
    timer = Timer(device)
    t0 = time.perf_counter()
    info, workload, (compiled, reference) = describe_workload(name, settings)
    log(
        f"{info['workload']}: {info['vars']} vars, {info['ir_nodes']} IR nodes -> "
        f"{info['nodes']} nodes, {info['edges']} edges, {info['layers']} layers "
        f"({time.perf_counter() - t0:.2f} s to load)"
    )
    refs: dict[tuple[int, str], tuple] = {}

    def reference_for(batch: int, mode: str):
        if (batch, mode) not in refs:
            pos = make_inputs(batch, info["vars"], settings.semiring, dtype, device, batch)
            out, grad = call_once(reference, pos.double(), mode)
            refs[(batch, mode)] = (pos, out.detach(), grad)
        return refs[(batch, mode)]

    ctx = Context(workload, settings.semiring, device, info["ir_nodes"], settings.naive_node_limit)
    rows = []
    for pname in settings.providers:
        provider = registry[pname]
        skip = provider.skip_reason(ctx)
        fn, setup_s = None, None
        if skip is None:
            try:
                timer.sync()
                t0 = time.perf_counter()
                fn = provider.setup(ctx)
                timer.sync()
                setup_s = time.perf_counter() - t0
            except Exception as err:  # a provider failing must not stop the others
                skip = f"error: setup failed: {type(err).__name__}: {err}"
        for batch in settings.batch_sizes:
            for mode in modes:
                row = {
                    **info,
                    "provider": pname,
                    "batch": batch,
                    "mode": mode,
                    "semiring": settings.semiring,
                    "dtype": settings.dtype,
                    "device": str(device),
                    **_empty_figures(),
                    "setup_s": setup_s,
                }
                if skip:
                    status = "error" if skip.startswith("error") else "skipped"
                    row.update(status=status, reason=skip)
                else:
                    pos, ref_out, ref_grad = reference_for(batch, mode)
                    row.update(
                        _gate_and_time(fn, pos, mode, ref_out, ref_grad, dtype, timer, settings)
                    )
                    row["bytes"] = bytes_moved(compiled, batch, pos.element_size(), mode)
                    if row["median_ms"]:
                        row["gbps"] = row["bytes"] / (row["median_ms"] / 1e3) / 1e9
                    if row["first_call_s"] is not None:
                        row["ttfr_s"] = setup_s + row["first_call_s"]
                rows.append(row)
                log(_progress(row))
        del fn
    return info, rows


def _empty_figures() -> dict:
    return {
        "status": None,
        "reason": "",
        "median_ms": None,
        "q25_ms": None,
        "q75_ms": None,
        "min_ms": None,
        "max_ms": None,
        "repeats": 0,
        "inner": 0,
        "bytes": None,
        "gbps": None,
        "peak_mem_bytes": None,
        "first_call_s": None,
        "ttfr_s": None,
        "max_abs_err": None,
        "max_abs_grad_err": None,
    }


def _gate_and_time(fn, pos, mode, ref_out, ref_grad, dtype, timer, settings) -> dict:
    figures: dict = {}
    try:
        timer.sync()
        t0 = time.perf_counter()
        out, grad = call_once(fn, pos, mode)
        timer.sync()
        figures["first_call_s"] = time.perf_counter() - t0
    except Exception as err:
        return {"status": "error", "reason": f"error: {type(err).__name__}: {err}"}
    ok, figures["max_abs_err"] = compare(out, ref_out, dtype)
    reasons = [] if ok else [f"output differs from the reference (max error {_fmt(out, ref_out)})"]
    if mode == "forward+backward":
        if grad is None:
            reasons.append("no gradient reached the inputs")
            figures["max_abs_grad_err"] = math.inf
        else:
            grad_ok, figures["max_abs_grad_err"] = compare(grad, ref_grad, dtype)
            if not grad_ok:
                reasons.append(
                    f"gradient differs from the reference (max error {_fmt(grad, ref_grad)})"
                )
    if reasons:
        return {**figures, "status": "WRONG", "reason": "; ".join(reasons)}
    del out, grad

    if mode == "forward":

        def call():
            with torch.no_grad():
                fn(pos)

    else:
        x = pos.detach().requires_grad_(True)

        def call():
            x.grad = None
            fn(x).sum().backward()

    figures.update(measure(call, timer, figures["first_call_s"], settings))
    if figures.pop("over_budget"):
        reason = (
            f"one call, {figures['median_ms'] / 1e3:.1f} s, over the row budget of "
            f"{settings.max_row_s} s: timed once"
        )
        return {**figures, "status": "budget", "reason": reason}
    figures["peak_mem_bytes"] = peak_memory(call, pos.device)
    spread = figures["q75_ms"] / max(figures["q25_ms"], 1e-12)
    if figures["repeats"] >= 3 and spread > NOISY_SPREAD:
        reason = f"repeats spread x{spread:.1f} (25th-75th percentile): the machine was busy"
        return {**figures, "status": "noisy", "reason": reason}
    return {**figures, "status": "ok", "reason": ""}


def _fmt(out: torch.Tensor, ref: torch.Tensor) -> str:
    if out.shape != ref.shape:
        return f"shape {list(out.shape)} vs {list(ref.shape)}"
    diff = (out.detach().double().to(ref.device) - ref).abs().nan_to_num(nan=math.inf)
    return f"{diff.max().item():.3g}"


def _progress(row: dict) -> str:
    head = f"  {row['provider']:>13} b={row['batch']:<5} {row['mode']:<16}"
    if row["status"] in TIMED:
        flag = "" if row["status"] == "ok" else f" ({row['status']}: {row['reason']})"
        return f"{head} {row['median_ms']:10.3f} ms{flag}"
    return f"{head} {row['status']}: {row['reason']}"
