"""Prompt-to-Prompt and inversion behave on the world's models (issue 15, point 4).

The measurements are ``s2s.world_studies.behaviour``'s (definitions in its docstrings); each is run once per
module at 20 DDIM steps on a few seeds. The first tests check the measuring functions on inputs whose
answer is known (planted attention maps, rendered scenes and their masks), whatever the models.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from s2s.edit.controllers import AttentionStore
from s2s.edit.metrics import MAX_PSNR, background_metrics
from s2s.edit.seq_aligner import word_positions
from s2s.world.masks import object_mask
from s2s.world.render import render
from s2s.world.scene import COLOURS, random_individual, random_scene
from s2s.world_studies import behaviour

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SWAP_RATE = 0.8
VAE_SLACK = 1.0  # dB below the VAE's own reconstruction that null-text inversion may end
BACKGROUND_PSNR = 25.0
NULL_TEXT_PSNR = 28.0
NULL_TEXT_MARGIN = 5.0


@pytest.fixture(scope="module")
def world(world_models):
    return behaviour.load_world(world_models)


# ---------------------------------------------------------------- the measuring functions


def test_attention_mask_is_the_local_blend_mask_of_both_words_grown_by_one_latent_pixel(world):
    """Planted 8x8 maps: "dog" at cell (2, 2) of the source, "cat" at (5, 5) of the target. Max-pooled 3x3,
    normalised and thresholded, each is cells k-1..k+1, i.e. latent rows and columns 2(k-1)..2(k+1)+1 of
    16; the union grown by one latent pixel."""
    source, target = behaviour.REPLACE
    store = AttentionStore(store_prompts=(0, 1))
    store.reset(behaviour.STEPS, (16, 16))
    maps = torch.full((2, 2, 8, 8, 77), 0.001)
    maps[0, :, 2, 2, word_positions(world.pipe.tokenizer, source, "dog")] = 1.0
    maps[1, :, 5, 5, word_positions(world.pipe.tokenizer, target, "cat")] = 1.0
    store.total_maps = {"down_blocks.0.attentions.0": maps.reshape(2, 2, 64, 77)}
    store.stored_steps = 1
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:8, 2:8] = expected[8:14, 8:14] = True
    mask = behaviour.attention_mask(world.pipe, store, source, target, ("dog", "cat"), dilation=0)
    assert torch.equal(mask, expected)
    grown = torch.zeros(16, 16, dtype=torch.bool)
    grown[1:9, 1:9] = grown[7:15, 7:15] = True
    assert torch.equal(behaviour.attention_mask(world.pipe, store, source, target, ("dog", "cat")), grown)


def _scene(cls: str, context: str = "in the snow", seed: int = 5, colour: str | None = None):
    scene = random_scene(random.Random(seed), cls="dog", context=context)
    return replace(scene, individual=random_individual(random.Random(seed), cls, colour))


def test_background_psnr_outside_both_objects_of_a_rendered_swap_is_exact():
    """A rendered dog and a cat in the same snow scene differ only inside their two silhouettes."""
    dog, cat = _scene("dog"), _scene("cat")
    union = torch.from_numpy(object_mask(dog) | object_mask(cat))
    both = background_metrics(render(dog), render(cat), union)
    # The objects cover 5-40% of the image (a long or short build changes their area).
    assert both["background_psnr"] == MAX_PSNR and 0.6 < both["background_fraction"] < 0.95
    dog_only = background_metrics(render(dog), render(cat), torch.from_numpy(object_mask(dog)))
    assert dog_only["background_psnr"] < 30.0, dog_only


def test_snow_fraction_counts_snow_not_sky_nor_a_white_animal():
    snowy, beach = _scene("dog"), _scene("dog", context="on the beach")
    snow = behaviour.snow_fraction(render(snowy), object_mask(snowy))
    assert 0.5 < snow < 0.75, snow  # the ground below 45 % of the height, not the sky above it
    assert behaviour.snow_fraction(render(beach)) == 0.0
    white = _scene("dog", context="on the beach", colour="white")
    assert COLOURS["white"] == (240, 240, 235)
    assert behaviour.snow_fraction(render(white)) > 0.02  # the white dog itself ...
    assert behaviour.snow_fraction(render(white), object_mask(white)) == 0.0  # ... left out by its mask
    # More snow, more snow fraction: the snow image's rows from the bottom up, over the beach.
    a, b = np.asarray(render(snowy)), np.asarray(render(beach))
    series = []
    for rows in (0, 16, 32, 48, 64):
        mixed = b.copy()
        mixed[64 - rows :] = a[64 - rows :]
        series.append(behaviour.snow_fraction(Image.fromarray(mixed)))
    assert series == sorted(series) and series[0] == 0.0 and series[-1] > 0.5, series
    assert math.isnan(behaviour.snow_fraction(render(snowy), torch.ones(16, 16)))


def test_measure_all_collects_every_measurement_into_one_json_dict(world, monkeypatch):
    for name in ("replace", "reweight", "local_blend", "inversion"):
        monkeypatch.setattr(behaviour, f"measure_{name}", lambda *a, name=name, **k: {"measured": name})
    report = behaviour.measure_all(world)
    assert {k: report[k] for k in ("replace", "reweight", "local_blend", "inversion")} == {
        k: {"measured": k} for k in ("replace", "reweight", "local_blend", "inversion")
    }
    assert report["models"] == str(world.folder) and "command" in report["build"]
    json.dumps(report)


# ---------------------------------------------------------------- behaviour of the world's models


# The object's mask for the background check. The world's cross-attention is aggregated at 8 x 8: at
# P2P's threshold 0.3, grown by a latent pixel, the mask covered the whole image in 6 of 8 seeds (the
# check then rested on 2 seeds and 0.4-1.2% of their pixels). At 0.7, not grown, it covers 78-91%
# (measured on the committed models), the object and a margin, and leaves a background in every seed.
REPLACE_MASK = {"mask_threshold": 0.7, "mask_dilation": 0}
MIN_BACKGROUND = 0.05  # of the image, in every seed


@pytest.fixture(scope="module")
def replaced(world):
    return behaviour.measure_replace(world, **REPLACE_MASK)


@pytest.fixture(scope="module")
def reweighted(world):
    # The replace check's threshold, for the same reason: at 0.3 the dog's mask covers the whole image in
    # all 6 seeds (measured), and the snow outside it could not be counted.
    return behaviour.measure_reweight(
        world, seeds=behaviour.SEEDS[:6], mask_threshold=REPLACE_MASK["mask_threshold"]
    )


@pytest.fixture(scope="module")
def blended(world):
    # The world UNet's cross-attention is aggregated at 8 x 8 and max-pooled 3 x 3, so P2P's threshold of
    # 0.3 masks the whole latent (measured: 100% for both seeds) and the property would hold vacuously;
    # at 0.7 the mask covers 81-91% of the latent (measured on the committed models).
    return behaviour.measure_local_blend(world, threshold=0.7)


@pytest.fixture(scope="module")
def inverted(world):
    return behaviour.measure_inversion(world)


def _per_seed(rows, *keys) -> str:
    return "; ".join(
        f"seed {r['seed']}: "
        + ", ".join(f"{k} {r[k]:.3g}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in keys)
        for r in rows
    )


def _replace_numbers(r: dict) -> str:
    return (
        f"source dog in {r['source_found']} of {len(r['seeds'])} seeds, edit cat in {r['swapped']} of those "
        f"(rate {r['swap_rate']}); background PSNR median {r['background_psnr_median']} dB, min "
        f"{r['background_psnr_min']} dB; classifier accuracy on rendered dogs / cats "
        f"{r['classifier_accuracy_on_renders']}; "
        + _per_seed(r["per_seed"], "source_class", "edit_class", "mask_fraction", "background_psnr")
    )


def test_replace_turns_the_dog_into_a_cat(replaced):
    """Word swap without local blend: where the source is a dog (classifier), the edit is a cat in >= 80 %
    of the seeds, with an object mask that leaves >= 5% of every image as background."""
    json.dumps(replaced)
    r = replaced
    numbers = _replace_numbers(r)
    thin = [row["seed"] for row in r["per_seed"] if row["background_fraction"] < MIN_BACKGROUND]
    assert not thin, f"the mask leaves under {MIN_BACKGROUND:.0%} background in seeds {thin}: {numbers}"
    assert r["source_found"] >= len(r["seeds"]) / 2, f"the model rarely draws a recognisable dog: {numbers}"
    assert r["swap_rate"] >= SWAP_RATE, f"the swap rate is below {SWAP_RATE}: {numbers}"
    assert r["background_psnr_median"] is not None, f"the object mask covers every image: {numbers}"
    print(f"replace: {numbers}")


@pytest.mark.xfail(
    strict=True,
    reason="measured on the rebuilt world (issue 21): the swap works (a cat in 8 of 8 seeds) but the "
    "background outside the object's mask keeps a median 21.1 dB (min 19.9) of the source, below 25 dB; the "
    "previous world kept it. The edit changes the whole scene's texture, not only the object",
)
def test_replace_keeps_the_background(replaced):
    """Source and edit agree outside the object's attention mask at >= 25 dB (median)."""
    r = replaced
    numbers = _replace_numbers(r)
    assert r["background_psnr_median"] >= BACKGROUND_PSNR, f"background below {BACKGROUND_PSNR} dB: {numbers}"


@pytest.mark.xfail(
    strict=True,
    reason="measured on the committed world (eleventh session): reweighting 'snow' by 0, 1, 2, 4 changes the "
    "image (mean absolute pixel change from the source 0.075, 0, 0.051, 0.086) but not the white ground "
    "outside the dog (snow fraction 0.578, 0.643, 0.579, 0.585, 6 seeds): a larger weight thickens the "
    "falling snow into a haze over the whole image instead of adding snow on the ground",
)


def test_reweighting_snow_changes_the_amount_of_snow_monotonically(reweighted):
    """Reweighting "snow" by 0, 1, 2, 4: the mean snow fraction (near-white pixels outside the dog) over the
    same seeds never falls as the scale grows, and is larger at 4 than at 0 (an edit that does nothing
    would be "monotone" too). Paired seeds, no tolerance: the seeds' noise is the same at every scale."""
    json.dumps(reweighted)
    rows = reweighted["per_scale"]
    snow = [r["snow_fraction"] for r in rows]
    numbers = "; ".join(
        f"scale {r['scale']:g}: snow fraction {r['snow_fraction']:.4f} (per seed "
        f"{', '.join(f'{x:.3f}' for x in r['snow_fraction_per_seed'])}), "
        f"P(in the snow) {r['p_in_the_snow']:.3f}, change from source {r['change_from_source']:.4f}"
        for r in rows
    )
    numbers += f"; seeds whose object mask leaves some background: {reweighted['usable_seeds']}"
    usable, seeds = len(reweighted["usable_seeds"]), len(reweighted["seeds"])
    assert usable >= seeds / 2, (
        f"object masks cover whole images in {seeds - usable} of {seeds} seeds: {numbers}"
    )
    assert all(b >= a for a, b in zip(snow, snow[1:])), f"snow fraction not monotone in the scale: {numbers}"
    assert snow[-1] > snow[0], f"reweighting 'snow' does not change the amount of snow: {numbers}"
    print(f"reweight: {numbers}")


def test_local_blend_keeps_the_source_latents_outside_its_mask(blended):
    """Local blend of "dog"/"cat": after every blended step the edited latents equal the source's outside
    the mask (exactly: x_src + 0 * (x - x_src)); the pixel PSNR outside it is reported."""
    json.dumps(blended)
    rows = blended["per_seed"]
    numbers = _per_seed(
        rows,
        "blend_steps",
        "mask_fraction",
        "latent_max_diff_outside",
        "latent_max_diff_inside",
        "background_psnr",
    )
    assert all(r["blend_steps"] > 0 for r in rows), f"the blend never acted: {numbers}"
    assert all(r["mask_fraction"] < 1.0 for r in rows), f"the blend mask covers the whole latent: {numbers}"
    assert all(r["latent_max_diff_inside"] > 0 for r in rows), f"the edit changed nothing: {numbers}"
    assert all(r["latent_max_diff_outside"] <= 1e-6 for r in rows), (
        f"latents outside the blend mask differ from the source's: {numbers}"
    )
    print(f"local blend: {numbers}")


def test_null_text_inversion_reconstructs_a_world_photo(inverted):
    """A rendered dog in the snow (a seed the build never drew), inverted and regenerated at guidance 7.5:
    null-text >= 28 dB and >= 5 dB above DDIM inversion; negative-prompt inversion reported beside them,
    and the VAE's own reconstruction, which bounds them all."""
    json.dumps(inverted)
    r = inverted
    numbers = (
        f"{r['prompt']!r}, {r['steps']} steps: PSNR VAE only {r['vae_psnr']:.2f} dB, null-text "
        f"{r['null_text_psnr']:.2f}, DDIM {r['ddim_psnr']:.2f}, "
        f"negative-prompt {r['negative_prompt_psnr']:.2f} dB; "
        f"latent MSE null-text {r['null_text_latent_mse']:.4g}, DDIM {r['ddim_latent_mse']:.4g}, "
        f"negative-prompt {r['negative_prompt_latent_mse']:.4g}"
    )
    if r["vae_psnr"] < NULL_TEXT_PSNR:
        numbers += (
            f". The VAE alone reconstructs the photo at {r['vae_psnr']:.2f} dB < {NULL_TEXT_PSNR} dB: no "
            "inversion can meet the target with this VAE"
        )
    assert r["null_text_psnr"] >= r["ddim_psnr"] + NULL_TEXT_MARGIN, (
        f"null-text not {NULL_TEXT_MARGIN} dB above DDIM: {numbers}"
    )
    print(f"inversion: {numbers}")


@pytest.mark.xfail(
    strict=True,
    reason="on the third world build null-text inversion reaches 26.28 dB, 1.58 dB below the VAE's own "
    "27.86 dB (negative-prompt inversion 27.42 dB; null-text was 27.28 dB on the second build, whose UNet "
    "and text encoder differ): the null-text optimisation falls short on the new UNet (issue 23's note)",
)
def test_null_text_inversion_comes_within_a_db_of_the_vae(inverted):
    """The VAE bounds every inversion: null-text must come within VAE_SLACK dB of it."""
    assert inverted["null_text_psnr"] >= inverted["vae_psnr"] - VAE_SLACK, inverted


@pytest.mark.xfail(
    strict=True,
    reason="issue 15's 28 dB target: the committed VAE reconstructs the photo at 27.86 dB (measured; 24.5 dB "
    "in the previous world), which bounds every inversion (null-text 27.28 dB)",
)
def test_null_text_inversion_reaches_28_db(inverted):
    assert inverted["null_text_psnr"] >= NULL_TEXT_PSNR, inverted
