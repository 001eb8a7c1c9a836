"""The compiled circuit as a ``torch.nn.Module``: literal weights in, root values out."""

from __future__ import annotations

import math

import torch
from trilay.kernels.reference import TorchLayer, circuit_forward_torch, needs_grad

from .compiled import CompiledCircuit, Layer
from .errors import DeviceError, DTypeError, MemoryBudgetError, SemiringError, ShapeError
from .semiring import Semiring, get_semiring

#: Backends a module can run on. ``auto``: the Triton kernels for CUDA tensors, the PyTorch
#: path for CPU tensors. ``triton`` on CPU tensors runs the kernels in Triton's interpreter
#: (``TRITON_INTERPRET=1`` set before triton is imported) and is refused otherwise.
BACKENDS = ("auto", "torch", "triton")

_EXACT_DTYPES = (torch.float32, torch.float64)
_UPCAST_DTYPES = (torch.float16, torch.bfloat16)


class CircuitModule(torch.nn.Module):
    """Evaluate a compiled circuit in a semiring.

    ``forward(pos, neg=None)`` takes literal weights ``pos: [..., V]`` (variable ``v`` true) and
    optionally ``neg: [..., V]`` (``v`` false; by default the semiring's complement of ``pos``:
    ``1 - pos``, or ``log(1 - exp(pos))`` in log space) and returns the roots' values
    ``[..., num_roots]``. Leading dimensions are batch dimensions. Weights of variables the
    circuit was compiled with as ``fixed`` are ignored.

    Dtypes: float32 and float64 evaluate in their own precision; float16 and bfloat16 are
    evaluated in float32 and the result is cast back. Anything else raises
    :class:`~trilay.engine.errors.DTypeError`.

    The index tensors are buffers, so ``.to(device)``, ``state_dict`` and ``torch.save`` work.
    Values must be on the module's device (:class:`~trilay.engine.errors.DeviceError`).

    ``memory_budget_mb``: before evaluating, the module estimates the bytes a forward (and the
    backward it prepares) holds (:meth:`estimate_bytes`) and raises
    :class:`~trilay.engine.errors.MemoryBudgetError` instead of running out of memory midway.

    ``cuda_graphs=True`` (CUDA tensors only): the forward and its backward are captured once per
    input signature (shapes, dtype, which inputs require grad) with
    ``torch.cuda.make_graphed_callables`` and replayed afterwards, removing the per-layer
    launch cost. The circuit must not change while graphs exist. Off by default until it has
    been validated on a GPU (see tests/test_gpu.py).

    ``fuse_layers`` (Triton backend): run pairs of consecutive layers as one forward and one
    backward launch where that repeats little work
    (:func:`trilay.kernels.layer.plan_fusion`); the results are the same either way.
    """

    def __init__(
        self,
        compiled: CompiledCircuit,
        semiring: str | Semiring = "real",
        *,
        backend: str = "auto",
        memory_budget_mb: float | None = None,
        cuda_graphs: bool = False,
        fuse_layers: bool = True,
    ):
        super().__init__()
        self.semiring = get_semiring(semiring)
        if self.semiring.needs_smoothing and not compiled.smooth:
            raise SemiringError(
                f"semiring {self.semiring.name!r} takes a max over models and needs a smoothed "
                "circuit: compile with smooth=True"
            )
        if backend not in BACKENDS:
            raise DeviceError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.backend = backend
        self.num_vars = compiled.num_vars
        self.num_roots = compiled.num_roots
        self.layer_kinds = [layer.kind for layer in compiled.layers]
        self.memory_budget_mb = memory_budget_mb
        self.cuda_graphs = cuda_graphs
        self.fuse_layers = fuse_layers
        self._graphs: dict[tuple, object] = {}
        self._backend_layers: dict[str, list] = {}  # filled by _evaluate
        # Sizes as Python ints: the budget check reads no device memory.
        self._layer_sizes = [(layer.num_nodes, layer.num_edges) for layer in compiled.layers]
        for k, layer in enumerate(compiled.layers):
            for name, tensor in layer.tensors().items():
                self.register_buffer(f"layer{k}_{name}", tensor)

    def layer(self, k: int) -> Layer:
        """Layer ``k`` (0-based over the reduction layers) as views of this module's buffers."""
        buffers = self._buffers  # direct: Module.__getattr__ costs microseconds per layer
        return Layer(
            kind=self.layer_kinds[k],
            **{name: buffers[f"layer{k}_{name}"] for name in Layer.index_names()},
        )

    @property
    def device(self) -> torch.device:
        return self.layer0_child.device

    def forward(self, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        compute_dtype = self._check_inputs(pos, neg)
        lead = pos.shape[:-1]
        batch = math.prod(lead)
        if self.memory_budget_mb is not None:
            grad = needs_grad(pos) or (neg is not None and needs_grad(neg))
            asked = self.estimate_bytes(batch, compute_dtype, self.backend_for(pos.device), grad)
            allowed = int(self.memory_budget_mb * 2**20)
            if asked > allowed:
                raise MemoryBudgetError(asked, allowed, f"a batch of {batch}")
        if self.cuda_graphs and pos.device.type == "cuda":
            return self._graphed(pos, neg)
        return self._forward(pos, neg, compute_dtype)

    def _graphed(self, pos: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
        """Replay (capturing on first use) the CUDA graph for this input signature."""
        args = (pos,) if neg is None else (pos, neg)
        key = tuple((a.shape, a.dtype, a.requires_grad) for a in args)
        graphed = self._graphs.get(key)
        if graphed is None:
            samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            compute_dtype = self._check_inputs(pos, neg)
            graphed = torch.cuda.make_graphed_callables(
                lambda *xs: self._forward(xs[0], xs[1] if len(xs) > 1 else None, compute_dtype),
                samples,
            )
            self._graphs[key] = graphed
        return graphed(*args)

    def _forward(self, pos, neg, compute_dtype: torch.dtype) -> torch.Tensor:
        lead = pos.shape[:-1]
        batch = math.prod(lead)
        pos_t = pos.reshape(batch, self.num_vars).to(compute_dtype).t()
        if neg is None:
            neg_t = self.semiring.complement(pos_t)
        else:
            neg_t = neg.reshape(batch, self.num_vars).to(compute_dtype).t()
        # Filled in place from Python scalars: no host-to-device copy in the hot path.
        constants = torch.empty(2, batch, dtype=compute_dtype, device=pos.device)
        constants[0].fill_(self.semiring.zero)
        constants[1].fill_(self.semiring.one)
        inputs = torch.cat([constants, pos_t, neg_t], dim=0)  # [2V + 2, batch]
        out = self._evaluate(inputs)  # [num_roots, batch]
        return out.t().reshape(*lead, self.num_roots).to(pos.dtype)

    def estimate_bytes(
        self, batch: int, dtype: torch.dtype, backend: str, grad: bool = True
    ) -> int:
        """Bytes a forward holds. With ``grad`` (autograd will differentiate it): every layer's
        values (saved for the backward), the Triton path's per-node aux tensors, and the
        PyTorch path's gathered ``[E, B]`` edge values; plus the widest layer's gradient pair
        during the backward. Without: the inputs and, at the widest step, one layer with the
        layer it reads (and the PyTorch path's ``[E, B]`` edge values of that step)."""
        item = torch.empty(0, dtype=dtype).element_size()
        if not grad:
            below, peak = 2 * self.num_vars + 2, 0
            for n, e in self._layer_sizes:
                step = below + n + (2 * e if backend != "triton" else 0)
                peak, below = max(peak, step), n
            return (2 * self.num_vars + 2 + peak) * batch * item
        reductions = {"and": self.semiring.prod, "or": self.semiring.sum}
        nodes = 2 * self.num_vars + 2 + sum(n for n, _ in self._layer_sizes)
        widest = max([2 * self.num_vars + 2] + [n for n, _ in self._layer_sizes])
        total = (nodes + 2 * widest) * batch * item
        for (n, e), kind in zip(self._layer_sizes, self.layer_kinds, strict=True):
            if backend == "triton":
                if reductions[kind] not in ("sum", "logsumexp"):
                    total += n * batch * (item + 4)  # aux and int32 arg
            else:
                total += 2 * e * batch * item  # gathered values and their reduction's input
        return total

    def backend_for(self, device: torch.device) -> str:
        """The backend a forward on ``device`` uses (never a silent fallback)."""
        if self.backend != "auto":
            return self.backend
        return "triton" if device.type == "cuda" else "torch"

    def _evaluate(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the layers on ``inputs: [2V + 2, batch]`` with the chosen backend."""
        backend = self.backend_for(inputs.device)
        layers = self._backend_layers.get(backend)
        if layers is None:
            layers = self._backend_layers[backend] = self._layers_for(backend)
        if backend == "triton":
            from trilay.kernels.layer import circuit_forward_triton

            return circuit_forward_triton(inputs, layers)
        return circuit_forward_torch(inputs, layers)

    def _layers_for(self, backend: str) -> list:
        """The layers as the backend's op takes them, built once per backend and device."""
        reductions = {"and": self.semiring.prod, "or": self.semiring.sum}
        layers = map(self.layer, range(len(self.layer_kinds)))
        if backend == "triton":
            try:
                from trilay.kernels.layer import TritonLayer, plan_fusion
            except ImportError as err:
                raise DeviceError(f"the Triton backend cannot run: {err}") from err
            fields = [f for f in TritonLayer._fields if f not in ("reduce", "fused_with_next")]
            triton_layers = [
                TritonLayer(**{f: getattr(layer, f) for f in fields}, reduce=reductions[layer.kind])
                for layer in layers
            ]
            return plan_fusion(triton_layers) if self.fuse_layers else triton_layers
        # int64 child ids (a copy per layer, built once): index_select's backward is an
        # index_add, which on the CPU is 6-10x slower with int32 ids at batch 1 (measured:
        # 304k edges, 2.7 ms int64 vs 24 ms int32).
        return [
            TorchLayer(layer.child.long(), layer.offsets, reductions[layer.kind], layer.edge_parent)
            for layer in layers
        ]

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() replace the buffers: cached layer views and graphs are stale.
        self._backend_layers, self._graphs = {}, {}
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict(assign=True) replaces the buffers too.
        self._backend_layers, self._graphs = {}, {}
        return super()._load_from_state_dict(*args, **kwargs)

    def _check_inputs(self, pos, neg) -> torch.dtype:
        for name, x in (("pos", pos), ("neg", neg)):
            if x is None:
                continue
            if not isinstance(x, torch.Tensor):
                raise DTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dtype not in _EXACT_DTYPES + _UPCAST_DTYPES:
                raise DTypeError(
                    f"{name} has dtype {x.dtype}; trilay evaluates float32 and float64 "
                    "(float16/bfloat16 in float32)"
                )
            if x.dim() == 0 or x.shape[-1] != self.num_vars:
                raise ShapeError(
                    f"{name} must have shape [..., {self.num_vars}] (one weight per variable), "
                    f"got {list(x.shape)}"
                )
            if x.device != self.device:
                raise DeviceError(
                    f"{name} is on {x.device} but the circuit is on {self.device}; "
                    "move one of them with .to()"
                )
        if neg is not None:
            if neg.shape != pos.shape:
                raise ShapeError(f"neg has shape {list(neg.shape)}, pos has {list(pos.shape)}")
            if neg.dtype != pos.dtype:
                raise DTypeError(f"neg has dtype {neg.dtype}, pos has {pos.dtype}")
        return torch.float32 if pos.dtype in _UPCAST_DTYPES else pos.dtype

    def extra_repr(self) -> str:
        return (
            f"semiring={self.semiring.name}, num_vars={self.num_vars}, num_roots={self.num_roots}, "
            f"num_layers={len(self.layer_kinds)}, backend={self.backend}"
        )
