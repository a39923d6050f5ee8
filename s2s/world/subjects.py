"""Subjects of the world: individuals the pretraining never showed, and their "photos".

``subjects: {NAME: {world: ID, class: dog, token: sks}}`` in a config names individual ``ID`` of the class.
Its look comes from its own seed space (not the build's), so the build's scenes never contain it; it always
carries a marking, as the named individuals of pretraining and the identification line-up
(``distractors``) do, so that a marking alone never singles it out.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from s2s.io import atomic_dir, save_png
from s2s.world.captions import parse_prompt
from s2s.world.render import render
from s2s.world.scene import Individual, Scene, marked_individual, photo_of, random_scene


def world_subject(cls: str, world_id: int) -> Individual:
    """Individual ``world_id`` of ``cls``: the same on every machine and in every run."""
    return marked_individual(random.Random(f"s2s-world-subject:{cls}:{world_id}"), cls)


def distractors(cls: str, count: int) -> list[Individual]:
    """``count`` individuals of ``cls`` drawn as subjects are (with a marking), from their own seeds: the
    line-up a sample of a subject is identified against."""
    return [marked_individual(random.Random(f"s2s-world-distractor:{cls}:{k}"), cls) for k in range(count)]


def draw_world_subject(out_dir: Path | str, cls: str, world_id: int, count: int, seed: int = 0) -> list[Path]:
    """``count`` photos of the individual: plain backgrounds, varied pose, scale and position."""
    individual = world_subject(cls, world_id)
    rng = random.Random(f"s2s-world-photos:{cls}:{world_id}:{seed}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for i in range(count):
            save_png(render(photo_of(rng, individual)), tmp / f"{cls}_{world_id}_{i:02d}.png")
    return sorted(out_dir.glob("*.png"))


def world_photo_scene(caption: str, seed: int) -> Scene:
    """The scene of ``draw_world_photo(caption, seed)``: a fresh individual and pose."""
    parts = parse_prompt(caption)
    rng = random.Random(f"s2s-world-photo:{caption}:{seed}")
    return random_scene(rng, cls=parts["class"], colour=parts["colour"], context=parts["context"])


def draw_world_photo(caption: str, seed: int) -> Image.Image:
    """A world photo of what ``caption`` says ("a brown dog on the beach"): a fresh individual and pose."""
    return render(world_photo_scene(caption, seed))
