"""World edit cases with ground-truth targets (s2s.world.edit_cases): determinism, coverage, exact masks."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from s2s.world.captions import parse_prompt
from s2s.world.edit_cases import (
    ACCESSORIES,
    BACKGROUND_CONTEXTS,
    EDIT_TYPES,
    by_source,
    edit_cases,
    render_case,
    write_case,
)
from s2s.world.render import render
from s2s.world.scene import ALL_CONTEXTS, CLASSES, PLAIN, random_scene
from s2s.world.subjects import world_subject


@pytest.fixture(scope="module")
def cases():
    return edit_cases(seed=0)


def test_render_case_is_render_for_every_context():
    rng = random.Random(5)
    for context in ALL_CONTEXTS:
        for cls in CLASSES:
            scene = random_scene(rng, cls=cls, context=context)
            assert np.array_equal(np.asarray(render_case(scene)), np.asarray(render(scene))), (context, cls)


def test_cases_are_determined_by_the_seed(cases):
    again = edit_cases(seed=0)
    assert [c.case_id for c in again] == [c.case_id for c in cases]
    assert all(
        (a.source, a.target, a.source_prompt, a.target_prompt)
        == (b.source, b.target, b.source_prompt, b.target_prompt)
        for a, b in zip(cases, again, strict=True)
    )
    other = edit_cases(seed=1)
    assert [c.source for c in other] != [c.source for c in cases]


def test_at_least_100_cases_of_every_type_grouped_by_source(cases):
    assert len(cases) >= 100 and len({c.case_id for c in cases}) == len(cases)
    counts = Counter(c.edit_type for c in cases)
    assert set(counts) == set(EDIT_TYPES) and min(counts.values()) >= 5, counts
    groups = by_source(cases)
    assert len(groups) < len(cases)  # sources are shared
    for source_id, group in groups.items():
        assert len(group) >= 2, source_id
        assert len({(c.source, c.source_prompt) for c in group}) == 1, source_id


def test_each_type_changes_what_it_says(cases):
    subject = world_subject("dog", 1)
    for case in cases:
        s, t = case.source, case.target
        same_pose = (s.x, s.y, s.scale, s.facing, s.background_seed) == (
            t.x,
            t.y,
            t.scale,
            t.facing,
            t.background_seed,
        )
        assert same_pose, case.case_id
        if case.edit_type == "object":
            assert (
                t.individual == replace(s.individual, cls=t.individual.cls)
                and t.individual.cls != s.individual.cls
            )
            assert t.context == s.context
        elif case.edit_type == "colour":
            assert t.individual.colour_word != s.individual.colour_word and t.context == s.context
            assert t.individual.cls == s.individual.cls and t.individual.marking == s.individual.marking
        elif case.edit_type == "background":
            assert t.individual == s.individual and t.context != s.context
            assert {s.context, t.context} <= set(BACKGROUND_CONTEXTS)
        elif case.edit_type == "accessory":
            assert t.individual == s.individual and t.context != s.context
            assert {s.context, t.context} <= {PLAIN, *ACCESSORIES} and case.background_context == s.context
        else:
            assert t.individual == subject and s.individual.cls == "dog" and t.context == s.context
            assert case.target_prompt == case.source_prompt.replace(" dog", " sks dog", 1)
        if case.edit_type != "subject":  # the prompts say what the scenes show
            for scene, prompt in ((s, case.source_prompt), (t, case.target_prompt)):
                parts = parse_prompt(prompt)
                assert (parts["class"], parts["colour"], parts["context"]) == (
                    scene.individual.cls,
                    scene.individual.colour_word,
                    scene.context,
                ), (case.case_id, prompt)


def test_ground_truth_differs_from_the_source_only_inside_the_mask(cases):
    """Exactly: not one pixel outside the mask changes, for every case (no grown mask needed)."""
    for case in cases:
        source = np.asarray(case.source_image(), dtype=np.int16)
        target = np.asarray(case.target_image(), dtype=np.int16)
        mask = case.mask()
        changed = np.abs(source - target).max(-1) > 0
        assert not (changed & ~mask).any(), f"{case.case_id}: {int((changed & ~mask).sum())} pixels outside"
        assert changed.sum() >= 10, case.case_id  # the edit is visible
        assert 0 < mask.sum() < mask.size, case.case_id
        fraction = mask.mean()
        if case.edit_type == "background":
            assert fraction > 0.5, case.case_id  # the background: most of the image
        else:
            assert fraction < 0.6, case.case_id  # the object(s)
            # the object's own pixels change (an accessory's mask is the whole object, of which it is a part)
            assert changed[mask].mean() > (0.03 if case.edit_type == "accessory" else 0.2), case.case_id


def test_write_case_folder(cases, tmp_path):
    case = next(c for c in cases if c.edit_type == "accessory")
    folder = write_case(case, tmp_path / case.case_id)
    assert sorted(p.name for p in folder.iterdir()) == [
        "case.json",
        "mask.png",
        "source.png",
        "target_gt.png",
    ]
    mask = Image.open(folder / "mask.png")
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) == {0, 255}
    assert np.array_equal(np.asarray(mask) == 255, case.mask())
    assert np.array_equal(np.asarray(Image.open(folder / "target_gt.png")), np.asarray(case.target_image()))
    assert np.array_equal(np.asarray(Image.open(folder / "source.png")), np.asarray(render(case.source)))
    record = json.loads((folder / "case.json").read_text())
    assert record["case_id"] == case.case_id and record["edit_type"] == "accessory"
    assert (
        record["target_prompt"] == case.target_prompt and record["target"]["context"] == case.target.context
    )
    assert record["mask_fraction"] == pytest.approx(case.mask().mean())
