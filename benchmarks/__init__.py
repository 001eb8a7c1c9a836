"""trilay's benchmark harness: ``python -m benchmarks --quick`` (see ``__main__``).

Modules: ``workloads`` (the real SDDs in ``data/`` and the synthetic 3-CNF), ``providers`` (trilay
and what it is compared with), ``scatter`` (the gather + scatter-reduce baseline), ``harness``
(correctness gate, timing, bandwidth), ``report`` (table and verdicts), ``results`` (JSON/CSV
with the environment) and ``plot`` (time vs circuit size). ``test_bench.py`` holds the
pytest-benchmark suite: ``python -m pytest benchmarks --benchmark-only``.
"""
