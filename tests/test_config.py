"""Config errors: one clear line each, naming the key, before any job runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s2s.config import (
    MODEL_KINDS,
    base_model,
    check_config,
    load_schema,
    metric_models,
    model_kind,
    train_config,
)
from s2s.io import S2SError

REPO = Path(__file__).resolve().parent.parent
GOOD = {"subjects": {"toy": {"synthetic": True, "class": "toy"}}}


def with_(**changes):
    config = {**GOOD}
    config.update(changes)
    return config


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (with_(colour="red"), "unknown key(s) colour at the top level"),
        (with_(training={"lora": {"rnak": 4}}), "unknown key(s) rnak under training.lora"),
        (
            with_(training={"lora": {"rank": "four"}}),
            "config key training.lora.rank: 'four' is not of type 'integer'",
        ),
        (
            with_(training={"dreambooth": {"max_train_steps": 0}}),
            "training.dreambooth.max_train_steps: 0 is less than",
        ),
        (with_(training={"dreambooth": {"max_train_steps": -5}}), "training.dreambooth.max_train_steps: -5"),
        (
            with_(sampling={"prompts": ["a dog in the snow"]}),
            "sampling.prompts.0: 'a dog in the snow' must contain",
        ),
        (
            with_(instance_prompt="a photo of a dog"),
            "instance_prompt: 'a photo of a dog' must contain the subject",
        ),
        (with_(methods=["dreambooth", "hypernetwork"]), "methods.1: 'hypernetwork' is not one of"),
        (with_(models="sd14"), "config key models: 'sd14' is not one of: hub, tiny, rehearsal, world"),
        (with_(models=True), "config key models: True is not of type 'string'"),
        (
            {"subjects": {"dog": {"class": "dog", "images": "no/such/folder"}}},
            "subjects.dog.images: folder no/such/folder",
        ),
        ({"subjects": {"../x": {"class": "dog", "synthetic": True}}}, "name '../x' is not allowed"),
        ({"subjects": {"dog": {"synthetic": True}}}, "'class' is a required property"),
        (with_(model={"name_or_path": "weights/model.ckpt"}), "pickle"),
        (
            with_(training={"textual_inversion": {"with_prior_preservation": True}}),
            "no prior-preservation loss",
        ),
        (with_(edits={"manifest": "missing.csv"}), "edits.manifest: file missing.csv does not exist"),
        ({}, "'subjects' is a required property"),
    ],
)
def test_bad_config_gives_one_clear_line(config, expected):
    with pytest.raises(S2SError) as info:
        check_config(config)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("world_models", True, "config key 'world_models' is gone: write 'models: world'"),
        ("tiny_models", True, "config key 'tiny_models' is gone: write 'models: tiny'"),
        ("rehearsal_models", True, "config key 'rehearsal_models' is gone: write 'models: rehearsal'"),
        ("tiny_models", False, "config key 'tiny_models' is gone: remove it ('models: hub' is the default)"),
    ],
)
def test_an_old_models_flag_names_the_models_key(key, value, expected):
    # Before the schema's own check (which would call it an unknown key), also beside a `models:` key.
    for config in (with_(**{key: value}), with_(models="world", **{key: value})):
        with pytest.raises(S2SError) as info:
            check_config(config)
        assert str(info.value) == expected
    # Code that reads the choice of a config that skipped check_config refuses the old flag too.
    with pytest.raises(S2SError) as info:
        model_kind({key: value})
    assert str(info.value) == expected


# What each `models` choice means: the base model and the four metric models (the values the three
# boolean flags gave before `models` replaced them).
RESULTS = "runs/r1"
WORLD = "/models/w"
MODEL_PATHS = {
    "hub": (
        "CompVis/stable-diffusion-v1-4",
        {
            "clip_model": "openai/clip-vit-large-patch14",
            "dino_model": "facebook/dino-vits16",
            "feature_extractor": "inception-v3-compat",
            "study_feature_extractor": "inception-v3-imagenet",
        },
    ),
    "tiny": (
        f"{RESULTS}/tiny_models/sd",
        {
            "clip_model": f"{RESULTS}/tiny_models/clip",
            "dino_model": f"{RESULTS}/tiny_models/dino",
            "feature_extractor": f"{RESULTS}/tiny_models/inception_like.safetensors",
            "study_feature_extractor": f"{RESULTS}/tiny_models/inception_like.safetensors",
        },
    ),
    "rehearsal": (
        f"{RESULTS}/rehearsal_models/sd",
        {
            "clip_model": f"{RESULTS}/rehearsal_models/clip",
            "dino_model": f"{RESULTS}/rehearsal_models/dino",
            "feature_extractor": f"{RESULTS}/rehearsal_models/inception-v3-compat.safetensors",
            "study_feature_extractor": f"{RESULTS}/rehearsal_models/inception-v3-imagenet.safetensors",
        },
    ),
    "world": (
        f"{WORLD}/sd",
        {
            "clip_model": f"{WORLD}/clip",
            "dino_model": f"{WORLD}/identity",
            "feature_extractor": f"{WORLD}/classifier.safetensors",
            "study_feature_extractor": f"{WORLD}/classifier.safetensors",
        },
    ),
}


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_models_choice_decides_the_base_and_metric_models(kind):
    assert set(MODEL_PATHS) == set(MODEL_KINDS)
    config = check_config(with_(models=kind, results_dir=RESULTS, world={"models": WORLD}))
    assert model_kind(config) == kind
    assert (base_model(config), metric_models(config)) == MODEL_PATHS[kind]


def test_models_default_to_the_hubs():
    assert model_kind(GOOD) == "hub"
    config = check_config(with_(results_dir=RESULTS))
    assert config["models"] == "hub" and model_kind(config) == "hub"
    assert (base_model(config), metric_models(config)) == MODEL_PATHS["hub"]
    mine = check_config(with_(model={"name_or_path": "me/my-sd"}, evaluation={"clip_model": "me/my-clip"}))
    assert base_model(mine) == "me/my-sd" and metric_models(mine)["clip_model"] == "me/my-clip"


def test_method_options_merge_shared_then_method():
    config = check_config(with_(training={"train_batch_size": 1, "lora": {"rank": 8, "train_batch_size": 3}}))
    lora, dreambooth, ti = (train_config(config, m) for m in ("lora", "dreambooth", "textual_inversion"))
    assert (lora.rank, lora.train_batch_size, lora.learning_rate) == (8, 3, 1e-4)
    assert (dreambooth.train_batch_size, dreambooth.learning_rate) == (1, 5e-6)
    assert (ti.learning_rate, ti.max_train_steps, ti.with_prior_preservation) == (5e-4, 2000, False)


def test_every_schema_key_is_documented():
    readme = (REPO / "config" / "README.md").read_text()

    def walk(schema, prefix=""):
        for name, sub in schema.get("properties", {}).items():
            if name == "<<":
                continue
            key = f"{prefix}{name}"
            yield key
            yield from walk(sub, key + ".")

    missing = [k for k in walk(load_schema()) if f"`{k}`" not in readme]
    assert not missing, f"keys missing from config/README.md: {missing}"


def test_shipped_configs_are_valid(shared_data):
    # paper.yaml names the study's photos in ../shared/data (skipped where that folder is absent)
    for name in ("config.yaml", "paper.yaml"):
        check_config(yaml.safe_load((REPO / "config" / name).read_text()), base_dir=REPO)


def test_workflow_refuses_an_old_models_flag_before_any_job(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump({"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "world_models": True})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(old)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert (
        "s2s config error: config key 'world_models' is gone: write 'models: world'"
        in proc.stderr + proc.stdout
    )


def test_workflow_reports_config_error_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "methdos": ["lora"]})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "s2s config error: config: unknown key(s) methdos at the top level" in proc.stderr + proc.stdout


def test_a_new_key_reruns_only_off_its_default():
    """edits.blend_threshold / start_blend and world.report_check came after results existed: at their default
    an edit's params and the config's hash are those of before (nothing re-runs); any other value counts."""
    from s2s.config import config_hash, depends_edit

    row = {"edit_id": "e", "source_prompt": "a dog", "target_prompt": "a cat", "edit": "replace"}
    before = check_config(GOOD)
    for key, value in (("blend_threshold", 0.5), ("start_blend", 0.4)):
        assert key in before["edits"] and key not in depends_edit(before, row)
        changed = check_config(with_(edits={key: value}))
        assert depends_edit(changed, row) != depends_edit(
            before, row
        ) and f'"{key}": {value}' in depends_edit(changed, row)
        assert config_hash(changed) != config_hash(before)
    assert config_hash(check_config(with_(world={"report_check": True}))) != config_hash(before)
    old = {
        **before,
        "edits": {k: v for k, v in before["edits"].items() if k not in ("blend_threshold", "start_blend")},
        "world": {k: v for k, v in before["world"].items() if k != "report_check"},
    }
    assert config_hash(old) == config_hash(before)


def test_stage_configs_are_built_from_the_checked_config_alone():
    """Sampling, class images, edits, evaluation, world and the edit benchmark: typed, every schema key a
    field, every value from the checked config (defaults only in the schema: no field has one, and an
    unchecked config is refused instead of completed)."""
    from dataclasses import MISSING, fields

    from s2s import config as cfgmod

    builders = {
        "sampling": cfgmod.sampling_config,
        "class_images": cfgmod.class_images_config,
        "edits": cfgmod.edit_config,
        "evaluation": cfgmod.evaluation_config,
        "world": cfgmod.world_config,
        "edit_bench": cfgmod.edit_bench_config,
    }
    ignored = {"sampling": {"prompt_chunk_size"}}  # a key kept so that old configs load; nothing reads it
    changes = {
        "sampling": {"seeds": [5], "scheduler": "euler"},
        "class_images": {"batch_size": 3},
        "edits": {"blend_threshold": 0.5, "inversion": "ddim"},
        "evaluation": {"n_boot": 20},
        "world": {"check_seeds": 3},
        "edit_bench": {"cases": 5, "methods": ["baseline"]},
    }
    config = check_config(with_(**changes))
    schema = load_schema()["properties"]
    for section, build in builders.items():
        typed = build(config)
        names = {f.name for f in fields(typed)}
        assert set(schema[section]["properties"]) - ignored.get(section, set()) <= names, section
        assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(typed)), section
        for key, value in changes[section].items():
            assert getattr(typed, key) == value, (section, key)
        with pytest.raises(KeyError):
            build({**config, section: {}})
