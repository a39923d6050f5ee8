"""Edit metrics that need no network-only weights.

- reconstruction PSNR and SSIM (torchmetrics): how well the inverted photo is regenerated;
- ``background_metrics``: MSE and PSNR between source and edit over the pixels outside a mask only (the
  world behaviour checks use it; an edit's background metrics in edit.json are the world benchmark's,
  s2s.edit.photo_metrics);
- CLIP-T: cosine similarity of the edited image and the target prompt;
- CLIP directional similarity: cosine of (edited - source) image embedding and (target - source) text
  embedding (Gal et al., StyleGAN-NADA), i.e. whether the image changed the way the prompt did.

CLIP metrics use any CLIP model folder or hub id (the tiny one in tests) and are skipped without one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from s2s.io import S2SError

log = logging.getLogger(__name__)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a float tensor [1, 3, H, W] in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def reconstruction_metrics(source: Image.Image, reconstruction: Image.Image) -> dict:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a, b = image_tensor(source), image_tensor(reconstruction)
    return {
        "reconstruction_psnr": min(MAX_PSNR, float(peak_signal_noise_ratio(b, a, data_range=1.0))),
        "reconstruction_ssim": float(structural_similarity_index_measure(b, a, data_range=1.0)),
    }


# PSNR of identical images is infinite, which JSON cannot hold; 100 dB (MSE 1e-10) stands for "identical".
MAX_PSNR = 100.0


def psnr_from_mse(mse: float) -> float:
    return min(MAX_PSNR, float(10.0 * np.log10(1.0 / max(mse, 1e-10))))


def background_metrics(source: Image.Image, edited: Image.Image, mask: torch.Tensor) -> dict:
    """Source vs edit outside ``mask`` (1 = editable region, any size; scaled to the image)."""
    a, b = image_tensor(source), image_tensor(edited)
    keep = F.interpolate(mask.float()[None, None], size=a.shape[-2:], mode="nearest")[0, 0] == 0
    fraction = float(keep.float().mean())
    if not keep.any():
        return {"background_fraction": 0.0, "background_mse": None, "background_psnr": None}
    mse = float(((a - b) ** 2).mean(1)[0][keep].mean())
    return {"background_fraction": fraction, "background_mse": mse, "background_psnr": psnr_from_mse(mse)}


class ClipScorer:
    """Normalised CLIP image and text embeddings from a CLIP model folder or hub id."""

    def __init__(self, name_or_path: str, device: torch.device | str = "cpu"):
        from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(name_or_path, use_safetensors=True).to(device).eval()
            # The PIL image processor: the default one needs torchvision, which this project does not use.
            self.image_processor = CLIPImageProcessorPil.from_pretrained(name_or_path)
            self.tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise S2SError(
                f"edit defaults key clip_model: could not load CLIP model {name_or_path!r} ({exc}); give a "
                "local "
                "CLIP folder or a cached hub id, or leave clip_model empty to skip CLIP metrics"
            ) from exc
        self.device = device

    @staticmethod
    def _embeds(output) -> torch.Tensor:
        # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x
        # returned the tensor itself.
        embeds = output if isinstance(output, torch.Tensor) else output.pooler_output
        return F.normalize(embeds.float(), dim=-1)

    @torch.no_grad()
    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return self._embeds(self.model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self._embeds(self.model.get_text_features(**tokens))

    def scores(
        self, source: Image.Image, edited: Image.Image, source_prompt: str, target_prompt: str
    ) -> dict:
        images = self.image_embeds([source, edited])
        texts = self.text_embeds([source_prompt, target_prompt])
        image_dir, text_dir = images[1] - images[0], texts[1] - texts[0]
        directional = (
            F.cosine_similarity(image_dir, text_dir, dim=0) if image_dir.norm() * text_dir.norm() else None
        )
        return {
            "clip_t": float(images[1] @ texts[1]),
            "clip_directional": None if directional is None else float(directional),
        }


def edit_metrics(
    source: Image.Image,
    reconstruction: Image.Image,
    edited: Image.Image,
    source_prompt: str,
    target_prompt: str,
    *,
    is_photo: bool,
    clip: ClipScorer | None = None,
) -> dict:
    """Reconstruction and CLIP metrics of one edit; those that do not apply are None (same keys for every
    edit). The background metrics are s2s.edit.photo_metrics'."""
    metrics: dict = {"reconstruction_psnr": None, "reconstruction_ssim": None}
    if is_photo:
        metrics.update(reconstruction_metrics(source, reconstruction))
    metrics.update({"clip_t": None, "clip_directional": None})
    if clip is not None:
        metrics.update(clip.scores(source, edited, source_prompt, target_prompt))
    return metrics
