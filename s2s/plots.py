"""Figures for the report, drawn with matplotlib: labelled sample grids, methods side by side, photo
sheets, validation images over steps, loss curves, per-prompt metrics, training cost, and edits.

Every figure is saved as a PNG (atomically, like every result) and labels what it shows: prompts as
text, seeds, methods, steps, units. matplotlib runs on its Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; also on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from s2s import registry  # noqa: E402
from s2s.io import save_png  # noqa: E402

METHOD_LABELS = {registry.BASE: registry.BASE_LABEL, **{m.name: m.label for m in registry.METHODS.values()}}
# The registry's order, the untouched base model first as the reference column of comparisons.
METHOD_ORDER = (registry.BASE, *registry.NAMES)

CELL_IN = 1.4  # inches per image cell; at 100 dpi a 140 px tile
DPI = 100


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def ordered(methods) -> list[str]:
    methods = list(methods)
    return [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]


def wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(str(text), width=width, break_long_words=True)) or str(text)


def _read_rgb(path: Path | str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _save(fig, out: Path | str) -> None:
    """Save through s2s.io.save_png (atomic write) rather than fig.savefig on the final path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as img:
        save_png(img.convert("RGB"), out)


def _show(ax, image, title: str | None = None, fontsize: float = 9) -> None:
    ax.imshow(image, interpolation="nearest" if min(image.shape[:2]) < 128 else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=fontsize)


def _empty(out: Path | str, message: str, size=(6.4, 1.2)) -> None:
    fig = plt.figure(figsize=size)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    _save(fig, out)


# ---------------------------------------------------------------- samples


def sample_grid(rows: list[dict], out: Path | str, title: str | None = None, label_width: int = 28) -> None:
    """Prompts x seeds: ``rows`` are ``{"prompt": text, "images": [(seed, path), ...]}``; the prompt text
    (wrapped) labels each row and the seed each column."""
    if not rows:
        _empty(out, "no samples")
        return
    n_rows, n_cols = len(rows), max(len(r["images"]) for r in rows)
    label_in = 2.2
    fig_w = label_in + n_cols * CELL_IN
    fig_h = n_rows * CELL_IN + 0.35 + (0.45 if title else 0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(fig_w, fig_h), squeeze=False)
    top = 1 - (0.35 + (0.45 if title else 0)) / fig_h
    fig.subplots_adjust(left=label_in / fig_w, right=0.995, bottom=0.005, top=top, wspace=0.04, hspace=0.04)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(row["images"]):
                ax.axis("off")
                continue
            seed, path = row["images"][c]
            _show(ax, _read_rgb(path), f"seed {seed}" if r == 0 else None)
        axes[r][0].set_ylabel(
            wrap(row["prompt"], label_width), rotation=0, ha="right", va="center", fontsize=8.5, labelpad=6
        )
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.12 / fig_h, va="top")
    _save(fig, out)


def prompt_rows(samples_dir: Path | str, seeds: list[int] | None = None) -> list[dict]:
    """The rows of :func:`sample_grid` for one method's samples folder: one per prompt folder (its
    ``prompt.json`` gives the prompt text; the folder name stands in without it), seeds in order."""
    rows = []
    for folder in sorted(p for p in Path(samples_dir).iterdir() if p.is_dir()):
        meta = _read_json(folder / "prompt.json") or {}
        wanted = seeds if seeds is not None else meta.get("seeds")
        if wanted is None:
            wanted = sorted(int(p.stem) for p in folder.glob("*.png") if p.stem.lstrip("-").isdigit())
        images = [(s, folder / f"{s}.png") for s in wanted if (folder / f"{s}.png").exists()]
        if images:
            rows.append(
                {"prompt": meta.get("prompt", folder.name), "prompt_id": folder.name, "images": images}
            )
    return rows


def image_grid(
    rows: list[list[Path]], out: Path | str, row_labels: list[str] | None = None, cell: int = 128
) -> None:
    """One row per prompt, one column per seed, from lists of ``{prompt_dir}/{seed}.png`` paths.

    The row label is the prompt text of the ``prompt.json`` beside the images (else ``row_labels``),
    the column header the seed (the file name's stem). ``cell`` is kept for callers; tiles are
    ``CELL_IN`` inches.
    """
    grid_rows = []
    for r, paths in enumerate(rows):
        paths = [Path(p) for p in paths]
        meta = _read_json(paths[0].parent / "prompt.json") if paths else None
        label = (meta or {}).get("prompt") or (row_labels[r] if row_labels else "")
        grid_rows.append({"prompt": label, "images": [(p.stem, p) for p in paths]})
    sample_grid(grid_rows, out)


def side_by_side(
    prompt: str, columns: dict[str, list[tuple[int, Path]]], out: Path | str, title: str | None = None
) -> None:
    """One prompt, every method on the same seeds: a column per method (base first), a row per seed."""
    methods = ordered(columns)
    if not methods:
        _empty(out, "no samples")
        return
    n_rows = max(len(columns[m]) for m in methods)
    label_in, head = 0.8, 0.8
    fig_w, fig_h = label_in + len(methods) * CELL_IN + 0.1, n_rows * CELL_IN + head
    fig, axes = plt.subplots(n_rows, len(methods), figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(
        left=label_in / fig_w,
        right=1 - 0.1 / fig_w,
        bottom=0.005,
        top=1 - head / fig_h,
        wspace=0.04,
        hspace=0.04,
    )
    for c, method in enumerate(methods):
        for r in range(n_rows):
            ax = axes[r][c]
            if r >= len(columns[method]):
                ax.axis("off")
                continue
            seed, path = columns[method][r]
            _show(ax, _read_rgb(path))
            if c == 0:
                ax.set_ylabel(f"seed {seed}", fontsize=9, rotation=0, ha="right", va="center", labelpad=4)
        axes[0][c].set_title(wrap(method_label(method), 14), fontsize=10, color=registry.colour(method))
    heading = title or f"\u201c{prompt}\u201d"
    fig.suptitle(wrap(heading, int(fig_w * 11)), fontsize=10.5, y=1 - 0.06 / fig_h, va="top")
    _save(fig, out)


def photo_sheet(
    paths: list[Path], out: Path | str, title: str, columns: int = 8, limit: int | None = 32
) -> None:
    """Thumbnails of a folder's images (prepared photos, class-prior images), captioned by file name;
    ``limit`` images at most, evenly spread over the list, the title saying how many of how many."""
    paths = sorted(Path(p) for p in paths)
    total = len(paths)
    if limit is not None and total > limit:
        picks = np.linspace(0, total - 1, limit).round().astype(int)
        paths = [paths[i] for i in picks]
        title = f"{title} ({limit} of {total} shown)"
    else:
        title = f"{title} ({total} images)"
    if not paths:
        _empty(out, f"{title}: none")
        return
    cols = min(columns, len(paths))
    n_rows = math.ceil(len(paths) / cols)
    head = 0.5
    fig_w, fig_h = cols * CELL_IN, n_rows * (CELL_IN + 0.2) + head
    fig, axes = plt.subplots(n_rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - head / fig_h, wspace=0.04, hspace=0.2)
    for i, ax in enumerate(axes.flat):
        if i >= len(paths):
            ax.axis("off")
            continue
        _show(ax, _read_rgb(paths[i]), paths[i].name, fontsize=7.5)
    fig.suptitle(wrap(title, int(fig_w * 11)), fontsize=11, y=1 - 0.06 / fig_h, va="top")
    _save(fig, out)


def validation_steps(folder: Path | str) -> list[tuple[int, Path]]:
    """``step-NNNNNN.png`` files of a validation folder as (step, path), by step."""
    found = []
    for path in Path(folder).glob("step-*.png") if Path(folder).is_dir() else []:
        digits = path.stem.removeprefix("step-")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def validation_strip(
    series: dict[str, list[tuple[int, Path]]], out: Path | str, prompt: str | None = None, limit: int = 8
) -> None:
    """Validation images over training steps: a row per method, a column per step (``limit`` steps at
    most, evenly spread, always the last)."""
    methods = [m for m in ordered(series) if series[m]]
    if not methods:
        _empty(out, "no validation images (set training.<method>.validation_prompt)")
        return
    picked = {}
    for m in methods:
        steps = series[m]
        if len(steps) > limit:
            steps = [steps[i] for i in np.linspace(0, len(steps) - 1, limit).round().astype(int)]
        picked[m] = steps
    n_cols = max(len(v) for v in picked.values())
    label_in, head = 1.6, 0.7 if prompt else 0.35
    fig_w, fig_h = label_in + n_cols * CELL_IN, len(methods) * (CELL_IN + 0.25) + head
    fig, axes = plt.subplots(len(methods), n_cols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(
        left=label_in / fig_w, right=0.995, bottom=0.005, top=1 - head / fig_h, wspace=0.04, hspace=0.25
    )
    for r, method in enumerate(methods):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(picked[method]):
                ax.axis("off")
                continue
            step, path = picked[method][c]
            _show(ax, _read_rgb(path), f"step {step}", fontsize=8)
        axes[r][0].set_ylabel(
            method_label(method), rotation=0, ha="right", va="center", fontsize=10, labelpad=6
        )
    if prompt:
        fig.suptitle(
            wrap(f"Validation prompt: \u201c{prompt}\u201d", int(fig_w * 11)), fontsize=10.5, y=0.995
        )
    _save(fig, out)


# ---------------------------------------------------------------- training


def read_loss_csv(path: Path | str) -> dict[str, np.ndarray]:
    """loss.csv as columns: ``step``, ``loss`` and (where present) ``prior_loss`` and ``validation_loss``
    (the held-out loss, NaN at the steps without a checkpoint)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = {"step": np.array([int(r["step"]) for r in rows], dtype=int)}
    for key in ("loss", "prior_loss", "validation_loss"):
        if rows and key in rows[0]:
            columns[key] = np.array([float(r[key]) if r[key] else np.nan for r in rows])
    return columns


def smooth(values, alpha: float | None = None) -> np.ndarray:
    """Exponential moving average, bias-corrected (as TensorBoard's smoothing), so the first points are
    not pulled towards zero. ``alpha`` defaults to a window of about a tenth of the curve."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    if alpha is None:
        alpha = min(1.0, 2.0 / (max(values.size / 10, 1) + 1))
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def loss_curves(curves: dict, out: Path | str) -> None:
    """One panel per method (each on its own y scale): the loss per step (faint) and its smoothed
    curve, the prior-preservation term where the method used it, and the held-out loss at each checkpoint
    where training.validation_split held photos out. ``curves`` maps method to :func:`read_loss_csv`'s
    columns (or to a list of (step, loss) pairs)."""
    curves = {m: _as_columns(c) for m, c in curves.items()}
    methods = [m for m in ordered(curves) if curves[m]["step"].size]
    if not methods:
        _empty(out, "no training steps recorded")
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        data = curves[method]
        colour = registry.colour(method)
        ax.plot(data["step"], data["loss"], color=colour, alpha=0.3, linewidth=0.8, label="loss (per step)")
        ax.plot(data["step"], smooth(data["loss"]), color=colour, linewidth=2, label="loss (smoothed)")
        prior = data.get("prior_loss")
        if prior is not None and np.any(prior != 0):
            ax.plot(
                data["step"],
                smooth(prior),
                color="#ff7f0e",
                linewidth=1.5,
                linestyle="--",
                label="prior-preservation term (smoothed)",
            )
        held_out = data.get("validation_loss")
        if held_out is not None and np.isfinite(held_out).any():
            at = np.isfinite(held_out)
            ax.plot(
                data["step"][at],
                held_out[at],
                color="#2ca02c",
                marker="o",
                markersize=4,
                linewidth=1.5,
                label="held-out photos (per checkpoint)",
            )
        ax.set_title(method_label(method), fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("denoising loss (MSE)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
    fig.tight_layout()
    _save(fig, out)


def _as_columns(curve) -> dict[str, np.ndarray]:
    if isinstance(curve, dict):
        return {k: np.asarray(v) for k, v in curve.items()}
    pairs = list(curve)
    return {
        "step": np.array([s for s, _ in pairs], dtype=int),
        "loss": np.array([v for _, v in pairs], dtype=float),
    }


COST_PANELS = (
    ("wall_time_s", "wall time of the job (s)", False),
    ("median_step_s", "median time per step (s)", False),
    ("peak_memory_mb", "peak memory (MB)", False),
    ("trainable_params", "trainable parameters (log scale)", True),
)


def training_cost(summaries: dict[str, dict], out: Path | str) -> None:
    """Bars per method from each ``train_summary.json``: wall time, median s/step, peak memory and
    trainable parameters, the value written on each bar."""
    methods = [m for m in ordered(summaries) if summaries[m]]
    if not methods:
        _empty(out, "no training summaries")
        return
    fig, axes = plt.subplots(1, len(COST_PANELS), figsize=(3.2 * len(COST_PANELS), 3.3), squeeze=False)
    for ax, (key, label, log_scale) in zip(axes[0], COST_PANELS):
        values = [summaries[m].get(key) for m in methods]
        heights = [v if v is not None else 0 for v in values]
        bars = ax.bar(range(len(methods)), heights, color=[registry.colour(m) for m in methods])
        for bar, value in zip(bars, values):
            text = "n/a" if value is None else _short_number(value)
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(methods)), [wrap(method_label(m), 11) for m in methods], fontsize=8)
        ax.set_title(label, fontsize=9.5)
        if log_scale and all(h > 0 for h in heights):
            ax.set_yscale("log")
        ax.margins(y=0.18)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out)


def _short_number(value: float) -> str:
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


# ---------------------------------------------------------------- metrics


PER_PROMPT_METRICS = (
    ("clip_score", "CLIP score"),
    ("clip_t", "CLIP-T"),
    ("clip_i", "CLIP-I"),
    ("dino", "DINO"),
)


def per_prompt_stats(per_image: list[dict], key: str, confidence: float = 0.95) -> dict[str, dict]:
    """Mean of a per-image metric for each prompt over its seeds, with a t interval (None with one seed).

    The interval is over seeds of one prompt, so it shows how much a prompt's score depends on the
    noise; it is not the table's bootstrap interval over prompts and seeds."""
    # scipy.special's t quantile: scipy.stats would add seconds of import for one function.
    from scipy.special import stdtrit

    by_prompt: dict[str, list[float]] = {}
    for row in per_image:
        if row.get(key) is not None:
            by_prompt.setdefault(row["prompt"], []).append(float(row[key]))
    out = {}
    for prompt, values in by_prompt.items():
        arr = np.asarray(values)
        mean, low, high = float(arr.mean()), None, None
        if arr.size > 1:
            half = stdtrit(arr.size - 1, 0.5 + confidence / 2) * arr.std(ddof=1) / math.sqrt(arr.size)
            low, high = mean - half, mean + half
        out[prompt] = {"mean": mean, "low": low, "high": high, "n": int(arr.size)}
    return out


def per_prompt_metrics(metrics: dict[str, dict], out: Path | str, confidence: float = 0.95) -> None:
    """One panel per per-image metric: each prompt's mean over seeds per method, with its interval.

    ``metrics`` maps method to its metrics JSON (``evaluate_method``'s output, with ``per_image``)."""
    methods = [m for m in ordered(metrics) if metrics[m].get("per_image")]
    panels = [
        (key, label)
        for key, label in PER_PROMPT_METRICS
        if any(r.get(key) is not None for m in methods for r in metrics[m]["per_image"])
    ]
    if not methods or not panels:
        _empty(out, "no per-image metrics")
        return
    stats = {
        m: {key: per_prompt_stats(metrics[m]["per_image"], key, confidence) for key, _ in panels}
        for m in methods
    }
    prompts = list(dict.fromkeys(r["prompt"] for m in methods for r in metrics[m]["per_image"]))
    row_h = 0.22 * len(methods) + 0.12
    fig_h = max(2.5, len(prompts) * row_h + 1.3)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.6 * len(panels) + 2.6, fig_h), squeeze=False, sharey=True
    )
    offsets = np.linspace(-0.3, 0.3, len(methods)) if len(methods) > 1 else np.zeros(1)
    for ax, (key, label) in zip(axes[0], panels):
        for offset, method in zip(offsets, methods):
            ys, xs, err_low, err_high = [], [], [], []
            for i, prompt in enumerate(prompts):
                entry = stats[method][key].get(prompt)
                if entry is None:
                    continue
                ys.append(i + offset)
                xs.append(entry["mean"])
                err_low.append(entry["mean"] - entry["low"] if entry["low"] is not None else 0)
                err_high.append(entry["high"] - entry["mean"] if entry["high"] is not None else 0)
            ax.errorbar(
                xs,
                ys,
                xerr=[err_low, err_high],
                fmt="o",
                markersize=3.5,
                capsize=2,
                linewidth=1,
                color=registry.colour(method),
                label=method_label(method),
            )
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(len(prompts) - 0.5, -0.5)
    axes[0][0].set_yticks(range(len(prompts)), [wrap(p, 34) for p in prompts], fontsize=7.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(methods), fontsize=8.5, frameon=False)
    fig.text(
        0.5,
        0.005,
        f"dot: mean over seeds; bar: {confidence:.0%} t interval over seeds",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1 - 0.4 / fig_h))
    _save(fig, out)


# ---------------------------------------------------------------- edits


def _token_row(
    fig, grid_spec, row: int, image: np.ndarray, maps, tokens: list[str], heading: str, n_cols: int, norm
):
    """One prompt's maps: a tile per token (map over the dimmed image), the token as title."""
    gray = np.asarray(Image.fromarray(image).convert("L"), dtype=float) / 255.0
    axes = []
    for i in range(n_cols):
        ax = fig.add_subplot(grid_spec[row, i])
        axes.append(ax)
        if i >= len(tokens):
            ax.axis("off")
            continue
        heat = np.asarray(maps[i], dtype=float)
        heat = heat / max(heat.max(), 1e-12)
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, extent=(0, 1, 0, 1))
        mappable = ax.imshow(
            heat, cmap="inferno", norm=norm, alpha=0.75, extent=(0, 1, 0, 1), interpolation="bilinear"
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(tokens[i][:14], fontsize=8.5)
    axes[0].set_ylabel(heading, fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
    return axes, mappable


def attention_figure(
    image: Image.Image | np.ndarray,
    rows: list[tuple],
    title: str | None = None,
    changed: set[str] | None = None,
):
    """Cross-attention maps per token for one or more prompts (``rows``: heading, maps
    ``[tokens, H, W]``, tokens, and optionally the row's own image) over the image, each normalised
    to its token's maximum, with a colour scale. Tokens in ``changed`` (the edited words) are marked in
    red. Returns the figure."""
    from matplotlib import colors, gridspec

    image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    rows = [r for r in rows if r[1] is not None and len(r[2])]
    n_cols = max((len(r[2]) for r in rows), default=1)
    tile = 1.05
    head = 0.55 if title else 0.15
    fig_w = 1.9 + n_cols * tile + 0.8
    fig_h = head + len(rows) * (tile + 0.3) + 0.1
    fig = plt.figure(figsize=(fig_w, max(fig_h, 1.2)))
    spec = gridspec.GridSpec(
        max(len(rows), 1),
        n_cols + 1,
        figure=fig,
        width_ratios=[1] * n_cols + [0.12],
        left=1.9 / fig_w,
        right=1 - 0.45 / fig_w,
        top=1 - head / fig_h,
        bottom=0.1 / fig_h,
        wspace=0.08,
        hspace=0.35,
    )
    norm = colors.Normalize(0, 1)
    mappable = None
    for r, (heading, maps, tokens, *own) in enumerate(rows):
        under = np.asarray(own[0].convert("RGB")) if own and own[0] is not None else image
        axes, mappable = _token_row(fig, spec, r, under, maps, tokens, heading, n_cols, norm)
        for ax, token in zip(axes, tokens):
            if changed and token in changed:
                ax.title.set_color("#d62728")
                ax.title.set_fontweight("bold")
    if mappable is not None:
        bar = fig.colorbar(mappable, cax=fig.add_subplot(spec[:, n_cols]))
        bar.set_label("attention / token's max", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    else:
        fig.text(0.5, 0.5, "no attention maps stored", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig_h, va="top")
    return fig


def figure_to_image(fig) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return img.convert("RGB")


def attention_sheet(
    maps,
    tokens: list[str],
    image: Image.Image,
    target_maps=None,
    target_tokens: list[str] | None = None,
    source_prompt: str | None = None,
    target_prompt: str | None = None,
    target_image: Image.Image | None = None,
) -> Image.Image:
    """The edit's ``attention.png``: the source prompt's token maps over ``image``, and the target's
    (over ``target_image``, the edited image, when given) where they were stored, the target's new
    words marked, with a colour scale."""
    changed = set(target_tokens or []) - set(tokens)
    rows = [(wrap(f"source: {source_prompt}" if source_prompt else "source prompt", 24), maps, tokens)]
    if target_maps is not None and target_tokens:
        rows.append(
            (
                wrap(f"target: {target_prompt}" if target_prompt else "target prompt", 24),
                target_maps,
                target_tokens,
                target_image,
            )
        )
    return figure_to_image(attention_figure(image, rows, changed=changed))


def edit_label(record: dict) -> str:
    """``id · type · model · inversion`` of an edit.json record."""
    inversion = record.get("inversion") or ("none (generated source)" if not record.get("image") else "?")
    return (
        f"{record.get('edit_id', '?')}  |  {record.get('edit', '?')} edit  |  model: "
        f"{method_label(record.get('model', '?'))}  |  inversion: {inversion}"
    )


def before_after(record: dict, folder: Path | str, out: Path | str) -> None:
    """Source (or its reconstruction), and for photos the photo itself, beside the edited image, each
    captioned with its prompt; the title names the edit."""
    folder = Path(folder)
    panels = []
    if record.get("image") and (folder / "source.png").exists():
        panels.append(("photo (input)", folder / "source.png"))
        if (folder / "reconstruction.png").exists():
            panels.append((f"reconstruction:\n{record['source_prompt']}", folder / "reconstruction.png"))
    else:
        panels.append((f"source:\n{record['source_prompt']}", folder / "source.png"))
    panels.append((f"edited:\n{record['target_prompt']}", folder / "edited.png"))
    panel_in = 2.4
    fig_w = max(len(panels) * panel_in, 6.4)
    fig_h = panel_in + 1.25
    fig, axes = plt.subplots(1, len(panels), figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.55 / fig_h, bottom=0.6 / fig_h, wspace=0.08)
    for ax, (caption, path) in zip(axes[0], panels):
        _show(ax, _read_rgb(path))
        ax.set_xlabel(wrap(caption, 30), fontsize=8.5)
    fig.suptitle(wrap(edit_label(record), int(fig_w * 12)), fontsize=9.5, y=1 - 0.08 / fig_h, va="top")
    _save(fig, out)


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
