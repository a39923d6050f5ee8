"""Conda envs agree with pyproject's pins; offline mode names the missing model and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from s2s.io import S2SError

REPO = Path(__file__).resolve().parent.parent


def test_conda_envs_pin_the_same_versions_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"]
    expected = {p.split("==")[0].lower(): p.split("==")[1] for p in pins}
    gpu = {p.split("==")[0].lower(): p.split("==")[1] for p in project["optional-dependencies"]["gpu"]}
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        found = {p.split("==")[0].lower(): p.split("==")[1] for p in pip}
        assert found == (expected | gpu if env.name == "s2s-gpu.yaml" else expected), env.name
        assert not any(p.startswith("-e") for p in pip), "a relative editable install breaks in conda jobs"


def test_every_rule_that_runs_code_has_a_conda_env_and_a_log():
    text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    scripts = text.count("script:")  # target rules (only inputs) run nothing and need neither
    assert scripts >= 15 and text.count("conda:") == scripts and text.count("log:") == scripts


def test_offline_missing_model_gives_one_line_with_the_prefetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from s2s.models import load_base_pipeline

    with pytest.raises(S2SError) as info:
        load_base_pipeline("CompVis/stable-diffusion-v1-4", torch.device("cpu"), torch.float32)
    message = str(info.value)
    assert "CompVis/stable-diffusion-v1-4" in message and "snakemake prefetch" in message
    assert "\n" not in message


def test_prefetch_lists_every_model_of_the_paper_config(shared_data):
    from s2s.config import base_model, check_config, metric_models
    from s2s.prefetch import models_to_fetch

    config = check_config(yaml.safe_load((REPO / "config" / "paper.yaml").read_text()), base_dir=REPO)
    wanted = models_to_fetch(base_model(config), metric_models(config))
    assert wanted == {
        "model.name_or_path": "CompVis/stable-diffusion-v1-4",
        "evaluation.clip_model": "openai/clip-vit-large-patch14",
        "evaluation.dino_model": "facebook/dino-vits16",
    }
