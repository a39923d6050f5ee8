"""Checkpoints: one at the last step (a failure in validation or saving resumes at the end), the gradient
scaler's state, deletion once the model is written, and checkpoints that belong to their settings (a
changed setting starts fresh; loss.csv covers every step)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import s2s.train.loop as loop
from s2s.config import check_config, subject, train_config
from s2s.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

PROMPT = "a photo of sks toy"
SHARED = ("checkpointing_steps", "seed", "mixed_precision", "keep_checkpoints")
LORA = "pytorch_lora_weights.safetensors"


def run(tmp: Path, tiny_sd, instance, stop_after=None, method="lora", **overrides):
    shared = {k: v for k, v in overrides.items() if k in SHARED}
    per_method = {"max_train_steps": 4, "with_prior_preservation": False}
    per_method.update({k: v for k, v in overrides.items() if k not in shared})
    config = check_config(
        {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "training": {**shared, method: per_method}}
    )
    return loop.train(
        train_config(config, method),
        subject(config, "toy"),
        str(tiny_sd),
        instance,
        tmp / "model",
        tmp / "ckpt",
        64,
        PROMPT,
        device="cpu",
        stop_after_steps=stop_after,
    )


def loss_rows(folder: Path) -> list[list[str]]:
    return [line.split(",") for line in (folder / "model" / "loss.csv").read_text().splitlines()[1:]]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model" / LORA), load_file(b / "model" / LORA)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    # A real GradScaler (enabled on CPU) whose scale has backed off and whose growth tracker has counted.
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=5, enabled=True)
    for grad in (float("inf"), 1.0, 1.0):  # one overflow (scale halves), then two good steps
        optimizer.zero_grad()
        scaler.scale((param * grad).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    state = scaler.state_dict()
    assert state["scale"] == 512.0 and state["_growth_tracker"] == 2
    path = save_checkpoint(tmp_path, 3, {"p": param}, optimizer, schedule, 2, scaler=scaler)
    assert sorted(p.name for p in path.iterdir()) == [
        "optimizer.safetensors",
        "state.json",
        "trainable.safetensors",
    ]  # no pickle
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    load_checkpoint(path, {"p": param}, optimizer, schedule, scaler=fresh)
    assert fresh.state_dict() == state
    assert fresh.get_scale() == 512.0


def test_failure_in_last_validation_resumes_at_the_end_without_retraining(
    tmp_path, tiny_sd, toy_instance, one_torch_thread, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="s2s.train")
    opts = {"checkpointing_steps": 100, "validation_prompt": "a {} on the beach", "validation_steps": 2}
    straight = run(tmp_path / "straight", tiny_sd, toy_instance, **opts)
    real = loop._validation_image

    def failing_at_the_end(*args):
        if args[-2] == 4:  # the step
            raise RuntimeError("validation failed")
        return real(*args)

    monkeypatch.setattr(loop, "_validation_image", failing_at_the_end)
    with pytest.raises(RuntimeError, match="validation failed"):
        run(tmp_path / "crashed", tiny_sd, toy_instance, **opts)
    assert not (tmp_path / "crashed" / "model").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "crashed" / "ckpt")] == ["checkpoint-4"]
    monkeypatch.setattr(loop, "_validation_image", real)

    caplog.clear()
    summary = run(tmp_path / "crashed", tiny_sd, toy_instance, **opts)
    assert "resuming from checkpoint" in caplog.text and "(step 4 of 4)" in caplog.text
    assert summary["resumed_from_step"] == 4 and summary["steps_this_run"] == 0  # no step trained again
    assert same_weights(tmp_path / "straight", tmp_path / "crashed")
    assert loss_rows(tmp_path / "crashed") == loss_rows(tmp_path / "straight")  # every step, 1..4
    assert summary["final_loss"] == straight["final_loss"]


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_checkpoints_are_deleted_once_the_model_is_written_unless_kept(
    tmp_path, tiny_sd, toy_instance, one_torch_thread, caplog
):
    caplog.set_level(logging.INFO, logger="s2s.train")
    run(tmp_path / "kept", tiny_sd, toy_instance, checkpointing_steps=2, keep_checkpoints=True)
    kept = list_checkpoints(tmp_path / "kept" / "ckpt")
    assert [p.name for p in kept] == ["checkpoint-2", "checkpoint-4"]
    size_kb = sum(_bytes(p) for p in kept) / 1000

    caplog.clear()
    run(tmp_path / "deleted", tiny_sd, toy_instance, checkpointing_steps=2)
    assert (tmp_path / "deleted" / "model" / LORA).is_file()
    assert list_checkpoints(tmp_path / "deleted" / "ckpt") == []
    said = re.search(r"deleted 2 checkpoint\(s\) \((\d+\.\d) KB\)", caplog.text)
    assert said, caplog.text
    assert float(said.group(1)) == pytest.approx(size_kb, rel=0.02)


def test_checkpoint_of_other_settings_is_never_resumed(
    tmp_path, tiny_sd, toy_instance, one_torch_thread, caplog
):
    caplog.set_level(logging.INFO, logger="s2s.train")
    old, new = {"learning_rate": 1e-3}, {"learning_rate": 1e-2}
    run(tmp_path / "fresh", tiny_sd, toy_instance, checkpointing_steps=2, **new)
    stopped = run(tmp_path / "run", tiny_sd, toy_instance, stop_after=3, checkpointing_steps=2, **old)
    assert stopped == {"stopped_at": 3}
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "ckpt")] == ["checkpoint-2"]

    caplog.clear()
    summary = run(tmp_path / "run", tiny_sd, toy_instance, checkpointing_steps=2, **new)
    assert "checkpoint-2 was made with other settings (learning_rate: 0.001 -> 0.01)" in caplog.text
    assert "starting fresh" in caplog.text and "resuming" not in caplog.text
    assert summary["resumed_from_step"] == 0 and summary["learning_rate"] == 1e-2
    assert [r[0] for r in loss_rows(tmp_path / "run")] == ["1", "2", "3", "4"]
    # Trained from step 1 at the new rate: the very weights of a fresh run with it.
    assert same_weights(tmp_path / "run", tmp_path / "fresh")
    saved = json.loads((tmp_path / "run" / "model" / "train_summary.json").read_text())
    assert saved["learning_rate"] == 1e-2 and saved["resumed_from_step"] == 0


def test_same_settings_resume_and_loss_csv_has_every_step(
    tmp_path, tiny_sd, toy_instance, one_torch_thread, caplog
):
    caplog.set_level(logging.INFO, logger="s2s.train")
    opts = {"checkpointing_steps": 2, "learning_rate": 1e-2}
    run(tmp_path / "straight", tiny_sd, toy_instance, **opts)
    run(tmp_path / "run", tiny_sd, toy_instance, stop_after=3, **opts)
    caplog.clear()
    # Settings that only say when to save or show something keep the checkpoint valid.
    summary = run(
        tmp_path / "run",
        tiny_sd,
        toy_instance,
        keep_checkpoints=True,
        checkpointing_steps=3,
        learning_rate=1e-2,
    )
    assert "resuming from checkpoint" in caplog.text and summary["resumed_from_step"] == 2
    assert loss_rows(tmp_path / "run") == loss_rows(tmp_path / "straight")
    assert [r[0] for r in loss_rows(tmp_path / "run")] == ["1", "2", "3", "4"]
    assert same_weights(tmp_path / "run", tmp_path / "straight")


def test_settings_name_the_images_prompts_and_model_but_not_bookkeeping(tmp_path, toy_instance):
    import shutil

    from s2s.data import list_images

    config = check_config({"subjects": {"toy": {"synthetic": True, "class": "toy"}}})
    cfg, subj = train_config(config, "lora"), subject(config, "toy")
    paths = list_images(toy_instance)

    def settings(cfg=cfg, paths=paths, **kw):
        args = {"base_model": "m", "resolution": 64, "instance_prompt": PROMPT, "class_prompt": None} | kw
        return loop.training_settings(
            cfg,
            subj,
            args["base_model"],
            args["resolution"],
            args["instance_prompt"],
            args["class_prompt"],
            paths,
            [],
        )

    base = settings()
    bookkeeping = cfg.__class__(
        **{
            **cfg.__dict__,
            "checkpointing_steps": 7,
            "validation_steps": 3,
            "keep_checkpoints": True,
            "gradient_checkpointing": True,
        }
    )
    assert settings(cfg=bookkeeping) == base
    for changed in (
        settings(cfg=cfg.__class__(**{**cfg.__dict__, "seed": 1})),
        settings(cfg=cfg.__class__(**{**cfg.__dict__, "mixed_precision": "bf16"})),
        settings(base_model="other"),
        settings(resolution=128),
        settings(instance_prompt="a photo of zwx toy"),
    ):
        assert changed != base
    # One image's bytes changed: the settings change.
    copy = tmp_path / "instance"
    shutil.copytree(toy_instance, copy)
    edited = list_images(copy)
    edited[0].write_bytes(edited[0].read_bytes() + b"\0")
    assert settings(paths=list_images(copy))["instance_images"] != base["instance_images"]
