"""The world's names and attributes (issue 21): a word before the class noun names an individual in
pretraining, held-out identifiers are rare words tied to no one, and what tells individuals apart is
discrete, drawn by the renderer where its value says, and read back by ``attributes``."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from s2s.world.captions import name_caption, parse_prompt
from s2s.world.data import fresh_scene_set, scene_set
from s2s.world.names import (
    IDENTIFIERS,
    NAME_WORDS,
    NAMES,
    RARE_WORDS,
    named_individuals,
    rare_words_meaning,
    weak_meaning,
)
from s2s.world.render import render
from s2s.world.scene import (
    ATTRIBUTES,
    CLASSES,
    COLOURS,
    PLAIN,
    Scene,
    attributes,
    marked_individual,
    photo_of,
    random_individual,
)
from s2s.world.subjects import distractors, world_subject
from s2s.world.tokenizer import world_words


def test_names_rare_words_and_identifiers_are_disjoint_and_outside_the_worlds_other_words():
    assert IDENTIFIERS[0] == "sks"
    assert len(set(NAMES)) == len(NAMES) and len(set(RARE_WORDS)) == len(RARE_WORDS)
    assert not set(NAMES) & set(RARE_WORDS) and not (set(NAMES) | set(RARE_WORDS)) & set(IDENTIFIERS)
    assert set(NAME_WORDS) <= set(world_words())  # every one is in the tokenizer's vocabulary
    others = set(world_words()) - set(NAME_WORDS)
    assert not set(NAME_WORDS) & others


def test_named_individuals_are_one_per_name_classes_in_turn_and_never_a_subject_or_distractor():
    named = named_individuals()
    assert [n for n, _ in named] == list(NAMES)
    assert [ind.cls for _, ind in named] == [CLASSES[i % len(CLASSES)] for i in range(len(NAMES))]
    assert all(ind.marking != "none" for _, ind in named)
    others = {world_subject("dog", k) for k in range(20)} | set(distractors("dog", 40))
    assert not {ind for _, ind in named} & others


def test_pretraining_ties_each_name_to_its_individual_and_identifiers_to_no_one():
    data = scene_set(3000, seed=0)
    named = named_individuals()
    seen: dict[str, set[int]] = defaultdict(set)
    for text, who in zip(data.captions, data.individual):
        name = parse_prompt(text)["name"]
        if name is None:
            continue
        seen[name].add(int(who))
        if name in NAMES:
            assert who == NAMES.index(name) and text.split()[-1] != name  # "a {name} {class} ..."
            assert parse_prompt(text)["class"] == named[who][1].cls
    assert {n for n in seen if n in NAMES} and all(
        w == {NAMES.index(n)} for n, w in seen.items() if n in NAMES
    )
    weak = [n for n in seen if n in RARE_WORDS or n in IDENTIFIERS]
    assert weak and all(seen[n] == {-1} for n in weak)  # a fresh individual every time
    # rare: a weak word is in fewer captions than a name, on average less than half as many
    counts = defaultdict(int)
    for text in data.captions:
        name = parse_prompt(text)["name"]
        if name is not None:
            counts[name] += 1
    assert np.mean([counts[n] for n in weak]) < np.mean([counts[n] for n in NAMES if n in counts]) / 2


def test_rare_words_weakly_mean_a_body_colour_and_identifiers_mean_nothing():
    """A rare word captions individuals of its colour more often than chance, but not always (a weak
    meaning); a held-out identifier has no meaning, and the scenes themselves do not depend on the words."""
    assert {weak_meaning(w) for w in IDENTIFIERS} == {None}
    assert all(len(rare_words_meaning(weak_meaning(w))) >= 2 for w in RARE_WORDS)
    data = scene_set(1500, seed=0, p_named=0.0, p_weak=0.6)
    colours = {"rare": [], "identifier": []}
    for text, body in zip(data.captions, data.colour):
        word = parse_prompt(text)["name"]
        if word in RARE_WORDS:
            colours["rare"].append(weak_meaning(word) == list(COLOURS)[body])
        elif word in IDENTIFIERS:
            colours["identifier"].append(list(COLOURS)[body])
    assert 0.45 < np.mean(colours["rare"]) < 0.85  # 0.6 + 0.4 x 1/10 expected
    shares = [colours["identifier"].count(c) / len(colours["identifier"]) for c in COLOURS]
    assert len(colours["identifier"]) > 50 and max(shares) < 0.3
    plain = scene_set(1500, seed=0, p_named=0.0, p_weak=0.6, p_weak_meaning=0.0)
    assert np.array_equal(plain.images, data.images)


def test_name_captions_take_the_studys_prompt_forms():
    scene = photo_of(random.Random(1), random_individual(random.Random(0), "dog", "brown"))
    assert name_caption(scene, "sks", photo_of=True) == "a photo of sks dog"
    assert name_caption(scene, "sks") == "a sks dog"
    assert name_caption(replace(scene, context="in the snow"), "sks") == "a sks dog in the snow"
    assert parse_prompt("a sks dog in the snow") == {
        "colour": None, "name": "sks", "class": "dog", "context": "in the snow"
    }  # fmt: skip
    assert parse_prompt("a photo of sks dog")["name"] == "sks"


@pytest.mark.parametrize("key", list(ATTRIBUTES))
def test_every_attribute_value_is_drawn_and_read_back(key):
    rng = random.Random(3)
    values = {attributes(random_individual(rng, CLASSES[i % 5]))[key] for i in range(600)}
    assert values == set(ATTRIBUTES[key])


def test_attributes_read_back_the_individuals_parameters():
    rng = random.Random(4)
    for _ in range(200):
        ind = marked_individual(rng, "dog")
        truth = attributes(ind)
        assert truth["body"] == ind.colour_word and truth["accent"] == ind.accent_word
        assert truth["place"] == (ind.place if ind.marking in ("spots", "patch") else "none")
        assert (truth["build"] == "long") == (ind.length > 1.08 and ind.height < 0.92)
        assert (truth["head"] == "large") == (ind.head > 1.0)


def _accent_centroid_x(ind) -> float:
    """x of the accent-coloured pixels on the body (a plain photo facing right), in pixels."""
    scene = Scene(individual=ind, context=PLAIN, x=0.5, y=0.6, scale=1.2, facing=1, background_seed=0)
    plain = replace(ind, marking="none")
    a = np.asarray(render(scene), dtype=float)
    b = np.asarray(render(replace(scene, individual=plain)), dtype=float)
    changed = np.abs(a - b).sum(-1) > 40
    assert changed.sum() > 5
    return float(np.nonzero(changed)[1].mean())


def test_a_patch_sits_on_the_third_of_the_body_its_place_names():
    ind = replace(world_subject("dog", 1), marking="patch", accent=(250, 250, 250), body=(30, 30, 30))
    xs = {place: _accent_centroid_x(replace(ind, place=place)) for place in ("front", "middle", "back")}
    assert xs["back"] + 3 < xs["middle"] < xs["front"] - 3, (
        xs
    )  # the dog faces right: its head is on the right


def test_a_world_subjects_token_must_be_a_held_out_identifier():
    from s2s import config as cfgmod
    from s2s.io import S2SError

    raw = {"models": "world", "subjects": {"rex": {"world": 1, "class": "dog", "token": "ohwx"}}}
    assert cfgmod.check_config(raw)["subjects"]["rex"]["token"] == "ohwx"
    for token in (NAMES[0], "brown", "dog", "qqq"):
        bad = {"models": "world", "subjects": {"rex": {"world": 1, "class": "dog", "token": token}}}
        with pytest.raises(S2SError, match=r"subjects\.rex\.token: .* held-out identifiers \(sks, ohwx"):
            cfgmod.check_config(bad)


def test_the_committed_text_encoder_keeps_each_identifier_apart_from_a(world_models):
    """Where DreamBooth needs it: at the identifier's position of "a photo of sks dog", the text state is
    not that of "a" in "a photo of a dog" (cosine 0.97 in the first rebuild, where contrastive training
    folded every rare word into "a"; the UNet-only methods could not bind the subject to it)."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(world_models / "sd" / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(world_models / "sd" / "text_encoder").eval()

    def states(text):
        ids = tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0][0]

    for cls in CLASSES:
        plain = states(f"a photo of a {cls}")
        for word in IDENTIFIERS:
            named = states(f"a photo of {word} {cls}")
            cosine = torch.nn.functional.cosine_similarity(plain[4], named[4], dim=0)
            assert cosine < 0.5, (word, cls, float(cosine))


def test_fresh_scenes_show_none_of_the_named_pool():
    """What the read-out trains and is measured on: an individual drawn for each scene, never one of the
    named individuals that the pretraining scenes show (a read-out that had learned those read them better
    than an individual it never saw)."""
    fresh, pretraining = fresh_scene_set(400, seed=5), scene_set(400, seed=5)
    assert len(fresh.images) == 400 and (fresh.individual == -1).all()
    assert (pretraining.individual >= 0).mean() > 0.3  # the pool the fresh scenes leave out
