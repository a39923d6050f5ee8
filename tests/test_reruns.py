"""Config changes re-run exactly what they change: one key of each kind changed on finished results,
then the exact list of jobs `snakemake -n` plans.

The finished state is made without running any job: every output of the demo DAG is created empty,
then `snakemake --touch` marks the jobs done, which records in .snakemake/metadata the params, code
and inputs each job ran with, as a real run does (the rerun triggers read only that record and the
files' times). Each test works on its own copy of that state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s2s.plan import prompt_folder

REPO = Path(__file__).resolve().parent.parent
# About two minutes: a dozen dry runs of the Snakefile.
pytestmark = pytest.mark.slow

CONFIG = {
    "run_name": "reruns",
    # Real model ids, so that changing one means something; no job runs, so nothing is downloaded.
    "models": "hub",
    "device": "cpu",
    "model": {"name_or_path": "example/base-model", "resolution": 64},
    "subjects": {"toy": {"synthetic": True, "class": "toy"}},
    "data": {"synthetic_count": 4},
    "class_images": {"num_class_images": 4, "batch_size": 4, "num_inference_steps": 4},
    "training": {
        "textual_inversion": {"max_train_steps": 4},
        "dreambooth": {"max_train_steps": 4},
        "lora": {"max_train_steps": 4, "learning_rate": 1.0e-3},
    },
    "sampling": {
        "prompts": ["a {} in the jungle", "a {} in the snow"],
        "seeds": [0, 1],
        "num_inference_steps": 4,
    },
    "evaluation": {"n_boot": 20, "clip_model": "example/clip", "dino_model": "example/dino"},
    "edits": {"manifest": "edits.csv", "num_inference_steps": 4},
}
MANIFEST = (REPO / "config" / "demo_edits.csv").read_text()


def snakemake(folder: Path, *args: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(folder),
            "--configfile",
            str(folder / "config.yaml"),
            "--cores",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        # Nothing runs (dry runs and --touch): no download either way, and offline the preflight would
        # want the model of the "model id" case in the cache.
        env={**os.environ, "HF_HUB_OFFLINE": "0"},
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


def planned_jobs(folder: Path, *args: str) -> list[tuple[str, str]]:
    """The jobs a dry run plans, as sorted (rule, wildcards) pairs; `all` left out."""
    jobs, rule = [], None
    for line in snakemake(folder, "-n", *args).splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            rule = match.group(1)
            jobs.append((rule, ""))
        elif rule and line.startswith("    wildcards: "):
            jobs[-1] = (rule, line.split(": ", 1)[1])
        elif not line.startswith(" "):
            rule = None
    return sorted(job for job in jobs if job[0] != "all")


def write_config(folder: Path, config: dict) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def finish(folder: Path, config: dict) -> Path:
    write_config(folder, config)
    (folder / "edits.csv").write_text(MANIFEST)
    out = snakemake(folder, "-n")
    outputs = [
        o for line in out.splitlines() if line.startswith("    output: ") for o in line[12:].split(", ")
    ]
    for name in outputs:
        path = folder / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:  # directory() outputs: photos, instance, class_images
            path.mkdir(parents=True, exist_ok=True)
    # --forceall: with no metadata yet every job counts as done, so a plain --touch would record nothing.
    snakemake(folder, "--touch", "--forceall")
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finish(tmp_path_factory.mktemp("finished"), CONFIG)


def copy_of(finished: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(finished, folder, symlinks=True)
    # copytree keeps the times, so the copy is as finished as the original.
    return folder


@pytest.fixture
def results(finished, tmp_path) -> Path:
    return copy_of(finished, tmp_path)


def changed(folder: Path, edit) -> list[tuple[str, str]]:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    edit(config)
    write_config(folder, config)
    return planned_jobs(folder)


def sample_jobs(prompt_folder: str, methods=("base", "textual_inversion", "dreambooth", "lora")):
    return [("sample", f"subject=toy, method={m}, prompt={prompt_folder}") for m in methods]


def evaluate_jobs(methods=("base", "textual_inversion", "dreambooth", "lora")):
    return [("evaluate", f"subject=toy, method={m}") for m in methods]


# The report pages come after everything: the subject's page shows samples, metrics and edits, the tables
# page Table 1.
REPORTS = [("report_subject", "subject=toy"), ("report_tables", "")]


def test_finished_state_plans_nothing(finished):
    assert planned_jobs(finished) == []


def test_training_key_reruns_that_method_and_its_descendants(results):
    jobs = changed(results, lambda c: c["training"]["lora"].update(learning_rate=1.0e-2))
    expected = sorted(
        [("train_lora", "subject=toy"), ("loss_curves", "subject=toy"), ("table", "")]
        + [job for p in CONFIG["sampling"]["prompts"] for job in sample_jobs(prompt_folder(p), ["lora"])]
        + evaluate_jobs(["lora"])
        + [("edit", "subject=toy, edit_id=photo_subject")]  # its row edits with the LoRA
        + REPORTS
    )
    assert jobs == expected


def test_prompt_change_reruns_that_prompt_only_and_lists_only_current_prompts(results):
    jobs = changed(results, lambda c: c["sampling"]["prompts"].__setitem__(1, "a {} in the desert"))
    expected = sorted(
        sample_jobs(prompt_folder("a {} in the desert")) + evaluate_jobs() + [("table", "")] + REPORTS
    )
    assert jobs == expected
    plan = snakemake(results, "-n")
    assert prompt_folder("a {} in the snow") not in plan  # the old prompt's images feed nothing
    assert prompt_folder("a {} in the jungle") in plan  # the unchanged prompt's samples still do


def test_sampling_key_reruns_every_sample_and_what_follows(results):
    jobs = changed(results, lambda c: c["sampling"].update(num_inference_steps=5))
    samples = [job for p in CONFIG["sampling"]["prompts"] for job in sample_jobs(prompt_folder(p))]
    assert jobs == sorted(samples + evaluate_jobs() + [("table", "")] + REPORTS)


def test_evaluation_key_reruns_evaluation_and_table_only(results):
    jobs = changed(results, lambda c: c["evaluation"].update(n_boot=30))
    assert jobs == sorted(evaluate_jobs() + [("table", "")] + REPORTS)


def test_base_model_id_reruns_everything_that_uses_the_model(results):
    everything = planned_jobs(results, "--forceall")
    jobs = changed(results, lambda c: c["model"].update(name_or_path="example/other-model"))
    photos_only = {"draw_synthetic_subject", "prepare_instance", "draw_demo_edit_photo"}
    assert jobs == [job for job in everything if job[0] not in photos_only]
    assert {"class_priors", "train_lora", "sample", "evaluate", "edit"} <= {rule for rule, _ in jobs}


@pytest.mark.parametrize("key", ["clip_model", "dino_model"])
def test_metric_model_id_reruns_evaluation_edits_and_table(results, key):
    # The edits' metrics use both (CLIP scores; the structure distance's ViT: s2s.edit.photo_metrics).
    jobs = changed(results, lambda c: c["evaluation"].update({key: "example/other-model"}))
    edits = [
        ("edit", "subject=toy, edit_id=generated_replace"),
        ("edit", "subject=toy, edit_id=photo_subject"),
    ]
    assert jobs == sorted(evaluate_jobs() + edits + [("table", "")] + REPORTS)


def test_edit_row_reruns_that_edit_only(results):
    manifest = results / "edits.csv"
    manifest.write_text(manifest.read_text().replace("a cat on the beach", "a fox on the beach"))
    assert planned_jobs(results) == [("edit", "subject=toy, edit_id=generated_replace"), REPORTS[0]]


def test_forcerun_of_training_plans_it_and_its_descendants(results):
    jobs = planned_jobs(results, "--forcerun", "train_lora")
    assert ("train_lora", "subject=toy") in jobs
    assert {rule for rule, _ in jobs} == {
        "train_lora", "sample", "evaluate", "edit", "loss_curves", "table", "report_subject", "report_tables"
    }  # fmt: skip


def test_gpu_rules_of_the_slurm_profile_are_the_rules_that_request_a_gpu(results):
    """Through profiles/slurm, with every method of the registry and a variant: each job that requests a
    GPU gets the GPU partition and CPUs per GPU, every other job the CPU partition; the profile's GPU_RULES
    name each GPU stage once (`train`: every training rule, methods and variants alike) and nothing else."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from s2s import registry

    config = yaml.safe_load((results / "config.yaml").read_text())
    config["methods"] = [*registry.NAMES, "lora_dora"]
    config["variants"] = {"lora_dora": {"method": "lora", "use_dora": True}}
    write_config(results, config)
    out = snakemake(results, "-n", "--forceall", "--profile", str(REPO / "profiles" / "slurm"))
    gpu = os.environ.get("S2S_SLURM_GPU_PARTITION", "CHANGE_ME_GPU_PARTITION")
    cpu = os.environ.get("S2S_SLURM_CPU_PARTITION", "CHANGE_ME_CPU_PARTITION")
    gpu_rules, rule = set(), None
    for line in out.splitlines():
        match = re.match(r"^\s*(?:local)?rule (\w+):$", line)
        rule = match.group(1) if match else rule
        if line.strip().startswith("resources: "):
            if re.search(r"\bgpu=[1-9]", line):
                gpu_rules.add(rule)
                assert f"slurm_partition={gpu}," in line and "cpus_per_gpu=" in line, (rule, line)
            else:
                assert f"slurm_partition={cpu}," in line, (rule, line)
    assert {f"train_{name}" for name in config["methods"]} <= gpu_rules
    profile = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    listed = re.search(r"GPU_RULES = (\[.*\])", profile).group(1)
    stages = {"train" if rule.startswith("train_") else rule for rule in gpu_rules}
    assert set(yaml.safe_load(listed)) == stages


# sampling.jobs: per_method (the world demo's setting): one job per method, the same folders.
PER_METHOD = {**CONFIG, "sampling": {**CONFIG["sampling"], "jobs": "per_method"}}


def sample_outputs(folder: Path) -> set[str]:
    out = snakemake(folder, "-n", "--forceall", "--printshellcmds")
    return {
        o
        for block in out.split("\n\n")
        if re.search(r"^(?:local)?rule sample:$", block, re.M)
        for line in block.splitlines()
        if line.startswith("    output: ")
        for o in line[12:].split(", ")
    }


@pytest.fixture(scope="module")
def finished_per_method(tmp_path_factory) -> Path:
    return finish(tmp_path_factory.mktemp("finished_per_method"), PER_METHOD)


@pytest.fixture
def per_method(finished_per_method, tmp_path) -> Path:
    return copy_of(finished_per_method, tmp_path)


METHOD_SAMPLE_JOBS = [
    ("sample", f"subject=toy, method={m}") for m in ("base", "textual_inversion", "dreambooth", "lora")
]


def test_per_method_sampling_is_one_job_per_method_writing_the_same_files(finished, per_method):
    jobs = [job for job in planned_jobs(per_method, "--forceall") if job[0] == "sample"]
    assert jobs == sorted(METHOD_SAMPLE_JOBS)
    assert sample_outputs(per_method) == sample_outputs(finished)


def test_per_method_prompt_change_resamples_each_method_and_lists_only_current_prompts(per_method):
    jobs = changed(per_method, lambda c: c["sampling"]["prompts"].__setitem__(1, "a {} in the desert"))
    assert jobs == sorted(METHOD_SAMPLE_JOBS + evaluate_jobs() + [("table", "")] + REPORTS)
    plan = snakemake(per_method, "-n")
    assert prompt_folder("a {} in the snow") not in plan
    assert prompt_folder("a {} in the desert") in plan


def test_per_method_sampling_key_resamples_each_method(per_method):
    jobs = changed(per_method, lambda c: c["sampling"].update(num_inference_steps=5))
    assert jobs == sorted(METHOD_SAMPLE_JOBS + evaluate_jobs() + [("table", "")] + REPORTS)
