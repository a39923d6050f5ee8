"""Subject fidelity as in the DreamBooth paper (Ruiz et al., CVPR 2023, section 4.1).

- DINO: cosine between the CLS embeddings (``last_hidden_state[:, 0]``) of a ViT-S/16 DINO model,
- CLIP-I: cosine between CLIP image embeddings,
- CLIP-T: cosine between the CLIP embeddings of the prompt and the image (raw cosine: not x100, no clamp).

DINO and CLIP-I average over all (generated, real) pairs; here they are returned per generated image
(mean over the real images), so their mean is the paper's number and the bootstrap can resample them.
Models load from hub ids or local folders, safetensors only.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from s2s.io import S2SError
from s2s.models import check_model_source, offline_hint

log = logging.getLogger(__name__)


class ModelBundle(NamedTuple):
    """A loaded model, its processor and the name it was loaded from."""

    model: torch.nn.Module
    processor: object
    name: str


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_clip(name_or_path: str, key: str = "evaluation.clip_model") -> ModelBundle:
    from transformers import CLIPModel, CLIPProcessor

    check_model_source(name_or_path, key)
    try:
        model = CLIPModel.from_pretrained(name_or_path, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise offline_hint(name_or_path, key, exc) from exc
    return ModelBundle(model.eval().requires_grad_(False).to(_device()), processor, name_or_path)


def load_dino(name_or_path: str, key: str = "evaluation.dino_model") -> ModelBundle:
    from transformers import AutoImageProcessor, ViTModel

    check_model_source(name_or_path, key)
    try:
        # The pooler is not part of DINO (and not in its checkpoint); the paper uses the CLS token.
        model = ViTModel.from_pretrained(name_or_path, add_pooling_layer=False, use_safetensors=True)
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise offline_hint(name_or_path, key, exc) from exc
    return ModelBundle(model.eval().requires_grad_(False).to(_device()), processor, name_or_path)


def as_clip(clip: str | ModelBundle) -> ModelBundle:
    return clip if isinstance(clip, ModelBundle) else load_clip(clip)


def as_features(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features (projected features in pooler_output)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=-1).cpu()


def _batches(items: list, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


@torch.no_grad()
def clip_image_embeddings(
    images: list[torch.Tensor], clip: ModelBundle, batch_size: int = 32
) -> torch.Tensor:
    """Unit-norm CLIP image embeddings [N, D] of uint8 [3, H, W] images."""
    device = next(clip.model.parameters()).device
    out = []
    for batch in _batches(list(images), batch_size):
        pixels = clip.processor(images=[img.cpu() for img in batch], return_tensors="pt")["pixel_values"]
        out.append(_normalize(as_features(clip.model.get_image_features(pixel_values=pixels.to(device)))))
    return torch.cat(out)


@torch.no_grad()
def clip_text_embeddings(prompts: list[str], clip: ModelBundle, batch_size: int = 64) -> torch.Tensor:
    """Unit-norm CLIP text embeddings [N, D] (prompts longer than CLIP's 77 tokens are truncated)."""
    device = next(clip.model.parameters()).device
    out = []
    for batch in _batches(list(prompts), batch_size):
        tok = clip.processor(text=batch, return_tensors="pt", padding=True, truncation=True)
        feats = clip.model.get_text_features(
            input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
        )
        out.append(_normalize(as_features(feats)))
    return torch.cat(out)


@torch.no_grad()
def dino_embeddings(images: list[torch.Tensor], dino: ModelBundle, batch_size: int = 32) -> torch.Tensor:
    """Unit-norm DINO CLS embeddings [N, D] of uint8 [3, H, W] images."""
    device = next(dino.model.parameters()).device
    out = []
    for batch in _batches(list(images), batch_size):
        pixels = dino.processor(images=[img.cpu() for img in batch], return_tensors="pt")["pixel_values"]
        out.append(_normalize(dino.model(pixel_values=pixels.to(device)).last_hidden_state[:, 0]))
    return torch.cat(out)


def mean_cosine_to_reference(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per generated image: mean cosine to every reference image (inputs are unit-norm)."""
    return (generated @ reference.T).mean(dim=1)


def mean_pairwise_cosine_within(embeddings: torch.Tensor) -> float | None:
    """Mean cosine over distinct pairs of one set (the paper's 'Real Images' row); None for < 2 images."""
    n = embeddings.shape[0]
    if n < 2:
        return None
    sims = embeddings @ embeddings.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def subject_fidelity(
    generated: list[torch.Tensor],
    reference: list[torch.Tensor],
    prompts: list[str],
    clip: str | ModelBundle,
    dino: str | ModelBundle | None,
) -> dict:
    """Per-generated-image DINO, CLIP-I and CLIP-T, plus the reference set's own DINO / CLIP-I.

    Returns ``{"clip_i", "clip_t", "dino"}`` as [N] tensors (``dino`` None without a DINO model) and
    ``{"clip_i_real", "dino_real"}``: the mean over pairs of distinct reference images.
    """
    if len(prompts) != len(generated):
        raise S2SError(f"subject fidelity: {len(generated)} images but {len(prompts)} prompts")
    if not reference:
        raise S2SError("subject fidelity needs at least one real (reference) image")
    clip = as_clip(clip)
    gen_clip = clip_image_embeddings(generated, clip)
    ref_clip = clip_image_embeddings(reference, clip)
    text = clip_text_embeddings(prompts, clip)
    result = {
        "clip_i": mean_cosine_to_reference(gen_clip, ref_clip),
        "clip_t": (gen_clip * text).sum(dim=1),
        "clip_i_real": mean_pairwise_cosine_within(ref_clip),
        "dino": None,
        "dino_real": None,
    }
    if dino is not None:
        dino = dino if isinstance(dino, ModelBundle) else load_dino(dino)
        gen_dino = dino_embeddings(generated, dino)
        ref_dino = dino_embeddings(reference, dino)
        result["dino"] = mean_cosine_to_reference(gen_dino, ref_dino)
        result["dino_real"] = mean_pairwise_cosine_within(ref_dino)
    return result
