"""The world edit benchmark (issue 23): Prompt-to-Prompt after four inversions, and a plain baseline, on
the world's edit cases with ground-truth targets. docs/edit_bench.md describes the columns and choices.

- Cases: the first ``cases`` of ``s2s.world.edit_cases.edit_cases(seed, ...)`` of the chosen edit types
  (``bench_cases``), in source order; the same for a seed whatever the count (a prefix).
- Methods (``METHODS``): P2P with the edit type's controller (``controller_spec``) after DDIM, null-text,
  negative-prompt or Direct Inversion, and ``baseline``: the target prompt regenerated from DDIM inversion's
  noise with no attention control. Each source is inverted once per inversion method (per model: subject
  cases use the trained subject model) and edited into all of its cases.
- Cost: ``unet_calls`` counted by a forward hook on the UNet (``s2s.edit.processors.count_unet_calls``,
  inside ``invert`` and ``generate_edit``), ``seconds`` (wall) and ``cpu_seconds`` (this process's CPU
  time), each the source's inversion plus the case's edit: what one edit of a photo costs.
- Metrics (``score``): read back from the PNG files as saved, through ``s2s.edit.bench_metrics`` (the world's
  identity ViT for the structure distance, the world CLIP for the CLIP scores); ``target_attribute_correct``
  from the world classifier (class, colour, context) or, for subject edits, the attribute read-out's
  identification of the subject against a line-up. A ``ground_truth`` row per case scores the renderer's
  target as if it were an edit: the ceiling of every metric and the read-outs' accuracy on the truth.
- Summary (``summarise``): per method and edit type, the mean of each column with a percentile-bootstrap
  interval resampling cases (``s2s.metrics.bootstrap.bootstrap_ci``); and issue 23's targets measured
  from the rows, paired by case (``s2s.world_studies.edit_bench_targets``).
- Speed: with ``jobs`` > 1 the sources are split between worker processes (``shards``, ``python -m
  s2s.world_studies.edit_bench``), each generating and scoring its sources with one torch thread.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s2s.config import EditBenchConfig
from s2s.edit.photo_metrics import PHOTO_METRICS
from s2s.io import S2SError, save_png, write_json, write_text
from s2s.world.edit_cases import (
    ACCESSORIES,
    EDIT_TYPES,
    SUBJECT,
    SUBJECT_TOKEN,
    EditCase,
    by_source,
    edit_cases,
    write_case,
)
from s2s.world_studies.edit_bench_targets import edit_bench_targets

log = logging.getLogger(__name__)

# method -> its inversion; "baseline" has no attention control.
METHODS = {
    "p2p_ddim": "ddim",
    "p2p_null_text": "null_text",
    "p2p_negative_prompt": "negative_prompt",
    "p2p_direct": "direct",
    "baseline": "ddim",
}
REFERENCE = "ground_truth"  # the renderer's target scored as an edit (the ceiling)
# P2P's defaults (google/prompt-to-prompt's notebooks): cross-attention replaced for 80% of the steps,
# self-attention for the first 40% (layers of at most 16x16 tokens).
CROSS_REPLACE_STEPS = 0.8
SELF_REPLACE_STEPS = 0.4
LINEUP = 40  # world dogs the subject is identified against (s2s.world_studies.study.LINEUP)
METRICS = (
    *PHOTO_METRICS,  # the metrics without a ground truth, as a manifest's edits get them
    "gt_psnr",
    "gt_psnr_in_mask",
    "target_attribute_correct",
)
COST = ("seconds", "cpu_seconds", "unet_calls")
COLUMNS = (
    "case",
    "source_id",
    "edit_type",
    "method",
    "inversion",
    "model",
    *COST,
    "inversion_seconds",
    "inversion_unet_calls",
    *METRICS,
    "target_attribute",
    "read_as",
    "mask_fraction",
    "source_prompt",
    "target_prompt",
)
SUMMARY_COLUMNS = (*COST, *METRICS)


# -------------------------------------------------------------------------------------------------
# Cases and controllers


def bench_cases(seed: int, count: int, edit_types=EDIT_TYPES) -> list[EditCase]:
    """The first ``count`` cases of the given edit types, in source order (a prefix: the same cases for a
    seed whatever ``count``), drawing sources until there are enough."""
    unknown = set(edit_types) - set(EDIT_TYPES)
    if unknown or not edit_types:
        raise S2SError(
            f"config key edit_bench.edit_types: {sorted(unknown)}; use some of {', '.join(EDIT_TYPES)}"
        )
    num_sources = max(4, math.ceil(count / 3))
    while True:
        cases = [c for c in edit_cases(seed, num_sources) if c.edit_type in edit_types]
        if len(cases) >= count:
            return cases[:count]
        num_sources *= 2


def _accessory_word(context: str) -> list[str]:
    """The accessory's noun in a context ("wearing a red hat" -> ["hat"]), none for other contexts."""
    return [context.split()[-1]] if context in ACCESSORIES else []


def controller_spec(case: EditCase, threshold: float) -> dict:
    """The P2P edit of a case's type (docs/edit_bench.md, "Controllers"), blending at ``threshold``
    (edit_bench.blend_threshold: 0.7 on the world models, whose cross-attention is aggregated at 8 x 8; at
    P2P's 0.3 the blend mask covers the whole latent (tests/test_world_edits.py measured 100% on both
    seeds), at 0.7 it leaves the background around the object, 78-91% of the latent covered):

    - object: word swap (``replace``: the prompts have as many words) with a local blend on the class
      noun, so the edit stays on the object;
    - colour: the same with the colour word in the blend too: at 8 x 8 the noun's attention covers part of
      the object (often the head), and the body kept the source's colour;
    - background: ``refine`` (the contexts differ in length, a plain source has none), no local blend: the
      change is everywhere but the object, which self-attention injection and the aligned words keep (a
      blend keeping the noun's region, ``keep_words``, was measured and not adopted: docs/edit_bench.md);
    - accessory: ``refine`` (words added, removed or swapped) with a local blend on the class noun and the
      accessory's noun in each prompt;
    - subject: ``subject`` (aligned as ``refine``: the identifier is a new word) with a local blend on the
      class noun, and the identifier in the target.
    """
    src, tgt = case.source.individual.cls, case.target.individual.cls
    spec = {"cross_replace_steps": CROSS_REPLACE_STEPS, "self_replace_steps": SELF_REPLACE_STEPS}
    if case.edit_type == "object":
        return {"edit": "replace", "blend_words": [[src], [tgt]], "threshold": threshold, **spec}
    if case.edit_type == "colour":
        words = [[case.source.individual.colour_word, src], [case.target.individual.colour_word, tgt]]
        return {"edit": "replace", "blend_words": words, "threshold": threshold, **spec}
    if case.edit_type == "background":
        return {"edit": "refine", **spec}
    if case.edit_type == "accessory":
        words = [[src, *_accessory_word(case.source.context)], [tgt, *_accessory_word(case.target.context)]]
        return {"edit": "refine", "blend_words": words, "threshold": threshold, **spec}
    if case.edit_type == "subject":
        return {
            "edit": "subject",
            "blend_words": [[src], [SUBJECT_TOKEN, tgt]],
            "threshold": threshold,
            **spec,
        }
    raise ValueError(f"unknown edit type {case.edit_type!r}")


def target_attribute(case: EditCase) -> tuple[str, str]:
    """What the edit must make true, as (read-out, value): the classifier's class, colour or context head,
    or the subject's identification by the attribute read-out."""
    target = case.target
    if case.edit_type == "object":
        return "class", target.individual.cls
    if case.edit_type == "colour":
        return "colour", target.individual.colour_word
    if case.edit_type in ("background", "accessory"):
        return "context", target.context
    if case.edit_type == "subject":
        return "identification", f"world {SUBJECT[0]} {SUBJECT[1]}"
    raise ValueError(f"unknown edit type {case.edit_type!r}")


# -------------------------------------------------------------------------------------------------
# Running the methods


@dataclass
class Clock:
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@contextlib.contextmanager
def clock():
    """Wall and process CPU time of a block (CPU time: what the block cost, whatever else ran beside it)."""
    out = Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - wall
        out.cpu_seconds = time.process_time() - cpu


def load_pipeline(base_model: str, method: str = "base", model_dir: Path | str | None = None):
    """A world pipeline (base or a trained subject model) on the CPU in fp32, with DDIM."""
    from diffusers import DDIMScheduler

    from s2s.models import load_method_pipeline

    pipe = load_method_pipeline(base_model, method, model_dir, torch.device("cpu"), torch.float32)
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_source(
    pipes: dict[str, tuple],
    cases: list[EditCase],
    out_dir: Path,
    methods: list[str],
    num_inference_steps: int,
    guidance_scale: float,
    null_text_inner_steps: int,
    null_text: bool,
    threshold: float,
) -> list[dict]:
    """Invert one source once per inversion method (and model), edit it into each of its cases with every
    method, and write the case folders: ``source.png``, ``target_gt.png``, ``mask.png``, ``{method}.png``.
    ``pipes``: {"base": (pipeline, label), "subject": (pipeline, label)} (subject cases use the latter).
    Returns one cost record per case and method."""
    from s2s.edit.inversion import invert
    from s2s.edit.p2p import generate_edit

    source_image, prompt = cases[0].source_image(), cases[0].source_prompt
    records = []
    for case in cases:
        write_case(case, out_dir / case.case_id)
    # Subject cases are edited with the subject model's pipeline (the base one when it is the base model).
    by_model: dict[str, list[EditCase]] = {}
    for case in cases:
        by_model.setdefault("subject" if case.edit_type == "subject" else "base", []).append(case)
    if pipes.get("subject") is pipes["base"]:
        by_model = {"base": cases}
    for model, model_cases in by_model.items():
        pipe, label = pipes[model]
        inversions = {}
        for method in methods:
            name = METHODS[method]
            if (name == "null_text" and not null_text) or name in inversions:
                continue
            with clock() as spent:
                inversion = invert(
                    pipe,
                    source_image,
                    prompt,
                    name,
                    num_inference_steps,
                    guidance_scale,
                    null_text_inner_steps,
                )
            inversions[name] = (inversion, spent)
        for case in model_cases:
            for method in methods:
                if METHODS[method] not in inversions:
                    continue
                inversion, inverted = inversions[METHODS[method]]
                spec = None if method == "baseline" else controller_spec(case, threshold)
                with clock() as spent:
                    result = generate_edit(
                        pipe,
                        case.source_prompt,
                        case.target_prompt,
                        spec,
                        inversion=inversion,
                        num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale,
                    )
                save_png(result.edited_image, out_dir / case.case_id / f"{method}.png")
                records.append(
                    {
                        "case": case.case_id,
                        "method": method,
                        "inversion": inversion.method,
                        "model": label,
                        "seconds": inverted.seconds + spent.seconds,
                        "cpu_seconds": inverted.cpu_seconds + spent.cpu_seconds,
                        "unet_calls": inversion.unet_calls + result.unet_calls,
                        "inversion_seconds": inverted.seconds,
                        "inversion_unet_calls": inversion.unet_calls,
                    }
                )
    return records


# -------------------------------------------------------------------------------------------------
# Scoring the saved files


def _open(path: Path, mode: str = "RGB") -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


def _uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def attribute_checks(cases: list[EditCase], images: list[Image.Image], models_dir: Path) -> list[tuple]:
    """Per (case, edited image): (1.0 / 0.0 or the identification, what was read). The world classifier's
    head for class, colour and context edits; for subject edits the attribute read-out's identification of
    the subject among ``LINEUP`` world dogs (``s2s.world.readout.subject_truth``: 0 where the classifier
    does not find the class; a k-way tie at the top counts 1/k)."""
    from s2s.world.classifier import HEADS, load_classifier
    from s2s.world.readout import load_readout, subject_truth
    from s2s.world.subjects import distractors, world_subject

    classifier = load_classifier(models_dir / "classifier.safetensors")
    batch = _uint8(images)
    logits = classifier.head_logits(batch)
    out: list[tuple] = [None] * len(cases)
    subject_rows = []
    for i, case in enumerate(cases):
        head, wanted = target_attribute(case)
        if head == "identification":
            subject_rows.append(i)
            continue
        read = HEADS[head][int(logits[head][i].argmax())]
        out[i] = (float(read == wanted), read)
    if subject_rows:
        cls = SUBJECT[0]
        probability = logits["class"][subject_rows].softmax(-1)[:, HEADS["class"].index(cls)].numpy()
        truth = subject_truth(
            batch[subject_rows],
            [cases[i].target.context for i in subject_rows],
            world_subject(*SUBJECT),
            distractors(cls, LINEUP),
            load_readout(models_dir / "readout.safetensors"),
            probability,
        )
        for row, value, p in zip(subject_rows, truth["identification"], probability):
            out[row] = (float(value), f"identification {value:.3g} (P({cls}) {p:.2f})")
    return out


def score(cases: list[EditCase], records: list[dict], out_dir: Path, models_dir: Path) -> list[dict]:
    """One row per case and method (``records``) and a ``ground_truth`` row per case, every metric computed
    from the PNG files in ``out_dir/{case}/`` as saved."""
    from s2s.edit.bench_metrics import bench_metrics
    from s2s.metrics.fidelity import load_clip, load_dino

    identity = load_dino(str(models_dir / "identity"), key="world.models")
    clip = load_clip(str(models_dir / "clip"), key="world.models")
    by_case = {c.case_id: c for c in cases}
    jobs = [({"case": c.case_id, "method": REFERENCE}, c) for c in cases]
    jobs += [(r, by_case[r["case"]]) for r in records]
    rows, edited_images = [], []
    for record, case in jobs:
        folder = out_dir / case.case_id
        source, target = _open(folder / "source.png"), _open(folder / "target_gt.png")
        mask = _open(folder / "mask.png", "L")
        name = "target_gt.png" if record["method"] == REFERENCE else f"{record['method']}.png"
        edited = _open(folder / name)
        metrics = bench_metrics(
            source,
            edited,
            mask,
            case.target_prompt,
            target=target,
            vit=(identity.model, identity.processor),
            clip=(clip.model, clip.processor),
        )
        row = {column: None for column in COLUMNS}
        row.update(record)
        row.update(metrics)
        row.update(
            source_id=case.source_id,
            edit_type=case.edit_type,
            target_attribute="{}: {}".format(*target_attribute(case)),
            mask_fraction=float((np.asarray(mask) > 0).mean()),
            source_prompt=case.source_prompt,
            target_prompt=case.target_prompt,
        )
        rows.append(row)
        edited_images.append(edited)
    checks = attribute_checks([case for _, case in jobs], edited_images, models_dir)
    for row, (correct, read) in zip(rows, checks):
        row["target_attribute_correct"], row["read_as"] = correct, read
    return rows


def sort_rows(rows: list[dict], cases: list[EditCase]) -> list[dict]:
    """Rows in case order, each case's reference row first, then the methods in ``METHODS`` order."""
    order = {c.case_id: i for i, c in enumerate(cases)}
    methods = [REFERENCE, *METHODS]
    return sorted(rows, key=lambda r: (order[r["case"]], methods.index(r["method"])))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(rows: list[dict], path: Path | str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row[k]) for k in COLUMNS})
    write_text(path, buffer.getvalue())


# -------------------------------------------------------------------------------------------------
# Summary


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def interval(values: list[float], n_boot: int, seed: int) -> dict:
    """Mean and percentile-bootstrap interval over cases (None values left out): mean, ci_low, ci_high, n."""
    from s2s.metrics.bootstrap import bootstrap_ci

    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {
        "mean": float(np.mean(values)),
        "ci_low": _finite(low),
        "ci_high": _finite(high),
        "n": len(values),
    }


def summarise(rows: list[dict], n_boot: int, seed: int, cases: list[str] | None = None) -> dict:
    """Per method (the reference first), per edit type and over all types: each column's mean and interval.
    ``cases``: only those cases (e.g. the ones null-text ran on)."""
    rows = [r for r in rows if cases is None or r["case"] in cases]
    out = {}
    for method in [REFERENCE, *METHODS]:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        groups = {"all": mine} | {t: [r for r in mine if r["edit_type"] == t] for t in EDIT_TYPES}
        out[method] = {
            group: {"n_cases": len(members)}
            | {col: interval([m[col] for m in members], n_boot, seed) for col in SUMMARY_COLUMNS}
            for group, members in groups.items()
            if members
        }
    return out


def summary_table(summary: dict, column: str = "target_attribute_correct") -> str:
    """A Markdown table of one column's means (and intervals): methods x edit types."""
    types = ["all", *EDIT_TYPES]
    lines = [f"| {column} | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for method, groups in summary.items():
        cells = []
        for group in types:
            entry = groups.get(group, {}).get(column)
            if not entry or entry["mean"] is None:
                cells.append("")
                continue
            cells.append(f"{entry['mean']:.3g} [{entry['ci_low']:.3g}, {entry['ci_high']:.3g}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    """A Markdown table of the targets: measured value [interval], target, met."""
    lines = ["| target | value [95% interval] | target | met |", "|---|---|---|---|"]
    for entry in targets:
        value = "not measured" if entry["value"] is None else f"{entry['value']:.3g}"
        if entry["ci_low"] is not None:
            value += f" [{entry['ci_low']:.3g}, {entry['ci_high']:.3g}]"
        lines.append(f"| {entry['key']} | {value} | {entry['target']:g} | {entry['met']} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# The whole benchmark


@dataclass(frozen=True)
class Settings:
    """What the generation of the benchmark's edits depends on (``run_edit_bench``'s arguments), as the
    worker processes get it."""

    models_dir: str
    bench: EditBenchConfig
    subject_model_dir: str | None  # the trained model bench.subject_model; None: the base model

    def selected(self) -> list[EditCase]:
        return bench_cases(self.bench.seed, self.bench.cases, self.bench.edit_types)

    def null_text_source_ids(self, groups: dict) -> list[str]:
        if "p2p_null_text" not in self.bench.methods:
            return []
        sources = self.bench.null_text_sources
        return list(groups)[: len(groups) if sources is None else sources]


def generate(settings: Settings, source_ids: list[str], out_dir: Path | str) -> list[dict]:
    """Load the pipelines, run every method on the cases of ``source_ids`` (``run_source``), then score
    the files written (``score``): the benchmark's rows of these sources."""
    out_dir = Path(out_dir)
    groups = by_source(settings.selected())
    null_sources = settings.null_text_source_ids(groups)
    base = str(Path(settings.models_dir) / "sd")
    pipes = {"base": (load_pipeline(base), "base")}
    if any(c.edit_type == "subject" for s in source_ids for c in groups[s]):
        method, folder = settings.bench.subject_model, settings.subject_model_dir
        pipes["subject"] = pipes["base"] if folder is None else (load_pipeline(base, method, folder), method)
    from s2s.progress import Progress

    progress = Progress("edit benchmark", sum(len(groups[s]) for s in source_ids), log, unit="cases")
    records = []
    for source_id in source_ids:
        records += run_source(
            pipes,
            groups[source_id],
            out_dir,
            list(settings.bench.methods),
            settings.bench.num_inference_steps,
            settings.bench.guidance_scale,
            settings.bench.null_text_inner_steps,
            source_id in null_sources,
            settings.bench.blend_threshold,
        )
        progress.update(len(groups[source_id]))
    del pipes
    cases = [c for s in source_ids for c in groups[s]]
    return score(cases, records, out_dir, Path(settings.models_dir))


def shards(settings: Settings, jobs: int) -> list[list[str]]:
    """Sources split into ``jobs`` lists of about equal cost, longest first (an edit costs 1, a null-text
    inversion about ``null_text_inner_steps + 2`` edits: its Adam steps run forward and backward)."""
    groups = by_source(settings.selected())
    null_sources = set(settings.null_text_source_ids(groups))
    edits = len(settings.bench.methods)
    cost = {
        s: len(c) * edits + (settings.bench.null_text_inner_steps + 2) * (s in null_sources)
        for s, c in groups.items()
    }
    out: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(groups))))]
    load = [0.0] * len(out)
    for source in sorted(groups, key=lambda s: -cost[s]):
        i = load.index(min(load))
        out[i].append(source)
        load[i] += cost[source]
    order = list(groups)
    return [sorted(shard, key=order.index) for shard in out]


def _generate_in_workers(settings: Settings, jobs: int, out_dir: Path) -> list[dict]:
    """``generate`` (and its scoring) in ``jobs`` processes side by side, one torch thread each (``python -m
    s2s.world_studies.edit_bench``): on these small models two single-threaded processes beat one process with
    two threads. Their log lines go to this process's stderr (the rule's log)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from dataclasses import asdict

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    try:
        stream = {"stdout": sys.stderr.fileno(), "stderr": sys.stderr.fileno()}
    except (AttributeError, OSError, ValueError):  # no real file behind stderr (pytest's capture)
        stream = {}
    with tempfile.TemporaryDirectory(prefix=".workers.", dir=out_dir.parent) as tmp:
        workers = []
        for i, source_ids in enumerate(shards(settings, jobs)):
            spec, result = Path(tmp) / f"spec{i}.json", Path(tmp) / f"rows{i}.json"
            spec.write_text(
                json.dumps({"settings": asdict(settings), "sources": source_ids, "out": str(out_dir)})
            )
            command = [sys.executable, "-m", __name__, str(spec), str(result), f"worker {i}"]
            workers.append((subprocess.Popen(command, env=env, **stream), result))
        failed = [i for i, (worker, _) in enumerate(workers) if worker.wait() != 0]
        if failed:
            raise RuntimeError(f"edit benchmark workers {failed} failed (their errors are in the log above)")
        return [row for _, result in workers for row in json.loads(result.read_text())]


def _worker_main(spec_path: str, result_path: str, name: str) -> None:
    import json
    import sys

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
    )
    from s2s.progress import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    raw = spec["settings"]
    settings = Settings(raw["models_dir"], EditBenchConfig(**raw["bench"]), raw["subject_model_dir"])
    write_json(result_path, generate(settings, spec["sources"], spec["out"]))


def run_edit_bench(
    models_dir: Path | str,
    out_dir: Path | str,
    csv_path: Path | str,
    json_path: Path | str,
    bench: EditBenchConfig,
    subject_model_dir: Path | str | None = None,
) -> dict:
    """Run every method on the benchmark's cases and write the case folders, the CSV and the summary JSON.

    ``bench``: edit_bench.* (cases, methods, steps, the bootstrap's resamples, ``jobs``: processes
    generating side by side, the sources split between them). ``subject_model_dir``: the folder of the
    trained subject model ``bench.subject_model`` for subject cases (textual_inversion, dreambooth or lora,
    trained on ``world_subject(*SUBJECT)`` with the token ``SUBJECT_TOKEN``); None runs them on the base
    model."""
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    unknown = [m for m in bench.methods if m not in METHODS]
    if unknown or not bench.methods:
        raise S2SError(f"config key edit_bench.methods: {unknown}; use some of {', '.join(METHODS)}")
    settings = Settings(str(models_dir), bench, None if subject_model_dir is None else str(subject_model_dir))
    start = time.perf_counter()
    selected = settings.selected()
    groups = by_source(selected)
    null_sources = settings.null_text_source_ids(groups)
    log.info(
        "edit benchmark: %d cases (%s) from %d sources, methods %s, %d DDIM steps; null-text on %d sources; "
        "%d job(s)",
        len(selected),
        ", ".join(f"{t} {sum(c.edit_type == t for c in selected)}" for t in EDIT_TYPES),
        len(groups),
        ", ".join(bench.methods),
        bench.num_inference_steps,
        len(null_sources),
        bench.jobs,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if bench.jobs > 1:
        rows = _generate_in_workers(settings, bench.jobs, out_dir)
    else:
        rows = generate(settings, list(groups), out_dir)
    rows = sort_rows(rows, selected)
    write_csv(rows, csv_path)
    null_cases = [c.case_id for c in selected if c.source_id in null_sources]
    summary = {
        "what": "world edit benchmark (issue 23): the world models' numbers, not SD v1.4's",
        "models": str(models_dir),
        "settings": {
            "cases": bench.cases,
            "seed": bench.seed,
            "methods": list(bench.methods),
            "edit_types": list(bench.edit_types),
            "num_inference_steps": bench.num_inference_steps,
            "guidance_scale": bench.guidance_scale,
            "null_text_inner_steps": bench.null_text_inner_steps,
            "null_text_sources": bench.null_text_sources,
            "blend_threshold": bench.blend_threshold,
            "subject_model": "base"
            if subject_model_dir is None
            else f"{bench.subject_model} ({settings.subject_model_dir})",
            "n_boot": bench.n_boot,
            "jobs": bench.jobs,
            "interval": "95% percentile bootstrap over cases (s2s.metrics.bootstrap.bootstrap_ci)",
        },
        "n_cases": len(selected),
        "n_sources": len(groups),
        "cases_per_type": {t: sum(c.edit_type == t for c in selected) for t in EDIT_TYPES},
        "null_text_cases": len(null_cases),
        "controllers": {t: _spec_of_type(selected, t, bench.blend_threshold) for t in EDIT_TYPES},
        "seconds": {},
        "methods": summarise(rows, bench.n_boot, bench.seed),
        "targets": edit_bench_targets(rows, bench.n_boot, bench.seed),
    }
    if len(null_cases) < len(selected) and "p2p_null_text" in bench.methods:
        summary["methods_on_null_text_cases"] = summarise(
            rows, bench.n_boot, bench.seed, cases=set(null_cases)
        )
    summary["seconds"]["total"] = time.perf_counter() - start
    write_json(json_path, summary)
    log.info(
        "edit benchmark done in %.0f s\n%s\n%s",
        summary["seconds"]["total"],
        summary_table(summary["methods"]),
        targets_table(summary["targets"]),
    )
    return summary


def _spec_of_type(cases: list[EditCase], edit_type: str, threshold: float) -> dict | None:
    """The controller of the first case of a type, as an example (blend words vary with the case)."""
    case = next((c for c in cases if c.edit_type == edit_type), None)
    return None if case is None else controller_spec(case, threshold)


if __name__ == "__main__":  # a worker of run_edit_bench(jobs > 1): spec JSON, rows JSON, name
    import sys

    _worker_main(*sys.argv[1:4])
