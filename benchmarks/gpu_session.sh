#!/usr/bin/env bash
# A session's GPU checks in few device calls (GPU time is short: one call per stage, each
# under the device's 10-minute limit). Run from the repository root.
#
#   bash benchmarks/gpu_session.sh fetch          # here, with pip: the peers' wheels into .whl/
#   bash benchmarks/gpu_session.sh tests          # there: the whole suite, kernels on CUDA (<= 5 min)
#   bash benchmarks/gpu_session.sh bench          # there: trilay vs scatter and KLay eager (<= 4 min)
#   bash benchmarks/gpu_session.sh klay-compiled  # there: trilay-graphs vs KLay compiled (<= 5 min)
#
# On the device machine (Python 3.12, torch and Triton preinstalled, no package index) carry
# `.whl` and `benchmarks/.cache` (the 3-CNF SDDs, so PySDD need not recompile them). Logs and
# results go to $OUT (the device tool's folder), else to benchmarks/results; commit the
# results files under benchmarks/results/. Where the copy has no .git, name the commit:
# `TRILAY_GIT_COMMIT=<git rev-parse HEAD here> bash benchmarks/gpu_session.sh bench`.
set -o pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

fetch() {
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        klaycircuits==0.1.2 PySDD==1.0.6 problog==2.3.0
}

environment() {
    # The peers from their wheels, and trilay's three folders under the package name
    # `trilay` by links (no build backend or index needed).
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    mkdir -p /tmp/shim/trilay
    for package in kernels engine frontends; do ln -sfn "$PWD/$package" "/tmp/shim/trilay/$package"; done
    export PYTHONPATH="/tmp/shim:$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, triton, klay; print('torch', torch.__version__, 'triton', \
triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
}

tests() {
    # The kernel tests run on CUDA here (no interpreter); GPU-only tests run instead of skipping.
    timeout 300 python3 -m pytest -q -n 8 --timeout 120 -p no:cacheprovider tests 2>&1 |
        tee "$OUT/gpu-tests.log"
}

# The circuits of the Triton-kernel issue's targets, batch 1 and 128, log semiring, forward and
# forward+backward; each stage writes its own results files (and its rows to the log as they
# come, so a timeout loses only the files).
CIRCUITS="sudoku_4 4-grid road_r seq_fun 3cnf-50"

bench() {
    # trilay (eager launches, CUDA graphs, graphs without fusion), the scatter baseline, KLay
    # eager: one run.
    timeout 240 python3 -m benchmarks --device cuda --semiring log --workloads $CIRCUITS \
        --batch-sizes 1 128 --providers trilay trilay-graphs trilay-layers scatter klay \
        --output "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
}

klay_compiled() {
    # KLay compiled (torch.compile per circuit and shape) beside trilay-graphs in the same run.
    timeout 300 python3 -m benchmarks --device cuda --semiring log --workloads $CIRCUITS \
        --batch-sizes 1 128 --providers trilay-graphs klay-compiled \
        --output "$OUT" 2>&1 | tee "$OUT/gpu-bench-klay-compiled.log"
}

case "${1:-}" in
    fetch) fetch ;;
    tests) environment && tests ;;
    bench) environment && bench ;;
    klay-compiled) environment && klay_compiled ;;
    *) echo "usage: $0 fetch|tests|bench|klay-compiled" >&2; exit 2 ;;
esac
