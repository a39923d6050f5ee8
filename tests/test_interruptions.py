"""A training job killed with SIGKILL resumes from its checkpoint on the next `snakemake` run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
TARGET = "results/toy/models/lora/pytorch_lora_weights.safetensors"


def write_config(folder: Path) -> Path:
    config = yaml.safe_load((REPO / "tests" / "data" / "workflow_config.yaml").read_text())
    config["training"] = {"checkpointing_steps": 5, "lora": {"max_train_steps": 60, "learning_rate": 1e-3}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(workdir: Path, config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        "2",
        "--configfile",
        str(config),
        "--directory",
        str(workdir),
        TARGET,
    ]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_sigkill_during_training_resumes_to_identical_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command(straight, write_config(straight)), check=True, capture_output=True, env=env)

    config = write_config(killed)
    proc = subprocess.Popen(
        command(killed, config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    checkpoints = killed / "results" / "toy" / "checkpoints" / "lora"
    deadline = time.time() + 600
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/state.json")):
        time.sleep(0.2)
    # SIGKILL the training job (as a cluster's OOM killer or pre-emption would), not Snakemake itself.
    for pid in descendants(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert list(checkpoints.glob("checkpoint-*/state.json")), "no checkpoint was written before the kill"
    assert not (killed / TARGET).exists()  # nothing that looks complete

    rerun = subprocess.run(command(killed, config), capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (killed / "results" / "logs" / "toy" / "train_lora.log").read_text()
    assert "resuming from checkpoint" in log
    a, b = load_file(straight / TARGET), load_file(killed / TARGET)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
