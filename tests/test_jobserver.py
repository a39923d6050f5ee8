"""The job server (s2s.jobserver): a job run in the server's child is the job run in its own process.

Each job here is a real `sample` step on the committed world models, started the way Snakemake starts a
rule's script (a fresh Python calling ``s2s.steps.run`` with Snakemake's own Namedlists), once through
the server and once in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from s2s import jobserver
from s2s.config import check_config

REPO = Path(__file__).resolve().parent.parent

# A fresh process that builds the job object from Snakemake's own types and runs the step as a rule's
# script does (s2s.steps.run ends the process with the job's status).
CLIENT = """
import json, sys
from pathlib import Path
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, ResourceList, Snakemake, Wildcards
spec = json.loads(sys.argv[1])
sys.path.insert(0, str(Path(spec["scriptdir"]).parent))  # the package under test, as a rule's script does
smk = Snakemake(
    InputFiles(), OutputFiles(spec["output"]), Params(), Wildcards(fromdict=spec["wildcards"]), 1,
    ResourceList(fromdict={"mem_mb": 1000}), Log(spec["log"]), spec["config"], spec["rule"], 0,
    spec["scriptdir"],
)
from s2s.steps import run
run(smk, spec["step"])
"""


def job_config(tmp_path: Path, prompts: list[str], seeds: list[int], steps: int, **extra) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["sampling"].update(prompts=prompts, seeds=seeds, num_inference_steps=steps)
    raw.update(results_dir="results", **extra)  # relative, as in a user's config: the job's folder counts
    tmp_path.mkdir(parents=True, exist_ok=True)
    return check_config(raw, base_dir=REPO)


def start_job(tmp_path: Path, config: dict, method: str = "base", env: dict | None = None):
    results = tmp_path / config["results_dir"]
    spec = {
        "rule": "sample",
        "step": "sample",
        "output": [],
        "log": [f"{config['results_dir']}/logs/sample_{method}.log"],
        "wildcards": {"subject": "rex", "method": method},
        "config": config,
        "scriptdir": str(REPO / "workflow_scripts"),
    }
    (results / "logs").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, json.dumps(spec)],
        cwd=tmp_path, env=env if env is not None else dict(os.environ), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def job_records(folder: Path) -> list[dict]:
    path = folder / "results" / "logs" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def without_server() -> dict:
    return {k: v for k, v in os.environ.items() if k != jobserver.ENV}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One job server, started as the Snakefile's onstart starts it."""
    log_file = tmp_path_factory.mktemp("server") / "job_server.log"
    before = os.environ.get(jobserver.ENV)
    jobserver.start({"job_server": True}, local=True, conda=False, log_file=str(log_file))
    assert jobserver.ENV in os.environ, log_file.read_text()
    yield jobserver._started["process"]
    jobserver.stop()
    if before is not None:
        os.environ[jobserver.ENV] = before


def test_a_job_through_the_server_equals_the_job_in_its_own_process(server, tmp_path, world_models):
    images = {}
    for mode, env in (("server", None), ("process", without_server())):
        config = job_config(tmp_path / mode, ["a {} on the beach"], [0, 1], 4)
        proc = start_job(tmp_path / mode, config, env=env)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        (record,) = job_records(tmp_path / mode)
        assert record["mode"] == mode and record["status"] == 0
        # The timing: a model was called, between the process's start and the step's end.
        assert record["process_start"] < record["first_model_call"] < record["step_end"]
        assert record["fixed_cost_s"] == pytest.approx(record["startup_s"] + record["exit_s"], abs=2e-3)
        assert record["wall_s"] >= record["startup_s"] + record["model_work_s"] - 2e-3
        samples = tmp_path / mode / "results" / "rex" / "samples" / "base"
        sampled = json.loads(next(samples.rglob("sampling.json")).read_text())["sampling_s"]
        assert record["model_work_s"] >= sampled - 0.05  # its sampling loop starts just before its first call
        images[mode] = {p.relative_to(samples): p.read_bytes() for p in sorted(samples.rglob("*.png"))}
        assert "sampled 2 images" in (tmp_path / mode / "results" / "logs" / "sample_base.log").read_text()
    assert len(images["server"]) == 2 and images["server"] == images["process"]


def test_a_failing_job_fails_the_same_way_in_both(server, tmp_path, world_models):
    outcomes = {}
    for mode, env in (("server", None), ("process", without_server())):
        config = job_config(tmp_path / mode, ["a {} on the beach"], [0], 4)
        proc = start_job(tmp_path / mode, config, method="lora", env=env)  # no trained LoRA to load
        _, err = proc.communicate(timeout=300)
        (record,) = job_records(tmp_path / mode)
        assert record["mode"] == mode
        lines = [line.replace(str(tmp_path / mode), "DIR") for line in err.splitlines()]
        outcomes[mode] = (proc.returncode, [line for line in lines if line.startswith("s2s error")])
    assert outcomes["server"][0] == 1 and len(outcomes["server"][1]) == 1
    assert outcomes["server"] == outcomes["process"]


def test_killing_the_job_ends_its_child_in_the_server(server, tmp_path, world_models):
    import psutil

    config = job_config(tmp_path, [f"a {{}} in the snow {i}" for i in range(20)], list(range(8)), 50)
    proc = start_job(tmp_path, config)
    log = (tmp_path / "results") / "logs" / "sample_base.log"
    deadline = time.time() + 120
    while time.time() < deadline and "sampling base" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    children = psutil.Process(server.pid).children()
    assert len(children) == 1, "the job is not running in the server"
    os.kill(proc.pid, signal.SIGKILL)  # as a cluster's OOM killer, or Snakemake stopping the job
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the job's child in the server outlived the job"
    assert job_records(tmp_path) == []  # no record of a job that did not end


def test_jobs_in_a_slurm_allocation_run_where_they_are(server, tmp_path, world_models):
    config = job_config(tmp_path, ["a {} on the beach"], [0], 2)
    proc = start_job(tmp_path, config, env={**os.environ, "SLURM_JOB_ID": "1"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert [r["mode"] for r in job_records(tmp_path)] == ["process"]


def test_no_server_for_cluster_or_conda_runs_or_when_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(jobserver.ENV, "/nonexistent/of/an/enclosing/run")
    started = dict(jobserver._started)  # the module's server, if it runs
    for config, local, conda in (
        ({"job_server": True}, False, False),  # a cluster executor: jobs run where Slurm puts them
        ({"job_server": True}, True, True),  # --use-conda: jobs run another Python
        ({"job_server": False}, True, False),
    ):
        jobserver.start(config, local=local, conda=conda, log_file=str(tmp_path / "log"))
        assert jobserver.ENV not in os.environ and jobserver._started == started
    assert not (tmp_path / "log").exists()


def test_the_job_object_reads_back_as_snakemake_gave_it():
    from snakemake.iocontainers import (
        InputFiles,
        Log,
        OutputFiles,
        Params,
        ResourceList,
        Snakemake,
        Wildcards,
    )

    inputs = InputFiles(["a.png", "b.png", "m.safetensors"])
    inputs._set_name("photos", 0, 2)  # a named list of files, as Snakemake names an expanded input
    inputs._set_name("model", 2)
    smk = Snakemake(
        inputs,
        OutputFiles(["out/0.png", "out/1.png"]),
        Params(fromdict={"row": {"edit_id": "e1"}, "n": 2}),
        Wildcards(fromdict={"subject": "rex", "method": "lora"}),
        2,
        ResourceList(fromdict={"mem_mb": 100, "_cores": 2}),
        Log(["l.log"]),
        {"seed": 3},
        "train",
        0,
        "/x/workflow_scripts",
    )
    view = jobserver.JobView(json.loads(json.dumps(jobserver.job_record(smk))))
    assert list(view.input) == list(smk.input) and view.input.photos == ["a.png", "b.png"]
    assert (
        view.input.model == "m.safetensors"
        and view.output[1] == "out/1.png"
        and view.input[1:] == ["b.png", "m.safetensors"]
    )
    assert view.input["model"] == smk.input["model"] and view.input.get("model") == smk.input.get("model")
    assert view.input.get("class_images") is None and smk.input.get("class_images") is None
    assert view.params.row == {"edit_id": "e1"} and view.params.n == 2 and view.log[0] == "l.log"
    assert dict(view.wildcards.items()) == {"subject": "rex", "method": "lora"}
    assert view.wildcards.method == "lora" and not hasattr(view.output, "companion_csv")
    assert (view.rule, view.threads, view.config, view.resources) == (
        "train",
        2,
        {"seed": 3},
        {"mem_mb": 100},
    )


def test_a_starting_server_removes_the_folders_of_servers_that_are_gone(tmp_path, monkeypatch):
    """A server killed with SIGKILL leaves its socket folder behind; the next server's start removes that
    folder and no other: not a running server's, one whose pid file is not written yet, one holding other
    files, nor a folder of another name."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # start's folders go here
    monkeypatch.setenv(jobserver.ENV, os.environ.get(jobserver.ENV, "unset"))  # restored afterwards
    log_file = str(tmp_path / "logs" / "job_server.log")
    module_server = dict(jobserver._started)  # the module's server, if it runs
    jobserver._started.clear()
    try:
        jobserver.start({"job_server": True}, local=True, conda=False, log_file=log_file)
        killed, left = jobserver._started.pop("process"), Path(jobserver._started.pop("folder"))
        killed.kill()  # SIGKILL: the server's own clean-up never runs
        killed.wait()
        assert left.is_dir() and (left / jobserver.PID_FILE).read_text() == str(killed.pid)
        kept = []
        for name, pid, extra in (
            ("s2s-jobs-running", os.getpid(), None),
            ("s2s-jobs-starting", None, None),
            ("s2s-jobs-more", killed.pid, "notes.txt"),
            ("other-jobs", killed.pid, None),
        ):
            folder = tmp_path / name
            folder.mkdir()
            (folder / jobserver.SOCKET_FILE).touch()
            if pid is not None:
                (folder / jobserver.PID_FILE).write_text(str(pid))
            if extra is not None:
                (folder / extra).touch()
            kept.append(folder)
        contents = {folder: sorted(p.name for p in folder.iterdir()) for folder in kept}
        jobserver.start({"job_server": True}, local=True, conda=False, log_file=log_file)
        assert not left.exists()
        assert {folder: sorted(p.name for p in folder.iterdir()) for folder in kept} == contents
        assert Path(jobserver._started["folder"]).is_dir()  # the new server's own
    finally:
        jobserver.stop()
        jobserver._started.update(module_server)
