"""Self-contained HTML pages of the report (images inlined as data URIs, so that Snakemake's report can
embed each page as one file): samples, training, edits and tables, readable at 1280 px.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

from s2s.io import write_text
from s2s.plots import method_label, ordered
from s2s.report.figures import Figure

E = html.escape

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:16px;color:#222;
     max-width:1240px;font-size:14px;line-height:1.4}
h1{font-size:22px;margin:0 0 8px} h2{font-size:18px;margin:24px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
figure{margin:8px 0 20px} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444;margin-top:4px}
.note{background:#fff6d6;border:1px solid #e8d48a;padding:6px 10px;font-size:13px}
.edit{border:1px solid #ddd;padding:8px 12px;margin:12px 0 24px;border-radius:4px}
.edit dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:4px 0 8px;font-size:13px}
.edit dt{font-weight:600} .edit dd{margin:0}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 12px;table-layout:auto}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3;white-space:normal;max-width:110px;font-weight:600}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td .ci{display:block;color:#666;font-size:11px}
nav a{margin-right:12px}
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def img(path: Path, alt: str) -> str:
    return f'<img src="{data_uri(path)}" alt="{E(alt)}">'


def page(title: str, body: list[str], note: str | None = None) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{E(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{E(title)}</h1>",
    ]
    if note:
        parts.append(f'<p class="note">{E(note)}</p>')
    return "\n".join(parts + body + ["</body></html>"]) + "\n"


def figure(fig: Figure, heading: str | None = None, level: int = 3) -> str:
    parts = [f"<h{level}>{E(heading)}</h{level}>"] if heading else []
    caption = f"<figcaption>{E(fig.caption)}</figcaption>" if fig.caption else ""
    parts.append(f'<figure class="fig">{img(fig.path, fig.title)}{caption}</figure>')
    return "\n".join(parts)


def samples_page(
    subject: str, figures: dict, photos: list[Figure], out: Path, note: str | None = None
) -> None:
    body = [
        '<nav><a href="#side">Methods side by side</a><a href="#grids">Grids per method</a>'
        '<a href="#photos">Photos</a></nav>'
    ]
    body.append('<h2 id="side">Methods side by side, same prompt and seeds</h2>')
    body.append(
        "<p>Each seed gives every method the same initial noise: a column compares the methods on "
        "identical noise. The base model is the untouched Stable Diffusion reference.</p>"
    )
    for fig in figures["side_by_side"]:
        body.append(f'<section class="prompt" data-prompt-id="{E(fig.meta["prompt_id"])}">')
        body.append(figure(fig, f"\u201c{fig.title}\u201d"))
        body.append("</section>")
    body.append('<h2 id="grids">Grids per method</h2>')
    for fig in figures["grids"]:
        body.append(figure(fig, fig.title))
    body.append('<h2 id="photos">Subject photos and class-prior images</h2>')
    for fig in photos:
        body.append(figure(fig, fig.title))
    write_text(out, page(f"Samples of {subject}", body, note))


def training_page(subject: str, training: list[Figure], metrics: list[Figure], out: Path, note=None) -> None:
    body = ["<h2>Training</h2>"] + [figure(f, f.title) for f in training]
    if not training:
        body.append("<p>No training summaries found.</p>")
    body.append("<h2>Metrics per prompt</h2>")
    body += [figure(f, f.title) for f in metrics] or ["<p>No metrics found.</p>"]
    write_text(out, page(f"Training and metrics of {subject}", body, note))


def _number(value, fmt: str) -> str:
    return "none" if value is None else fmt.format(value)


def edit_metric_rows(record: dict) -> list[tuple[str, str]]:
    """The world benchmark's metrics of an edit (s2s.edit.photo_metrics) as (label, text) rows, with the
    mask they used; none for an edit.json written before they existed."""
    metrics, mask = record.get("metrics") or {}, record.get("mask") or {}
    if "mask_source" not in metrics:
        return []
    share = f"{100 * metrics['mask_fraction']:.0f}% of the image may change"
    if metrics["mask_source"] == "renderer":
        made = f"renderer (world photo, {mask.get('edit_type', '?')} edit: exact)"
    else:
        words = " ".join(mask.get("source_words") or []) or "-"
        new = " ".join(mask.get("target_words") or []) or "-"
        made = (
            f"cross-attention of {words} / {new} at threshold {mask.get('threshold')} (the model's own "
            "estimate: a spread-out edit gets a large mask and a flattering background score)"
        )
    if metrics["background_psnr"] is None:
        background = "none: the mask covers the whole image"
    else:
        background = (
            f"PSNR {metrics['background_psnr']:.1f} dB, SSIM {metrics['background_ssim']:.3f}, MSE "
            f"{metrics['background_mse']:.2e} (both images times 1 - mask, PnPInversion's convention)"
        )
    return [
        ("Edit mask", f"{made}; {share}"),
        ("Background", background),
        ("Structure distance", _number(metrics["structure_distance"], "{:.2e}")),
        (
            "CLIP whole / edited",
            f"{_number(metrics['clip_whole'], '{:.1f}')} / {_number(metrics['clip_edited'], '{:.1f}')}",
        ),
    ]


def edits_page(subject: str, edits: list[Figure], out: Path, note: str | None = None) -> None:
    body = []
    if not edits:
        body.append("<p>No edits in this run (config edits.manifest).</p>")
    for fig in edits:
        record = fig.meta["record"]
        inversion = record.get("inversion") or "none (source generated from the source prompt)"
        rows = [
            ("Edit", record.get("edit", "?")),
            ("Source prompt", record.get("source_prompt", "")),
            ("Target prompt", record.get("target_prompt", "")),
            ("Model", method_label(record.get("model", "?"))),
            ("Inversion", inversion),
        ]
        if record.get("image"):
            rows.append(("Photo", Path(record["image"]).name))
        rows += edit_metric_rows(record)
        body.append(f'<div class="edit" data-edit-id="{E(fig.title)}"><h2>{E(fig.title)}</h2><dl>')
        body += [f"<dt>{E(k)}</dt><dd>{E(str(v))}</dd>" for k, v in rows]
        body.append("</dl>")
        body.append(
            f'<figure class="before-after">{img(fig.path, "before and after")}'
            "<figcaption>Before and after, each with its prompt.</figcaption></figure>"
        )
        attention = Path(fig.meta["attention"])
        if attention.exists():
            body.append(
                f'<figure class="attention">{img(attention, "cross-attention per token")}<figcaption>'
                "Cross-attention of each token (averaged over steps, heads and layers of one resolution), "
                "the source prompt's over the source image, the target's over the edited image, its new "
                "words in red. Each map is scaled to its own "
                "maximum (colour scale on the right).</figcaption></figure>"
            )
        body.append("</div>")
    write_text(out, page(f"Prompt-to-Prompt edits of {subject}", body, note))


# ---------------------------------------------------------------- tables

# Table 1 split in two so that each fits 1280 px: the study's metrics, then subject fidelity.
TABLE_GROUPS = (
    (
        "Table 1: the study's metrics",
        ("clip_score", "fid", "inception_score", "study_fid", "study_is"),
    ),
    ("Subject fidelity and KID", ("dino", "clip_i", "clip_t", "kid")),
)


def _number(text: str, fmt: str) -> str:
    try:
        return fmt.format(float(text))
    except (TypeError, ValueError):
        return "n/a"


def table1_html(csv_path: Path) -> str:
    """Table 1 from its CSV (``s2s.metrics.table``'s columns): value over its interval in each cell,
    published values in their own column, split into two tables of at most ~8 columns."""
    from s2s.metrics.table import COLUMNS, METHOD_LABELS, PUBLISHED_FORMAT

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labels = {key: (label, fmt) for key, label, fmt in COLUMNS}
    parts = []
    for title, keys in TABLE_GROUPS:
        keys = [k for k in keys if k in labels and rows and k in rows[0]]
        if not keys:
            continue
        head = ["<th>Method</th>", "<th>n</th>"]
        for key in keys:
            head.append(f"<th>{E(labels[key][0])}</th>")
            if f"published_{key}" in rows[0]:
                head.append(f"<th>{E(labels[key][0])} (published)</th>")
        body = []
        for row in rows:
            cells = [
                f"<td>{E(METHOD_LABELS.get(row['method'], row['method']))}</td>",
                f'<td class="num">{E(row.get("n_generated", ""))}</td>',
            ]
            for key in keys:
                fmt = labels[key][1]
                value = _number(row.get(key), fmt)
                low, high = _number(row.get(f"{key}_ci_low"), fmt), _number(row.get(f"{key}_ci_high"), fmt)
                ci = f'<span class="ci">[{low}, {high}]</span>' if value != "n/a" and low != "n/a" else ""
                cells.append(f'<td class="num">{value}{ci}</td>')
                if f"published_{key}" in row:
                    cells.append(f'<td class="num">{_number(row[f"published_{key}"], PUBLISHED_FORMAT)}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            f"<h2>{E(title)}</h2><table><thead><tr>{''.join(head)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    parts.append(
        "<p>Cells: value, and below it the 95% bootstrap interval over prompts "
        "(the seeds of a prompt resampled together).</p>"
    )
    return "\n".join(parts)


def csv_table_html(csv_path: Path, title: str) -> str:
    """Any CSV (e.g. the companion table) as a table with wrapping headers."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return f"<h2>{E(title)}</h2><p>(empty)</p>"
    head = "".join(f"<th>{E(h)}</th>" for h in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{E(c)}</td>' if _is_number(c) else f"<td>{E(c)}</td>" for c in r)
        + "</tr>"
        for r in rows[1:]
    )
    return f"<h2>{E(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


COST_COLUMNS = (
    ("steps", "steps", "{:.0f}"),
    ("wall_time_s", "wall time (s)", "{:.1f}"),
    ("median_step_s", "median s/step", "{:.3f}"),
    ("peak_memory_mb", "peak memory (MB)", "{:.0f}"),
    ("trainable_params", "trainable parameters", "{:,.0f}"),
    ("device", "device", "{}"),
)


def cost_table_html(summaries: dict[str, dict[str, dict]]) -> str:
    """Training cost per subject and method, read from each train_summary.json."""
    head = "".join(f"<th>{E(h)}</th>" for h in ["Subject", "Method", *[c[1] for c in COST_COLUMNS]])
    body = []
    for subject, by_method in summaries.items():
        for method in ordered(by_method):
            summary = by_method[method]
            cells = [f"<td>{E(subject)}</td>", f"<td>{E(method_label(method))}</td>"]
            for key, _, fmt in COST_COLUMNS:
                value = summary.get(key)
                text = "n/a" if value is None else (fmt.format(value) if fmt != "{}" else str(value))
                cells.append(f'<td class="num">{E(text)}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<h2>Training cost</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def tables_page(
    table1_csv: Path,
    out: Path,
    companions: list[tuple[str, Path]] | None = None,
    summaries: dict | None = None,
    note: str | None = None,
    run_name: str = "",
) -> None:
    body = [table1_html(Path(table1_csv))]
    for title, path in companions or []:
        body.append(csv_table_html(Path(path), title))
    if summaries:
        body.append(cost_table_html(summaries))
    title = f"Results tables of run {run_name}" if run_name else "Results tables"
    write_text(out, page(title, body, note))


def _fraction(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


HEADS = ("class", "context", "colour")


def world_check_page(check: dict, out: Path, note: str | None = None) -> None:
    """The world check (``s2s.world_studies.check``'s JSON): each target with its measured value and whether
    it is met, then the details of each measure and what was checked."""
    verdict = {True: "met", False: "not met", None: "not measured"}
    rows = "".join(
        f'<tr><td>{E(t["description"])}</td><td class="num">{_fraction(t["value"])}</td>'
        f'<td class="num">&ge; {t["target"]:.2f}</td><td>{verdict[t["met"]]}</td></tr>'
        for t in check["targets"]
    )
    body = [
        "<h2>Targets</h2><table><thead><tr><th>measure</th><th>measured</th><th>target</th><th>result</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>",
    ]
    following, clip, identity, settings = (
        check["prompt_following"], check["clip"], check["identity"], check["settings"]
    )  # fmt: skip
    prompt_rows = "".join(
        f"<tr><td>{E(p['prompt'])}</td>"
        + "".join(f'<td class="num">{_fraction(p[k + "_correct"])}</td>' for k in HEADS)
        + "</tr>"
        for p in following["per_prompt"]
    )
    seeds = ", ".join(map(str, settings["seeds"]))
    body.append(
        f"<h2>Prompt following of the base model</h2><p>{len(settings['seeds'])} images per prompt (seeds "
        f"{E(seeds)}, DDIM, {settings['num_inference_steps']} steps, guidance {settings['guidance_scale']}), "
        "each classified by the world classifier; share of images whose predicted class, context and colour "
        "are the prompt's (colour: prompts naming one).</p><table><thead><tr><th>prompt</th>"
        f"<th>class</th><th>context</th><th>colour</th></tr></thead><tbody>{prompt_rows}</tbody></table>"
    )
    body.append(
        f"<h2>World CLIP</h2><p>{clip['renders']} held-out renders (seed {settings['seed']}) against the "
        f"{clip['candidates']} distinct captions among them (chance {clip['chance']:.3f}): top-1 caption "
        f"{_fraction(clip['top1'])}; it names the right class {_fraction(clip.get('top1_class'))}, context "
        f"{_fraction(clip.get('top1_context'))}, colour {_fraction(clip.get('top1_colour'))}.</p>"
    )
    body.append(
        f"<h2>Identity network</h2><p>{identity['individuals']} held-out individuals x "
        f"{identity['photos_each']} photos; cosine of CLS embeddings. ROC AUC same vs different individual "
        f"{_fraction(identity['auc'])} ({identity['pairs_same']} vs {identity['pairs_different']} pairs; "
        f"mean cosine {identity['mean_cosine_same']:.3f} vs {identity['mean_cosine_different']:.3f}); among "
        f"individuals of one class {_fraction(identity['auc_same_class'])} "
        f"({identity['pairs_different_same_class']} different pairs, mean cosine "
        f"{_fraction(identity['mean_cosine_different_same_class'])}).</p>"
    )
    vae_readout = check.get("vae_readout")
    if vae_readout:
        cells = "".join(
            f'<tr><td>{E(k)}</td><td class="num">{_fraction(v)}</td>'
            f'<td class="num">{_fraction(vae_readout["readout_accuracy_plain"].get(k))}</td></tr>'
            for k, v in vae_readout["readout_accuracy"].items()
        )
        body.append(
            f"<h2>VAE and attribute read-out</h2><p>{vae_readout['renders']} held-out renders: VAE "
            f"reconstruction PSNR {vae_readout['vae_psnr']:.2f} dB "
            f"(median {vae_readout['vae_psnr_median']:.2f})."
            " The read-out's accuracy per attribute on the reconstructions, over the renders whose context "
            "shows the attribute, and on plain photos alone:</p><table><thead><tr><th>attribute</th>"
            f"<th>all contexts</th><th>plain</th></tr></thead><tbody>{cells}</tbody></table>"
        )
    identifiers = check.get("identifiers")
    if identifiers:
        colour = identifiers["colour_words"]
        cells = "".join(
            f'<tr><td>{E(w)}</td><td class="num">{v["text_cosine"]:.4f}</td>'
            f'<td class="num">{v["unet_rms"]:.4f}</td></tr>'
            for w, v in identifiers["identifiers"].items()
        )
        cells += (
            f'<tr><td>colour words (mean)</td><td class="num">{colour["text_cosine"]["mean"]:.4f}</td>'
            f'<td class="num">{colour["unet_rms"]["mean"]:.4f}</td></tr>'
        )
        body.append(
            f"<h2>Identifiers</h2><p>{E(identifiers['prompt'])}: cosine of the text encoder's states and "
            "RMS change of the base UNet's prediction (same noisy latents), mean over classes. An identifier "
            "far below a colour word's change is inert.</p><table><thead><tr><th>word</th>"
            f"<th>text cosine</th><th>UNet change (RMS)</th></tr></thead><tbody>{cells}</tbody></table>"
        )
    models = check["models"]
    match = "match" if models["files_match_build"] else "DIFFER from"
    body.append(
        f"<h2>Models</h2><p>{E(models['path'])}: built by <code>{E(models['command'])}</code>; the files "
        f"{match} BUILD.json (sha256 {E(models['build_json_sha256'][:16])}…). Check time "
        f"{check['seconds']['total']:.0f} s.</p>"
    )
    write_text(out, page("World models: the check", body, note))
