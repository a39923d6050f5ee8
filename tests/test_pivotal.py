"""Pivotal tuning (method pivotal): the token's new embedding rows and a UNet LoRA train together; plain
diffusers ``load_lora_weights`` + ``load_textual_inversion`` restore a model that predicts what the trained
one predicts."""

from __future__ import annotations

import json

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.models import load_method_pipeline
from s2s.train.pivotal import Pivotal
from tests.adapter_checks import PROMPT, train_toy, unet_prediction


def test_pivotal_trains_token_and_lora_and_reloads_with_plain_diffusers(
    tmp_path, tiny_sd, toy_instance, one_torch_thread
):
    toy = {"synthetic": True, "class": "toy"}
    pivotal = {"max_train_steps": 3, "learning_rate": 1e-2, "text_encoder_lr": 5e-2, "rank": 2}
    config = check_config(
        {
            "subjects": {"toy": toy},
            "methods": ["pivotal"],
            "training": {"pivotal": pivotal, "with_prior_preservation": False, "keep_checkpoints": True},
        }
    )
    tcfg = train_config(config, "pivotal")
    model = tmp_path / "pivotal"
    train_toy(tcfg, config, tiny_sd, toy_instance, model, tmp_path)

    lora = load_file(model / "pytorch_lora_weights.safetensors")
    embeds = load_file(model / "learned_embeds.safetensors")
    assert lora and all(k.startswith("unet.") for k in lora)
    assert list(embeds) == ["sks"] and embeds["sks"].shape[0] == 2  # num_vectors 2, the default
    summary = json.loads((model / "train_summary.json").read_text())
    assert summary["method"] == "pivotal"

    # The trained model: the base one with the optimizer's last weights (the last checkpoint).
    trained = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    method = Pivotal(tcfg, subject(config, "toy"))
    method.setup(trained.unet, trained.text_encoder, trained.tokenizer)
    initial = method.embeddings.weight.detach()[method.token_ids].clone()
    checkpoint = load_file(tmp_path / "ckpt" / "checkpoint-3" / "trainable.safetensors")
    params = method.trainable()
    assert checkpoint.keys() == params.keys()
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(checkpoint[name])
    # Both parts learned: the token's vectors moved from their initialisation, and the rows of every
    # other token are the base model's.
    learned = method.embeddings.weight.detach()[method.token_ids]
    assert (learned - initial).abs().max() > 1e-3
    assert torch.equal(learned, embeds["sks"])
    base = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    rows = base.text_encoder.get_input_embeddings().weight.shape[0]
    assert torch.equal(
        method.embeddings.weight.detach()[:rows], base.text_encoder.get_input_embeddings().weight
    )
    # The training prompt is diffusers' own expansion of the multi-vector token.
    assert method.expand_prompt(PROMPT) == "a photo of sks sks_1 toy"
    assert trained.maybe_convert_prompt(PROMPT, trained.tokenizer) == method.expand_prompt(PROMPT)
    expected = unet_prediction(trained, PROMPT)

    # Plain diffusers: base pipeline + load_lora_weights + load_textual_inversion.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.load_lora_weights(str(model), weight_name="pytorch_lora_weights.safetensors")
    pipe.load_textual_inversion(str(model / "learned_embeds.safetensors"))
    reloaded = unet_prediction(pipe, PROMPT)
    # The LoRA learned too: the embeddings alone predict otherwise.
    base.load_textual_inversion(str(model / "learned_embeds.safetensors"))
    effect = (expected - unet_prediction(base, PROMPT)).abs().max()
    assert effect > 1e-3, float(effect)
    assert (reloaded - expected).abs().max() < 1e-4 * effect, float((reloaded - expected).abs().max())
    # The workflow's loader is those plain calls.
    ours = load_method_pipeline(str(tiny_sd), "pivotal", model, torch.device("cpu"), torch.float32)
    assert torch.equal(unet_prediction(ours, PROMPT), reloaded)


def test_the_token_embeddings_train_for_their_fraction_of_the_steps_then_the_lora_alone(
    tmp_path, tiny_sd, toy_instance, one_torch_thread
):
    """train_text_encoder_ti_frac 0.5 of 4 steps: the token's rows move in steps 1-2 and stay exactly as
    they are from then on (the pivot), while the LoRA goes on learning."""
    pivotal = {
        "max_train_steps": 4, "learning_rate": 1e-2, "text_encoder_lr": 5e-2, "rank": 2,
        "train_text_encoder_ti_frac": 0.5,
    }  # fmt: skip
    config = check_config(
        {
            "subjects": {"toy": {"synthetic": True, "class": "toy"}},
            "methods": ["pivotal"],
            "training": {
                "pivotal": pivotal, "with_prior_preservation": False, "keep_checkpoints": True,
                "checkpointing_steps": 1, "checkpoints_total_limit": 4,
            },
        }
    )  # fmt: skip
    tcfg = train_config(config, "pivotal")
    assert tcfg.train_text_encoder_ti_frac == 0.5
    train_toy(tcfg, config, tiny_sd, toy_instance, tmp_path / "pivotal", tmp_path)
    steps = {
        s: load_file(tmp_path / "ckpt" / f"checkpoint-{s}" / "trainable.safetensors") for s in range(1, 5)
    }
    token = {s: c["token_embedding"][-2:] for s, c in steps.items()}  # the two new rows (num_vectors 2)
    lora = {
        s: torch.cat([v.flatten() for k, v in sorted(c.items()) if k != "token_embedding"])
        for s, c in steps.items()
    }
    assert (token[2] - token[1]).abs().max() > 1e-4  # still training at step 2
    assert torch.equal(token[2], token[3]) and torch.equal(token[3], token[4])  # frozen from step 3
    assert (lora[4] - lora[3]).abs().max() > 1e-5 and (lora[3] - lora[2]).abs().max() > 1e-5
    # The default is the advanced script's 0.5; the other methods' settings do not carry the key.
    assert (
        train_config(
            check_config({"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "methods": ["pivotal"]}),
            "pivotal",
        ).train_text_encoder_ti_frac
        == 0.5
    )
