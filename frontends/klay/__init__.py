"""A KLay-compatible backend: KLay's API, evaluated by trilay.

`KLay <https://github.com/ML-KULeuven/klay>`_ (PyPI ``klaycircuits``) is the circuit backend
other frameworks call. This package has its construction API, its node semantics and its torch
modules' contract. Code of your own switches with one import::

    # from klay import Circuit
    from trilay.frontends.klay import Circuit

    circuit = Circuit()
    circuit.add_sdd(sdd_node)  # or add_sdd_from_file / add_d4_from_file
    module = circuit.to_torch_module(semiring="log")  # a torch.nn.Module
    log_p = module(x_pos)  # [B, V] -> [B, roots]; [V] -> [roots]

A framework that does ``import klay`` itself (DeepLog) switches with :func:`install`, which
makes ``import klay``, ``klay.torch``, ``klay.torch.circuit_modules`` and ``klay.torch.utils``
give this package in the current process (:func:`uninstall`, or the context manager
:func:`installed`, switch back; see :mod:`trilay.frontends.klay.switch`). KLay 0.1.2's own test
suite passes through the switch, unmodified (``tests/klay_upstream``).

Nodes behave as KLay's (:mod:`trilay.frontends.klay.circuit`): constants fold and equal AND / OR
nodes merge as they are added, dummy nodes lift children to adjacent layers, so ``nb_nodes()``,
node identity, ``get_ix()`` and ``Circuit._get_indices()`` equal KLay's (tests/test_klay.py
checks them against klaycircuits 0.1.2 node by node). ``check_sdnnf``,
``check_decomposability`` and ``check_smooth`` report the nodes that break decomposability or
smoothness. The module evaluates the circuit *as written*, like KLay: no smoothing, so ``mpe``
and ``godel`` are KLay's max-product and max-min over the circuit's own branches (for the true
maximum over complete models use :mod:`trilay.engine` with ``compile(smooth=True)``).

Outputs and input gradients equal KLay's in all four semirings (``real``, ``log``, ``mpe``,
``godel``), for ``[V]`` and ``[B, V]`` inputs, with and without ``x_neg``. Where this differs
from KLay 0.1.2 (each checked against klaycircuits 0.1.2 in tests/test_klay*.py):

- ``to_torch_module`` and ``_get_indices`` leave the circuit unchanged (KLay's remove the
  unused nodes, invalidating pointers to them, and add a root layer on every call, so a second
  module of the same circuit is one layer deeper), and ``compile`` defaults to ``False``: on
  the GPU trilay runs one fused kernel per layer without compiling, and on the CPU inductor's
  compile of a circuit costs seconds to minutes. ``compile=True`` wraps the module in
  :func:`torch.compile` (the default inductor backend); on the PyTorch path the module traces
  with ``fullgraph=True``, without graph breaks (the Triton path is not verified under
  ``torch.compile``: dynamo cannot trace Triton's interpreter).
- ``eps`` is accepted and ignored, with a warning when non-zero: trilay's log semiring is exact
  at probability 0 (``-inf`` with zero gradients, never NaN). KLay adds ``eps`` inside each
  log-sum (``log(sum + eps)``) and inside ``klay.torch.utils.log1mexp`` (default ``1e-12``).
- Inputs may have any leading batch shape, ``[..., V] -> [..., roots]`` (KLay takes ``[V]`` or
  ``[B, V]`` only, and its probabilistic circuits ``[V]`` only). Extra trailing columns beyond
  the circuit's variables are ignored, as in KLay; fewer raise
  :class:`~trilay.engine.errors.ShapeError` (KLay: ``IndexError``), as does an ``x_neg`` of
  another shape. ``V`` is the largest variable of any literal node. float32/float64 evaluate
  in their own precision, float16/bfloat16 in float32; other dtypes raise
  :class:`~trilay.engine.errors.DTypeError` (KLay computes integer inputs in integer
  arithmetic). ``condition`` and ``to_pc`` read integer and bool evidence as values, as KLay.
- Errors are trilay's typed errors (``SemiringError``, ``CircuitError``, ``ShapeError`` are
  ``ValueError`` subclasses, as KLay's unknown-semiring ``ValueError``; ``DTypeError`` a
  ``TypeError``). KLay raises ``RuntimeError`` for a circuit with no root, and crashes the
  process (segmentation fault) for a ``NodePtr`` of another circuit or of a removed node.
  Literals are checked (``|literal| <= 2**30 - 1``, what KLay's 32-bit ``2v + sign`` holds).
- A literal in both ``true_lits`` and ``false_lits`` is a ``CircuitError`` (KLay fixes it
  true). ``add_d4_from_file`` reads d4's edge lines in any order (KLay needs each node's edges
  before the node is used as a child) and reads c2d's format too; the literals on a d4 edge
  into an AND node form an AND node of their own (KLay appends them to the parent): the same
  function, possibly more nodes.
- ``mpe`` / ``godel`` gradients split evenly between tied children, as ``amax`` does. KLay's
  backward (``torch.segment_reduce``'s) gives every tied child the whole upstream gradient when
  it is negative.
- ``torch.func.vmap`` of the forward, gradients through it and ``vmap(grad(f))`` (per-example
  gradients) work in every semiring, on the PyTorch path and on the Triton path (CUDA tensors
  by default), whose vmap rule folds the vmapped dimension into the batch: one kernel launch
  per layer for the whole vmapped batch. KLay's module runs both through torch's slow
  fallback.
- ``module.layers`` describes KLay's layers (:class:`~trilay.frontends.klay.modules.LayerView`:
  ``ix_in``, ``offsets``, ``ix_out``, ``in_shape``, ``out_shape``); trilay evaluates its own
  compilation of them, not these layers.
- Probabilistic circuits keep one flat ``weights`` parameter over the edges of the OR nodes
  with two or more children (KLay: one per sum layer, chain nodes included, whose normalized
  weight is always 1), so state dicts do not carry over; ``layers[k].weights`` of a sum layer is
  a view of its slice, so ``layers[k].weights.data.zero_()`` works as in KLay. At equal weights
  both compute the same values. They sample exactly, in batches, optionally under literal
  weights (:meth:`ProbabilisticCircuitModule.sample`; ``num_samples`` must be ``None`` or
  positive); KLay's ``sample()`` draws one assignment, picks each OR child by its edge weight
  alone (ignoring the children's values), ignores the literal weights, and leaves variables a
  branch does not mention false. In ``condition`` / ``to_pc`` an OR node whose children are all
  0 keeps its weights / gets uniform ones (KLay sets their raw weights to ``-inf``: uniform
  in its ``real`` semiring, NaN outputs in ``log``), and evidence of probability 0 is a
  ``CircuitError``.
- The structural checks name the child that breaks a property (KLay's smoothness detail always
  says ``child 1``) and list a scope's variables by their numbers (KLay's lists only variables
  ``1..n_vars_found``); ``node_hash`` is the node's id in its circuit (KLay: its Merkle hash),
  and a violation also carries the node's ``NodePtr`` as ``node``.
- Not provided: ``to_jax_function`` (``klay.jax``), the layer classes of ``klay.torch.layers``
  and the extension module ``klay.klay_ext``.
"""

from .circuit import *  # noqa: F403  (KLay's top-level names: Circuit, NodePtr, the checks)
from .circuit import __all__ as _klay_names
from .modules import (
    SEMIRINGS,
    CircuitModule,
    LayerView,
    ProbabilisticCircuitModule,
    SumLayerView,
)
from .switch import install, installed, is_installed, uninstall

__all__ = [
    *_klay_names,
    "CircuitModule",
    "ProbabilisticCircuitModule",
    "LayerView",
    "SumLayerView",
    "SEMIRINGS",
    "install",
    "uninstall",
    "installed",
    "is_installed",
]
