"""Atomic file output and safe path handling.

Every result file is written under a temporary name in the same folder and renamed into place, so a
job killed half-way never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class S2SError(Exception):
    """An error whose message is meant for the user: it names the file, key or step and the fix."""


def check_safe_name(name: str, what: str) -> str:
    """Reject names that would escape their folder or be awkward on a cluster file system."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise S2SError(
            f"{what} {name!r} is not a safe name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (it becomes a folder name under results/)"
        )
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; results get the modes a plain open() or mkdir()
# would give them, so that a group sharing a cluster folder can read them.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_png(image, path: Path | str) -> None:
    """Save a PIL image as PNG atomically (no timestamps or other varying metadata)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_safetensors(tensors: dict, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata)


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}


def load_safetensors(path: Path | str) -> dict:
    """Load weights from a safetensors file; refuse pickle-based formats instead of unpickling them."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise S2SError(
            f"{path}: refusing to load a pickle-based weight file ({path.suffix}); pickles can run "
            "arbitrary code. Convert it to .safetensors (e.g. with safetensors.torch.save_file) and "
            "point the config at that file."
        )
    if not path.is_file():
        raise S2SError(f"{path}: weight file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own opaque errors on damaged files
        raise S2SError(f"{path}: not a readable safetensors file ({exc})") from exc


def sha256_file(path: Path | str) -> str:
    """The sha256 of a file, read in 1 MiB blocks (model weights do not need to fit in memory twice)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
