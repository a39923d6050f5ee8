"""Shared by the tests of the adapter methods (DoRA, pivotal, Custom Diffusion): a few training steps on the
tiny model, and the UNet's prediction that a reloaded pipeline must reproduce."""

from __future__ import annotations

from pathlib import Path

import torch

from s2s.config import subject
from s2s.train.loop import train

PROMPT = "a photo of sks toy"


def unet_prediction(pipe, prompt: str = PROMPT) -> torch.Tensor:
    """The UNet's prediction for one fixed noisy latent and timestep, conditioned on ``prompt`` (a
    multi-vector token expanded to its vectors, as the pipeline does)."""
    prompt = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, pipe.unet.config.in_channels, 8, 8), generator=gen)
    ids = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([500]), pipe.text_encoder(ids)[0]).sample


def train_toy(tcfg, config: dict, tiny_sd: Path, instance: Path, model: Path, tmp_path: Path) -> dict:
    """Train ``tcfg`` on the toy subject's photos at 64 px into ``model``."""
    return train(
        tcfg,
        subject(config, "toy"),
        str(tiny_sd),
        instance,
        model,
        tmp_path / "ckpt",
        64,
        PROMPT,
        device="cpu",
    )
