"""The Triton kernels compile with the real compiler for an H100 (sm_90), no GPU needed.

The interpreter runs the kernels' semantics but not Triton's compiler; this catches what only
the compiler rejects (types, layouts, unsupported constructs) before a GPU run does. The
interpreter patches ``triton.language`` in its process, so the compiler runs in a child
process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMPILE_ALL = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from trilay.engine import SEMIRINGS
from trilay.kernels import layer

INT_POINTERS = ("child", "offsets", "arg", "orphan", "root_of_row", "part_arg")

def signature(kernel, dtype):
    sig = {}
    for arg in kernel.arg_names:
        name = arg.removeprefix("low_")  # a fused pair's lower layer: the same types
        if arg.isupper():
            sig[arg] = "constexpr"
        elif name.endswith("_ptr"):
            base = name.removesuffix("_ptr")
            int_ptr = base in INT_POINTERS or base.startswith(("parent", "chunk"))
            sig[arg] = "*i32" if int_ptr else f"*{dtype}"
        else:
            sig[arg] = "i32"
    return sig

def build(kernel, dtype, **constexprs):
    tiny = layer._TINY[{"fp32": torch.float32, "fp64": torch.float64}[dtype]]
    if "TINY" in kernel.arg_names:
        constexprs["TINY"] = tiny
    src = ASTSource(fn=kernel, signature=signature(kernel, dtype), constexprs=constexprs)
    assert triton.compile(src, target=target).asm["cubin"], (kernel.__name__, constexprs)

import torch
target = GPUTarget("cuda", 90, 32)
FULL = sys.argv[1] == "full"
TILES = ((128, 1), (4, 128)) if FULL else ((4, 128),)  # batch 1 and batch 128
DTYPES = ("fp32", "fp64") if FULL else ("fp32",)
codes = layer.TRITON_REDUCTIONS
for reduce, code in sorted(codes.items()):
    for block_n, block_b in TILES:
        for dtype in DTYPES:
            tile = dict(BLOCK_N=block_n, BLOCK_B=block_b, REDUCE=code, NEUTRAL=layer._NEUTRAL[code])
            for partial, state in ((False, True), (False, False), (True, True)):
                build(layer._layer_fwd_kernel, dtype, PARTIAL=partial, STATE=state, **tile)
            for state in (True, False):
                build(layer._layer_combine_kernel, dtype, STATE=state, **tile)
# The backward kernels take a semiring's (AND, OR) reductions; the single-layer op one twice.
reduction_pairs = {(s.prod, s.sum) for s in SEMIRINGS.values()} | {(r, r) for r in codes}
for and_reduce, or_reduce in sorted(reduction_pairs):
    for block_n, block_b in TILES:
        tile = dict(BLOCK_N=block_n, BLOCK_B=block_b)
        reduces = dict(AND_REDUCE=codes[and_reduce], OR_REDUCE=codes[or_reduce])
        full_pair = and_reduce != or_reduce or FULL
        for dtype in ("fp32", "fp64") if full_pair and and_reduce == "prod" else DTYPES:
            for virtual, seeded in ((False, True), (True, True), (False, False), (True, False)):
                build(layer._layer_bwd_kernel, dtype, VIRTUAL_ROWS=virtual, SEEDED=seeded,
                      **reduces, **tile)
            if and_reduce != or_reduce:
                build(layer._pair_bwd_kernel, dtype, **reduces, **tile)
# Fused forward pairs: each semiring's (AND, OR) reductions and the reverse (pairing can put
# an OR layer below an AND layer).
for and_reduce, or_reduce in sorted({(s.prod, s.sum) for s in SEMIRINGS.values()}):
    for low, up in ((and_reduce, or_reduce), (or_reduce, and_reduce)):
        for block_n, block_b in TILES:
            for state in (True, False):
                build(layer._pair_fwd_kernel, "fp32", BLOCK_N=block_n, BLOCK_B=block_b,
                      LOW_REDUCE=codes[low], LOW_NEUTRAL=layer._NEUTRAL[codes[low]],
                      REDUCE=codes[up], NEUTRAL=layer._NEUTRAL[codes[up]], STATE=state)
print("compiled", sys.argv[1:])
"""


@pytest.mark.parametrize("variants", ["quick", pytest.param("full", marks=pytest.mark.slow)])
def test_every_kernel_variant_compiles_for_sm90(variants, tmp_path):
    """quick: every kernel and reduction at batch-128 tiles in float32 (float64 for the real
    semiring's pair); full (slow): batch 1 tiles and float64 everywhere too."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_ALL, variants],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode and "ptxas" in result.stderr and "not found" in result.stderr:
        pytest.skip("Triton's bundled ptxas is not available here")
    assert result.returncode == 0, result.stderr[-4000:]
