"""The SLURM profile (profiles/slurm): GPU requests in a dry run, and a real run on a local Slurm cluster.

The real run needs root and apt (Debian/Ubuntu): scripts/slurm_local_cluster.sh installs slurm-wlm and
munge and starts a one-node cluster with two fake GPUs. It is skipped unless S2S_SLURM_TEST=1:

    S2S_SLURM_TEST=1 .venv/bin/python -m pytest -q -s tests/test_slurm.py

It runs a small demo (LoRA only, trained in 2 processes, 2 steps, 2 prompts) through `--profile
profiles/slurm` and checks that (a) every job went through sbatch, (b) the GPU stages asked Slurm for a GPU
(the 2-process training job for 2) and the CPU stages did not (read back from slurmctld with `scontrol show
job`), (c) the results are byte-identical to a local `--cores 2` run of the same config. It prints the number
of sbatch submissions and the wall times.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "slurm"
CLUSTER_SCRIPT = REPO / "scripts" / "slurm_local_cluster.sh"
# Rules that declare gpu=1 (the sampling group job is named after its group, "sampling").
GPU_RULE = re.compile(r"^(class_priors|train_\w+|sample|sampling|edit)$")
# Slurm job names of this test: <prefix>_<Snakemake run id>.
JOB_PREFIX = "s2stest"
# What the local cluster's single partition is called (scripts/slurm_local_cluster.sh).
PARTITION = "debug"
# Placeholders of profiles/slurm/config.yaml, set for the local cluster: no account, one partition,
# 1 CPU per GPU: the profile gives the GPU rules as many threads, and a local run on the tiny models runs
# them with 1 (rules/common.smk, MODEL_THREADS). Equal threads, so that the CPU results can be byte-equal
# (torch's CPU reductions depend on the thread count).
CLUSTER_ENV = {
    "S2S_SLURM_ACCOUNT": "",
    "S2S_SLURM_CPU_PARTITION": PARTITION,
    "S2S_SLURM_GPU_PARTITION": PARTITION,
    "S2S_SLURM_CPUS_PER_GPU": "1",
}


def job_resources(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, resources line) for every job block of a dry run, group members included."""
    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        line = line.strip()
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif line.startswith("resources:") and rule:
            jobs.append((rule, line))
            rule = None
    return jobs


def paper_dry_run(tmp_path: Path, overlay: dict) -> subprocess.CompletedProcess:
    """`snakemake -n --profile profiles/slurm --configfile config/paper.yaml OVERLAY` (placeholders unset)."""
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2S_SLURM_")}
    env["HF_HUB_OFFLINE"] = "0"  # a dry run downloads nothing; offline, the preflight wants SD v1.4 cached
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--profile", str(PROFILE),
         "--configfile", str(REPO / "config" / "paper.yaml"), str(tmp_path / "overlay.yaml"),
         "--directory", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def few_photos(folder: Path) -> Path:
    """A subject folder that passes the parse-time check (5 files with a PNG header; never decoded)."""
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(24))
    return folder


def test_profile_dry_run_requests_gpus_for_gpu_stages_only(tmp_path):
    """`snakemake -n --profile profiles/slurm --configfile config/paper.yaml` (+ the demo's generated edits):
    the GPU stages carry gpu=1 and the GPU partition, the CPU stages neither; sampling goes out in groups."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    photos = few_photos(tmp_path / "dog")
    overlay = {"subjects": {"dog": {"images": str(photos), "class": "dog"}}}
    # The demo's edit manifest, its generated rows only (photo rows point into the demo's results).
    with open(REPO / "config" / "demo_edits.csv", newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if not row.get("image")]
    if rows:
        with open(tmp_path / "edits.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        overlay["edits"] = {"manifest": str(tmp_path / "edits.csv")}
    proc = paper_dry_run(tmp_path, overlay)
    jobs = job_resources(proc.stdout)
    rules = {rule for rule, _ in jobs}
    assert {"class_priors", "train_textual_inversion", "train_dreambooth", "train_lora", "sample",
            "prepare_instance", "evaluate", "table"} <= rules, rules
    for rule, resources in jobs:
        if GPU_RULE.match(rule):
            assert "gpu=1" in resources and "cpus_per_gpu=4" in resources, (rule, resources)
            assert "slurm_partition=CHANGE_ME_GPU_PARTITION" in resources, (rule, resources)
        else:
            assert "gpu=" not in resources and "slurm_partition=CHANGE_ME_CPU_PARTITION" in resources, (
                rule, resources)
        assert "slurm_account=CHANGE_ME_ACCOUNT" in resources, (rule, resources)
    if rows:
        assert "edit" in rules, rules
    # 80 sampling jobs (20 prompts x 4 methods) in groups of 5.
    assert proc.stdout.count("Group job sampling") == 16


def test_profile_keeps_group_jobs_on_one_gpu_for_any_device(tmp_path):
    """device: cpu sets the GPU stages' gpu_jobs to 0 for local runs (side by side); through the profile they
    keep gpu_jobs=1, else a sampling group would run its jobs side by side and ask Slurm for their summed
    GPUs and CPUs (5 x --gpus=1 -> --gpus=5)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    photos = few_photos(tmp_path / "dog")
    no_fp16 = {m: {"mixed_precision": "no"} for m in ("textual_inversion", "dreambooth", "lora")}
    overlay = {"subjects": {"dog": {"images": str(photos), "class": "dog"}}, "device": "cpu",
               "training": no_fp16}
    jobs = job_resources(paper_dry_run(tmp_path, overlay).stdout)
    gpu_stages = [(rule, res) for rule, res in jobs if GPU_RULE.match(rule)]
    assert {rule for rule, _ in gpu_stages} >= {"class_priors", "train_lora", "sample"}
    for rule, resources in gpu_stages:
        assert re.search(r"\bgpu_jobs=1\b", resources), (rule, resources)


def test_multi_process_training_requests_one_gpu_per_process(tmp_path):
    """training.dreambooth.num_processes: 4 -> that job asks for 4 GPUs, a variant's num_processes: 2 for 2;
    every other GPU job for 1. The new methods' and the variant's training jobs go to the GPU partition."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    photos = few_photos(tmp_path / "dog")
    overlay = {
        "subjects": {"dog": {"images": str(photos), "class": "dog"}},
        "methods": ["dreambooth", "lora", "pivotal", "custom_diffusion", "lora_2gpu"],
        "variants": {"lora_2gpu": {"method": "lora", "num_processes": 2}},
        "training": {"dreambooth": {"num_processes": 4}},
    }
    proc = paper_dry_run(tmp_path, overlay)
    jobs = job_resources(proc.stdout)
    gpus = {rule: re.search(r"\bgpu=(\d+)", res) for rule, res in jobs}
    assert gpus["train_dreambooth"].group(1) == "4" and gpus["train_lora_2gpu"].group(1) == "2"
    assert gpus["train_lora"].group(1) == "1" and gpus["class_priors"].group(1) == "1"
    assert gpus["train_pivotal"].group(1) == gpus["train_custom_diffusion"].group(1) == "1"
    for rule, resources in jobs:
        if rule.startswith("train_"):
            assert "slurm_partition=CHANGE_ME_GPU_PARTITION" in resources and "cpus_per_gpu=4" in resources, (
                rule, resources)


# ---------------------------------------------------------------------------------------------------------
# The real cluster.

slurm = pytest.mark.skipif(
    os.environ.get("S2S_SLURM_TEST") != "1",
    reason="real Slurm run: set S2S_SLURM_TEST=1 (needs root + apt; installs slurm-wlm and munge and "
    "starts a local one-node cluster with scripts/slurm_local_cluster.sh)",
)


# The demo trains LoRA in 2 processes, so the node needs 2 (fake) GPUs.
FAKE_GPUS = 2


def run_script(verb: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "S2S_SLURM_FAKE_GPUS": str(FAKE_GPUS)}
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), verb], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"slurm_local_cluster.sh {verb} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def slurm_cluster():
    """The local cluster: started here, and stopped afterwards, unless one is already running. Stopping
    kills the daemons the script started, by the PIDs it recorded; the teardown checks they are gone."""
    t0 = time.monotonic()
    running = run_script("status", check=False).returncode == 0
    if not running:
        run_script("start")
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True).stdout
    gpus = re.search(r"Gres=gpu:(\d+)", node)
    if not gpus or int(gpus.group(1)) < FAKE_GPUS:
        pytest.fail(f"the running Slurm cluster has fewer than {FAKE_GPUS} GPUs ({node.strip()[:200]}); "
                    f"stop it with `bash scripts/slurm_local_cluster.sh stop` and rerun")
    info = {"started_here": not running, "start_s": time.monotonic() - t0}
    try:
        yield info
    finally:
        if not running:
            state = Path(os.environ.get("S2S_SLURM_DIR", "/tmp/s2s-slurm"))
            pids = [int(f.read_text()) for f in state.glob("*.pid") if f.read_text().strip().isdigit()]
            run_script("stop")
            alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                     and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[:1]]
            assert not alive, f"daemons still running after stop: {alive}"


def small_demo_config(path: Path) -> Path:
    """config/tiny.yaml cut down: LoRA only (with class priors) in 2 processes, 2 steps, 2 prompts, one
    chunk, no edits."""
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    # Results straight under results/ (tiny.yaml keeps its own under results/tiny): the paths below.
    config["results_dir"] = "results"
    config["methods"] = ["lora"]
    config["data"] = {"synthetic_count": 4}
    config["class_images"] = {"num_class_images": 4, "batch_size": 4, "num_inference_steps": 2}
    config["training"] = {"checkpointing_steps": 2,
                          "lora": {"max_train_steps": 2, "learning_rate": 1.0e-3, "num_processes": 2}}
    config["sampling"] = {"prompts": ["a {} in the jungle", "a {} in the snow"], "seeds": [0, 1],
                          "num_inference_steps": 2}
    config["evaluation"] = {"n_boot": 20, "compare_published": True}
    config.setdefault("edits", {})["manifest"] = None  # editing is a GPU stage too; checked in the dry run
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def profile_set_resources() -> list[str]:
    """The profile's own set-resources entries (GPU partition, cpus_per_gpu), as Snakemake reads them."""
    from snakemake.profiles import ProfileConfigFileParser

    with open(PROFILE / "config.yaml") as stream:
        return list(ProfileConfigFileParser().parse(stream)["set-resources"])


def safetensors_digest(path: Path) -> str:
    """sha256 of a safetensors file's metadata and tensors (names, dtypes, bytes). Not of the file: the
    library writes a header's metadata keys in the order of a Rust hash map, seeded per process."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as handle:
        digest.update(json.dumps(handle.metadata() or {}, sort_keys=True).encode())
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def digests(results: Path) -> dict[str, str]:
    """sha256 of what the pipeline computes: images, model weights, class priors, samples. Not the report's
    figures: they show wall times and memory, which differ from run to run."""
    out = {}
    for path in sorted(results.rglob("*")):
        skipped = {"logs", "report"} & set(path.parts)
        if path.is_file() and path.suffix == ".png" and not skipped:
            out[str(path.relative_to(results))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_file() and path.suffix == ".safetensors" and not skipped:
            out[str(path.relative_to(results))] = safetensors_digest(path)
    return out


def cancel_leftover_jobs() -> None:
    """scancel this test's jobs that still wait or run (after a failed or timed-out Snakemake run)."""
    out = subprocess.run(["squeue", "-h", "-t", "PD,R,CG", "-o", "%i %j"], capture_output=True, text=True)
    ids = [line.split()[0] for line in out.stdout.splitlines() if line.split()[1].startswith(JOB_PREFIX)]
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def scontrol_job(jobid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, check=True)
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


@slurm
@pytest.mark.slurm
def test_demo_runs_on_slurm_like_locally(tmp_path, slurm_cluster, monkeypatch, capsys):
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = small_demo_config(tmp_path / "config.yaml")
    base = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(config)]

    # The tiny random models are built once and copied to both runs: it saves a build per run, and the
    # comparison then covers the stages that run on the cluster (their own determinism is tested in
    # test_tiny_models.py).
    t_seed = time.monotonic()
    seed = subprocess.run(base + ["--cores", "2", "--directory", str(tmp_path / "seed"),
                                  "results/tiny_models/sd/model_index.json"],
                          cwd=REPO, capture_output=True, text=True)
    assert seed.returncode == 0, seed.stdout[-3000:] + seed.stderr[-3000:]
    seed_s = time.monotonic() - t_seed
    for run in ("local", "slurm"):
        models = tmp_path / "seed" / "results" / "tiny_models"
        shutil.copytree(models, tmp_path / run / "results" / "tiny_models")

    # The local reference run, side by side with the Slurm run (which mostly waits on status checks).
    local_log = open(tmp_path / "local.log", "w")  # noqa: SIM115 - open while the local run lasts
    t_local = time.monotonic()
    local = subprocess.Popen(base + ["--cores", "2", "--directory", str(tmp_path / "local")],
                             cwd=REPO, stdout=local_log, stderr=subprocess.STDOUT, start_new_session=True)
    local_end = {}

    def wait_for_local():
        local.wait()
        local_end["t"] = time.monotonic()

    watcher = threading.Thread(target=wait_for_local)
    watcher.start()
    try:
        # The Slurm run: the profile as a user runs it, plus what this cluster needs: squeue for status (no
        # slurmdbd), fast first status check, and memory requests that fit this machine (the rules ask for
        # up to 32 GB, the tiny models need far less). --verbose logs every sbatch call.
        small_mem = [f"{rule}:mem_mb=2000" for rule in (
            "draw_synthetic_subject", "prepare_instance", "class_priors", "train_lora",
            "sample", "evaluate", "table", "loss_curves")]
        t_slurm = time.monotonic()
        proc = subprocess.run(
            base + ["--profile", str(PROFILE), "--directory", str(tmp_path / "slurm"),
                    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                    "--slurm-keep-successful-logs", "--slurm-jobname-prefix", JOB_PREFIX, "--verbose",
                    "--set-resources", *profile_set_resources(), *small_mem],
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )
        slurm_s = time.monotonic() - t_slurm
        log = proc.stdout + proc.stderr
        (tmp_path / "slurm.log").write_text(log)
        assert proc.returncode == 0, f"Slurm run failed (log: {tmp_path / 'slurm.log'}):\n{log[-6000:]}"
        watcher.join(timeout=900)
        assert "t" in local_end, "the local run did not finish within 15 minutes"
        local_s = local_end["t"] - t_local
    finally:
        if local.poll() is None:
            os.killpg(local.pid, signal.SIGTERM)
        watcher.join()
        local_log.close()
        cancel_leftover_jobs()
    assert local.returncode == 0, (tmp_path / "local.log").read_text()[-6000:]

    # (a) Every workflow job went through sbatch, and slurmctld knows every submission as COMPLETED.
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    sbatch_calls = re.findall(r"sbatch call: (sbatch .*)", log)
    assert submitted and len(sbatch_calls) == len(submitted), (len(sbatch_calls), len(submitted))
    on_cluster = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i", "--name", run_id],
                                capture_output=True, text=True, check=True).stdout.split()
    assert sorted(on_cluster, key=int) == sorted(submitted, key=int)
    finished = re.findall(r"Finished jobid: \S+ \(Rule: (\w+)\)", log)
    assert {"class_priors", "train_lora", "sample", "evaluate", "table"} <= set(finished), finished

    # (b) GPU stages asked for a GPU (sbatch --gpus=1, slurmctld TresPerJob=gres:gpu:1), the 2-process
    # training job for 2, CPU stages for none.
    gpu_jobs, cpu_jobs = [], []
    for jobid in submitted:
        job = scontrol_job(jobid)
        assert job["JobState"] == "COMPLETED", (jobid, job)
        rule = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", job["Comment"]).group(1)
        # A group job's comment names the group and its rule ("sampling_sample"): count it as the group.
        rule = "sampling" if rule.startswith("sampling") else rule
        gpus = re.search(r"gres:gpu:(\d+)", job.get("TresPerJob", ""))
        (gpu_jobs if gpus else cpu_jobs).append(rule)
        assert bool(gpus) == bool(GPU_RULE.match(rule)), (rule, job.get("TresPerJob"))
        if gpus:
            assert gpus.group(1) == ("2" if rule == "train_lora" else "1"), (rule, job.get("TresPerJob"))
    assert {"class_priors", "train_lora", "sampling"} <= set(gpu_jobs), gpu_jobs
    assert {"prepare_instance", "evaluate"} <= set(cpu_jobs), cpu_jobs
    # Light rules (localrules: drawing, table, loss curves) run beside Snakemake, never through sbatch.
    assert not {"draw_synthetic_subject", "table", "loss_curves"} & set(gpu_jobs + cpu_jobs)
    for call in sbatch_calls:
        gpu_rule = re.search(r"--comment '?rule_(class_priors|train_|sampling)", call)
        wanted = "--gpus=2" if "rule_train_lora" in call else "--gpus=1"
        assert (wanted in call) == bool(gpu_rule), call
    summary = json.loads((tmp_path / "slurm" / "results" / "toy" / "models" / "lora" / "train_summary.json")
                         .read_text())
    assert summary["num_processes"] == 2  # trained in 2 processes inside the Slurm job
    # Sampling (base and lora, one chunk each) went out as one group submission.
    assert gpu_jobs.count("sampling") == 1, gpu_jobs

    # (c) The same bytes as the local run.
    slurm_files = digests(tmp_path / "slurm" / "results")
    local_files = digests(tmp_path / "local" / "results")
    assert any("models/lora/" in name for name in slurm_files)
    assert any("/samples/" in name for name in slurm_files)
    assert slurm_files == local_files, {k for k in slurm_files.keys() | local_files.keys()
                                        if slurm_files.get(k) != local_files.get(k)}

    cluster = "install+start" if slurm_cluster["started_here"] else "already running"
    with capsys.disabled():
        print(f"\n[slurm] {len(submitted)} sbatch submissions ({len(gpu_jobs)} with --gpus (train_lora: 2): "
              f"{', '.join(sorted(gpu_jobs))}; {len(cpu_jobs)} CPU-only) for {len(finished)} workflow jobs; "
              f"Slurm run {slurm_s:.0f} s, local run {local_s:.0f} s (side by side, after building the "
              f"tiny models once: {seed_s:.0f} s); "
              f"cluster {cluster} {slurm_cluster['start_s']:.0f} s; "
              f"{len(slurm_files)} result files byte-identical")
