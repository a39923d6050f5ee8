"""Edit-benchmark metrics with PnPInversion's conventions (Ju et al., PIE-Bench; cure-lab/PnPInversion
``evaluation/matrics_calculator.py``), plus ground-truth PSNR for the world's edit cases.

Every metric reads 8-bit PIL images (as saved PNGs: values / 255) and masks as PIL "L" images, 255 = the
edit may change the pixel (``s2s.world.edit_cases`` writes them). See docs/edit_bench.md.

- ``background_psnr`` / ``background_ssim`` / ``background_mse``: source and edit are both multiplied by
  ``1 - mask`` and the metric is then taken over the WHOLE image (data range 1), as PnPInversion's
  ``*_unedit_part`` metrics are. The masked-out pixels are zero in both and count as perfect agreement: the
  PSNR is that over the kept pixels plus ``10 log10(N / N_kept)`` (docs/edit_bench.md).
- ``structure_distance``: MSE between the cosine self-similarity matrices of the keys of a ViT's last
  block, over all tokens (CLS included) with the heads concatenated, as PnPInversion's ``VitExtractor``
  computes them (DINO ViT-B/8 at 224 px there; the world's identity ViT at 64 px in the world).
- ``clip_similarity``: torchmetrics' CLIP score ``100 * max(cos, 0)`` of an image and the target prompt;
  with a mask, of the image multiplied by the mask (the edited region on black), rounded back to 8 bits.
- ``gt_psnr`` / ``gt_psnr_in_mask``: edit vs the renderer's ground-truth target, whole image; and both
  multiplied by the mask, then whole-image PSNR (the same convention, on the edited region).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from s2s.edit.metrics import MAX_PSNR

# -------------------------------------------------------------------------------------------------
# Reading images and masks


def pixels(image: Image.Image) -> torch.Tensor:
    """An 8-bit image as float64 [1, 3, H, W] in [0, 1] (value / 255)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def mask_weights(mask: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A mask image ("L", 255 = may change) as float64 [1, 1, H, W] in [0, 1] (value / 255)."""
    if mask.size != size:
        raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}")
    array = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    return torch.from_numpy(array)[None, None]


def _pair(a: Image.Image, b: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    if a.size != b.size:
        raise ValueError(f"images differ in size: {a.size} vs {b.size}")
    return pixels(a), pixels(b)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics' PSNR over every element, data range 1; capped at MAX_PSNR (identical images)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return min(MAX_PSNR, float(peak_signal_noise_ratio(a, b, data_range=1.0)))


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics' SSIM (Gaussian window 11, sigma 1.5), data range 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(a.float(), b.float(), data_range=1.0))


# -------------------------------------------------------------------------------------------------
# Background preservation (PnPInversion's *_unedit_part)


def background_metrics(source: Image.Image, edited: Image.Image, mask: Image.Image) -> dict:
    """PSNR, SSIM and MSE of source vs edit, both multiplied by ``1 - mask``, over the whole image.

    None for all three when the mask covers the whole image (PnPInversion writes "nan" then)."""
    a, b = _pair(source, edited)
    keep = 1.0 - mask_weights(mask, source.size)
    if not keep.any():
        return {"background_psnr": None, "background_ssim": None, "background_mse": None}
    a, b = a * keep, b * keep
    return {
        "background_psnr": _psnr(b, a),
        "background_ssim": _ssim(b, a),
        "background_mse": float(F.mse_loss(b, a)),
    }


# -------------------------------------------------------------------------------------------------
# Ground truth (world edit cases only)


def gt_psnr(edited: Image.Image, target: Image.Image) -> float:
    """PSNR of the edit against the ground-truth target, whole image, data range 1."""
    a, b = _pair(target, edited)
    return _psnr(b, a)


def gt_psnr_in_mask(edited: Image.Image, target: Image.Image, mask: Image.Image) -> float | None:
    """PSNR of edit vs ground truth, both multiplied by ``mask``, over the whole image (None: empty mask)."""
    a, b = _pair(target, edited)
    inside = mask_weights(mask, target.size)
    if not inside.any():
        return None
    return _psnr(b * inside, a * inside)


# -------------------------------------------------------------------------------------------------
# Structure distance (Tumanyan et al.'s DINO self-similarity, PnPInversion's structure_distance)


def _key_projection(vit: torch.nn.Module) -> torch.nn.Module:
    """The last block's attention key projection of a transformers ``ViTModel`` (both layouts)."""
    layers = getattr(vit, "layers", None)
    if layers is not None:  # transformers >= 5
        return layers[-1].attention.k_proj
    return vit.encoder.layer[-1].attention.attention.key  # transformers 4.x


@torch.no_grad()
def last_keys(
    image: Image.Image, vit: torch.nn.Module, processor, pnp_unscaled: bool = False
) -> torch.Tensor:
    """The keys of the ViT's last block for every token, CLS first, heads concatenated: [tokens, dim].

    ``pnp_unscaled``: feed 0..255 values into the processor's normalisation, as PnPInversion's evaluation
    does (it never divides by 255 before ``Normalize``); off, the processor rescales as the model was trained.
    """
    kwargs = {"do_rescale": False} if pnp_unscaled else {}
    inputs = processor(images=[image.convert("RGB")], return_tensors="pt", **kwargs)
    param = next(vit.parameters())
    values = inputs["pixel_values"].to(param.device, param.dtype)
    captured = []
    handle = _key_projection(vit).register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        vit(pixel_values=values)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the last key projection ran {len(captured)} times in one forward pass")
    return captured[0][0].double()


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pair of tokens: [tokens, tokens] (PnPInversion's ``attn_cosine_sim``)."""
    norm = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / (norm @ norm.T).clamp_min(eps)


def structure_distance(
    source: Image.Image, edited: Image.Image, vit: torch.nn.Module, processor, pnp_unscaled: bool = False
) -> float:
    """MSE between the self-similarity matrices of the last block's keys of the two images."""
    sims = [self_similarity(last_keys(im, vit, processor, pnp_unscaled)) for im in (source, edited)]
    return float(F.mse_loss(sims[1], sims[0]))


# -------------------------------------------------------------------------------------------------
# CLIP similarity (torchmetrics' CLIPScore, as PnPInversion)


def clip_similarity(
    image: Image.Image, prompt: str, clip_model: torch.nn.Module, processor, mask: Image.Image | None = None
) -> float:
    """``100 * max(cos(CLIP image, CLIP prompt), 0)``; with ``mask``, of the image times the mask (edited
    region kept, the rest black), back in 8 bits as PnPInversion's ``np.uint8(img * mask)``."""
    from s2s.metrics.fidelity import ModelBundle
    from s2s.metrics.image_metrics import clip_score

    array = np.asarray(image.convert("RGB"), dtype=np.float64)
    if mask is not None:
        array = array * mask_weights(mask, image.size)[0, 0, :, :, None].numpy()
    uint8 = torch.from_numpy(array.astype(np.uint8)).permute(2, 0, 1)
    return float(clip_score([uint8], [prompt], ModelBundle(clip_model, processor, "clip"))[0])


def bench_metrics(
    source: Image.Image,
    edited: Image.Image,
    mask: Image.Image,
    target_prompt: str,
    *,
    target: Image.Image | None = None,
    vit: tuple[torch.nn.Module, object] | None = None,
    clip: tuple[torch.nn.Module, object] | None = None,
) -> dict:
    """Every metric of one edit; those whose model or ground truth is missing are None (same keys always).

    ``vit`` and ``clip`` are (model, processor) pairs."""
    metrics = background_metrics(source, edited, mask)
    metrics["structure_distance"] = None if vit is None else structure_distance(source, edited, *vit)
    metrics["clip_whole"] = None if clip is None else clip_similarity(edited, target_prompt, *clip)
    empty = not mask_weights(mask, source.size).any()
    metrics["clip_edited"] = (
        None if clip is None or empty else clip_similarity(edited, target_prompt, *clip, mask=mask)
    )
    metrics["gt_psnr"] = None if target is None else gt_psnr(edited, target)
    metrics["gt_psnr_in_mask"] = None if target is None else gt_psnr_in_mask(edited, target, mask)
    return metrics
