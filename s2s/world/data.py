"""Datasets of the world, rendered once (deterministically from a seed) and kept as uint8 arrays.

Rendering costs ~9 ms an image, so every model of the build trains on one pre-rendered set (flipped at
random) instead of rendering every step; the sets are large enough that no model sees an image often.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from s2s.world.captions import random_caption
from s2s.world.render import render
from s2s.world.scene import ALL_CONTEXTS, CLASSES, COLOURS, Individual, random_individual, random_scene

COLOUR_NAMES = tuple(COLOURS)


@dataclass
class SceneSet:
    images: np.ndarray  # uint8 [N, 64, 64, 3]
    captions: list[str]
    cls: np.ndarray  # int64 [N], index into CLASSES
    colour: np.ndarray  # index into COLOUR_NAMES
    context: np.ndarray  # index into ALL_CONTEXTS
    individual: np.ndarray  # index into the individuals the set was drawn from (-1: a fresh one each)


def scene_set(n: int, seed: int, p_colour: float = 0.7) -> SceneSet:
    """``n`` random scenes (random class, colour, context, individual, pose) with pretraining captions."""
    rng = random.Random(seed)
    images, captions, labels = [], [], []
    for _ in range(n):
        scene = random_scene(rng)
        images.append(np.asarray(render(scene)))
        captions.append(random_caption(rng, scene, p_colour))
        ind = scene.individual
        labels.append(
            (CLASSES.index(ind.cls), COLOUR_NAMES.index(ind.colour_word), ALL_CONTEXTS.index(scene.context))
        )
    cls, colour, context = (np.array(col, dtype=np.int64) for col in zip(*labels))
    return SceneSet(np.stack(images), captions, cls, colour, context, np.full(n, -1, dtype=np.int64))


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
            labels.append(
                (
                    CLASSES.index(ind.cls),
                    COLOUR_NAMES.index(ind.colour_word),
                    ALL_CONTEXTS.index(scene.context),
                    index,
                )
            )
    cls, colour, context, who = (np.array(col, dtype=np.int64) for col in zip(*labels))
    return SceneSet(np.stack(images), captions, cls, colour, context, who)
