"""``python -m benchmarks.first_call``: what the first calls cost, cold and warm.

trilay's SDD reader, compiler passes and CPU kernels are numba functions, compiled on first use
and cached on disk. This runs one fresh process with an empty numba cache (``NUMBA_CACHE_DIR``
set to a new temporary folder: a fresh install) and then a second process on that cache (every
later run), each timing, on the built-in sudoku_4 circuit: importing ``trilay.engine``, the
first ``add_sdd_file``, the first ``compile()``, the module's first forward and its first
forward+backward (log semiring, float32, batch 4, one thread). Results: a table on stdout and
``first-call-<date>.json`` under ``--output`` (default ``benchmarks/runs``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile

#: Run in each child process: prints one JSON object of seconds.
_CHILD = """
import json, time
t0 = time.perf_counter()
from importlib import resources
import torch
torch.set_num_threads(1)
from trilay.engine import Circuit
figures = {"import": time.perf_counter() - t0}
data = resources.files("trilay.engine") / "data"
circuit = Circuit()
t0 = time.perf_counter()
circuit.add_sdd_file(data / "sudoku_4.sdd", data / "sudoku_4.vtree")
figures["read"] = time.perf_counter() - t0
t0 = time.perf_counter()
compiled = circuit.compile()
figures["compile"] = time.perf_counter() - t0
module = compiled.module("log")
x = torch.rand(4, compiled.num_vars).log()
t0 = time.perf_counter()
with torch.no_grad():
    module(x)
figures["forward"] = time.perf_counter() - t0
x.requires_grad_(True)
t0 = time.perf_counter()
module(x).sum().backward()
figures["forward+backward"] = time.perf_counter() - t0
print(json.dumps(figures))
"""


def measure(cache_dir: str) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.first_call", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", default="benchmarks/runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trilay-numba-cache-") as cache_dir:
        runs = {"cold": measure(cache_dir), "warm": measure(cache_dir)}
    print(
        "| process | import | first add_sdd_file | first compile() | first forward "
        "| first forward+backward |"
    )
    print("|---|---|---|---|---|---|")
    for name, f in runs.items():
        print(
            f"| {name} | {f['import']:.2f} s | {f['read']:.2f} s | {f['compile']:.2f} s "
            f"| {f['forward']:.2f} s "
            f"| {f['forward+backward']:.2f} s |"
        )
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"first-call-{stamp}.json"
    path.write_text(json.dumps({"command": sys.argv, "seconds": runs}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
