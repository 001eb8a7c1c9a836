"""``python -m trilay.engine``: compile a circuit and evaluate it, with its gradient.

Without arguments it runs on the built-in 4x4 Sudoku constraint (an SDD from KLay's
experiments, 64 variables, 288 models) and checks the model count against PySDD.
"""

from __future__ import annotations

import argparse
import math
import time
from importlib import resources

import torch

from . import SEMIRINGS, Circuit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trilay.engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sdd", help="SDD file (default: the built-in sudoku_4)")
    parser.add_argument("--vtree", help="its vtree file")
    parser.add_argument("--nnf", help="a d-DNNF file (c2d or d4) instead of an SDD")
    parser.add_argument("--cnf", help="a DIMACS CNF file, compiled with PySDD")
    parser.add_argument("--semiring", default="log", choices=sorted(SEMIRINGS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-smooth", action="store_true", help="compile the circuit as written")
    args = parser.parse_args(argv)

    circuit = Circuit()
    t0 = time.perf_counter()
    if args.nnf:
        source = args.nnf
        circuit.add_nnf_file(args.nnf)
    elif args.cnf:
        source = args.cnf
        circuit.add_cnf(args.cnf)
    elif args.sdd:
        source = args.sdd
        circuit.add_sdd_file(args.sdd, args.vtree)
    else:
        data = resources.files("trilay.engine") / "data"
        source = "built-in sudoku_4 (valid 4x4 Sudoku grids, 288 models)"
        with (
            resources.as_file(data / "sudoku_4.sdd") as sdd,
            resources.as_file(data / "sudoku_4.vtree") as vt,
        ):
            circuit.add_sdd_file(sdd, vt)
    t1 = time.perf_counter()
    compiled = circuit.compile(smooth=not args.no_smooth).to(args.device)
    t2 = time.perf_counter()
    print(f"circuit   {source}")
    load_ms, compile_ms = 1e3 * (t1 - t0), 1e3 * (t2 - t1)
    print(f"loaded    {circuit.num_nodes} IR nodes, {circuit.num_edges} edges in {load_ms:.1f} ms")
    print(
        f"compiled  {compiled.num_layers} layers, {compiled.num_nodes} nodes, "
        f"{compiled.num_edges} edges, {compiled.num_vars} variables in {compile_ms:.1f} ms"
    )

    module = compiled.module(args.semiring)
    semiring = module.semiring
    V = compiled.num_vars
    probs = torch.rand(args.batch, V, device=args.device, dtype=torch.float64)
    weights = (probs.log() if semiring.log_space else probs).requires_grad_(True)
    out = module(weights)
    out.sum().backward()
    t3 = time.perf_counter()
    out = module(weights)
    out.sum().backward()
    t4 = time.perf_counter()
    print(
        f"evaluated {args.semiring} semiring, batch {args.batch}: forward+backward "
        f"{1e3 * (t3 - t2):.1f} ms first call, {1e3 * (t4 - t3):.1f} ms next call"
    )
    print(f"root[0] for the first 3 batch rows: {out[:3, 0].tolist()}")
    print(f"|grad| mean over literal weights: {weights.grad.abs().mean().item():.4g}")

    half = torch.full((1, V), 0.5, dtype=torch.float64, device=args.device)
    log_half = compiled.module("log")(half.log())[0, 0].item()
    count = math.exp(log_half + V * math.log(2))
    print(f"model count (weights 1/2, times 2^V): {count:.6g}")


if __name__ == "__main__":
    main()
