"""World photos in an edit manifest: the renderer's scene behind a photo, and the edit mask it gives.

A run on the world models draws its manifest's photos with ``s2s.world.subjects.draw_world_photo(caption,
seed)`` (rule ``draw_demo_edit_photo``: the caption is the file name with ``_`` for spaces, the seed is the
config's ``seed + WORLD_PHOTO_SEED_OFFSET``), so the scene is recoverable: the same caption and seed draw
the same scene (``world_photo_scene``). A photo counts as a world photo only when the scene renders to
exactly the photo's pixels as the edit read them; anything else (a real photo, a renamed file, another
seed) is not one, and its edit mask comes from cross-attention instead (``s2s.edit.photo_metrics``).

The renderer's mask of an edit is the world edit benchmark's (``s2s.world.edit_cases.EditCase.mask``: 255
= pixels the edit may change), for the edit types the benchmark defines, read from the two prompts in the
world's language (``s2s.world.captions.parse_prompt``): exactly one of the class, the colour word, the
context (between the benchmark's background contexts, or between a plain background and an accessory) or
the subject's token (``a brown dog ...`` -> ``a sks dog ...``: the run's world subject in the photo's
pose) changes. Other edits (two changes, a context that moves the object, prompts outside the world's
language, a source prompt that does not describe the scene) get no renderer mask, and the reason is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

# draw_demo_edit_photo draws a run's world photos at the config's seed plus this (a seed the build never
# used for its scenes).
WORLD_PHOTO_SEED_OFFSET = 7919


def photo_scene(path: Path | str, photo: Image.Image, seed: int):
    """The scene ``draw_world_photo`` drew ``photo`` from (caption = the file's name), or None when no
    such scene renders to exactly the photo's pixels."""
    from s2s.world.render import render
    from s2s.world.subjects import world_photo_scene

    caption = Path(path).stem.replace("_", " ")
    try:
        scene = world_photo_scene(caption, seed)
    except ValueError:  # the name is not a caption in the world's language
        return None
    drawn = render(scene)
    if drawn.size != photo.size or not np.array_equal(np.asarray(drawn), np.asarray(photo.convert("RGB"))):
        return None
    return scene


def renderer_edit(scene, source_prompt: str, target_prompt: str, subject=None, token: str | None = None):
    """The world benchmark's edit case of ``scene`` edited from ``source_prompt`` to ``target_prompt``:
    ``(EditCase, "")``, or ``(None, why not)``. ``subject`` (an ``Individual``) and ``token``: the run's
    world subject and its token, for subject edits."""
    from s2s.world.captions import parse_prompt
    from s2s.world.edit_cases import ACCESSORIES, BACKGROUND_CONTEXTS, EditCase
    from s2s.world.scene import COLOURS, PLAIN

    try:
        src, tgt = parse_prompt(source_prompt), parse_prompt(target_prompt)
    except ValueError:
        return None, "the prompts are not in the world's language"
    ind = scene.individual
    if (
        src["name"] is not None
        or src["class"] != ind.cls
        or src["colour"] not in (None, ind.colour_word)
        or src["context"] != scene.context
    ):
        return None, "the source prompt does not describe the photo's scene"
    context = scene.context
    if tgt["name"] is not None:
        if tgt["name"] != token or subject is None:
            return None, f"{tgt['name']!r} names no world subject of this run"
        if (tgt["class"], tgt["context"]) != (ind.cls, context) or subject.cls != ind.cls:
            return None, "a subject edit that also changes the class or the context"
        if tgt["colour"] not in (None, subject.colour_word):
            return None, "a subject edit that also changes the colour"
        edit_type, target = "subject", replace(scene, individual=subject)
    else:
        changed = [
            key
            for key, differs in (
                ("class", tgt["class"] != ind.cls),
                ("colour", tgt["colour"] not in (None, ind.colour_word)),
                ("context", tgt["context"] != context),
            )
            if differs
        ]
        if len(changed) != 1:
            return None, "the prompts change nothing" if not changed else f"{' and '.join(changed)} change"
        if changed == ["class"]:
            edit_type, target = "object", replace(scene, individual=replace(ind, cls=tgt["class"]))
        elif changed == ["colour"]:
            # The mask is the silhouettes', which no colour changes.
            recoloured = replace(ind, colour_word=tgt["colour"], body=COLOURS[tgt["colour"]])
            edit_type, target = "colour", replace(scene, individual=recoloured)
        elif context in BACKGROUND_CONTEXTS and tgt["context"] in BACKGROUND_CONTEXTS:
            edit_type, target = "background", replace(scene, context=tgt["context"])
            context = tgt["context"]
        elif {context, tgt["context"]} <= {PLAIN, *ACCESSORIES}:
            edit_type, target = "accessory", replace(scene, context=tgt["context"])
        else:
            return None, "a context change the benchmark has no mask for (it moves or covers the object)"
    return EditCase("photo", "photo", edit_type, scene, target, source_prompt, target_prompt, context), ""


@dataclass(frozen=True)
class WorldPhotos:
    """How a world run draws its manifest photos (``seed``: draw_world_photo's) and its subject."""

    seed: int
    subject: object | None = None  # s2s.world.scene.Individual of subject edits
    token: str | None = None

    def edit_case(self, path: Path | str, photo: Image.Image, source_prompt: str, target_prompt: str):
        """``(EditCase, "")`` of a world photo's edit, or ``(None, why the renderer gives no mask)``."""
        scene = photo_scene(path, photo, self.seed)
        if scene is None:
            return None, "not a world photo the renderer can redraw"
        return renderer_edit(scene, source_prompt, target_prompt, self.subject, self.token)


def world_photos(config: dict, subject_name: str) -> WorldPhotos | None:
    """The run's ``WorldPhotos`` on the world models (None on any other models)."""
    from s2s import config as cfgmod

    if cfgmod.model_kind(config) != "world":
        return None
    subject = cfgmod.subject(config, subject_name)
    individual = None
    if subject.world is not None:
        from s2s.world.subjects import world_subject

        individual = world_subject(subject.class_noun, subject.world)
    return WorldPhotos(config["seed"] + WORLD_PHOTO_SEED_OFFSET, individual, subject.token)
