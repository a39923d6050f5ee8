"""The world check (s2s.world_studies.check): its measures against hand computations and synthetic cases with
known answers, its prompt file's errors, and the JSON, workflow rule and report page on a tiny world build."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from s2s.io import S2SError
from s2s.world.names import IDENTIFIERS
from s2s.world.scene import ATTRIBUTES, CLASSES, COLOURS
from s2s.world_studies.check import (
    TARGETS,
    caption_retrieval,
    check_world,
    colour_prompts,
    heldout_prompts,
    identity_separation,
    prompt_following,
    rank_auc,
    read_prompts,
)

REPO = Path(__file__).resolve().parent.parent

# A world build of a few steps (~10 s): weights barely trained, every file in its place.
TINY_BUILD = {
    "threads": 1, "scenes": 64, "vae_channels": [16, 16, 16], "vae_steps": 2, "vae_batch": 4,
    "text_width": 32, "text_layers": 1, "clip_steps": 2, "clip_batch": 8, "unet_channels": [16, 32, 32],
    "unet_steps": 2, "unet_batch": 4, "classifier_steps": 2, "classifier_batch": 8,
    "identity_individuals": 5, "identity_photos": 2, "identity_steps": 2, "identity_batch": 8,
    "readout_scenes": 32, "readout_steps": 2, "readout_batch": 8, "readout_fresh": 4, "warmup_steps": 1,
}  # fmt: skip
PROMPTS = """# two prompts, a comment and a blank line
a red dog in the snow

a teapot on the beach
"""
CHECK = {
    "seeds": [0, 1],
    "num_inference_steps": 2,
    "heldout_renders": 24,
    "readout_renders": 20,
    "heldout_individuals": 6,
    "photos_each": 3,
    "heldout_prompt_count": 3,
    "heldout_prompt_seeds": 1,
    "colour_seeds": 1,
}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from s2s.world.build import build_world, load_settings

    root = tmp_path_factory.mktemp("world")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_BUILD))
    threads = torch.get_num_threads()
    try:
        build_world(root / "models", load_settings(str(root / "tiny.yaml")))
    finally:
        torch.set_num_threads(threads)
    return root / "models"


@pytest.fixture(scope="module")
def checked(tiny_world, tmp_path_factory, one_torch_thread) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("check")
    (root / "prompts.txt").write_text(PROMPTS)
    result = check_world(tiny_world, root / "prompts.txt", root / "check.json", **CHECK)
    return result, root / "check.json"


# ---------------------------------------------------------------- the measures


def test_rank_auc_equals_hand_computations_and_the_pairwise_definition():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3/4
    assert rank_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts a half: (0.5 + 1) / 2
    assert rank_auc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)
    assert rank_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert rank_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    # the definition, pair by pair: P(positive > negative) + P(tie) / 2
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 12, 300) / 12.0  # many ties
    labels = rng.random(300) < scores * 0.8
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    expected = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert rank_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="positives and negatives"):
        rank_auc([0.1, 0.2], [1, 1])


def test_retrieval_of_perfect_embeddings_is_one_and_of_shuffled_ones_is_chance():
    gen = torch.Generator().manual_seed(0)
    candidates, images, dim = 40, 2000, 64
    texts = torch.randn(candidates, dim, generator=gen)
    truth = torch.randint(0, candidates, (images,), generator=gen)
    noise = 0.05 * torch.randn(images, dim, generator=gen)
    assert caption_retrieval(texts[truth] + noise, texts, truth)["top1"] == 1.0
    # each image embedded as some other image's caption: right only by chance (1/40)
    shuffled = truth[torch.randperm(images, generator=gen)]
    top1 = caption_retrieval(texts[shuffled] + noise, texts, truth)["top1"]
    assert abs(top1 - 1 / candidates) < 3 * math.sqrt(1 / candidates / images)
    # 3 of 4 images right
    assert caption_retrieval(texts[[0, 1, 2, 3]], texts, [0, 1, 2, 5])["top1"] == 0.75


def test_retrieval_per_label_counts_the_top_captions_label():
    texts = torch.eye(4)  # captions 0..3: classes 0, 0, 1, 1; contexts 0, 1, 0, 1
    labels = {"class": np.array([0, 0, 1, 1]), "context": np.array([0, 1, 0, 1])}
    # every image lands on the other caption of its class: caption wrong, class right, context wrong
    out = caption_retrieval(texts[[1, 0, 3, 2]], texts, [0, 1, 2, 3], labels, labels)
    assert out == {"top1": 0.0, "top1_class": 1.0, "top1_context": 0.0}


def test_identity_auc_same_class_uses_only_pairs_of_one_class():
    # Class direction dominates, individual direction is small: different-class pairs are easy negatives,
    # different individuals of one class are hard ones.
    gen = torch.Generator().manual_seed(0)
    classes, per_class, photos, dim = 3, 4, 5, 32
    class_dirs = torch.randn(classes, dim, generator=gen) * 3
    rows, who, cls = [], [], []
    for c in range(classes):
        for i in range(per_class):
            centre = class_dirs[c] + 0.3 * torch.randn(dim, generator=gen)
            for _ in range(photos):
                rows.append(centre + 0.5 * torch.randn(dim, generator=gen))
                who.append(c * per_class + i)
                cls.append(c)
    out = identity_separation(torch.stack(rows), who, cls)
    n = classes * per_class * photos
    assert out["pairs_same"] == classes * per_class * math.comb(photos, 2)
    assert out["pairs_same"] + out["pairs_different"] == math.comb(n, 2)
    assert out["pairs_different_same_class"] == classes * math.comb(per_class, 2) * photos**2
    emb = torch.nn.functional.normalize(torch.stack(rows).double(), dim=-1)
    pairs = [(a, b) for a, b in combinations(range(n), 2) if cls[a] == cls[b]]
    cos = [float(emb[a] @ emb[b]) for a, b in pairs]
    assert out["auc_same_class"] == pytest.approx(rank_auc(cos, [who[a] == who[b] for a, b in pairs]))
    assert out["auc"] > out["auc_same_class"] + 0.1
    assert out["mean_cosine_same"] > out["mean_cosine_different_same_class"] > out["mean_cosine_different"]
    # one embedding for every photo: nothing told apart
    assert identity_separation(torch.ones(n, dim), who, cls)["auc"] == 0.5


def test_prompt_following_rates_count_images_and_skip_colour_without_a_colour_word():
    prompts = [
        {
            "line": 1,
            "prompt": "a red dog in the snow",
            "class": "dog",
            "colour": "red",
            "context": "in the snow",
        },
        {"line": 2, "prompt": "a cat", "class": "cat", "colour": None, "context": "plain"},
    ]
    predictions = [
        {
            "class": ["dog", "dog", "cat", "dog"],
            "colour": ["red", "blue", "red", "red"],
            "context": ["in the snow"] * 4,
        },
        {
            "class": ["cat", "dog", "dog", "dog"],
            "colour": ["red"] * 4,
            "context": ["plain", "plain", "x", "x"],
        },
    ]
    out = prompt_following(prompts, predictions)
    assert out["class"] == pytest.approx(4 / 8) and out["context"] == pytest.approx(6 / 8)
    assert out["colour"] == pytest.approx(3 / 4) and out["images"] == {"class": 8, "context": 8, "colour": 4}
    first, second = out["per_prompt"]
    assert (first["class_correct"], first["colour_correct"], first["context_correct"]) == (0.75, 0.75, 1.0)
    assert (second["class_correct"], second["colour_correct"], second["context_correct"]) == (0.25, None, 0.5)


# ---------------------------------------------------------------- the prompt file


def test_prompt_outside_the_vocabulary_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\n\na red dog in the snow\na purple dragon in the snow\n")
    with pytest.raises(S2SError) as info:
        read_prompts(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 4: ") and "'a purple dragon in the snow'" in message
    assert "\n" not in message
    # the check stops on it before loading any model (the models folder does not even exist)
    with pytest.raises(S2SError, match="line 4"):
        check_world(tmp_path / "no_models", path, tmp_path / "check.json")
    path.write_text("# comment\n\na red dog in the snow\n  an orange toy  \n")
    assert [(p["line"], p["prompt"], p["class"], p["colour"]) for p in read_prompts(path)] == [
        (3, "a red dog in the snow", "dog", "red"),
        (4, "an orange toy", "toy", "orange"),
    ]


def test_heldout_prompts_are_distinct_world_prompts_from_their_seed_and_colour_prompts_cover_all():
    prompts = heldout_prompts(30, seed=10_000)
    assert len({p["prompt"] for p in prompts}) == 30
    assert prompts == heldout_prompts(30, seed=10_000) and prompts != heldout_prompts(30, seed=10_001)
    assert all(p["colour"] in COLOURS and p["class"] in CLASSES for p in prompts)
    pairs = {(p["class"], p["colour"], p["context"]) for p in colour_prompts()}
    assert pairs == {(c, k, "plain") for c in CLASSES for k in COLOURS}


def test_shipped_prompts_cover_every_class_colour_and_context():
    from s2s.world.scene import CLASSES, COLOURS, CONTEXTS

    prompts = read_prompts(REPO / "config" / "world_check_prompts.txt")
    assert {p["class"] for p in prompts} == set(CLASSES)
    assert {p["colour"] for p in prompts} == set(COLOURS)
    assert {p["context"] for p in prompts} == set(CONTEXTS)


# ---------------------------------------------------------------- the check on a tiny build


def test_check_json_has_every_measure_its_target_and_the_build(checked, tiny_world):
    result, path = checked
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert [(t["key"], t["target"]) for t in result["targets"]] == [(k, t) for k, _, t in TARGETS]
    assert [t["target"] for t in result["targets"]] == [
        0.95, 0.90, 0.90, 0.95, 0.90, 0.90, 0.90, 27.0, *[0.90] * len(ATTRIBUTES), 0.90, 0.95
    ]  # fmt: skip
    for row in result["targets"]:
        upper = 100 if row["key"] == "vae_psnr" else 1
        assert 0 <= row["value"] <= upper and row["met"] == (row["value"] >= row["target"])
    assert result["all_met"] == all(t["met"] for t in result["targets"])
    following = result["prompt_following"]
    assert [p["line"] for p in following["per_prompt"]] == [2, 4]
    assert all(len(p["predicted"]["class"]) == len(CHECK["seeds"]) for p in following["per_prompt"])
    assert following["images"] == {"class": 4, "context": 4, "colour": 2}  # the teapot names no colour
    assert following["class"] == pytest.approx(np.mean([p["class_correct"] for p in following["per_prompt"]]))
    clip = result["clip"]
    assert 1 < clip["candidates"] <= CHECK["heldout_renders"] and clip["chance"] == 1 / clip["candidates"]
    assert {"top1", "top1_class", "top1_context", "top1_colour"} <= set(clip)
    identity = result["identity"]
    n = CHECK["heldout_individuals"] * CHECK["photos_each"]
    assert identity["pairs_same"] == CHECK["heldout_individuals"] * math.comb(CHECK["photos_each"], 2)
    assert identity["pairs_same"] + identity["pairs_different"] == math.comb(n, 2)
    models = result["models"]
    build = json.loads((tiny_world / "BUILD.json").read_text())
    assert models["files"] == build["files"] and models["files_match_build"]
    assert models["build_json_sha256"] == hashlib.sha256((tiny_world / "BUILD.json").read_bytes()).hexdigest()
    assert result["settings"]["seeds"] == CHECK["seeds"] and result["settings"]["seed"] == 10_000
    assert set(result["seconds"]) == {
        "prompt_following", "heldout_prompts", "readout_colour", "vae_readout", "clip", "identity",
        "identifiers", "total",
    }  # fmt: skip
    heldout = result["heldout_prompt_following"]
    assert len(heldout["per_prompt"]) == CHECK["heldout_prompt_count"]
    assert result["readout_colour"]["prompts"] == len(CLASSES) * len(COLOURS)
    vae_readout = result["vae_readout"]
    assert set(vae_readout["readout_accuracy"]) == set(ATTRIBUTES) and vae_readout["renders"] == 20
    assert vae_readout["only_fresh_individuals"] is True  # none the read-out could have learned by heart
    assert 0 < vae_readout["vae_psnr"] < 100
    assert set(result["identifiers"]["identifiers"]) == set(IDENTIFIERS)


@pytest.mark.parametrize("seed", [99, 102])
def test_check_refuses_held_out_seeds_the_build_rendered_from(tiny_world, tmp_path, seed):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    # the check draws from seed .. seed + 3; the build drew its identity individuals and photos from 100
    # and 101, the read-out's scenes from 102 (99 meets all three, 102 only the read-out's)
    with pytest.raises(S2SError, match="reuses the build's scene seed"):
        check_world(tiny_world, tmp_path / "prompts.txt", tmp_path / "check.json", seed=seed)


def test_world_check_rule_runs_the_check_without_rebuilding_the_models(tiny_world, tmp_path):
    # As committed models are in a fresh checkout: older than build_world's script, no Snakemake record
    # (were the folder the check's input, Snakemake would rebuild it for "code has changed").
    for path in [*tiny_world.rglob("*"), tiny_world]:
        os.utime(path, (1e9, 1e9))
    args = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
        "--directory", str(tmp_path), "world_check", "--config", f"world={{'models': '{tiny_world}'}}",
    ]  # fmt: skip
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule world_check:" in proc.stdout and "rule build_world:" not in proc.stdout
    assert str(REPO / "config" / "world_check_prompts.txt") in proc.stdout  # found from another directory


def test_report_page_lists_each_target_value_and_verdict(checked, tmp_path):
    from s2s.report.pages import world_check_page

    result, _ = checked
    result = json.loads(json.dumps(result))
    result["targets"][0].update(value=0.95, met=True)
    result["targets"][1].update(value=0.5, met=False)
    world_check_page(result, tmp_path / "world.html")
    page = (tmp_path / "world.html").read_text()
    rows = page.split("<tbody>")[1].split("</tbody>")[0].split("</tr>")[:-1]
    assert len(rows) == len(TARGETS)
    assert "0.950" in rows[0] and "&ge; 0.95" in rows[0] and rows[0].endswith("<td>met</td>")
    assert "0.500" in rows[1] and "&ge; 0.90" in rows[1] and rows[1].endswith("<td>not met</td>")
    for row, (_, description, _) in zip(rows, TARGETS):
        assert description.replace("'", "&#x27;") in row
    assert "a red dog in the snow" in page


def test_report_has_the_world_page_when_the_config_asks(checked, tmp_path):
    """world.report_check decides, not the files: with it the report plans the page (and uses a check.json
    that is there, not running the check again); without it, no page even where check.json exists."""
    _, check_json = checked
    (tmp_path / "results" / "world").mkdir(parents=True)
    (tmp_path / "results" / "world" / "check.json").write_text(check_json.read_text())
    (tmp_path / "report_check.yaml").write_text("world: {report_check: true}\n")
    for extra, planned in (([], False), ([str(tmp_path / "report_check.yaml")], True)):
        args = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
                "--directory", str(tmp_path), "--configfile", str(REPO / "config" / "config.yaml"), *extra,
                "--", "report"]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert ("rule report_world:" in proc.stdout) == planned and "rule world_check:" not in proc.stdout
