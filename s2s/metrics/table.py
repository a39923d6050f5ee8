"""The results table: every method's metrics JSON -> CSV (numbers), Markdown and HTML (for reading).

Rows follow the study's order (Textual Inversion, DreamBooth, LoRA), with the untouched base model last
as a reference. Optionally the published numbers stand beside ours, each only beside the column computed
the same way (``PUBLISHED``'s conditions, checked against each metrics JSON), and the Markdown / HTML say
how each column is computed (``COLUMN_DEFINITIONS``) and carry a provenance block (config hash, models,
versions, seeds). The companion table holds paired differences between methods (``companion_frame``).
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import logging
from pathlib import Path

import pandas as pd

from s2s import registry
from s2s.io import S2SError, write_text
from s2s.metrics.bootstrap import paired_difference_ci

log = logging.getLogger(__name__)

METHOD_ORDER = registry.NAMES
REFERENCE_ROW = registry.BASE
METHOD_LABELS = {
    **{m.name: m.label for m in registry.METHODS.values()},
    registry.BASE: f"{registry.BASE_LABEL} (reference)",
    "real_images": "Real images",
}

# (JSON key, column label, number format). First the study's three metrics in our (torchmetrics)
# conventions, then the study-compatible (pytorch-ignite) FID and IS, then KID and the DreamBooth paper's
# subject fidelity.
COLUMNS = (
    ("clip_score", "CLIP score", "{:.2f}"),
    ("fid", "FID", "{:.4g}"),
    ("inception_score", "IS", "{:.3f}"),
    ("study_fid", "FID (study-compatible)", "{:.4g}"),
    ("study_is", "IS (study-compatible)", "{:.3f}"),
    ("kid", "KID", "{:.4g}"),
    ("dino", "DINO", "{:.3f}"),
    ("clip_i", "CLIP-I", "{:.3f}"),
    ("clip_t", "CLIP-T", "{:.3f}"),
)

# How each column is computed, and which published value (if any) is comparable with it.
COLUMN_DEFINITIONS = {
    "clip_score": "mean over the generated images of 100 * max(cos(CLIP image, CLIP prompt), 0), "
    "torchmetrics CLIPScore's formula, with evaluation.clip_model. Comparable: the study's CLIP score, "
    "when our CLIP is openai/clip-vit-large-patch14 (the study names torchmetrics' CLIPScore but not a "
    "CLIP model; that is CLIPScore's default, assumed here) and the prompts are the study's.",
    "fid": "FID (torchmetrics FrechetInceptionDistance) on the 2048-d pool features of "
    "evaluation.feature_extractor, all generated vs all real (+ reference) images. No published value is "
    "comparable.",
    "inception_score": "IS (torchmetrics InceptionScore) on logits_unbiased of evaluation.feature_extractor, "
    "one split, all generated images. No published value is comparable.",
    "study_fid": "pytorch-ignite's FID defaults: Frechet distance (unbiased covariances) between the "
    "1000-class softmax outputs of evaluation.study_feature_extractor (torchvision's ImageNet "
    "Inception-v3), n generated vs n real images, n = evaluation.study_n_images. Comparable: the study's "
    "FID, when the extractor is inception-v3-imagenet and n = 18 (its 18 vs 18).",
    "study_is": "pytorch-ignite's InceptionScore defaults: exp mean KL(p(y|x) || p(y)) of the same softmax "
    "outputs, one split, the same n generated images. Comparable: the study's IS under the same conditions.",
    "kid": "KID (torchmetrics) on the pool features of evaluation.feature_extractor. No published value.",
    "dino": "mean cosine of DINO CLS embeddings, generated vs real images (DreamBooth paper). Comparable: "
    "the DreamBooth paper's DINO when evaluation.dino_model is facebook/dino-vits16 (its ViT-S/16).",
    "clip_i": "mean cosine of CLIP image embeddings, generated vs real (DreamBooth paper). The paper's value "
    "is shown beside it; the paper does not name its CLIP model, so the comparison is approximate.",
    "clip_t": "mean raw cosine of CLIP prompt and image embeddings (DreamBooth paper); approximate as "
    "CLIP-I.",
}

# Published values, keyed by source, then row, then our metric key (the column they compare with).
# ``conditions``: per metric, (path into our metrics JSON, required value); a published value stands
# beside our column only where its row's JSON meets them, otherwise only in the published list.
PUBLISHED = {
    # The study this project reproduces, Table 1: computed with pytorch-ignite's defaults, so its FID is
    # the Frechet distance of torchvision Inception softmax outputs (18 generated vs 18 real images) and
    # its IS is ignite's; both compare with our study_* columns. Its CLIP score is torchmetrics'
    # CLIPScore. "Full" fine-tuning there is DreamBooth here. Published as TI 24.12 / full 30.14 / LoRA
    # 30.17 (CLIP score), 0.103 / 0.030 / 0.051 (FID), 1.50 / 1.777 / 1.592 (IS).
    "study_table1": {
        "label": "the study, Table 1 (torchmetrics CLIPScore; pytorch-ignite FID and IS, 18 vs 18 images)",
        "rows": {
            "textual_inversion": {"clip_score": 24.123, "study_fid": 0.103, "study_is": 1.50},
            "dreambooth": {"clip_score": 30.1439, "study_fid": 0.030, "study_is": 1.777},
            "lora": {"clip_score": 30.1661, "study_fid": 0.051, "study_is": 1.592},
        },
        "conditions": {
            "clip_score": [(("models", "clip_model"), "openai/clip-vit-large-patch14")],
            "study_fid": [
                (("models", "study_feature_extractor"), "inception-v3-imagenet"),
                (("metrics", "study_fid", "n_generated"), 18),
                (("metrics", "study_fid", "n_real"), 18),
            ],
            "study_is": [
                (("models", "study_feature_extractor"), "inception-v3-imagenet"),
                (("metrics", "study_is", "n_generated"), 18),
            ],
        },
    },
    # Ruiz et al., "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven
    # Generation", CVPR 2023, Table 1 (Stable Diffusion rows, and the real-images reference row).
    "dreambooth_paper_table1": {
        "label": "DreamBooth paper (Ruiz et al., CVPR 2023), Table 1, Stable Diffusion rows",
        "rows": {
            "real_images": {"dino": 0.774, "clip_i": 0.885},
            "dreambooth": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
            "textual_inversion": {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
        },
        # Its CLIP-I / CLIP-T come from a CLIP whose variant its text does not name: they are listed, never
        # placed beside ours as if comparable.
        "conditions": {
            "dino": [(("models", "dino_model"), "facebook/dino-vits16")],
            "clip_i": [(("models", "clip_model"), "the paper's CLIP (variant not stated)")],
            "clip_t": [(("models", "clip_model"), "the paper's CLIP (variant not stated)")],
        },
    },
}

# Per-image metrics whose paired differences go into the companion table; the world's subject measures
# (evaluated only on the world's models) are paired there too, but have no Table 1 column.
PAIRED_METRICS = ("clip_score", "dino", "clip_i", "clip_t", "identification", "attributes")
COMPANION_ONLY = (
    ("identification", "Identification (top-1 rate)", "{:.3f}"),
    ("attributes", "Attributes read", "{:.3f}"),
)

# Published numbers are shown with the digits they were published with, not rounded to our format.
PUBLISHED_FORMAT = "{:g}"

VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics")

TINY_STATEMENT = (
    "These numbers come from randomly initialised models (models: tiny or rehearsal). They show "
    "that the pipeline runs end to end; they mean nothing about image quality or subject fidelity."
)
WORLD_STATEMENT = (
    "These numbers come from the miniature world's models (models: world): a small Stable Diffusion, "
    "CLIP, identity network (in the DINO column) and classifier (the FID/IS network) pretrained on "
    "procedurally drawn 64 px scenes. They compare the methods within that world; they are not SD v1.4 "
    "numbers and the published values beside them are not comparable."
)
# What the numbers are, by the run's `models` choice (s2s.config.model_kind).
STATEMENTS = {"hub": None, "tiny": TINY_STATEMENT, "rehearsal": TINY_STATEMENT, "world": WORLD_STATEMENT}


def ordered_methods(methods) -> list[str]:
    """The study's order, then any other method, then the base model as the reference row."""
    known = [m for m in METHOD_ORDER if m in methods]
    other = [m for m in methods if m not in METHOD_ORDER and m != REFERENCE_ROW]
    return known + other + ([REFERENCE_ROW] if REFERENCE_ROW in methods else [])


def published_by_row(published: dict) -> dict[str, dict[str, float]]:
    """Flatten {source: {rows: {row: {metric: value}}}} into {row: {metric: value}}."""
    out: dict[str, dict[str, float]] = {}
    for source in published.values():
        for row, values in source["rows"].items():
            out.setdefault(row, {}).update(values)
    return out


def published_metrics(pub_by_row: dict[str, dict[str, float]]) -> list[str]:
    keys = {key for values in pub_by_row.values() for key in values}
    return [key for key, _, _ in COLUMNS if key in keys]


def _read(method: str, path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise S2SError(f"table: metrics file for {method!r} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise S2SError(f"table: {path} is not valid JSON ({exc})") from exc


def read_metric_jsons(metric_jsons: dict[str, str | Path]) -> dict[str, dict]:
    """Read every method's metrics JSON, in table order."""
    return {method: _read(method, metric_jsons[method]) for method in ordered_methods(list(metric_jsons))}


def _lookup(data: dict, path: tuple[str, ...]):
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _row_name(method: str) -> str:
    """'subject/method' (several subjects) -> 'method', the key of the published rows."""
    return method.rsplit("/", 1)[-1]


def unmet_conditions(published: dict | None, row: str, key: str, data: dict) -> list[str]:
    """Why the published ``key`` of ``row`` is not comparable with ours in ``data`` ([] if it is)."""
    reasons = []
    for source in (published or {}).values():
        if key not in source["rows"].get(row, {}):
            continue
        for path, required in source.get("conditions", {}).get(key, []):
            ours = _lookup(data, path)
            if ours != required:
                reasons.append(f"{'.'.join(path)} is {ours!r}, the publication's is {required!r}")
    return reasons


def build_frame(jsons: dict[str, dict], published: dict | None = None) -> pd.DataFrame:
    """One row per method: value / ci_low / ci_high per metric (+ published_<metric> columns).

    A published value fills its column only where the row's metrics meet the publication's conditions.
    """
    pub = published_by_row(published) if published else {}
    records = []
    for method, data in jsons.items():
        record = {"method": method, "n_generated": data.get("n_generated"), "n_real": data.get("n_real")}
        for key, _, _ in COLUMNS:
            entry = data.get("metrics", {}).get(key) or {}
            for field in ("value", "ci_low", "ci_high"):
                record[key if field == "value" else f"{key}_{field}"] = entry.get(field)
        # A published column only for metrics that have published values somewhere.
        row = _row_name(method)
        for key in published_metrics(pub):
            comparable = not unmet_conditions(published, row, key, data)
            record[f"published_{key}"] = pub.get(row, {}).get(key) if comparable else None
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    return frame.astype({c: "float64" for c in frame.columns if c not in ("method", "n_generated", "n_real")})


def _per_image(data: dict, key: str) -> dict[tuple, float]:
    """(prompt_id, seed) -> the per-image value of ``key`` (prompt text where no prompt_id was recorded)."""
    out = {}
    for record in data.get("per_image", []):
        value = record.get(key)
        if value is not None:
            out[(record.get("prompt_id", record["prompt"]), record["seed"])] = value
    return out


def method_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(a, b) for "a - b": later methods in table order minus earlier ones, within one subject."""
    pairs = []
    for j, a in enumerate(methods):
        for b in methods[:j]:
            if a.rpartition("/")[0] == b.rpartition("/")[0]:
                pairs.append((a, b))
    return pairs


def companion_frame(jsons: dict[str, dict]) -> pd.DataFrame:
    """Paired differences of per-image metrics between methods, matched by (prompt, seed).

    One row per (method pair, metric): the mean difference over matched pairs, with a percentile interval
    that resamples prompts (all seeds of a prompt together), with the n_boot / confidence / seed of the
    evaluation. Set-level metrics (FID, IS) are not here: their per-method values need no pairing.
    """
    boot = next((d["bootstrap"] for d in jsons.values() if "bootstrap" in d), {})
    kwargs = {k: boot[k] for k in ("n_boot", "confidence", "seed") if k in boot}
    records = []
    for a, b in method_pairs(list(jsons)):
        for key in PAIRED_METRICS:
            result = paired_difference_ci(_per_image(jsons[a], key), _per_image(jsons[b], key), **kwargs)
            if result["n_pairs"]:
                records.append({"minuend": a, "subtrahend": b, "metric": key, **result})
    columns = ["minuend", "subtrahend", "metric", "difference", "ci_low", "ci_high", "n_pairs", "n_prompts"]
    return pd.DataFrame.from_records(records, columns=columns)


def _companion_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    labels = {key: label for key, label, _ in (*COLUMNS, *COMPANION_ONLY)}
    formats = {key: fmt for key, _, fmt in (*COLUMNS, *COMPANION_ONLY)}
    header = ["Comparison", "Metric", "Difference [interval]", "Pairs", "Prompts"]
    rows = []
    for _, r in frame.iterrows():
        fmt = formats[r["metric"]].replace("{:", "{:+")
        name = f"{METHOD_LABELS.get(_row_name(r['minuend']), r['minuend'])} - "
        name += METHOD_LABELS.get(_row_name(r["subtrahend"]), r["subtrahend"])
        cell = f"{_fmt(r['difference'], fmt)} [{_fmt(r['ci_low'], fmt)}, {_fmt(r['ci_high'], fmt)}]"
        rows.append([name, labels[r["metric"]], cell, str(r["n_pairs"]), str(r["n_prompts"])])
    return header, rows


COMPANION_NOTE = (
    "Paired differences 'A - B' of per-image metrics: each generated image of A is matched with B's image "
    "of the same prompt and seed (the same initial noise), the difference is averaged over the pairs, and "
    "the interval is a percentile bootstrap that resamples prompts (all seeds of a prompt together). An "
    "interval that excludes 0 says the methods differ on these prompts beyond prompt-to-prompt variation."
)


def write_companion(jsons: dict[str, dict], out_csv, out_md, out_html) -> pd.DataFrame:
    """Write the companion table (paired differences) as CSV, Markdown and HTML."""
    frame = companion_frame(jsons)
    write_text(out_csv, frame.to_csv(index=False))
    header, rows = _companion_rows(frame)

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    md = ["# Table 1 companion: paired differences between methods", "", line(header), line(["---"] * 5)]
    write_text(out_md, "\n".join([*md, *map(line, rows), "", COMPANION_NOTE]) + "\n")
    table = pd.DataFrame(rows, columns=header).to_html(index=False, escape=True, border=0)
    write_text(
        out_html,
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html><head><meta charset="utf-8"><title>Table 1 companion</title></head><body>',
                "<h1>Table 1 companion: paired differences between methods</h1>",
                table,
                f"<p>{html.escape(COMPANION_NOTE)}</p>",
                "</body></html>",
            ]
        )
        + "\n",
    )
    return frame


def _fmt(value, fmt: str) -> str:
    return "n/a" if value is None or pd.isna(value) else fmt.format(value)


def _cell(row: pd.Series, key: str, fmt: str) -> str:
    text = _fmt(row[key], fmt)
    if text != "n/a" and not pd.isna(row[f"{key}_ci_low"]):
        text += f" [{_fmt(row[f'{key}_ci_low'], fmt)}, {_fmt(row[f'{key}_ci_high'], fmt)}]"
    return text


def display_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text cells: "value [lo, hi]" per metric, a published value in its own column."""
    header = ["Method", "n"]
    for key, label, _ in COLUMNS:
        header.append(label)
        if f"published_{key}" in frame:
            header.append(f"{label} (published)")
    rows = []
    for _, row in frame.iterrows():
        cells = [METHOD_LABELS.get(row["method"], row["method"]), str(row["n_generated"])]
        for key, _, fmt in COLUMNS:
            cells.append(_cell(row, key, fmt))
            if f"published_{key}" in frame:
                cells.append(_fmt(row[f"published_{key}"], PUBLISHED_FORMAT))
        rows.append(cells)
    return header, rows


def full_provenance(provenance: dict | None) -> dict:
    """The caller's provenance plus the versions of the packages that decide the numbers."""
    out = dict(provenance or {})
    versions = dict(out.get("versions") or {})
    for package in VERSIONED_PACKAGES:
        try:
            versions.setdefault(package, importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            versions.setdefault(package, "not installed")
    out["versions"] = versions
    return out


def _provenance_lines(provenance: dict) -> list[tuple[str, str]]:
    return [
        (key, value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str))
        for key, value in provenance.items()
    ]


def _notes(jsons: dict[str, dict], published: dict | None) -> list[str]:
    confidences = sorted({d["bootstrap"]["confidence"] for d in jsons.values() if "bootstrap" in d})
    level = "/".join(f"{c:.0%}" for c in confidences) or "95%"
    notes = [
        f"Cells are value [{level} percentile bootstrap interval over prompts]: prompts are resampled with "
        "all their seeds (the images of one prompt are not independent); real images stay fixed. For FID "
        "and KID resampling duplicates images, which biases these set-level metrics. IS falls with every "
        "duplicate, so its interval is instead value +- z x its delete-one-prompt jackknife standard error.",
        "FID (study-compatible) and IS (study-compatible) follow pytorch-ignite's defaults as the study "
        "did: softmax outputs of an ImageNet Inception-v3, equal numbers of generated and real images; "
        "this FID is on a much smaller scale than FID.",
    ]
    if published:
        notes += [f"Published: {source['label']}." for source in published.values()]
        for method, data in jsons.items():
            for key, _, _ in COLUMNS:
                reasons = unmet_conditions(published, _row_name(method), key, data)
                if reasons:
                    notes.append(
                        f"{method}: the published {key} is not placed beside ours (computed differently: "
                        + "; ".join(reasons)
                        + ")."
                    )
    for method, data in jsons.items():
        reference = data.get("reference") or {}
        if reference.get("dino_real") is not None or reference.get("clip_i_real") is not None:
            dino, clip_i = reference.get("dino_real"), reference.get("clip_i_real")
            notes.append(
                f"Our real images among themselves (the DreamBooth paper's 'Real images' row): "
                f"DINO {_fmt(dino, '{:.3f}')}, CLIP-I {_fmt(clip_i, '{:.3f}')} (from {method}'s evaluation)."
            )
            break
    seen = set()
    for method, data in jsons.items():
        for warning in data.get("warnings", []):
            if warning not in seen:
                seen.add(warning)
                notes.append(f"{method}: {warning}")
    return notes


def _markdown(header, rows, published_rows, notes, provenance, statement: str | None) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    parts = ["# Evaluation results", ""]
    if statement:
        parts += [f"**{statement}**", ""]
    parts += [line(header), line(["---"] * len(header)), *map(line, rows), ""]
    parts += ["## Columns", ""] + [f"- **{label}**: {COLUMN_DEFINITIONS[key]}" for key, label, _ in COLUMNS]
    parts.append("")
    if published_rows:
        parts += ["## Published values", "", line(["Source", "Row", "Metric", "Value"]), line(["---"] * 4)]
        parts += [line(r) for r in published_rows] + [""]
    parts += ["## Notes", "", *[f"- {n}" for n in notes], "", "## Provenance", ""]
    parts += [f"- **{key}**: `{value}`" for key, value in _provenance_lines(provenance)]
    return "\n".join(parts) + "\n"


def _html(header, rows, published_rows, notes, provenance, statement: str | None) -> str:
    def table(head, body):
        frame = pd.DataFrame(body, columns=head)
        return frame.to_html(index=False, escape=True, border=0)

    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>Evaluation results</title>',
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>",
        "</head><body>",
        "<h1>Evaluation results</h1>",
    ]
    if statement:
        parts.append(f"<p><strong>{e(statement)}</strong></p>")
    parts.append(table(header, rows))
    parts += ["<h2>Columns</h2>", "<ul>"]
    parts += [f"<li><b>{e(label)}</b>: {e(COLUMN_DEFINITIONS[key])}</li>" for key, label, _ in COLUMNS]
    parts.append("</ul>")
    if published_rows:
        parts += ["<h2>Published values</h2>", table(["Source", "Row", "Metric", "Value"], published_rows)]
    parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{e(n)}</li>" for n in notes], "</ul>"]
    parts += ["<h2>Provenance</h2>", "<ul>"]
    parts += [f"<li><b>{e(k)}</b>: <code>{e(v)}</code></li>" for k, v in _provenance_lines(provenance)]
    parts += ["</ul>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _published_rows(published: dict | None) -> list[list[str]]:
    if not published:
        return []
    labels = {key: label for key, label, _ in COLUMNS}
    return [
        [
            source["label"],
            METHOD_LABELS.get(row, row),
            labels.get(key, key),
            _fmt(value, PUBLISHED_FORMAT),
        ]
        for source in published.values()
        for row, values in source["rows"].items()
        for key, value in values.items()
    ]


def make_table(
    metric_jsons: dict[str, str | Path],
    out_csv: str | Path,
    out_md: str | Path,
    out_html: str | Path,
    published: dict | None = None,
    provenance: dict | None = None,
    companion: tuple[str | Path, str | Path, str | Path] | None = None,
    models: str = "hub",
) -> pd.DataFrame:
    """Write the results table as CSV, Markdown and HTML (atomically); return the CSV's data frame.

    ``metric_jsons`` maps method -> the JSON written by ``evaluate_method``. ``published`` (e.g.
    ``PUBLISHED``) adds the published values beside ours. ``models`` (config key ``models``: hub, tiny,
    rehearsal or world) picks the statement of what the numbers are (``STATEMENTS``; none for hub
    models). ``companion``: (csv, md, html) paths of the companion table
    of paired differences between methods (``write_companion``).
    """
    if not metric_jsons:
        raise S2SError("table: no metrics files given")
    jsons = read_metric_jsons(metric_jsons)
    frame = build_frame(jsons, published)
    write_text(out_csv, frame.to_csv(index=False))
    header, rows = display_rows(frame)
    published_rows = _published_rows(published)
    notes = _notes(jsons, published)
    provenance = full_provenance(provenance)
    statement = STATEMENTS[models]
    write_text(out_md, _markdown(header, rows, published_rows, notes, provenance, statement))
    write_text(out_html, _html(header, rows, published_rows, notes, provenance, statement))
    if companion is not None:
        write_companion(jsons, *companion)
    log.info("wrote results table (%d rows) to %s, %s, %s", len(frame), out_csv, out_md, out_html)
    return frame
