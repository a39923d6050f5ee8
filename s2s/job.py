"""What every rule's job does first (s2s.steps.run, for every step of the table): logging into the rule's
log, torch threads, and the config as the workflow checked it; and the prompts built from a subject,
which the training rules and the training benchmark both use."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from s2s.io import S2SError

log = logging.getLogger("s2s")
JOBS_FILE = "jobs.jsonl"  # one line per job: s2s.job.JobClock.record


def setup_job(smk) -> dict:
    if smk.log:
        handler = logging.FileHandler(smk.log[0], mode="a", encoding="utf-8")
        stream = open(smk.log[0], "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives for the job
        sys.stderr = stream  # tqdm and library warnings go to the rule's log too
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    from s2s.progress import quiet_libraries

    quiet_libraries()  # before torch and the libraries are imported: their notices go too
    import torch

    torch.set_num_threads(max(1, int(smk.threads)))
    # The config rules/common.smk checked at parse time (s2s.config.check_config: validated, defaults
    # filled); Snakemake hands the job that same config, so it is not checked again here.
    return dict(smk.config)


class JobClock:
    """When a job started (its process), first called a model (any torch module's forward), and ended its
    step: the job's fixed cost is start-up plus exit, its model work the rest (docs/benchmarks.md)."""

    def __init__(self, process_start: float | None) -> None:
        import torch

        self.process_start = process_start
        self.first_model_call: float | None = None
        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(self._first_call)

    def _first_call(self, module, args) -> None:
        self.first_model_call = time.time()
        self._hook.remove()  # one call is all it needs: no hook on the model calls that follow

    def record(self, smk, step: str, mode: str, status: int) -> dict:
        """The job's timing so far; ``append_job_record`` adds its exit."""
        end = time.time()
        self._hook.remove()
        start, first = self.process_start, self.first_model_call
        return {
            "rule": smk.rule,
            "step": step,
            "mode": mode,
            "status": status,
            "process_start": start,
            "first_model_call": first,
            "step_end": end,
            "startup_s": None if start is None or first is None else round(first - start, 3),
            "model_work_s": None if first is None else round(end - first, 3),
        }


def process_start_time() -> float | None:
    """When this process started (epoch seconds; psutil, Snakemake's own dependency), or None."""
    try:
        import psutil

        return psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def append_job_record(config: dict, record: dict) -> None:
    """The job's record, with its exit (from the step's end to now, just before the process ends), as one
    JSON line of ``{results_dir}/logs/jobs.jsonl`` (one write of one line: jobs that run side by side
    never interleave their lines)."""
    end = time.time()
    record = dict(record, exit_s=round(end - record["step_end"], 3))
    if record["process_start"] is not None:
        record["wall_s"] = round(end - record["process_start"], 3)
        if record["startup_s"] is not None:
            record["fixed_cost_s"] = round(record["startup_s"] + record["exit_s"], 3)
    path = Path(config["results_dir"]) / "logs" / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def run_step(step, smk, config) -> int:
    """Run one rule's function and return the job's exit status: a user-facing S2SError ends the job with
    its one line; any other error with its traceback in the rule's log."""
    try:
        step(smk, config)
    except S2SError as exc:
        log.error("%s", exc)
        print(f"s2s error: {exc}", file=sys.__stderr__)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc(file=sys.stderr)  # the rule's log (setup_job)
        return 1
    return 0


def class_prompt_for(config, subject) -> str:
    return config["class_prompt"].replace("{class}", subject.class_noun)


def instance_prompt_for(config, subject) -> str:
    return config["instance_prompt"].replace("{}", subject.phrase)
