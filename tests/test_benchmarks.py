"""The benchmark harness's own logic: the correctness gate, the results file, the table, the
synthetic workload generator. Small circuits and one repeat: the timings here mean nothing."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
import pathlib
import random
import sys

import pytest
import torch

try:
    import benchmarks  # noqa: F401
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repository root, on sys.path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trilay.engine import Circuit  # noqa: E402

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import harness, report, results  # noqa: E402
from benchmarks.providers import QUICK_PROVIDERS, TrilayProvider, all_providers  # noqa: E402
from benchmarks.scatter import ScatterCircuit  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    cnf_workload,
    compile_3cnf,
    get_workload,
    mnist_addition_workload,
    random_3cnf_clauses,
)

HAS_KLAY = importlib.util.find_spec("klay") is not None


def settings(**kw) -> harness.Settings:
    base = dict(
        workloads=["sudoku_4"],
        providers=["trilay"],
        batch_sizes=[3],
        modes=list(harness.MODES),
        repeats=1,
        warmup=1,
        min_repeat_s=0.0,
    )
    return harness.Settings(**{**base, **kw})


def quiet(_line: str) -> None:
    pass


# ---------------------------------------------------------------- the correctness gate
class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.01


class WrongOutput(TrilayProvider):
    name = "wrong-output"

    def setup(self, ctx):
        module = super().setup(ctx)
        return lambda pos: module(pos) + 0.01


class WrongGradient(TrilayProvider):
    name = "wrong-gradient"

    def setup(self, ctx):
        module = super().setup(ctx)
        return lambda pos: _ScaleGrad.apply(module(pos))


class WrongShape(TrilayProvider):
    name = "wrong-shape"

    def setup(self, ctx):
        module = super().setup(ctx)
        return lambda pos: module(pos)[:1]


def test_gate_rejects_a_wrong_provider_and_does_not_time_it():
    registry = {p.name: p for p in (TrilayProvider(), WrongOutput(), WrongGradient(), WrongShape())}
    _, rows = harness.run(settings(providers=list(registry)), providers=registry, log=quiet)
    by = {(r["provider"], r["mode"]): r for r in rows}
    for mode in harness.MODES:
        assert by["trilay", mode]["status"] == "ok"
        assert by["trilay", mode]["median_ms"] > 0
        for name in ("wrong-output", "wrong-shape"):
            row = by[name, mode]
            assert row["status"] == "WRONG", row
            assert "output differs" in row["reason"]
            assert row["median_ms"] is None and row["repeats"] == 0 and row["gbps"] is None
    # Right values, wrong derivative: fine forward, rejected forward+backward.
    assert by["wrong-gradient", "forward"]["status"] == "ok"
    row = by["wrong-gradient", "forward+backward"]
    assert row["status"] == "WRONG" and "gradient differs" in row["reason"]
    assert row["median_ms"] is None
    assert "WRONG" in report.format_table(rows)


def test_a_wrong_provider_fails_the_command(tmp_path, monkeypatch, capsys):
    registry = {**all_providers(), "wrong-output": WrongOutput()}
    monkeypatch.setattr(harness, "all_providers", lambda: registry)
    monkeypatch.setattr(cli, "all_providers", lambda: registry)
    argv = ["--workloads", "road_r", "--batch-sizes", "2", "--modes", "forward", "--repeats", "1"]
    argv += ["--providers", "trilay", "--no-save"]
    assert cli.main(argv) == 0
    registry["trilay"] = WrongOutput()  # trilay itself disagreeing with the reference
    assert cli.main(argv) == 1
    assert "WRONG" in capsys.readouterr().out


def test_compare_handles_infinities_nan_and_shapes():
    ref = torch.tensor([[-math.inf, -1.0, 0.5]], dtype=torch.float64)
    assert harness.compare(ref.float(), ref, torch.float32)[0]
    assert not harness.compare(torch.tensor([[-1.0, -1.0, 0.5]]), ref, torch.float32)[0]
    assert not harness.compare(torch.tensor([[-math.inf, math.nan, 0.5]]), ref, torch.float32)[0]
    assert not harness.compare(ref[:, :2].float(), ref, torch.float32)[0]
    assert harness.compare(ref + 1e-6, ref, torch.float32)[0]
    assert not harness.compare(ref + 1e-6, ref, torch.float64)[0]


# ---------------------------------------------------------------- the table
def test_quick_table_has_every_cpu_provider():
    _, rows = harness.run(settings(providers=list(QUICK_PROVIDERS), batch_sizes=[1, 4]), log=quiet)
    assert {r["provider"] for r in rows} == set(QUICK_PROVIDERS)
    assert len(rows) == len(QUICK_PROVIDERS) * 2 * 2
    for row in rows:
        # Every row that ran passed the gate: PySDD's forward+backward (its literal
        # derivatives as the gradient) included.
        if row["provider"] == "klay" and not HAS_KLAY:
            assert row["status"] == "skipped"
        elif row["provider"] == "trilay-graphs":  # the run is on the CPU
            assert row["status"] == "skipped" and row["reason"] == "CUDA only"
        else:
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0 and row["gbps"] > 0 and row["ttfr_s"] > 0
            assert row["q25_ms"] <= row["median_ms"] <= row["q75_ms"]
    table = report.format_table(rows)
    header, *lines = table.splitlines()
    for column in ("workload", "nodes", "edges", "layers", "provider", "batch", "mode"):
        assert column in header
    for column in ("median ms", "IQR ms", "GB/s", "TTFR s", "status"):
        assert column in header
    for provider in QUICK_PROVIDERS:
        assert sum(line.split()[4] == provider for line in lines if line.strip()) >= 2
    # One verdict per (batch, mode) for each trilay variant that ran: "trilay" (the numba
    # kernels) and "trilay-torch" (the PyTorch path) on a CPU.
    verdicts = report.verdicts(rows)
    assert len(verdicts) == 8 and all("sudoku_4" in v for v in verdicts)
    assert sum("trilay-torch" in v.split(":")[0] for v in verdicts) == 4


def test_naive_is_skipped_above_its_node_limit():
    _, rows = harness.run(
        settings(providers=["naive"], modes=["forward"], naive_node_limit=100), log=quiet
    )
    assert rows[0]["status"] == "skipped"
    assert "IR nodes > naive limit 100" in rows[0]["reason"]


def test_scatter_baseline_matches_the_engine_in_real_and_log():
    circuit = Circuit()
    w = get_workload("road_r")
    circuit.add_sdd_file(w.sdd, w.vtree)
    compiled = circuit.compile(smooth=False)
    p = harness.make_inputs(5, compiled.num_vars, "real", torch.float64, "cpu", seed=3)
    for semiring, x in (("real", p), ("log", p.log())):
        x = x.clone().requires_grad_(True)
        ours = ScatterCircuit(compiled, semiring)(x)
        (g,) = torch.autograd.grad(ours.sum(), x)
        ref = compiled.module(semiring)(x)
        (g_ref,) = torch.autograd.grad(ref.sum(), x)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g, g_ref)


def test_bytes_moved_formula():
    # x1 AND x2 (no smoothing): 6 leaf rows and 1 node reading 2 edges; batch 5, float32
    c = Circuit(2)
    c.add_root(c.conjoin([c.literal(1), c.literal(2)]))
    compiled = c.compile(smooth=False)
    assert (compiled.num_nodes, compiled.num_leaves, compiled.num_edges) == (7, 6, 2)
    # forward: read 7 values, write 1; read 2 child ids and 1 + 1 offsets
    forward = 4 * 5 * (7 + 1) + 4 * (2 + 1 + 1)
    # backward: read 7 values and 1 gradient, write 7 gradients; 2 * 2 ids, 7 + 7 + 1 offsets
    backward = 4 * 5 * (7 + 1 + 7) + 4 * (2 * 2 + 2 * 7 + 1)
    assert harness.bytes_moved(compiled, 5, 4, "forward") == forward
    assert harness.bytes_moved(compiled, 5, 4, "forward+backward") == forward + backward


# ---------------------------------------------------------------- the results file
ENVIRONMENT_FIELDS = (
    "timestamp",
    "command",
    "device",
    "device_name",
    "peak_bandwidth_gbps",
    "platform",
    "python",
    "versions",
    "cuda",
    "git_commit",
    "git_dirty",
)
VERSION_FIELDS = ("torch", "triton", "trilay", "klaycircuits", "pysdd", "numpy")
ROW_FIELDS = (
    "workload",
    "vars",
    "ir_nodes",
    "nodes",
    "edges",
    "layers",
    "provider",
    "batch",
    "mode",
    "semiring",
    "dtype",
    "device",
    "status",
    "reason",
    "median_ms",
    "q25_ms",
    "q75_ms",
    "min_ms",
    "max_ms",
    "repeats",
    "bytes",
    "gbps",
    "peak_mem_bytes",
    "setup_s",
    "first_call_s",
    "ttfr_s",
    "max_abs_err",
    "max_abs_grad_err",
)


def test_results_file_has_every_field(tmp_path, capsys):
    # trilay-graphs is skipped on a CPU, pysdd on a GPU: one of them makes a skipped row.
    argv = ["--workloads", "road_r", "--providers", "trilay", "trilay-graphs", "pysdd"]
    argv += ["--batch-sizes", "2", "--repeats", "2", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "road_r" in out and "trilay" in out and "skipped: C" in out

    (path,) = tmp_path.glob("*.json")
    document = json.loads(path.read_text())
    assert set(document) >= {"environment", "settings", "workloads", "summary", "rows"}
    env = document["environment"]
    for field in ENVIRONMENT_FIELDS:
        assert field in env, field
    for field in VERSION_FIELDS:
        assert field in env["versions"], field
    assert env["versions"]["torch"] == torch.__version__
    assert env["device"] == "cpu" and env["device_name"]
    assert "--workloads road_r" in env["command"]
    assert document["settings"]["providers"] == ["trilay", "trilay-graphs", "pysdd"]
    assert document["workloads"][0]["workload"] == "road_r"

    rows = document["rows"]
    assert len(rows) == 3 * 2  # providers x modes
    for row in rows:
        for field in ROW_FIELDS:
            assert field in row, field
        if row["status"] == "ok":
            for field in ("median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms", "gbps", "ttfr_s"):
                assert row[field] > 0, field
            assert row["repeats"] == 2
            assert row["max_abs_err"] is not None
    assert {r["status"] for r in rows} == {"ok", "skipped"}

    with open(path.with_suffix(".csv")) as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows) and set(ROW_FIELDS) <= set(csv_rows[0])
    if importlib.util.find_spec("matplotlib") is not None:
        assert path.with_suffix(".png").stat().st_size > 0


# ---------------------------------------------------------------- the synthetic workload
def spec_clauses(n: int, seed: int) -> list[list[int]]:
    """The issue's recipe, written out again independently of benchmarks.workloads."""
    rng = random.Random(seed)
    out = []
    for _ in range(n // 2):
        vs = rng.sample(range(1, n + 1), 3)
        lits = []
        for v in vs:
            lits.append(v if rng.random() < 0.5 else -v)
        out.append(lits)
    return out


def test_3cnf_generator_follows_the_spec():
    clauses = random_3cnf_clauses(30, 1)
    assert clauses == spec_clauses(30, 1)
    assert len(clauses) == 15
    assert clauses[:3] == [[-5, 19, 28], [-25, -15, 16], [1, -29, -27]]
    assert random_3cnf_clauses(50, 2) == spec_clauses(50, 2)
    # The reference circuit as measured elsewhere: models of 3cnf-30 over its 30 variables.
    _, root = compile_3cnf(30, 1)
    assert root.global_model_count() == 128_283_136


def test_3cnf_sdd_counts_the_models_of_its_clauses(tmp_path):
    n = 10
    clauses = random_3cnf_clauses(n, 1)
    models = sum(
        all(any((lit > 0) == bits[abs(lit) - 1] for lit in clause) for clause in clauses)
        for bits in itertools.product([False, True], repeat=n)
    )
    _, root = compile_3cnf(n, 1)
    assert root.global_model_count() == models

    workload = cnf_workload(n, 1, cache_dir=tmp_path)
    assert workload.name == "3cnf-10" and workload.sdd.exists() and workload.vtree.exists()
    assert get_workload("3cnf-10", cache_dir=tmp_path) == workload  # from the cache
    circuit = Circuit()
    circuit.add_sdd_file(workload.sdd, workload.vtree)
    compiled = circuit.compile(smooth=False)
    assert compiled.num_vars == n
    half = torch.full((1, n), 0.5, dtype=torch.float64)
    count = compiled.module("real")(half)[0, 0].item() * 2**n
    assert round(count) == models
    assert get_workload("3cnf-10-s7", cache_dir=tmp_path).name == "3cnf-10-s7"
    with pytest.raises(ValueError, match="unknown workload"):
        get_workload("nope")
    with pytest.raises(ValueError, match="at least 1 digit"):
        get_workload("mnist-add-0", cache_dir=tmp_path)


@pytest.mark.parametrize("digits", [1, 2])
def test_mnist_addition_workload_counts_the_digit_combinations(tmp_path, digits):
    # The query's sum 10**N - 1 has one model per digit tuple (a, b) with a + b = 10**N - 1:
    # 10**N of them; every image contributes its 10 choices and the "none" atom of its
    # annotated disjunction, which the constraint keeps false.
    pytest.importorskip("problog")
    from pysdd.sdd import SddManager, Vtree

    models = sum(a + b == 10**digits - 1 for a in range(10**digits) for b in range(10**digits))
    workload = mnist_addition_workload(digits, cache_dir=tmp_path)
    assert get_workload(f"mnist-add-{digits}", cache_dir=tmp_path) == workload
    manager = SddManager.from_vtree(Vtree.from_file(str(workload.vtree).encode()))
    root = manager.read_sdd_file(str(workload.sdd).encode())
    assert manager.var_count() == 2 * digits * 11 and root.global_model_count() == models
    circuit = Circuit()
    circuit.add_sdd_file(workload.sdd, workload.vtree)
    compiled = circuit.compile(smooth=False)
    half = torch.full((1, compiled.num_vars), 0.5, dtype=torch.float64)
    count = compiled.module("real")(half)[0, 0].item() * 2**compiled.num_vars
    assert round(count) == models


def test_results_environment_tolerates_missing_git(monkeypatch):
    monkeypatch.setattr(results, "_git", lambda *args: None)
    monkeypatch.delenv("TRILAY_GIT_COMMIT", raising=False)
    env = results.environment("cpu")
    assert env["git_commit"] is None and env["git_dirty"] is None
    # A tree copied without .git (a lent GPU machine) names its commit by hand.
    monkeypatch.setenv("TRILAY_GIT_COMMIT", "0123abc")
    assert results.environment("cpu")["git_commit"] == "0123abc"


class ScriptedTimer:
    """A Timer whose calls take the scripted seconds, in order (``once`` and ``loop`` alike)."""

    def __init__(self, seconds):
        self.seconds = list(seconds)

    def once(self, fn):
        return self.seconds.pop(0)

    def loop(self, fn, inner):
        return self.seconds.pop(0)


def test_a_call_over_the_row_budget_is_timed_once_after_its_first():
    """A slow first call (compiling, say) is not the sample: a second call is; when that one is
    also over the budget it is the row's only sample."""
    budget = settings(max_row_s=0.5, repeats=5, warmup=1)
    slow = harness.measure(lambda: None, ScriptedTimer([2.0]), first_s=3.0, settings=budget)
    assert slow["over_budget"] and slow["repeats"] == 1 and slow["median_ms"] == 2000.0
    warm = harness.measure(
        lambda: None, ScriptedTimer([0.01, 0.01] + [0.01] * 5), first_s=3.0, settings=budget
    )
    assert not warm["over_budget"] and warm["median_ms"] == pytest.approx(10.0)


def test_rows_whose_repeats_spread_are_flagged_noisy(monkeypatch):
    def scripted(call, timer, first_s, s):
        values = [10.0, 11.0, 30.0, 31.0, 32.0]  # the 75th percentile 2.8x the 25th
        return {
            "median_ms": values[2],
            "q25_ms": values[1],
            "q75_ms": values[3],
            "min_ms": values[0],
            "max_ms": values[4],
            "repeats": 5,
            "inner": 1,
            "over_budget": False,
        }

    monkeypatch.setattr(harness, "measure", scripted)
    pos = torch.rand(2, 3)
    row = harness._gate_and_time(
        lambda x: x.sum(-1, keepdim=True),
        pos,
        "forward",
        pos.sum(-1, keepdim=True).double(),
        None,
        torch.float32,
        harness.Timer(torch.device("cpu")),
        settings(),
    )
    assert row["status"] == "noisy" and "busy" in row["reason"]
