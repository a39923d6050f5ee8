"""The world study's measurements on constructed inputs, where the right answer is known."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from s2s.io import save_png
from s2s.world.render import render
from s2s.world.scene import random_scene
from s2s.world_studies.study import class_drift, identity_similarity, prompt_fidelity, prompt_parts


def test_prompt_parts_reads_the_subject_phrase_as_its_class():
    # the subject's token is not read as a name: the prompt asks for a dog in the snow
    assert prompt_parts("a sks dog in the snow", "sks dog") == {
        "colour": None,
        "name": None,
        "class": "dog",
        "context": "in the snow",
    }
    assert prompt_parts("a photo of a dog", "sks dog")["context"] == "plain"
    with pytest.raises(ValueError, match="not in the world's language"):
        prompt_parts("a sks dog in a volcano", "sks dog")


class ContextReader:
    """A stand-in classifier that "sees" the context a file's name says."""

    def __init__(self, answers):
        self.answers = answers

    def predict(self, images):
        return {"class": ["dog"] * len(images), "context": self.answers[: len(images)]}


def test_prompt_fidelity_counts_the_prompted_context(tmp_path):
    image = render(random_scene(random.Random(0), cls="dog", context="in the snow"))
    samples = []
    for i, prompt in enumerate(["a sks dog in the snow"] * 2 + ["a sks dog on the beach"] * 2):
        save_png(image, tmp_path / f"{i}.png")
        samples.append({"path": tmp_path / f"{i}.png", "prompt": prompt})
    reader = ContextReader(["in the snow", "in the snow", "on the beach", "in the jungle"])
    result = prompt_fidelity(samples, reader, "sks dog", n_boot=50)
    assert result["context_rate"]["value"] == pytest.approx(0.75)
    assert result["class_rate"]["value"] == 1.0
    assert result["n_prompts"] == 2
    assert result["context_rate"]["ci_low"] <= 0.75 <= result["context_rate"]["ci_high"]


class PixelIdentity:
    """A stand-in identity network: the embedding is the mean colour, so alike images are alike."""

    def __call__(self, pixel_values):
        cls = pixel_values.mean(dim=(2, 3))
        return type("Out", (), {"last_hidden_state": cls[:, None, :]})()


def processor(images, return_tensors="pt"):
    arrays = np.stack([np.asarray(im, dtype=np.float32) / 255 - 0.5 for im in images])
    return {"pixel_values": torch.from_numpy(arrays).permute(0, 3, 1, 2)}


def test_class_drift_is_positive_when_samples_move_toward_the_subject():
    from PIL import Image

    def solid(rgb):
        return Image.new("RGB", (8, 8), rgb)

    subject = [solid((250, 20, 20))]
    base = [solid((20, 20, 250 - i)) for i in range(6)]
    toward = [solid((250 - 10 * i, 20, 20)) for i in range(6)]
    identity = (PixelIdentity(), processor)
    assert (
        identity_similarity(toward, subject, identity).mean()
        > identity_similarity(base, subject, identity).mean()
    )
    drift = class_drift(base, toward, subject, identity, n_boot=100)
    assert drift["difference"] > 0 and drift["ci_low"] > 0 and drift["n_pairs"] == 6
    same = class_drift(base, base, subject, identity, n_boot=100)
    assert same["difference"] == 0
