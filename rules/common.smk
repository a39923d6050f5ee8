import re
import sys
from pathlib import Path

from snakemake.resources import Resource
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

# Only torch-free modules: the Snakefile is read by a plain Snakemake, at every dry run and inside
# every cluster job (tests/test_parse.py checks it).
from s2s import config as s2s_config  # noqa: E402
from s2s import jobserver as s2s_jobserver  # noqa: E402
from s2s import plan as s2s_plan  # noqa: E402
from s2s import preflight as s2s_preflight  # noqa: E402
from s2s import registry as s2s_registry  # noqa: E402
from s2s.io import S2SError  # noqa: E402

# Our own check first: one line naming the key and the fix (Snakemake's validate prints the whole
# schema on error); it also checks what is knowable before any job runs (photo folders, the edit
# manifest's rows). Then Snakemake's validate, which also fills the schema's defaults.
try:
    config = s2s_config.check_config(config, base_dir=Path.cwd())
except S2SError as _error:
    sys.exit(f"s2s config error: {_error}")
validate(config, schema="../config/schema.yaml")
# Optional dependencies and offline models, before any job (torch-free).
try:
    s2s_preflight.check_optional_dependencies(
        config,
        DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method,
        workflow.basedir,
    )
    s2s_preflight.check_precision(config)
    s2s_preflight.check_prediction_type(s2s_config.base_model(config))
    s2s_preflight.check_offline_models(
        {"model.name_or_path": s2s_config.base_model(config)}
        | {f"evaluation.{k}": v for k, v in s2s_config.metric_models(config).items()}
    )
except S2SError as _error:
    sys.exit(f"s2s config error: {_error}")

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
SUBJECTS = list(config["subjects"])
METHODS = list(config["methods"])
SAMPLE_METHODS = s2s_config.sample_methods(config)
PROMPTS = s2s_config.prompts_by_id(config)
PROMPT_IDS = list(PROMPTS)
SEEDS = config["sampling"]["seeds"]
MODELS = s2s_config.model_kind(config)
WORLD_DIR = str(s2s_config.world_dir(config))
# GPU stages run one at a time locally (profiles/default limits gpu_jobs to 1) because they share the
# first GPU; a CPU run (device: cpu) has no GPU to share, so its stages run side by side.
GPU_JOBS = 0 if config["device"] == "cpu" else 1
# Jobs on the tiny and the world models are mostly start-up (imports, loading): one core each, two side
# by side, beats two cores each. Real models use both.
MODEL_THREADS = 1 if MODELS in ("tiny", "world") else 2
EDITS_ON = bool(config["edits"]["manifest"])
EDIT_PLAN = (
    s2s_plan.plan_manifest(
        config["edits"]["manifest"], config["edits"]["subject_model"], RESULTS
    )
    if EDITS_ON
    else []
)
EDIT_IDS = [row["edit_id"] for row in EDIT_PLAN]
EDIT_ROWS = {row["edit_id"]: row for row in EDIT_PLAN}
BENCHMARKS = f"{RESULTS}/benchmarks"


wildcard_constraints:
    subject="|".join(SUBJECTS),
    method="|".join(SAMPLE_METHODS),
    prompt="|".join(PROMPT_IDS),
    edit_id="|".join(map(re.escape, EDIT_IDS)) or "(?!)",


def base_model_inputs():
    """The base model's files in the DAG: the tiny and the rehearsal models are workflow outputs, the
    world's are committed files; a hub model is outside the DAG."""
    return {
        "hub": [],
        "tiny": [f"{RESULTS}/tiny_models/sd/model_index.json"],
        "rehearsal": [rehearsal_file("sd")],
        "world": [f"{WORLD_DIR}/sd/model_index.json"],
    }[MODELS]


def metric_model_inputs():
    return {
        "hub": [],
        "tiny": [
            f"{RESULTS}/tiny_models/inception_like.safetensors",
            f"{RESULTS}/tiny_models/clip/config.json",
        ],
        "rehearsal": [
            rehearsal_file(k)
            for k in ("clip", "dino", "fid_inception", "imagenet_inception")
        ],
        "world": [
            f"{WORLD_DIR}/{name}"
            for name in (
                "clip/config.json",
                "identity/config.json",
                "classifier.safetensors",
                "readout.safetensors",  # identification and attributes read
            )
        ],
    }[MODELS]


def rehearsal_file(key):
    return f"{RESULTS}/{s2s_config.REHEARSAL_DIR}/{s2s_config.REHEARSAL_FILES[key]}"


def subject_of(wildcards):
    return s2s_config.subject(config, wildcards.subject)


def subject_photos(wildcards):
    subject = subject_of(wildcards)
    return f"{RESULTS}/{subject.name}/photos" if subject.drawn else subject.images


def train_inputs(method):
    def inputs(wildcards):
        files = {
            "instance": f"{RESULTS}/{wildcards.subject}/instance",
            "base": base_model_inputs(),
        }
        if uses_prior(method):
            files["class_images"] = f"{RESULTS}/{wildcards.subject}/class_images"
        return files

    return inputs


def train_env(method):
    """8-bit Adam needs bitsandbytes: that method's training runs in the GPU environment."""
    gpu = method in s2s_preflight.methods_with_8bit_adam(config)
    return f"../{s2s_preflight.GPU_ENV}" if gpu else "../envs/s2s.yaml"


def training_depends(method):
    return lambda wildcards: s2s_config.depends_training(
        config, method, wildcards.subject
    )


def train_gpus(method):
    """GPUs of a training job: one per process (training.num_processes)."""
    return s2s_config.train_config(config, method).num_processes


def apply_profile_train_settings(method):
    """A training rule's cluster settings from a profile's set-resources and set-threads.

    Those of the stage name `train` (profiles/slurm: GPU partition, CPUs per GPU of every training
    rule), over them a variant's method's (train_METHOD), over them the rule's own (train_NAME).
    """
    settings = workflow.resource_settings
    base = s2s_registry.base_method(config, method)
    names = ["train", f"train_{base}", f"train_{method}"]
    resources, threads = {}, None
    for name in dict.fromkeys(names):
        resources.update(settings.overwrite_resources.get(name, {}))
        threads = settings.overwrite_threads.get(name, threads)
    if threads is not None:
        resources["_cores"] = threads
    train_rule = workflow.get_rule(f"train_{method}")
    for key, value in resources.items():
        is_resource = isinstance(value, Resource)
        train_rule.resources[key] = value if is_resource else Resource(key, value)


def sample_inputs(wildcards):
    files = base_model_inputs()
    if wildcards.method != "base":
        files = files + [trained_model_file(wildcards.subject, wildcards.method)]
    return files


def uses_prior(method):
    return s2s_config.train_config(config, method).with_prior_preservation


def trained_model_file(subject, method):
    """The file a method's (or variant's) training writes that the workflow tracks (s2s.registry)."""
    marker = s2s_registry.info(config, method).marker
    return f"{RESULTS}/{subject}/models/{method}/{marker}"


def sample_files(subject, method):
    return s2s_plan.sample_files(RESULTS, subject, method, PROMPT_IDS, SEEDS)


def edit_inputs(wildcards):
    """The row's photo and trained model (plus the base model)."""
    row = EDIT_ROWS[wildcards.edit_id]
    files = {"base": base_model_inputs()}
    if row["image"]:
        files["image"] = row["image"]
    if row["model"] != "base":
        files["model"] = trained_model_file(wildcards.subject, row["model"])
    return files


def edit_targets(subject):
    return s2s_plan.edit_targets(RESULTS, subject, EDIT_IDS)


def all_targets():
    targets = [
        f"{RESULTS}/table1.csv",
        f"{RESULTS}/table1.md",
        f"{RESULTS}/table1.html",
    ]
    for subject in SUBJECTS:
        targets += expand(
            f"{RESULTS}/{subject}/grids/{{method}}.png", method=SAMPLE_METHODS
        )
        targets.append(f"{RESULTS}/{subject}/loss_curves.png")
        if MODELS == "world":
            targets.append(f"{RESULTS}/{subject}/metrics/world_prompt_fidelity.json")
        if EDITS_ON:
            targets += edit_targets(subject)
    return targets + report_targets()


def world_path(key):
    """world.models / world.check_prompts: relative to the working directory, else to the
    workflow's folder (the committed build and prompts, also under `snakemake --directory`).
    """
    path = Path(config["world"][key])
    if path.is_absolute() or path.exists():
        return str(path)
    return str(Path(workflow.basedir) / path)


# ---------------------------------------------------------------- report pages (rules/report.smk)
# Their paths are planned by s2s.plan (report_*), from the config alone.


def report_subject_inputs(wildcards):
    return s2s_plan.report_subject_inputs(
        RESULTS,
        wildcards.subject,
        sample_methods=SAMPLE_METHODS,
        methods=METHODS,
        prompt_ids=PROMPT_IDS,
        seeds=SEEDS,
        edit_ids=EDIT_IDS if EDITS_ON else None,
        class_images=any(uses_prior(m) for m in METHODS),
    )


def report_subject_outputs():
    pages = s2s_plan.report_subject_pages(RESULTS, EDITS_ON)
    outputs = {
        "samples": report(
            pages["samples"],
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{subject}",
            labels={
                "subject": "{subject}",
                "page": "samples side by side, grids, photos",
            },
        ),
        "training": report(
            pages["training"],
            caption="../report/training.rst",
            category="Training and metrics",
            subcategory="{subject}",
            labels={
                "subject": "{subject}",
                "page": "loss, cost, validation, metrics per prompt",
            },
        ),
        "figures": directory(pages["figures"]),
    }
    if EDITS_ON:
        outputs["edits"] = report(
            pages["edits"],
            caption="../report/edits.rst",
            category="Edits",
            subcategory="{subject}",
            labels={"subject": "{subject}", "page": "Prompt-to-Prompt edits"},
        )
    return outputs


def report_targets():
    return s2s_plan.report_targets(
        RESULTS, SUBJECTS, EDITS_ON, config["world"]["report_check"]
    )


# ---------------------------------------------------------------- world edit benchmark (rules/edit_bench.smk)


def edit_bench_inputs(wildcards):
    # A file of the build, not its folder: the benchmark never starts a rebuild (see world_check).
    files = {"build": f"{world_path('models')}/BUILD.json"}
    subject = s2s_plan.edit_bench_subject(config)
    if subject is not None:
        files["subject_model"] = trained_model_file(
            subject, config["edit_bench"]["subject_model"]
        )
    return files
