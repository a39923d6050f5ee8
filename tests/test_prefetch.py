"""prefetch fetches exactly the files the run loads, checks them, and reports sizes (against a fake hub)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from s2s.io import S2SError, save_safetensors
from s2s.prefetch import prefetch

SD_ID = "CompVis/stable-diffusion-v1-4"
CLIP_ID = "openai/clip-vit-large-patch14"

# What StableDiffusionPipeline.from_pretrained(..., use_safetensors=True, safety_checker=None,
# feature_extractor=None) reads
# from SD v1.4's repository, written out by hand from its layout.
SD_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}
CLIP_FILES = {
    "config.json",
    "merges.txt",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "model.safetensors",
}


def _junk_safetensors(path: Path) -> None:
    save_safetensors({"w": torch.zeros(3)}, path)


@pytest.fixture
def fake_hub(tiny_sd, tmp_path, monkeypatch):
    """A local folder per repository, laid out like the real ones (safety checker, fp16 / ema variants,
    pickles, checkpoints, README), served through huggingface_hub's functions; requests recorded."""
    from transformers import CLIPImageProcessor

    from s2s.clip_tokenizer import write_clip_tokenizer

    root = tmp_path / "hub"
    sd = root / SD_ID
    shutil.copytree(tiny_sd, sd)
    index = json.loads((sd / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (sd / "model_index.json").write_text(json.dumps(index))
    CLIPImageProcessor().save_pretrained(sd / "feature_extractor")
    shutil.rmtree(sd / "tokenizer")  # SD v1.4's tokenizer files instead of the tiny tokenizer.json
    write_clip_tokenizer(sd / "tokenizer")
    (sd / "safety_checker").mkdir()
    (sd / "safety_checker" / "config.json").write_text("{}")
    for extra in [
        "safety_checker/model.safetensors",
        "safety_checker/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.ema.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors",
    ]:
        _junk_safetensors(sd / extra)
    for pickle in ["safety_checker/pytorch_model.bin", "unet/diffusion_pytorch_model.bin",
                   "unet/diffusion_pytorch_model.non_ema.bin", "vae/diffusion_pytorch_model.bin",
                   "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin", "sd-v1-4.ckpt",
                   "sd-v1-4-full-ema.ckpt"]:  # fmt: skip
        (sd / pickle).write_bytes(b"pickle")
    (sd / "unet/diffusion_pytorch_model.safetensors.index.fp16.json").write_text("{}")
    for other in ["README.md", ".gitattributes", "v1-variants-scores.jpg"]:
        (sd / other).write_text("x")

    clip = root / CLIP_ID
    clip.mkdir(parents=True)
    for name in CLIP_FILES - {"model.safetensors"}:
        (clip / name).write_text("{}")
    _junk_safetensors(clip / "model.safetensors")
    for other in ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "README.md", ".gitattributes"]:
        (clip / other).write_text("x")

    import huggingface_hub

    requested: dict[str, list[str]] = {}

    def list_repo_files(repo_id, **kwargs):
        folder = root / repo_id
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def hf_hub_download(repo_id, filename, **kwargs):
        requested.setdefault(repo_id, []).append(filename)
        return str(root / repo_id / filename)

    def no_snapshots(*args, **kwargs):
        raise AssertionError("snapshot_download fetches whole repositories")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_snapshots)
    return root, requested


def test_prefetch_requests_exactly_what_the_run_loads(fake_hub, tmp_path, caplog):
    root, requested = fake_hub
    with caplog.at_level(logging.INFO, logger="s2s.prefetch"):
        record = prefetch(
            SD_ID, {"clip_model": CLIP_ID, "feature_extractor": None}, tmp_path / "prefetch.json"
        )
    assert set(requested[SD_ID]) == SD_FILES and len(requested[SD_ID]) == len(SD_FILES)
    assert set(requested[CLIP_ID]) == CLIP_FILES
    # Sizes per file and in total, in the record and the log.
    sd = record["model.name_or_path"]
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert sd["files"][unet] == (root / SD_ID / unet).stat().st_size
    assert sd["bytes"] == sum((root / SD_ID / f).stat().st_size for f in SD_FILES)
    assert (
        json.loads((tmp_path / "prefetch.json").read_text())["evaluation.clip_model"]["files"].keys()
        == CLIP_FILES
    )
    assert any(unet in line and re.search(r"\d (B|KiB|MiB|GiB)$", line) for line in caplog.messages)
    assert any("in all" in line for line in caplog.messages)


def test_the_fetched_files_are_enough_to_load_the_pipeline(fake_hub, tmp_path):
    from s2s.models import load_base_pipeline

    root, requested = fake_hub
    prefetch(SD_ID, {}, tmp_path / "prefetch.json")
    local = tmp_path / "local"
    for name in requested[SD_ID]:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / SD_ID / name, local / name)
    pipe = load_base_pipeline(str(local), torch.device("cpu"), torch.float32)
    assert pipe.safety_checker is None and pipe.feature_extractor is None


def test_a_damaged_safetensors_file_gives_one_line(fake_hub, tmp_path):
    root, _ = fake_hub
    unet = root / SD_ID / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])  # an interrupted download
    with pytest.raises(S2SError) as info:
        prefetch(SD_ID, {}, tmp_path / "prefetch.json")
    message = str(info.value)
    assert "\n" not in message and f"{SD_ID}/unet/diffusion_pytorch_model.safetensors" in message
    assert "snakemake prefetch" in message and not (tmp_path / "prefetch.json").exists()


def test_prefetch_converts_the_inception_networks_the_evaluation_loads(fake_hub, tmp_path, monkeypatch):
    from s2s.metrics import inception

    converted = []

    def fetch(spec):  # the download and conversion are tested in test_inception.py
        converted.append(spec)
        path = tmp_path / f"{spec}.safetensors"
        _junk_safetensors(path)
        return {"name": spec, "path": str(path)}

    monkeypatch.setattr(inception, "fetch_inception", fetch)
    both = {"feature_extractor": "inception-v3-compat", "study_feature_extractor": "inception-v3-imagenet"}
    record = prefetch(SD_ID, both, tmp_path / "a.json")
    assert converted == ["inception-v3-compat", "inception-v3-imagenet"]
    assert record["evaluation.feature_extractor:inception-v3-compat"]["bytes"] > 0
    converted.clear()
    prefetch(SD_ID, {"feature_extractor": str(tmp_path / "tiny.safetensors")}, tmp_path / "b.json")
    assert converted == []
