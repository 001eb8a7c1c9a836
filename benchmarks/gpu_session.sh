#!/usr/bin/env bash
# A session's GPU checks as few device calls as possible (GPU time is short: plan for one call
# of each stage). Run from the repository root.
#
#   bash benchmarks/gpu_session.sh fetch   # here, with pip: the peers' wheels into .whl/
#   bash benchmarks/gpu_session.sh tests   # there: the whole test suite, kernels on CUDA
#   bash benchmarks/gpu_session.sh bench   # there: the Triton-kernel issue's comparison
#   bash benchmarks/gpu_session.sh all     # there: tests, then bench
#
# On the device machine (Python 3.12, torch and Triton preinstalled, no package index) carry
# `.whl` and `benchmarks/.cache` (the 3-CNF SDDs, so PySDD need not recompile them). Logs and
# results go to $OUT (the device tool's folder), else to benchmarks/results; commit the
# results files under benchmarks/results/.
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
    timeout 300 python3 -m pytest -q -x -n 8 -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.log"
}

bench() {
    # The circuits of the Triton-kernel issue's targets, batch 1 and 128, log semiring, forward
    # and forward+backward, trilay (eager launches, CUDA graphs, graphs without fusion) against
    # the scatter baseline and KLay eager and compiled, in one run.
    timeout 480 python3 -m benchmarks --device cuda --semiring log \
        --workloads sudoku_4 4-grid road_r seq_fun 3cnf-50 --batch-sizes 1 128 \
        --providers trilay trilay-graphs trilay-layers scatter klay klay-compiled \
        --output "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
}

case "${1:-all}" in
    fetch) fetch ;;
    tests) environment && tests ;;
    bench) environment && bench ;;
    all) environment && tests; bench ;;
    *) echo "usage: $0 fetch|tests|bench|all" >&2; exit 2 ;;
esac
