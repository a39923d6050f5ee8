"""Benchmarks: training step time and fixed cost per method, memory on the SD-v1.4 architecture,
Prompt-to-Prompt and inversion cost, and the demo DAG's orchestration overhead.

Entry points: ``snakemake bench --configfile config/bench.yaml`` (rules/bench.smk), or
:func:`s2s.bench.run.run_part` and :func:`s2s.bench.report.write_report`. Settings: ``bench:`` in the
config (:mod:`s2s.bench.settings`). What each figure means: docs/benchmarks.md.
"""
