"""Subject photos: check a whole folder up front, then centre-crop and resize to the model resolution.

Every problem in the folder is collected into one report, so a user fixes them all at once instead of
finding them one failed job at a time.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFile, ImageOps, UnidentifiedImageError

from s2s.io import S2SError, atomic_dir, save_png, write_json
from s2s.plan import UNSUPPORTED_SUFFIXES  # known formats we cannot read, refused by name

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "MPO"}  # MPO: multi-picture JPEGs written by many cameras


@dataclass
class FolderReport:
    images: list[Path]
    skipped: list[str]
    problems: list[str]
    warnings: list[str]


def _open_checked(path: Path) -> Image.Image:
    """Open and fully decode an image (truncated files only fail on decode)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as img:
        img.load()
        fmt = img.format
        img = ImageOps.exif_transpose(img)
    if fmt not in SUPPORTED_FORMATS:
        raise ValueError(f"format {fmt} is not supported (use JPEG, PNG or WebP)")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (palette with transparency, 16-bit, CMYK, grey, alpha) to 8-bit RGB on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip (PIL's convert('L') clips at 255).
        img = img.point(lambda v: v / 257).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# Snakemake marks directory outputs (photos/, instance/, class_images/) with this file.
WORKFLOW_MARKERS = frozenset({".snakemake_timestamp"})


def scan_folder(folder: Path, resolution: int, small_images: str = "upscale") -> FolderReport:
    """Check every file of a subject folder; collect problems instead of stopping at the first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise S2SError(f"{folder}: subject image folder does not exist")
    report = FolderReport([], [], [], [])
    for path in sorted(folder.iterdir()):
        name = path.name
        if name in WORKFLOW_MARKERS:  # the workflow's own bookkeeping, not the user's: not worth a line
            continue
        if name.startswith(".") or path.is_dir():
            report.skipped.append(f"{name}: hidden file or folder, skipped")
            continue
        suffix = path.suffix.lower()
        if suffix in UNSUPPORTED_SUFFIXES:
            report.problems.append(f"{path}: {suffix} images are not supported; convert to JPEG, PNG or WebP")
            continue
        if suffix not in IMAGE_SUFFIXES:
            report.skipped.append(f"{name}: not an image file ({suffix or 'no extension'}), skipped")
            continue
        try:
            size = path.stat().st_size
        except OSError as exc:  # a link to a file that is gone, say
            report.problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
            continue
        if size == 0:
            report.problems.append(f"{path}: empty file (0 bytes)")
            continue
        try:
            img = _open_checked(path)
        except UnidentifiedImageError:
            report.problems.append(f"{path}: not a readable image (the content is not JPEG/PNG/WebP)")
            continue
        except (OSError, SyntaxError) as exc:
            report.problems.append(f"{path}: damaged or truncated image ({exc})")
            continue
        except Image.DecompressionBombError as exc:  # PIL's pixel limit (about 179 megapixels)
            report.problems.append(
                f"{path}: too large to decode safely ({exc}); downscale it (a {resolution} px square is used)"
            )
            continue
        except ValueError as exc:
            report.problems.append(f"{path}: {exc}")
            continue
        if min(img.size) < resolution:
            msg = f"{path}: {img.size[0]}x{img.size[1]} is smaller than the model resolution {resolution}"
            if small_images == "reject":
                report.problems.append(
                    msg + " (data.small_images: reject; use a larger photo or set upscale)"
                )
                continue
            report.warnings.append(msg + "; upscaled")
        report.images.append(path)
    if not report.images and not report.problems:
        report.problems.append(f"{folder}: no images found (JPEG, PNG or WebP expected)")
    return report


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Largest centred square, resized with a high-quality filter (the study's 512 px centre crop)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((resolution, resolution), Image.Resampling.BICUBIC)


def load_prepared(path: Path | str, resolution: int) -> Image.Image:
    img = _open_checked(Path(path))
    return center_crop_resize(to_rgb(img), resolution)


def prepare_subject(
    folder: Path | str, out_dir: Path | str, resolution: int, small_images: str = "upscale"
) -> list[Path]:
    """Check the whole folder, then write one square RGB PNG per photo into ``out_dir`` (atomically)."""
    folder, out_dir = Path(folder), Path(out_dir)
    report = scan_folder(folder, resolution, small_images)
    for line in report.skipped:
        log.info("note: %s", line)
    for line in report.warnings:
        log.warning("%s", line)
    if report.problems:
        raise S2SError(
            f"{len(report.problems)} problem(s) in subject folder {folder}; fix them and re-run:\n  "
            + "\n  ".join(report.problems)
        )
    written = []
    with atomic_dir(out_dir) as tmp:
        sources = {}
        for i, path in enumerate(report.images):
            name = f"{i:03d}.png"
            save_png(load_prepared(path, resolution), tmp / name)
            sources[name] = path.name
        write_json(tmp / "sources.json", {"folder": str(folder), "resolution": resolution, "images": sources})
        written = [out_dir / n for n in sources]
    log.info("prepared %d images from %s into %s", len(written), folder, out_dir)
    return written


def list_images(folder: Path | str) -> list[Path]:
    if not Path(folder).is_dir():
        return []
    return sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")
    )


# ---------------------------------------------------------------- the demo's own subject


def draw_toy(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A procedurally drawn toy robot on a random two-colour background: the demo's 'subject'."""
    w, h = size
    top = tuple(rng.randint(40, 230) for _ in range(3))
    bottom = tuple(rng.randint(40, 230) for _ in range(3))
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(h - 1, 1)
        draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    scale = rng.uniform(0.35, 0.6) * min(w, h)
    cx = rng.uniform(0.35, 0.65) * w
    cy = rng.uniform(0.4, 0.6) * h
    body = (cx - scale * 0.35, cy - scale * 0.1, cx + scale * 0.35, cy + scale * 0.5)
    draw.rounded_rectangle(body, radius=scale * 0.08, fill=(214, 48, 49), outline=(60, 20, 20), width=2)
    head_r = scale * 0.22
    draw.ellipse(
        (cx - head_r, cy - scale * 0.1 - 2 * head_r, cx + head_r, cy - scale * 0.1), fill=(250, 200, 60)
    )
    for dx in (-0.4, 0.4):
        ex, ey = cx + dx * head_r, cy - scale * 0.1 - head_r
        draw.ellipse(
            (ex - head_r * 0.18, ey - head_r * 0.18, ex + head_r * 0.18, ey + head_r * 0.18),
            fill=(20, 20, 20),
        )
    angle = rng.uniform(-0.5, 0.5)
    for side in (-1, 1):
        x0, y0 = cx + side * scale * 0.35, cy + scale * 0.05
        x1 = x0 + side * scale * 0.3 * math.cos(angle)
        y1 = y0 + scale * 0.3 * math.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=(60, 90, 200), width=max(2, int(scale * 0.06)))
    return img


def draw_synthetic_subject(out_dir: Path | str, count: int, seed: int, resolution: int) -> list[Path]:
    """Draw ``count`` photos of the toy at varied positions, scales, backgrounds and aspect ratios."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for i in range(count):
            w = int(resolution * rng.uniform(1.0, 1.5))
            h = int(resolution * rng.uniform(1.0, 1.3))
            save_png(draw_toy(rng, (w, h)), tmp / f"toy_{i:02d}.png")
    return sorted(out_dir.glob("*.png"))
