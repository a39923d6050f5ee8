"""The results table: row order, columns, published values, provenance, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from s2s.io import S2SError, write_json
from s2s.metrics.table import COLUMNS, PUBLISHED, TINY_STATEMENT, WORLD_STATEMENT, make_table

METRIC_KEYS = [key for key, _, _ in COLUMNS]

# The models and set sizes the publications used: their values are comparable with ours.
STUDY_MODELS = {
    "clip_model": "openai/clip-vit-large-patch14",
    "dino_model": "facebook/dino-vits16",
    "study_feature_extractor": "inception-v3-imagenet",
}


def per_image(offset: float, shuffle: bool = False) -> list[dict]:
    """4 prompts x 2 seeds; the method's prompt text differs, its prompt_id does not."""
    records = [
        {
            "prompt": f"a photo of <{offset}> {p}",
            "prompt_id": f"p{p}",
            "seed": s,
            "clip_score": 20 + offset / 10 + p + 0.1 * s,
            "clip_t": 0.2 + p / 100,
            "clip_i": 0.5,
            "dino": None,
        }
        for p in range(4)
        for s in range(2)
    ]
    return records[::-1] if shuffle else records


def metrics_json(path, method: str, offset: float, with_dino: bool = True, models=None) -> str:
    metrics = {
        key: {"value": 10 + offset + i, "ci_low": 9 + offset + i, "ci_high": 11.5 + offset + i, "n": 8}
        for i, key in enumerate(METRIC_KEYS)
    }
    for key in ("study_fid", "study_is"):
        metrics[key].update(n=18, n_generated=18, n_real=18)
    if not with_dino:
        metrics["dino"] = None
    write_json(
        path,
        {
            "method": method,
            "n_generated": 8,
            "n_real": 5,
            "metrics": metrics,
            "models": STUDY_MODELS if models is None else models,
            "reference": {"dino_real": 0.5 + offset / 1000, "clip_i_real": 0.25},
            "bootstrap": {"n_boot": 400, "confidence": 0.95, "seed": 7},
            "per_image": per_image(offset, shuffle=method == "dreambooth"),
            "warnings": [f"FID: 8 generated vs 5 real images ({method})"],
        },
    )
    return str(path)


@pytest.fixture
def jsons(tmp_path):
    # Deliberately not in the study's order.
    return {
        "lora": metrics_json(tmp_path / "lora.json", "lora", 0.0),
        "base": metrics_json(tmp_path / "base.json", "base", 100.0, with_dino=False),
        "dreambooth": metrics_json(tmp_path / "db.json", "dreambooth", 20.0),
        "textual_inversion": metrics_json(tmp_path / "ti.json", "textual_inversion", 40.0),
    }


PROVENANCE = {"config_hash": "abc123", "models": {"clip": "openai/clip-vit-large-patch14"}, "seeds": [0, 1]}


def test_table_rows_columns_and_published_values(tmp_path, jsons):
    out = tmp_path / "table"
    frame = make_table(
        jsons,
        out / "t.csv",
        out / "t.md",
        out / "t.html",
        published=PUBLISHED,
        provenance=PROVENANCE,
        models="tiny",
    )
    csv = pd.read_csv(out / "t.csv")
    pd.testing.assert_frame_equal(csv, frame.reset_index(drop=True), check_dtype=False)
    assert list(csv["method"]) == ["textual_inversion", "dreambooth", "lora", "base"]
    for key in METRIC_KEYS:
        assert {key, f"{key}_ci_low", f"{key}_ci_high"} <= set(csv.columns)
    lora = csv.set_index("method").loc["lora"]
    assert lora["clip_score"] == 10 and lora["clip_score_ci_low"] == 9 and lora["clip_score_ci_high"] == 11.5
    assert pd.isna(csv.set_index("method").loc["base", "dino"])

    # Published values sit beside ours, only for metrics that have any.
    pub = csv.set_index("method")
    assert pub.loc["dreambooth", "published_clip_score"] == 30.1439
    assert pub.loc["lora", "published_clip_score"] == 30.1661
    assert pub.loc["textual_inversion", "published_clip_score"] == 24.123
    assert pub.loc["textual_inversion", "published_study_fid"] == 0.103
    assert pub.loc["dreambooth", "published_study_is"] == 1.777
    assert pub.loc["dreambooth", "published_dino"] == 0.668
    assert pd.isna(pub.loc["textual_inversion", "published_clip_t"])  # listed only (CLIP variant unknown)
    assert pd.isna(pub.loc["lora", "published_dino"]) and pd.isna(pub.loc["base", "published_clip_score"])
    assert "published_fid" not in csv.columns and "published_kid" not in csv.columns

    md = (out / "t.md").read_text()
    assert TINY_STATEMENT in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Method | n | CLIP score | CLIP score (published) | FID | IS |")
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:6]]
    assert rows == ["Textual Inversion", "DreamBooth", "LoRA", "Base model (reference)"]
    assert "| LoRA | 8 | 10.00 [9.00, 11.50] | 30.1661 |" in md
    assert "n/a" in lines[5]  # base: no DINO
    assert "0.774" in md and "0.885" in md  # the DreamBooth paper's real-images row
    assert "abc123" in md and "openai/clip-vit-large-patch14" in md
    for package in ("torch", "diffusers", "transformers", "torchmetrics"):
        assert f'"{package}"' in md
    assert "FID: 8 generated vs 5 real images (lora)" in md
    assert "Our real images among themselves" in md and "DINO 0.540, CLIP-I 0.250" in md  # first row: TI

    html = (out / "t.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table") == 2
    assert "10.00 [9.00, 11.50]" in html and "abc123" in html and "randomly initialised models" in html
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_table_without_published_values_on_hub_models(tmp_path, jsons):
    del jsons["base"]
    make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", provenance=PROVENANCE)
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv["method"]) == ["textual_inversion", "dreambooth", "lora"]
    assert not [c for c in csv.columns if c.startswith("published_")]
    md = (tmp_path / "t.md").read_text()
    assert TINY_STATEMENT not in md and "(published)" not in md and "Published values" not in md


@pytest.mark.parametrize(
    ("models", "statement"),
    [("hub", None), ("tiny", TINY_STATEMENT), ("rehearsal", TINY_STATEMENT), ("world", WORLD_STATEMENT)],
)
def test_table_states_what_the_models_make_of_the_numbers(tmp_path, jsons, models, statement):
    make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", models=models)
    md = (tmp_path / "t.md").read_text()
    for text in (TINY_STATEMENT, WORLD_STATEMENT):
        assert (text in md) == (text == statement), (models, text)


def test_table_names_a_missing_metrics_file(tmp_path, jsons):
    jsons["lora"] = str(tmp_path / "nope.json")
    with pytest.raises(S2SError, match="nope.json"):
        make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", provenance={})
    assert not (tmp_path / "t.csv").exists()


def test_published_values_are_the_publications_numbers():
    # Literal numbers of the publications, not the code's constants.
    study = PUBLISHED["study_table1"]["rows"]
    clip = {"textual_inversion": 24.12, "dreambooth": 30.14, "lora": 30.17}  # the study, Table 1
    fid = {"textual_inversion": 0.103, "dreambooth": 0.030, "lora": 0.051}
    inception = {"textual_inversion": 1.50, "dreambooth": 1.777, "lora": 1.592}
    for row in clip:
        assert study[row]["clip_score"] == pytest.approx(clip[row], abs=0.005)
        assert study[row]["study_fid"] == fid[row] and study[row]["study_is"] == inception[row]
    paper = PUBLISHED["dreambooth_paper_table1"]["rows"]  # Ruiz et al. 2023, Table 1
    assert paper["real_images"] == {"dino": 0.774, "clip_i": 0.885}
    assert paper["dreambooth"] == {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305}
    assert paper["textual_inversion"] == {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255}


def test_published_value_only_beside_a_column_computed_the_same_way(tmp_path):
    tiny = {
        "clip_model": "results/tiny_models/clip",
        "dino_model": "facebook/dino-vits16",
        "study_feature_extractor": "results/tiny_models/inception_like.safetensors",
    }
    jsons = {
        "lora": metrics_json(tmp_path / "lora.json", "lora", 0.0, models=tiny),
        "dreambooth": metrics_json(tmp_path / "db.json", "dreambooth", 20.0),
    }
    frame = make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", published=PUBLISHED)
    pub = frame.set_index("method")
    assert pd.isna(pub.loc["lora", "published_clip_score"]) and pd.isna(
        pub.loc["lora", "published_study_fid"]
    )
    assert pub.loc["dreambooth", "published_clip_score"] == 30.1439
    assert pub.loc["dreambooth", "published_study_fid"] == 0.030
    # The DreamBooth paper's CLIP-I / CLIP-T: its CLIP variant is not stated, so never beside ours.
    assert pd.isna(pub.loc["dreambooth", "published_clip_i"]) and pd.isna(
        pub.loc["dreambooth", "published_clip_t"]
    )
    md = (tmp_path / "t.md").read_text()
    assert "lora: the published clip_score is not placed beside ours" in md
    assert "models.study_feature_extractor is 'results/tiny_models/inception_like.safetensors'" in md
    assert "30.1661" in md  # still listed among the published values
    # Too few images for the study's 18 vs 18: not comparable either.
    data = json.loads((tmp_path / "db.json").read_text())
    data["metrics"]["study_fid"]["n_real"] = 17
    write_json(tmp_path / "db.json", data)
    frame = make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", published=PUBLISHED)
    assert pd.isna(frame.set_index("method").loc["dreambooth", "published_study_fid"])
    assert "## Columns" in md and "pytorch-ignite's FID defaults" in md


def test_companion_table_has_paired_differences_by_prompt_and_seed(tmp_path, jsons):
    out = [tmp_path / f"c.{ext}" for ext in ("csv", "md", "html")]
    make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", companion=tuple(out))
    comp = pd.read_csv(out[0])
    row = comp[(comp.minuend == "dreambooth") & (comp.subtrahend == "textual_inversion")]
    row = row.set_index("metric").loc["clip_score"]
    # Same prompt and seed: the per-image difference is 2.0 - 4.0 everywhere, whatever the record order.
    assert row["difference"] == pytest.approx(-2.0) and (row["n_pairs"], row["n_prompts"]) == (8, 4)
    assert row["ci_low"] == pytest.approx(-2.0) and row["ci_high"] == pytest.approx(-2.0)
    assert "dino" not in set(comp.metric)  # no values: no row
    assert {("lora", "dreambooth"), ("base", "lora")} <= set(zip(comp.minuend, comp.subtrahend))
    md = out[1].read_text()
    assert "| DreamBooth - Textual Inversion | CLIP score | -2.00 [-2.00, -2.00] | 8 | 4 |" in md
    assert out[2].read_text().startswith("<!DOCTYPE html>")


def test_companion_interval_resamples_prompts(tmp_path, jsons):
    # Differences that vary by prompt: the interval is scipy's percentile bootstrap of prompt means.
    data = json.loads(Path(jsons["lora"]).read_text())
    for r in data["per_image"]:
        r["clip_t"] = 0.2 + int(r["prompt_id"][1:]) ** 2 / 100 + 0.001 * r["seed"]
    write_json(jsons["lora"], data)
    out = [tmp_path / f"c.{ext}" for ext in ("csv", "md", "html")]
    make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", companion=tuple(out))
    comp = pd.read_csv(out[0]).set_index(["minuend", "subtrahend", "metric"])
    row = comp.loc[("lora", "dreambooth", "clip_t")]
    diffs = np.array([(p**2 - p) / 100 + 0.001 * s for p in range(4) for s in range(2)]).reshape(4, 2)
    ci = scipy.stats.bootstrap(
        (diffs.mean(axis=1),), np.mean, n_resamples=400, method="percentile", rng=np.random.default_rng(7)
    ).confidence_interval
    assert row["difference"] == pytest.approx(diffs.mean())
    assert row["ci_low"] == pytest.approx(ci.low) and row["ci_high"] == pytest.approx(ci.high)
