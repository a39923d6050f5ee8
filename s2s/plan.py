"""What the Snakefile needs at parse time, with no torch, diffusers, transformers or PIL.

Snakemake parses the Snakefile for every dry run and again inside every cluster job, and a plain
Snakemake install must be able to read it: this module (with s2s.config, s2s.manifest, s2s.preflight and
s2s.io) is the whole import path of the rules. It holds:

- the edit manifest's planner (rows, edit ids, images, models) and its parse-time check (everything
  that needs no tokenizer or model; a row's cells are checked by ``s2s.manifest``, the edit job's
  checks too, and ``s2s.edit.batch.validate_manifest`` re-checks all rows with the model's tokenizer
  before any edit runs);
- the sample folder of a prompt, derived from the prompt text, so that a changed prompt gets a new
  folder and no output ever lists images of a prompt the config no longer has;
- the cheap check of a subject's photo folder (count, suffixes, sizes, file headers), every problem
  in one line;
- ``stable``, the canonical JSON string of a rule's ``params`` (the ``depends_*`` functions of
  s2s.config choose what goes in: the part of the config the rule's outputs depend on);
- the report pages' paths (``report_*``, ``sample_files``, ``edit_targets``), from the config's choices
  alone: what exists on disk never decides what the DAG holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from s2s import registry
from s2s.io import S2SError
from s2s.manifest import Where, check_row, check_words, edit_slug, read_manifest

TRAINED_MODELS = registry.NAMES
MODEL_NAMES = (registry.BASE, *TRAINED_MODELS)

# Photo suffixes read by s2s.data (JPEG, PNG, WebP). Like s2s.data (PIL), the content decides the
# format, not the suffix: the study's own folder has a WebP photo named .jpg.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Image formats s2s.data cannot read without extra plugins and refuses by name (the parse check names them
# too, so that the prepare job does not find them one run later).
UNSUPPORTED_SUFFIXES = (".heic", ".heif", ".avif", ".gif", ".tif", ".tiff", ".bmp", ".raw", ".cr2", ".nef",
                        ".svg")  # fmt: skip


def _known_format(head: bytes) -> bool:
    return (
        head.startswith(b"\xff\xd8\xff")
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
    )


# ---------------------------------------------------------------- edit manifest


def manifest_rows(path: Path | str, results_dir: str) -> list[dict]:
    """A manifest's rows with image paths resolved: ``{results}`` stands for the workflow's results
    folder (so a manifest can name an image the workflow draws); other relative paths are taken from
    the manifest's folder."""
    path = Path(path)
    rows = read_manifest(path)
    for raw in rows:
        image = raw.get("image")
        if image:
            image = str(image).replace("{results}", results_dir)
            if "{results}" not in str(raw["image"]) and not os.path.isabs(image):
                image = os.path.normpath(path.parent / image)
            raw["image"] = image
    return rows


def plan_manifest(path: Path | str, subject_model: str | None, results_dir: str = "results") -> list[dict]:
    """What the workflow needs at DAG-building time, without loading models or reading images: each
    row's edit_id, image path (or None), model, and the row itself (the edit job's params)."""
    plan = []
    for number, raw in enumerate(manifest_rows(path, results_dir), start=1):
        source, target = raw.get("source_prompt", ""), raw.get("target_prompt", "")
        edit_id = str(raw.get("edit_id") or edit_slug(number, source, target))
        model = raw.get("model") or (subject_model if raw.get("edit") == "subject" else "base")
        row = {k: v for k, v in raw.items() if k is not None}
        row["edit_id"] = edit_id
        plan.append({"edit_id": edit_id, "image": raw.get("image"), "model": model, "row": row})
    return plan


def check_photo_header(path: Path) -> str | None:
    """None if ``path`` looks like a readable photo (suffix, size, magic bytes); else the problem."""
    suffix = path.suffix.lower()
    if suffix not in PHOTO_SUFFIXES:
        return f"{path}: {suffix or 'no extension'} is not a supported image; use JPEG, PNG or WebP"
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if not head:
        return f"{path}: empty file (0 bytes)"
    if not _known_format(head):
        return f"{path}: not a readable image (the content is not JPEG/PNG/WebP)"
    return None


def check_manifest(
    path: Path | str, methods: list[str], subject_model: str | None, results_dir: str
) -> list[dict]:
    """Every manifest check that needs no model, tokenizer or image decoding; the plan if all pass.

    Same one-line messages as s2s.edit.batch (``<manifest>, row N, column 'X': problem``): a row's cells
    are checked by the same ``s2s.manifest.check_row``. Images under the results folder are drawn by the
    workflow and checked when their job has run."""
    where = Where(str(path))
    plan = plan_manifest(path, subject_model, results_dir)
    raws = manifest_rows(path, results_dir)
    if not raws:
        raise S2SError(f"{path}: no edits listed")
    seen: dict[str, int] = {}
    for number, (raw, planned) in enumerate(zip(raws, plan), start=1):
        cells = check_row(raw, number, where)
        model = planned["model"]
        if model is None:
            raise where.error(
                number,
                "model",
                "subject edit without a model and no single trained model to default to: set the "
                "row's model or the edit default 'subject_model'",
            )
        # A row's model: base, or any method or variant the run trains (config key methods).
        source = "" if cells.model else " (the default, config key edits.subject_model)"
        if cells.edit == "subject" and model == "base":
            raise where.error(
                number,
                "model",
                f"a subject edit{source} needs a trained subject model (this run's: {', '.join(methods)}), "
                "not base",
            )
        if model != "base" and model not in methods:
            raise where.error(
                number,
                "model",
                f"{model!r}{source} is not a model this run trains; use base or one of the methods and "
                f"variants of config key methods: {', '.join(methods)}",
            )
        image = cells.image
        if image and not Path(image).is_relative_to(results_dir):
            problem = "does not exist" if not Path(image).is_file() else check_photo_header(Path(image))
            if problem:
                message = f"{image} is not a readable image ({problem})"
                raise where.error(number, "image", message)
        if cells.edit_id in seen:
            raise where.error(
                number, "edit_id", f"{cells.edit_id!r} is also the edit_id of row {seen[cells.edit_id]}"
            )
        seen[cells.edit_id] = number
        check_words(raw, cells.params, where, number)
    return plan


# ---------------------------------------------------------------- subject photos


def check_photo_folder(folder: Path, key: str, lowest: int, highest: int) -> int:
    """Count a subject's photos and check each one cheaply; raise one line naming the key and each problem.

    Suffix, size and magic bytes only: decoding every photo at each parse (every dry run, every cluster
    job) would cost seconds for a 20-photo folder; prepare_instance decodes them all once. Every problem
    the check can see is in the one line, so a folder with several bad files costs one run, not one each."""
    folder = Path(folder)
    # Files, and links to files that are gone (named as unreadable, as s2s.data does); not folders or pipes.
    files = sorted(p for p in folder.iterdir() if p.is_file() or not p.exists())
    files = [p for p in files if not p.name.startswith(".")]
    photos = [p for p in files if p.suffix.lower() in PHOTO_SUFFIXES]
    if not photos:
        raise S2SError(f"config key {key}: folder {folder} holds no photos (JPEG, PNG or WebP expected)")
    problems = []
    if not lowest <= len(photos) <= highest:
        problems.append(
            f"folder {folder} holds {len(photos)} photo(s); give {lowest} to {highest} "
            "(or change data.min_photos / data.max_photos)"
        )
    bad = [problem for photo in photos if (problem := check_photo_header(photo))]
    bad += [
        f"{path}: {path.suffix.lower()} images are not supported (convert to JPEG, PNG or WebP)"
        for path in files
        if path.suffix.lower() in UNSUPPORTED_SUFFIXES
    ]
    problems += bad
    if len(problems) == 1:
        raise S2SError(f"config key {key}: {problems[0]}" + ("; replace or remove it" if bad else ""))
    if problems:  # the count is one problem at most, so at least one photo is bad
        listed = "; ".join(f"({number}) {problem}" for number, problem in enumerate(problems, start=1))
        raise S2SError(
            f"config key {key}: {len(problems)} problems in folder {folder}: {listed}; "
            "replace or remove each bad photo"
        )
    return len(photos)


# ---------------------------------------------------------------- prompts


def prompt_folder(prompt: str) -> str:
    """A prompt's sample folder: a readable slug of its words plus a short hash of the exact text.

    A changed prompt gets a new folder, so no grid or metric ever mixes in images of an old prompt."""
    words = prompt.replace("{}", " subject ").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-")[:40].strip("-") or "prompt"
    return f"{slug}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"


def stable(value) -> str:
    """A canonical JSON string of a params value (dict order and float spelling fixed)."""
    return json.dumps(value, sort_keys=True, default=str)


# ---------------------------------------------------------------- world edit benchmark

# The subject of the benchmark's subject edits: kept equal to s2s.world.edit_cases.SUBJECT and
# SUBJECT_TOKEN (tests/test_edit_bench_run.py checks it; that module draws scenes with PIL).
EDIT_BENCH_SUBJECT = {"class": "dog", "world": 1, "token": "sks"}


def edit_bench_subject(config: dict) -> str | None:
    """The config subject whose trained model (``edit_bench.subject_model``) makes the benchmark's subject
    edits: the world's dog 1 with the token sks. None when the subject edits use the base model or are
    not run."""
    from s2s.config import model_kind  # s2s.config imports this module

    bench = config["edit_bench"]
    if "subject" not in bench["edit_types"] or bench["subject_model"] == "base":
        return None
    wanted = EDIT_BENCH_SUBJECT
    fix = (
        f"add the subject {{world: {wanted['world']}, class: {wanted['class']}, token: {wanted['token']}}}, "
        "set edit_bench.subject_model: base, or leave subject out of edit_bench.edit_types"
    )
    if model_kind(config) != "world":
        raise S2SError(
            f"config key edit_bench.subject_model: a trained {bench['subject_model']} model of the world's "
            "subject needs models: world (the benchmark's cases are world scenes); set it, or set "
            "edit_bench.subject_model: base"
        )
    for name, raw in config["subjects"].items():
        if (raw.get("class"), raw.get("world"), raw.get("token", "sks")) == tuple(wanted.values()):
            return name
    raise S2SError(
        f"config key edit_bench.subject_model: no subject is the world's subject of the edits; {fix}"
    )


def depends_edit_bench(config: dict) -> str:
    """The benchmark's settings (its models and the subject's trained model are its inputs)."""
    return stable({"edit_bench": config["edit_bench"], "subject": edit_bench_subject(config)})


# ---------------------------------------------------------------- the report's pages (rules/report.smk)
#
# Paths only, from the config's choices alone: what exists on disk never decides what is planned.


def sample_files(
    results: str, subject: str, method: str, prompt_ids: list[str], seeds: list[int]
) -> list[str]:
    """A method's sample images of a subject: one per prompt and seed."""
    return [f"{results}/{subject}/samples/{method}/{pid}/{seed}.png" for pid in prompt_ids for seed in seeds]


def edit_targets(results: str, subject: str, edit_ids: list[str]) -> list[str]:
    return [f"{results}/{subject}/edits/{edit_id}/edit.json" for edit_id in edit_ids]


def report_subject_pages(results: str, edits: bool) -> dict[str, str]:
    """The report_subject rule's outputs ({subject} a wildcard): its pages and its figures folder."""
    pages = {
        "samples": f"{results}/{{subject}}/report/samples.html",
        "training": f"{results}/{{subject}}/report/training.html",
        "figures": f"{results}/{{subject}}/report/figures",
    }
    if edits:
        pages["edits"] = f"{results}/{{subject}}/report/edits.html"
    return pages


def report_subject_inputs(
    results: str,
    subject: str,
    *,
    sample_methods: list[str],
    methods: list[str],
    prompt_ids: list[str],
    seeds: list[int],
    edit_ids: list[str] | None,
    class_images: bool,
) -> dict:
    """What a subject's pages show: every sample, metrics, training summary, photo and edit (edit_ids None:
    the edit stage is off)."""
    files = {
        "samples": [f for m in sample_methods for f in sample_files(results, subject, m, prompt_ids, seeds)],
        "metrics": [f"{results}/{subject}/metrics/{m}.json" for m in sample_methods],
        "summaries": [f"{results}/{subject}/models/{m}/train_summary.json" for m in methods],
        "instance": f"{results}/{subject}/instance",
    }
    if class_images:
        files["class_images"] = f"{results}/{subject}/class_images"
    if edit_ids is not None:
        files["edits"] = edit_targets(results, subject, edit_ids)
    return files


def report_targets(results: str, subjects: list[str], edits: bool, world_check: bool) -> list[str]:
    """Every report page: the tables page, each subject's pages, and the world check's page when
    world.report_check asks for it (the check then runs first if its check.json is missing)."""
    targets = [f"{results}/report/tables.html"]
    for subject in subjects:
        pages = report_subject_pages(results, edits)
        targets += [
            pages[name].format(subject=subject) for name in ("samples", "training", "edits") if name in pages
        ]
    if world_check:
        targets.append(f"{results}/report/world.html")
    return targets
