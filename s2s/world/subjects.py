"""Subjects of the world: individuals the pretraining never showed, and their "photos".

``subjects: {NAME: {world: ID, class: dog, token: sks}}`` in a config names individual ``ID`` of the class.
Its look comes from its own seed space (not the build's), so the build's scenes never contain it; it always
carries a marking, which makes it recognisable beside the plain individuals of its class.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from PIL import Image

from s2s.io import atomic_dir, save_png
from s2s.world.captions import parse_prompt
from s2s.world.render import render
from s2s.world.scene import MARKINGS, Individual, photo_of, random_individual, random_scene


def world_subject(cls: str, world_id: int) -> Individual:
    """Individual ``world_id`` of ``cls``: the same on every machine and in every run."""
    rng = random.Random(f"s2s-world-subject:{cls}:{world_id}")
    individual = random_individual(rng, cls)
    if individual.marking == "none":
        individual = replace(individual, marking=rng.choice([m for m in MARKINGS if m != "none"]))
    return individual


def draw_world_subject(out_dir: Path | str, cls: str, world_id: int, count: int, seed: int = 0) -> list[Path]:
    """``count`` photos of the individual: plain backgrounds, varied pose, scale and position."""
    individual = world_subject(cls, world_id)
    rng = random.Random(f"s2s-world-photos:{cls}:{world_id}:{seed}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for i in range(count):
            save_png(render(photo_of(rng, individual)), tmp / f"{cls}_{world_id}_{i:02d}.png")
    return sorted(out_dir.glob("*.png"))


def draw_world_photo(caption: str, seed: int) -> Image.Image:
    """A world photo of what ``caption`` says ("a brown dog on the beach"): a fresh individual and pose."""
    parts = parse_prompt(caption)
    rng = random.Random(f"s2s-world-photo:{caption}:{seed}")
    return render(random_scene(rng, cls=parts["class"], colour=parts["colour"], context=parts["context"]))
