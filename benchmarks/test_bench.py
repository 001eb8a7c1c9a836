"""pytest-benchmark over the quick workloads and MNIST addition:
``python -m pytest benchmarks --benchmark-only``.

Not part of the default test run (``testpaths = tests``). Each case is gated like the harness:
its first call must agree with trilay's float64 reference, or the case fails before timing.
Groups are (workload, batch, mode), so pytest-benchmark prints providers side by side; filter
with ``-k``, e.g. ``-k "seq_fun and trilay"``. Environment: ``BENCH_DEVICE`` (default cuda
when present), ``BENCH_SEMIRING`` (log).
"""

from __future__ import annotations

import os

import pytest
import torch

from . import harness
from .providers import QUICK_PROVIDERS, Context, all_providers
from .workloads import MNIST_ADDITION_DIGITS, REAL_WORKLOADS

WORKLOADS = [*REAL_WORKLOADS, "3cnf-30", *(f"mnist-add-{n}" for n in MNIST_ADDITION_DIGITS)]
BATCHES = [1, 128]
DEVICE = os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
SEMIRING = os.environ.get("BENCH_SEMIRING", "log")
DTYPE = torch.float32


@pytest.fixture(scope="module")
def loaded():
    """Workloads and provider setups, built once per module and shared by the cases."""
    cache: dict = {}

    def get(workload: str, provider: str):
        if workload not in cache:
            settings = harness.Settings([workload], [], BATCHES, semiring=SEMIRING, device=DEVICE)
            info, spec, (compiled, reference) = harness.describe_workload(workload, settings)
            ctx = Context(spec, SEMIRING, torch.device(DEVICE), info["ir_nodes"])
            cache[workload] = {"info": info, "ref": reference, "compiled": compiled, "ctx": ctx}
        entry = cache[workload]
        if provider not in entry:
            p = all_providers()[provider]
            reason = p.skip_reason(entry["ctx"])
            entry[provider] = (p, reason, None if reason else p.setup(entry["ctx"]))
        return entry

    return get


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", QUICK_PROVIDERS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_bench(benchmark, loaded, workload, provider, batch, mode):
    entry = loaded(workload, provider)
    _, reason, fn = entry[provider]
    if reason:
        pytest.skip(reason)
    info = entry["info"]
    pos = harness.make_inputs(batch, info["vars"], SEMIRING, DTYPE, DEVICE, seed=batch)
    ref_out, ref_grad = harness.call_once(entry["ref"], pos.double(), mode)
    out, grad = harness.call_once(fn, pos, mode)
    ok, err = harness.compare(out, ref_out, DTYPE)
    assert ok, f"{provider} disagrees with the reference (max error {err:.3g})"
    if mode == "forward+backward":
        ok, err = harness.compare(grad, ref_grad, DTYPE)
        assert ok, f"{provider}'s gradient disagrees with the reference (max error {err:.3g})"

    if mode == "forward":

        def call():
            with torch.no_grad():
                fn(pos)

    else:
        x = pos.detach().requires_grad_(True)

        def call():
            x.grad = None
            fn(x).sum().backward()

    if DEVICE.startswith("cuda"):
        inner = call

        def call():
            inner()
            torch.cuda.synchronize()

    benchmark.group = f"{workload} b={batch} {mode}"
    benchmark.extra_info.update(
        {k: info[k] for k in ("nodes", "edges", "layers", "vars")}, semiring=SEMIRING
    )
    benchmark(call)
    if benchmark.stats is not None:
        moved = harness.bytes_moved(entry["compiled"], batch, pos.element_size(), mode)
        benchmark.extra_info["gbps"] = moved / benchmark.stats.stats.median / 1e9
