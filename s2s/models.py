"""Loading Stable Diffusion pipelines: the base model and each trained method, the standard way.

The same code loads the demo's tiny model and ``CompVis/stable-diffusion-v1-4`` (hub id or local
folder). Only safetensors weights are read (``use_safetensors=True``); ``trust_remote_code`` is never
set.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from s2s import registry
from s2s.io import PICKLE_SUFFIXES, S2SError
from s2s.progress import quiet_libraries

log = logging.getLogger(__name__)

METHODS = registry.NAMES
SAMPLE_METHODS = (registry.BASE, *METHODS)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise S2SError(f"device {requested!r} was requested (config key 'device') but no CUDA GPU is visible")
    return torch.device(requested)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Inference dtype: the training's half precision where the device has it (bf16 also on CPU, where the
    rehearsal runs the half-precision paths with it; fp16 only on CUDA)."""
    if precision == "no" or (precision == "fp16" and device.type == "cpu"):
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise S2SError(f"unknown precision {precision!r}; use one of no, fp16, bf16")


def check_model_source(name_or_path: str, key: str) -> None:
    """Refuse pickle weight files given as a model; give a clear line for a missing local model."""
    path = Path(name_or_path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise S2SError(
            f"config key {key}: {name_or_path} is a pickle-based weight file; only safetensors "
            "weights are loaded. Convert it to safetensors first."
        )
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists() or name_or_path.count("/") != 1
    if looks_local and not path.exists():
        raise S2SError(f"config key {key}: model folder {name_or_path} does not exist")


def offline_hint(name_or_path: str, key: str, exc: Exception) -> S2SError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = (
        "run `snakemake prefetch --cores 1` on a machine with internet first"
        if offline
        else "check the hub id, or download it and point the config at the local folder"
    )
    return S2SError(f"config key {key}: could not load model {name_or_path!r} ({type(exc).__name__}); {hint}")


def load_base_pipeline(
    name_or_path: str, device: torch.device, dtype: torch.dtype, key: str = "model.name_or_path"
):
    """Load a StableDiffusionPipeline with no safety checker, from a hub id or a local folder."""
    quiet_libraries()
    from diffusers import StableDiffusionPipeline

    check_model_source(name_or_path, key)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            name_or_path,
            dtype=dtype,
            use_safetensors=True,
            safety_checker=None,
            # Used only by the safety checker; not loading it also avoids transformers' "requires
            # torchvision" fallback warning for the CLIPImageProcessor named in model_index.json.
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        raise offline_hint(name_or_path, key, exc) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def trained_method(name: str, model_dir: Path) -> str:
    """The method a trained model folder holds: ``name`` if it is a method's, else (a variant's name) the
    method its training summary records."""
    if name in registry.METHODS:
        return name
    summary = Path(model_dir) / "train_summary.json"
    if not summary.exists():
        raise S2SError(f"{summary}: not found; {name!r} is no method, and its folder says of no variant")
    return json.loads(summary.read_text())["method"]


def method_weights_path(model_dir: Path, method: str) -> Path:
    """The file (DreamBooth: the folder's model_index.json) a trained model of ``method`` must have."""
    if method not in registry.METHODS:
        raise S2SError(f"unknown method {method!r}; use one of {', '.join(SAMPLE_METHODS)}")
    return registry.method_class(method).weights_path(model_dir)


def load_method_pipeline(
    base_model: str,
    method: str,
    model_dir: Path | str | None,
    device: torch.device,
    dtype: torch.dtype,
):
    """Load the pipeline of one method (or variant): base, or the method's own plain-diffusers loading
    (``load_pipeline`` of its class: DreamBooth's folder, base + LoRA, base + TI embedding, ...)."""
    if method == registry.BASE:
        return load_base_pipeline(base_model, device, dtype)
    model_dir = Path(model_dir)
    kind = trained_method(method, model_dir)
    weights = method_weights_path(model_dir, kind)
    if not weights.exists():
        raise S2SError(f"{weights}: trained {method} model not found; run the train_{method} rule first")
    return registry.method_class(kind).load_pipeline(base_model, model_dir, device, dtype)
