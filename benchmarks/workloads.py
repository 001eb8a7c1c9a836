"""Benchmark workloads: the real neurosymbolic SDDs in ``benchmarks/data``, random 3-CNF and
DeepProbLog's MNIST addition.

Every workload is an SDD file with its vtree, so that every provider (trilay, the baselines,
KLay, PySDD) reads the very same circuit. Synthetic workloads are named ``3cnf-N`` (seed 1) or
``3cnf-N-sS`` (seed ``S``); ``mnist-add-N`` is the MNIST-addition circuit for N-digit numbers
(see :func:`mnist_addition_workload`). Both are generated once, then cached under
``benchmarks/.cache``.
"""

from __future__ import annotations

import os
import pathlib
import random
import re
from dataclasses import dataclass

DATA_DIR = pathlib.Path(__file__).parent / "data"
CACHE_DIR = pathlib.Path(__file__).parent / ".cache"

#: The real circuits shipped in ``benchmarks/data`` (see its README for their provenance).
REAL_WORKLOADS = ("sudoku_4", "4-grid", "road_r", "seq_fun")

#: The KLay paper's synthetic sizes that a 2-core CPU still evaluates in seconds.
SWEEP_SIZES = (30, 35, 40, 45, 50)

#: The MNIST-addition sizes (digits per number) of the DeepProbLog frontend's example.
MNIST_ADDITION_DIGITS = (1, 2, 3, 4, 15)

_CNF_NAME = re.compile(r"^3cnf-(\d+)(?:-s(\d+))?$")
_MNIST_NAME = re.compile(r"^mnist-add-(\d+)$")


@dataclass(frozen=True)
class Workload:
    """One circuit: an SDD file and its vtree (which declares the variable count)."""

    name: str
    sdd: pathlib.Path
    vtree: pathlib.Path
    source: str  # "real", "3cnf" or "mnist"


def random_3cnf_clauses(n: int, seed: int = 1) -> list[list[int]]:
    """The clause list of the synthetic benchmark: ``n // 2`` clauses of 3 distinct variables.

    Exactly as specified in the benchmark issue, so circuits stay comparable with measurements
    made elsewhere: ``rng = random.Random(seed)``; per clause ``vs = rng.sample(range(1, n + 1),
    3)``, then per variable in that order the literal is positive when ``rng.random() < 0.5``.
    """
    if n < 3:
        raise ValueError(f"a random 3-CNF needs at least 3 variables, got {n}")
    rng = random.Random(seed)
    clauses = []
    for _ in range(n // 2):
        vs = rng.sample(range(1, n + 1), 3)
        clauses.append([v if rng.random() < 0.5 else -v for v in vs])
    return clauses


def compile_3cnf(n: int, seed: int = 1):
    """Compile :func:`random_3cnf_clauses` with PySDD as the KLay paper does.

    Manager ``SddManager.from_vtree(Vtree(n, [1..n], "balanced"))`` without minimization; the
    formula starts from ``true``, each clause is the disjunction of its literals (in order) and
    is conjoined onto the formula in clause order. Returns ``(manager, root)``.
    """
    from pysdd.sdd import SddManager, Vtree

    manager = SddManager.from_vtree(Vtree(n, list(range(1, n + 1)), "balanced"))
    formula = manager.true()
    for clause in random_3cnf_clauses(n, seed):
        disjunction = manager.literal(clause[0])
        for lit in clause[1:]:
            disjunction = disjunction | manager.literal(lit)
        formula = formula & disjunction
    return manager, formula


def cnf_workload(n: int, seed: int = 1, cache_dir: str | os.PathLike | None = None) -> Workload:
    """The ``3cnf-n`` workload, compiled on first use and cached as SDD + vtree files."""
    name = f"3cnf-{n}" if seed == 1 else f"3cnf-{n}-s{seed}"
    return _cached(name, f"3cnf-n{n}-s{seed}", "3cnf", lambda: compile_3cnf(n, seed), cache_dir)


def compile_mnist_addition(digits: int):
    """The SDD of the DeepProbLog frontend's MNIST-addition query for ``digits``-digit numbers
    with the sum ``10**digits - 1`` (the sum with the most digit combinations, ``10**digits``),
    conjoined with its annotated-disjunction constraint, compiled alone: the digit-wise
    program with a carry (``mnist_addition.PROGRAM``) on the frontend's structure-following
    vtree, so it grows linearly in N (N = 3: 1,043 nodes, 18 layers; N = 15: 12,407 nodes,
    66 layers, compiled in about a second). Needs ``problog``. Returns ``(manager, root)``."""
    from problog.logic import Term
    from trilay.frontends.deepproblog import Program
    from trilay.frontends.deepproblog.mnist_addition import PROGRAM, queries

    (query,) = queries([10**digits - 1], digits)
    compiled = Program(PROGRAM).compile_sdd([Term.from_string(query)])
    return compiled.manager, compiled.roots[0]


def mnist_addition_workload(digits: int, cache_dir: str | os.PathLike | None = None) -> Workload:
    """The ``mnist-add-N`` workload (:func:`compile_mnist_addition`), compiled on first use and
    cached as SDD + vtree files."""
    if digits < 1:
        raise ValueError(f"MNIST addition needs at least 1 digit per number, got {digits}")
    return _cached(
        f"mnist-add-{digits}",
        f"mnist-add-carry-{digits}",  # not the files of the earlier DeepProbLog-style program
        "mnist",
        lambda: compile_mnist_addition(digits),
        cache_dir,
    )


def _cached(name, stem, source, compile_sdd, cache_dir) -> Workload:
    """A generated workload's SDD + vtree files: shipped in ``benchmarks/data`` (the quick
    run's), else under the cache, written on first use by ``compile_sdd() -> (manager, root)``."""
    shipped_sdd, shipped_vtree = DATA_DIR / f"{stem}.sdd", DATA_DIR / f"{stem}.vtree"
    if cache_dir is None and shipped_sdd.exists() and shipped_vtree.exists():
        return Workload(name, shipped_sdd, shipped_vtree, source)
    cache = pathlib.Path(cache_dir) if cache_dir is not None else CACHE_DIR
    sdd = cache / f"{stem}.sdd"
    vtree = cache / f"{stem}.vtree"
    if not (sdd.exists() and vtree.exists()):
        cache.mkdir(parents=True, exist_ok=True)
        ignore = cache / ".gitignore"
        if not ignore.exists():  # generated files stay out of git without a root .gitignore
            ignore.write_text("*\n")
        manager, root = compile_sdd()
        # Write under a unique name, then rename: concurrent runs never see half a file.
        suffix = f".tmp{os.getpid()}"
        root.save(str(sdd).encode() + suffix.encode())
        manager.vtree().save(str(vtree).encode() + suffix.encode())
        os.replace(str(vtree) + suffix, vtree)
        os.replace(str(sdd) + suffix, sdd)
    return Workload(name, sdd, vtree, source)


def get_workload(name: str, cache_dir: str | os.PathLike | None = None) -> Workload:
    """A workload by name: one of :data:`REAL_WORKLOADS`, ``3cnf-N``, ``3cnf-N-sS`` or
    ``mnist-add-N``."""
    if name in REAL_WORKLOADS:
        return Workload(name, DATA_DIR / f"{name}.sdd", DATA_DIR / f"{name}.vtree", "real")
    match = _CNF_NAME.match(name)
    if match:
        return cnf_workload(int(match[1]), int(match[2] or 1), cache_dir)
    match = _MNIST_NAME.match(name)
    if match:
        return mnist_addition_workload(int(match[1]), cache_dir)
    raise ValueError(
        f"unknown workload {name!r}: expected one of {', '.join(REAL_WORKLOADS)}, "
        "3cnf-N (N variables, seed 1), 3cnf-N-sS (seed S) or mnist-add-N (N digits)"
    )
