"""Stand-ins for the study's models: random weights with their exact architectures, for the rehearsal.

No model weights can be downloaded on the machines where the project is built and tested, yet the study's
run fails in ways the tiny demo models cannot show (memory, precision, 77-token prompts, 1000-class
heads). These builders write models with every architecture value of the real ones, in the layouts the
real ones are published in, so the workflow loads them through exactly the code that loads
``CompVis/stable-diffusion-v1-4``, ``openai/clip-vit-large-patch14`` and ``facebook/dino-vits16``:

- Stable Diffusion v1.4: UNet (859.5 M parameters), VAE (83.7 M), CLIP ViT-L/14 text encoder (123.1 M),
  the real CLIP tokenizer (``s2s.clip_tokenizer``), the PNDM scheduler config;
- CLIP ViT-L/14 (CLIP score, CLIP-I, CLIP-T), DINO ViT-S/16 (subject fidelity).

Random weights say nothing about image quality: the rehearsal checks that the run finishes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from s2s.clip_tokenizer import write_clip_tokenizer
from s2s.io import atomic_dir

log = logging.getLogger(__name__)

# The values of CompVis/stable-diffusion-v1-4's unet/config.json, vae/config.json,
# text_encoder/config.json and scheduler/scheduler_config.json.
SD14_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD14_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L14_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 768,
    # SD v1.4's text_encoder config carries the legacy ids (eos 2): CLIPTextModel then pools at the
    # highest token id, which is <|endoftext|> (49407), exactly as the released model does.
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
CLIP_L14_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 768,
}
SD14_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}
DINO_S16 = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "image_size": 224,
    "patch_size": 16,
    "qkv_bias": True,
    "layer_norm_eps": 1e-06,
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_sd14_architecture(folder: Path | str, seed: int = 0) -> Path:
    """Stable Diffusion v1.4's architecture with random weights, saved as a diffusers pipeline folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_clip_tokenizer(tmp / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "tokenizer")
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD14_UNET)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**SD14_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT))
        scheduler = PNDMScheduler(**SD14_SCHEDULER)
        # The released scheduler_config.json also says clip_sample: false, which PNDM ignores but the
        # DDIM scheduler made from this config (sampling, editing, inversion) must read.
        scheduler.register_to_config(clip_sample=False)
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp, safe_serialization=True)
    log.info(
        "built SD v1.4's architecture with random weights in %s: UNet %.1f M, VAE %.1f M, text encoder "
        "%.1f M parameters",
        folder,
        _n_params(unet) / 1e6,
        _n_params(vae) / 1e6,
        _n_params(text_encoder) / 1e6,
    )
    return folder


def build_clip_vit_l14(folder: Path | str, seed: int = 0) -> Path:
    """CLIP ViT-L/14's architecture with random weights, with its processor (PIL image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_clip_tokenizer(tmp / "_tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "_tokenizer")
        torch.manual_seed(seed)
        text = {**CLIP_L14_TEXT, "eos_token_id": 49407, "bos_token_id": 49406, "pad_token_id": 1}
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=CLIP_L14_VISION, projection_dim=768))
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
            resample=3,
        )
        model.save_pretrained(tmp, safe_serialization=True)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        shutil.rmtree(tmp / "_tokenizer")
    log.info(
        "built CLIP ViT-L/14's architecture with random weights in %s (%.1f M)",
        folder,
        _n_params(model) / 1e6,
    )
    return folder


def build_dino_vit_s16(folder: Path | str, seed: int = 0) -> Path:
    """DINO ViT-S/16's architecture with random weights (no pooler, as DINO has none), with its processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        torch.manual_seed(seed)
        model = ViTModel(ViTConfig(**DINO_S16), add_pooling_layer=False)
        model.save_pretrained(tmp, safe_serialization=True)
        ViTImageProcessor(
            size={"height": 224, "width": 224}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3
        ).save_pretrained(tmp)
    log.info(
        "built DINO ViT-S/16's architecture with random weights in %s (%.1f M)",
        folder,
        _n_params(model) / 1e6,
    )
    return folder
