"""The world's tokenizer: CLIP's own BPE, restricted to the merges the world's words use.

A word is split exactly as SD v1.4's tokenizer splits it ("sunflowers" one token, "teddybear" two), but
the vocabulary holds only the byte alphabet, the merges the world's words need and the start/end tokens
(about 1,000 entries instead of 49,408), so the world's text encoder has a small embedding table. Restricting
BPE this way changes no split of the listed words: at every step BPE merges the lowest-ranked pair present,
and that merge is among the kept ones. Any other text still tokenizes (down to bytes, as CLIP does for
unknown words).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from s2s.clip_tokenizer import TOKENIZER_CONFIG, bytes_to_unicode, read_merges, require_bpe_file
from s2s.io import write_text
from s2s.world.names import NAME_WORDS
from s2s.world.scene import CLASSES, COLOURS, CONTEXTS

# Every word of the world's captions, the study's prompts and the demo's edit manifests.
EXTRA_WORDS = [
    "a",
    "an",
    "photo",
    "of",
    "the",
    "it",
    "in",
    "on",
    "with",
    "and",
    "near",
    "to",
    "picture",
    "rendering",
    "cat",
    "dog",
    "teddy",
    "bear",
    "teddybear",
    "standing",
    "sitting",
    "lying",
    "running",
    "field",
    "grass",
    "dry",
]


def world_words() -> list[str]:
    words = set(EXTRA_WORDS) | set(CLASSES) | set(COLOURS) | set(NAME_WORDS)
    for context in CONTEXTS:
        words |= set(context.lower().split())
    return sorted(words)


def _bpe_path(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges BPE applies to ``word`` (CLIP's algorithm: lowest-ranked adjacent pair first)."""
    byte_map = bytes_to_unicode()
    symbols = [byte_map[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    applied = []
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        applied.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return applied


def write_world_tokenizer(folder: Path | str, words: list[str] | None = None, bpe_path=None) -> Path:
    """Write the restricted CLIP tokenizer (vocab.json, merges.txt, configs) for ``words``."""
    folder = Path(folder)
    merges = read_merges(bpe_path or require_bpe_file())
    ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
    needed: set[tuple[str, str]] = set()
    for word in words or world_words():
        for token in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", word.lower()):
            needed.update(_bpe_path(token, ranks))
    kept = sorted(needed, key=ranks.__getitem__)
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in kept]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in kept) + "\n")
    specials = {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    write_text(folder / "special_tokens_map.json", json.dumps(specials, indent=2))
    write_text(folder / "tokenizer_config.json", json.dumps(TOKENIZER_CONFIG, indent=2))
    return folder
