"""The report's figures of one subject, read from the results layout (results/README.md).

Each function takes the subject's results folder and a folder for figures, draws with ``s2s.plots`` and
returns what it drew, so that the pages (``s2s.report.pages``) can caption it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from s2s import plots
from s2s.io import S2SError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Figure:
    path: Path
    title: str
    caption: str = ""
    meta: dict = field(default_factory=dict)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise S2SError(f"report: {path} not found (run the stage that writes it first)") from exc
    except json.JSONDecodeError as exc:
        raise S2SError(f"report: {path} is not valid JSON ({exc})") from exc


def images_in(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def sample_figures(subject_dir: Path, methods: list[str], seeds: list[int], out: Path) -> dict:
    """A labelled grid per method and one side-by-side figure per prompt (every method on the same seeds).

    Prompts are matched across methods by their text (``prompt.json``), not by folder name."""
    grids, by_prompt = [], {}
    for method in plots.ordered(methods):
        rows = plots.prompt_rows(subject_dir / "samples" / method, seeds)
        if not rows:
            continue
        path = out / f"grid_{method}.png"
        plots.sample_grid(rows, path, title=f"{plots.method_label(method)}: prompts x seeds")
        grids.append(Figure(path, plots.method_label(method), meta={"method": method, "prompts": len(rows)}))
        for row in rows:
            entry = by_prompt.setdefault(row["prompt"], {"prompt_id": row["prompt_id"], "columns": {}})
            entry["columns"][method] = row["images"]
    side = []
    for index, (prompt, entry) in enumerate(by_prompt.items()):
        path = out / f"side_by_side_{index:03d}.png"
        plots.side_by_side(prompt, entry["columns"], path)
        side.append(
            Figure(path, prompt, meta={"prompt_id": entry["prompt_id"], "methods": list(entry["columns"])})
        )
    return {"grids": grids, "side_by_side": side}


def photo_figures(subject_dir: Path, out: Path, class_limit: int = 24) -> list[Figure]:
    figures = []
    instance = images_in(subject_dir / "instance")
    if instance:
        path = out / "instance_photos.png"
        plots.photo_sheet(instance, path, "Prepared subject photos", limit=None)
        figures.append(
            Figure(path, "Subject photos", "centre-cropped and resized for training", {"n": len(instance)})
        )
    class_images = images_in(subject_dir / "class_images")
    if class_images:
        meta = {}
        if (subject_dir / "class_images" / "class_prompt.json").exists():
            meta = read_json(subject_dir / "class_images" / "class_prompt.json")
        path = out / "class_images.png"
        title = "Class-prior images"
        if meta.get("prompt"):
            title += f": \u201c{meta['prompt']}\u201d"
        plots.photo_sheet(class_images, path, title, limit=class_limit)
        figures.append(Figure(path, "Class-prior images", meta.get("prompt", ""), {"n": len(class_images)}))
    return figures


def training_figures(
    subject_dir: Path, methods: list[str], out: Path, validation_prompt: str = ""
) -> list[Figure]:
    figures = []
    curves, summaries = {}, {}
    for method in methods:
        folder = subject_dir / "models" / method
        if (folder / "loss.csv").exists():
            curves[method] = plots.read_loss_csv(folder / "loss.csv")
        if (folder / "train_summary.json").exists():
            summaries[method] = read_json(folder / "train_summary.json")
    if curves:
        path = out / "loss_curves.png"
        plots.loss_curves(curves, path)
        caption = "one panel per method, each on its own scale"
        if any("validation_loss" in c for c in curves.values()):
            caption += "; the held-out photos' loss (training.validation_split) at each checkpoint"
        figures.append(Figure(path, "Training loss", caption))
    if summaries:
        path = out / "training_cost.png"
        plots.training_cost(summaries, path)
        figures.append(
            Figure(path, "Training cost", "from each method's train_summary.json", {"summaries": summaries})
        )
    series = {m: plots.validation_steps(subject_dir / "validation" / m) for m in methods}
    if any(series.values()):
        path = out / "validation.png"
        plots.validation_strip(series, path, validation_prompt or None)
        figures.append(Figure(path, "Validation images over training steps"))
    return figures


def metric_figures(subject_dir: Path, methods: list[str], out: Path) -> list[Figure]:
    metrics = {}
    for method in methods:
        path = subject_dir / "metrics" / f"{method}.json"
        if path.exists():
            metrics[method] = read_json(path)
    if not metrics:
        return []
    path = out / "per_prompt_metrics.png"
    plots.per_prompt_metrics(metrics, path)
    return [Figure(path, "Metrics per prompt", "mean over seeds with a 95% t interval over seeds")]


def edit_figures(subject_dir: Path, out: Path) -> list[Figure]:
    """Per edit: the labelled before/after (drawn here from edit.json, so older results get labels
    too) and the attention sheet written by the edit job."""
    figures = []
    edits_dir = subject_dir / "edits"
    folders = (
        sorted(p for p in edits_dir.iterdir() if (p / "edit.json").exists()) if edits_dir.is_dir() else []
    )
    for folder in folders:
        record = read_json(folder / "edit.json")
        path = out / f"edit_{folder.name}.png"
        plots.before_after(record, folder, path)
        figures.append(
            Figure(
                path,
                record.get("edit_id", folder.name),
                meta={"record": record, "attention": folder / "attention.png"},
            )
        )
    return figures
