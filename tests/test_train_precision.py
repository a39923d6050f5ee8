"""Mixed precision on CPU: bf16 autocast runs the half-precision code paths of a GPU run (frozen weights
in bf16, trained ones in fp32, validation images in any precision, DreamBooth saved in fp32); fp16 without
CUDA is one clear error; progress is logged as plain lines."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.io import S2SError
from s2s.train.loop import train

PROMPT = "a photo of sks toy"
SHARED = ("checkpointing_steps", "seed", "mixed_precision", "keep_checkpoints")


def run(tmp: Path, method: str, tiny_sd, instance, class_dir=None, stop_after=None, **overrides):
    shared = {k: v for k, v in overrides.items() if k in SHARED}
    per_method = {k: v for k, v in overrides.items() if k not in shared}
    per_method.setdefault("max_train_steps", 2)
    config = check_config(
        {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "training": {**shared, method: per_method}}
    )
    return train(
        train_config(config, method),
        subject(config, "toy"),
        str(tiny_sd),
        instance,
        tmp / "model",
        tmp / "ckpt",
        64,
        PROMPT,
        class_dir=class_dir,
        class_prompt="a photo of a toy",
        device="cpu",
        stop_after_steps=stop_after,
    )


@pytest.mark.parametrize("method", ["textual_inversion", "dreambooth", "lora"])
def test_bf16_on_cpu_trains_under_autocast_and_validates(
    tmp_path, tiny_sd, toy_instance, toy_class_images, one_torch_thread, caplog, method
):
    caplog.set_level(logging.INFO, logger="s2s.train.loop")
    summary = run(
        tmp_path,
        method,
        tiny_sd,
        toy_instance,
        class_dir=toy_class_images,
        mixed_precision="bf16",
        validation_prompt="a {} on the beach",
        validation_steps=2,
    )
    assert summary["mixed_precision"] == "bf16"
    assert "mixed precision bf16: autocast on (torch.bfloat16 on cpu)" in caplog.text
    dtypes = summary["weight_dtypes"]
    assert dtypes["trained"] == ["float32"] and dtypes["frozen_vae"] == ["bfloat16"]
    if method != "dreambooth":  # DreamBooth trains the whole UNet
        assert dtypes["frozen_unet"] == ["bfloat16"]
    # TI's text encoder is in the gradient's path (its embedding trains): it stays fp32.
    assert dtypes["frozen_text_encoder"] == (["float32"] if method == "textual_inversion" else ["bfloat16"])
    # The validation pipeline mixes bf16 and fp32 parts and still makes its image.
    assert (tmp_path / "ckpt" / "validation" / "step-000002.png").is_file()
    if method == "dreambooth":
        # Saved in fp32 as asked; the frozen text encoder and VAE are the base model's own weights.
        model = tmp_path / "model"
        for part in ("unet", "text_encoder", "vae"):
            saved = load_file(next((model / part).glob("*.safetensors")))
            assert {v.dtype for v in saved.values()} == {torch.float32}, part
        for part in ("text_encoder", "vae"):
            saved = load_file(next((model / part).glob("*.safetensors")))
            base = load_file(next((Path(tiny_sd) / part).glob("*.safetensors")))
            assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base), part


def test_bf16_autocast_changes_the_arithmetic_not_the_result(
    tmp_path, tiny_sd, toy_instance, one_torch_thread
):
    opts = {"learning_rate": 1e-2, "with_prior_preservation": False}
    run(tmp_path / "fp32", "lora", tiny_sd, toy_instance, **opts)
    run(tmp_path / "bf16", "lora", tiny_sd, toy_instance, mixed_precision="bf16", **opts)
    name = "pytorch_lora_weights.safetensors"
    a, b = load_file(tmp_path / "fp32" / "model" / name), load_file(tmp_path / "bf16" / "model" / name)
    assert {v.dtype for v in b.values()} == {torch.float32}
    flat_a = torch.cat([a[k].flatten() for k in sorted(a)])
    flat_b = torch.cat([b[k].flatten() for k in sorted(a)])
    assert not torch.equal(flat_a, flat_b), "bf16 was requested but the run computed in fp32"
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.9


def test_fp16_without_a_gpu_is_one_clear_error(tmp_path, tiny_sd, toy_instance):
    with pytest.raises(S2SError, match=r"training.mixed_precision: fp16 needs a CUDA GPU .* use bf16"):
        run(tmp_path, "lora", tiny_sd, toy_instance, mixed_precision="fp16", with_prior_preservation=False)
    assert not (tmp_path / "model").exists()


def test_progress_is_logged_as_lines_without_redraws(
    tmp_path, tiny_sd, toy_instance, one_torch_thread, caplog, capfd
):
    caplog.set_level(logging.INFO, logger="s2s.train.loop")
    run(tmp_path, "textual_inversion", tiny_sd, toy_instance, max_train_steps=20)
    lines = [
        r.getMessage() for r in caplog.records if re.match(r"textual_inversion: step \d+/20", r.getMessage())
    ]
    steps = [int(re.match(r"textual_inversion: step (\d+)/", line).group(1)) for line in lines]
    assert steps == list(range(2, 21, 2))  # every 10% of the run
    # s2s.progress's line: the step, its loss, lr and seconds per step, the elapsed time and the ETA.
    pattern = r"step \d+/20 \(\d+%\), loss \d+\.\d+, lr .*, s/step \d+\.\d+, elapsed \S+, ETA \S+$"
    assert all(re.search(pattern, line) for line in lines)
    # No redrawn training bar (tqdm's "textual_inversion:  50%|..." with carriage returns) on stderr.
    assert not re.search(r"textual_inversion:\s+\d+%\|", capfd.readouterr().err)
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert summary["steps"] == 20
