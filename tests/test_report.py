"""The report pages built from small fake results (no pipeline run), and rendered in headless Chromium.

The fake results follow results/README.md: two prompts x two seeds for every method, prepared photos,
class-prior images, loss.csv / train_summary.json, validation images, metrics JSONs, one edit, and
Table 1 written by s2s.metrics.table from the metrics JSONs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2s import plots
from s2s.report import build_subject_pages, build_tables_page

METHODS = ["base", "textual_inversion", "dreambooth", "lora"]
TRAINED = METHODS[1:]
PROMPTS = {"p00": "a sks toy on the beach at sunset", "p01": "a sks toy in the snow"}
SEEDS = [0, 7]
EDIT = {
    "edit_id": "001_horse",
    "source_prompt": "a dog on the grass",
    "target_prompt": "a horse on the grass",
    "edit": "replace",
    "model": "lora",
    "inversion": None,
    "image": None,
    "tokens": ["a", "dog", "on", "the", "grass"],
    "target_tokens": ["a", "horse", "on", "the", "grass"],
    # The world benchmark's metrics of the edit (s2s.edit.photo_metrics) and the mask they used.
    "metrics": {
        "clip_t": 0.25,
        "mask_source": "cross_attention",
        "mask_fraction": 0.375,
        "background_psnr": 27.34,
        "background_ssim": 0.9512,
        "background_mse": 0.00185,
        "structure_distance": 0.0123,
        "clip_whole": 24.56,
        "clip_edited": 21.04,
    },
    "mask": {
        "source": "cross_attention",
        "source_words": ["dog"],
        "target_words": ["horse"],
        "threshold": 0.3,
    },
}


def _png(path: Path, seed: int, size: int = 64) -> Path:
    """A 64 px image with structure (blocks of colour and noise), different per seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8).repeat(size // 4, 0).repeat(size // 4, 1)
    noise = rng.integers(-20, 20, (size, size, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(blocks + noise, 0, 255).astype(np.uint8)).save(path)
    return path


def _metric(value: float) -> dict:
    return {"value": value, "ci_low": value * 0.9, "ci_high": value * 1.1, "n": 4}


def make_fake_results(root: Path) -> Path:
    from s2s.metrics.table import COLUMNS, PUBLISHED, make_table

    subject = root / "toy"
    for m_index, method in enumerate(METHODS):
        for p_index, (pid, prompt) in enumerate(PROMPTS.items()):
            for seed in SEEDS:
                _png(subject / "samples" / method / pid / f"{seed}.png", 100 * m_index + 10 * p_index + seed)
            (subject / "samples" / method / pid / "prompt.json").write_text(
                json.dumps({"prompt_id": pid, "prompt": prompt, "seeds": SEEDS, "method": method})
            )
        per_image = [
            {
                "path": "x.png",
                "prompt": prompt,
                "seed": seed,
                "clip_score": 20 + m_index + seed / 7,
                "clip_t": 0.2 + 0.01 * m_index + 0.01 * seed / 7,
                "clip_i": 0.5,
                "dino": 0.3 + 0.01 * seed / 7,
            }
            for prompt in PROMPTS.values()
            for seed in SEEDS
        ]
        metrics = {key: _metric(10.0 + m_index + k) for k, (key, _, _) in enumerate(COLUMNS)}
        (subject / "metrics").mkdir(parents=True, exist_ok=True)
        (subject / "metrics" / f"{method}.json").write_text(
            json.dumps(
                {
                    "method": method,
                    "n_generated": 4,
                    "n_real": 4,
                    "metrics": metrics,
                    "per_image": per_image,
                    "bootstrap": {"confidence": 0.95},
                }
            )
        )
    for i in range(4):
        _png(subject / "instance" / f"{i:03d}.png", 1000 + i)
    for i in range(3):
        _png(subject / "class_images" / f"class_{i:04d}.png", 2000 + i)
    (subject / "class_images" / "class_prompt.json").write_text(json.dumps({"prompt": "a photo of a toy"}))
    (subject / "instance" / ".snakemake_timestamp").write_text("")
    for m_index, method in enumerate(TRAINED):
        folder = subject / "models" / method
        folder.mkdir(parents=True)
        steps = np.arange(1, 41)
        loss = 0.5 / (1 + m_index) + 0.05 * np.sin(steps)
        prior = 0.1 + 0.0 * steps if method == "dreambooth" else 0.0 * steps
        (folder / "loss.csv").write_text(
            "step,loss,prior_loss\n"
            + "".join(f"{s},{v:.6f},{p:.6f}\n" for s, v, p in zip(steps, loss, prior))
        )
        (folder / "train_summary.json").write_text(
            json.dumps(
                {
                    "method": method,
                    "steps": 40,
                    "wall_time_s": 30.0 + 10 * m_index,
                    "median_step_s": 0.1 * (m_index + 1),
                    "peak_memory_mb": 500 * (m_index + 1),
                    "trainable_params": 10 ** (3 + 2 * m_index),
                    "device": "cpu",
                }
            )
        )
        for step in (10, 20, 40):
            _png(subject / "validation" / method / f"step-{step:06d}.png", 3000 + step + m_index)
    edit = subject / "edits" / EDIT["edit_id"]
    for name, seed in (("source.png", 1), ("reconstruction.png", 1), ("edited.png", 2)):
        _png(edit / name, 4000 + seed)
    rng = np.random.default_rng(0)
    maps = rng.random((5, 8, 8))
    with Image.open(edit / "source.png") as source:
        sheet = plots.attention_sheet(
            maps,
            EDIT["tokens"],
            source.copy(),
            maps[::-1],
            EDIT["target_tokens"],
            EDIT["source_prompt"],
            EDIT["target_prompt"],
        )
    sheet.save(edit / "attention.png")
    (edit / "edit.json").write_text(json.dumps(EDIT))
    make_table(
        {m: subject / "metrics" / f"{m}.json" for m in METHODS},
        root / "table1.csv",
        root / "table1.md",
        root / "table1.html",
        published=PUBLISHED,  # the widest table: published values beside ours
    )
    return root


@pytest.fixture(scope="module")
def report_pages(tmp_path_factory) -> dict[str, Path]:
    root = make_fake_results(tmp_path_factory.mktemp("results"))
    out = root / "toy" / "report"
    build_subject_pages(
        root / "toy",
        METHODS,
        SEEDS,
        out / "figures",
        out / "samples.html",
        out / "training.html",
        out / "edits.html",
        validation_prompt="a sks toy",
        note="fake results for a test",
    )
    summaries = sorted((root / "toy" / "models").glob("*/train_summary.json"))
    build_tables_page(root / "table1.csv", root / "report" / "tables.html", summaries, run_name="testrun")
    return {
        "root": root,
        "samples": out / "samples.html",
        "training": out / "training.html",
        "edits": out / "edits.html",
        "tables": root / "report" / "tables.html",
    }


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_samples_page_has_a_side_by_side_figure_per_prompt_with_every_method(report_pages):
    html = report_pages["samples"].read_text()
    figures = report_pages["root"] / "toy" / "report" / "figures"
    for prompt in PROMPTS.values():
        assert f"\u201c{prompt}\u201d" in html
    assert len(re.findall(r'<section class="prompt"', html)) == len(PROMPTS)
    assert sorted(p.name for p in figures.glob("side_by_side_*.png")) == [
        "side_by_side_000.png",
        "side_by_side_001.png",
    ]
    assert sorted(p.name for p in figures.glob("grid_*.png")) == sorted(f"grid_{m}.png" for m in METHODS)
    # Images are inlined: the page is one self-contained file for Snakemake's report.
    assert html.count('src="data:image/png;base64,') == len(PROMPTS) + len(METHODS) + 2
    assert "Class-prior images" in html and "Subject photos" in html
    with Image.open(figures / "side_by_side_000.png") as side, Image.open(figures / "grid_base.png") as grid:
        # A side-by-side figure has a column per method (4), a grid a column per seed (2): wider.
        assert side.width > grid.width


def test_edits_page_names_the_edit(report_pages):
    text = _text(report_pages["edits"].read_text())
    for value in ("001_horse", "replace", "a dog on the grass", "a horse on the grass", "LoRA"):
        assert value in text
    assert "Inversion none (source generated" in text


def test_edits_page_shows_the_benchmarks_metrics_with_their_mask(report_pages):
    from html import unescape

    from s2s.report.pages import edit_metric_rows

    text = unescape(_text(report_pages["edits"].read_text()))
    for value in (
        "Edit mask cross-attention of dog / horse at threshold 0.3 (the model's own estimate",
        "38% of the image may change",
        "Background PSNR 27.3 dB, SSIM 0.951, MSE 1.85e-03",
        "Structure distance 1.23e-02",
        "CLIP whole / edited 24.6 / 21.0",
    ):
        assert value in text, value
    renderer = {
        "metrics": {**EDIT["metrics"], "mask_source": "renderer", "background_psnr": None},
        "mask": {"source": "renderer", "edit_type": "object"},
    }
    rows = dict(edit_metric_rows(renderer))
    assert rows["Edit mask"].startswith("renderer (world photo, object edit: exact)")
    assert rows["Background"] == "none: the mask covers the whole image"
    assert edit_metric_rows({"metrics": {"clip_t": 0.2}}) == []  # an edit.json from before the metrics


def test_tables_page_splits_table1_and_lists_cost(report_pages):
    from s2s.metrics.table import COLUMNS

    html = report_pages["tables"].read_text()
    text = _text(html)
    for _, label, _ in COLUMNS:
        assert f"<th>{label}</th>" in html, label
    assert html.count("<table>") == 3  # Table 1 in two parts, and the training cost
    assert "Textual Inversion" in text and "Base model (reference)" in text
    assert "trainable parameters" in text and "100,000" in text  # the DreamBooth row's 10**5
    assert "testrun" in text


@pytest.mark.parametrize(
    ("models", "note"), [("hub", None), ("tiny", "TINY"), ("rehearsal", "REHEARSAL"), ("world", "WORLD")]
)
def test_report_note_follows_the_models_choice(models, note):
    from s2s import report
    from s2s.report.steps import _note

    assert _note({"models": models}) == (getattr(report, f"{note}_NOTE") if note else None)
    if models == "hub":
        assert _note({}) is None  # hub is the default


def test_scan_folder_does_not_report_snakemake_marker(tmp_path):
    from s2s.data import scan_folder

    _png(tmp_path / "a.png", 0)
    (tmp_path / ".snakemake_timestamp").write_text("")
    (tmp_path / ".DS_Store").write_text("")
    report = scan_folder(tmp_path, 64)
    assert not any("snakemake" in line for line in report.skipped)
    assert any(".DS_Store" in line for line in report.skipped)


# ---------------------------------------------------------------- headless Chromium

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    images: imgs.map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, shown: i.clientWidth})),
    scrollWidth: document.documentElement.scrollWidth,
    tables: [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right),
  });
  document.body.appendChild(out);
});
</script>
"""


def _chromium(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={cwd / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def render(page: Path, tmp: Path, height: int = 1800) -> tuple[dict, np.ndarray]:
    """The page at 1280 px in headless Chromium: what its images and tables did (from a probe script run
    after load, read back with --dump-dom) and a screenshot."""
    probed = tmp / f"{page.stem}_probe.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(
        ["--window-size=1280,1000", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], tmp
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no probe output from Chromium: {dom.stderr[-2000:]}"
    shot = tmp / f"{page.stem}.png"
    run = _chromium([f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()], tmp)
    assert shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=float)
    import html as html_lib

    return json.loads(html_lib.unescape(found.group(1))), pixels


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
@pytest.mark.parametrize("name", ["samples", "edits", "tables"])
def test_pages_render_in_chromium_at_1280px(report_pages, tmp_path, name):
    probe, pixels = render(report_pages[name], tmp_path)
    assert probe["scrollWidth"] <= 1280, f"{name} page is wider than 1280 px: {probe['scrollWidth']}"
    assert all(right <= 1280 for right in probe["tables"]), probe["tables"]
    if name == "tables":
        assert len(probe["tables"]) == 3
    else:
        assert probe["images"] and all(i["ok"] for i in probe["images"]), probe["images"]
        assert all(i["shown"] > 100 for i in probe["images"]), probe["images"]
    # Not blank: the rendered page varies, in its top part (title, first figure) and overall.
    assert pixels.shape[1] == 1280
    assert pixels[:400].std() > 10 and (pixels < 128).mean() > 0.005


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_side_by_side_figure_is_shown_at_full_resolution(report_pages, tmp_path):
    """The side-by-side figure is displayed at its own width (not shrunk below legibility)."""
    probe, _ = render(report_pages["samples"], tmp_path)
    figures = report_pages["root"] / "toy" / "report" / "figures"
    with Image.open(figures / "side_by_side_000.png") as side:
        width = side.width
    first = probe["images"][0]
    assert first["w"] == width and first["shown"] == min(width, 1240)
