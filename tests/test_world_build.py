"""The world's build recipe still works (a shortened build, as CI runs it), and the committed build is the
recipe's: its files are the ones BUILD.json hashed, made with the recipe's current full settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s.world.build import BuildSettings, build_world, load_settings, min_snr_weights
from s2s.world.readout import load_readout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def short_build(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world") / "short"
    record = build_world(
        out, load_settings("short"), command="python -m s2s.world.build OUT --settings short"
    )
    return out, record


def test_short_build_writes_every_model_in_its_real_layout(short_build):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor, ViTImageProcessor, ViTModel

    out, record = short_build
    assert json.loads((out / "BUILD.json").read_text()) == json.loads(json.dumps(record))
    assert record["settings"] == asdict(load_settings("short"))
    assert set(record["seconds"]) == {"render", "vae", "clip", "unet", "classifier", "identity", "readout"}
    assert record["resumed_parts"] == [] and not out.with_name(out.name + ".parts").exists()

    pipe = StableDiffusionPipeline.from_pretrained(out / "sd", safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    image = pipe("a brown dog in the snow", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    # The diffusion model is conditioned by the world CLIP's own text tower, as SD is by CLIP's.
    clip = CLIPModel.from_pretrained(out / "clip")
    encoder = pipe.text_encoder.state_dict()
    for name, tensor in clip.text_model.state_dict().items():
        mine = encoder.get(name, encoder.get(f"text_model.{name}"))
        assert mine is not None and torch.equal(mine, tensor), name
    processor = CLIPProcessor.from_pretrained(out / "clip")
    assert processor.tokenizer("a sks dog").input_ids == pipe.tokenizer("a sks dog").input_ids

    identity = ViTModel.from_pretrained(out / "identity")
    pixels = ViTImageProcessor.from_pretrained(out / "identity")(images=[image], return_tensors="pt")
    assert identity(**pixels).last_hidden_state.shape[-1] == identity.config.hidden_size

    settings = load_settings("short")  # the read-out is built as its settings say
    readout = load_readout(out / "readout.safetensors")
    assert (readout.spatial, readout.norm) == (settings.readout_spatial, settings.readout_norm)


def test_short_build_classifier_serves_as_the_evaluation_feature_network(short_build):
    from s2s.metrics.features import FeatureView, load_feature_extractor

    out, _ = short_build
    extractor = load_feature_extractor(str(out / "classifier.safetensors"))
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    features = extractor(images)
    assert features["pool"].shape == (3, extractor.pool_dim)
    assert FeatureView(extractor, "logits").forward(images).shape == (3, extractor.num_classes)


def test_build_record_hashes_every_file(short_build):
    out, record = short_build
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "BUILD.json"}
    assert set(record["files"]) == files
    assert all(_sha256(out / name) == digest for name, digest in record["files"].items())


def test_the_readout_trains_on_fresh_scenes_of_its_own_seed(short_build, monkeypatch):
    """The read-out's scenes are its own (``READOUT_SCENE_SEED``) and show fresh individuals only, not the
    pretraining scenes with their named pool."""
    from diffusers import AutoencoderKL

    import s2s.world.build as build

    out, _ = short_build
    calls, fresh_scene_set = [], build.fresh_scene_set

    def recorded(n, seed):
        calls.append((n, seed))
        return fresh_scene_set(n, seed)

    monkeypatch.setattr(build, "fresh_scene_set", recorded)
    settings = replace(load_settings("short"), readout_steps=1, readout_fresh=4)
    model = build.train_readout(AutoencoderKL.from_pretrained(out / "sd" / "vae"), settings)
    own = settings.seed + build.READOUT_SCENE_SEED
    assert calls == [(settings.readout_scenes, own), (4 * 50, f"{own}:fresh:0")]
    assert not model.training


def test_the_readout_draws_fresh_renders_for_each_step():
    """With ``readout_fresh``, each batch holds that many renders no step saw before, chunk after chunk, with
    the labels of their own scenes (a hidden attribute ignored)."""
    import s2s.world.build as build
    from s2s.world.data import fresh_scene_set

    settings = replace(load_settings("short"), readout_fresh=3)
    stream = build._fresh_renders(settings, steps_per_chunk=2)
    batches = [next(stream) for _ in range(5)]  # three chunks
    images = torch.cat([b[0] for b in batches])
    assert [len(b[0]) for b in batches] == [3] * 5 and len({bytes(x.numpy()) for x in images}) == 15
    own = settings.seed + build.READOUT_SCENE_SEED
    for chunk in range(3):
        data = fresh_scene_set(6, f"{own}:fresh:{chunk}")
        got = images[6 * chunk : 6 * chunk + 6][: len(images) - 6 * chunk]
        assert torch.equal(got, torch.from_numpy(data.images[: len(got)]).permute(0, 3, 1, 2))
        assert torch.equal(torch.cat([b[1] for b in batches])[6 * chunk : 6 * chunk + len(got)],
                           build._readout_labels(data)[: len(got)])  # fmt: skip


def test_committed_world_is_the_recipes_full_build(world_models):
    """The committed files are those the build hashed, made with today's full settings: a change to the
    recipe without a rebuild (or a hand-edited weight file) fails here."""
    record = json.loads((world_models / "BUILD.json").read_text())
    for name, digest in record["files"].items():
        assert _sha256(world_models / name) == digest, f"{name} differs from the build's record"
    assert record["settings"] == json.loads(json.dumps(asdict(load_settings("full")))), (
        "rebuild: python -m s2s.world.build models/world"
    )
    assert record["command"].startswith("python -m s2s.world.build")


def test_a_stopped_build_resumes_by_part_and_retrains_what_changed(tmp_path, monkeypatch):
    """A build stopped in its UNet part keeps the VAE and CLIP it finished; started again it loads them
    (same files as a build in one go) and trains the rest. A changed setting retrains its part and the parts
    trained on it, and only those."""
    import s2s.world.build as build

    settings = load_settings("short")
    whole = build_world(tmp_path / "whole", settings)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "train_unet", stopped)
    with pytest.raises(KeyboardInterrupt):
        build_world(tmp_path / "out", settings)
    parts = tmp_path / "out.parts"
    assert sorted(p.name for p in parts.iterdir() if p.is_dir()) == ["clip", "vae"]
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    record = build_world(tmp_path / "out", settings)
    assert record["resumed_parts"] == ["vae", "clip"] and not parts.exists()
    for name in ("sd/vae/diffusion_pytorch_model.safetensors", "clip/model.safetensors"):
        assert record["files"][name] == whole["files"][name], name

    # Stopped again after every part but the read-out, then resumed with other CLIP settings: the VAE and
    # the parts that never read text are reused; CLIP and the UNet trained on it are trained again.
    monkeypatch.setattr(build, "train_readout", stopped)
    with pytest.raises(KeyboardInterrupt):
        build_world(tmp_path / "again", settings)
    monkeypatch.undo()
    record = build_world(tmp_path / "again", replace(settings, clip_lr=settings.clip_lr / 2))
    assert record["resumed_parts"] == ["vae", "classifier", "identity"]
    assert record["files"]["clip/model.safetensors"] != whole["files"]["clip/model.safetensors"]

    # Resumed with only the read-out to train, which renders scenes of its own: the pretraining scenes are
    # not rendered again, and the record still counts the time the first run spent on them.
    monkeypatch.setattr(build, "train_readout", stopped)
    with pytest.raises(KeyboardInterrupt):
        build_world(tmp_path / "last", settings)
    monkeypatch.undo()
    record = build_world(tmp_path / "last", settings)
    assert record["resumed_parts"] == ["vae", "clip", "unet", "classifier", "identity"]
    assert set(record["seconds"]) == set(whole["seconds"]) and record["seconds"]["render"] > 0


def test_clip_is_trained_to_read_each_word_back_from_its_state(tmp_path):
    """The word read-out term is in CLIP's loss: the same few steps with and without it train different
    weights (the committed encoder's effect: test_world_names, identifiers kept apart from "a")."""
    from transformers import CLIPTokenizer

    from s2s.world.build import train_clip
    from s2s.world.data import scene_set
    from s2s.world.tokenizer import write_world_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_world_tokenizer(tmp_path / "tokenizer"))
    data = scene_set(32, seed=0)
    settings = replace(load_settings("short"), clip_steps=2, autocast=False)
    with_words = train_clip(data, tokenizer, settings).text_model.state_dict()
    without = train_clip(data, tokenizer, replace(settings, token_loss_weight=0.0)).text_model.state_dict()
    assert any(not torch.equal(with_words[k], without[k]) for k in with_words)


def test_every_build_setting_belongs_to_a_part():
    """A setting no part lists would change the build without retraining anything on resume."""
    from dataclasses import fields

    from s2s.world.build import COMMON_SETTINGS, PART_RECIPES

    listed = set(COMMON_SETTINGS).union(*(keys for _, keys, _ in PART_RECIPES.values()))
    assert {f.name for f in fields(BuildSettings)} == listed


def test_min_snr_weights_damp_clean_timesteps_only():
    alphas = torch.linspace(0.999, 0.001, 1000)
    weights = min_snr_weights(alphas, 5.0)
    snr = alphas / (1 - alphas)
    assert torch.allclose(weights[snr <= 5], torch.ones_like(weights[snr <= 5]))
    assert torch.allclose(weights[snr > 5], 5 / snr[snr > 5]) and weights.min() < 0.01
    assert torch.equal(min_snr_weights(alphas, 0.0), torch.ones(1000))


@pytest.mark.parametrize(
    "text, message",
    [
        ("vae_stepz: 3\n", r"unknown build setting\(s\) \['vae_stepz'\]"),
        ("- 3\n", "must be a YAML mapping"),
        ("readout_norm: layer\n", r"readout_norm 'layer' must be one of \['batch', 'group'\]"),
        ("readout_fresh: 65\n", r"readout_fresh \(65\) must be from 0 to readout_batch"),
        (
            "readout_scenes: 0\nreadout_fresh: 32\n",
            "with readout_scenes 0, readout_fresh must equal readout_batch",
        ),
        (None, "no such settings file"),
    ],
)
def test_bad_settings_are_an_s2s_error_and_one_line_of_the_cli(tmp_path, capsys, text, message):
    """load_settings raises S2SError naming the file (a library function exits nothing); ``python -m
    s2s.world.build`` prints it as one line on stderr and exits with 1, before building anything."""
    import re

    from s2s.io import S2SError
    from s2s.world.build import main

    spec = tmp_path / "settings.yaml"
    if text is not None:
        spec.write_text(text)
    with pytest.raises(S2SError, match=message):
        load_settings(str(spec))
    assert main([str(tmp_path / "out"), "--settings", str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{spec}: ") and re.search(message, err)
    assert not (tmp_path / "out").exists()
