"""An edit manifest's rows, with no torch, diffusers, transformers or PIL: the format and every check of
a row that needs no model, tokenizer or image decoding.

Both readers of a row use it: the parse-time check and plan (``s2s.plan.check_manifest``,
``plan_manifest``) and the edit job (``s2s.edit.batch.parse_row``, which then checks the row's model
folder and image, and its prompts with the model's tokenizer). ``check_row`` is the one call that turns a
row's cells into checked values, its ``params`` cell into the mapping of P2P parameters that the edit's
controller spec takes over the edits.* settings.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from s2s.io import S2SError, check_safe_name

# Kept equal to s2s.edit.controllers.EDITS, s2s.edit.inversion.INVERSIONS and s2s.models.SAMPLE_METHODS
# (tests/test_parse.py checks it): those modules import torch.
EDIT_TYPES = ("replace", "refine", "reweight", "subject")
INVERSION_NAMES = ("negative_prompt", "null_text", "ddim", "direct")
COLUMNS = (
    "edit_id", "image", "source_prompt", "target_prompt", "edit", "params", "model", "inversion", "seed",
)  # fmt: skip
REQUIRED = ("source_prompt", "target_prompt", "edit")


class Where:
    """Names a manifest cell in error messages."""

    def __init__(self, manifest: str):
        self.manifest = manifest

    def error(self, row: int, column: str, message: str) -> S2SError:
        return S2SError(f"{self.manifest}, row {row}, column '{column}': {message}")


def read_manifest(path: Path) -> list[dict]:
    """The raw rows of a CSV or YAML manifest, as dicts of column -> value (empty cells dropped)."""
    path = Path(path)
    if not path.is_file():
        raise S2SError(f"{path}: edit manifest not found")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = [dict(r) for r in reader]
            header = reader.fieldnames or []
        unknown = [c for c in header if c and c.strip() not in COLUMNS]
        if unknown:
            raise S2SError(f"{path}: unknown column(s) {unknown}; the columns are {', '.join(COLUMNS)}")
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise S2SError(f"{path}: not valid YAML ({exc})") from exc
        rows = data.get("edits") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise S2SError(f"{path}: a YAML manifest is a list of mappings (or a mapping with key 'edits')")
    else:
        raise S2SError(f"{path}: edit manifest must be .csv, .yaml or .yml")
    return [clean_row(r) for r in rows]


def clean_row(raw: dict) -> dict:
    cleaned = {}
    for key, value in raw.items():
        if key is None:  # csv puts surplus cells of a row under None
            cleaned[None] = value
            continue
        value = value.strip() if isinstance(value, str) else value
        if value not in (None, ""):
            cleaned[str(key).strip()] = value
    return cleaned


def edit_slug(row: int, source: str, target: str) -> str:
    """``{row:03d}_{words}``: the target's words that are not in the source, else the target's words."""
    source_words = set(source.lower().split())
    words = [w for w in target.lower().split() if w not in source_words] or target.lower().split()
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(words)).strip("-")[:40].strip("-")
    return f"{row:03d}_{slug}" if slug else f"{row:03d}"


def check_row_columns(raw: dict, row: int, where: Where) -> None:
    """A manifest row's cells: no surplus cells, only known columns, the required ones present."""
    if None in raw:
        surplus = raw[None]
        raise where.error(row, "-", f"more cells than columns ({surplus!r}); quote cells that contain commas")
    unknown = [c for c in raw if c not in COLUMNS]
    if unknown:
        raise where.error(row, unknown[0], f"unknown column; the columns are {', '.join(COLUMNS)}")
    for column in REQUIRED:
        if not isinstance(raw.get(column), str):
            raise where.error(row, column, "missing; every row needs source_prompt, target_prompt and edit")


@dataclass(frozen=True)
class RowCells:
    """A manifest row's cells, checked (``check_row``); ``model`` and ``inversion`` as written (None: the
    reader's default), ``params`` the parsed mapping of P2P parameters."""

    edit: str
    edit_id: str
    source_prompt: str
    target_prompt: str
    image: str | None
    model: str | None
    inversion: str | None
    params: dict
    seed: int | None = None  # a generated source's noise seed (None: the run's seed)


def check_row(raw: dict, row: int, where: Where) -> RowCells:
    """Row ``row`` (1-based) cleaned (``clean_row``: a row read from a file already is) and checked cell by
    cell: columns, edit, inversion, edit_id and params; raise ``where.error`` naming the first problem."""
    raw = clean_row(raw)
    check_row_columns(raw, row, where)
    edit = raw["edit"]
    if edit not in EDIT_TYPES:
        raise where.error(row, "edit", f"unknown edit {edit!r}; use one of {', '.join(EDIT_TYPES)}")
    inversion = raw.get("inversion")
    if inversion is not None and inversion not in INVERSION_NAMES:
        raise where.error(
            row, "inversion", f"unknown inversion {inversion!r}; use one of {', '.join(INVERSION_NAMES)}"
        )
    edit_id = str(raw.get("edit_id") or edit_slug(row, raw["source_prompt"], raw["target_prompt"]))
    try:
        check_safe_name(edit_id, "edit_id")
    except S2SError as exc:
        raise where.error(row, "edit_id", str(exc)) from exc
    return RowCells(
        edit=edit,
        edit_id=edit_id,
        source_prompt=raw["source_prompt"],
        target_prompt=raw["target_prompt"],
        image=raw.get("image"),
        model=raw.get("model"),
        inversion=inversion,
        params=parse_params(raw.get("params"), where, row),
        seed=parse_seed(raw, where, row),
    )


def parse_seed(raw: dict, where: Where, row: int) -> int | None:
    """A row's ``seed``: the noise its generated source (and edit) start from, so that each edit can pick
    the sample it shows (P2P's notebooks seed each prompt pair). A photo's noise is its inversion's."""
    value = raw.get("seed")
    if value is None:
        return None
    if raw.get("image"):
        raise where.error(
            row, "seed", "a seed applies to generated sources only; a photo's noise comes from its inversion"
        )
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"\d+", text) or int(text) >= 2**63:
        raise where.error(row, "seed", f"{value!r} is not a seed; give a whole number from 0 to 2**63 - 1")
    return int(text)


def parse_params(value, where: Where, row: int) -> dict:
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)  # JSON is YAML, so both spellings work
        except yaml.YAMLError as exc:
            raise where.error(row, "params", f"not valid JSON/YAML ({exc})") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(
            row, "params", 'give a mapping, e.g. {"cross_replace_steps": 0.6, "blend_words": ["dog"]}'
        )
    return value


def _in_prompt(word: str, prompt: str) -> bool:
    # A substring test, looser than the tokenizer's word match: it refuses only what cannot match.
    return str(word).lower().strip() in prompt.lower()


def check_words(raw: dict, params: dict, where: Where, row: int) -> None:
    """The word rules of replace / refine / reweight that whitespace words decide (the tokenizer's
    rules, token counts included, are checked by validate_manifest before any edit runs)."""
    source, target, edit = raw["source_prompt"], raw["target_prompt"], raw["edit"]
    if edit == "replace" and len(source.split()) != len(target.split()):
        raise where.error(
            row,
            "target_prompt",
            f"replace edit needs prompts with the same number of words, but {source!r} has "
            f"{len(source.split())} words and {target!r} has {len(target.split())}; "
            "use edit 'refine' for prompts that add or remove words",
        )
    if edit == "reweight":
        equalizer = params.get("equalizer")
        if not equalizer:
            raise where.error(
                row, "params", "reweight edit needs 'equalizer': {word: scale, ...} (words of the target)"
            )
        if isinstance(equalizer, dict):
            for word in equalizer:
                if not _in_prompt(word, target):
                    raise where.error(
                        row, "params", f"equalizer word {word!r} is not in the prompt {target!r}"
                    )
    cross = params.get("cross_replace_steps")
    if isinstance(cross, dict):
        for word in cross:
            if word != "default_" and not _in_prompt(word, target):
                raise where.error(
                    row,
                    "params",
                    f"cross_replace_steps word {word!r} is not in the target prompt {target!r}",
                )
    for key in ("blend_words", "keep_words"):
        words = params.get(key)
        if not words:
            continue
        if isinstance(words, list | tuple) and len(words) == 2 and all(isinstance(w, list) for w in words):
            src_words, tgt_words = words
        else:
            src_words = tgt_words = [words] if isinstance(words, str) else words
        if (
            isinstance(src_words, list | tuple)
            and not any(_in_prompt(w, source) for w in src_words)
            and not any(_in_prompt(w, target) for w in tgt_words)
        ):
            raise where.error(row, "params", f"{key} {words!r} occur in neither {source!r} nor {target!r}")
