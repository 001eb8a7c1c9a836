"""Providers: the evaluators the harness compares, each reading the same SDD file.

A provider's :meth:`~Provider.setup` loads the workload and returns ``fn(pos) -> out``, literal
weights ``pos: [B, V]`` (probabilities, or log-probabilities in the log semiring; the negative
literal gets the semiring's complement) to root values ``[B, num_roots]``. The harness times
``setup`` plus the first call as the time to first result.

- ``trilay``: ``CompiledCircuit.module(semiring)`` with its default backend (the Triton kernels
  on GPU, the numba kernels on the CPU).
- ``trilay-torch``: the same with ``backend="torch"``, trilay's PyTorch path (the reference).
- ``trilay-graphs`` (CUDA only): the same with ``cuda_graphs=True``, every launch of a
  forward (and its backward) replayed from one CUDA graph.
- ``trilay-layers`` (CUDA only): ``trilay-graphs`` with ``fuse_layers=False``, one launch per
  layer: what fusing pairs of layers gains.
- ``scatter``: :class:`benchmarks.scatter.ScatterCircuit`, gather + scatter reduce per layer.
- ``naive``: :func:`trilay.engine.evaluate_naive`, one torch op per node.
- ``klay`` / ``klay-compiled``: klaycircuits' torch module, eager / ``torch.compile``.
- ``pysdd``: PySDD's C weighted model count, one ``propagate`` per batch row (CPU); forward
  with backward adds ``literal_derivative`` of every literal after each ``propagate`` (PySDD's
  derivatives), chained to the gradient of ``pos``.

Every provider except naive and pysdd evaluates the circuit compiled with ``smooth=False``, the
SDD as written: exact in the ``real`` and ``log`` semirings with complementary weights.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from trilay.engine import Circuit

from .scatter import ScatterCircuit
from .workloads import Workload

#: Semirings every provider evaluates.
SEMIRINGS = ("log", "real")

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Context:
    """What a provider needs to know about one workload run."""

    workload: Workload
    semiring: str
    device: torch.device
    ir_nodes: int  # nodes of the loaded (uncompiled) circuit
    naive_node_limit: int = 20_000


class Provider:
    """Base class: a named evaluator with its own skip rules."""

    name = "?"

    def skip_reason(self, ctx: Context) -> str | None:
        """Why this provider cannot run this workload at all (``None``: it can)."""
        return None

    def setup(self, ctx: Context) -> Fn:
        raise NotImplementedError


def load_circuit(workload: Workload) -> Circuit:
    circuit = Circuit()
    circuit.add_sdd_file(workload.sdd, workload.vtree)
    return circuit


class TrilayProvider(Provider):
    """trilay's module; ``options`` are :class:`~trilay.engine.CircuitModule`'s;
    ``cuda_only`` for the options that tune the Triton path."""

    name = "trilay"

    def __init__(self, name: str | None = None, cuda_only: bool = False, **options):
        if name is not None:
            self.name = name
        self.cuda_only = cuda_only
        self.options = options

    def skip_reason(self, ctx: Context) -> str | None:
        if self.cuda_only and ctx.device.type != "cuda":
            return "CUDA only"
        return None

    def setup(self, ctx: Context) -> Fn:
        compiled = load_circuit(ctx.workload).compile(smooth=False).to(ctx.device)
        return compiled.module(ctx.semiring, **self.options)


class ScatterProvider(Provider):
    name = "scatter"

    def setup(self, ctx: Context) -> Fn:
        compiled = load_circuit(ctx.workload).compile(smooth=False).to(ctx.device)
        return ScatterCircuit(compiled, ctx.semiring)


class NaiveProvider(Provider):
    name = "naive"

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.ir_nodes > ctx.naive_node_limit:
            return f"{ctx.ir_nodes} IR nodes > naive limit {ctx.naive_node_limit}"
        return None

    def setup(self, ctx: Context) -> Fn:
        from trilay.engine import evaluate_naive

        circuit = load_circuit(ctx.workload)
        semiring = ctx.semiring
        return lambda pos: evaluate_naive(circuit, pos, semiring=semiring)


class KlayProvider(Provider):
    """klaycircuits' module; ``forward(x_pos: [B, V]) -> [B, roots]``.

    KLay numbers its inputs by the SDD's literals, so extra trailing variables (declared by the
    vtree but absent from the SDD) are simply never read.
    """

    def __init__(self, compiled: bool = False):
        self.compiled = compiled
        self.name = "klay-compiled" if compiled else "klay"

    def skip_reason(self, ctx: Context) -> str | None:
        if importlib.util.find_spec("klay") is None:
            return "klaycircuits not installed"
        return None

    def setup(self, ctx: Context) -> Fn:
        import klay

        if self.compiled:
            # Each circuit is a fresh compile (an honest time to first result), and dynamo's
            # default recompile limit (8 per code object) would otherwise fall back to eager
            # silently after a few circuits and batch shapes.
            import torch._dynamo

            torch._dynamo.reset()
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        circuit = klay.Circuit()
        circuit.add_sdd_from_file(str(ctx.workload.sdd))
        module = circuit.to_torch_module(semiring=ctx.semiring, compile=self.compiled)
        return module.to(ctx.device)


class PysddProvider(Provider):
    """PySDD's own weighted model count: ``set_literal_weights_from_array`` + ``propagate``
    per batch row, in float64 (``log_mode`` in the log semiring); where ``pos`` requires grad,
    ``literal_derivative`` of each literal after each ``propagate``, as PySDD documents it,
    becomes the gradient (:class:`_PysddGradient`)."""

    name = "pysdd"

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.device.type != "cpu":
            return "CPU only"
        return None

    def setup(self, ctx: Context) -> Fn:
        from pysdd.sdd import SddManager, Vtree

        vtree = Vtree.from_file(str(ctx.workload.vtree).encode())
        manager = SddManager.from_vtree(vtree)
        root = manager.read_sdd_file(str(ctx.workload.sdd).encode())
        log_mode = ctx.semiring == "log"
        wmc = root.wmc(log_mode=log_mode)
        keep = (vtree, manager, root)  # PySDD frees the manager with its last reference

        literals = np.arange(1, vtree.var_count() + 1)

        def evaluate(pos: torch.Tensor, derivatives: bool):
            x = pos.detach().cpu().double().numpy()
            neg = _log1mexp(x) if log_mode else 1.0 - x
            # PySDD's literal order: -V..-1, +1..+V.
            weights = np.ascontiguousarray(np.concatenate([neg[:, ::-1], x], axis=1))
            out = np.empty(weights.shape[0])
            d_pos, d_neg = np.empty_like(x), np.empty_like(x)
            for row in range(weights.shape[0]):
                wmc.set_literal_weights_from_array(weights[row])
                out[row] = wmc.propagate()
                if derivatives:
                    d_pos[row] = [wmc.literal_derivative(int(v)) for v in literals]
                    d_neg[row] = [wmc.literal_derivative(-int(v)) for v in literals]
            assert keep
            result = torch.from_numpy(out).to(pos.dtype)[:, None]
            if not derivatives:
                return result, None
            # d out / d pos through both literals (neg is the complement of pos): in log mode
            # PySDD gives log dWMC/dw, and out = log WMC, w = exp(x).
            if log_mode:
                grad = np.exp(x + d_pos - out[:, None]) - np.exp(x + d_neg - out[:, None])
            else:
                grad = d_pos - d_neg
            return result, torch.from_numpy(grad).to(pos.dtype)

        def fn(pos: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and pos.requires_grad:
                return _PysddGradient.apply(pos, evaluate)
            return evaluate(pos, False)[0]

        return fn


class _PysddGradient(torch.autograd.Function):
    """PySDD's value ``[B, 1]`` as a function of ``pos``, its gradient computed by PySDD in
    the forward (``evaluate(pos, True) -> (out, d out / d pos)``)."""

    @staticmethod
    def forward(ctx, pos, evaluate):
        out, grad = evaluate(pos, True)
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def _log1mexp(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(
            x > -math.log(2.0), np.log(-np.expm1(np.minimum(x, 0.0))), np.log1p(-np.exp(x))
        )


def all_providers() -> dict[str, Provider]:
    """Every provider by name, in table order."""
    providers = [
        TrilayProvider(),
        TrilayProvider("trilay-torch", backend="torch"),
        TrilayProvider("trilay-graphs", cuda_only=True, cuda_graphs=True),
        TrilayProvider("trilay-layers", cuda_only=True, cuda_graphs=True, fuse_layers=False),
        ScatterProvider(),
        NaiveProvider(),
        KlayProvider(compiled=False),
        KlayProvider(compiled=True),
        PysddProvider(),
    ]
    return {p.name: p for p in providers}


#: The providers of ``--quick`` (klay-compiled costs minutes of compilation per circuit).
QUICK_PROVIDERS = ("trilay", "trilay-torch", "trilay-graphs", "scatter", "naive", "klay", "pysdd")
