"""The report: figures (``figures``) and self-contained HTML pages (``pages``) built from the results
folder; ``build_subject_pages`` and ``build_tables_page`` are what the workflow's report rules call."""

from __future__ import annotations

import logging
from pathlib import Path

from s2s.report import figures as fig
from s2s.report import pages

log = logging.getLogger(__name__)

TINY_NOTE = (
    "This run used tiny, randomly initialised models (models: tiny): the images are noise-like and "
    "the numbers mean nothing about quality. They show that every stage runs."
)
WORLD_NOTE = (
    "This run used the miniature world's pretrained models (models: world, models/world): 64 px "
    "procedurally drawn scenes, a small Stable Diffusion, CLIP, identity network and classifier. Its numbers "
    "compare the methods within that world; they are not SD v1.4 numbers."
)
REHEARSAL_NOTE = (
    "This run used random weights with the architectures of SD v1.4, CLIP ViT-L/14, DINO ViT-S/16 and the "
    "Inception-v3s (models: rehearsal): the images are noise and the numbers mean nothing about "
    "quality. It shows that the study's run finishes."
)
# The report's note on the models, by the run's `models` choice (s2s.config.model_kind).
NOTES = {"hub": None, "tiny": TINY_NOTE, "rehearsal": REHEARSAL_NOTE, "world": WORLD_NOTE}


def build_subject_pages(
    subject_dir: Path | str,
    methods: list[str],
    seeds: list[int],
    figures_dir: Path | str,
    samples_html: Path | str,
    training_html: Path | str,
    edits_html: Path | str | None = None,
    validation_prompt: str = "",
    note: str | None = None,
) -> None:
    """Every figure of one subject into ``figures_dir`` and its pages: samples (methods side by side
    per prompt, grids per method, photos), training and metrics, and edits when ``edits_html`` is set.

    ``methods`` are the sampled methods (``base`` included); trained ones get loss curves and cost."""
    subject_dir, figures_dir = Path(subject_dir), Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    subject = subject_dir.name
    samples = fig.sample_figures(subject_dir, methods, seeds, figures_dir)
    photos = fig.photo_figures(subject_dir, figures_dir)
    pages.samples_page(subject, samples, photos, Path(samples_html), note)
    trained = [m for m in methods if m != "base"]
    training = fig.training_figures(subject_dir, trained, figures_dir, validation_prompt)
    metrics = fig.metric_figures(subject_dir, methods, figures_dir)
    pages.training_page(subject, training, metrics, Path(training_html), note)
    if edits_html is not None:
        pages.edits_page(subject, fig.edit_figures(subject_dir, figures_dir), Path(edits_html), note)
    log.info("report pages of %s: %d prompts side by side", subject, len(samples["side_by_side"]))


def build_tables_page(
    table1_csv: Path | str,
    out: Path | str,
    summary_paths: list[Path | str] = (),
    companions: list[tuple[str, Path | str]] | None = None,
    note: str | None = None,
    run_name: str = "",
) -> None:
    """Table 1 (split to fit 1280 px), any companion CSV tables, and the training cost per method."""
    summaries: dict[str, dict] = {}
    for path in summary_paths:
        path = Path(path)
        summaries.setdefault(path.parent.parent.parent.name, {})[path.parent.name] = fig.read_json(path)
    pages.tables_page(Path(table1_csv), Path(out), companions, summaries, note, run_name)
