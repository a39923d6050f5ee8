"""Datasets of the world, rendered once (deterministically from a seed) and kept as uint8 arrays.

Rendering costs ~9 ms an image, so every model of the build trains on one pre-rendered set (flipped at
random) instead of rendering every step; the sets are large enough that no model sees an image often.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from s2s.world.captions import name_caption, random_caption
from s2s.world.names import RARE_WORDS, named_individuals, rare_words_meaning, weak_words
from s2s.world.render import render
from s2s.world.scene import (
    ALL_CONTEXTS,
    ATTRIBUTES,
    CLASSES,
    COLOURS,
    Individual,
    Scene,
    attributes,
    random_individual,
    random_scene,
)

COLOUR_NAMES = tuple(COLOURS)


@dataclass
class SceneSet:
    images: np.ndarray  # uint8 [N, 64, 64, 3]
    captions: list[str]
    cls: np.ndarray  # int64 [N], index into CLASSES
    colour: np.ndarray  # index into COLOUR_NAMES
    context: np.ndarray  # index into ALL_CONTEXTS
    individual: np.ndarray  # index into the individuals the set was drawn from (-1: a fresh one each)
    attributes: np.ndarray | None = None  # int64 [N, len(ATTRIBUTES)], index into each ATTRIBUTES[key]


def attribute_row(ind: Individual) -> list[int]:
    return [ATTRIBUTES[key].index(value) for key, value in attributes(ind).items()]


def _labels(scene: Scene) -> tuple[int, int, int]:
    ind = scene.individual
    return CLASSES.index(ind.cls), COLOUR_NAMES.index(ind.colour_word), ALL_CONTEXTS.index(scene.context)


def scene_set(
    n: int, seed: int | str, p_colour: float = 0.7, p_named: float = 0.4, p_named_caption: float = 0.85,
    p_weak: float = 0.02, p_weak_meaning: float = 0.6,
) -> SceneSet:  # fmt: skip
    """``n`` random scenes with pretraining captions. A share ``p_named`` shows the named individuals
    (``s2s.world.names``), called by their name in ``p_named_caption`` of their captions; a share ``p_weak``
    puts a rare word or a held-out identifier before the class noun of a random individual (a rare word is,
    in ``p_weak_meaning`` of them, one that weakly means the individual's body colour); the rest are random
    scenes (class, colour, context, individual, pose) with plain captions.

    Which rare word captions a scene is drawn from a stream of its own, so that the scenes, and the models
    trained on images alone (VAE, classifier, read-out), do not change with the captions' recipe."""
    rng = random.Random(seed)
    meaning_rng = random.Random(f"{seed}:weak-meanings")
    named = named_individuals()
    weak = weak_words()
    images, captions, labels, who, attrs = [], [], [], [], []
    for _ in range(n):
        draw = rng.random()
        if draw < p_named:
            index = rng.randrange(len(named))
            name, individual = named[index]
            scene = random_scene(rng, individual=individual)
            if rng.random() < p_named_caption:
                text = name_caption(scene, name, photo_of=rng.random() < 0.5)
            else:
                text = random_caption(rng, scene, p_colour)
        elif draw < p_named + p_weak:
            index = -1
            scene = random_scene(rng)
            word = rng.choice(weak)
            if word in RARE_WORDS and meaning_rng.random() < p_weak_meaning:
                word = meaning_rng.choice(rare_words_meaning(scene.individual.colour_word))
            text = name_caption(scene, word, photo_of=rng.random() < 0.5)
        else:
            index = -1
            scene = random_scene(rng)
            text = random_caption(rng, scene, p_colour)
        images.append(np.asarray(render(scene)))
        captions.append(text)
        labels.append(_labels(scene))
        who.append(index)
        attrs.append(attribute_row(scene.individual))
    cls, colour, context = (np.array(col, dtype=np.int64) for col in zip(*labels))
    return SceneSet(
        np.stack(images), captions, cls, colour, context, np.array(who, dtype=np.int64),
        np.array(attrs, dtype=np.int64),
    )  # fmt: skip


def fresh_scene_set(n: int, seed: int | str) -> SceneSet:
    """``n`` random scenes, each of an individual drawn for it (none of the named pool): what a model that
    must read individuals it never saw trains and is measured on (the attribute read-out)."""
    return scene_set(n, seed, p_named=0.0)


def individuals(n: int, seed: int) -> list[Individual]:
    """``n`` individuals, classes in turn, colours at random."""
    rng = random.Random(seed)
    return [random_individual(rng, CLASSES[i % len(CLASSES)]) for i in range(n)]


def identity_set(people: list[Individual], photos_each: int, seed: int) -> SceneSet:
    """Each individual in ``photos_each`` scenes (any context, pose, scale): identity across contexts."""
    rng = random.Random(seed)
    images, captions, labels = [], [], []
    for index, ind in enumerate(people):
        for _ in range(photos_each):
            scene = random_scene(rng, individual=ind)
            images.append(np.asarray(render(scene)))
            captions.append(random_caption(rng, scene))
            labels.append((*_labels(scene), index))
    cls, colour, context, who = (np.array(col, dtype=np.int64) for col in zip(*labels))
    rows = np.array([attribute_row(ind) for ind in people], dtype=np.int64)[who]
    return SceneSet(np.stack(images), captions, cls, colour, context, who, rows)
