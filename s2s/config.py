"""The config: its check, its typed views, the models a run uses, and what each rule depends on.

``config/schema.yaml`` is the single source of truth for keys, types and defaults. ``check_config``
turns the first schema violation, and the checks a schema cannot express (folders that must exist,
unsafe names, keys that are gone), into one line that names the key and the fix, and fills the
defaults, once (rules/common.smk at parse time; jobs get that config). The typed views are frozen
dataclasses built from the checked config alone, so that stage functions take the sub-config they need
instead of reaching into nested dicts: ``train_config`` (a method's training, merging the shared
settings under the method's), ``sampling_config``, ``class_images_config``, ``edit_config``,
``evaluation_config``, ``world_config``, ``edit_bench_config`` and ``subject``. ``model_kind`` reads the
``models`` choice (hub, tiny, rehearsal, world), and ``base_model`` and ``metric_models`` turn it into the
models' paths.
The ``depends_*`` functions give each rule's ``params``: the part of the config its outputs depend on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from s2s import plan, registry
from s2s.io import PICKLE_SUFFIXES, S2SError, check_safe_name

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"
METHODS = registry.NAMES
# The models a run uses (config key `models`): the hub's (model.name_or_path and the evaluation.*
# models), tiny random ones or random ones with the study's architectures (both built by the workflow
# into results_dir/TINY_DIR or REHEARSAL_DIR), or the miniature world's (committed in world.models).
MODEL_KINDS = ("hub", "tiny", "rehearsal", "world")
# The boolean keys that `models` replaced, and the choice each one made.
GONE_MODEL_KEYS = {"tiny_models": "tiny", "rehearsal_models": "rehearsal", "world_models": "world"}
TINY_DIR = "tiny_models"
REHEARSAL_DIR = "rehearsal_models"
# Files of the rehearsal's stand-in models (s2s.rehearsal), relative to results/rehearsal_models.
REHEARSAL_FILES = {
    "sd": "sd/model_index.json",
    "clip": "clip/config.json",
    "dino": "dino/config.json",
    "fid_inception": "inception-v3-compat.safetensors",
    "imagenet_inception": "inception-v3-imagenet.safetensors",
}


def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _schema_error_line(error) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        where = f"under {key}" if key != "(top level)" else "at the top level"
        return f"config: unknown key(s) {', '.join(extra)} {where}; allowed keys: {allowed}"
    if "propertyNames" in error.schema_path:
        return (
            f"config key {key}: name {error.instance!r} is not allowed: use letters, digits, '_' and '-' "
            "(it becomes a folder under results/)"
        )
    if error.validator == "enum":
        allowed = ", ".join("null" if v is None else str(v) for v in error.validator_value)
        return f"config key {key}: {error.instance!r} is not one of: {allowed}"
    if error.validator == "pattern" and error.validator_value == "\\{\\}":
        return f"config key {key}: {error.instance!r} must contain the subject placeholder {{}}"
    if error.validator == "pattern" and "{class}" in error.validator_value:
        return f"config key {key}: {error.instance!r} must contain the placeholder {{class}}"
    if error.validator == "required":
        return f"config key {key}: {error.message}"
    return f"config key {key}: {error.message}"


def _fill_defaults(config: dict, schema: dict) -> None:
    """Fill schema defaults into objects, recursively (objects declared with default {} included)."""
    props = schema.get("properties", {})
    for name, sub in props.items():
        if name not in config and "default" in sub and name != "training":
            config[name] = copy.deepcopy(sub["default"])
        if name == "training":
            config.setdefault("training", {})
        if isinstance(config.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(config[name], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("type") == "object":
        for name, value in config.items():
            if name not in props and isinstance(value, dict):
                _fill_defaults(value, extra)


def check_config(raw: dict, base_dir: Path | str = ".") -> dict:
    """Validate a raw config dict; return a copy with defaults filled. Raises S2SError (one line)."""
    import jsonschema

    schema = load_schema()
    config = copy.deepcopy(raw or {})
    _check_gone_model_keys(config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.path)))
    if errors:
        raise S2SError(_schema_error_line(errors[0]))
    _fill_defaults(config, schema)
    base_dir = Path(base_dir)
    photo_counts = {name: config["data"]["synthetic_count"] for name in config["subjects"]}
    for name, subject in config["subjects"].items():
        check_safe_name(name, "subject name")
        if subject.get("world") is not None:
            from s2s.world.scene import CLASSES as WORLD_CLASSES

            if subject["class"] not in WORLD_CLASSES:
                raise S2SError(
                    f"config key subjects.{name}.class: {subject['class']!r} is not a class of the world "
                    f"(subjects.{name}.world is set); use one of {', '.join(WORLD_CLASSES)}"
                )
            _check_world_token(name, subject.get("token", "sks"))
        elif not subject.get("synthetic"):
            images = subject.get("images")
            if not images:
                raise S2SError(
                    f"config key subjects.{name}.images: missing; give a photo folder (or synthetic: true)"
                )
            if not (base_dir / images).is_dir():
                raise S2SError(
                    f"config key subjects.{name}.images: folder {images} does not exist "
                    f"(relative paths are taken from {base_dir.resolve()})"
                )
            photo_counts[name] = plan.check_photo_folder(
                base_dir / images,
                f"subjects.{name}.images",
                config["data"]["min_photos"],
                config["data"]["max_photos"],
            )
        class_images = subject.get("class_images")
        if class_images and not (base_dir / class_images).is_dir():
            raise S2SError(f"config key subjects.{name}.class_images: folder {class_images} does not exist")
    _check_methods(config, schema)
    _check_validation_split(config, photo_counts)
    for method in registry.METHODS.values():
        if not method.prior and config["training"].get(method.name, {}).get("with_prior_preservation"):
            raise S2SError(
                f"config key training.{method.name}.with_prior_preservation: {method.label} has no "
                "prior-preservation loss; remove the key"
            )
    model = config["model"]["name_or_path"]
    if Path(model).suffix.lower() in PICKLE_SUFFIXES:
        raise S2SError(
            f"config key model.name_or_path: {model} is a pickle weight file; only safetensors are loaded"
        )
    if config["data"]["min_photos"] > config["data"]["max_photos"]:
        raise S2SError(
            f"config key data.min_photos: {config['data']['min_photos']} is above data.max_photos "
            f"{config['data']['max_photos']}"
        )
    folders: dict[str, str] = {}
    for prompt in config["sampling"]["prompts"]:
        folder = plan.prompt_folder(prompt)
        if folder in folders:
            raise S2SError(f"config key sampling.prompts: {prompt!r} is listed twice")
        folders[folder] = prompt
    manifest = config["edits"].get("manifest")
    if manifest and not (base_dir / manifest).is_file():
        # The shipped demo manifest is found from any working directory (e.g. snakemake --directory).
        if (SCHEMA_PATH.parent.parent / manifest).is_file():
            config["edits"]["manifest"] = str(SCHEMA_PATH.parent.parent / manifest)
        else:
            raise S2SError(f"config key edits.manifest: file {manifest} does not exist")
    if config["edits"].get("manifest"):
        plan.check_manifest(
            config["edits"]["manifest"],
            list(config["methods"]),
            config["edits"].get("subject_model"),
            str(results_dir(config)),
        )
    return config


def _check_methods(config: dict, schema: dict) -> None:
    """Each name in methods is a method or a declared variant; each variant's keys are its base method's
    training keys (checked against that method's schema section)."""
    import jsonschema

    methods_schema = schema["properties"]["training"]["properties"]
    for name, block in registry.variants(config).items():
        check_safe_name(name, "variant name")
        if name in registry.METHODS:
            raise S2SError(
                f"config key variants.{name}: {name!r} is a method's own name; give the variant another"
            )
        section = methods_schema[block["method"]]
        keys = {k: v for k, v in block.items() if k not in registry.VARIANT_KEYS}
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(section).iter_errors(keys))
        base = registry.METHODS[block["method"]]
        if "with_prior_preservation" in keys and not base.prior:
            raise S2SError(
                f"config key variants.{name}.with_prior_preservation: {base.label} has no "
                "prior-preservation loss; remove the key"
            )
        if error is not None:
            line = _schema_error_line(error).replace("config key ", f"config key variants.{name}.", 1)
            raise S2SError(line.replace("at the top level", f"under variants.{name}", 1))
    for i, name in enumerate(config["methods"]):
        if name not in registry.METHODS and name not in registry.variants(config):
            declared = ", ".join(registry.variants(config)) or "none"
            raise S2SError(
                f"config key methods.{i}: {name!r} is not one of: {', '.join(registry.NAMES)}, nor a variant "
                f"declared under variants: (declared: {declared})"
            )


# ---------------------------------------------------------------- held-out photos (training.validation_split)


def held_out_count(n_photos: int, validation_split: float) -> int:
    """How many of a subject's photos ``validation_split`` holds out: the nearest whole number, halves up."""
    return math.floor(n_photos * validation_split + 0.5)


def check_held_out(n_photos: int, validation_split: float, key: str, subject_name: str) -> int:
    """The number of held-out photos; one line naming the key if the split leaves none on either side."""
    held = held_out_count(n_photos, validation_split)
    if validation_split > 0 and held == 0:
        raise S2SError(
            f"config key {key}: {validation_split:g} of subject {subject_name}'s {n_photos} photos holds out "
            f"none; set at least {1 / n_photos:.3g} to hold out one photo, or 0 to train on all of them"
        )
    if held >= n_photos:
        raise S2SError(
            f"config key {key}: {validation_split:g} of subject {subject_name}'s {n_photos} photos holds out "
            f"all of them and leaves none to train on; set at most {(n_photos - 1) / n_photos:.3g}"
        )
    return held


def _check_validation_split(config: dict, photo_counts: dict[str, int]) -> None:
    """Every trained method's split against every subject's photo count, before any job runs."""
    for method in config["methods"]:
        split = train_config(config, method).validation_split
        key = setting_key(config, method, "validation_split")
        for name, count in photo_counts.items():
            check_held_out(count, split, key, name)


def setting_key(config: dict, name: str, setting: str) -> str:
    """The config key a method's or variant's training ``setting`` is read from, as the user wrote it:
    ``variants.NAME.KEY`` where the variant sets it, else ``training.METHOD.KEY`` where the method's
    section has it (a method's own keys always: check_config fills their defaults there), else
    ``training.KEY`` (a shared key, set for every method or at its default)."""
    return _setting_keys(config, name, [setting], load_schema())[setting]


def _setting_keys(config: dict, name: str, settings, schema: dict) -> dict[str, str]:
    overrides = registry.overrides(config, name)
    method = registry.base_method(config, name)
    section = (config.get("training") or {}).get(method) or {}
    shared = schema["properties"]["training"]["default"]
    keys = {}
    for setting in settings:
        if setting in overrides:
            keys[setting] = f"variants.{name}.{setting}"
        elif setting in section or setting not in shared:
            keys[setting] = f"training.{method}.{setting}"
        else:
            keys[setting] = f"training.{setting}"
    return keys


# ---------------------------------------------------------------- typed views


@dataclass(frozen=True)
class TrainConfig:
    method: str  # the method trained (a variant's base method)
    learning_rate: float
    max_train_steps: int
    train_batch_size: int
    gradient_accumulation_steps: int
    scale_lr: bool
    lr_scheduler: str
    lr_warmup_steps: int
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    adam_epsilon: float
    use_8bit_adam: bool
    max_grad_norm: float
    mixed_precision: str
    gradient_checkpointing: bool
    cache_latents: bool
    with_prior_preservation: bool
    prior_loss_weight: float
    checkpointing_steps: int
    checkpoints_total_limit: int
    validation_prompt: str | None
    validation_steps: int
    seed: int
    validation_inference_steps: int
    num_processes: int
    keep_checkpoints: bool
    # loss options (every method)
    snr_gamma: float | None
    noise_offset: float
    validation_split: float
    # Method-specific: the method's own from its section; another method's stay at these values, which
    # that method never reads (they are part of its params, so they stay as they are).
    num_vectors: int = 1
    initializer_token: str | None = None
    prompt_templates: str | None = None
    random_flip: bool = False
    train_text_encoder: bool = False
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    use_dora: bool = False
    text_encoder_lr: float | None = None
    train_text_encoder_ti_frac: float = 1.0
    freeze_model: str = "crossattn_kv"
    # the name the run trains under (its results folder): the method's own, or a variant's
    name: str = ""
    # setting -> the config key it was read from (setting_key), for error messages; no training setting
    keys: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def run_name(self) -> str:
        return self.name or self.method

    @property
    def section(self) -> str:
        """Where a change of this run's training settings goes: variants.NAME (a variant) or
        training.METHOD."""
        if self.run_name != self.method:
            return f"variants.{self.run_name}"
        return f"training.{self.method}"

    def key(self, setting: str) -> str:
        """The config key ``setting`` was read from, as the user wrote it (``setting_key``); for a
        TrainConfig not made by ``train_config``, the run's own section."""
        return self.keys.get(setting) or f"{self.section}.{setting}"


@dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    token: str
    images: str | None
    synthetic: bool
    class_images: str | None
    world: int | None = None  # an individual of the miniature world, rendered as the photos

    @property
    def drawn(self) -> bool:
        """Photos drawn by the workflow (the toy, or a world individual) rather than read from a folder."""
        return self.synthetic or self.world is not None

    @property
    def phrase(self) -> str:
        """The subject phrase that replaces {} in prompts, e.g. 'sks dog'."""
        return f"{self.token} {self.class_noun}"


@dataclass(frozen=True)
class SamplingConfig:
    """sampling.*: the evaluation prompts' images."""

    prompts: list[str]
    seeds: list[int]
    num_inference_steps: int
    guidance_scale: float
    scheduler: str
    include_base: bool
    jobs: str
    batch_size: int


@dataclass(frozen=True)
class ClassImagesConfig:
    """class_images.*: the class images of prior preservation, generated by the base model."""

    num_class_images: int
    batch_size: int
    num_inference_steps: int
    guidance_scale: float


@dataclass(frozen=True)
class EditConfig:
    """edits.*: the Prompt-to-Prompt edit stage's defaults (a manifest row's params override the P2P ones),
    and the CLIP and DINO-like ViT of its metrics (the `models` choice's, or evaluation.clip_model and
    evaluation.dino_model)."""

    manifest: str | None
    subject_model: str | None  # None: the only trained model (a batch run outside the workflow)
    inversion: str
    num_inference_steps: int
    guidance_scale: float
    null_text_inner_steps: int
    cross_replace_steps: float
    self_replace_steps: float
    blend_threshold: float
    start_blend: float
    clip_model: str | None
    dino_model: str | None  # the ViT of the edits' structure distance (s2s.edit.photo_metrics)

    @property
    def spec(self) -> dict:
        """The P2P parameters of a controller spec (s2s.edit.controllers), as a row's params name them."""
        return {
            "cross_replace_steps": self.cross_replace_steps,
            "self_replace_steps": self.self_replace_steps,
            "threshold": self.blend_threshold,
            "start_blend": self.start_blend,
        }


@dataclass(frozen=True)
class EvaluationConfig:
    """evaluation.*, with the metric models of the `models` choice (metric_models)."""

    clip_model: str
    dino_model: str | None
    feature_extractor: str
    study_feature_extractor: str
    study_n_images: int
    reference_images: str | None
    n_boot: int
    compare_published: bool


@dataclass(frozen=True)
class WorldConfig:
    """world.*: the miniature world's build and its check."""

    models: str
    build_settings: str
    check_prompts: str
    check_seeds: int
    check_inference_steps: int
    check_guidance_scale: float
    report_check: bool  # the check's page in the report (planned by s2s.plan.report_targets)


@dataclass(frozen=True)
class EditBenchConfig:
    """edit_bench.*: the world edit benchmark (s2s.world_studies.edit_bench)."""

    cases: int
    seed: int
    methods: list[str]
    edit_types: list[str]
    num_inference_steps: int
    guidance_scale: float
    null_text_inner_steps: int
    null_text_sources: int | None  # None: null-text inversion on every source
    blend_threshold: float
    subject_model: str  # the trained model of the subject edits (a method), or base
    n_boot: int
    jobs: int


def _section(cls, values: dict):
    """A typed section: every field read from the checked config (check_config filled the schema's
    defaults: a missing key here is a config that was not checked)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})


def sampling_config(config: dict) -> SamplingConfig:
    return _section(SamplingConfig, config["sampling"])


def class_images_config(config: dict) -> ClassImagesConfig:
    return _section(ClassImagesConfig, config["class_images"])


def edit_config(config: dict) -> EditConfig:
    models = metric_models(config)
    return _section(
        EditConfig,
        {**config["edits"], "clip_model": models["clip_model"], "dino_model": models["dino_model"]},
    )


def evaluation_config(config: dict) -> EvaluationConfig:
    return _section(EvaluationConfig, {**config["evaluation"], **metric_models(config)})


def world_config(config: dict) -> WorldConfig:
    return _section(WorldConfig, config["world"])


def edit_bench_config(config: dict) -> EditBenchConfig:
    return _section(EditBenchConfig, config["edit_bench"])


def schema_defaults(section: str) -> dict:
    """The schema's default of every key of a top-level section (``edits``: P2P's defaults, for callers of
    s2s.edit.controllers outside the workflow)."""
    properties = load_schema()["properties"][section]["properties"]
    return {key: value["default"] for key, value in properties.items() if "default" in value}


def train_config(config: dict, name: str) -> TrainConfig:
    """The training settings of a method or variant from the checked config: the schema's shared defaults
    (the training object's default, which check_config leaves out of the config so that a method section
    overrides only what it sets) < training.KEY < training.METHOD.KEY (its own defaults filled by
    check_config) < variants.NAME.KEY."""
    method = registry.base_method(config, name)
    schema = load_schema()
    training = config.get("training", {})
    merged: dict[str, Any] = dict(schema["properties"]["training"]["default"])
    merged.update({k: v for k, v in training.items() if k not in METHODS})
    merged.update(training.get(method, {}))  # its own defaults filled by check_config
    merged.update(registry.overrides(config, name))
    if not registry.METHODS[method].prior:
        merged["with_prior_preservation"] = False
    if "target_modules" in merged:
        merged["target_modules"] = tuple(merged["target_modules"])
    known = {f.name for f in fields(TrainConfig)} - {"keys"}
    settings = {k: v for k, v in merged.items() if k in known}
    keys = _setting_keys(config, name, settings, schema)
    return TrainConfig(method=method, name=name, keys=keys, **settings)


def subject(config: dict, name: str) -> Subject:
    raw = config["subjects"][name]
    return Subject(
        name=name,
        class_noun=raw["class"],
        token=raw.get("token", "sks"),
        images=raw.get("images"),
        synthetic=bool(raw.get("synthetic", False)),
        class_images=raw.get("class_images"),
        world=raw.get("world"),
    )


def results_dir(config: dict) -> Path:
    return Path(config.get("results_dir", "results"))


def _check_gone_model_keys(config: dict) -> None:
    """An old config's tiny_models / rehearsal_models / world_models: one line naming `models`."""
    for key, kind in GONE_MODEL_KEYS.items():
        if key in config:
            fix = f"write 'models: {kind}'" if config[key] else "remove it ('models: hub' is the default)"
            raise S2SError(f"config key {key!r} is gone: {fix}")


def model_kind(config: dict) -> str:
    """The run's models, config key `models`: hub (the default), tiny, rehearsal or world. The one place
    that reads the choice: everything that depends on it asks here."""
    _check_gone_model_keys(config)
    kind = config.get("models", "hub")
    if kind not in MODEL_KINDS:
        raise S2SError(f"config key models: {kind!r} is not one of: {', '.join(MODEL_KINDS)}")
    return kind


def models_dir(config: dict) -> Path | None:
    """The folder of the run's models (None for the hub's, which are named one by one)."""
    return {
        "hub": None,
        "tiny": results_dir(config) / TINY_DIR,
        "rehearsal": results_dir(config) / REHEARSAL_DIR,
        "world": world_dir(config),
    }[model_kind(config)]


def base_model(config: dict) -> str:
    """The base model's hub id or folder (model.name_or_path, or the `models` choice's sd/ folder)."""
    folder = models_dir(config)
    return config["model"]["name_or_path"] if folder is None else str(folder / "sd")


def _check_world_token(name: str, token: str) -> None:
    """A world subject's token must be a held-out identifier: any other word of the world either names
    an individual of pretraining or means something (a colour, a class), and would not be a rare token."""
    from s2s.world.names import IDENTIFIERS

    if token not in IDENTIFIERS:
        raise S2SError(
            f"config key subjects.{name}.token: {token!r} is not one of the world's held-out identifiers "
            f"({', '.join(IDENTIFIERS)}); a world subject's token must be one of them (s2s/world/names.py)"
        )


def world_dir(config: dict) -> Path:
    """world.models: relative to the working directory, else to the workflow's folder (the committed
    build, also under `snakemake --directory`)."""
    path = Path(config.get("world", {}).get("models", "models/world"))
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[1] / path


METRIC_MODEL_KEYS = ("clip_model", "dino_model", "feature_extractor", "study_feature_extractor")
# The metric models of each `models` choice but hub, relative to its folder (models_dir).
METRIC_MODEL_FILES = {
    "tiny": {
        "clip_model": "clip",
        "dino_model": "dino",
        "feature_extractor": "inception_like.safetensors",
        "study_feature_extractor": "inception_like.safetensors",
    },
    "rehearsal": {
        "clip_model": "clip",
        "dino_model": "dino",
        "feature_extractor": REHEARSAL_FILES["fid_inception"],
        "study_feature_extractor": REHEARSAL_FILES["imagenet_inception"],
    },
    "world": {
        "clip_model": "clip",
        "dino_model": "identity",
        "feature_extractor": "classifier.safetensors",
        "study_feature_extractor": "classifier.safetensors",
    },
}


def metric_models(config: dict) -> dict[str, str | None]:
    """CLIP, DINO and the two feature networks: the evaluation.* keys for hub models, else the `models`
    choice's own."""
    folder = models_dir(config)
    if folder is None:
        return {key: config["evaluation"][key] for key in METRIC_MODEL_KEYS}
    return {key: str(folder / name) for key, name in METRIC_MODEL_FILES[model_kind(config)].items()}


def prompt_ids(config: dict) -> list[str]:
    """The prompts' sample folders, in config order (derived from each prompt's text)."""
    return list(prompts_by_id(config))


def prompts_by_id(config: dict) -> dict[str, str]:
    """Sample folder -> prompt template ({} = the subject phrase)."""
    return {plan.prompt_folder(p): p for p in config["sampling"]["prompts"]}


def sample_methods(config: dict) -> list[str]:
    return (["base"] if config["sampling"]["include_base"] else []) + list(config["methods"])


def config_hash(config: dict) -> str:
    config = {
        **config,
        **{section: _as_before(config, section) for section in KEYS_ADDED if section in config},
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Keys added after results existed (issue 24), by section: left out of params (an edit's) and of the
# config's hash (the table's provenance) at their schema default, so that results made before the keys
# (which used that same value, or did not have the page) stay up to date; any other value counts.
KEYS_ADDED = {"edits": ("blend_threshold", "start_blend"), "world": ("report_check",)}


def _as_before(config: dict, section: str) -> dict:
    added = schema_defaults(section)
    keys = KEYS_ADDED[section]
    return {k: v for k, v in config[section].items() if not (k in keys and v == added[k])}


# ---------------------------------------------------------------- what each rule depends on
#
# Each rule's params carry exactly the part of the config its outputs depend on (as one canonical JSON
# string), so Snakemake's params rerun trigger re-runs the jobs a changed key affects and, through
# their updated outputs, their descendants. Keys that change no output are left out on purpose: device
# (the same model on another device), checkpointing and validation (logs and checkpoints, not the
# model), batch sizes of inference (results equal up to float noise) and prompt_chunk_size.

# TrainConfig fields that only decide when something is saved or shown, or how the same computation is
# carried out (gradient checkpointing recomputes the same activations; cached latents are the same
# posterior draws). A change re-runs no training job (params) and keeps a checkpoint valid (the loop's
# settings hash); every other field, and any field added later, counts.
NOT_TRAINING_SETTINGS = frozenset(
    {
        "checkpointing_steps",
        "checkpoints_total_limit",
        "keep_checkpoints",
        "validation_prompt",
        "validation_steps",
        "validation_inference_steps",
        "gradient_checkpointing",
        "cache_latents",
        # the run's name (a variant's): it names the results folder, not what is learned
        "name",
        # where each setting was written in the config (for messages)
        "keys",
    }
)
# TrainConfig fields added after models were trained (issue 22's methods and options): left out while at
# their default, so that adding them re-ran no training job and kept every checkpoint valid.
SETTINGS_ADDED_WITH_DEFAULTS = ("use_dora", "text_encoder_lr", "freeze_model", "train_text_encoder_ti_frac")


def training_settings_of(tcfg: TrainConfig) -> dict:
    """The fields of a TrainConfig that determine what it learns (its params, its checkpoints' settings)."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in SETTINGS_ADDED_WITH_DEFAULTS}
    return {
        k: v
        for k, v in asdict(tcfg).items()
        if k not in NOT_TRAINING_SETTINGS and not (k in defaults and v == defaults[k])
    }


def _precision(config: dict) -> str:
    return config["training"].get("mixed_precision", "no")


def _base(config: dict) -> dict:
    return {"base_model": base_model(config), "resolution": config["model"]["resolution"]}


def depends_tiny_models(config: dict) -> str:
    return plan.stable({"seed": config["seed"], "resolution": config["model"]["resolution"]})


def depends_synthetic_subject(config: dict, subject_name: str) -> str:
    who = subject(config, subject_name)
    return plan.stable(
        {
            "seed": config["seed"],
            "count": config["data"]["synthetic_count"],
            "resolution": config["model"]["resolution"],
            **({"world": who.world, "class": who.class_noun} if who.world is not None else {}),
        }
    )


def depends_instance(config: dict) -> str:
    data = config["data"]
    return plan.stable({"resolution": config["model"]["resolution"], "small_images": data["small_images"]})


def depends_class_priors(config: dict, subject_name: str) -> str:
    who = subject(config, subject_name)
    return plan.stable(
        {
            **_base(config),
            "class_images": {k: v for k, v in config["class_images"].items() if k != "batch_size"},
            "class_prompt": config["class_prompt"].replace("{class}", who.class_noun),
            "folder": who.class_images,
            "small_images": config["data"]["small_images"],
            "seed": config["seed"],
            "precision": _precision(config),
        }
    )


def depends_training(config: dict, method: str, subject_name: str) -> str:
    who = subject(config, subject_name)
    tcfg = training_settings_of(train_config(config, method))
    return plan.stable(
        {
            **_base(config),
            "training": tcfg,
            "instance_prompt": config["instance_prompt"].replace("{}", who.phrase),
            "class_prompt": config["class_prompt"].replace("{class}", who.class_noun),
            "token": who.token,
            "class": who.class_noun,
        }
    )


def depends_sampling(config: dict, prompt: str, subject_name: str) -> str:
    sampling = config["sampling"]
    return plan.stable(
        {
            **_base(config),
            "prompt": prompt.replace("{}", subject(config, subject_name).phrase),
            **{k: sampling[k] for k in ("seeds", "num_inference_steps", "guidance_scale", "scheduler")},
            "precision": _precision(config),
        }
    )


def depends_evaluation(config: dict) -> str:
    return plan.stable(
        {
            "evaluation": {k: v for k, v in config["evaluation"].items() if k != "compare_published"},
            "metric_models": metric_models(config),
            "seed": config["seed"],
        }
    )


def depends_edit(config: dict, row: dict) -> str:
    return plan.stable(
        {
            **_base(config),
            "row": row,
            "defaults": {k: v for k, v in _as_before(config, "edits").items() if k != "manifest"},
            "clip_model": metric_models(config)["clip_model"],
            "dino_model": metric_models(config)["dino_model"],
            "seed": config["seed"],
            "precision": _precision(config),
        }
    )


def depends_prefetch(config: dict) -> str:
    return plan.stable({"base_model": base_model(config), **metric_models(config)})


def depends_world_check(config: dict) -> str:
    """The world check's settings (its models folder and prompts file are its inputs)."""
    keys = ("check_seeds", "check_inference_steps", "check_guidance_scale")
    return plan.stable({k: config["world"][k] for k in keys})
