"""The world edit benchmark's metrics on the edits of a manifest (issue 23, point 4; s2s.edit.photo_metrics,
s2s.edit.world_photos): the edit mask from the renderer for a world photo it can redraw, from the edit's
cross-attention otherwise; by hand on planted maps and rendered scenes, then on a real run of the committed
world models, and on the shared edit photos (optional: ../shared/data)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from s2s import config as cfgmod
from s2s.edit.bench_metrics import bench_metrics
from s2s.edit.controllers import AttentionStore
from s2s.edit.photo_metrics import (
    COLUMNS,
    MASK_FILE,
    PHOTO_METRICS,
    cross_attention_mask,
    edited_words,
    mask_image,
)
from s2s.edit.world_photos import WorldPhotos, photo_scene, renderer_edit
from s2s.io import save_png
from s2s.world.masks import object_coverage, object_mask
from s2s.world.subjects import draw_world_photo, world_photo_scene, world_subject

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 5
PHOTO_SEED = 11  # the seed the test's world photos are drawn at (a run: seed + WORLD_PHOTO_SEED_OFFSET)
CAPTION = "a brown dog on the beach"


@pytest.fixture(scope="module")
def tokenizer(world_models):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(world_models / "sd", subfolder="tokenizer")


# ---------------------------------------------------------------- the cross-attention mask, by hand


def test_edited_words_of_each_kind_of_edit():
    assert edited_words("a dog on the beach", "a cat on the beach", {"edit": "replace"}) == (["dog"], ["cat"])
    grass, dry = "a dog standing in the grass", "a dog standing in the dry grass"
    assert edited_words(grass, dry, {"edit": "refine"}) == ([], ["dry"])
    # A subject edit: the identifier and the noun it names, in both prompts.
    subject = {"edit": "subject"}
    assert edited_words("a dog standing on the beach", "a sks dog standing on the beach", subject) == (
        ["dog"],
        ["sks", "dog"],
    )
    assert edited_words(CAPTION, "a sks dog on the beach", subject) == (["brown", "dog"], ["sks", "dog"])
    reweight = {"edit": "reweight", "equalizer": {"snow": 4}}
    assert edited_words("a dog in the snow", "a dog in the snow", reweight) == (["snow"], ["snow"])
    # A local blend's words are the blend's mask.
    blend = {"edit": "replace", "blend_words": ["dog", "horse"]}
    assert edited_words("a dog", "a horse", blend) == (["dog", "horse"], ["dog", "horse"])
    both = {"edit": "refine", "blend_words": [["dog"], ["cat", "hat"]]}
    assert edited_words("a dog", "a cat wearing a red hat", both) == (["dog"], ["cat", "hat"])


def _planted_store(tokenizer) -> AttentionStore:
    """4x4 maps on an 8x8 latent (one layer, head and step). Source "dog": 1.0 at cell (0, 0), 0.45 at
    (0, 3); target "cat": 0.2 at (3, 3), 0.12 at (3, 0); "beach" 1.0 everywhere in both (not edited)."""
    from s2s.edit.seq_aligner import word_positions

    source, target = "a dog on the beach", "a cat on the beach"
    maps = torch.zeros(2, 16, 77)
    (dog,), (cat,) = word_positions(tokenizer, source, "dog"), word_positions(tokenizer, target, "cat")
    maps[0, 0, dog], maps[0, 3, dog] = 1.0, 0.45
    maps[1, 15, cat], maps[1, 12, cat] = 0.2, 0.12
    for prompt, text in enumerate((source, target)):
        maps[prompt, :, word_positions(tokenizer, text, "beach")] = 1.0
    store = AttentionStore(store_prompts=(0, 1))
    store.reset(1, (8, 8))
    store.total_maps = {"up.attn2": maps[:, None]}
    store.stored_steps = 1
    return store


def test_cross_attention_mask_by_hand_on_planted_maps(tokenizer):
    """Max-pooled 3x3, each prompt's map over its maximum, thresholded at the edit's 0.5: the source keeps the
    cells within one of (0, 0) (0.45 / 1.0 at (0, 3) is below), the target those within one of (3, 3) and
    (3, 0) (0.12 / 0.2 = 0.6); a cell is 2x2 latent pixels, a latent pixel 8x8 image pixels."""
    pipe = SimpleNamespace(tokenizer=tokenizer)
    store = _planted_store(tokenizer)
    spec = {"edit": "replace", "threshold": 0.5}
    mask, info = cross_attention_mask(pipe, store, "a dog on the beach", "a cat on the beach", spec)
    assert info == {"source_words": ["dog"], "target_words": ["cat"], "threshold": 0.5}

    def kept(y, x):
        return any(max(abs(y - cy), abs(x - cx)) <= 1 for cy, cx in ((0, 0), (3, 3), (3, 0)))

    cells = np.array([[kept(y, x) for x in range(4)] for y in range(4)])
    expected = np.kron(cells, np.ones((2, 2), dtype=bool))
    assert mask.dtype == torch.bool and np.array_equal(mask.numpy(), expected)
    assert 0 < expected.sum() < 64
    image = mask_image(mask, (64, 64))
    assert image.mode == "L" and image.size == (64, 64)
    assert np.array_equal(np.asarray(image), np.kron(expected, np.ones((8, 8))).astype(np.uint8) * 255)
    # Nothing edited (no word differs): an empty mask.
    same, info = cross_attention_mask(pipe, store, "a dog on the beach", "a dog on the beach", spec)
    assert not same.any() and info["source_words"] == info["target_words"] == []


def test_a_blended_edits_cross_attention_mask_is_its_local_blends_last_mask(world_models):
    from s2s.edit.p2p import generate_edit
    from s2s.world_studies.edit_bench import load_pipeline

    pipe = load_pipeline(str(world_models / "sd"))
    source, target = "a dog in the snow", "a cat in the snow"
    # Blend words other than the edited ones (dog -> cat), and a threshold at which the blend is partial.
    spec = {"edit": "replace", "blend_words": [["dog", "snow"], ["cat", "snow"]], "threshold": 0.9}
    result = generate_edit(
        pipe, source, target, spec, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS
    )
    mask, info = cross_attention_mask(pipe, result.controller, source, target, spec)
    assert info["source_words"] == ["dog", "snow"] and info["target_words"] == ["cat", "snow"]
    assert torch.equal(mask, result.blend_mask > 0)
    assert 0 < mask.float().mean() < 1


# ---------------------------------------------------------------- the renderer's mask, by hand


def test_a_world_photo_is_found_only_from_its_own_pixels(tmp_path):
    photo = draw_world_photo(CAPTION, PHOTO_SEED)
    path = tmp_path / f"{CAPTION.replace(' ', '_')}.png"
    save_png(photo, path)
    with Image.open(path) as saved:
        saved = saved.convert("RGB")
    assert photo_scene(path, saved, PHOTO_SEED) == world_photo_scene(CAPTION, PHOTO_SEED)
    assert photo_scene(path, saved, PHOTO_SEED + 1) is None  # another seed draws another scene
    assert photo_scene(tmp_path / "a_black_dog_on_the_beach.png", saved, PHOTO_SEED) is None
    assert photo_scene(tmp_path / "holiday.png", saved, PHOTO_SEED) is None  # not a caption
    touched = saved.copy()
    touched.putpixel((0, 0), tuple(255 - v for v in touched.getpixel((0, 0))))
    assert photo_scene(path, touched, PHOTO_SEED) is None


def test_renderer_masks_of_each_edit_type_and_the_edits_it_has_none_for():
    scene = world_photo_scene(CAPTION, PHOTO_SEED)
    ind = scene.individual
    subject = world_subject("dog", 1)

    def edit(target, source=CAPTION, of=scene, **kwargs):
        return renderer_edit(of, source, target, **kwargs)

    case, why = edit("a brown cat on the beach")
    cat = replace(scene, individual=replace(ind, cls="cat"))
    assert why == "" and case.edit_type == "object"
    assert np.array_equal(case.mask(), object_mask(scene) | object_mask(cat))
    assert case.mask().sum() > object_mask(scene).sum()  # the cat's silhouette is not the dog's

    case, _ = edit("a black dog on the beach")
    assert case.edit_type == "colour" and np.array_equal(case.mask(), object_mask(scene))

    case, _ = edit("a brown dog in the jungle")
    assert case.edit_type == "background" and np.array_equal(case.mask(), object_coverage(scene) < 1.0)

    case, _ = edit("a sks dog on the beach", subject=subject, token="sks")
    placed = replace(scene, individual=subject)
    assert case.edit_type == "subject"
    assert np.array_equal(case.mask(), object_mask(scene) | object_mask(placed))

    plain = replace(scene, context="plain")
    case, _ = edit("a brown dog wearing a red hat", source="a brown dog", of=plain)
    hat = replace(plain, context="wearing a red hat")
    assert case.edit_type == "accessory"
    assert np.array_equal(case.mask(), object_mask(plain) | object_mask(hat))
    assert object_mask(hat).sum() > object_mask(plain).sum()

    refused = {
        "a black cat on the beach": "class and colour change",
        "a brown dog in the snow": "a context change the benchmark has no mask for",  # snow covers the object
        "a brown dog on the beach": "the prompts change nothing",
        "a sks dog on the beach": "names no world subject",  # no subject given
        "a brown dog on the moon": "not in the world's language",
    }
    for target, reason in refused.items():
        case, why = edit(target)
        assert case is None and reason in why, (target, why)
    case, why = edit("a ohwx dog on the beach", subject=subject, token="sks")  # another identifier
    assert case is None and "names no world subject" in why
    case, why = edit("a brown cat on the beach", source="a white dog on the beach")
    assert case is None and "does not describe" in why


# ---------------------------------------------------------------- a real run on the world models


def _lora(world_models, folder: Path) -> Path:
    """A random LoRA on the world UNet: a subject model for subject rows (no training)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(world_models / "sd")
    lora = LoraConfig(
        r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    pipe.unet.add_adapter(lora)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True
    )
    return folder


@pytest.fixture(scope="module")
def world(world_models, tmp_path_factory):
    from s2s.metrics.fidelity import load_clip, load_dino

    root = tmp_path_factory.mktemp("photo_metrics")
    identity, clip = load_dino(str(world_models / "identity")), load_clip(str(world_models / "clip"))
    raw = {"subjects": {"toy": {"class": "toy", "synthetic": True}}, "edits": {"blend_threshold": 0.7}}
    settings = replace(
        cfgmod.edit_config(cfgmod.check_config(raw)),
        num_inference_steps=STEPS,
        clip_model=str(world_models / "clip"),
        dino_model=str(world_models / "identity"),
        subject_model="lora",
    )
    return SimpleNamespace(
        base=str(world_models / "sd"),
        model_dirs={"lora": _lora(world_models, root / "lora")},
        settings=settings,
        vit=(identity.model, identity.processor),
        clip=(clip.model, clip.processor),
    )


def _open(path: Path, mode: str = "RGB") -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


def check_metrics_from_files(record: dict, folder: Path, world) -> None:
    """Every column in range and equal to the benchmark's functions run again on the saved PNGs."""
    metrics = record["metrics"]
    assert set(COLUMNS) <= set(metrics) and not {"gt_psnr", "gt_psnr_in_mask"} & set(metrics)
    mask = _open(folder / MASK_FILE, "L")
    values = np.asarray(mask)
    assert mask.size == _open(folder / "source.png").size and set(np.unique(values)) <= {0, 255}
    assert metrics["mask_fraction"] == pytest.approx(float((values > 0).mean()), abs=1e-12)
    again = bench_metrics(
        _open(folder / "source.png"),
        _open(folder / "edited.png"),
        mask,
        record["target_prompt"],
        vit=world.vit,
        clip=world.clip,
    )
    for key in PHOTO_METRICS:
        assert metrics[key] == pytest.approx(again[key], rel=1e-9, abs=1e-12), (record["edit_id"], key)
    if metrics["mask_fraction"] < 1.0:
        assert 0.0 < metrics["background_psnr"] <= 100.0 and -1.0 <= metrics["background_ssim"] <= 1.0
        assert 0.0 <= metrics["background_mse"] <= 1.0
    else:  # the mask lets everything change: no background (PnPInversion's "nan")
        assert metrics["background_psnr"] is None
    assert metrics["structure_distance"] >= 0.0 and math.isfinite(metrics["structure_distance"])
    assert 0.0 <= metrics["clip_whole"] <= 100.0 and 0.0 <= metrics["clip_edited"] <= 100.0
    assert record["mask"]["source"] == metrics["mask_source"]


def _draw_other_photo(path: Path) -> Path:
    image = Image.new("RGB", (80, 64), (40, 120, 210))
    ImageDraw.Draw(image).ellipse((24, 12, 56, 44), fill=(235, 190, 40))
    image.save(path)
    return path


def test_a_world_manifests_edits_get_the_benchmarks_metrics_with_the_right_mask(world, tmp_path):
    from s2s.edit.batch import run_edit_batch

    save_png(draw_world_photo(CAPTION, PHOTO_SEED), tmp_path / "a_brown_dog_on_the_beach.png")
    _draw_other_photo(tmp_path / "other.png")
    world_photo = "a_brown_dog_on_the_beach.png"
    rows = [
        ("photo_object", world_photo, CAPTION, "a brown cat on the beach", "replace", ""),
        ("photo_subject", world_photo, CAPTION, "a sks dog on the beach", "subject", "lora"),
        ("photo_snow", world_photo, CAPTION, "a brown dog in the snow", "replace", ""),
        ("generated", "", "a dog in the snow", "a cat in the snow", "replace", ""),
        ("other_photo", "other.png", "a dog on the beach", "a cat on the beach", "replace", ""),
    ]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["edit_id", "image", "source_prompt", "target_prompt", "edit", "model"])
        writer.writerows(rows)
    out = tmp_path / "edits"
    photos = WorldPhotos(PHOTO_SEED, world_subject("dog", 1), "sks")
    records = run_edit_batch(
        manifest, out, world.base, world.model_dirs, "cpu", torch.float32, world.settings, 3, photos
    )
    by_id = {r["edit_id"]: r for r in records}
    for record in records:
        folder = out / record["edit_id"]
        assert json.loads((folder / "edit.json").read_text()) == json.loads(json.dumps(record))
        check_metrics_from_files(record, folder, world)

    # A world photo the renderer redraws, edited the ways the benchmark defines: the renderer's exact mask.
    scene = world_photo_scene(CAPTION, PHOTO_SEED)
    cat = replace(scene, individual=replace(scene.individual, cls="cat"))
    placed = replace(scene, individual=world_subject("dog", 1))
    for edit_id, target, kind in (("photo_object", cat, "object"), ("photo_subject", placed, "subject")):
        record = by_id[edit_id]
        assert record["metrics"]["mask_source"] == "renderer" and record["mask"]["edit_type"] == kind
        expected = (object_mask(scene) | object_mask(target)).astype(np.uint8) * 255
        assert np.array_equal(np.asarray(_open(out / edit_id / MASK_FILE, "L")), expected), edit_id
    # Everything else: the edit's cross-attention, with its words and threshold, and why not the renderer's.
    attention = {
        "photo_snow": (["on", "beach"], ["in", "snow"], "a context change"),
        "generated": (["dog"], ["cat"], "a generated source"),
        "other_photo": (["dog"], ["cat"], "not a world photo"),
    }
    for edit_id, (src, tgt, why) in attention.items():
        record = by_id[edit_id]
        assert record["metrics"]["mask_source"] == "cross_attention", edit_id
        assert record["mask"]["source_words"] == src and record["mask"]["target_words"] == tgt
        assert record["mask"]["threshold"] == 0.7 and why in record["mask"]["no_renderer_mask"]
        values = np.asarray(_open(out / edit_id / MASK_FILE, "L"))
        blocks = values.reshape(16, 4, 16, 4)  # the world's 16x16 latent: 4x4 image pixels, one value each
        assert (blocks == blocks[:, :1, :, :1]).all(), edit_id


# ---------------------------------------------------------------- the shared edit photos (optional)


@pytest.mark.shared_data
def test_the_shared_edit_photos_get_the_benchmarks_metrics_with_cross_attention_masks(
    world, shared_data, tmp_path
):
    from s2s.edit.batch import run_edit_batch

    manifest = shared_data / "edits" / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is not present")
    out = tmp_path / "edits"
    photos = WorldPhotos(PHOTO_SEED, world_subject("dog", 1), "sks")
    records = run_edit_batch(
        manifest, out, world.base, world.model_dirs, "cpu", torch.float32, world.settings, 3, photos
    )
    assert len(records) == len(list(csv.DictReader(manifest.open())))
    for record in records:
        folder = out / record["edit_id"]
        check_metrics_from_files(record, folder, world)
        # Real photos: no scene for the renderer to redraw.
        assert record["metrics"]["mask_source"] == "cross_attention"
        assert "not a world photo" in record["mask"]["no_renderer_mask"]
        assert record["mask"]["target_words"], record["edit_id"]
    print(f"shared edit photos (world models, 64 px, {STEPS} steps):")
    for r in records:
        print(f"  {r['edit_id']}: " + ", ".join(f"{k} {r['metrics'][k]}" for k in COLUMNS))
