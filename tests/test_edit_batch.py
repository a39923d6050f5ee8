"""Batch editing from a manifest on the tiny model: outputs, edit.json, subject models, manifest errors."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from s2s import config as cfgmod
from s2s.edit.batch import OUTPUT_FILES, run_edit_batch, validate_manifest
from s2s.edit.inversion import load_image, model_resolution
from s2s.io import S2SError, save_safetensors

STEPS = 4
SHARED_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "edits" / "manifest.csv"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny base model, a textual-inversion embedding and a random LoRA for it, and a tiny CLIP."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from s2s.tiny import build_tiny_clip, build_tiny_sd

    root = tmp_path_factory.mktemp("edit_batch")
    base = build_tiny_sd(root / "sd", seed=0, resolution=64)
    save_safetensors(
        {"sks": torch.randn(1, 32, generator=torch.Generator().manual_seed(1))},
        root / "ti" / "learned_embeds.safetensors",
    )
    pipe = StableDiffusionPipeline.from_pretrained(base)
    lora = LoraConfig(
        r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    pipe.unet.add_adapter(lora)
    StableDiffusionPipeline.save_lora_weights(
        root / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True
    )
    return {
        "base": str(base),
        "model_dirs": {"textual_inversion": root / "ti", "lora": root / "lora"},
        "clip": str(build_tiny_clip(root / "clip")),
        "resolution": model_resolution(pipe),
    }


def write_manifest(folder: Path, rows: list[dict], name="manifest.csv") -> Path:
    columns = [
        "edit_id", "image", "source_prompt", "target_prompt", "edit", "params", "model", "inversion", "seed"
    ]  # fmt: skip
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in columns if any(c in r for r in rows)])
        writer.writeheader()
        writer.writerows(rows)
    return path


def draw_photo(path: Path) -> Path:
    image = Image.new("RGB", (80, 64), (40, 120, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 48, 80, 64), fill=(225, 205, 150))
    draw.ellipse((24, 12, 56, 44), fill=(235, 190, 40))
    image.save(path)
    return path


GOOD_ROW = {"source_prompt": "a dog on the beach", "target_prompt": "a horse on the beach", "edit": "replace"}


def settings(edits: dict | None = None, **changes) -> cfgmod.EditConfig:
    """The edit settings of a checked config (``edits`` its edits.* keys, the rest the schema's defaults) at
    STEPS steps, without CLIP and without a subject model unless ``changes`` give them."""
    raw = {"subjects": {"toy": {"class": "toy", "synthetic": True}}, "edits": edits or {}}
    changes = {
        "num_inference_steps": STEPS,
        "clip_model": None,
        "dino_model": None,
        "subject_model": None,
        **changes,
    }
    return replace(cfgmod.edit_config(cfgmod.check_config(raw)), **changes)


def run(models, manifest, out_root, **changes):
    return run_edit_batch(
        manifest,
        out_root,
        models["base"],
        models["model_dirs"],
        "cpu",
        torch.float32,
        settings(**{"subject_model": "textual_inversion", **changes}),
        seed=3,
    )


def test_batch_writes_every_output(models, tmp_path, monkeypatch):
    import s2s.edit.batch as batch

    built, build = [], batch.build_controller
    monkeypatch.setattr(batch, "build_controller", lambda *args: built.append(args[1:3]) or build(*args))
    draw_photo(tmp_path / "photo.png")
    manifest = write_manifest(
        tmp_path,
        [
            {**GOOD_ROW, "params": json.dumps({"blend_words": ["dog", "horse"], "threshold": 0.99})},
            {
                "image": "photo.png",
                "source_prompt": "a dog on the beach",
                "target_prompt": "a sks dog on the beach",
                "edit": "subject",
            },
            {
                "image": "photo.png",
                "source_prompt": "a dog on the beach",
                "target_prompt": "a big dog on the beach",
                "edit": "refine",
                "model": "lora",
                "inversion": "null_text",
                "params": "{cross_replace_steps: 0.5}",
            },
        ],
    )
    out = tmp_path / "edits"
    records = run(models, manifest, out, clip_model=models["clip"])
    size = models["resolution"]  # unet sample_size x VAE scale factor: 16 px for the tiny model
    assert [r["edit_id"] for r in records] == ["001_horse", "002_sks", "003_big"]
    # Each row's controller is built once: when the manifest is checked, before any model loads.
    assert [prompts[1] for prompts in built] == [r["target_prompt"] for r in records]
    assert sorted(p.name for p in out.iterdir()) == [
        "001_horse",
        "002_sks",
        "003_big",
    ]  # no temporary leftovers
    for record in records:
        folder = out / record["edit_id"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
        assert json.loads((folder / "edit.json").read_text()) == json.loads(json.dumps(record))
        for name in ("source.png", "reconstruction.png", "edited.png"):
            assert Image.open(folder / name).size == (size, size)
        sheet = Image.open(folder / "attention.png")  # both prompts' maps (tests/test_plots.py draws them)
        assert sheet.width > 200 and sheet.height > 100
        assert record["tokens"] and record["target_tokens"]
        assert isinstance(record["metrics"]["clip_t"], float)
        assert isinstance(record["metrics"]["clip_directional"], float)
        assert record["timings_s"]["total"] >= record["timings_s"]["edit"] > 0

    generated, subject, refined = records
    assert "horse" in generated["target_tokens"]  # the edited word is on the sheet
    assert generated["image"] is None and generated["inversion"] is None and generated["seed"] == 3
    assert generated["unet_calls"] == {"inversion": 0, "edit": STEPS, "total": STEPS}
    assert (out / "001_horse" / "source.png").read_bytes() == (
        out / "001_horse" / "reconstruction.png"
    ).read_bytes()
    assert generated["metrics"]["reconstruction_psnr"] is None
    # The benchmark's metrics (tests/test_edit_photo_metrics.py): a local blend's words make the mask.
    assert generated["metrics"]["mask_source"] == "cross_attention" and generated["mask"]["threshold"] == 0.99
    assert generated["mask"]["source_words"] == generated["mask"]["target_words"] == ["dog", "horse"]
    assert isinstance(generated["metrics"]["clip_edited"], float)
    assert generated["metrics"]["structure_distance"] is None  # no ViT given
    assert generated["controller"]["threshold"] == 0.99

    assert subject["model"] == "textual_inversion" and subject["inversion"] == "negative_prompt"
    assert subject["unet_calls"] == {"inversion": STEPS, "edit": STEPS, "total": 2 * STEPS}
    assert "sks" in subject["target_prompt"] and isinstance(subject["metrics"]["reconstruction_psnr"], float)
    photo = load_image(tmp_path / "photo.png", size)
    assert list(Image.open(out / "002_sks" / "source.png").getdata()) == list(photo.getdata())

    assert refined["model"] == "lora" and refined["inversion"] == "null_text"
    assert (
        refined["unet_calls"]["inversion"] > 3 * STEPS and refined["controller"]["cross_replace_steps"] == 0.5
    )


BAD_ROWS = [
    ({"target_prompt": ""}, "target_prompt"),
    ({"edit": "swap"}, "edit"),
    ({"model": "controlnet"}, "model"),
    ({"model": "dreambooth"}, "model"),  # no trained dreambooth model given
    ({"image": "missing.png"}, "image"),
    ({"image": "broken.png"}, "image"),
    ({"target_prompt": "a sks dog on the beach"}, "target_prompt"),  # replace with 5 vs 6 words
    ({"params": "{not: valid"}, "params"),
    ({"params": '{"blend_word": ["dog"]}'}, "params"),
    ({"params": '{"equalizer": {"cat": 2}}', "edit": "reweight"}, "params"),
    ({"inversion": "pivotal", "image": "photo.png"}, "inversion"),
    ({"edit_id": "../escape"}, "edit_id"),
    ({"edit_id": "001_horse"}, "edit_id"),  # duplicate of row 1's derived id
    ({"seed": "-1"}, "seed"),
    ({"seed": "1.5"}, "seed"),
    ({"seed": "7", "image": "photo.png"}, "seed"),  # a photo's noise is its inversion's
]


@pytest.mark.parametrize(("change", "column"), BAD_ROWS, ids=[c for _, c in BAD_ROWS])
def test_bad_manifest_names_row_and_column_and_writes_nothing(models, tmp_path, change, column):
    draw_photo(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    manifest = write_manifest(tmp_path, [dict(GOOD_ROW), {**GOOD_ROW, **change}])
    out = tmp_path / "edits"
    with pytest.raises(S2SError) as info:
        run(models, manifest, out)
    message = str(info.value)
    assert str(manifest) in message and "row 2" in message and f"column '{column}'" in message, message
    assert not out.exists()


def test_a_rows_seed_picks_its_generated_source(models, tmp_path):
    """A row's seed replaces the batch's for its generated source, and edit.json records the one used; a
    row without one keeps the batch's."""
    rows = [
        {**GOOD_ROW, "edit_id": "batch_seed"},
        {**GOOD_ROW, "edit_id": "own_seed", "seed": "11"},
        {**GOOD_ROW, "edit_id": "batch_seed_again", "seed": "3"},
    ]
    records = run(models, write_manifest(tmp_path, rows), tmp_path / "edits")
    assert [r["seed"] for r in records] == [3, 11, 3]
    source = {r["edit_id"]: (tmp_path / "edits" / r["edit_id"] / "source.png").read_bytes() for r in rows}
    assert source["batch_seed"] == source["batch_seed_again"]
    assert source["own_seed"] != source["batch_seed"]


def test_manifest_without_required_column(models, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("source_prompt,target_prompt\na dog,a horse\n")
    with pytest.raises(S2SError, match=r"row 1, column 'edit'"):
        run(models, manifest, tmp_path / "edits")
    manifest.write_text("source_prompt,target_prompt,edit,colour\na dog,a horse,replace,red\n")
    with pytest.raises(S2SError, match=r"unknown column\(s\) \['colour'\]"):
        run(models, manifest, tmp_path / "edits")
    assert not (tmp_path / "edits").exists()


def test_yaml_manifest_and_row_lists(models, tmp_path):
    manifest = tmp_path / "edits.yaml"
    manifest.write_text(
        "edits:\n"
        "  - {source_prompt: a dog on the beach, target_prompt: a dog on the beach, edit: reweight,\n"
        "     params: {equalizer: {dog: 2.0}, self_replace_steps: [0.1, 0.3]}}\n"
        "  - {source_prompt: a dog, target_prompt: a sks dog, edit: subject, model: lora, edit_id: mine}\n"
    )
    rows = validate_manifest(manifest, models["base"], models["model_dirs"], _defaults())
    assert [r.edit_id for r in rows] == ["001_a-dog-on-the-beach", "mine"]
    assert rows[0].spec["equalizer"] == {"dog": 2.0} and rows[0].spec["self_replace_steps"] == [0.1, 0.3]
    assert rows[1].model == "lora" and rows[1].spec["edit"] == "subject"
    rows = validate_manifest([dict(GOOD_ROW)], models["base"], models["model_dirs"], _defaults())
    assert rows[0].model == "base"
    with pytest.raises(S2SError, match=r"manifest rows, row 1, column 'model'"):
        validate_manifest(
            [{**GOOD_ROW, "edit": "subject"}],
            models["base"],
            models["model_dirs"],
            settings(subject_model=None),
        )  # two trained models: which one?


def test_a_variant_is_a_model_of_subject_edits(models, tmp_path):
    """A variant's folder (its name, its method in train_summary.json) is a row's model and the subject
    model; a name that is no model given is one line naming the manifest, row and the models given."""
    import shutil

    variant = tmp_path / "ti_long"  # a variant of textual_inversion, as the workflow's folder holds it
    shutil.copytree(models["model_dirs"]["textual_inversion"], variant)
    (variant / "train_summary.json").write_text(json.dumps({"method": "textual_inversion"}))
    model_dirs = {**models["model_dirs"], "ti_long": variant}
    subject_row = {"source_prompt": "a dog", "target_prompt": "a sks dog", "edit": "subject"}
    rows = validate_manifest(
        [{**subject_row, "model": "ti_long"}, subject_row],
        models["base"],
        model_dirs,
        settings(subject_model="ti_long"),
    )
    assert [r.model for r in rows] == ["ti_long", "ti_long"]
    with pytest.raises(S2SError) as info:
        validate_manifest([{**subject_row, "model": "ti_short"}], models["base"], model_dirs, _defaults())
    assert str(info.value) == (
        "manifest rows, row 1, column 'model': no trained model 'ti_short' given (given: textual_inversion, "
        "lora, ti_long); use base or one of them"
    )


def _defaults():
    return settings()


@pytest.mark.shared_data
def test_shared_manifest_validates_as_is(models):
    if not SHARED_MANIFEST.is_file():
        pytest.skip("../shared/data is not available")
    rows = validate_manifest(
        SHARED_MANIFEST,
        models["base"],
        {"textual_inversion": models["model_dirs"]["textual_inversion"]},
        _defaults(),
    )
    assert len(rows) == 8 and all(r.image is not None and r.image.is_file() for r in rows)
    assert {r.model for r in rows if r.edit == "subject"} == {"textual_inversion"}
    assert {r.model for r in rows if r.edit != "subject"} == {"base"}
    assert all(r.inversion == "negative_prompt" for r in rows)


def test_the_configs_blend_threshold_reaches_the_controller(models, monkeypatch):
    """edits.blend_threshold: the edit step hands the batch the checked config's settings, and every row's
    local blend gets their threshold unless the row's params set one."""
    from types import SimpleNamespace

    import s2s.edit.batch as batch
    from s2s import workflow

    config = cfgmod.check_config(
        {"subjects": {"toy": {"class": "toy", "synthetic": True}}, "edits": {"blend_threshold": 0.55}}
    )
    handed = []
    monkeypatch.setattr(batch, "run_edit_batch", lambda *args, **kwargs: handed.append(args[6]))
    smk = SimpleNamespace(
        wildcards=SimpleNamespace(subject="toy"), params=SimpleNamespace(row=dict(GOOD_ROW))
    )
    workflow.edit(smk, config)
    assert handed == [cfgmod.edit_config(config)] and handed[0].blend_threshold == 0.55
    blend = {"blend_words": ["dog", "horse"]}
    rows = validate_manifest(
        [
            {**GOOD_ROW, "params": json.dumps(blend)},
            {**GOOD_ROW, "params": json.dumps({**blend, "threshold": 0.9})},
        ],
        models["base"],
        models["model_dirs"],
        replace(handed[0], num_inference_steps=STEPS),
    )
    assert [row.controller.local_blend.threshold for row in rows] == [0.55, 0.9]
    # Without the key: the schema's default, which is also the controllers' own default (one value).
    from s2s.edit.controllers import DEFAULT_SPEC

    assert settings().blend_threshold == DEFAULT_SPEC["threshold"] == 0.3
