"""Edit cases of the miniature world with ground-truth targets: the building blocks of a world edit benchmark.

A case is a source scene, a target scene that differs from it by one edit, their prompts in the world's
language, and the edit mask (255 = pixels the edit may change). The renderer draws both, so the target is
the ground truth of the edit. Cases are grouped by source (``source_id``): a benchmark inverts each source
once per inversion method and edits it several ways, so every case of a source has the same source prompt.

Edit types (``EDIT_TYPES``):

- ``object``: the individual's class changes (dog <-> cat; teapot, backpack and toy among themselves), pose,
  context and colours kept: "a brown dog in the jungle" -> "a brown cat in the jungle".
- ``colour``: the body's colour word changes (the individual's jitter around its colour kept):
  "a brown dog ..." -> "a blue dog ...".
- ``background``: the context changes, the object and its pose kept, between the contexts whose object is
  drawn untouched (``BACKGROUND_CONTEXTS``: no pose change, accessory or foreground): "... in the jungle"
  -> "... on the beach".
- ``accessory``: a hat, shirt or tuxedo is added to a plain-background source, removed, or swapped for
  another: "a brown dog" -> "a brown dog wearing a red hat". The renderer keys a plain background's colour
  on the context, so the target is drawn with the source's background (``render_case``): only the
  accessory changes.
- ``subject``: a dog becomes the subject ``world_subject("dog", 1)`` in the same scene:
  "a white dog on the beach" -> "a white sks dog on the beach". The source dog has the subject's colour
  word, so that the source prompt (with its colour, shared by the source's other cases) is true of both.

Masks: the object's coverage (``s2s.world.masks.object_coverage``, accessories included) gives them. For
object, colour, subject and accessory edits the mask is every pixel that either object touches at all
(coverage > 0, source or target); for background edits it is every pixel the source object does not cover
fully (coverage < 1), so the anti-aliased border, where the new background shows through, may change. With
these definitions no pixel outside the mask changes (tests/test_world_edit_cases.py checks every case), so
the masks are not grown.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from s2s.io import atomic_dir, save_png, write_json
from s2s.world import render as _render
from s2s.world.captions import caption
from s2s.world.masks import object_coverage
from s2s.world.scene import ANIMALS, CLASSES, COLOURS, CONTEXTS, PLAIN, Scene, random_scene
from s2s.world.subjects import world_subject

EDIT_TYPES = ("object", "colour", "background", "accessory", "subject")
ACCESSORIES = ("wearing a red hat", "wearing a yellow shirt", "wearing a tuxedo")
# Contexts that change the pose (jumping, sleeping, floating) or draw over the object (bath, snow).
_OBJECT_CHANGING = (
    "jumping in the air",
    "sleeping on a bed",
    "floating in space",
    "getting a bath",
    "in the snow",
)
BACKGROUND_CONTEXTS = tuple(c for c in CONTEXTS if c not in (*ACCESSORIES, *_OBJECT_CHANGING)) + (PLAIN,)
SUBJECT = ("dog", 1)  # world_subject(*SUBJECT) is the subject of subject edits
SUBJECT_TOKEN = "sks"


@dataclass(frozen=True)
class EditCase:
    case_id: str
    source_id: str  # cases with the same source_id share source scene and source prompt
    edit_type: str  # one of EDIT_TYPES
    source: Scene
    target: Scene
    source_prompt: str
    target_prompt: str
    background_context: str  # whose plain background the target is drawn with (see render_case)

    def source_image(self) -> Image.Image:
        return render_case(self.source)

    def target_image(self) -> Image.Image:
        return render_case(self.target, self.background_context)

    def mask(self) -> np.ndarray:
        """Boolean [64, 64]: True where the edit may change the pixel."""
        source = object_coverage(self.source)
        if self.edit_type == "background":
            return source < 1.0
        return (source > 0.0) | (object_coverage(self.target) > 0.0)


def render_case(scene: Scene, background_context: str | None = None) -> Image.Image:
    """``render(scene)``, with the background drawn as for ``background_context`` (same seed) if given."""
    return _render.render(scene, background_context)


# -------------------------------------------------------------------------------------------------
# The edits


def _recolour(scene: Scene, colour: str) -> Scene:
    """The same individual with body colour word ``colour``: its jitter around its old colour kept."""
    ind = scene.individual
    offset = [b - c for b, c in zip(ind.body, COLOURS[ind.colour_word], strict=True)]
    body = tuple(max(0, min(255, c + o)) for c, o in zip(COLOURS[colour], offset, strict=True))
    return replace(scene, individual=replace(ind, colour_word=colour, body=body))


def _other_class(rng: random.Random, cls: str) -> str:
    if cls in ANIMALS:
        return next(c for c in ANIMALS if c != cls)
    return rng.choice([c for c in CLASSES if c not in ANIMALS and c != cls])


def _with_token(prompt: str, cls: str) -> str:
    """ "a white dog on the beach" -> "a white sks dog on the beach" (the token before the class)."""
    head, sep, tail = prompt.partition(f" {cls}")
    return f"{head} {SUBJECT_TOKEN}{sep}{tail}"


def _source_cases(rng: random.Random, source_id: str, source: Scene) -> list[EditCase]:
    prompt = caption(source)
    context = source.context
    targets: list[tuple[str, Scene, str]] = []  # (edit type, target scene, background context)
    ind = source.individual
    cls = _other_class(rng, ind.cls)
    targets.append(("object", replace(source, individual=replace(ind, cls=cls)), context))
    colour = rng.choice([c for c in COLOURS if c not in (ind.colour_word, ind.accent_word)])
    targets.append(("colour", _recolour(source, colour), context))
    if context in BACKGROUND_CONTEXTS:
        new = rng.choice([c for c in BACKGROUND_CONTEXTS if c != context])
        targets.append(("background", replace(source, context=new), new))
    if context == PLAIN or context in ACCESSORIES:
        new = rng.choice([c for c in (PLAIN, *ACCESSORIES) if c != context])
        targets.append(("accessory", replace(source, context=new), context))
    subject = world_subject(*SUBJECT)
    if ind.cls == subject.cls and ind.colour_word == subject.colour_word:
        targets.append(("subject", replace(source, individual=subject), context))
    cases = []
    for edit_type, target, background in targets:
        target_prompt = (
            _with_token(prompt, ind.cls) if edit_type == "subject" else caption(target, photo_of=False)
        )
        cases.append(
            EditCase(
                f"{source_id}-{edit_type}",
                source_id,
                edit_type,
                source,
                target,
                prompt,
                target_prompt,
                background,
            )
        )
    return cases


def edit_cases(seed: int = 0, num_sources: int = 40) -> list[EditCase]:
    """The cases of ``num_sources`` sources (every edit type each source allows), the same for a seed.

    Sources cycle through a plain background, an accessory and two background contexts, so that every
    type has sources; a third of them are dogs, half of those of the subject's colour (subject edits)."""
    rng = random.Random(f"s2s-world-edit-cases:{seed}")
    subject = world_subject(*SUBJECT)
    cases = []
    for i in range(num_sources):
        if i % 4 == 0:
            context = PLAIN
        elif i % 4 == 1:
            context = ACCESSORIES[(i // 4) % len(ACCESSORIES)]
        else:
            context = rng.choice([c for c in BACKGROUND_CONTEXTS if c != PLAIN])
        cls = "dog" if i % 3 == 0 else rng.choice([c for c in CLASSES if c != "dog"])
        colour = subject.colour_word if cls == "dog" and i % 2 == 0 else None
        source = random_scene(rng, cls=cls, colour=colour, context=context)
        cases.extend(_source_cases(rng, f"s{i:03d}", source))
    return cases


def by_source(cases: list[EditCase]) -> dict[str, list[EditCase]]:
    """Cases grouped by source, in order: invert each source once, then run its cases."""
    groups: dict[str, list[EditCase]] = {}
    for case in cases:
        groups.setdefault(case.source_id, []).append(case)
    return groups


def case_record(case: EditCase) -> dict:
    """The case as JSON: ids, type, prompts, both scenes and the mask's share of the image."""
    return {
        "case_id": case.case_id,
        "source_id": case.source_id,
        "edit_type": case.edit_type,
        "source_prompt": case.source_prompt,
        "target_prompt": case.target_prompt,
        "background_context": case.background_context,
        "source": asdict(case.source),
        "target": asdict(case.target),
        "mask_fraction": float(case.mask().mean()),
    }


def write_case(case: EditCase, folder: Path | str) -> Path:
    """``folder/source.png``, ``target_gt.png``, ``mask.png`` (L, 255 = may change) and ``case.json``."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_png(case.source_image(), tmp / "source.png")
        save_png(case.target_image(), tmp / "target_gt.png")
        save_png(Image.fromarray(case.mask().astype(np.uint8) * 255, "L"), tmp / "mask.png")
        write_json(tmp / "case.json", case_record(case))
    return folder
