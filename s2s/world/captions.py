"""Captions of world scenes in the study's prompt language, and prompts parsed back into their parts.

"a photo of a dog", "a brown dog in the snow", "a teapot wearing a red hat", "an orange backpack on the
beach": the article agrees with the next word, colour words come before the class, the context follows
it exactly as in the study's 20 prompts. A name stands where the study puts its identifier: "a photo of
bodo dog", "a bodo dog in the snow" (``s2s.world.names``).
"""

from __future__ import annotations

import random
import re

from s2s.world.names import NAME_WORDS
from s2s.world.scene import CLASSES, COLOURS, CONTEXTS, PLAIN, Scene


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(cls: str, colour: str | None = None) -> str:
    words = f"{colour} {cls}" if colour else cls
    return f"{article(words)} {words}"


def caption(scene: Scene, with_colour: bool = True, photo_of: bool = False) -> str:
    """The caption of a scene: "a {colour} {class} {context}", or "a photo of a {class}" for plain ones."""
    colour = scene.individual.colour_word if with_colour else None
    phrase = noun_phrase(scene.individual.cls, colour)
    if scene.context == PLAIN:
        return f"a photo of {phrase}" if photo_of or not with_colour else phrase
    return f"{phrase} {scene.context}"


def name_caption(scene: Scene, name: str, photo_of: bool = False) -> str:
    """A caption that calls the object by a name, in the study's prompt forms: "a photo of {name} {class}"
    (or "a {name} {class}") on a plain background, "a {name} {class} {context}" elsewhere."""
    if scene.context == PLAIN:
        return f"a photo of {name} {scene.individual.cls}" if photo_of else f"a {name} {scene.individual.cls}"
    return f"a {name} {scene.individual.cls} {scene.context}"


def random_caption(rng: random.Random, scene: Scene, p_colour: float = 0.7) -> str:
    """A pretraining caption: the colour word in most captions (so prompts without one still work)."""
    return caption(scene, with_colour=rng.random() < p_colour, photo_of=rng.random() < 0.5)


_PROMPT = re.compile(
    r"^(?:a photo of (?:an? )?|an? )(?:(?P<colour>" + "|".join(COLOURS) + r") )?"
    r"(?:(?P<name>" + "|".join(NAME_WORDS) + r") )?(?P<cls>" + "|".join(CLASSES) + r")"
    r"(?: (?P<context>" + "|".join(map(re.escape, CONTEXTS)) + r"))?$",
    re.IGNORECASE,
)
_CANONICAL = {c.lower(): c for c in CONTEXTS}


def parse_prompt(prompt: str) -> dict[str, str | None]:
    """``{"colour", "name", "class", "context"}`` of a prompt in the world's language (None where absent;
    the context of a prompt without one is ``PLAIN``); raises ValueError naming the prompt when it uses words
    outside the world's vocabulary."""
    match = _PROMPT.match(" ".join(prompt.split()))
    if match is None:
        raise ValueError(
            f"prompt {prompt!r} is not in the world's language: 'a [colour] [name] <class> [context]' with a "
            f"class ({', '.join(CLASSES)}), a colour ({', '.join(COLOURS)}) and one of the study's contexts"
        )
    context = _CANONICAL[match["context"].lower()] if match["context"] else PLAIN
    colour = match["colour"].lower() if match["colour"] else None
    name = match["name"].lower() if match["name"] else None
    return {"colour": colour, "name": name, "class": match["cls"].lower(), "context": context}
