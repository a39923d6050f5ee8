"""Multi-process training (issue 6): two gloo processes on CPU under `accelerate launch`.

Two processes with batch 1 must train like one process with batch 2: each sample's data, latent draw,
noise and timestep depend only on its position in the data stream, and DDP averages the two gradients.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.train.launch import launch_command, process_env, train_job

PROMPT = "a photo of sks toy"


def _train(tmp, tiny_sd, instance, class_dir, **training):
    config = check_config({"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "training": training})
    return train_job(
        train_config(config, "dreambooth"),
        subject(config, "toy"),
        threads=2,
        base_model=str(tiny_sd),
        instance_dir=instance,
        out_dir=tmp / "model",
        checkpoint_dir=tmp / "ckpt",
        resolution=64,
        instance_prompt=PROMPT,
        class_dir=class_dir,
        class_prompt="a photo of a toy",
        device="cpu",
    )


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_two_processes_with_batch_1_train_like_one_with_batch_2(
    tmp_path, tiny_sd, toy_instance, toy_class_images, train_text_encoder
):
    # adam_epsilon 1e-5: with the default 1e-8, AdamW turns the all-reduce's float rounding of
    # near-zero gradients (|g| ~ 1e-8) into whole-step differences in a few thousand weights.
    # scale_lr: batch x processes is 2 in both set-ups, so both train at 2 x 5e-4.
    dreambooth = {
        "max_train_steps": 3, "learning_rate": 5e-4, "adam_epsilon": 1e-5, "scale_lr": True,
        "train_text_encoder": train_text_encoder,
    }
    opts = {"dreambooth": dreambooth, "seed": 3}
    _train(tmp_path / "one", tiny_sd, toy_instance, toy_class_images, train_batch_size=2, **opts)
    assert _train(
        tmp_path / "two", tiny_sd, toy_instance, toy_class_images, train_batch_size=1, num_processes=2, **opts
    ) is None  # ran in launched processes, not in this one

    two = json.loads((tmp_path / "two" / "model" / "train_summary.json").read_text())
    assert two["num_processes"] == 2 and two["steps"] == 3
    assert two["learning_rate"] == pytest.approx(5e-4 * 1 * 1 * 2)  # lr x batch x accumulation x processes
    parts = ["unet/diffusion_pytorch_model.safetensors"]
    if train_text_encoder:
        # Both processes must train one text encoder: DDP all-reduces its gradients too.
        parts.append("text_encoder/model.safetensors")
    for part in parts:
        start = load_file(tiny_sd / part)
        one_w = load_file(tmp_path / "one" / "model" / part)
        two_w = load_file(tmp_path / "two" / "model" / part)
        moved = max((one_w[k] - start[k]).abs().max() for k in start)
        apart = max((one_w[k] - two_w[k]).abs().max() for k in start)
        assert moved > 1e-3, (part, float(moved))  # it trained (lr 1e-3 per step)
        # The same weights up to float rounding (measured: UNet 8.8e-7, text encoder 2.9e-7 apart, each
        # moved 3e-3; with the text encoder outside DDP each process trained its own copy and even the
        # UNets ended 3.0e-3 apart).
        assert apart < 1e-5, (part, float(apart))
    # The logged loss is the whole batch's (mean over processes), so the curves agree too.
    one_loss = (tmp_path / "one" / "model" / "loss.csv").read_text().splitlines()[1:]
    two_loss = (tmp_path / "two" / "model" / "loss.csv").read_text().splitlines()[1:]
    for a, b in zip(one_loss, two_loss, strict=True):
        assert abs(float(a.split(",")[1]) - float(b.split(",")[1])) < 1e-5


def test_launch_command_passes_no_shell_and_names_the_processes(tmp_path):
    command = launch_command(4, tmp_path / "spec with space.json", 12345)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[-1] == str(tmp_path / "spec with space.json")  # one argument, never split by a shell


def test_launched_processes_import_the_package_without_an_install(tmp_path):
    # -S: no site-packages, so neither an editable install nor a conda env can provide s2s
    env = process_env(threads=4, num_processes=2)
    assert env["OMP_NUM_THREADS"] == "2"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", "import s2s, sys; print(s2s.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_more_processes_than_visible_gpus_is_a_clear_error(monkeypatch):
    import torch

    from s2s.io import S2SError
    from s2s.train.launch import check_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_gpus(1, "auto")
    with pytest.raises(S2SError, match="num_processes is 2 but this job sees 1 GPU"):
        check_gpus(2, "auto")


def test_a_failing_process_ends_the_job_with_one_line(tmp_path, tiny_sd, toy_class_images):
    from s2s.io import S2SError

    empty = tmp_path / "no_images"
    empty.mkdir()
    with pytest.raises(S2SError, match="one of the 2 training processes failed"):
        _train(tmp_path, tiny_sd, empty, toy_class_images, num_processes=2,
               dreambooth={"max_train_steps": 1})
