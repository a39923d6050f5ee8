"""Names in the world's captions: what web captions teach SD about a rare word before a class noun.

- **Names** (``NAMES``): each is tied to one individual (``named_individuals``), like a pet's or a product's
  name on the web. Most captions of that individual carry it ("a photo of bodo dog", "a bodo dog in the
  snow"), so pretraining learns that the word before the class noun can name a particular individual and
  the text encoder carries that word into the UNet.
- **Rare words** (``RARE_WORDS``): seen a few times each, before the class noun of individuals of random
  classes, each with a weak meaning (``weak_meaning``: a body colour, which about half of the individuals
  it captions have), and naming no one.
- **Held-out identifiers** (``IDENTIFIERS``, the study's ``sks`` first): rare words like the others (in the
  vocabulary, seen a few times before random individuals, tied to no individual and to no attribute),
  reserved as subject tokens. SD v1.4's ``sks`` is such a
  word: a token with a trained embedding and a weak prior, which DreamBooth rebinds to the subject.

Names and rare words are made-up words drawn from their own seeds, so no world word and no identifier is
among them.
"""

from __future__ import annotations

import random
from functools import lru_cache

from s2s.world.scene import CLASSES, COLOURS, CONTEXTS, Individual, marked_individual

IDENTIFIERS = ("sks", "ohwx", "zwx", "xjy")
NAMED_PER_CLASS = 50
RARE_WORD_COUNT = 40

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _taken() -> set[str]:
    words = set(CLASSES) | set(COLOURS) | set(IDENTIFIERS) | {"a", "an", "photo", "of", "the"}
    for context in CONTEXTS:
        words |= set(context.lower().split())
    return words


def _made_up_words(seed: str, count: int, syllables: int, taken: set[str]) -> tuple[str, ...]:
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if syllables == 1:  # three letters: consonant, vowel, consonant ("bix", "tov")
            word += rng.choice(_CONSONANTS)
        if word not in taken and word not in words:
            words.append(word)
    return tuple(words)


NAMES = _made_up_words("s2s-world-names", NAMED_PER_CLASS * len(CLASSES), 2, _taken())
COLOURS_IN_ORDER = tuple(COLOURS)
RARE_WORDS = _made_up_words("s2s-world-rare-words", RARE_WORD_COUNT, 1, _taken() | set(NAMES))
# Every word that may stand before a class noun in a caption or prompt (parse_prompt reads it as a name).
NAME_WORDS = (*NAMES, *RARE_WORDS, *IDENTIFIERS)


@lru_cache(maxsize=1)
def named_individuals() -> tuple[tuple[str, Individual], ...]:
    """(name, individual) pairs, classes in turn: the individuals pretraining captions call by name."""
    return tuple(
        (name, marked_individual(random.Random(f"s2s-world-named:{i}"), CLASSES[i % len(CLASSES)]))
        for i, name in enumerate(NAMES)
    )


def weak_words() -> tuple[str, ...]:
    """Words seen a few times before random individuals: the rare words and the held-out identifiers."""
    return (*RARE_WORDS, *IDENTIFIERS)


def weak_meaning(word: str) -> str | None:
    """The body colour a rare word weakly means (the rare words take the colours in turn), None for any other
    word: held-out identifiers mean nothing."""
    return COLOURS_IN_ORDER[RARE_WORDS.index(word) % len(COLOURS_IN_ORDER)] if word in RARE_WORDS else None


def rare_words_meaning(colour: str) -> tuple[str, ...]:
    """The rare words whose weak meaning is ``colour``."""
    return tuple(w for w in RARE_WORDS if weak_meaning(w) == colour)
