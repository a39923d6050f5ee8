"""The demo DAG's orchestration overhead (item 5): wall time vs job start-up vs model work.

The demo workflow runs with ``snakemake --cores N`` in a temporary working directory (its own
``.snakemake`` metadata and lock) and a temporary ``results_dir``. Nothing is added to the rules: every
job writes its own timing record to ``logs/jobs.jsonl`` (``s2s.job.JobClock``, precise to the
millisecond): its process's start, its first model call (any torch module's forward), the end of its step
and its exit. From them:
- a job's **fixed cost** = start-up (process start to first model call: interpreter, imports, loading) +
  exit (step end to the process's end), for the jobs that call a model;
- **model work** = first model call to the end of the step (the step's own work, saving included);
- the **non-compute share** = the part of the DAG's wall time in which no job was doing model work (the
  union of the jobs' model-work intervals, so that two jobs computing side by side count once); the
  share with the jobs' model work summed instead (the issue's first figure) is reported beside it.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s2s.bench.settings import DagBench
from s2s.bench.stats import ratio, summarize
from s2s.io import S2SError
from s2s.job import JOBS_FILE

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def _union(intervals: list[tuple[float, float]]) -> float:
    total, current = 0.0, None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    return total + (current[1] - current[0] if current else 0.0)


def read_job_records(results: Path) -> list[dict]:
    """The jobs' timing records of a run (``{results_dir}/logs/jobs.jsonl``)."""
    path = results / "logs" / JOBS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarize_dag(records: list[dict], wall_s: float) -> dict:
    """Wall time vs the jobs' start-up, exit and model work, overall and per rule."""
    computing = [r for r in records if r.get("first_model_call") is not None]
    timed = [r for r in records if r.get("wall_s") is not None]
    work = [(r["first_model_call"], r["step_end"]) for r in computing]
    jobs = [(r["process_start"], r["process_start"] + r["wall_s"]) for r in timed]
    work_union, work_sum = _union(work), sum(b - a for a, b in work)
    per_rule: dict[str, dict] = {}
    for r in records:
        entry = per_rule.setdefault(r["rule"], {"jobs": 0, "job_s": 0.0, "fixed_s": [], "model_work_s": 0.0})
        entry["jobs"] += 1
        entry["job_s"] += r.get("wall_s") or 0.0
        entry["model_work_s"] += r.get("model_work_s") or 0.0
        if r.get("fixed_cost_s") is not None:
            entry["fixed_s"].append(r["fixed_cost_s"])
    for entry in per_rule.values():
        fixed = entry.pop("fixed_s")
        entry["fixed_cost_median_s"] = statistics.median(fixed) if fixed else None
    fixed_costs = [r["fixed_cost_s"] for r in computing if r.get("fixed_cost_s") is not None]
    return {
        "wall_s": wall_s,
        "busy_s": _union(jobs),
        "job_sum_s": sum(r["wall_s"] for r in timed),
        "compute_s": work_union,
        "compute_sum_s": work_sum,
        "jobs": len(records),
        "jobs_with_compute": len(computing),
        "modes": sorted({r["mode"] for r in records}),
        "job_fixed_cost_s": summarize(fixed_costs, "s") if fixed_costs else None,
        "job_fixed_costs": fixed_costs,
        "job_startup_s": summarize([r["startup_s"] for r in computing], "s") if computing else None,
        "job_exit_s": summarize([r["exit_s"] for r in records], "s") if records else None,
        "non_compute_share": 1 - work_union / wall_s if wall_s else None,
        "non_compute_share_summed": 1 - work_sum / wall_s if wall_s else None,
        "per_rule": per_rule,
        "timing_resolution_s": 0.01,  # the process's start (psutil, clock ticks); the rest to 1 ms
    }


def bench_dag(settings: DagBench, work: Path | None = None) -> dict:
    """Run the demo workflow ``settings.runs`` times from scratch in a temporary folder; summarize."""
    configfile = Path(settings.configfile)
    if not configfile.is_absolute():
        configfile = REPO / configfile
    if not configfile.is_file():
        raise S2SError(f"config key bench.dag.configfile: {configfile} does not exist")
    by_mode: dict[str, list[dict]] = {mode: [] for mode in settings.job_modes}
    for run in range(settings.runs):
        for mode in settings.job_modes:
            by_mode[mode].append(_run_demo(configfile, settings.cores, mode, run, work))
    results = by_mode[settings.job_modes[0]]
    keys = ("wall_s", "busy_s", "job_sum_s", "compute_s", "compute_sum_s")
    summary = {key: summarize([r[key] for r in results], "s") for key in keys}
    fixed = [c for r in results for c in r["job_fixed_costs"]]  # every job of every run
    summary["job_fixed_cost_s"] = summarize(fixed, "s") if fixed else None
    summary["non_compute_share"] = summarize([r["non_compute_share"] for r in results], "fraction")
    summary["non_compute_share_summed"] = summarize(
        [r["non_compute_share_summed"] for r in results], "fraction"
    )
    summary["ratios"] = [
        ratio(
            summary["wall_s"],
            summary["compute_s"],
            "wall time / model work time",
            "the whole DAG takes this many times the time in which some job does model work",
        ),
        ratio(
            summary["job_sum_s"],
            summary["compute_sum_s"],
            "summed job time / summed model work",
            "job time includes process start, imports, model loading and jobs that call no model",
        ),
        ratio(
            summary["wall_s"],
            summary["busy_s"],
            "wall time / time with a job running",
            "> 1: time when no job runs (Snakemake's start, DAG building, scheduling)",
        ),
    ]
    summary["by_mode"] = {
        mode: {
            "wall_s": summarize([r["wall_s"] for r in runs], "s"),
            "job_fixed_cost_s": summarize([c for r in runs for c in r["job_fixed_costs"]], "s"),
            "non_compute_share": summarize([r["non_compute_share"] for r in runs], "fraction"),
            "non_compute_share_summed": summarize([r["non_compute_share_summed"] for r in runs], "fraction"),
        }
        for mode, runs in by_mode.items()
    }
    return {"configfile": str(configfile), **summary, "runs": results}


def _run_demo(configfile: Path, cores: int, mode: str, run: int, work: Path | None) -> dict:
    """One run of the demo from scratch, its jobs in ``mode``; its summary (``summarize_dag``)."""
    with tempfile.TemporaryDirectory(prefix="s2s-bench-dag-", dir=work) as tmp:
        workdir = Path(tmp)
        configs = [str(configfile)]
        if mode == "process":
            (workdir / "job_server.yaml").write_text("job_server: false\n")
            configs.append(str(workdir / "job_server.yaml"))
        command = [
            sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--cores", str(cores), "--configfile", *configs, "--config", f"results_dir={workdir / 'results'}",
        ]  # fmt: skip
        log.info("run %d (%s): %s", run, mode, " ".join(command))
        started = time.perf_counter()
        with open(workdir / "snakemake.out", "w") as out:
            proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            tail = (workdir / "snakemake.out").read_text(errors="replace").strip().splitlines()[-5:]
            raise S2SError(f"the demo workflow failed (exit {proc.returncode}): " + " | ".join(tail))
        records = read_job_records(workdir / "results")
        if not records:
            raise S2SError(f"the demo workflow in {workdir} wrote no job records ({JOBS_FILE})")
        return summarize_dag(records, wall)
