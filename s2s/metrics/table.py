"""The results table: every method's metrics JSON -> CSV (numbers), Markdown and HTML (for reading).

Rows follow the study's order (Textual Inversion, DreamBooth, LoRA), with the untouched base model last
as a reference. Optionally the published numbers stand beside ours, and the Markdown / HTML carry a
provenance block (config hash, models, versions, seeds).
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import logging
from pathlib import Path

import pandas as pd

from s2s.io import S2SError, write_text

log = logging.getLogger(__name__)

METHOD_ORDER = ("textual_inversion", "dreambooth", "lora")
REFERENCE_ROW = "base"
METHOD_LABELS = {
    "textual_inversion": "Textual Inversion",
    "dreambooth": "DreamBooth",
    "lora": "LoRA",
    "base": "Base model (reference)",
    "real_images": "Real images",
}

# (JSON key, column label, number format). First the study's three metrics in our (torchmetrics)
# conventions, then the study's own variants, then KID and the DreamBooth paper's subject fidelity.
COLUMNS = (
    ("clip_score", "CLIP score", "{:.2f}"),
    ("fid", "FID", "{:.4g}"),
    ("inception_score", "IS", "{:.3f}"),
    ("study_fid_softmax", "FID (study: softmax)", "{:.4g}"),
    ("study_is", "IS (study)", "{:.3f}"),
    ("kid", "KID", "{:.4g}"),
    ("dino", "DINO", "{:.3f}"),
    ("clip_i", "CLIP-I", "{:.3f}"),
    ("clip_t", "CLIP-T", "{:.3f}"),
)

# Published values, keyed by source, then row, then our metric key (the column they compare with).
PUBLISHED = {
    # The study this project reproduces, Table 1: computed with pytorch-ignite, so its FID is the
    # Frechet distance of Inception softmax outputs (18 generated vs 18 real images) and its IS is
    # ignite's; both compare with our study_* columns. "Full" fine-tuning there is DreamBooth here.
    "study_table1": {
        "label": "the study, Table 1 (pytorch-ignite FID on softmax outputs, 18 vs 18 images)",
        "rows": {
            "textual_inversion": {"clip_score": 24.123, "study_fid_softmax": 0.103, "study_is": 1.50},
            "dreambooth": {"clip_score": 30.1439, "study_fid_softmax": 0.030, "study_is": 1.777},
            "lora": {"clip_score": 30.1661, "study_fid_softmax": 0.051, "study_is": 1.592},
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
    },
}

# Published numbers are shown with the digits they were published with, not rounded to our format.
PUBLISHED_FORMAT = "{:g}"

VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics")

TINY_STATEMENT = (
    "These numbers come from tiny, randomly initialised models (tiny_models: true). They show that the "
    "pipeline runs end to end; they mean nothing about image quality or subject fidelity."
)


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


def build_frame(jsons: dict[str, dict], published: dict | None = None) -> pd.DataFrame:
    """One row per method: value / ci_low / ci_high per metric (+ published_<metric> columns)."""
    pub = published_by_row(published) if published else {}
    records = []
    for method, data in jsons.items():
        record = {"method": method, "n_generated": data.get("n_generated"), "n_real": data.get("n_real")}
        for key, _, _ in COLUMNS:
            entry = data.get("metrics", {}).get(key) or {}
            for field in ("value", "ci_low", "ci_high"):
                record[key if field == "value" else f"{key}_{field}"] = entry.get(field)
        # A published column only for metrics that have published values somewhere.
        for key in published_metrics(pub):
            record[f"published_{key}"] = pub.get(method, {}).get(key)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    return frame.astype({c: "float64" for c in frame.columns if c not in ("method", "n_generated", "n_real")})


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
        f"Cells are value [{level} percentile bootstrap interval]. FID, KID and IS intervals resample the "
        "generated images (real images fixed); resampling duplicates images, which biases these set-level "
        "metrics.",
        "FID (study: softmax) and IS (study) follow pytorch-ignite as the study did: FID between the "
        "softmax outputs (not the pool features), so it is on a much smaller scale than FID.",
    ]
    if published:
        notes += [f"Published: {source['label']}." for source in published.values()]
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


def _markdown(header, rows, published_rows, notes, provenance, tiny_models: bool) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    parts = ["# Evaluation results", ""]
    if tiny_models:
        parts += [f"**{TINY_STATEMENT}**", ""]
    parts += [line(header), line(["---"] * len(header)), *map(line, rows), ""]
    if published_rows:
        parts += ["## Published values", "", line(["Source", "Row", "Metric", "Value"]), line(["---"] * 4)]
        parts += [line(r) for r in published_rows] + [""]
    parts += ["## Notes", "", *[f"- {n}" for n in notes], "", "## Provenance", ""]
    parts += [f"- **{key}**: `{value}`" for key, value in _provenance_lines(provenance)]
    return "\n".join(parts) + "\n"


def _html(header, rows, published_rows, notes, provenance, tiny_models: bool) -> str:
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
    if tiny_models:
        parts.append(f"<p><strong>{e(TINY_STATEMENT)}</strong></p>")
    parts.append(table(header, rows))
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
    tiny_models: bool = False,
) -> pd.DataFrame:
    """Write the results table as CSV, Markdown and HTML (atomically); return the CSV's data frame.

    ``metric_jsons`` maps method -> the JSON written by ``evaluate_method``. ``published`` (e.g.
    ``PUBLISHED``) adds the published values beside ours. ``tiny_models`` adds the statement that the
    numbers come from random tiny models.
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
    write_text(out_md, _markdown(header, rows, published_rows, notes, provenance, tiny_models))
    write_text(out_html, _html(header, rows, published_rows, notes, provenance, tiny_models))
    log.info("wrote results table (%d rows) to %s, %s, %s", len(frame), out_csv, out_md, out_html)
    return frame
