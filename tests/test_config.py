"""Config errors: one clear line each, naming the key, before any job runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s2s.config import check_config, load_schema, train_config
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
