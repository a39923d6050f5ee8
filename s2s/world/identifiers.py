"""Does an identifier reach the UNet? The word before the class noun swapped, measured where DreamBooth
needs it: in the text encoder's output and in the base UNet's prediction.

For each class and each replacement word, "a photo of a {class}" becomes "a photo of {word} {class}":
- ``text_cosine``: cosine similarity of the two prompts' text-encoder states (all 77 positions, flattened:
  what the UNet's cross-attention reads);
- ``unet_rms``: root-mean-square difference of the base UNet's noise predictions for the two prompts, on
  the same noisy latents (``latents`` random draws at each of ``timesteps``).
An identifier whose ``unet_rms`` is far below a colour word's is inert: a UNet-only method trained with
prior preservation cannot tell "sks dog" from "a dog". The colour words give the scale of a word that
matters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s2s.world.scene import CLASSES, COLOURS


@torch.no_grad()
def word_effects(
    models_dir: Path | str,
    words: list[str],
    classes: tuple[str, ...] = CLASSES,
    timesteps: tuple[int, ...] = (100, 300, 500, 700, 900),
    latents: int = 4,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{word: {"text_cosine", "unet_rms"}}``, each the mean over ``classes``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    sd = Path(models_dir) / "sd"
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(sd / "unet").eval()

    def encode(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return text_encoder(ids.input_ids)[0]

    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    noise = torch.randn((len(timesteps) * latents, unet.config.in_channels, size, size), generator=gen)
    t = torch.tensor(timesteps).repeat_interleave(latents)
    out: dict[str, dict[str, list[float]]] = {w: {"text_cosine": [], "unet_rms": []} for w in words}
    for cls in classes:
        states = encode([f"a photo of a {cls}"] + [f"a photo of {w} {cls}" for w in words])
        base = unet(noise, t, states[:1].expand(len(t), -1, -1)).sample
        for k, word in enumerate(words, start=1):
            cosine = torch.nn.functional.cosine_similarity(states[0].flatten(), states[k].flatten(), dim=0)
            pred = unet(noise, t, states[k : k + 1].expand(len(t), -1, -1)).sample
            out[word]["text_cosine"].append(float(cosine))
            out[word]["unet_rms"].append(float((pred - base).pow(2).mean().sqrt()))
    return {w: {k: float(np.mean(v)) for k, v in m.items()} for w, m in out.items()}


def identifier_report(models_dir: Path | str, identifiers: list[str]) -> dict:
    """Each identifier's effect beside the colour words' mean (and their range)."""
    colours = list(COLOURS)
    effects = word_effects(models_dir, [*identifiers, *colours])
    colour = {k: [effects[c][k] for c in colours] for k in ("text_cosine", "unet_rms")}
    return {
        "identifiers": {w: effects[w] for w in identifiers},
        "colour_words": {
            k: {"mean": float(np.mean(v)), "min": min(v), "max": max(v)} for k, v in colour.items()
        },
        "prompt": "a photo of a {class} -> a photo of {word} {class}",
    }
