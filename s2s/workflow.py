"""Glue between Snakemake rules and the package: one function per rule, reached through the step table.

A rule's 3-line script calls ``s2s.steps.run(snakemake, STEP)``, which sends logging to the rule's log
file and calls the function ``s2s.steps.STEPS`` names; each function below takes the ``snakemake``
object and the config and calls one stage function with typed arguments. A user-facing ``S2SError``
ends the job with its one-line message (no traceback from deep inside a library); anything else keeps
its traceback for debugging.
"""

from __future__ import annotations

import logging
from pathlib import Path

from s2s import config as cfgmod
from s2s.io import S2SError
from s2s.job import class_prompt_for, instance_prompt_for

log = logging.getLogger("s2s")


# ---------------------------------------------------------------- one function per rule


def build_tiny_models(smk, config) -> None:
    from s2s.metrics.features import build_tiny_feature_extractor
    from s2s.tiny import build_tiny_clip, build_tiny_dino, build_tiny_sd

    seed = config["seed"]
    resolution = config["model"]["resolution"]
    build_tiny_sd(Path(smk.output.sd).parent, seed=seed, resolution=resolution)
    build_tiny_clip(Path(smk.output.clip).parent, seed=seed + 10)
    build_tiny_dino(Path(smk.output.dino).parent, seed=seed + 20)
    build_tiny_feature_extractor(smk.output.features, seed=seed + 30)


def build_rehearsal_models(smk, config) -> None:
    from s2s.metrics.inception import build_random_inception
    from s2s.rehearsal import build_clip_vit_l14, build_dino_vit_s16, build_sd14_architecture

    seed = config["seed"]
    build_sd14_architecture(Path(smk.output.sd).parent, seed=seed)
    build_clip_vit_l14(Path(smk.output.clip).parent, seed=seed + 10)
    build_dino_vit_s16(Path(smk.output.dino).parent, seed=seed + 20)
    build_random_inception(smk.output.fid_inception, "inception-v3-compat", seed=seed + 30)
    build_random_inception(smk.output.imagenet_inception, "inception-v3-imagenet", seed=seed + 40)


def draw_synthetic_subject(smk, config) -> None:
    from s2s.data import draw_synthetic_subject as draw

    name = smk.wildcards.subject
    who = cfgmod.subject(config, name)
    if who.world is not None:
        from s2s.world.subjects import draw_world_subject

        draw_world_subject(
            smk.output[0], who.class_noun, who.world, config["data"]["synthetic_count"], seed=config["seed"]
        )
        return
    draw(
        smk.output[0],
        config["data"]["synthetic_count"],
        seed=config["seed"] + sum(map(ord, name)),
        resolution=config["model"]["resolution"],
    )


def prepare_instance(smk, config) -> None:
    from s2s.data import prepare_subject

    prepare_subject(
        smk.input.photos, smk.output[0], config["model"]["resolution"], config["data"]["small_images"]
    )


def class_priors(smk, config) -> None:
    from s2s.data import prepare_subject
    from s2s.sample import generate_class_images

    subject = cfgmod.subject(config, smk.wildcards.subject)
    resolution = config["model"]["resolution"]
    if subject.class_images:
        prepare_subject(subject.class_images, smk.output[0], resolution, config["data"]["small_images"])
        return
    generate_class_images(
        cfgmod.base_model(config),
        class_prompt_for(config, subject),
        cfgmod.class_images_config(config),
        smk.output[0],
        resolution,
        seed=config["seed"],
        device=config["device"],
        precision=config["training"].get("mixed_precision", "no"),
    )


def train(smk, config) -> None:
    from s2s.train.launch import train_job

    subject = cfgmod.subject(config, smk.wildcards.subject)
    method = smk.params.method
    tcfg = cfgmod.train_config(config, method)
    results = cfgmod.results_dir(config) / subject.name
    train_job(
        tcfg,
        subject,
        threads=int(smk.threads),
        base_model=cfgmod.base_model(config),
        instance_dir=smk.input.instance,
        out_dir=results / "models" / method,
        checkpoint_dir=results / "checkpoints" / method,
        validation_dir=results / "validation" / method,
        resolution=config["model"]["resolution"],
        instance_prompt=instance_prompt_for(config, subject),
        class_dir=smk.input.get("class_images"),
        class_prompt=class_prompt_for(config, subject),
        device=config["device"],
    )


def sample(smk, config) -> None:
    from s2s.sample import fill_prompt, sample_method

    subject = cfgmod.subject(config, smk.wildcards.subject)
    method = smk.wildcards.method
    sampling = cfgmod.sampling_config(config)
    by_id = cfgmod.prompts_by_id(config)
    # A per-prompt job has a prompt wildcard; a per-method job (sampling.jobs: per_method) samples all.
    pid = dict(smk.wildcards.items()).get("prompt")
    prompts = {p: fill_prompt(t, subject.phrase) for p, t in by_id.items() if pid in (None, p)}
    model_dir = None if method == "base" else cfgmod.results_dir(config) / subject.name / "models" / method
    sample_method(
        cfgmod.base_model(config),
        method,
        model_dir,
        prompts,
        sampling,
        cfgmod.results_dir(config) / subject.name / "samples" / method,
        resolution=config["model"]["resolution"],
        device=config["device"],
        precision=config["training"].get("mixed_precision", "no"),
    )


def loss_curves(smk, config) -> None:
    from s2s.plots import loss_curves as draw
    from s2s.plots import read_loss_csv

    curves = {}
    for summary in smk.input.summaries:
        folder = Path(summary).parent
        if (folder / "loss.csv").exists():
            curves[folder.name] = read_loss_csv(folder / "loss.csv")
    draw(curves, smk.output[0])


def evaluate(smk, config) -> None:
    import json

    from s2s.data import list_images
    from s2s.metrics.evaluate import evaluate_method
    from s2s.plots import image_grid

    method = smk.wildcards.method
    seeds = cfgmod.sampling_config(config).seeds
    samples_root = cfgmod.results_dir(config) / smk.wildcards.subject / "samples" / method
    samples, rows, labels = [], [], []
    for pid in cfgmod.prompt_ids(config):
        meta = json.loads((samples_root / pid / "prompt.json").read_text())
        paths = [samples_root / pid / f"{seed}.png" for seed in seeds]
        samples += [
            {"prompt": meta["prompt"], "prompt_id": pid, "seed": seed, "path": str(p)}
            for seed, p in zip(seeds, paths)
        ]
        rows.append(paths)
        labels.append(pid)
    image_grid(rows, smk.output.grid, row_labels=labels)
    world = {}
    subject = cfgmod.subject(config, smk.wildcards.subject)
    if cfgmod.model_kind(config) == "world" and subject.world is not None:
        from s2s.world_studies.study import subject_measures

        measures = subject_measures(
            samples, subject.phrase, subject.class_noun, subject.world, cfgmod.world_dir(config)
        )
        world = {
            "extra_per_image": {k: measures[k] for k in ("identification", "attributes")},
            "extra_details": {"world_subject": measures["details"]},
        }
    evaluate_method(
        method,
        samples,
        [str(p) for p in list_images(smk.input.instance)],
        smk.output.metrics,
        cfgmod.evaluation_config(config),  # with the `models` choice's metric models
        seed=config["seed"],
        **world,
    )


def table(smk, config) -> None:
    from s2s.metrics.table import PUBLISHED, make_table

    subjects = list(config["subjects"])
    sampling = cfgmod.sampling_config(config)
    metric_jsons = {}
    for path in smk.input.metrics:
        subject, method = Path(path).parent.parent.name, Path(path).stem
        metric_jsons[method if len(subjects) == 1 else f"{subject}/{method}"] = path
    provenance = {
        "run_name": config["run_name"],
        "config_hash": cfgmod.config_hash(config),
        "base_model": cfgmod.base_model(config),
        **{k: str(v) for k, v in cfgmod.metric_models(config).items()},
        "seeds": sampling.seeds,
        "subjects": subjects,
        "prompts": len(sampling.prompts),
    }
    make_table(
        metric_jsons,
        smk.output.csv,
        smk.output.md,
        smk.output.html,
        published=PUBLISHED if cfgmod.evaluation_config(config).compare_published else None,
        provenance=provenance,
        models=cfgmod.model_kind(config),
        companion=(smk.output.companion_csv, smk.output.companion_md, smk.output.companion_html)
        if hasattr(smk.output, "companion_csv")
        else None,
    )


def world_prompt_fidelity(smk, config) -> None:
    """How often the world classifier finds the prompted class and context, per sampled method."""
    import json

    from s2s.io import write_json
    from s2s.world.classifier import load_classifier
    from s2s.world_studies.study import prompt_fidelity

    subject = cfgmod.subject(config, smk.wildcards.subject)
    seeds, evaluation = cfgmod.sampling_config(config).seeds, cfgmod.evaluation_config(config)
    classifier = load_classifier(evaluation.feature_extractor)
    root = cfgmod.results_dir(config) / subject.name / "samples"
    out = {"subject_phrase": subject.phrase, "methods": {}}
    for method in cfgmod.sample_methods(config):
        samples = []
        for pid in cfgmod.prompt_ids(config):
            prompt = json.loads((root / method / pid / "prompt.json").read_text())["prompt"]
            folder = root / method / pid
            samples += [{"path": folder / f"{s}.png", "prompt": prompt} for s in seeds]
        result = prompt_fidelity(samples, classifier, subject.phrase, n_boot=evaluation.n_boot)
        out["methods"][method] = result
        log.info(
            "%s: class found in %.0f%%, context in %.0f%% of %d samples", method,
            100 * result["class_rate"]["value"], 100 * result["context_rate"]["value"], result["n_images"],
        )  # fmt: skip
    write_json(smk.output[0], out)


def draw_demo_edit_photo(smk, config) -> None:
    import random

    from s2s.data import draw_toy
    from s2s.io import save_png

    resolution = config["model"]["resolution"]
    rng = random.Random(config["seed"] + sum(map(ord, smk.wildcards.name)))
    if cfgmod.model_kind(config) == "world":
        # A world photo of what its name says ("a_brown_dog_on_the_beach"), at a seed the build never used.
        # The edit finds the scene again (s2s.edit.world_photos): its mask is the renderer's.
        from s2s.edit.world_photos import WORLD_PHOTO_SEED_OFFSET
        from s2s.world.subjects import draw_world_photo

        caption = smk.wildcards.name.replace("_", " ")
        save_png(draw_world_photo(caption, seed=config["seed"] + WORLD_PHOTO_SEED_OFFSET), smk.output[0])
        return
    save_png(draw_toy(rng, (resolution, resolution)), smk.output[0])


def edit(smk, config) -> None:
    from s2s.edit.batch import run_edit_batch
    from s2s.edit.world_photos import world_photos
    from s2s.models import pick_device, pick_dtype

    results = cfgmod.results_dir(config) / smk.wildcards.subject
    device = pick_device(config["device"])
    # One edit per job (its manifest row, edit_id filled in): a changed row re-runs only its edit.
    run_edit_batch(
        [smk.params.row],
        results / "edits",
        cfgmod.base_model(config),
        {m: results / "models" / m for m in config["methods"]},
        device,
        pick_dtype(config["training"].get("mixed_precision", "no"), device),
        cfgmod.edit_config(config),
        seed=config["seed"],
        world_photos=world_photos(config, smk.wildcards.subject),
    )


def prefetch(smk, config) -> None:
    from s2s.prefetch import prefetch as fetch

    fetch(cfgmod.base_model(config), cfgmod.metric_models(config), smk.output[0])


def build_world(smk, config) -> None:
    from s2s.world.build import build_world as build
    from s2s.world.build import load_settings

    spec = smk.params.settings
    if spec not in ("short", "full") and not Path(spec).is_file():
        raise S2SError(f"config key world.build_settings: {spec!r} is neither short, full nor a YAML file")
    try:
        settings = load_settings(spec)
    except S2SError as exc:  # an unknown setting in the YAML file (load_settings names the file)
        raise S2SError(f"config key world.build_settings: {exc}") from None
    build(smk.output[0], settings, command=f"snakemake build_world (world.build_settings: {spec})")


def world_check(smk, config) -> None:
    from s2s.world_studies.check import check_world

    world = cfgmod.world_config(config)
    check_world(
        Path(smk.input.build).parent,
        smk.input.prompts,
        smk.output[0],
        seeds=list(range(world.check_seeds)),
        num_inference_steps=world.check_inference_steps,
        guidance_scale=world.check_guidance_scale,
    )


def edit_bench(smk, config) -> None:
    from s2s.world_studies.edit_bench import run_edit_bench

    bench = cfgmod.edit_bench_config(config)
    # The config subject whose trained model makes the subject edits (None: the base model makes them).
    subject = smk.params.subject
    run_edit_bench(
        Path(smk.input.build).parent,
        smk.output.cases,
        smk.output.csv,
        smk.output.summary,
        bench,
        subject_model_dir=None
        if subject is None
        else cfgmod.results_dir(config) / subject / "models" / bench.subject_model,
    )
