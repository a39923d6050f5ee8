"""Figures for the report, drawn with PIL (no plotting library needed): sample grids and loss curves."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageDraw

from s2s.io import save_png

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def image_grid(
    rows: list[list[Path]], out: Path | str, row_labels: list[str] | None = None, cell: int = 128
) -> None:
    """One row per prompt, one column per seed; the row label (prompt id) on the left."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    label_w = 48 if row_labels else 0
    grid = Image.new("RGB", (label_w + n_cols * cell, n_rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    for r, paths in enumerate(rows):
        if row_labels:
            draw.text((4, r * cell + cell // 2 - 6), row_labels[r], fill="black")
        for c, path in enumerate(paths):
            with Image.open(path) as img:
                grid.paste(img.convert("RGB").resize((cell, cell)), (label_w + c * cell, r * cell))
    save_png(grid, out)


def read_loss_csv(path: Path | str) -> list[tuple[int, float]]:
    with open(path) as fh:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(fh)]


def loss_curves(curves: dict[str, list[tuple[int, float]]], out: Path | str, size=(640, 360)) -> None:
    """Loss against step for each method, on shared axes, with a legend."""
    w, h = size
    margin_l, margin_r, margin_t, margin_b = 60, 20, 20, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    points = [p for c in curves.values() for p in c]
    if not points:
        draw.text((w // 3, h // 2), "no training steps recorded", fill="black")
        save_png(img, out)
        return
    max_step = max(s for s, _ in points) or 1
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    if hi - lo < 1e-9:
        hi = lo + 1e-9

    def xy(step, value):
        x = margin_l + (w - margin_l - margin_r) * step / max_step
        y = margin_t + (h - margin_t - margin_b) * (1 - (value - lo) / (hi - lo))
        return x, y

    draw.rectangle((margin_l, margin_t, w - margin_r, h - margin_b), outline="black")
    draw.text((4, margin_t), f"{hi:.3g}", fill="black")
    draw.text((4, h - margin_b - 10), f"{lo:.3g}", fill="black")
    draw.text((margin_l, h - margin_b + 8), "0", fill="black")
    draw.text((w - margin_r - 40, h - margin_b + 8), f"step {max_step}", fill="black")
    for i, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(curve) > 1:
            draw.line([xy(s, v) for s, v in curve], fill=colour, width=2)
        draw.text((margin_l + 10, margin_t + 6 + 14 * i), name, fill=colour)
    save_png(img, out)
