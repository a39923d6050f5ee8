"""The step table: the one place where a rule's script finds the function its job runs.

Every ``workflow_scripts/*.py`` is three lines that call ``run(snakemake, STEP)``; the step names the
function as ``module:function`` below. The table is written out in full, once: the workflow's steps
(``s2s.workflow``), the report's (``s2s.report.steps``) and the bench's (``s2s.bench.workflow``). A
step's module is imported only when its job runs, so a job imports what its own step needs and no
other step's module. ``tests/test_steps.py`` checks that every script's step and every bench and report
rule is here, and that every entry names a function.
"""

from __future__ import annotations

import importlib
import os

# Step name (the name a workflow script passes; the rule's name where one script serves several
# rules) -> "module:function". The function takes (smk, config): Snakemake's job object and the
# validated config.
STEPS = {
    # models and data (rules/data.smk, rules/rehearsal.smk, rules/world.smk, rules/prefetch.smk)
    "build_tiny_models": "s2s.workflow:build_tiny_models",
    "build_rehearsal_models": "s2s.workflow:build_rehearsal_models",
    "build_world": "s2s.workflow:build_world",
    "world_check": "s2s.workflow:world_check",
    "prefetch": "s2s.workflow:prefetch",
    "draw_synthetic_subject": "s2s.workflow:draw_synthetic_subject",
    "prepare_instance": "s2s.workflow:prepare_instance",
    "class_priors": "s2s.workflow:class_priors",
    # training and sampling (rules/train.smk, rules/sample.smk)
    "train": "s2s.workflow:train",
    "sample": "s2s.workflow:sample",
    # evaluation (rules/evaluate.smk)
    "loss_curves": "s2s.workflow:loss_curves",
    "evaluate": "s2s.workflow:evaluate",
    "table": "s2s.workflow:table",
    "world_prompt_fidelity": "s2s.workflow:world_prompt_fidelity",
    # edits (rules/edit.smk, rules/edit_bench.smk)
    "draw_demo_edit_photo": "s2s.workflow:draw_demo_edit_photo",
    "edit": "s2s.workflow:edit",
    "edit_bench": "s2s.workflow:edit_bench",
    # report pages (rules/report.smk, rules/world.smk): one script, the rule's name is the step
    "report_subject": "s2s.report.steps:report_subject",
    "report_tables": "s2s.report.steps:report_tables",
    "report_world": "s2s.report.steps:report_world",
    "report_edit_bench": "s2s.report.steps:report_edit_bench",
    # the bench (rules/bench.smk): one script, the rule's name is the step
    "bench_part": "s2s.bench.workflow:bench_part",
    "bench": "s2s.bench.workflow:bench",
}


def step_function(name: str):
    """The function of step ``name``, its module imported now."""
    module, function = STEPS[name].split(":")
    return getattr(importlib.import_module(module), function)


def run(smk, name: str) -> None:
    """A rule's job: in a child of the job server where one runs for this workflow (s2s.jobserver), else
    here; then its record goes to ``logs/jobs.jsonl`` and this process ends with the job's status."""
    import sys

    from s2s import jobserver
    from s2s.job import append_job_record, process_start_time

    start = process_start_time()
    done = jobserver.submit(smk, name, start)
    status, record = done if done is not None else run_here(smk, name, start, mode="process")
    for stream in (sys.stdout, sys.stderr, sys.__stderr__):
        stream.flush()
    if record is not None:
        append_job_record(smk.config, record)
    # The outputs are written and closed. An interpreter's normal exit would now collect every object of
    # torch, diffusers and transformers one by one (~1.5 s per job here).
    os._exit(status)


def run_here(smk, name: str, process_start: float | None, mode: str) -> tuple[int, dict]:
    """Logging into the rule's log and the config (s2s.job), then the step's function; returns the job's
    exit status and its timing record (s2s.job.JobClock)."""
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from s2s.job import JobClock, run_step, setup_job

    config = setup_job(smk)
    clock = JobClock(process_start)
    status = run_step(step_function(name), smk, config)
    record = clock.record(smk, name, mode, status)
    logging.shutdown()
    return status, record
