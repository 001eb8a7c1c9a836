"""``python -m benchmarks``: trilay against the scatter and naive baselines, KLay and PySDD.

``--quick`` (the main job; under two minutes on a fresh clone of a 2-core CPU, where trilay's
numba kernels compile on first use): the four real circuits, 3cnf-30 and mnist-add-3 (both
shipped in ``benchmarks/data``) at batch 1 and 128, forward and forward+backward, every CPU
provider, on one thread (naive only below 12000 IR nodes; a call slower than the row budget is
timed once). The full mode adds 3cnf-35..50, mnist-add-1, -2, -4 and -15, batch 16 (and 1024 on
a GPU) and ``klay-compiled`` (minutes of ``torch.compile`` per circuit and batch shape);
``--sweep`` runs 3cnf-30..50 to show how time grows with size. Results go to
``benchmarks/runs/`` (JSON, CSV, PNG plot; ignored by git), or ``--output DIR``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import harness, plot, report, results
from .providers import QUICK_PROVIDERS, SEMIRINGS, all_providers
from .workloads import MNIST_ADDITION_DIGITS, REAL_WORKLOADS, SWEEP_SIZES

QUICK = {
    "workloads": [*REAL_WORKLOADS, "3cnf-30", "mnist-add-3"],
    "batch_sizes": [1, 128],
    "providers": list(QUICK_PROVIDERS),
    "repeats": 5,
    "warmup": 1,
    "max_row_s": 0.25,
    "naive_node_limit": 12_000,  # naive takes seconds per call above this
}
FULL = {
    "workloads": [
        *REAL_WORKLOADS,
        *(f"3cnf-{n}" for n in SWEEP_SIZES),
        *(f"mnist-add-{n}" for n in MNIST_ADDITION_DIGITS),
    ],
    "batch_sizes": [1, 16, 128],  # and 1024 on a GPU
    "providers": list(all_providers()),
    "repeats": 10,
    "warmup": 2,
    "max_row_s": 3.0,
    "naive_node_limit": 20_000,
}
SWEEP = {
    **FULL,
    "workloads": [f"3cnf-{n}" for n in SWEEP_SIZES],
    "batch_sizes": [1, 16, 128],  # and 1024 on a GPU
    "providers": list(QUICK_PROVIDERS),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n")[0].replace("``", ""),
        epilog="Without --quick or --sweep: the full run. Options override the preset's values.",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the main job: the two-minute CPU run")
    preset.add_argument("--sweep", action="store_true", help="3cnf-30..50: time vs circuit size")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:1 (default: cuda when present)",
    )
    parser.add_argument("--semiring", default="log", choices=SEMIRINGS, help="default: log")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="default: float32"
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        metavar="NAME",
        help=f"{', '.join(REAL_WORKLOADS)}, 3cnf-N (seed 1), 3cnf-N-sS or mnist-add-N",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        metavar="NAME",
        choices=list(all_providers()),
        help=f"some of {', '.join(all_providers())} (quick: not klay-compiled, trilay-layers)",
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        metavar="B",
        help="quick: 1 128; full and sweep: 1 16 128, and 1024 on a GPU",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(harness.MODES),
        metavar="MODE",
        help="forward and/or forward+backward (fwd, fwd+bwd); default: both",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed repeats per row after warm-up (quick: 5, else 10)"
    )
    parser.add_argument(
        "--naive-node-limit",
        type=int,
        help="skip naive above this many IR nodes (quick: 12000, else 20000)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (quick: 1, for figures a busy machine moves less; else torch's)",
    )
    parser.add_argument(
        "--output",
        default=str(results.RUNS_DIR),
        metavar="DIR",
        help="results folder (default: benchmarks/runs, ignored by git; the committed results "
        "the README cites: --output benchmarks/results)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="generated 3-CNF SDDs (default: benchmarks/.cache)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)
    for n in args.batch_sizes or []:
        if n < 1:
            parser.error(f"batch sizes are positive, got {n}")
    try:
        args.modes = [harness.normalize_mode(m) for m in args.modes]
    except ValueError as err:
        parser.error(str(err))
    return args


def default_batches(preset: dict, device: str) -> list[int]:
    batches = list(preset["batch_sizes"])
    if preset is not QUICK and torch.device(device).type == "cuda":
        batches.append(1024)  # at 1024 the CPU providers take minutes on the larger circuits
    return batches


def settings_from_args(args: argparse.Namespace) -> harness.Settings:
    preset = QUICK if args.quick else SWEEP if args.sweep else FULL
    return harness.Settings(
        workloads=args.workloads or list(preset["workloads"]),
        providers=args.providers or list(preset["providers"]),
        batch_sizes=args.batch_sizes or default_batches(preset, args.device),
        modes=args.modes,
        semiring=args.semiring,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats or preset["repeats"],
        warmup=preset["warmup"],
        max_row_s=preset["max_row_s"],
        naive_node_limit=args.naive_node_limit or preset["naive_node_limit"],
        cache_dir=args.cache_dir,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    mode_name = "quick" if args.quick else "sweep" if args.sweep else "full"
    env = results.environment(settings.device, sys.argv[1:] if argv is None else argv)
    print(f"trilay benchmarks ({mode_name}) on {env['device_name']}", file=sys.stderr)
    load, cores = env["load_average_start"], env["cpu_count"] or 1
    if settings.device == "cpu" and load is not None and load > 0.5 * cores:
        print(
            f"warning: load average {load} on {cores} cores: other work is running, CPU times "
            "will move (rows whose repeats spread widely are flagged 'noisy')",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    infos, rows = harness.run(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    elapsed = time.perf_counter() - t0

    print()
    print(
        f"{settings.semiring} semiring, {settings.dtype}, {env['device_name']}; median over "
        "repeats after warm-up, IQR = 25th-75th percentile, TTFR = setup (load + compile) + "
        "first call"
    )
    print(report.format_table(rows))
    summary = report.verdicts(rows)
    if summary:
        print("\nWhere trilay stands (median time against the others):")
        print("\n".join(summary))
    scaling = report.growth(rows)
    if scaling:
        print("\nHow time grows with circuit size (least-squares slope on log-log):")
        print("\n".join(scaling))
    if settings.device == "cpu":
        print("\nPeak memory: not measured on CPU (torch has no CPU allocator statistics).")
    print(f"\n{len(rows)} rows in {elapsed:.1f} s")

    if not args.no_save:
        paths = results.write_results(
            args.output,
            env,
            {**settings.to_dict(), "preset": mode_name},
            infos,
            rows,
            summary + scaling,
            tag=f"-{mode_name}",
        )
        if args.no_plot:
            pass
        elif plot.available():
            png = paths["json"].with_suffix(".png")
            title = f"{mode_name}: {settings.semiring}, {settings.dtype}, {env['device_name']}"
            try:
                paths["png"] = plot.plot_time_vs_size(rows, png, title)
            except ValueError as err:
                print(f"no plot: {err}")
        else:
            print("no plot: matplotlib is not installed (pip install matplotlib)")
        for kind, path in paths.items():
            print(f"wrote {kind.upper():4} {path}")

    # A wrong provider, or trilay failing to run, fails the command (CI runs --quick).
    bad = [
        r
        for r in rows
        if r["status"] == "WRONG" or (r["provider"] == "trilay" and r["status"] == "error")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
