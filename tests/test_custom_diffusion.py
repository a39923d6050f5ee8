"""Custom Diffusion (method custom_diffusion): copies of the cross-attention K/V projections and the
modifier token's embedding train; the saved file is diffusers' Custom Diffusion format, and diffusers'
``load_attn_procs`` + ``load_textual_inversion`` restore a model that predicts what the trained one
predicts."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.models import load_method_pipeline
from s2s.train.custom_diffusion import CustomDiffusion, load_custom_diffusion
from tests.adapter_checks import train_toy, unet_prediction


def test_custom_diffusion_trains_kv_and_token_and_reloads_with_plain_diffusers(
    tmp_path, tiny_sd, toy_instance, one_torch_thread
):
    toy = {"synthetic": True, "class": "toy"}
    config = check_config(
        {
            "subjects": {"toy": toy},
            "methods": ["custom_diffusion"],
            "training": {
                "custom_diffusion": {"max_train_steps": 3, "learning_rate": 1e-2},
                "with_prior_preservation": False,
                "keep_checkpoints": True,
            },
        }
    )
    tcfg = train_config(config, "custom_diffusion")
    model = tmp_path / "custom_diffusion"
    train_toy(tcfg, config, tiny_sd, toy_instance, model, tmp_path)

    base = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    cross = [n for n in base.unet.attn_processors if n.endswith("attn2.processor")]
    state = load_file(model / "pytorch_custom_diffusion_weights.safetensors")
    # The keys diffusers' save_attn_procs writes: K and V of every cross-attention layer, nothing else.
    assert set(state) == {f"{n}.to_{kv}_custom_diffusion.weight" for n in cross for kv in "kv"}
    embeds = load_file(model / "learned_embeds.safetensors")
    assert list(embeds) == ["sks"]

    # The trained model: the base one with the optimizer's last weights (the last checkpoint).
    trained = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    method = CustomDiffusion(tcfg, subject(config, "toy"))
    method.setup(trained.unet, trained.text_encoder, trained.tokenizer)
    initial = {n: p.detach().clone() for n, p in method.trainable().items()}
    checkpoint = load_file(tmp_path / "ckpt" / "checkpoint-3" / "trainable.safetensors")
    params = method.trainable()
    assert checkpoint.keys() == params.keys()
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(checkpoint[name])
    # Both parts learned; the base projections did not (the processors hold the trained copies).
    for name in (f"{cross[0]}.to_k_custom_diffusion.weight", "token_embedding"):
        assert (params[name] - initial[name]).abs().max() > 1e-4, name
    layer = cross[0].removesuffix(".processor")
    assert torch.equal(
        trained.unet.get_submodule(layer).to_k.weight, base.unet.get_submodule(layer).to_k.weight
    )
    expected = unet_prediction(trained)

    # Plain diffusers: the base pipeline, diffusers' Custom Diffusion loader, load_textual_inversion.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    load_custom_diffusion(pipe, model / "pytorch_custom_diffusion_weights.safetensors")
    assert {type(pipe.unet.attn_processors[n]).__name__ for n in cross} == {"CustomDiffusionAttnProcessor"}
    pipe.load_textual_inversion(str(model / "learned_embeds.safetensors"))
    reloaded = unet_prediction(pipe)
    # The K/V learned too: the embedding alone predicts otherwise.
    base.load_textual_inversion(str(model / "learned_embeds.safetensors"))
    effect = (expected - unet_prediction(base)).abs().max()
    assert effect > 1e-3, float(effect)
    assert (reloaded - expected).abs().max() < 1e-4 * effect, float((reloaded - expected).abs().max())
    # The workflow's loader is those calls.
    ours = load_method_pipeline(str(tiny_sd), "custom_diffusion", model, torch.device("cpu"), torch.float32)
    assert torch.equal(unet_prediction(ours), reloaded)
