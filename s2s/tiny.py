"""Tiny, randomly initialised models with the architecture of Stable Diffusion 1.x and its metric models.

Everything here is built offline and deterministically from a seed, so the demo and the tests run
without network access or downloaded weights. The models are saved in the same layouts as the real
ones (diffusers pipeline folder, transformers model folders, safetensors files), so the code that
loads them is exactly the code that loads ``CompVis/stable-diffusion-v1-4`` and friends.

Numbers produced with these models say nothing about image quality.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from s2s.clip_tokenizer import bytes_to_unicode
from s2s.io import atomic_dir

log = logging.getLogger(__name__)

# Words the tiny tokenizer knows as single tokens (everything else falls back to characters).
# They cover the study's prompts, the demo prompts and the edit manifests, so that token counts
# behave like CLIP's (one token per common word), which Prompt-to-Prompt's word alignment relies on.
TINY_VOCAB_WORDS = sorted(
    set(
        """
        a an the of on in at with and near to its it is photo picture painting drawing rendering dog cat
        horse zebra bear toy robot duck ball cube car bird fox cow sheep lion tiger jungle snow beach
        top wooden floor mountain background city blue house wearing red hat yellow shirt sitting window
        green grass sunflowers around tuxedo walking carpet sidewalk crowded taj mahal getting bath
        surfing wave floating space jumping air sleeping bed standing field running dry black white
        grassy through bench orange purple pink small big large cute happy sad forest lake river sky sun
        moon night day table chair sofa kitchen street road park garden desert ocean sea water rock
        stone tree trees flower flowers under over inside outside front behind next by from
        """.split()  # noqa: SIM905 - a word list reads better as text
    )
)

TINY_TEXT_DIM = 32
TINY_LATENT_CHANNELS = 4


def _trained_merges(words: list[str]) -> list[str]:
    """BPE merges learned from the word list, so that every listed word becomes one token.

    A plain BPE trainer: merge the most frequent adjacent pair, ties broken by the pair itself so the
    result is the same in every process (tokenizers' trainer breaks ties differently per run).
    Hand-written per-word merge chains conflict (the pair "a t" of "at" would split "cat").
    """
    corpus = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(set(words))]
    merges: list[str] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(f"{best[0]} {best[1]}")
        for i, symbols in enumerate(corpus):
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            corpus[i] = merged


def write_tiny_clip_tokenizer(folder: Path, words: list[str] = TINY_VOCAB_WORDS) -> None:
    """Write a CLIP BPE tokenizer (vocab.json + merges.txt) that knows ``words`` as whole tokens.

    It is loaded with ``CLIPTokenizer.from_pretrained`` like the real one; constructing
    ``CLIPTokenizer(vocab_file=...)`` directly silently builds a 2-token vocabulary in transformers 5.
    """
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab_tokens: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges = _trained_merges(words)
    for merge in merges:
        vocab_tokens.append(merge.replace(" ", ""))
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {}
    for token in vocab_tokens:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )


def _tiny_text_config(vocab_size: int, seed_projection: bool = False):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        projection_dim=TINY_TEXT_DIM,
        # CLIPTextModel pools at the end-of-text token; the tokenizer's ids decide which one it is.
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def build_tiny_sd(folder: Path | str, seed: int = 0, resolution: int = 64) -> Path:
    """Build and save a tiny Stable-Diffusion-1.x-shaped pipeline in diffusers layout."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_tiny_clip_tokenizer(tmp / "_tok")
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "_tok")
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            # The tiny VAE downsamples by 2 (two blocks), so this makes `resolution` the pipeline's
            # default image size, as sample_size 64 x VAE factor 8 = 512 does for SD v1.4.
            sample_size=resolution // 2,
            in_channels=TINY_LATENT_CHANNELS,
            out_channels=TINY_LATENT_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            block_out_channels=(32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=TINY_LATENT_CHANNELS,
            sample_size=resolution,
            norm_num_groups=32,
        )
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_tiny_text_config(len(tokenizer)))
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
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
        shutil.rmtree(tmp / "_tok")
        pipe.save_pretrained(tmp, safe_serialization=True)
    log.info("built tiny Stable Diffusion pipeline in %s", folder)
    return folder


def build_tiny_clip(folder: Path | str, seed: int = 0, image_size: int = 32) -> Path:
    """Build and save a tiny CLIPModel + CLIPProcessor (for CLIP score, CLIP-I, CLIP-T)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_tiny_clip_tokenizer(tmp / "_tok")
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "_tok")
        shutil.rmtree(tmp / "_tok")
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=image_size,
            patch_size=8,
            projection_dim=TINY_TEXT_DIM,
        )
        config = CLIPConfig(
            text_config=_tiny_text_config(len(tokenizer)).to_dict(),
            vision_config=vision.to_dict(),
            projection_dim=TINY_TEXT_DIM,
        )
        torch.manual_seed(seed)
        model = CLIPModel(config)
        # A random CLIP puts images and texts in unrelated directions, so cosines hover around zero
        # or below and torchmetrics' CLIP score (100 x max(cos, 0)) reads 0 for everything. A shared
        # offset in both towers' final layer norms, mapped by one shared projection, gives every pair
        # a common component: scores become positive and still vary with the inputs.
        with torch.no_grad():
            model.visual_projection.weight.copy_(model.text_projection.weight)
            model.vision_model.post_layernorm.bias.fill_(1.0)
            model.text_model.final_layer_norm.bias.fill_(1.0)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    log.info("built tiny CLIP model in %s", folder)
    return folder


def build_tiny_dino(folder: Path | str, seed: int = 0, image_size: int = 32) -> Path:
    """Build and save a tiny ViT (the architecture of DINO ViT-S/16) with its image processor."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        config = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=image_size,
            patch_size=8,
        )
        torch.manual_seed(seed)
        ViTModel(config, add_pooling_layer=False).save_pretrained(tmp, safe_serialization=True)
        ViTImageProcessorPil(
            size={"height": image_size, "width": image_size},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(tmp)
    log.info("built tiny DINO-shaped ViT in %s", folder)
    return folder
