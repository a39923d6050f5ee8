"""The world edit benchmark's metrics on the edits of a manifest (issue 23, point 4): the same functions
(``s2s.edit.bench_metrics``: PnPInversion's conventions), without a ground truth, read from the PNG files
the edit saved, with an edit mask saved beside them (``mask.png``, L, 255 = may change).

The mask (``mask_source``):

- ``renderer``: a world photo whose scene the renderer can redraw, edited in a way the world benchmark
  defines (``s2s.edit.world_photos``): the benchmark's own mask of that edit, exact.
- ``cross_attention``: anything else (real photos, generated sources, edits the renderer has no mask for).
  The edit's own cross-attention maps of its edited words (``edited_words``), averaged over steps, heads and
  the layers of the aggregation size, made into a mask by P2P's local blend (``LocalBlend``: max-pooled
  3x3, scaled to the latent, each prompt's map divided by its maximum, thresholded at the edit's
  ``threshold``, the union of both prompts), then scaled (nearest) to the image. For an edit with a local
  blend this is the blend's own last mask. It is the model's estimate of where it edited, so it is
  circular: an edit that spreads its attention gets a large mask, and a large mask flatters the
  background scores (docs/metrics.md).

Columns (``COLUMNS``): ``mask_source``, ``mask_fraction`` (share of the image the mask lets change), then
``PHOTO_METRICS``. ``structure_distance`` uses the run's DINO-like ViT (``evaluation.dino_model``, the
world's identity ViT, the tiny DINO), the CLIP scores its CLIP model; None without one.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASK_SOURCES = ("renderer", "cross_attention")
PHOTO_METRICS = (
    "background_psnr",
    "background_ssim",
    "background_mse",
    "structure_distance",
    "clip_whole",
    "clip_edited",
)
COLUMNS = ("mask_source", "mask_fraction", *PHOTO_METRICS)
MASK_FILE = "mask.png"


def edited_words(source: str, target: str, spec: dict) -> tuple[list[str], list[str]]:
    """The words whose cross-attention makes an edit's mask: ``(source words, target words)``.

    An edit with a local blend: its ``blend_words`` (the blend's own mask). Otherwise the words that differ
    between the prompts (a word diff), and for a ``subject`` edit also the word after each changed span in
    both prompts (the noun the identifier names, as the world benchmark's subject blend); a ``reweight``
    edit adds its equalizer's words (in the target, and in the source where they occur)."""
    from s2s.edit.controllers import _blend_words

    if spec.get("blend_words"):
        return _blend_words(spec["blend_words"], source, target)
    a, b = source.split(), target.split()
    src: list[str] = []
    tgt: list[str] = []
    matcher = SequenceMatcher(a=[w.lower() for w in a], b=[w.lower() for w in b], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        src += a[i1:i2]
        tgt += b[j1:j2]
        if spec.get("edit") == "subject":
            src += a[i2 : i2 + 1]
            tgt += b[j2 : j2 + 1]
    if spec.get("edit") == "reweight":
        words = list(spec.get("equalizer") or {})
        tgt += words
        src += [w for w in words if w.lower() in matcher.a]
    return list(dict.fromkeys(src)), list(dict.fromkeys(tgt))


def cross_attention_mask(pipe, controller, source: str, target: str, spec: dict) -> tuple[torch.Tensor, dict]:
    """The edit's cross-attention mask, bool at latent size [h, w], and what made it (words, threshold).

    ``controller`` ran the edit and stored both prompts' maps (``store_prompts == (0, 1)``). The mask is
    P2P's local blend's (``s2s.edit.controllers.LocalBlend``, called once on the finished run)."""
    from s2s.edit.controllers import DEFAULT_SPEC, LocalBlend
    from s2s.edit.p2p import convert_prompt
    from s2s.edit.seq_aligner import word_positions

    if tuple(controller.store_prompts) != (0, 1):
        raise ValueError("the controller must store both prompts' maps (store_prompts = (0, 1))")
    src_words, tgt_words = edited_words(source, target, spec)
    src, tgt = convert_prompt(pipe, source), convert_prompt(pipe, target)
    threshold = float(spec.get("threshold", DEFAULT_SPEC["threshold"]))
    src_pos = [p for w in src_words for p in word_positions(pipe.tokenizer, src, w)]
    tgt_pos = [p for w in tgt_words for p in word_positions(pipe.tokenizer, tgt, w)]
    info = {"source_words": src_words, "target_words": tgt_words, "threshold": threshold}
    if not src_pos and not tgt_pos:  # nothing edited: nothing may change
        return torch.zeros(controller.latent_hw, dtype=torch.bool), info
    blend = LocalBlend(src_pos, tgt_pos, threshold)
    blend(controller, 0, torch.zeros(2, 1, *controller.latent_hw))
    return blend.mask[0] > 0, info


def mask_image(mask, size: tuple[int, int]) -> Image.Image:
    """A boolean mask (any size) as an "L" image of ``size`` (width, height), scaled nearest: 255 = may
    change."""
    values = torch.as_tensor(np.asarray(mask)).float()[None, None]
    scaled = F.interpolate(values, size=(size[1], size[0]), mode="nearest")[0, 0] > 0
    return Image.fromarray(scaled.numpy().astype(np.uint8) * 255, "L")


def _open(path: Path, mode: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


def score_edit_folder(
    folder: Path | str,
    target_prompt: str,
    mask_source: str,
    *,
    vit: tuple | None = None,
    clip: tuple | None = None,
    source_name: str = "source.png",
    edited_name: str = "edited.png",
) -> dict:
    """``COLUMNS`` of one edit, computed from ``folder``'s PNG files as saved: the source, the edit and
    ``mask.png`` (``s2s.edit.bench_metrics.bench_metrics`` without a ground truth). ``vit`` and ``clip``:
    (model, processor) pairs."""
    from s2s.edit.bench_metrics import bench_metrics

    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source {mask_source!r}: one of {', '.join(MASK_SOURCES)}")
    folder = Path(folder)
    source, edited = _open(folder / source_name, "RGB"), _open(folder / edited_name, "RGB")
    mask = _open(folder / MASK_FILE, "L")
    metrics = bench_metrics(source, edited, mask, target_prompt, vit=vit, clip=clip)
    return {
        "mask_source": mask_source,
        "mask_fraction": float((np.asarray(mask) > 0).mean()),
        **{key: metrics[key] for key in PHOTO_METRICS},
    }
