"""Glue between rules/bench.smk and the bench package: one function per rule, as in s2s.workflow."""

from __future__ import annotations

import logging
import sys

from s2s.bench.settings import bench_settings
from s2s.io import S2SError

log = logging.getLogger("s2s")


def bench_part(smk, config) -> None:
    from s2s.bench.run import run_part

    run_part(smk.wildcards.part, bench_settings(config), config, smk.output[0], threads=int(smk.threads))


def bench(smk, config) -> None:
    from s2s.bench.report import write_report

    write_report(list(smk.input), smk.output.json, smk.output.md)


STEPS = {"bench_part": bench_part, "bench": bench}


def run(smk) -> None:
    from s2s.workflow import _setup

    config = _setup(smk)
    try:
        STEPS[smk.rule](smk, config)
    except S2SError as exc:
        log.error("%s", exc)
        print(f"s2s error: {exc}", file=sys.__stderr__)
        sys.exit(1)
