"""The results table: row order, columns, published values, provenance, atomic outputs."""

from __future__ import annotations

import pandas as pd
import pytest

from s2s.io import S2SError, write_json
from s2s.metrics.table import COLUMNS, PUBLISHED, TINY_STATEMENT, make_table

METRIC_KEYS = [key for key, _, _ in COLUMNS]


def metrics_json(path, method: str, offset: float, with_dino: bool = True) -> str:
    metrics = {
        key: {"value": 10 + offset + i, "ci_low": 9 + offset + i, "ci_high": 11.5 + offset + i, "n": 8}
        for i, key in enumerate(METRIC_KEYS)
    }
    if not with_dino:
        metrics["dino"] = None
    write_json(
        path,
        {
            "method": method,
            "n_generated": 8,
            "n_real": 5,
            "metrics": metrics,
            "reference": {"dino_real": 0.5 + offset / 1000, "clip_i_real": 0.25},
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
        tiny_models=True,
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
    assert pub.loc["textual_inversion", "published_study_fid_softmax"] == 0.103
    assert pub.loc["dreambooth", "published_study_is"] == 1.777
    assert pub.loc["dreambooth", "published_dino"] == 0.668
    assert pub.loc["textual_inversion", "published_clip_t"] == 0.255
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
    assert "10.00 [9.00, 11.50]" in html and "abc123" in html and "tiny, randomly initialised" in html
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_table_without_published_or_tiny_models(tmp_path, jsons):
    del jsons["base"]
    make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", provenance=PROVENANCE)
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv["method"]) == ["textual_inversion", "dreambooth", "lora"]
    assert not [c for c in csv.columns if c.startswith("published_")]
    md = (tmp_path / "t.md").read_text()
    assert TINY_STATEMENT not in md and "(published)" not in md and "Published values" not in md


def test_table_names_a_missing_metrics_file(tmp_path, jsons):
    jsons["lora"] = str(tmp_path / "nope.json")
    with pytest.raises(S2SError, match="nope.json"):
        make_table(jsons, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.html", provenance={})
    assert not (tmp_path / "t.csv").exists()
