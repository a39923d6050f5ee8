"""The demo DAG's orchestration overhead (item 5): wall time vs time inside jobs vs model compute.

The demo workflow runs with ``snakemake --cores N`` in a temporary working directory (its own
``.snakemake`` metadata and lock) and a temporary ``results_dir``. Nothing is added to the rules:
- job times come from Snakemake's own log (start and ``Finished jobid`` stamps, 1 s resolution);
- model compute comes from what the jobs already record: ``train_time_s`` of each ``train_summary.json``
  (the training steps) and ``sampling_s`` of the ``sampling.json`` beside each prompt's sampled images.
Jobs that record no compute time (class images, evaluation, tiny-model building, ...) count as job time only.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from s2s.bench.settings import DagBench
from s2s.bench.stats import ratio, summarize
from s2s.io import S2SError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\S+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
OUTPUT = re.compile(r"^\s+output: (.*)$")
LOG = re.compile(r"^\s+log: (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


def parse_snakemake_log(text: str) -> list[dict]:
    """Jobs of a Snakemake log: rule, jobid, start and end (epoch seconds), outputs and log files."""
    jobs: dict[int, dict] = {}
    stamp = None
    pending: dict | None = None
    for line in text.splitlines():
        if m := STAMP.match(line.strip()):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        if m := START.match(line):
            pending = {"rule": m.group(1), "start": stamp, "outputs": [], "logs": []}
        elif pending is not None and (m := OUTPUT.match(line)):
            pending["outputs"] = [p.strip() for p in m.group(1).split(",")]
        elif pending is not None and (m := LOG.match(line)):
            pending["logs"] = [p.strip() for p in m.group(1).split(",")]
        elif pending is not None and (m := JOBID.match(line)):
            jobs[int(m.group(1))] = pending
            pending = None
        elif m := FINISHED.match(line):
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job["end"] = stamp
    return [{"jobid": k, **v} for k, v in sorted(jobs.items()) if "end" in v]


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


def job_compute_s(job: dict, workdir: Path) -> float | None:
    """Model compute a job recorded itself (training steps, sampling loop), or None."""
    for out in job["outputs"]:
        if out.endswith("train_summary.json"):
            path = workdir / out
            if path.exists():
                return float(json.loads(path.read_text())["train_time_s"])
    from s2s.sample import SAMPLING_RECORD

    # A sample job's outputs are its prompts' images; each prompt folder records its sampling time.
    records = {(workdir / out).parent / SAMPLING_RECORD for out in job["outputs"] if out.endswith(".png")}
    times = [float(json.loads(p.read_text())["sampling_s"]) for p in sorted(records) if p.exists()]
    return sum(times) if times else None


def summarize_dag(jobs: list[dict], workdir: Path, wall_s: float) -> dict:
    """Wall time vs union of job time vs summed job time vs model compute, overall and per rule."""
    for job in jobs:
        job["seconds"] = job["end"] - job["start"]
        job["compute_s"] = job_compute_s(job, workdir)
    measured = [j for j in jobs if j["compute_s"] is not None]
    per_rule: dict[str, dict] = {}
    for job in jobs:
        rule = re.sub(r"_chunk\d+$", "", job["rule"])
        entry = per_rule.setdefault(rule, {"jobs": 0, "job_s": 0.0, "compute_s": None})
        entry["jobs"] += 1
        entry["job_s"] += job["seconds"]
        if job["compute_s"] is not None:
            entry["compute_s"] = (entry["compute_s"] or 0.0) + job["compute_s"]
    busy = _union([(j["start"], j["end"]) for j in jobs])
    job_sum = sum(j["seconds"] for j in jobs)
    compute = sum(j["compute_s"] for j in measured)
    measured_job_s = sum(j["seconds"] for j in measured)
    return {
        "wall_s": wall_s,
        "busy_s": busy,
        "job_sum_s": job_sum,
        "compute_s": compute,
        "jobs": len(jobs),
        "jobs_with_compute": len(measured),
        "job_s_of_jobs_with_compute": measured_job_s,
        "idle_fraction": 1 - busy / wall_s if wall_s else None,
        "compute_fraction_of_wall": compute / wall_s if wall_s else None,
        "compute_fraction_of_their_job_s": compute / measured_job_s if measured_job_s else None,
        "job_s": summarize([j["seconds"] for j in jobs], "s"),
        "per_rule": per_rule,
        "timing_resolution_s": 1,
    }


def bench_dag(settings: DagBench, work: Path | None = None) -> dict:
    """Run the demo workflow ``settings.runs`` times from scratch in a temporary folder; summarize."""
    configfile = Path(settings.configfile)
    if not configfile.is_absolute():
        configfile = REPO / configfile
    if not configfile.is_file():
        raise S2SError(f"config key bench.dag.configfile: {configfile} does not exist")
    results = []
    for run in range(settings.runs):
        with tempfile.TemporaryDirectory(prefix="s2s-bench-dag-", dir=work) as tmp:
            workdir = Path(tmp)
            command = [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(REPO / "Snakefile"),
                "--directory",
                str(workdir),
                "--cores",
                str(settings.cores),
                "--configfile",
                str(configfile),
                "--config",
                f"results_dir={workdir / 'results'}",
            ]
            log.info("run %d: %s", run, " ".join(command))
            started = time.perf_counter()
            with open(workdir / "snakemake.out", "w") as out:
                proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
            wall = time.perf_counter() - started
            logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
            if proc.returncode != 0 or not logs:
                tail = (workdir / "snakemake.out").read_text(errors="replace").strip().splitlines()[-5:]
                raise S2SError(f"the demo workflow failed (exit {proc.returncode}): " + " | ".join(tail))
            jobs = parse_snakemake_log(logs[-1].read_text())
            results.append(summarize_dag(jobs, workdir, wall))
    keys = ("wall_s", "busy_s", "job_sum_s", "compute_s")
    summary = {key: summarize([r[key] for r in results], "s") for key in keys}
    summary["ratios"] = [
        ratio(
            summary["wall_s"],
            summary["compute_s"],
            "wall time / model compute time",
            "the whole DAG takes this many times its measured model compute",
        ),
        ratio(
            summary["job_sum_s"],
            summary["compute_s"],
            "summed job time / model compute time",
            "job time includes process start, imports, model loading, I/O and unmeasured jobs",
        ),
        ratio(
            summary["wall_s"],
            summary["busy_s"],
            "wall time / time with a job running",
            "> 1: time when no job runs (DAG building, scheduling)",
        ),
    ]
    return {"configfile": str(configfile), **summary, "runs": results}
