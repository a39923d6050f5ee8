"""Checks made when the workflow is parsed: optional dependencies and offline models (no torch needed)."""

from __future__ import annotations

import pytest

from s2s import preflight
from s2s.io import S2SError

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def config_with_8bit(method="dreambooth"):
    return {"methods": ["dreambooth", "lora"], "training": {method: {"use_8bit_adam": True}}}


def test_8bit_adam_without_bitsandbytes_is_one_line_naming_the_key(monkeypatch):
    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(
        preflight.importlib.util, "find_spec", lambda n: None if n == "bitsandbytes" else real(n)
    )
    with pytest.raises(S2SError, match=r"training\.dreambooth\.use_8bit_adam: 8-bit Adam needs bitsandbytes"):
        preflight.check_optional_dependencies(config_with_8bit(), use_conda=False, workflow_dir=REPO)
    preflight.check_optional_dependencies({"methods": ["lora"]}, use_conda=False, workflow_dir=REPO)
    # A shared key applies to every method that does not override it.
    shared = {"methods": ["lora"], "training": {"use_8bit_adam": True}}
    assert preflight.methods_with_8bit_adam(shared) == ["lora"]


def test_with_conda_the_gpu_environment_must_install_bitsandbytes(tmp_path):
    preflight.check_optional_dependencies(config_with_8bit(), use_conda=True, workflow_dir=REPO)
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "s2s-gpu.yaml").write_text("dependencies: [python=3.11]\n")
    with pytest.raises(S2SError, match="does not install bitsandbytes"):
        preflight.check_optional_dependencies(config_with_8bit(), use_conda=True, workflow_dir=tmp_path)


def test_offline_mode_names_an_uncached_hub_model_and_the_prefetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    models = {"model.name_or_path": "CompVis/stable-diffusion-v1-4", "evaluation.dino_model": None}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    preflight.check_offline_models(models)  # online: nothing to check
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        S2SError, match=r"model\.name_or_path: CompVis/stable-diffusion-v1-4 .*snakemake prefetch"
    ):
        preflight.check_offline_models(models)
    preflight.check_offline_models({"model.name_or_path": str(tmp_path)})  # a local folder is not fetched
    # A cached snapshot (the hub cache's layout) passes.
    snapshot = tmp_path / "hf" / "hub" / "models--CompVis--stable-diffusion-v1-4" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    preflight.check_offline_models(models)


def test_fp16_on_a_cpu_run_is_refused_before_any_job():
    config = {"device": "cpu", "methods": ["lora", "dreambooth"], "training": {"mixed_precision": "fp16"}}
    # The key the config sets: the shared one.
    with pytest.raises(S2SError, match=r"key training\.mixed_precision: fp16 needs a CUDA GPU"):
        preflight.check_precision(config)
    preflight.check_precision(
        {
            **config,
            "training": {
                "mixed_precision": "fp16",
                "lora": {"mixed_precision": "bf16"},
                "dreambooth": {"mixed_precision": "no"},
            },
        }
    )
    preflight.check_precision({**config, "device": "auto"})  # the GPU node decides
