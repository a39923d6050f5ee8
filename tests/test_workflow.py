"""The workflow as a user runs it: dry-runs of both configs, and one real run of the demo DAG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from s2s.plan import prompt_folder

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "tests" / "data" / "workflow_config.yaml"


def snakemake(*args, cwd=REPO, check=True, offline=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1" if offline else "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def snakemake_log(workdir: Path) -> str:
    """The last run's Snakemake log."""
    return sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[-1].read_text()


def job_counts(dry_run_output: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts and not line.startswith("-"):
                break
    return counts


def test_demo_dry_run_lists_every_stage(tmp_path):
    # The demo runs on the committed world models: nothing to build, the subject drawn from the world.
    out = snakemake("-n", "--cores", "2", "--config", f"results_dir={tmp_path}").stdout
    counts = job_counts(out)
    assert "build_tiny_models" not in counts
    for rule in (
        "draw_synthetic_subject",
        "prepare_instance",
        "class_priors",
        "train_textual_inversion",
        "train_dreambooth",
        "train_lora",
        "evaluate",
        "table",
    ):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    # One sampling job per method (base + 3; sampling.jobs: per_method), each for the study's 20 prompts.
    assert counts["sample"] == 4 and counts["edit"] == 4
    pngs = re.findall(r"/samples/[a-z_]+/[^/, ]+/\d+\.png", out)
    assert len(set(pngs)) == 4 * 20 * 4, len(set(pngs))


def job_blocks(dry_run_output: str, rule: str) -> list[str]:
    """The dry run's listing of each job of ``rule`` (its input, output, threads, ... lines)."""
    return [block.split("\n[", 1)[0] for block in dry_run_output.split(f"rule {rule}:\n")[1:]]


# What each `models` choice puts into the DAG: the rule that builds its models, the base model file a
# sampling job waits for, and the threads of a model job (start-up bound small models take one).
MODELS_IN_THE_DAG = {
    "hub": (None, None, 2),
    "tiny": ("build_tiny_models", "{results}/tiny_models/sd/model_index.json", 1),
    "rehearsal": ("build_rehearsal_models", "{results}/rehearsal_models/sd/model_index.json", 2),
    "world": (None, "models/world/sd/model_index.json", 1),
}


@pytest.mark.parametrize("models", sorted(MODELS_IN_THE_DAG))
def test_the_models_choice_decides_what_the_dag_builds_and_loads(tmp_path, models):
    builder, base_file, threads = MODELS_IN_THE_DAG[models]
    results = tmp_path / "results"
    config = yaml.safe_load(TEST_CONFIG.read_text()) | {"models": models, "results_dir": str(results)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # Online for hub models: a dry run downloads nothing (offline, the preflight wants them cached).
    out = snakemake(
        "-n", "--cores", "2", "--configfile", str(tmp_path / "config.yaml"), offline=models != "hub"
    ).stdout
    counts = job_counts(out)
    for rule in ("build_tiny_models", "build_rehearsal_models"):
        assert (rule in counts) == (rule == builder), (rule, counts)
    assert ("world_prompt_fidelity" in counts) == (models == "world"), counts
    sample = next(block for block in job_blocks(out, "sample") if "method=base" in block)
    inputs = sample.split("input: ", 1)[1].split("\n", 1)[0] if "input: " in sample else ""
    if base_file is None:
        assert "model_index.json" not in inputs, sample
    else:
        assert base_file.format(results=results) in inputs.split(", "), sample
    assert ("threads: 2" in sample) == (threads == 2), sample
    if models == "world":  # a rebuilt read-out re-runs the measures it reads (identification, attributes)
        evaluate = next(iter(job_blocks(out, "evaluate")))
        assert "models/world/readout.safetensors" in evaluate.split("input: ", 1)[1].split("\n", 1)[0]


def test_paper_dry_run_shows_the_complete_dag(shared_data):
    # Online: a dry run downloads nothing (offline, the preflight wants the models cached: next test).
    out = snakemake("-n", "--cores", "1", "--configfile", "config/paper.yaml", offline=False).stdout
    counts = job_counts(out)
    assert counts["prepare_instance"] == 1 and counts["class_priors"] == 1
    assert counts["train_textual_inversion"] == counts["train_dreambooth"] == counts["train_lora"] == 1
    assert counts["evaluate"] == 4 and counts["table"] == 1
    assert "build_tiny_models" not in counts and "draw_synthetic_subject" not in counts
    prompts = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["sampling"]["prompts"]
    assert len(prompts) == 20
    for method in ("textual_inversion", "dreambooth", "lora"):
        for prompt in prompts:
            assert f"results/paper/dog/samples/{method}/{prompt_folder(prompt)}/0.png" in out
    assert "num_class_images=200" in out or "200" in out


def test_offline_paper_run_stops_before_any_job_naming_the_uncached_model(shared_data, tmp_path):
    env_home = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    os.environ.update(env_home)
    try:
        proc = snakemake("-n", "--cores", "1", "--configfile", "config/paper.yaml", check=False)
    finally:
        for key in env_home:
            os.environ.pop(key)
    assert proc.returncode != 0
    assert "config key model.name_or_path: CompVis/stable-diffusion-v1-4 is not in the local model cache" in (
        proc.stdout + proc.stderr
    )
    assert "snakemake prefetch" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_dag_runs_end_to_end(tmp_path):
    snakemake("--cores", "2", "--configfile", str(TEST_CONFIG), "--directory", str(tmp_path))
    results = tmp_path / "results"
    table = pd.read_csv(results / "table1.csv")
    assert {"textual_inversion", "dreambooth", "lora", "base"} <= set(table["method"])
    for column in ("clip_score", "fid", "inception_score"):
        assert column in table.columns and table[column].notna().all(), column
    assert (results / "table1.md").read_text().count("randomly initialised models") >= 1
    assert (results / "table1.html").exists()

    for method in ("textual_inversion", "dreambooth", "lora"):
        summary = json.loads((results / "toy" / "models" / method / "train_summary.json").read_text())
        assert summary["steps"] == 4
    # Prompts are data: quotes, ;, $(), backticks and newlines reach the model unchanged, no shell runs.
    prompts = yaml.safe_load(TEST_CONFIG.read_text())["sampling"]["prompts"]
    folder = results / "toy" / "samples" / "lora" / prompt_folder(prompts[1])
    meta = json.loads((folder / "prompt.json").read_text())
    assert meta["prompt"] == (
        'a "quoted" sks toy; echo pwned > pwned.txt $(touch pwned2) `touch pwned3` it\'s\nnext line'
    )
    assert not list(tmp_path.glob("pwned*")) and not list(REPO.glob("pwned*"))

    # The edit batch: a generated source and a drawn photo put through inversion into the LoRA subject.
    for edit_id in ("generated_replace", "photo_subject"):
        record = json.loads((results / "toy" / "edits" / edit_id / "edit.json").read_text())
        assert record["edit_id"] == edit_id
        assert (results / "toy" / "edits" / edit_id / "before_after.png").exists()

    # Every job ran in the job server (s2s.jobserver), and recorded its start-up and exit.
    records = [json.loads(line) for line in (results / "logs" / "jobs.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in records} == {"server"} and {r["status"] for r in records} == {0}
    assert len(records) == len(re.findall(r"^Finished jobid", snakemake_log(tmp_path), flags=re.M)) - 1
    assert all(r["fixed_cost_s"] > 0 for r in records if r["rule"] in ("train", "sample", "evaluate"))

    # Determinism: the same config and seeds give byte-identical sample PNGs on a second run, here with
    # every job in its own process (job_server: false) where the first run forked them from the server.
    first = {p: p.read_bytes() for p in (results / "toy" / "samples").rglob("*.png")}
    (tmp_path / "no_server.yaml").write_text("job_server: false\n")
    snakemake(
        "--cores",
        "2",
        "--configfile",
        str(TEST_CONFIG),
        str(tmp_path / "no_server.yaml"),
        "--directory",
        str(tmp_path),
        "--forcerun",
        "sample",
        "--until",
        "sample",
    )
    second = {p: p.read_bytes() for p in (results / "toy" / "samples").rglob("*.png")}
    assert first.keys() == second.keys() and len(first) == 4 * 2 * 2
    assert all(first[p] == second[p] for p in first)
    again = [json.loads(line) for line in (results / "logs" / "jobs.jsonl").read_text().splitlines()]
    assert again[: len(records)] == records
    sample_jobs = sum(r["rule"] == "sample" for r in records)
    assert [(r["rule"], r["mode"]) for r in again[len(records) :]] == [("sample", "process")] * sample_jobs

    # The report: grids, table, loss curves.
    snakemake(
        "--cores",
        "1",
        "--configfile",
        str(TEST_CONFIG),
        "--directory",
        str(tmp_path),
        "--report",
        str(tmp_path / "report.html"),
    )
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_a_model_predicting_neither_noise_nor_velocity_stops_the_run_when_the_workflow_is_read(tmp_path):
    scheduler = tmp_path / "sd" / "scheduler"
    scheduler.mkdir(parents=True)
    (scheduler / "scheduler_config.json").write_text(json.dumps({"prediction_type": "sample"}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"models": "hub", "model": {"name_or_path": str(tmp_path / "sd")}}))
    proc = snakemake(
        "-n", "--cores", "1", "--configfile", str(TEST_CONFIG), str(overlay), "--directory", str(tmp_path),
        check=False, offline=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "s2s config error: config key model.name_or_path:" in out
    assert "prediction_type 'sample'" in out and "epsilon and v_prediction" in out
    assert "Traceback" not in out
