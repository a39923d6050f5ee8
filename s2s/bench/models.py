"""Models for the benchmarks: the tiny demo model, or a randomly initialised Stable-Diffusion-v1.4-shaped
one (the real UNet, VAE and text-encoder configurations, no download), and UNet FLOP counts.

The real CLIP tokenizer is not available offline. The SD-v1.4-shaped model uses the tiny tokenizer padded
with unused entries to CLIP's 49,408 tokens (start/end of text at 49406/49407, as in CLIP), so the text
encoder's token embedding has its real size, which is what Textual Inversion's memory depends on. Prompts
are padded to 77 tokens as with the real tokenizer.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from s2s.io import atomic_dir

log = logging.getLogger(__name__)

# CompVis/stable-diffusion-v1-4, unet/config.json (diffusers defaults for the rest)
SD14_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
# vae/config.json
SD14_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "norm_num_groups": 32,
}
# text_encoder/config.json (openai/clip-vit-large-patch14's text tower)
SD14_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
# scheduler/scheduler_config.json, as DDIM (inversion and P2P need DDIM)
SD14_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def write_padded_tokenizer(folder: Path, vocab_size: int = SD14_TEXT["vocab_size"]) -> None:
    """The tiny CLIP tokenizer with unused entries appended up to ``vocab_size`` tokens."""
    from s2s.tiny import write_tiny_clip_tokenizer

    write_tiny_clip_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [t for t in sorted(vocab, key=vocab.get) if t not in specials]
    tokens += [f"<|unused_{i}|>" for i in range(vocab_size - len(specials) - len(tokens))]
    padded = {token: i for i, token in enumerate(tokens + specials)}
    (folder / "vocab.json").write_text(json.dumps(padded, ensure_ascii=False))


def build_sd14_pipeline(seed: int = 0, device: str | torch.device = "cpu"):
    """A StableDiffusionPipeline with SD v1.4's architecture and random weights, built on ``device``."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="s2s-tok-") as tmp:
        write_padded_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD14_UNET)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**SD14_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SD14_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_model_folder(
    architecture: str, folder: Path, resolution: int, seed: int = 0, device: str = "cpu"
) -> Path:
    """Save a diffusers pipeline folder of ``architecture`` (``tiny`` or ``sd14``) that ``train`` loads."""
    if architecture == "tiny":
        from s2s.tiny import build_tiny_sd

        return build_tiny_sd(folder, seed=seed, resolution=resolution)
    build_device = device if str(device).startswith("cuda") else "cpu"
    pipe = build_sd14_pipeline(seed, build_device)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    del pipe
    log.info("built a random SD-v1.4-shaped pipeline in %s", folder)
    return Path(folder)


def load_pipeline(architecture: str, work: Path, resolution: int, device, dtype, seed: int = 0):
    """A ready pipeline (DDIM scheduler, progress bars off) for the edit benchmarks."""
    from s2s.models import load_base_pipeline

    if architecture == "tiny":
        folder = build_model_folder("tiny", work / "tiny_sd", resolution, seed)
        return load_base_pipeline(str(folder), device, dtype)
    pipe = build_sd14_pipeline(seed, device if device.type == "cuda" else "cpu").to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_flops(
    unet_config: dict,
    batch: int,
    resolution: int,
    mode: str,
    lora: dict | None = None,
    text_grad: bool = False,
) -> int:
    """FLOPs of one UNet call on ``batch`` latents (counted on the meta device: nothing is computed).

    ``mode``: ``forward`` (sampling); ``full`` (forward + backward, every UNet weight trains: DreamBooth);
    ``lora`` (forward + backward, only LoRA adapters train; ``lora`` is peft's LoraConfig keywords, DoRA's
    ``use_dora`` included); ``text`` (forward + backward into the prompt embedding only: Textual
    Inversion); ``crossattn_kv`` (forward + backward, the cross-attention layers' key and value
    projections train: Custom Diffusion) and ``crossattn`` (their query and output projections too).
    ``text_grad``: the backward pass also reaches the prompt embedding (a method that trains token
    embeddings or the text encoder beside UNet weights: pivotal tuning, Custom Diffusion's modifier token).
    Each method says which applies (``unet_flop_mode`` of its class). Text encoder and VAE are not counted.
    """
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        unet.requires_grad_(mode == "full")
        if mode == "lora":
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(init_lora_weights="gaussian", **(lora or {"r": 4})))
        for layer in [name for name, _ in unet.named_modules() if name.endswith("attn2")]:
            for projection in CROSS_ATTENTION_MODES.get(mode, ()):
                unet.get_submodule(f"{layer}.{projection}").requires_grad_(True)
        size = resolution // 8
        latents = torch.randn(batch, unet.config.in_channels, size, size)
        text = torch.randn(
            batch, 77, unet.config.cross_attention_dim, requires_grad=mode == "text" or text_grad
        )
        timesteps = torch.zeros(batch, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            if mode == "forward":
                with torch.no_grad():
                    unet(latents, timesteps, text)
            else:
                unet(latents, timesteps, text).sample.float().pow(2).mean().backward()
    return int(counter.get_total_flops())


#: the cross-attention projections that train in each Custom Diffusion mode (its freeze_model)
CROSS_ATTENTION_MODES = {"crossattn_kv": ("to_k", "to_v"), "crossattn": ("to_q", "to_k", "to_v", "to_out.0")}


def unet_config_of(folder: Path) -> dict:
    """The UNet config of a saved pipeline folder."""
    return json.loads((Path(folder) / "unet" / "config.json").read_text())


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
