"""The miniature world's renderer and captions (issue 15): deterministic, every context and class distinct."""

from __future__ import annotations

import random

import numpy as np
import pytest

from s2s.world.captions import caption, parse_prompt
from s2s.world.render import SIZE, render
from s2s.world.scene import (
    ALL_CONTEXTS,
    CLASSES,
    COLOURS,
    CONTEXTS,
    PLAIN,
    photo_of,
    random_individual,
    random_scene,
)


def pixels(scene) -> np.ndarray:
    return np.asarray(render(scene), dtype=np.float32)


def test_the_same_scene_gives_the_same_pixels_and_a_64px_rgb_image():
    scene = random_scene(random.Random(3), cls="dog", context="in the snow")
    image = render(scene)
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert np.array_equal(pixels(scene), pixels(scene))


def test_every_context_changes_the_image_of_the_same_object():
    ind = random_individual(random.Random(0), "cat", "orange")
    base = random_scene(random.Random(1), individual=ind, context=PLAIN)
    images = {c: pixels(type(base)(**{**base.__dict__, "context": c})) for c in ALL_CONTEXTS}
    for a in ALL_CONTEXTS:
        for b in ALL_CONTEXTS:
            if a < b:
                assert np.abs(images[a] - images[b]).mean() > 2.0, (a, b)


def test_classes_differ_in_shape_not_only_colour():
    rng = random.Random(5)
    scenes = {cls: random_scene(rng, cls=cls, colour="blue", context=PLAIN) for cls in CLASSES}
    # Same pose and background for all: only the object's shape differs.
    ref = scenes["dog"]
    masks = {}
    for cls, scene in scenes.items():
        scene = type(ref)(**{**ref.__dict__, "individual": scene.individual})
        background = type(ref)(**{**ref.__dict__, "scale": 0.0001})
        masks[cls] = np.abs(pixels(scene) - pixels(background)).sum(-1) > 30
    for a in CLASSES:
        for b in CLASSES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)


def test_an_individual_looks_the_same_in_every_photo_and_unlike_another():
    rng = random.Random(7)
    subject = random_individual(rng, "dog", "brown")
    other = random_individual(rng, "dog", "brown")
    one = photo_of(random.Random(1), subject)
    assert pixels(type(one)(**{**one.__dict__, "individual": subject})).shape == (SIZE, SIZE, 3)
    same_pose_other = type(one)(**{**one.__dict__, "individual": other})
    assert np.abs(pixels(one) - pixels(same_pose_other)).mean() > 1.0


@pytest.mark.parametrize("context", CONTEXTS)
def test_captions_read_like_the_studys_prompts_and_parse_back(context):
    scene = random_scene(random.Random(2), cls="teapot", colour="orange", context=context)
    text = caption(scene)
    assert text == f"an orange teapot {context}"
    assert parse_prompt(text) == {"colour": "orange", "name": None, "class": "teapot", "context": context}
    assert caption(scene, with_colour=False) == f"a teapot {context}"


def test_plain_scenes_are_photos_of_a_class_and_unknown_words_are_refused():
    scene = random_scene(random.Random(2), cls="dog", colour="white", context=PLAIN)
    assert caption(scene, with_colour=False) == "a photo of a dog"
    assert parse_prompt("a photo of a dog") == {
        "colour": None,
        "name": None,
        "class": "dog",
        "context": PLAIN,
    }
    assert set(COLOURS) >= {
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "brown",
        "black",
        "white",
        "gray",
    }
    with pytest.raises(ValueError, match="not in the world's language"):
        parse_prompt("a pink dog in the snow")
