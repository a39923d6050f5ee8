"""Glue between rules/bench.smk and the bench package: one function per rule, as in s2s.workflow, reached
through the step table (``s2s.steps``)."""

from __future__ import annotations

import logging

from s2s.bench.settings import bench_settings

log = logging.getLogger("s2s")


def bench_part(smk, config) -> None:
    from s2s.bench.run import run_part

    run_part(smk.wildcards.part, bench_settings(config), config, smk.output[0], threads=int(smk.threads))


def bench(smk, config) -> None:
    from s2s.bench.report import write_report

    write_report(list(smk.input), smk.output.json, smk.output.md)
