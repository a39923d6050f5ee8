"""LoRA's text-encoder adapter (training.lora.train_text_encoder): trained only when asked, saved beside the
UNet's so that plain diffusers ``load_lora_weights`` restores both, at the scale it trained at."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.train.loop import train
from s2s.train.methods import LoRA

PROMPT = "a photo of sks toy"


def _config(**lora):
    toy = {"synthetic": True, "class": "toy"}
    return check_config({"subjects": {"toy": toy}, "training": {"lora": lora}})


def _text_output(pipe, prompt=PROMPT) -> torch.Tensor:
    ids = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


@pytest.mark.parametrize("train_text_encoder", [True, False])
def test_text_encoder_adapter_trains_and_loads_with_load_lora_weights(
    tmp_path, tiny_sd, toy_instance, one_torch_thread, train_text_encoder
):
    # alpha != rank: the text encoder's adapter reloads at its trained scale only with its metadata.
    lora = {"rank": 2, "alpha": 4, "train_text_encoder": train_text_encoder}
    config = _config(
        max_train_steps=2,
        learning_rate=1e-2,
        with_prior_preservation=False,
        gradient_checkpointing=True,
        mixed_precision="bf16",
        keep_checkpoints=True,
        **lora,
    )
    train(
        train_config(config, "lora"),
        subject(config, "toy"),
        str(tiny_sd),
        toy_instance,
        tmp_path / "model",
        tmp_path / "ckpt",
        64,
        PROMPT,
        device="cpu",
    )
    weights = tmp_path / "model" / "pytorch_lora_weights.safetensors"
    state = load_file(weights)
    assert any(k.startswith("unet.") for k in state)
    assert any(k.startswith("text_encoder.") for k in state) == train_text_encoder
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert summary["trainable_params"] == sum(v.numel() for v in state.values())
    # Under bf16 autocast the adapters, the text encoder's too, train and are saved in fp32.
    assert summary["weight_dtypes"]["trained"] == ["float32"]
    assert all(v.dtype == torch.float32 for v in state.values())

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    base = _text_output(pipe)
    pipe.load_lora_weights(str(tmp_path / "model"), weight_name=weights.name)
    reloaded = _text_output(pipe)
    if not train_text_encoder:
        assert torch.equal(reloaded, base)  # the instance prompt encodes as in the base model
        return
    effect = (reloaded - base).abs().max()
    assert effect > 1e-3, float(effect)

    # The trained text encoder: the base one with the adapter weights the optimizer ended with (the last
    # checkpoint), independent of the save.
    trained = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    method = LoRA(train_config(config, "lora"), subject(config, "toy"))
    method.setup(trained.unet, trained.text_encoder, trained.tokenizer)
    checkpoint = load_file(tmp_path / "ckpt" / "checkpoint-2" / "trainable.safetensors")
    params = method.trainable()
    assert checkpoint.keys() == params.keys()
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(checkpoint[name])
    expected = _text_output(trained)
    assert (reloaded - expected).abs().max() < 1e-5 * effect, float((reloaded - expected).abs().max())
    # Its config is in the file's metadata, target_modules sorted: the same training writes the same bytes.
    with safe_open(str(weights), "pt") as handle:
        adapter = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert adapter["text_encoder.target_modules"] == ["k_proj", "out_proj", "q_proj", "v_proj"]
    assert adapter["text_encoder.lora_alpha"] == 4
