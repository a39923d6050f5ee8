"""Prompt-to-Prompt edits of a whole manifest: every row checked first, then edited, each model loaded once.

Manifest (CSV with a header, or YAML: a list of mappings or ``{edits: [...]}``), one edit per row:

- ``source_prompt``, ``target_prompt``, ``edit`` (replace | refine | reweight | subject): required;
- ``image``: a photo (relative to the manifest's folder) to invert and edit; empty: the source is generated
  from ``source_prompt`` with the row's ``seed``, else the batch's;
- ``edit_id``: output folder name; derived from the row number and the edited words when empty;
- ``params``: JSON/YAML mapping of P2P parameters (cross_replace_steps, self_replace_steps, blend_words,
  threshold, keep_words, keep_threshold, start_blend, equalizer, self_replace_max_res), over the batch's
  settings (the edits.* keys, s2s.config.EditConfig); ``keep_words`` (P2P's ``substruct_words``) keeps
  the source where those words attend, e.g. the object in a background edit;
- ``model``: base, or a trained model the batch is given (``model_dirs``: in the workflow every method
  and variant of config key ``methods``); default base, and the subject model for ``subject`` edits (the
  photo is inverted and edited with that model);
- ``inversion``: negative_prompt (default) | null_text | ddim | direct;
- ``seed``: the noise seed of a generated source (a whole number; not with ``image``), so that an edit can
  show the sample it was chosen for; empty: the batch's seed (the workflow's config ``seed``).

Outputs per edit, in ``out_root/{edit_id}/`` (the folder appears complete or not at all): source.png,
reconstruction.png, edited.png, mask.png (the edit mask of the metrics, L, 255 = may change),
attention.png (both prompts' cross-attention per token), before_after.png (labelled) and edit.json.

Metrics (edit.json ``metrics``): reconstruction PSNR / SSIM (photos), CLIP-T and directional CLIP
(``s2s.edit.metrics``), and the world edit benchmark's metrics without ground truth, computed from the
saved PNGs and mask.png (``s2s.edit.photo_metrics``: ``mask_source`` renderer for a world photo the
renderer redraws, ``WorldPhotos``; cross_attention otherwise). edit.json ``mask`` says how the mask was made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from s2s.config import EditConfig
from s2s.edit.controllers import EditController, build_controller
from s2s.edit.inversion import invert, load_image, model_resolution
from s2s.edit.metrics import ClipScorer, edit_metrics
from s2s.edit.p2p import _token_labels, convert_prompt, generate_edit
from s2s.edit.photo_metrics import MASK_FILE, cross_attention_mask, mask_image, score_edit_folder
from s2s.edit.seq_aligner import EditSpecError
from s2s.io import S2SError, atomic_dir, load_safetensors, save_png, write_json
from s2s.manifest import Where, check_row, read_manifest
from s2s.models import load_method_pipeline, method_weights_path, trained_method
from s2s.plots import attention_sheet, before_after
from s2s.progress import Progress

log = logging.getLogger(__name__)

OUTPUT_FILES = (
    "source.png",
    "reconstruction.png",
    "edited.png",
    MASK_FILE,
    "attention.png",
    "before_after.png",
    "edit.json",
)


@dataclass
class EditRow:
    row: int  # 1-based data row of the manifest
    edit_id: str
    image: Path | None
    source_prompt: str
    target_prompt: str
    edit: str
    model: str
    inversion: str | None
    spec: dict = field(default_factory=dict)  # controller spec: edit + P2P parameters, defaults applied
    # Built once, when the manifest is checked (before any model loads), and used by the edit.
    controller: EditController | None = None
    seed: int | None = None  # the row's own seed for a generated source (None: the batch's)


def _check_image(path: Path, where: Where, row: int) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, ValueError) as exc:
        raise where.error(
            row, "image", f"{path} is not a readable image ({type(exc).__name__}: {exc})"
        ) from exc


def _subject_model(settings: EditConfig, model_dirs: dict) -> str | None:
    if settings.subject_model:
        return settings.subject_model
    trained = list(model_dirs)
    return trained[0] if len(trained) == 1 else None


def _weights(model: str, model_dir) -> Path | None:
    """The file a trained model's folder must have (its method's, a variant's too), or None."""
    if model_dir is None:
        return None
    try:
        return method_weights_path(Path(model_dir), trained_method(model, Path(model_dir)))
    except S2SError:
        return None


def parse_row(
    raw: dict, row: int, where: Where, base_dir: Path, settings: EditConfig, model_dirs: dict
) -> EditRow:
    """One manifest row checked for everything that needs no model: its cells (``s2s.manifest.check_row``,
    the parse-time check's own), then its model folder and image; its controller spec is the row's P2P
    parameters over the edits.* settings."""
    cells = check_row(raw, row, where)
    edit = cells.edit
    model = cells.model or (_subject_model(settings, model_dirs) if edit == "subject" else "base")
    if model is None:
        raise where.error(
            row,
            "model",
            "subject edit without a model and no single trained model to default to: set the "
            "row's model or the edit default 'subject_model'",
        )
    trained = ", ".join(model_dirs) or "none given"
    if model != "base" and model not in model_dirs:
        raise where.error(
            row, "model", f"no trained model {model!r} given (given: {trained}); use base or one of them"
        )
    if edit == "subject" and model == "base":
        raise where.error(
            row, "model", f"a subject edit needs a trained subject model (given: {trained}), not base"
        )
    if model != "base":
        model_dir = model_dirs.get(model)
        weights = _weights(model, model_dir)
        if weights is None or not weights.exists():
            raise where.error(
                row,
                "model",
                f"no trained {model} model ({model_dir or 'no folder given'}): train it first or "
                "edit with another model",
            )

    image = None
    if cells.image:
        image = Path(cells.image)
        image = image if image.is_absolute() else base_dir / image
        _check_image(image, where, row)
    return EditRow(
        row,
        cells.edit_id,
        image,
        cells.source_prompt,
        cells.target_prompt,
        edit,
        model,
        (cells.inversion or settings.inversion) if image is not None else None,
        {"edit": edit, **settings.spec, **cells.params},
        seed=cells.seed,
    )


class _PromptTokenizer:
    """The tokenizer of a model's pipeline, textual-inversion tokens included, loaded without weights: a
    model folder with its own tokenizer (a whole pipeline) uses it; one with a learned_embeds.safetensors
    (textual inversion, pivotal tuning) adds its tokens to the base model's."""

    def __init__(self, base_model: str, method: str, model_dir: Path | None):
        from transformers import CLIPTokenizer

        own = model_dir is not None and (Path(model_dir) / "tokenizer").is_dir()
        source = str(model_dir) if own else base_model
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        except (OSError, ValueError) as exc:
            raise S2SError(f"model {source!r}: could not load its tokenizer ({exc})") from exc
        self.expansions: dict[str, str] = {}
        embeddings = None if model_dir is None else Path(model_dir) / "learned_embeds.safetensors"
        if embeddings is not None and embeddings.is_file():
            for token, embedding in load_safetensors(embeddings).items():
                n = embedding.shape[0] if embedding.ndim == 2 else 1
                names = [token] + [f"{token}_{i}" for i in range(1, n)]
                self.tokenizer.add_tokens(names)
                self.expansions[token] = " ".join(names)

    def convert(self, prompt: str) -> str:
        # As diffusers' maybe_convert_prompt: a multi-vector token becomes its n vector tokens.
        for token, expansion in self.expansions.items():
            if expansion != token:
                prompt = prompt.replace(token, expansion)
        return prompt


def validate_manifest(manifest, base_model: str, model_dirs: dict, settings: EditConfig) -> list[EditRow]:
    """All rows checked, token alignment included, before any model is loaded; raise S2SError naming the
    manifest, row and column of the first problem. Each row keeps the controller that checked it."""
    if isinstance(manifest, str | Path):
        path = Path(manifest)
        where, base_dir, raws = Where(str(path)), path.parent, read_manifest(path)
    else:
        where, base_dir, raws = Where("manifest rows"), Path.cwd(), [dict(r) for r in manifest]
    if not raws:
        raise S2SError(f"{where.manifest}: no edits listed")
    rows, seen = [], {}
    for number, raw in enumerate(raws, start=1):
        row = parse_row(raw, number, where, base_dir, settings, model_dirs)
        if row.edit_id in seen:
            raise where.error(
                number, "edit_id", f"{row.edit_id!r} is also the edit_id of row {seen[row.edit_id]}"
            )
        seen[row.edit_id] = number
        rows.append(row)
    tokenizers: dict[str, _PromptTokenizer] = {}
    for row in rows:
        if row.model not in tokenizers:
            model_dir = Path(model_dirs[row.model]) if row.model != "base" else None
            tokenizers[row.model] = _PromptTokenizer(base_model, row.model, model_dir)
        tok = tokenizers[row.model]
        try:
            # The model's own tokenizer files, textual-inversion tokens added as the pipeline adds them:
            # the controller the edit uses.
            row.controller = build_controller(
                tok.tokenizer,
                tok.convert(row.source_prompt),
                tok.convert(row.target_prompt),
                row.spec,
                int(settings.num_inference_steps),
            )
        except EditSpecError as exc:
            column = {
                "edit": "edit",
                "prompt": "source_prompt/target_prompt",
                "target_prompt": "target_prompt",
            }
            raise where.error(row.row, column.get(exc.key, "params"), str(exc)) from exc
    return rows


def _ensure_ddim(pipe) -> None:
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        # Inversion and P2P editing are defined for deterministic DDIM sampling.
        log.info("using DDIMScheduler instead of %s for editing", type(pipe.scheduler).__name__)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)


def _edit_mask(pipe, row: EditRow, controller, source: Image.Image, world_photos) -> tuple[Image.Image, dict]:
    """The mask of the edit's metrics (L, the source's size, 255 = may change) and how it was made: the
    renderer's for a world photo it can redraw (``s2s.edit.world_photos``), else the edit's own
    cross-attention (``s2s.edit.photo_metrics.cross_attention_mask``)."""
    why = None
    if world_photos is not None and row.image is None:
        why = "a generated source, not a photo"
    elif world_photos is not None:
        case, why = world_photos.edit_case(row.image, source, row.source_prompt, row.target_prompt)
        if case is not None:  # the photo is the render, so the mask has its size
            mask = Image.fromarray(case.mask().astype("uint8") * 255, "L")
            return mask, {"source": "renderer", "edit_type": case.edit_type}
    latent_mask, info = cross_attention_mask(pipe, controller, row.source_prompt, row.target_prompt, row.spec)
    info = {"source": "cross_attention", **info}
    if why:
        info["no_renderer_mask"] = why
    return mask_image(latent_mask, source.size), info


def _edit_row(
    pipe,
    row: EditRow,
    out_root: Path,
    settings: EditConfig,
    seed: int,
    clip,
    load_s: float,
    manifest: str,
    model_dir,
    bench_models: dict | None = None,
    world_photos=None,
) -> dict:
    start = time.perf_counter()
    steps, guidance = int(settings.num_inference_steps), float(settings.guidance_scale)
    seed = row.seed if row.seed is not None else seed
    inversion = None
    target = convert_prompt(pipe, row.target_prompt)
    controller = row.controller
    # The attention sheet shows the target prompt's maps too (its edited words); an edit controller
    # stores them only for a local blend. Storing them changes no image.
    controller.store_prompts = (0, 1)
    if row.image is not None:
        photo = load_image(row.image, model_resolution(pipe))
        inversion = invert(
            pipe,
            photo,
            row.source_prompt,
            row.inversion,
            steps,
            guidance,
            settings.null_text_inner_steps,
        )
        result = generate_edit(
            pipe,
            row.source_prompt,
            row.target_prompt,
            controller,
            inversion=inversion,
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
        source, reconstruction = photo, result.source_image
    else:
        # A CPU generator gives the same noise on every device.
        generator = torch.Generator("cpu").manual_seed(seed)
        result = generate_edit(
            pipe,
            row.source_prompt,
            row.target_prompt,
            controller,
            generator=generator,
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
        source = reconstruction = result.source_image
    metrics_start = time.perf_counter()
    metrics = edit_metrics(
        source,
        reconstruction,
        result.edited_image,
        row.source_prompt,
        row.target_prompt,
        is_photo=row.image is not None,
        clip=clip,
    )
    mask, mask_info = _edit_mask(pipe, row, controller, source, world_photos)
    metrics_s = time.perf_counter() - metrics_start
    target_tokens = _token_labels(pipe, target)
    target_maps = controller.average_maps(1)[..., 1 : 1 + len(target_tokens)].permute(2, 0, 1).cpu()
    inversion_calls = inversion.unet_calls if inversion is not None else 0
    record = {
        "edit_id": row.edit_id,
        "manifest": manifest,
        "row": row.row,
        "image": str(row.image) if row.image is not None else None,
        "source_prompt": row.source_prompt,
        "target_prompt": row.target_prompt,
        "edit": row.edit,
        "model": row.model,
        "model_dir": str(model_dir) if model_dir is not None else None,
        "inversion": row.inversion,
        "controller": row.spec,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "seed": seed if row.image is None else None,
        "tokens": result.tokens,
        "target_tokens": target_tokens,
        "timings_s": {
            "model_load": load_s,  # once per model and batch, shared by its rows
            "inversion": inversion.seconds if inversion is not None else 0.0,
            "edit": result.seconds,
            "metrics": metrics_s,
            "total": time.perf_counter() - start,
        },
        "unet_calls": {
            "inversion": inversion_calls,
            "edit": result.unet_calls,
            "total": inversion_calls + result.unet_calls,
        },
        "metrics": metrics,
        "mask": mask_info,
        "files": list(OUTPUT_FILES),
    }
    with atomic_dir(out_root / row.edit_id) as tmp:
        save_png(source, tmp / "source.png")
        save_png(reconstruction, tmp / "reconstruction.png")
        save_png(result.edited_image, tmp / "edited.png")
        save_png(mask, tmp / MASK_FILE)
        # The benchmark's metrics from the files as saved (8-bit PNGs), as anyone can recompute them.
        scored = time.perf_counter()
        metrics.update(score_edit_folder(tmp, row.target_prompt, mask_info["source"], **(bench_models or {})))
        record["timings_s"]["metrics"] += time.perf_counter() - scored
        sheet = attention_sheet(
            result.attention_maps,
            result.tokens,
            result.source_image,
            target_maps,
            target_tokens,
            row.source_prompt,
            row.target_prompt,
            result.edited_image,
        )
        save_png(sheet, tmp / "attention.png")
        before_after(record, tmp, tmp / "before_after.png")
        record["timings_s"]["total"] = time.perf_counter() - start
        write_json(tmp / "edit.json", record)
    log.info(
        "edit %s (%s, %s): %.1f s, %d UNet calls",
        row.edit_id,
        row.edit,
        row.model,
        record["timings_s"]["total"],
        record["unet_calls"]["total"],
    )
    return record


def _bench_models(settings: EditConfig) -> dict:
    """The ViT (structure distance) and CLIP (clip_whole, clip_edited) of the benchmark's metrics, as
    (model, processor) pairs; a model the settings leave out gives None for its metrics."""
    from s2s.metrics.fidelity import load_clip, load_dino

    out = {}
    if settings.dino_model:
        vit = load_dino(settings.dino_model)
        out["vit"] = (vit.model, vit.processor)
    if settings.clip_model:
        clip = load_clip(settings.clip_model)
        out["clip"] = (clip.model, clip.processor)
    return out


def run_edit_batch(
    manifest_path_or_rows,
    out_root: Path,
    base_model: str,
    model_dirs: dict,
    device: torch.device | str,
    dtype: torch.dtype,
    settings: EditConfig,
    seed: int,
    world_photos=None,
) -> list[dict]:
    """Edit every row of a manifest (a CSV/YAML path, or a list of row dicts); return each edit.json record.

    All rows are validated before any model is loaded; then rows are grouped by model so each pipeline
    is loaded once. ``world_photos`` (``s2s.edit.world_photos.WorldPhotos``, world runs): how the run drew
    its world photos, whose edits get the renderer's mask.
    """
    model_dirs = {k: Path(v) for k, v in (model_dirs or {}).items()}
    rows = validate_manifest(manifest_path_or_rows, base_model, model_dirs, settings)
    manifest = (
        str(manifest_path_or_rows) if isinstance(manifest_path_or_rows, str | Path) else "manifest rows"
    )
    device = torch.device(device)
    out_root = Path(out_root)
    models = list(dict.fromkeys(r.model for r in rows))
    log.info(
        "P2P batch: %d edits from %s with model(s) %s on %s, %d steps, guidance %.1f",
        len(rows),
        manifest,
        ", ".join(models),
        device,
        settings.num_inference_steps,
        settings.guidance_scale,
    )
    clip = ClipScorer(settings.clip_model, device) if settings.clip_model else None
    bench_models = _bench_models(settings)
    records: dict[int, dict] = {}
    progress = Progress("edits", len(rows), log)
    for model in models:
        start = time.perf_counter()
        pipe = load_method_pipeline(base_model, model, model_dirs.get(model), device, dtype)
        pipe.set_progress_bar_config(disable=True)
        _ensure_ddim(pipe)
        load_s = time.perf_counter() - start
        for row in (r for r in rows if r.model == model):
            records[row.row] = _edit_row(
                pipe,
                row,
                out_root,
                settings,
                seed,
                clip,
                load_s,
                manifest,
                model_dirs.get(model),
                bench_models,
                world_photos,
            )
            progress.update()
        del pipe
    return [records[r.row] for r in rows]
