"""Shared fixtures: the tiny models are built once per test session (offline, from a seed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    from s2s.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd", seed=0, resolution=64)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from s2s.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "clip", seed=1)


@pytest.fixture(scope="session")
def toy_instance(tmp_path_factory) -> Path:
    """Eight prepared 64 px images of the procedurally drawn toy."""
    from s2s.data import draw_synthetic_subject, prepare_subject

    root = tmp_path_factory.mktemp("toy")
    draw_synthetic_subject(root / "photos", 8, seed=0, resolution=64)
    prepare_subject(root / "photos", root / "instance", 64)
    return root / "instance"


@pytest.fixture(scope="session")
def toy_class_images(tmp_path_factory) -> Path:
    from s2s.data import draw_synthetic_subject, prepare_subject

    root = tmp_path_factory.mktemp("toy_class")
    draw_synthetic_subject(root / "photos", 6, seed=99, resolution=64)
    prepare_subject(root / "photos", root / "class_images", 64)
    return root / "class_images"


@pytest.fixture(scope="session")
def world_models() -> Path:
    """The committed world models (models/world, see BUILD.json); S2S_WORLD_MODELS points elsewhere."""
    path = Path(os.environ.get("S2S_WORLD_MODELS", REPO / "models" / "world"))
    if not (path / "BUILD.json").is_file():
        raise FileNotFoundError(f"{path}/BUILD.json: no world models (python -m s2s.world.build)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny latents gain nothing from intra-op threads, and on a shared CPU OpenMP's spinning threads
    make tests up to 10x slower; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd):
    """A fresh StableDiffusionPipeline of the tiny model per test module (tests install processors)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe
