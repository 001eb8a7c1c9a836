"""``python -m benchmarks.compile_scale``: what compiling costs as circuits grow.

Each case runs in a process of its own (its peak memory is its own) after warm-up compiles,
smoothed and not (the numba passes load from their disk cache once per process and signature;
that load is reported apart):

- ``or-N``: an OR of ``N`` literals, smoothed (every child misses ``N - 1`` variables);
- ``and-N``: an AND of ``N`` literals, smoothed (nothing to add);
- ``chain-D``: ``n_k = OR(AND(n_{k-1}, x_k), -x_k)``, ``D`` deep (a sequence model's shape),
  as written and smoothed;
- ``3cnf-N``: the benchmark's random 3-CNF (``N`` variables, ``N/2`` clauses, seed 1)
  compiled by PySDD on a balanced vtree, beside PySDD's own compile time in the same process.

Per case: IR nodes and edges, layered nodes (internal: without the leaf rows), edges and
layers, the compile time, and the peak resident memory above what the process held when
compiling began (the kernel's high-water mark reset there: an earlier step's peak is not
counted); for ``3cnf-N`` also ``add_sdd``'s time and peak (PySDD's save and trilay's
reading); and issue 15's target for the case, met or not (:func:`target`). Results: a table
on stdout and ``compile-scale-<date>.json`` under ``--output`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time

CASES = ("or-100000", "and-100000", "chain-4000", "chain-200000", "3cnf-60")

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from trilay.engine import Circuit

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024


# Reset the peak (VmHWM) to the current resident set, so that the next step's peak is its own,
# not an earlier step's (PySDD's, reading the SDD); returns the resident MB now.
def start_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mb("VmRSS")


kind, size = sys.argv[1].rsplit("-", 1)
size = int(size)
t = time.perf_counter()
warm = Circuit(2)
warm.add_root(warm.disjoin([warm.literal(1), warm.literal(-2)]))
warm.compile()
warm.compile(smooth=False)
cache_load = time.perf_counter() - t
extra = {}
c = Circuit(size)
if kind == "or":
    c.add_root(c.disjoin([c.literal(v) for v in range(1, size + 1)]))
elif kind == "and":
    c.add_root(c.conjoin([c.literal(v) for v in range(1, size + 1)]))
elif kind == "chain":
    n = c.literal(1)
    for k in range(2, size + 1):
        n = c.disjoin([c.conjoin([n, c.literal(k)]), c.literal(-k)])
    c.add_root(n)
else:
    from benchmarks.workloads import compile_3cnf
    t = time.perf_counter()
    manager, root = compile_3cnf(size)
    extra["pysdd_compile_s"] = time.perf_counter() - t
    before = start_peak()
    t = time.perf_counter()
    c.add_sdd(root)
    extra["read_s"] = time.perf_counter() - t
    extra["read_peak_mb_over_start"] = status_mb("VmHWM") - before
    del manager, root
ir_internal = sum(1 for i in range(c.num_nodes) if c.kind(i) >= 3) if c.num_nodes < 10**6 else None
rows = []
for smooth in ([True] if kind in ("or", "and") else [False, True]):
    before = start_peak()
    t = time.perf_counter()
    compiled = c.compile(smooth=smooth)
    seconds = time.perf_counter() - t
    peak = status_mb("VmHWM")
    rows.append(dict(
        case=sys.argv[1], smooth=smooth, ir_nodes=c.num_nodes, ir_edges=c.num_edges,
        ir_internal=ir_internal, nodes=compiled.num_nodes,
        internal=compiled.num_nodes - compiled.num_leaves, edges=compiled.num_edges,
        layers=compiled.num_layers, compile_s=seconds, peak_mb_over_start=peak - before,
        numba_cache_load_s=cache_load, **extra,
    ))
    del compiled
print(json.dumps(rows))
"""


def target(row: dict) -> str:
    """Issue 15's target for the row's case, and whether the row meets it ("" if none)."""
    case, seconds = row["case"], row["compile_s"]
    if case == "or-100000":
        what, met = "< 2 s", seconds < 2
    elif case == "chain-4000":
        what = "< 1 s, layered internal nodes <= IR nodes"
        met = seconds < 1 and row["internal"] <= row["ir_nodes"]
    elif case == "chain-200000":
        what, met = "< 10 s", seconds < 10
    elif case == "3cnf-60":
        what = "faster than PySDD, < 2 GB"
        met = seconds < row["pysdd_compile_s"] and row["peak_mb_over_start"] < 2048
    else:
        return ""
    return f"{what}: {'met' if met else 'NOT met'}"


def run_case(case: str, root: pathlib.Path) -> list[dict]:
    dev = root / ".dev"
    env_path = f"{dev}:{root}" if dev.exists() else str(root)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, case, str(root)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if result.returncode:
        return [{"case": case, "error": result.stderr.strip().splitlines()[-1]}]
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_scale", description=__doc__)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"default: {' '.join(CASES)}")
    parser.add_argument("--output", default=str(pathlib.Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    root = pathlib.Path(__file__).resolve().parent.parent
    rows = []
    columns = ("case", "smooth", "IR nodes", "layered internal nodes", "edges", "layers")
    columns += ("compile", "peak memory", "target")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)
    for case in args.cases:
        for row in run_case(case, root):
            if "error" not in row:
                row["target"] = target(row)
            rows.append(row)
            if "error" in row:
                print(f"| {case} | error: {row['error']} |", flush=True)
                continue
            pysdd = ""
            if "pysdd_compile_s" in row:
                pysdd = (
                    f" (PySDD {row['pysdd_compile_s']:.1f} s; add_sdd {row['read_s']:.1f} s, "
                    f"{row['read_peak_mb_over_start']:,.0f} MB)"
                )
            print(
                f"| {case} | {row['smooth']} | {row['ir_nodes']:,} | {row['internal']:,} | "
                f"{row['edges']:,} | {row['layers']:,} | {row['compile_s']:.2f} s{pysdd} | "
                f"{row['peak_mb_over_start']:,.0f} MB | {row['target']} |",
                flush=True,
            )
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compile-scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
    path.write_text(json.dumps({"environment": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
