"""The world edit benchmark's runner (s2s.world_studies.edit_bench): a subset of cases on the committed world
models writes every file and column, with values in range, rows that match the PNG files on disk, the
ground truth at the metrics' cap, UNet calls counted by the hook, and intervals that contain the means."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from s2s import plan
from s2s.config import EditBenchConfig, check_config, edit_bench_config
from s2s.edit.bench_metrics import background_metrics, bench_metrics, gt_psnr, gt_psnr_in_mask
from s2s.edit.metrics import MAX_PSNR
from s2s.world.edit_cases import EDIT_TYPES, SUBJECT, SUBJECT_TOKEN
from s2s.world_studies import edit_bench as eb
from s2s.world_studies.edit_bench_targets import edit_bench_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The subset: the first 10 cases of seed 0 (3 sources, every edit type), at few steps so that it runs in
# a test, in this process; the benchmark itself runs 20 (config edit_bench). Subject cases on the base
# model (no training).
SUBSET = {
    "cases": 10,
    "seed": 0,
    "num_inference_steps": 8,
    "null_text_inner_steps": 3,
    "n_boot": 200,
    "jobs": 1,
}
REQUIRED = (
    "case", "edit_type", "method", "seconds", "unet_calls", "background_psnr", "background_ssim",
    "structure_distance", "clip_whole", "clip_edited", "gt_psnr", "gt_psnr_in_mask",
    "target_attribute_correct",
)  # fmt: skip
FILES = ("source.png", "target_gt.png", "mask.png", *(f"{m}.png" for m in eb.METHODS))


def bench_config(**changes) -> EditBenchConfig:
    """edit_bench.* of a checked config: the schema's defaults, with ``changes``."""
    subjects = {"toy": {"class": "toy", "synthetic": True}}
    return edit_bench_config(check_config({"subjects": subjects, "edit_bench": changes}))


# ---------------------------------------------------------------- planning (no models)


def test_parse_time_subject_is_the_edit_cases_subject():
    wanted = {"class": SUBJECT[0], "world": SUBJECT[1], "token": SUBJECT_TOKEN}
    assert wanted == plan.EDIT_BENCH_SUBJECT


def test_parse_time_subject_lookup():
    bench = {"edit_types": list(EDIT_TYPES), "subject_model": "lora"}
    config = {
        "models": "world",
        "edit_bench": bench,
        "subjects": {"toy": {"class": "toy", "synthetic": True}, "rex": {"class": "dog", "world": 1}},
    }
    assert plan.edit_bench_subject(config) == "rex"
    assert plan.edit_bench_subject({**config, "edit_bench": {**bench, "subject_model": "base"}}) is None
    no_subject = {**config, "edit_bench": {**bench, "edit_types": ["object"]}}
    assert plan.edit_bench_subject(no_subject) is None
    with pytest.raises(plan.S2SError, match="edit_bench.subject_model: no subject"):
        plan.edit_bench_subject({**config, "subjects": {"rex": {"class": "dog", "world": 2}}})
    with pytest.raises(plan.S2SError, match="needs models: world"):
        plan.edit_bench_subject({**config, "models": "tiny"})


def test_cases_are_a_prefix_of_the_seed_cases_with_every_type():
    hundred = eb.bench_cases(0, 100)
    assert len(hundred) == 100 and len({c.case_id for c in hundred}) == 100
    assert set(Counter(c.edit_type for c in hundred)) == set(EDIT_TYPES)
    ten = eb.bench_cases(0, 10)
    assert [c.case_id for c in ten] == [c.case_id for c in hundred[:10]]
    assert {c.edit_type for c in ten} == set(EDIT_TYPES)
    only = eb.bench_cases(0, 12, ["colour", "object"])
    assert len(only) == 12 and {c.edit_type for c in only} == {"colour", "object"}
    with pytest.raises(plan.S2SError, match="edit_bench.edit_types"):
        eb.bench_cases(0, 5, ["shape"])


def test_every_case_gets_a_controller_that_builds_with_the_world_tokenizer(world_models):
    """Each type's controller (replace for object and colour, refine for background and accessory, the
    subject edit) builds for all 100 cases, and every blend word is in its prompt. A colour edit blends on
    the colour word and the class noun of each prompt; a background edit has no local blend."""
    from transformers import CLIPTokenizer

    from s2s.edit.controllers import LocalBlend, Refine, Replace, build_controller
    from s2s.edit.seq_aligner import word_positions

    tokenizer = CLIPTokenizer.from_pretrained(world_models / "sd" / "tokenizer")
    kinds = {"object": Replace, "colour": Replace, "background": Refine, "accessory": Refine}
    threshold = bench_config().blend_threshold
    for case in eb.bench_cases(0, 100):
        spec = eb.controller_spec(case, threshold)
        controller = build_controller(tokenizer, case.source_prompt, case.target_prompt, spec, 20)
        assert isinstance(controller, kinds.get(case.edit_type, Refine)), case.case_id
        blend = controller.local_blend
        assert (blend is None) == (case.edit_type == "background"), case.case_id
        if blend is None:
            continue
        assert isinstance(blend, LocalBlend) and blend.threshold == threshold and blend.keep is None
        scenes = (case.source, case.target)
        if case.edit_type == "colour":
            assert spec["blend_words"] == [[s.individual.colour_word, s.individual.cls] for s in scenes]
        for prompt, words in zip((case.source_prompt, case.target_prompt), spec["blend_words"]):
            assert all(word_positions(tokenizer, prompt, w) for w in words), (case.case_id, words)


def test_target_attribute_is_the_target_scenes():
    for case in eb.bench_cases(0, 100):
        head, value = eb.target_attribute(case)
        source, target = case.source, case.target
        if case.edit_type == "object":
            assert (head, value) == ("class", target.individual.cls) != ("class", source.individual.cls)
        elif case.edit_type == "colour":
            assert head == "colour"
            assert value == target.individual.colour_word != source.individual.colour_word
        elif case.edit_type in ("background", "accessory"):
            assert head == "context" and value == target.context != source.context
        else:
            assert head == "identification"


# ---------------------------------------------------------------- the subset on the world models


@pytest.fixture(scope="module")
def subset(world_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_bench")
    out = root / "edit_bench"
    csv_path, json_path = root / "edit_bench.csv", root / "edit_bench.json"
    summary = eb.run_edit_bench(world_models, out, csv_path, json_path, bench_config(**SUBSET))
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "out": out,
        "rows": rows,
        "summary": summary,
        "json": json.loads(json_path.read_text()),
        "cases": eb.bench_cases(SUBSET["seed"], SUBSET["cases"]),
    }


def _value(row: dict, column: str) -> float | None:
    return None if row[column] == "" else float(row[column])


def test_subset_writes_every_file_and_column(subset):
    rows, cases = subset["rows"], subset["cases"]
    assert set(REQUIRED) <= set(rows[0]) and tuple(rows[0]) == eb.COLUMNS
    for case in cases:
        folder = subset["out"] / case.case_id
        assert sorted(p.name for p in folder.iterdir()) == sorted((*FILES, "case.json")), case.case_id
        mask = Image.open(folder / "mask.png")
        assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
    methods = [eb.REFERENCE, *eb.METHODS]
    assert [(r["case"], r["method"]) for r in rows] == [(c.case_id, m) for c in cases for m in methods]
    assert {r["edit_type"] for r in rows} == set(EDIT_TYPES)
    summary = subset["json"]
    assert summary == json.loads(json.dumps(subset["summary"]))  # the file is the returned summary
    # The targets are the CSV's rows' (read back as strings), with the run's resamples and seed.
    assert summary["targets"] == edit_bench_targets(rows, SUBSET["n_boot"], SUBSET["seed"])
    assert summary["n_cases"] == 10 and sum(summary["cases_per_type"].values()) == 10
    for method in methods:
        assert set(summary["methods"][method]) == {"all", *EDIT_TYPES}, method
        for group in summary["methods"][method].values():
            assert set(eb.SUMMARY_COLUMNS) <= set(group)


def test_values_are_in_range(subset):
    steps = SUBSET["num_inference_steps"]
    for row in subset["rows"]:
        where = (row["case"], row["method"])
        v = {c: _value(row, c) for c in eb.METRICS}
        for column in ("background_psnr", "gt_psnr", "gt_psnr_in_mask"):
            assert v[column] is None or 0 < v[column] <= MAX_PSNR, (where, column, v[column])
        assert v["background_ssim"] is None or -1 <= v["background_ssim"] <= 1 + 1e-9, where
        assert v["background_mse"] is None or 0 <= v["background_mse"] <= 1, where
        assert 0 <= v["structure_distance"] <= 4, where  # cosines in [-1, 1]
        assert 0 <= v["clip_whole"] <= 100 and 0 <= v["clip_edited"] <= 100, where
        assert 0 <= v["target_attribute_correct"] <= 1 and row["read_as"], where
        assert 0 < _value(row, "mask_fraction") < 1, where
        if row["method"] == eb.REFERENCE:
            assert row["seconds"] == row["unet_calls"] == "", where
            continue
        assert _value(row, "seconds") > 0 and _value(row, "cpu_seconds") > 0, where
        calls, inverted = int(row["unet_calls"]), int(row["inversion_unet_calls"])
        # Counted by the UNet's forward hook: DDIM inversion one call per step, the edit one batched call
        # per step; null-text adds its optimisation (at least 2 calls per step more).
        if row["method"] == "p2p_null_text":
            assert calls - steps == inverted >= 3 * steps, where
        else:
            assert calls == 2 * steps and inverted == steps, where
        assert _value(row, "inversion_seconds") < _value(row, "seconds"), where


def test_ground_truth_is_the_cap(subset):
    """The ground truth scored as an edit: gt_psnr (whole and in the mask) is the cap, and so is the
    background PSNR (the masks are exact), SSIM 1; recomputed from the saved target, PSNR of it against
    itself is the cap too."""
    truth = [r for r in subset["rows"] if r["method"] == eb.REFERENCE]
    assert len(truth) == SUBSET["cases"]
    for row in truth:
        assert _value(row, "gt_psnr") == _value(row, "gt_psnr_in_mask") == MAX_PSNR, row["case"]
        assert _value(row, "background_psnr") == MAX_PSNR and _value(row, "background_mse") == 0.0
        # torchmetrics' SSIM runs in float32: in flat regions the variances cancel against C2 = 9e-4, so
        # identical images give 1 within ~1e-4 (0.99995 measured), not exactly.
        assert math.isclose(_value(row, "background_ssim"), 1.0, abs_tol=1e-3), row["case"]
        target = Image.open(subset["out"] / row["case"] / "target_gt.png")
        assert gt_psnr(target, target) == MAX_PSNR
    edits = [r for r in subset["rows"] if r["method"] != eb.REFERENCE]
    assert all(_value(r, "gt_psnr") < MAX_PSNR for r in edits)


def test_rows_match_the_pngs_on_disk(subset):
    """Every row's pixel metrics recomputed from the files as saved; one row's every metric through
    bench_metrics with the world's ViT and CLIP."""
    out = subset["out"]

    def load(case, name, mode="RGB"):
        return Image.open(out / case / name).convert(mode)

    for row in subset["rows"]:
        case = row["case"]
        name = "target_gt.png" if row["method"] == eb.REFERENCE else f"{row['method']}.png"
        source, edited, target = load(case, "source.png"), load(case, name), load(case, "target_gt.png")
        mask = load(case, "mask.png", "L")
        background = background_metrics(source, edited, mask)
        assert _value(row, "background_psnr") == background["background_psnr"], (case, row["method"])
        assert _value(row, "gt_psnr") == gt_psnr(edited, target), (case, row["method"])
        assert _value(row, "gt_psnr_in_mask") == gt_psnr_in_mask(edited, target, mask)
    row = next(r for r in subset["rows"] if r["method"] == "p2p_direct" and r["edit_type"] == "object")
    from s2s.metrics.fidelity import load_clip, load_dino

    models = subset["json"]["models"]
    vit, clip = load_dino(f"{models}/identity"), load_clip(f"{models}/clip")
    case = row["case"]
    again = bench_metrics(
        load(case, "source.png"),
        load(case, "p2p_direct.png"),
        load(case, "mask.png", "L"),
        row["target_prompt"],
        target=load(case, "target_gt.png"),
        vit=(vit.model, vit.processor),
        clip=(clip.model, clip.processor),
    )
    for column, value in again.items():
        assert _value(row, column) == pytest.approx(value, rel=1e-9, abs=1e-12), column


def test_methods_make_different_images(subset):
    """The baseline has no attention control, so it differs from P2P after the same DDIM inversion; the
    four inversions differ from one another on the source branch, so their edits differ too."""
    for case in subset["cases"]:
        folder = subset["out"] / case.case_id
        images = {m: np.asarray(Image.open(folder / f"{m}.png")) for m in eb.METHODS}
        assert not np.array_equal(images["baseline"], images["p2p_ddim"]), case.case_id
        assert not np.array_equal(images["p2p_direct"], images["p2p_ddim"]), case.case_id
        assert not np.array_equal(images["p2p_negative_prompt"], images["p2p_ddim"]), case.case_id


def test_summary_means_are_the_rows_and_intervals_contain_them(subset):
    rows, summary = subset["rows"], subset["json"]["methods"]
    checked = 0
    for method, groups in summary.items():
        for group, columns in groups.items():
            members = [r for r in rows if r["method"] == method and group in ("all", r["edit_type"])]
            assert columns["n_cases"] == len(members), (method, group)
            for column in eb.SUMMARY_COLUMNS:
                entry = columns[column]
                values = [_value(r, column) for r in members if r[column] != ""]
                assert entry["n"] == len(values), (method, group, column)
                if not values:
                    assert entry["mean"] is None
                    continue
                assert entry["mean"] == pytest.approx(float(np.mean(values)), rel=1e-12, abs=1e-12)
                assert entry["ci_low"] <= entry["mean"] + 1e-12, (method, group, column)
                assert entry["mean"] <= entry["ci_high"] + 1e-12, (method, group, column)
                checked += 1
    assert checked > 100


def test_shards_split_every_source_once_by_cost():
    settings = eb.Settings("models/world", bench_config(cases=100, null_text_sources=4), None)
    groups = eb.by_source(settings.selected())
    parts = eb.shards(settings, 2)
    assert len(parts) == 2 and sorted(s for p in parts for s in p) == sorted(groups)
    order = list(groups)
    assert all(p == sorted(p, key=order.index) for p in parts)  # each worker runs its sources in order
    cost = {s: len(groups[s]) * 5 + 12 * (s in order[:4]) for s in order}  # 5 methods, inner steps 10
    load = [sum(cost[s] for s in p) for p in parts]
    assert abs(load[0] - load[1]) <= max(cost.values()), load  # longest first: within one source
    assert eb.shards(settings, 1) == [order]
    assert settings.null_text_source_ids(groups) == order[:4]
    no_null = eb.Settings(
        "models/world", bench_config(cases=100, methods=["p2p_ddim"], null_text_sources=4), None
    )
    assert no_null.null_text_source_ids(groups) == []
