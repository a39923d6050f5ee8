"""Download every model a config names into the Hugging Face cache, for compute nodes without internet.

Run on a login node (`snakemake prefetch --cores 1 --configfile ...`), then run the workflow with
`HF_HUB_OFFLINE=1`: every job then reads the cache and never touches the network, and a model that is
missing fails with one line naming it and this command.
"""

from __future__ import annotations

import logging
from pathlib import Path

from s2s.io import S2SError, write_json

log = logging.getLogger(__name__)

# Only what the loaders read: safetensors weights, configs, tokenizer files. Pickled weights
# (*.bin, *.ckpt) are never downloaded, so they can never be loaded by mistake either.
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model"]


def models_to_fetch(base_model: str, metric_models: dict[str, str | None]) -> dict[str, str]:
    wanted = {"model.name_or_path": base_model}
    for key, value in metric_models.items():
        if value and key != "feature_extractor":
            wanted[f"evaluation.{key}"] = value
    return wanted


def is_hub_id(name: str) -> bool:
    return not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def prefetch(base_model: str, metric_models: dict[str, str | None], record: Path | str) -> dict:
    from huggingface_hub import snapshot_download

    fetched = {}
    for key, name in models_to_fetch(base_model, metric_models).items():
        if not is_hub_id(name):
            log.info("%s: %s is a local path, nothing to fetch", key, name)
            fetched[key] = {"name": name, "local": True}
            continue
        try:
            path = snapshot_download(name, allow_patterns=ALLOW_PATTERNS)
        except Exception as exc:  # network errors come in many types; name the model either way
            raise S2SError(f"prefetch: could not download {name} (config key {key}): {exc}") from exc
        log.info("%s: %s cached at %s", key, name, path)
        fetched[key] = {"name": name, "path": path}
    extractor = metric_models.get("feature_extractor")
    if extractor == "inception-v3-compat":
        from s2s.metrics.features import load_feature_extractor

        load_feature_extractor(extractor)  # torch-fidelity downloads and caches its Inception weights
        fetched["evaluation.feature_extractor"] = {"name": extractor, "cached_by": "torch-fidelity"}
    write_json(record, fetched)
    return fetched
