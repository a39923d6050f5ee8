"""Checks that need no model and no torch, run when the workflow is parsed, before the first job.

- optional dependencies a config names: 8-bit Adam needs bitsandbytes in the environment the training
  jobs run in (this one, or with ``--use-conda`` the training rules' conda environment file);
- offline mode (``HF_HUB_OFFLINE=1``): every hub model the config names is in the local cache, else one
  line naming the model and ``snakemake prefetch``;
- the base model's prediction type (epsilon or v_prediction), where its scheduler config is on disk.

A training job's GPU memory is checked at the job's start instead (``s2s.memory``): only the node that
runs it knows its card.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from s2s import registry
from s2s.config import setting_key
from s2s.io import S2SError

METHODS = registry.NAMES
GPU_ENV = "envs/s2s-gpu.yaml"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def training_key(config: dict, name: str, key: str, default=None):
    """A training key of a method or variant as the config sets it (variants.NAME.KEY, else
    training.METHOD.KEY, else training.KEY), without the schema's defaults."""
    training = config.get("training", {})
    value = training.get(key, default)
    value = training.get(registry.base_method(config, name), {}).get(key, value)
    return registry.overrides(config, name).get(key, value)


def methods_with_8bit_adam(config: dict) -> list[str]:
    methods = config.get("methods", METHODS)
    return [m for m in methods if bool(training_key(config, m, "use_8bit_adam", False))]


def check_optional_dependencies(config: dict, use_conda: bool, workflow_dir: Path | str) -> None:
    """8-bit Adam needs bitsandbytes where the training jobs run."""
    methods = methods_with_8bit_adam(config)
    if not methods:
        return
    key = setting_key(config, methods[0], "use_8bit_adam")
    if use_conda:
        env = Path(workflow_dir) / GPU_ENV
        if "bitsandbytes" not in env.read_text():
            raise S2SError(f"config key {key}: {GPU_ENV} does not install bitsandbytes")
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise S2SError(
            f"config key {key}: 8-bit Adam needs bitsandbytes, which this environment lacks; "
            f"`pip install -e .[gpu]` on the GPU machine, run with --use-conda (training then uses "
            f"{GPU_ENV}), or set use_8bit_adam: false"
        )


def check_precision(config: dict) -> None:
    """fp16 mixed precision needs CUDA: on a run pinned to the CPU it is refused before any job (bf16
    autocast works on CPU)."""
    if config.get("device") != "cpu":
        return
    for method in config.get("methods", METHODS):
        if training_key(config, method, "mixed_precision") == "fp16":
            raise S2SError(
                f"config key {setting_key(config, method, 'mixed_precision')}: fp16 needs a CUDA GPU and "
                "device is cpu; use bf16 (autocast works on CPU) or no"
            )


# The prediction types training, sampling, inversion and editing support (s2s.train.objective, s2s.edit).
PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(name_or_path: str, key: str = "model.name_or_path") -> None:
    """The base model's scheduler must predict the noise or the velocity. Read from a local folder or the
    hub cache; a model not there yet (built by a rule, or downloaded by the first job) is checked by the
    jobs that load it (training and inversion raise the same error)."""
    found = None
    local = Path(name_or_path) / "scheduler" / "scheduler_config.json"
    if local.is_file():
        found = local
    elif is_hub_id(name_or_path):
        snapshots = hub_cache() / f"models--{name_or_path.replace('/', '--')}" / "snapshots"
        candidates = sorted(snapshots.glob("*/scheduler/scheduler_config.json")) if snapshots.is_dir() else []
        found = candidates[0] if candidates else None
    if found is None:
        return
    try:
        prediction_type = json.loads(found.read_text()).get("prediction_type", "epsilon")
    except (OSError, ValueError) as exc:
        raise S2SError(f"config key {key}: {found} is not readable JSON ({exc})") from exc
    if prediction_type not in PREDICTION_TYPES:
        raise S2SError(
            f"config key {key}: {name_or_path}'s scheduler ({found}) has prediction_type "
            f"{prediction_type!r}; training, sampling and inversion support "
            f"{' and '.join(PREDICTION_TYPES)}: use a model trained for one of them"
        )


def is_hub_id(name: str) -> bool:
    return not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def is_cached(repo_id: str, filename: str) -> bool:
    """Whether a snapshot of ``repo_id`` in the hub cache holds ``filename``. Read from the cache's folder
    layout (models--ORG--NAME/snapshots/REV/...): the Snakefile is read without huggingface_hub too."""
    snapshots = hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any((rev / filename).is_file() for rev in snapshots.iterdir())


def check_offline_models(models: dict[str, str | None]) -> None:
    """In offline mode, every hub id among ``models`` (config key -> name) must be in the local cache."""
    if not offline():
        return
    for key, name in models.items():
        if not name or not is_hub_id(name):
            continue
        probe = "model_index.json" if key == "model.name_or_path" else "config.json"
        if not is_cached(name, probe):
            raise S2SError(
                f"config key {key}: {name} is not in the local model cache and HF_HUB_OFFLINE is set; run "
                "`snakemake prefetch --cores 1` with the same --configfile on a machine with internet first"
            )
