"""Fetch CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz) from a registry package, offline-safe.

The file ships inside the `clip-anytorch` wheel. Only the wheel is downloaded (``--no-deps``: installing
the package would pull in torchvision), and only that one file is taken out of it. The real SD-1.x /
CLIP tokenizer is then built from it by ``s2s.clip_tokenizer``.

    python scripts/fetch_clip_bpe.py DEST_FILE
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "clip-anytorch==2.6.0"
MEMBER = "clip/bpe_simple_vocab_16e6.txt.gz"


def main(dest: str) -> None:
    dest_path = Path(dest)
    if dest_path.is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    partial = dest_path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(dest_path)
    print(f"wrote {dest_path} ({len(data)} bytes) from {WHEEL}")


if __name__ == "__main__":
    main(sys.argv[1])
