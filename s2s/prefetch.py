"""Download exactly the model files a config's run loads, for compute nodes without internet.

Run on a login node (`snakemake prefetch --cores 1 --configfile ...`), then run the workflow with
`HF_HUB_OFFLINE=1`: every job then reads the cache and never touches the network, and a model that is
missing fails with one line naming it and this command.

What is fetched is what the loaders read, no more:

- the diffusers base model: ``model_index.json`` and, for each component that
  ``StableDiffusionPipeline.from_pretrained(..., use_safetensors=True, safety_checker=None,
  feature_extractor=None)`` loads, its configs, tokenizer files and its one safetensors weight file (no
  ``safety_checker/`` or ``feature_extractor/``, no fp16 / ema / non-ema variants, no pickled ``.bin`` /
  ``.ckpt``);
- CLIP and DINO (transformers models): their config, processor and tokenizer files and ``model.safetensors``;
- the Inception-v3 networks: their published weights, converted to safetensors (``s2s.metrics.inception``).

Each downloaded safetensors file is opened with safetensors (header and length checked), and every
file's size is logged with the total.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from s2s.io import S2SError, write_json

log = logging.getLogger(__name__)

# Configs, processor and tokenizer files (vocab.json, merges.txt, tokenizer.json, spiece.model).
SMALL_FILE = re.compile(r"^[^/]+\.(json|txt|model)$")
# The unsharded or sharded weights without a variant infix (".fp16", ".ema", ".non_ema").
WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model)(-\d{5}-of-\d{5})?\.safetensors$")
WEIGHTS_INDEX = re.compile(r"^(diffusion_pytorch_model|model)\.safetensors\.index\.json$")
VARIANT_INDEX = re.compile(r"\.safetensors\.index\.[^/]+\.json$")
# Passed as None by s2s.models.load_base_pipeline, so from_pretrained neither downloads nor loads it.
# The loaders pass safety_checker=None and feature_extractor=None: neither is read.
SKIPPED_COMPONENTS = {"safety_checker", "feature_extractor"}


def models_to_fetch(base_model: str, metric_models: dict[str, str | None]) -> dict[str, str]:
    wanted = {"model.name_or_path": base_model}
    for key, value in metric_models.items():
        if value and key not in ("feature_extractor", "study_feature_extractor"):
            wanted[f"evaluation.{key}"] = value
    return wanted


def is_hub_id(name: str) -> bool:
    return not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _folder_files(files: list[str], folder: str) -> list[str]:
    """The files of one model folder ('' for the repository root) that a loader reads."""
    prefix = f"{folder}/" if folder else ""
    chosen = []
    for path in files:
        if not path.startswith(prefix):
            continue
        name = path[len(prefix) :]
        if (
            WEIGHTS.match(name)
            or WEIGHTS_INDEX.match(name)
            or SMALL_FILE.match(name)
            and not VARIANT_INDEX.search(name)
        ):
            chosen.append(path)
    return chosen


def pipeline_components(model_index: dict) -> list[str]:
    """Component folders ``from_pretrained`` loads: entries ``[library, class]`` that are not null
    and not passed as None."""
    return sorted(
        name
        for name, value in model_index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and value[0] is not None
        and name not in SKIPPED_COMPONENTS
    )


def files_to_fetch(repo_id: str, files: list[str], download) -> list[str]:
    """The repository files the run reads. ``download(filename)`` fetches one (the model index)."""
    if "model_index.json" in files:
        model_index = json.loads(Path(download("model_index.json")).read_text())
        wanted = ["model_index.json"]
        for component in pipeline_components(model_index):
            chosen = _folder_files(files, component)
            if not chosen:
                raise S2SError(f"prefetch: {repo_id} has no files for its component {component!r}")
            wanted += chosen
    else:
        wanted = [f for f in _folder_files(files, "") if not f.endswith(".gitattributes")]
    weights = [f for f in wanted if f.endswith(".safetensors")]
    if not weights and "model_index.json" not in files:
        raise S2SError(f"prefetch: {repo_id} has no model.safetensors; only safetensors weights are loaded")
    return wanted


def check_safetensors(path: Path | str, label: str) -> None:
    """Open the file with safetensors: a damaged header or a truncated file fails here, not in a job."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own error types
        reason = " ".join(str(exc).split())
        raise S2SError(
            f"prefetch: {label} ({path}) is not a readable safetensors file ({reason}); delete it and "
            "run `snakemake prefetch` again"
        ) from exc


def fetch_repo(repo_id: str, key: str) -> dict:
    import huggingface_hub as hub

    try:
        files = hub.list_repo_files(repo_id)
        paths = {}

        def download(filename: str) -> str:
            if filename not in paths:
                paths[filename] = hub.hf_hub_download(repo_id, filename)
            return paths[filename]

        for filename in files_to_fetch(repo_id, files, download):
            download(filename)
    except S2SError:
        raise
    except Exception as exc:  # network errors come in many types; name the model either way
        raise S2SError(f"prefetch: could not download {repo_id} (config key {key}): {exc}") from exc
    sizes = {}
    for filename, path in paths.items():
        if filename.endswith(".safetensors"):
            check_safetensors(path, f"{repo_id}/{filename}")
        sizes[filename] = Path(path).stat().st_size
        log.info("%s: %s/%s %s", key, repo_id, filename, _human(sizes[filename]))
    total = sum(sizes.values())
    log.info("%s: %s, %d files, %s", key, repo_id, len(sizes), _human(total))
    return {"name": repo_id, "files": sizes, "bytes": total}


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def inception_specs(*extractors: str | None) -> list[str]:
    """The Inception networks the evaluation loads by name (evaluation.feature_extractor and
    evaluation.study_feature_extractor); files and the tiny extractor need no fetching."""
    from s2s.metrics.inception import ARCHITECTURES

    return list(dict.fromkeys(e for e in extractors if e in ARCHITECTURES))


def prefetch(base_model: str, metric_models: dict[str, str | None], record: Path | str) -> dict:
    from s2s.metrics.inception import fetch_inception

    fetched = {}
    for key, name in models_to_fetch(base_model, metric_models).items():
        if not is_hub_id(name):
            log.info("%s: %s is a local path, nothing to fetch", key, name)
            fetched[key] = {"name": name, "local": True}
            continue
        fetched[key] = fetch_repo(name, key)
    for spec in inception_specs(
        metric_models.get("feature_extractor"), metric_models.get("study_feature_extractor")
    ):
        entry = fetch_inception(spec)
        check_safetensors(entry["path"], spec)
        size = Path(entry["path"]).stat().st_size
        log.info("evaluation.feature_extractor: %s converted to %s (%s)", spec, entry["path"], _human(size))
        fetched[f"evaluation.feature_extractor:{spec}"] = {**entry, "bytes": size}
    total = sum(entry.get("bytes", 0) for entry in fetched.values())
    log.info("prefetch: %s in all", _human(total))
    write_json(record, fetched)
    return fetched
