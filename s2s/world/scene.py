"""The world's vocabulary and its scene descriptions.

A scene is one object (a class, an individual of it, optionally a colour word) in a context (one of the
study's 20 prompt contexts, or a plain photo background), at a position, scale and facing. Individuals are
families: each class has body proportions, markings and a secondary colour that vary from individual to
individual, so that "a photo of a dog" has a distribution, as a class prior needs.

What tells one individual from another is discrete, so that a network can read it back and a sample can
be checked against the renderer's truth (``attributes``): the body's colour word, the accent's colour word,
the marking's kind and place, the build (short, medium or long body), and the sizes of head, ears and
tail. Each comes with a small jitter, so that two individuals with the same attributes still differ.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

CLASSES = ("dog", "cat", "teapot", "backpack", "toy")
ANIMALS = ("dog", "cat")

# The colour words and the body colour each stands for (an individual's colour varies around it).
COLOURS = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (235, 210, 50),
    "green": (60, 160, 60),
    "blue": (50, 90, 210),
    "purple": (130, 60, 170),
    "brown": (120, 75, 40),
    "black": (30, 30, 30),
    "white": (240, 240, 235),
    "gray": (130, 130, 130),
}

# The study's 20 evaluation contexts, in its order ("a {} in the jungle", ...), then the plain photo.
CONTEXTS = (
    "in the jungle",
    "in the snow",
    "on the beach",
    "on top of a wooden floor",
    "with a mountain in the background",
    "with a city in the background",
    "with a blue house in the background",
    "wearing a red hat",
    "wearing a yellow shirt",
    "sitting near the window",
    "on top of green grass with sunflowers around it",
    "wearing a tuxedo",
    "walking on a red carpet on the beach",
    "on top of the sidewalk in a crowded city",
    "with the Taj Mahal in the background",
    "getting a bath",
    "surfing on a wave",
    "floating in space",
    "jumping in the air",
    "sleeping on a bed",
)
PLAIN = "plain"
ALL_CONTEXTS = (*CONTEXTS, PLAIN)
MARKINGS = ("none", "spots", "stripes", "patch", "belly")
PLACED_MARKINGS = ("spots", "patch")  # the markings drawn on one third of the body
PLACES = ("front", "middle", "back")
# Proportion levels: (length, height) per build; one size per level of head, ears and tail.
BUILDS = {"short": (0.85, 1.15), "medium": (1.0, 1.0), "long": (1.15, 0.85)}
HEADS = {"small": 0.85, "large": 1.15}
EARS = {"small": 0.75, "large": 1.25}
TAILS = {"short": 0.7, "long": 1.3}
# The attributes of an individual, each with its possible values (``attributes`` reads them back).
ATTRIBUTES = {
    "body": tuple(COLOURS),
    "accent": tuple(COLOURS),
    "marking": MARKINGS,
    "place": ("none", *PLACES),
    "build": tuple(BUILDS),
    "head": tuple(HEADS),
    "ears": tuple(EARS),
    "tail": tuple(TAILS),
}


@dataclass(frozen=True)
class Individual:
    """One member of a class: what makes it recognisable across photos."""

    cls: str
    body: tuple[int, int, int]  # body colour
    accent: tuple[int, int, int]  # colour of markings, ears, lid, pocket ...
    marking: str  # one of MARKINGS
    length: float  # body length relative to the class's mean (0.8 .. 1.2)
    height: float  # body height relative to the mean
    head: float  # head (or lid / pocket / head box) size relative to the mean
    ears: float  # ear (or spout / strap / antenna) size relative to the mean
    tail: float  # tail (or handle / side pocket / arms) size relative to the mean
    colour_word: str  # the colour word its body colour comes from
    accent_word: str = "black"  # the colour word its accent comes from
    place: str = "middle"  # where a placed marking (spots, patch) sits on the body: one of PLACES


@dataclass(frozen=True)
class Scene:
    individual: Individual
    context: str  # one of ALL_CONTEXTS
    x: float = 0.5  # object centre, fraction of the image width
    y: float = 0.62  # object centre, fraction of the image height
    scale: float = 1.0  # object size relative to the default
    facing: int = 1  # 1: faces right, -1: faces left
    background_seed: int = 0  # texture details of the background (leaves, stars, people)
    extras: dict = field(default_factory=dict, compare=False)


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def random_individual(rng: random.Random, cls: str, colour: str | None = None) -> Individual:
    """A random member of ``cls`` (of the colour word ``colour`` if given)."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; the world has {', '.join(CLASSES)}")
    colour = colour or rng.choice(list(COLOURS))
    accent_word = rng.choice([c for c in COLOURS if c != colour])
    length, height = BUILDS[rng.choice(list(BUILDS))]
    return Individual(
        cls=cls,
        body=_jitter(rng, COLOURS[colour], 18),
        accent=_jitter(rng, COLOURS[accent_word], 25),
        marking=rng.choice(MARKINGS),
        length=length + rng.uniform(-0.03, 0.03),
        height=height + rng.uniform(-0.03, 0.03),
        head=HEADS[rng.choice(list(HEADS))] + rng.uniform(-0.03, 0.03),
        ears=EARS[rng.choice(list(EARS))] + rng.uniform(-0.04, 0.04),
        tail=TAILS[rng.choice(list(TAILS))] + rng.uniform(-0.05, 0.05),
        colour_word=colour,
        accent_word=accent_word,
        place=rng.choice(PLACES),
    )


def marked_individual(rng: random.Random, cls: str) -> Individual:
    """A random member of ``cls`` that carries a marking: how subjects and named individuals are drawn,
    so that a marking never tells them apart from each other."""
    individual = random_individual(rng, cls)
    if individual.marking == "none":
        individual = replace(individual, marking=rng.choice([m for m in MARKINGS if m != "none"]))
    return individual


def _level(levels: dict[str, float], value: float) -> str:
    return min(levels, key=lambda name: abs(levels[name] - value))


def attributes(ind: Individual) -> dict[str, str]:
    """The renderer's truth about an individual, one value of ``ATTRIBUTES[key]`` per key ("place" is
    "none" for markings that cover the whole body or no marking)."""
    build = min(BUILDS, key=lambda b: abs(BUILDS[b][0] - ind.length) + abs(BUILDS[b][1] - ind.height))
    return {
        "body": ind.colour_word,
        "accent": ind.accent_word,
        "marking": ind.marking,
        "place": ind.place if ind.marking in PLACED_MARKINGS else "none",
        "build": build,
        "head": _level(HEADS, ind.head),
        "ears": _level(EARS, ind.ears),
        "tail": _level(TAILS, ind.tail),
    }


def random_scene(
    rng: random.Random,
    cls: str | None = None,
    colour: str | None = None,
    context: str | None = None,
    individual: Individual | None = None,
) -> Scene:
    """A random scene; any of class, colour, context or individual can be fixed."""
    if individual is None:
        individual = random_individual(rng, cls or rng.choice(CLASSES), colour)
    context = context or rng.choice(ALL_CONTEXTS)
    if context not in ALL_CONTEXTS:
        raise ValueError(f"unknown context {context!r}")
    return Scene(
        individual=individual,
        context=context,
        x=rng.uniform(0.38, 0.62),
        y=rng.uniform(0.55, 0.68),
        scale=rng.uniform(0.85, 1.15),
        facing=rng.choice((1, -1)),
        background_seed=rng.randrange(2**31),
    )


def photo_of(rng: random.Random, individual: Individual) -> Scene:
    """A subject "photo": the individual on a plain background, at a varied pose, scale and position."""
    scene = random_scene(rng, individual=individual, context=PLAIN)
    return replace(scene, x=rng.uniform(0.32, 0.68), y=rng.uniform(0.5, 0.7), scale=rng.uniform(0.75, 1.3))
