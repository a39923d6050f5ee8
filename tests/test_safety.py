"""Untrusted files and paths: safetensors only, no pickles, no remote code, no escaping results/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from s2s.io import (
    S2SError,
    atomic_dir,
    atomic_path,
    check_safe_name,
    load_safetensors,
    save_safetensors,
    write_text,
)
from s2s.models import load_base_pipeline, load_method_pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickle_weight_files_are_refused_not_unpickled(tmp_path, suffix):
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / f"model{suffix}"
    import pickle

    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(
        S2SError, match=f"refusing to load a pickle-based weight file \\({re.escape(suffix)}\\)"
    ):
        load_safetensors(evil)
    with pytest.raises(S2SError, match="pickle-based weight file"):
        load_base_pipeline(str(evil), torch.device("cpu"), torch.float32)
    assert not marker.exists()


def test_a_model_folder_with_only_pickle_weights_is_not_loaded(tmp_path, tiny_sd):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd, folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_suffix(".bin"))  # a folder that only has .bin weights for the UNet
    with pytest.raises(S2SError, match="could not load model"):
        load_base_pipeline(str(folder), torch.device("cpu"), torch.float32)


def test_damaged_safetensors_names_the_file(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    save_safetensors({"sks": torch.ones(1, 4)}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(S2SError, match="learned_embeds.safetensors: not a readable safetensors file"):
        load_safetensors(path)


def test_missing_trained_model_names_the_rule(tmp_path, tiny_sd):
    with pytest.raises(S2SError, match="run the train_lora rule first"):
        load_method_pipeline(str(tiny_sd), "lora", tmp_path / "nope", torch.device("cpu"), torch.float32)


def test_no_trust_remote_code_and_no_unpickling_in_the_package():
    import re

    sources = [p for p in (REPO / "s2s").rglob("*.py")] + list((REPO / "workflow_scripts").glob("*.py"))
    loads = []
    for path in sources:
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        assert "pickle.load" not in text, path
        assert "shell=True" not in text and "os.system(" not in text, path
        # torch.load only in the Inception converter, and only with weights_only=True (no code runs).
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
            loads.append(path.name)
    assert set(loads) == {"inception.py"}


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "a b"])
def test_unsafe_names_cannot_escape_results(name):
    with pytest.raises(S2SError, match="not a safe name"):
        check_safe_name(name, "prompt id")


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "0.png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"\x89PNG half")
        raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_atomic_outputs_get_the_modes_of_a_plain_write(tmp_path):
    # temporary files are private (0600/0700); finished results must be readable like any file written
    # under the user's umask, e.g. by a group sharing the results folder on a cluster
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    write_text(tmp_path / "atomic.txt", "x")
    with atomic_dir(tmp_path / "atomic_dir") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert (tmp_path / "atomic_dir").stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777
