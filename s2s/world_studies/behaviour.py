"""Behaviour of Prompt-to-Prompt and inversion on the world's models (issue 15, point 4): measurements.

Pure functions of a loaded world (its SD pipeline and world classifier) and a few seeds, returning plain
dicts of numbers (JSON-ready), for the tests (``tests/test_world_edits.py``) and the report
(:func:`measure_all`). Every measurement uses DDIM sampling with guidance 7.5.

- :func:`measure_replace`: the word swap "a dog in the snow" -> "a cat in the snow", no local blend.
  Class: the classifier's class head (argmax) on source and edit; the rate is the share of seeds whose edit
  is a "cat" among those whose source is a "dog". Background: PSNR between source and edit outside the
  object mask of :func:`attention_mask` (``s2s.edit.metrics.background_metrics``).
- :func:`measure_reweight`: P2P's reweighting of "snow" in "a dog in the snow" at several scales; the
  amount of snow is :func:`snow_fraction` (near-white pixels outside the object mask) averaged over
  seeds; the classifier's probability of "in the snow" is reported beside it.
- :func:`measure_local_blend`: a word swap with local blend of "dog"/"cat": the largest difference between
  the edited and the source branch's latents outside the blend mask, after every step the blend acts on,
  and the pixel PSNR outside the mask scaled to the image.
- :func:`measure_inversion`: a rendered world photo (a seed the build never drew) inverted with DDIM,
  null-text and negative-prompt inversion and regenerated at guidance 7.5; PSNR to the photo, beside the
  VAE's own reconstruction PSNR (encode, decode), which bounds every inversion.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from s2s.edit.controllers import DEFAULT_SPEC, EditController, LocalBlend, build_controller
from s2s.edit.inversion import encode_image, invert
from s2s.edit.metrics import background_metrics, reconstruction_metrics
from s2s.edit.p2p import convert_prompt, decode_latents, generate_edit
from s2s.edit.seq_aligner import word_positions
from s2s.world.captions import caption
from s2s.world.classifier import HEADS, WorldClassifier, load_classifier
from s2s.world.render import render
from s2s.world.scene import random_scene

log = logging.getLogger(__name__)

STEPS = 20  # DDIM steps of every measurement: few, so that the tests run in CI on two cores
GUIDANCE = 7.5
SEEDS = tuple(range(8))
REPLACE = ("a dog in the snow", "a cat in the snow")
REPLACE_WORDS = ("dog", "cat")
SNOW_PROMPT, SNOW_WORD, SNOW_OBJECT = "a dog in the snow", "snow", "dog"
SNOW_SCALES = (0.0, 1.0, 2.0, 4.0)
# The inverted photo's scene is drawn from random.Random(INVERSION_SEED); the build draws its scenes from
# random.Random(seed), seed + 100 and seed + 101 with seed 0 (s2s.world.build), never from this one.
INVERSION_SEED = 1515
# Object masks from attention: P2P local blend's threshold, then grown by one latent pixel (4 image pixels)
# so that the decoder's spread of the object's edge counts as object, not background.
MASK_THRESHOLD = DEFAULT_SPEC["threshold"]
MASK_DILATION = 1
# A pixel is snow when its darkest channel is >= 200 and its channels differ by <= 40 (near-white, not
# tinted): the renderer's snow ground (245, 247, 252), drifts (220, 228, 245) and flakes pass; its grey-blue
# winter sky (185..215, 195..220, 210..230) does not, nor does any coloured object.
SNOW_MIN, SNOW_SPREAD = 200, 40


@dataclass
class World:
    pipe: object  # diffusers StableDiffusionPipeline with a DDIMScheduler
    classifier: WorldClassifier
    folder: Path


def load_world(folder: Path | str) -> World:
    """The world build in ``folder`` (``sd/``, ``classifier.safetensors``), on the CPU."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder / "sd", safety_checker=None)
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return World(pipe, load_classifier(folder / "classifier.safetensors"), folder)


def image_array(image: Image.Image) -> np.ndarray:
    """An image as float [H, W, 3] in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def image_batch(images: list[Image.Image]) -> torch.Tensor:
    """PIL images as uint8 [N, 3, H, W], the classifier's input."""
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images])).permute(0, 3, 1, 2)


@torch.no_grad()
def classify(classifier: WorldClassifier, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """Probabilities of each classifier head (class, colour, context) per image: {head: [N, labels]}."""
    return {k: v.softmax(-1) for k, v in classifier.head_logits(image_batch(images)).items()}


def _label(head: str, probs: torch.Tensor) -> list[str]:
    return [HEADS[head][i] for i in probs.argmax(-1).tolist()]


def edit_controller(pipe, source: str, target: str, spec: dict, steps: int = STEPS) -> EditController:
    """The controller of ``spec``, storing the cross-attention maps of both prompts (for masks)."""
    controller = build_controller(
        pipe.tokenizer, convert_prompt(pipe, source), convert_prompt(pipe, target), spec, steps
    )
    controller.store_prompts = (0, 1)
    return controller


def attention_mask(
    pipe,
    controller: EditController,
    source: str,
    target: str,
    words: tuple[str, str],
    threshold: float = MASK_THRESHOLD,
    dilation: int = MASK_DILATION,
) -> torch.Tensor:
    """The object's mask of an edit from its own cross-attention, bool at latent size [h, w].

    As P2P's local blend computes its mask (``s2s.edit.controllers.LocalBlend``, which this calls): the
    maps of ``words[0]`` in the source prompt and of ``words[1]`` in the target, averaged over the run's
    steps, heads and layers of the aggregation size, max-pooled 3x3, scaled (nearest) to the latent size,
    each divided by its maximum and thresholded at ``threshold``; the union of the two. Then grown by
    ``dilation`` latent pixels (a (2d+1)-square max-pool). ``controller`` must have stored both prompts'
    maps (:func:`edit_controller`).
    """
    src, tgt = convert_prompt(pipe, source), convert_prompt(pipe, target)
    blend = LocalBlend(
        word_positions(pipe.tokenizer, src, words[0]),
        word_positions(pipe.tokenizer, tgt, words[1]),
        threshold,
    )
    blend(controller, 0, torch.zeros(2, 1, *controller.latent_hw))
    mask = blend.mask[None]
    if dilation:
        mask = F.max_pool2d(mask, 2 * dilation + 1, stride=1, padding=dilation)
    return mask[0, 0] > 0


def snow_fraction(image: Image.Image, object_mask: torch.Tensor | np.ndarray | None = None) -> float:
    """The share of the pixels outside ``object_mask`` (any size, scaled nearest) that are snow.

    Snow: darkest channel >= ``SNOW_MIN`` and channel spread <= ``SNOW_SPREAD`` (near-white). The object is
    left out because a white animal is not snow; NaN when the mask leaves nothing. This counts white
    ground, not "snowiness": a white bath tub would count too, which is why it is used only on prompts
    whose one white thing is snow.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    snow = (rgb.min(-1) >= SNOW_MIN) & (rgb.max(-1) - rgb.min(-1) <= SNOW_SPREAD)
    keep = np.ones(snow.shape, dtype=bool)
    if object_mask is not None:
        mask = torch.as_tensor(np.asarray(object_mask)).float()[None, None]
        keep = F.interpolate(mask, size=snow.shape, mode="nearest")[0, 0].numpy() == 0
    return float(snow[keep].mean()) if keep.any() else float("nan")


def classifier_check(
    world: World, classes=REPLACE_WORDS, n: int = 16, seed: int = INVERSION_SEED + 1
) -> dict:
    """The classifier's class accuracy on ``n`` rendered scenes of each of ``classes`` in the snow (a seed
    the build never drew): what its verdicts on generated dogs and cats are worth."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, cls=c, context="in the snow") for c in classes for _ in range(n)]
    labels = _label("class", classify(world.classifier, [render(s) for s in scenes])["class"])
    right = [label == s.individual.cls for label, s in zip(labels, scenes, strict=True)]
    return {c: float(np.mean(right[k * n : (k + 1) * n])) for k, c in enumerate(classes)}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def measure_replace(
    world: World,
    seeds=SEEDS,
    steps: int = STEPS,
    prompts: tuple[str, str] = REPLACE,
    words: tuple[str, str] = REPLACE_WORDS,
    mask_threshold: float = MASK_THRESHOLD,
    mask_dilation: int = MASK_DILATION,
) -> dict:
    """P2P word swap without local blend over ``seeds``: class found in source and edit, background PSNR.

    ``swap_rate`` = #(source is ``words[0]`` and edit is ``words[1]``) / #(source is ``words[0]``), by the
    classifier's class head (argmax); None when no source shows ``words[0]``. ``background_psnr`` per seed
    is between source and edit outside :func:`attention_mask` at ``mask_threshold`` and ``mask_dilation``
    (scaled nearest to the image); ``background_fraction`` is the part of the image outside it.
    """
    pipe = world.pipe
    rows, sources, edits = [], [], []
    for seed in seeds:
        controller = edit_controller(pipe, *prompts, {"edit": "replace"}, steps)
        result = generate_edit(
            pipe, *prompts, controller, generator=_generator(seed), num_inference_steps=steps,
            guidance_scale=GUIDANCE,
        )  # fmt: skip
        mask = attention_mask(pipe, controller, *prompts, words, mask_threshold, mask_dilation)
        background = background_metrics(result.source_image, result.edited_image, mask)
        rows.append({"seed": seed, "mask_fraction": float(mask.float().mean()), **background})
        sources.append(result.source_image)
        edits.append(result.edited_image)
    probs = classify(world.classifier, sources + edits)["class"]
    labels = _label("class", probs)
    index = {c: i for i, c in enumerate(HEADS["class"])}
    for k, row in enumerate(rows):
        row.update(
            source_class=labels[k],
            edit_class=labels[len(rows) + k],
            source_p=float(probs[k, index[words[0]]]),
            edit_p=float(probs[len(rows) + k, index[words[1]]]),
        )
    found = [r for r in rows if r["source_class"] == words[0]]
    swapped = [r for r in found if r["edit_class"] == words[1]]
    psnrs = [r["background_psnr"] for r in rows if r["background_psnr"] is not None]
    return {
        "prompts": list(prompts),
        "steps": steps,
        "seeds": list(seeds),
        "classifier_accuracy_on_renders": classifier_check(world, words),
        "source_found": len(found),
        "swapped": len(swapped),
        "swap_rate": len(swapped) / len(found) if found else None,
        "background_psnr_median": float(np.median(psnrs)) if psnrs else None,
        "background_psnr_min": min(psnrs) if psnrs else None,
        "per_seed": rows,
    }


def measure_reweight(
    world: World,
    seeds=SEEDS,
    steps: int = STEPS,
    scales=SNOW_SCALES,
    prompt: str = SNOW_PROMPT,
    word: str = SNOW_WORD,
    object_word: str = SNOW_OBJECT,
    mask_threshold: float = MASK_THRESHOLD,
) -> dict:
    """P2P reweighting of ``word`` in ``prompt`` at each of ``scales``: the amount of snow of the edit.

    ``snow_fraction`` per scale: the mean over seeds of :func:`snow_fraction` of the edited image outside
    the object's attention mask (:func:`attention_mask` of ``object_word`` in both branches of that run,
    at ``mask_threshold``, not grown: it only has to keep a white animal out of the count). A seed whose
    mask covers its whole image at any scale is left out at every scale (``usable_seeds``), so the scales'
    means stay paired over the same seeds. Reported beside it: the mean classifier probability of the
    context "in the snow" (it saturates once the context is recognised, so it cannot tell more snow from
    enough), and
    ``change_from_source``, the mean absolute pixel difference (0..1) between the edit and the unedited
    source branch (whether the reweighting acts at all; 0 at scale 1).
    """
    pipe = world.pipe
    context = HEADS["context"].index("in the snow")
    per_scale = []
    for scale in scales:
        fractions, images, changes = [], [], []
        for seed in seeds:
            spec = {"edit": "reweight", "equalizer": {word: float(scale)}}
            controller = edit_controller(pipe, prompt, prompt, spec, steps)
            result = generate_edit(
                pipe, prompt, prompt, controller, generator=_generator(seed), num_inference_steps=steps,
                guidance_scale=GUIDANCE,
            )  # fmt: skip
            mask = attention_mask(
                pipe, controller, prompt, prompt, (object_word, object_word), mask_threshold, dilation=0
            )
            fractions.append(snow_fraction(result.edited_image, mask))
            images.append(result.edited_image)
            change = np.abs(image_array(result.edited_image) - image_array(result.source_image)).mean()
            changes.append(float(change))
        p_snow = classify(world.classifier, images)["context"][:, context].tolist()
        per_scale.append(
            {
                "scale": float(scale),
                "p_in_the_snow": float(np.mean(p_snow)),
                "change_from_source": float(np.mean(changes)),
                "snow_fraction_per_seed": fractions,
                "p_in_the_snow_per_seed": p_snow,
            }
        )
    usable = [
        k for k in range(len(seeds)) if not any(np.isnan(r["snow_fraction_per_seed"][k]) for r in per_scale)
    ]
    for row in per_scale:
        values = [row["snow_fraction_per_seed"][k] for k in usable]
        row["snow_fraction"] = float(np.mean(values)) if values else float("nan")
    return {
        "prompt": prompt,
        "word": word,
        "steps": steps,
        "seeds": list(seeds),
        "usable_seeds": [seeds[k] for k in usable],
        "per_scale": per_scale,
    }


def measure_local_blend(
    world: World,
    seeds=SEEDS[:2],
    steps: int = STEPS,
    prompts: tuple[str, str] = REPLACE,
    words: tuple[str, str] = REPLACE_WORDS,
    threshold: float = MASK_THRESHOLD,
) -> dict:
    """A word swap with local blend of ``words`` (P2P's default start; its threshold unless given): does
    everything outside the blend mask stay the source's?

    Latent space: after every step from the blend's start on, the largest |edited - source| latent outside
    that step's blend mask (the mask the blend just used); 0 means the source's latents exactly. Pixel space:
    PSNR between source and edit outside the final blend mask scaled (nearest) to the image, which the
    decoder's receptive field lets the edited region reach into (reported, not a property of the blend).
    """
    pipe = world.pipe
    rows = []
    for seed in seeds:
        spec = {"edit": "replace", "blend_words": [[words[0]], [words[1]]], "threshold": threshold}
        controller = edit_controller(pipe, *prompts, spec, steps)
        blend = controller.local_blend
        diffs = []

        def on_step(i, latents, blend=blend, diffs=diffs):
            if i >= blend.start_step:
                diff = (latents[1] - latents[0]).abs()
                diffs.append(float(torch.where(blend.mask == 0, diff, 0.0).amax()))

        result = generate_edit(
            pipe, *prompts, controller, generator=_generator(seed), num_inference_steps=steps,
            guidance_scale=GUIDANCE, on_step=on_step,
        )  # fmt: skip
        mask = result.blend_mask
        background = background_metrics(result.source_image, result.edited_image, mask)
        rows.append(
            {
                "seed": seed,
                "blend_steps": len(diffs),
                "latent_max_diff_outside": max(diffs) if diffs else None,
                "latent_max_diff_inside": float((result.latents[1] - result.latents[0]).abs().max()),
                "mask_fraction": float(mask.float().mean()),
                **background,
            }
        )
    return {
        "prompts": list(prompts),
        "blend_words": list(words),
        "threshold": threshold,
        "steps": steps,
        "per_seed": rows,
    }


def inversion_photo(seed: int = INVERSION_SEED) -> tuple[Image.Image, str]:
    """A rendered world photo of a dog in the snow and its caption."""
    scene = random_scene(random.Random(seed), cls="dog", context="in the snow")
    return render(scene), caption(scene)


def measure_inversion(
    world: World, steps: int = STEPS, seed: int = INVERSION_SEED, inner_steps: int = 10
) -> dict:
    """PSNR (dB) to a rendered photo of: its VAE reconstruction, and its DDIM, null-text and
    negative-prompt inversions regenerated at guidance 7.5 (the source branch of an edit to itself).

    Beside each PSNR, ``{method}_latent_mse``: the regenerated latent against the photo's own latent (the
    VAE encoder's mean), what inversion itself controls whatever the decoder loses.
    """
    pipe = world.pipe
    photo, prompt = inversion_photo(seed)
    vae = decode_latents(pipe, encode_image(pipe, photo))[0]
    out = {"prompt": prompt, "seed": seed, "steps": steps, "guidance_scale": GUIDANCE}
    out["vae_psnr"] = reconstruction_metrics(photo, vae)["reconstruction_psnr"]
    for method in ("ddim", "null_text", "negative_prompt"):
        inversion = invert(pipe, photo, prompt, method, steps, GUIDANCE, inner_steps=inner_steps)
        result = generate_edit(
            pipe,
            prompt,
            prompt,
            None,
            inversion=inversion,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
        )
        out[f"{method}_psnr"] = reconstruction_metrics(photo, result.source_image)["reconstruction_psnr"]
        out[f"{method}_latent_mse"] = float(F.mse_loss(result.latents[:1], inversion.image_latent))
        out[f"{method}_seconds"] = inversion.seconds
    return out


def measure_all(world: World | Path | str, seeds=SEEDS, steps: int = STEPS) -> dict:
    """Every measurement of this module in one JSON-ready dict, with the build's command and settings."""
    if not isinstance(world, World):
        world = load_world(world)
    build = json.loads((world.folder / "BUILD.json").read_text())
    return {
        "models": str(world.folder),
        "build": {"command": build.get("command"), "settings": build.get("settings")},
        "replace": measure_replace(world, seeds, steps),
        "reweight": measure_reweight(world, seeds, steps),
        "local_blend": measure_local_blend(world, seeds[:2], steps),
        "inversion": measure_inversion(world, steps),
    }
