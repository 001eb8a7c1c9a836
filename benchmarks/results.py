"""Results files: one JSON (and a CSV of the rows) per run, with the environment it ran in."""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys

import torch

#: Where a run writes by default: ignored by git, so a run leaves the tree clean. The results
#: the README cites are written with ``--output benchmarks/results`` and committed.
RUNS_DIR = pathlib.Path(__file__).parent / "runs"
RESULTS_DIR = pathlib.Path(__file__).parent / "results"
_REPO = pathlib.Path(__file__).resolve().parent.parent

#: The fields of every row, in CSV column order.
ROW_FIELDS = (
    "workload",
    "source",
    "vars",
    "ir_nodes",
    "ir_edges",
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
    "inner",
    "bytes",
    "gbps",
    "peak_mem_bytes",
    "setup_s",
    "first_call_s",
    "ttfr_s",
    "max_abs_err",
    "max_abs_grad_err",
)

#: Peak DRAM bandwidth (GB/s) of devices the benchmark is likely to meet, by name fragment.
PEAK_BANDWIDTH_GBPS = {
    "H200": 4800,
    "H100 PCIe": 2000,
    "H100": 3350,
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100": 1555,
    "L4": 300,
    "T4": 320,
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})"


def peak_bandwidth(name: str) -> float | None:
    for fragment, gbps in PEAK_BANDWIDTH_GBPS.items():
        if fragment in name:
            return gbps
    return None


def _load_average() -> float | None:
    """The 1-minute load average (how many processes wanted a core), where the OS has one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment(device: str, argv: list[str] | None = None) -> dict:
    """Where and with what a run happened; ``argv``: the command's arguments."""
    name = device_name(device)
    status = _git("status", "--porcelain")
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            [
                os.path.basename(sys.executable),
                "-m",
                "benchmarks",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "device": device,
        "device_name": name,
        "peak_bandwidth_gbps": peak_bandwidth(name),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "triton": _version("triton"),
            "trilay": _version("trilay"),
            "klaycircuits": _version("klaycircuits"),
            "pysdd": _version("pysdd"),
            "numpy": _version("numpy"),
        },
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load_average(),
        # A copy of the tree without .git (a lent GPU machine's) names its commit by hand.
        "git_commit": _git("rev-parse", "HEAD") or os.environ.get("TRILAY_GIT_COMMIT"),
        "git_dirty": None if status is None else bool(status),
    }


def write_results(
    out_dir: str | os.PathLike,
    env: dict,
    settings: dict,
    workloads: list[dict],
    rows: list[dict],
    summary: list[str],
    tag: str = "",
) -> dict[str, pathlib.Path]:
    """Write ``<stamp>-<device><tag>.json`` and ``.csv``; returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = out / f"{stamp}-{torch.device(env['device']).type}{tag}"
    paths = {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv")}
    document = {
        "environment": env,
        "settings": settings,
        "workloads": workloads,
        "summary": summary,
        "rows": [{k: _finite(row.get(k)) for k in ROW_FIELDS} for row in rows],
    }
    paths["json"].write_text(
        json.dumps(document, indent=1, default=_jsonable, allow_nan=False) + "\n"
    )
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in ROW_FIELDS})
    return paths


def _finite(x):
    """Strict JSON has no infinity: a non-finite float is written as a string."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _jsonable(x):
    if isinstance(x, (pathlib.Path, torch.device, torch.dtype)):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
