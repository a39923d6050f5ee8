"""DoRA (training.lora.use_dora): magnitude vectors train beside the LoRA matrices, are saved with them, and
plain diffusers ``load_lora_weights`` restores a UNet that predicts what the trained one predicts."""

from __future__ import annotations

import json

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.train.methods import LoRA
from tests.adapter_checks import train_toy, unet_prediction


def test_dora_trains_magnitudes_and_reloads_with_load_lora_weights(
    tmp_path, tiny_sd, toy_instance, one_torch_thread
):
    toy = {"synthetic": True, "class": "toy"}
    config = check_config(
        {
            "subjects": {"toy": toy},
            "methods": ["lora_dora"],
            "variants": {"lora_dora": {"method": "lora", "use_dora": True}},
            "training": {
                "lora": {"rank": 2, "alpha": 4, "max_train_steps": 3, "learning_rate": 1e-2},
                "with_prior_preservation": False,
                "keep_checkpoints": True,
            },
        }
    )
    tcfg = train_config(config, "lora_dora")
    assert (tcfg.method, tcfg.run_name, tcfg.use_dora, tcfg.rank) == ("lora", "lora_dora", True, 2)
    model = tmp_path / "lora_dora"
    train_toy(tcfg, config, tiny_sd, toy_instance, model, tmp_path)
    summary = json.loads((model / "train_summary.json").read_text())
    assert (summary["method"], summary["name"]) == ("lora", "lora_dora")

    state = load_file(model / "pytorch_lora_weights.safetensors")
    magnitudes = {k: v for k, v in state.items() if "lora_magnitude_vector" in k}
    assert magnitudes and all(k.startswith("unet.") for k in magnitudes)
    assert summary["trainable_params"] == sum(v.numel() for v in state.values())

    # The trained UNet: the base one with the optimizer's last weights (the last checkpoint).
    trained = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    method = LoRA(tcfg, subject(config, "toy"))
    method.setup(trained.unet, trained.text_encoder, trained.tokenizer)
    checkpoint = load_file(tmp_path / "ckpt" / "checkpoint-3" / "trainable.safetensors")
    params = method.trainable()
    assert checkpoint.keys() == params.keys()
    untrained = {n: p.detach().clone() for n, p in params.items() if "lora_magnitude_vector" in n}
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(checkpoint[name])
    # The magnitudes learned (they start at the base weights' column norms).
    assert max((params[n] - v).abs().max() for n, v in untrained.items()) > 1e-4
    expected = unet_prediction(trained)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    base = unet_prediction(pipe)
    pipe.load_lora_weights(str(model), weight_name="pytorch_lora_weights.safetensors")
    reloaded = unet_prediction(pipe)
    effect = (expected - base).abs().max()
    assert effect > 1e-3, float(effect)
    assert (reloaded - expected).abs().max() < 1e-4 * effect, float((reloaded - expected).abs().max())
