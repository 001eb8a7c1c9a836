"""The compiled circuit as a ``torch.nn.Module``: literal weights in, root values out."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from trilay.kernels.cpu import circuit_forward_cpu, cpu_circuit, forward_mode_active
from trilay.kernels.fusion import plan_fusion
from trilay.kernels.reference import (
    TorchGather,
    TorchLayer,
    circuit_forward_torch,
    needs_grad,
    outside_weight_range,
    segment_reduce_torch,
)

from .compiled import CompiledCircuit
from .errors import (
    DeviceError,
    DTypeError,
    MemoryBudgetError,
    OptionError,
    SemiringError,
    ShapeError,
    ValueRangeError,
)
from .semiring import Semiring, get_semiring

#: Backends a module can run on. ``auto``: the Triton kernels for CUDA tensors, the numba
#: kernels for CPU tensors (the PyTorch path where they cannot serve the call, see
#: :meth:`CircuitModule.backend_for`), the PyTorch path for other devices. ``triton`` on CPU
#: tensors runs the kernels in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton
#: is imported) and is refused otherwise; ``numba`` runs on CPU tensors only.
BACKENDS = ("auto", "torch", "triton", "numba")

_EXACT_DTYPES = (torch.float32, torch.float64)
_UPCAST_DTYPES = (torch.float16, torch.bfloat16)


class CircuitModule(torch.nn.Module):
    """Evaluate a compiled circuit in a semiring.

    ``forward(pos, neg=None)`` takes literal weights ``pos: [..., V]`` (variable ``v`` true,
    column ``v - 1``) and optionally ``neg: [..., V]`` (``v`` false; by default the semiring's
    complement of ``pos``: ``1 - pos``, or ``log(1 - exp(pos))`` in log space) and returns the
    roots' values ``[..., num_roots]``. Leading dimensions are batch dimensions. Weights of
    variables the circuit was compiled with as ``fixed`` are ignored.

    Dtypes: float32 and float64 evaluate in their own precision; float16 and bfloat16 are
    evaluated in float32 and the result is cast back. Anything else raises
    :class:`~trilay.engine.errors.DTypeError`.

    The index tensors are buffers, so ``.to(device)``, ``state_dict`` and ``torch.save`` work.
    Values must be on the module's device (:class:`~trilay.engine.errors.DeviceError`).

    ``backend`` (:data:`BACKENDS`): ``auto`` runs the Triton kernels on CUDA tensors and the
    numba kernels (:mod:`trilay.kernels.cpu`) on CPU tensors, with ``torch.get_num_threads()``
    threads; where those cannot serve a call (``torch.compile`` tracing, forward-mode AD,
    nested ``torch.func`` gradients) ``auto`` runs the PyTorch path instead
    (:meth:`backend_for`). ``torch`` is the PyTorch path (the reference: forward mode, exact
    second derivatives); ``triton`` and ``numba`` force those kernels, which are reverse-mode
    and once differentiable (a second derivative raises).

    ``validate`` (default on): the weights must lie in the semiring's range, probabilities
    ``[0, 1]`` (``real``, ``mpe``, ``godel`` and the fuzzy logics) or log-probabilities
    ``[-inf, 0]`` (``log``, ``mpe_log``), else :class:`~trilay.engine.errors.ValueRangeError`
    names the range and what was found: a probability of 1.5, or probabilities given to
    ``log``, would otherwise return a silently wrong number. NaN passes (it propagates as NaN,
    as in torch's own reductions). The numba kernels check in their own forward pass; on CUDA
    tensors and under ``torch.compile`` it is ``torch._assert_async`` (no host sync; a
    violation surfaces as a RuntimeError with the same message at the next sync).
    ``validate=False`` skips it, e.g. for unnormalized weights in ``real``.

    ``memory_budget_mb`` (``None`` or ``inf``: no limit): before evaluating, the module
    estimates the bytes a forward (and the backward it prepares) holds (:meth:`estimate_bytes`)
    and raises :class:`~trilay.engine.errors.MemoryBudgetError` instead of running out of
    memory midway.

    ``cuda_graphs=True`` (CUDA tensors only): the forward and its backward are captured once per
    input signature (shapes, dtype, which inputs require grad) with
    ``torch.cuda.make_graphed_callables`` and replayed afterwards, removing the per-layer
    launch cost. The circuit must not change while graphs exist. Off by default until it has
    been validated on a GPU (see tests/test_gpu.py).

    ``fuse_layers`` (Triton backend): run pairs of consecutive layers as one forward launch and
    pairs of row blocks as one backward launch where that repeats little work
    (:func:`trilay.kernels.fusion.plan_fusion`); the results are the same bits either way.
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
        validate: bool = True,
    ):
        super().__init__()
        self.semiring = get_semiring(semiring)
        for name, flag in (("cuda_graphs", cuda_graphs), ("fuse_layers", fuse_layers)):
            _check_flag(name, flag)
        _check_flag("validate", validate)
        memory_budget_mb = _check_budget(memory_budget_mb)
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
        self.num_leaves = compiled.num_leaves
        self.smooth = compiled.smooth
        self.layer_kinds = list(compiled.layer_kinds)
        self.row_starts = list(compiled.row_starts)
        self.edge_starts = list(compiled.edge_starts)
        self.memory_budget_mb = memory_budget_mb
        self.cuda_graphs = cuda_graphs
        self.fuse_layers = fuse_layers
        self.validate = validate
        self._range_requirement = _range_requirement(self.semiring)
        self._graphs: dict[tuple, object] = {}
        self._views: dict[str, object] = {}  # per-backend views of the buffers, see _apply
        self._node_hub_layers = sorted(compiled.node_hubs)
        self._parent_hub_layers = sorted(compiled.parent_hubs)
        for name, tensor in compiled.tensors().items():
            self.register_buffer(name, tensor)
        if self.smooth:
            # Each variable's tautology v OR -v is its two literals reduced as a segment.
            v = self.num_vars
            pair = torch.arange(v, device=compiled.device).repeat_interleave(2)
            self.register_buffer("tautology_segment", pair)
            self.register_buffer("tautology_offsets", torch.arange(0, 2 * v + 1, 2))
        self._torch_plan = _torch_plan(compiled)
        for name, tensor in self._torch_plan.pop("buffers").items():
            self.register_buffer(name, tensor.to(compiled.device))
        for name, tensor in _root_groups(compiled).items():
            self.register_buffer(name, tensor.to(compiled.device))
        forward_pairs, backward_pairs = plan_fusion(
            compiled.child.cpu().numpy().astype(np.int64),
            compiled.offsets.cpu().numpy().astype(np.int64),
            compiled.parent_offsets.cpu().numpy().astype(np.int64),
            compiled.row_starts,
            set(compiled.node_hubs),
            set(compiled.parent_hubs),
        )
        self._forward_pairs = sorted(forward_pairs)
        self._backward_pairs = frozenset(backward_pairs)
        for k, orphans in forward_pairs.items():
            self.register_buffer(f"orphans{k}", torch.from_numpy(orphans).to(compiled.device))

    @property
    def device(self) -> torch.device:
        return self._buffers["child"].device  # not self.child: nn.Module's __getattr__ is slow

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    def layer_sizes(self) -> list[tuple[int, int]]:
        """``(nodes, edges)`` of each layer, bottom up."""
        rows, edges = (
            itertools.pairwise(self.row_starts[1:]),
            itertools.pairwise(self.edge_starts[1:]),
        )
        return [(b - a, d - c) for (a, b), (c, d) in zip(rows, edges, strict=True)]

    def reductions(self) -> dict[str, str]:
        """The reduction of each layer kind in this module's semiring."""
        return {"and": self.semiring.prod, "or": self.semiring.sum}

    def forward(self, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        compute_dtype = self._check_inputs(pos, neg)
        backend = self.backend_for(pos.device, pos, neg)
        if self.validate and backend != "numba":  # the numba kernels check in their forward
            for name, x in (("pos", pos), ("neg", neg)):
                if x is not None:
                    self._check_range(name, x)
        if self.memory_budget_mb is not None:
            batch = math.prod(pos.shape[:-1])
            grad = needs_grad(pos) or (neg is not None and needs_grad(neg))
            asked = self.estimate_bytes(batch, compute_dtype, backend, grad)
            allowed = int(self.memory_budget_mb * 2**20)
            if asked > allowed:
                raise MemoryBudgetError(asked, allowed, f"a batch of {batch}")
        if self.cuda_graphs and pos.is_cuda:
            return self._graphed(pos, neg)
        return self._forward(pos, neg, compute_dtype, backend)

    def _graphed(self, pos: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
        """Replay (capturing on first use) the CUDA graph for this input signature."""
        args = (pos,) if neg is None else (pos, neg)
        key = tuple((a.shape, a.dtype, a.requires_grad) for a in args)
        graphed = self._graphs.get(key)
        if graphed is None:
            samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            compute_dtype = self._check_inputs(pos, neg)
            graphed = torch.cuda.make_graphed_callables(
                lambda *xs: self._forward(
                    xs[0], xs[1] if len(xs) > 1 else None, compute_dtype, "triton"
                ),
                samples,
            )
            self._graphs[key] = graphed
        return graphed(*args)

    def leaves(self, pos: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
        """The leaf rows ``[num_leaves, B]`` from ``pos``/``neg`` ``[B, V]`` (already in the
        compute dtype): false, true, the positive literals, the negative ones and, for a
        smoothed circuit, each variable's tautology ``pos OR neg`` (exactly the semiring's one
        when ``neg`` is the default complement in ``real`` or ``log``: ``p + (1 - p)`` and its
        log are one by definition, not after rounding)."""
        batch = pos.shape[0]
        pos_t = pos.t()
        neg_t = self.semiring.complement(pos_t) if neg is None else neg.t()
        # Filled in place from Python scalars: no host-to-device copy in the hot path.
        constants = torch.empty(2, batch, dtype=pos.dtype, device=pos.device)
        constants[0].fill_(self.semiring.zero)
        constants[1].fill_(self.semiring.one)
        rows = [constants, pos_t, neg_t]
        if self.smooth:
            if neg is None and self.semiring.sum in ("sum", "logsumexp"):
                tautology = constants[1:].expand(self.num_vars, batch)
            else:
                pairs = torch.stack([pos_t, neg_t], dim=1).reshape(2 * self.num_vars, batch)
                tautology = segment_reduce_torch(
                    pairs, self.tautology_offsets, self.semiring.sum, self.tautology_segment
                )
            rows.append(tautology)
        return torch.cat(rows, dim=0)

    def _forward(self, pos, neg, compute_dtype: torch.dtype, backend: str) -> torch.Tensor:
        lead, dtype = pos.shape[:-1], pos.dtype
        if len(lead) != 1:  # a reshape to the same shape would cost an autograd node
            batch = math.prod(lead)
            pos = pos.reshape(batch, self.num_vars)
            neg = None if neg is None else neg.reshape(batch, self.num_vars)
        if dtype != compute_dtype:
            pos = pos.to(compute_dtype)
            neg = None if neg is None else neg.to(compute_dtype)
        if backend == "numba":  # the kernels make the leaf rows themselves: [batch, num_roots]
            numba = self._numba_eager if torch.compiler.is_compiling() else self._numba
            out = numba(pos, neg)
        else:
            out = self._evaluate(self.leaves(pos, neg), backend).t()
        if len(lead) != 1:
            out = out.reshape(*lead, self.num_roots)
        return out if dtype == compute_dtype else out.to(dtype)

    def estimate_bytes(
        self, batch: int, dtype: torch.dtype, backend: str, grad: bool = True
    ) -> int:
        """Bytes a forward holds, at ``batch`` columns of ``dtype``.

        Every backend holds each node's value (``num_nodes`` rows). With ``grad`` (autograd
        will differentiate it) the Triton and numba paths add, for the semirings whose
        reductions need them, a value-sized aux buffer and an int32 arg buffer, and the
        backward's gradient buffer; the PyTorch path adds the gathered ``[E, B]`` edge values
        of every layer (and their reduction's input), which autograd saves. Without ``grad``:
        the node values and, on the PyTorch path, the widest layer's edge values."""
        item = torch.empty(0, dtype=dtype).element_size()
        nodes = self.row_starts[-1]
        widest_edges = max((b - a for a, b in itertools.pairwise(self.edge_starts)), default=0)
        edges = self.edge_starts[-1]
        if not grad:
            extra = 0 if backend in ("triton", "numba") else 2 * widest_edges
            return (nodes + extra) * batch * item
        if backend in ("triton", "numba"):
            internal = nodes - self.num_leaves
            needs_state = any(r not in ("sum", "logsumexp") for r in self.reductions().values())
            state = internal * (item + 4) if needs_state else 0
            return (2 * nodes) * batch * item + state * batch
        return (2 * nodes + 2 * edges) * batch * item

    def backend_for(self, device: torch.device, pos=None, neg=None) -> str:
        """The backend a forward on ``device`` (of the weights ``pos`` / ``neg``) uses.

        ``auto`` picks the Triton kernels on CUDA and the numba kernels on the CPU, except
        where those cannot serve the call and the PyTorch path can: under ``torch.compile``
        (dynamo traces torch code, not numba's) and where forward-mode AD (``jvp``,
        ``jacfwd``, ``hessian``, dual tensors) or nested ``torch.func`` gradients reach the
        weights; on other devices (``meta``) the PyTorch path. An explicit backend is never
        replaced (``numba`` raises :class:`~trilay.engine.errors.TransformError` where forward
        mode or a second derivative reaches it)."""
        if self.backend != "auto":
            return self.backend
        kind = device.type
        if kind == "cuda":
            return "triton"
        if kind != "cpu" or torch.compiler.is_compiling():
            return "torch"
        return "torch" if forward_mode_active(pos, neg) else "numba"

    def _numba(self, pos: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
        """The numba kernels on ``pos`` / ``neg`` ``[batch, V]``: the roots ``[batch, roots]``
        (the weights' range checked in the same call where ``validate`` is on)."""
        requirement = self._range_requirement if self.validate else None
        return circuit_forward_cpu(pos, neg, self.cpu_circuit(), requirement)

    # Under torch.compile, an explicit backend="numba" runs eagerly (a graph break): dynamo
    # cannot trace numba. (``auto`` traces the PyTorch path instead, see backend_for.)
    _numba_eager = torch.compiler.disable(_numba)

    def cpu_circuit(self):
        """The numba kernels' view of this module's buffers (a
        :class:`trilay.kernels.cpu.CpuCircuit` of numpy arrays sharing their memory, built once
        and again after ``.to()`` or ``load_state_dict``). Raises
        :class:`~trilay.engine.errors.DeviceError` unless the module is on the CPU."""
        views = self._views.get("numba")
        if views is None:
            if self.device.type != "cpu":
                raise DeviceError(
                    f"the numba backend runs on the CPU; the module is on {self.device}"
                )
            views = self._views["numba"] = cpu_circuit(
                {name: b for name, b in self._buffers.items() if b is not None},
                self.row_starts,
                self.layer_kinds,
                self.reductions(),
                self.semiring.zero,
                self.semiring.one,
                self.semiring.log_space,
                self.smooth,
                self.num_vars,
            )
        return views

    def _evaluate(self, leaves: torch.Tensor, backend: str) -> torch.Tensor:
        """Run the layers on ``leaves: [num_leaves, batch]`` with ``backend`` (``triton`` or
        ``torch``): the roots ``[num_roots, batch]``."""
        if backend == "triton":
            try:
                from trilay.kernels.layer import circuit_forward_triton
            except ImportError as err:
                raise DeviceError(f"the Triton backend cannot run: {err}") from err
            return circuit_forward_triton(leaves, self.triton_circuit())
        layers, roots = self.torch_layers()
        return circuit_forward_torch(leaves, layers, roots)

    def torch_layers(self) -> tuple[list[TorchLayer], TorchGather]:
        """The PyTorch path's layers and root gather, as views of this module's buffers
        (slices, built once and again after ``.to()`` or ``load_state_dict``)."""
        views = self._views.get("torch")
        if views is None:
            views = self._views["torch"] = self._torch_views()
        return views

    def _torch_views(self) -> tuple[list[TorchLayer], TorchGather]:
        buffers = self._buffers  # direct: Module.__getattr__ costs microseconds per access
        index, segment, offsets = (
            buffers["torch_index"],
            buffers["torch_segment"],
            buffers["offsets"],
        )
        reductions = self.reductions()
        n0 = self.num_leaves
        layers = []
        for k, kind in enumerate(self.layer_kinds, start=1):
            parts = tuple((s, index[a:b]) for s, a, b in self._torch_plan["parts"][k - 1])
            e0, e1 = self.edge_starts[k], self.edge_starts[k + 1]
            r0, r1 = self.row_starts[k] - n0, self.row_starts[k + 1] - n0
            layers.append(
                TorchLayer(
                    TorchGather(parts), offsets[r0 : r1 + 1], segment[e0:e1], reductions[kind]
                )
            )
        root_index = buffers["torch_root_index"]
        root_parts = tuple((s, root_index[a:b]) for s, a, b in self._torch_plan["root_parts"])
        order = buffers.get("torch_root_order")
        return layers, TorchGather(root_parts, order)

    def triton_circuit(self):
        """The Triton path's view of this module's buffers (a
        :class:`trilay.kernels.layer.TritonCircuit`, built once and again after ``.to()`` or
        ``load_state_dict``)."""
        views = self._views.get("triton")
        if views is None:
            views = self._views["triton"] = self._triton_views()
        return views

    def _triton_views(self):
        from trilay.kernels.layer import TritonCircuit, TritonLayer

        buffers = self._buffers
        reductions = self.reductions()
        layers = tuple(
            TritonLayer(
                rows=(self.row_starts[k], self.row_starts[k + 1]),
                edges=(self.edge_starts[k], self.edge_starts[k + 1]),
                reduce=reductions[kind],
                node_hub=self._hub("node_hub", k),
                parent_hub=self._hub("parent_hub", k),
            )
            for k, kind in enumerate(self.layer_kinds, start=1)
        )
        root_groups = None
        if "root_rows" in buffers:
            root_groups = tuple(buffers[f"root_{f}"] for f in ("rows", "positions", "offsets"))
        forward_pairs = {}
        if self.fuse_layers:
            forward_pairs = {k: buffers[f"orphans{k}"] for k in self._forward_pairs}
        return TritonCircuit(
            num_leaves=self.num_leaves,
            leaf_hub=self._hub("parent_hub", 0),
            layers=layers,
            and_reduce=reductions["and"],
            or_reduce=reductions["or"],
            child=buffers["child"],
            offsets=buffers["offsets"],
            parent_offsets=buffers["parent_offsets"],
            parent_split=buffers["parent_split"],
            parent=buffers["parent"],
            parent_edge=buffers["parent_edge"],
            roots=buffers["roots"],
            root_of_row=buffers["root_of_row"],
            root_groups=root_groups,
            forward_pairs=forward_pairs,
            backward_pairs=self._backward_pairs if self.fuse_layers else frozenset(),
        )

    def _hub(self, prefix: str, k: int):
        layers = self._node_hub_layers if prefix == "node_hub" else self._parent_hub_layers
        if k not in layers:
            return None
        b = self._buffers
        fields = ("chunk_offsets", "chunk_of_segment", "segment_of_chunk")
        return tuple(b[f"{prefix}{k}_{f}"] for f in fields)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() replace the buffers: views of and graphs captured on the
        # old ones are stale.
        self._graphs, self._views = {}, {}
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict(assign=True) replaces the buffers too.
        self._graphs, self._views = {}, {}
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

    def _check_range(self, name: str, x: torch.Tensor) -> None:
        """Refuse weights outside the semiring's range (see the class docstring)."""
        log = self.semiring.log_space
        if not x.is_cpu or torch.compiler.is_compiling():
            message = f"{name} {self._range_requirement}"
            torch._assert_async((~outside_weight_range(x, log)).all(), message)
            return
        plain = _unwrapped(x).detach()
        outside = outside_weight_range(plain, log)
        if bool(outside.any()):
            raise ValueRangeError.found(name, self._range_requirement, plain[outside].double())

    def extra_repr(self) -> str:
        return (
            f"semiring={self.semiring.name}, num_vars={self.num_vars}, num_roots={self.num_roots}, "
            f"num_layers={self.num_layers}, backend={self.backend}"
        )


def _torch_plan(compiled: CompiledCircuit) -> dict:
    """How the PyTorch path gathers each layer's children and the roots: edges grouped by the
    layer they read (one ``index_select`` per group), as local rows of that layer.

    Returns ``{"parts": [[(source, start, end), ...] per layer], "root_parts": [...],
    "buffers": {name: tensor}}``: ``torch_index[start:end]`` are the group's local rows,
    ``torch_segment`` each edge's node within its layer (in the grouped order), and the roots'
    own index (plus ``torch_root_order`` restoring root order when the groups reorder them).
    """
    starts = np.asarray(compiled.row_starts)
    child = compiled.child.cpu().numpy().astype(np.int64)
    fan_in = np.diff(compiled.offsets.cpu().numpy().astype(np.int64))
    node = np.repeat(np.arange(fan_in.size), fan_in)  # internal node of each edge
    source = np.searchsorted(starts, child, side="right") - 1
    index = np.empty_like(child)
    segment = np.empty_like(child)
    parts = []
    n0 = compiled.num_leaves
    for k in range(1, compiled.num_layers + 1):
        e0, e1 = compiled.layer_edges(k)
        order = np.argsort(source[e0:e1], kind="stable") + e0
        src = source[order]
        index[e0:e1] = child[order] - starts[src]
        segment[e0:e1] = node[order] - (starts[k] - n0)
        bounds = np.flatnonzero(np.diff(src)) + 1
        cuts = np.concatenate([[0], bounds, [e1 - e0]]) + e0
        parts.append(
            [(int(src[a - e0]), int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        )
    roots = compiled.roots.cpu().numpy()
    root_source = np.searchsorted(starts, roots, side="right") - 1
    root_order = np.argsort(root_source, kind="stable")
    rs = root_source[root_order]
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(rs)) + 1, [rs.size]])
    buffers = {
        "torch_index": torch.from_numpy(index),
        "torch_segment": torch.from_numpy(segment),
        "torch_root_index": torch.from_numpy(roots[root_order] - starts[rs]),
    }
    if np.any(root_order != np.arange(roots.size)):
        inverse = np.empty_like(root_order)
        inverse[root_order] = np.arange(roots.size)
        buffers["torch_root_order"] = torch.from_numpy(inverse)
    return {
        "parts": parts,
        "root_parts": [
            (int(rs[a]), int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        ],
        "buffers": buffers,
    }


def _root_groups(compiled: CompiledCircuit) -> dict[str, torch.Tensor]:
    """``root_of_row`` (int32, each row's index among the roots, -1 for the others) and, where a
    root row repeats, each distinct root row and the CSR of its positions among the roots
    (``root_rows`` int64, ``root_positions`` / ``root_offsets`` int32; ``root_of_row`` then
    indexes the distinct rows), for summing the repeated roots' gradients without atomics."""
    roots = compiled.roots.cpu().numpy()
    rows, counts = np.unique(roots, return_counts=True)
    root_of_row = np.full(compiled.num_nodes, -1, dtype=np.int32)
    if rows.size == roots.size:
        root_of_row[roots] = np.arange(roots.size)
        return {"root_of_row": torch.from_numpy(root_of_row)}
    root_of_row[rows] = np.arange(rows.size)
    offsets = np.zeros(rows.size + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return {
        "root_of_row": torch.from_numpy(root_of_row),
        "root_rows": torch.from_numpy(rows.astype(np.int64)),
        "root_positions": torch.from_numpy(np.argsort(roots, kind="stable").astype(np.int32)),
        "root_offsets": torch.from_numpy(offsets),
    }


def _unwrapped(x: torch.Tensor) -> torch.Tensor:
    """``x`` without torch.func's wrappers (a vmapped or grad-tracked tensor), as a plain
    tensor whose values can be read."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        x = functorch.get_unwrapped(x)
    return x


def _range_requirement(semiring: Semiring) -> str:
    """What the weights must be in ``semiring``, for the range error (made once per module)."""
    log = semiring.log_space
    what = "log-probabilities in [-inf, 0]" if log else "probabilities in [0, 1]"
    return f"must hold {what} for semiring {semiring.name!r}" + (
        "" if log else " (pass validate=False for unnormalized weights)"
    )


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, got {value!r}")


def _check_budget(budget) -> float | None:
    """``memory_budget_mb`` as a positive number of MiB, or ``None`` (``inf`` is no limit)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise OptionError(
            f"memory_budget_mb must be a number of MiB (or None / inf: no limit), got {budget!r}"
        )
    if math.isnan(budget) or budget <= 0:
        raise OptionError(f"memory_budget_mb must be a positive number of MiB, got {budget!r}")
    return None if math.isinf(budget) else float(budget)
