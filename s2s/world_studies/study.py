"""Measurements of the study that only the world allows: whether samples show what their prompt asks
(the world classifier reads class and context), and whether training drifts the class prior toward the
subject (the identity network compares "a photo of a dog" samples with the subject's photos).

Intervals are percentile bootstraps that resample prompts (all seeds of a prompt together), as the
evaluation's; the drift's resample seeds, paired between the base model and the trained one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from s2s.metrics.bootstrap import cluster_bootstrap_ci, paired_difference_ci
from s2s.world.captions import parse_prompt


def prompt_parts(prompt: str, subject_phrase: str) -> dict[str, str | None]:
    """The class, colour and context a prompt of the study asks for ("a sks dog in the snow" -> dog,
    in the snow): the subject phrase is read as its class noun."""
    token, _, noun = subject_phrase.partition(" ")
    words = [w for w in prompt.split() if w != token] if noun else prompt.split()
    return parse_prompt(" ".join(words))


def _load_uint8(paths: list[Path]) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def prompt_fidelity(
    samples: list[dict], classifier, subject_phrase: str, n_boot: int = 1000, seed: int = 0
) -> dict:
    """How often the world classifier finds the prompted class and context in ``samples`` (dicts with
    ``path`` and ``prompt``, as the evaluation's manifests), with intervals over prompts."""
    wanted = [prompt_parts(s["prompt"], subject_phrase) for s in samples]
    predicted = classifier.predict(_load_uint8([Path(s["path"]) for s in samples]))
    clusters = [s["prompt"] for s in samples]
    out: dict = {"n_images": len(samples), "n_prompts": len(set(clusters))}
    for key in ("class", "context"):
        hits = np.array([w[key] == p for w, p in zip(wanted, predicted[key])], dtype=float)
        low, high = cluster_bootstrap_ci(hits, clusters, n_boot=n_boot, seed=seed)
        out[f"{key}_rate"] = {"value": float(hits.mean()), "ci_low": low, "ci_high": high}
    out["per_image"] = [
        {"path": str(s["path"]), "prompt": s["prompt"], **{k: predicted[k][i] for k in predicted}}
        for i, s in enumerate(samples)
    ]
    return out


@torch.no_grad()
def identity_similarity(images: list, references: list, identity) -> np.ndarray:
    """Per image: mean cosine between its identity embedding (CLS token) and those of ``references``;
    ``identity`` is a ``ModelBundle`` (s2s.metrics.fidelity.load_dino) or (model, processor)."""
    model, processor = identity[0], identity[1]

    def embed(batch):
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        return torch.nn.functional.normalize(model(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)

    return (embed(images) @ embed(references).T).mean(1).numpy()


def class_drift(
    base_images: list, trained_images: list, references: list, identity, n_boot: int = 1000, seed: int = 0
) -> dict:
    """How far "a photo of a {class}" moved toward the subject: identity similarity to the subject's
    photos of the trained model's samples minus the base model's, paired by seed (same starting noise)."""
    base = identity_similarity(base_images, references, identity)
    trained = identity_similarity(trained_images, references, identity)
    keys = [(i, 0) for i in range(len(base))]  # every seed its own cluster
    result = paired_difference_ci(dict(zip(keys, trained)), dict(zip(keys, base)), n_boot=n_boot, seed=seed)
    return {"base_similarity": float(base.mean()), "trained_similarity": float(trained.mean()), **result}


LINEUP = 40  # individuals of the subject's class it is identified against (the "at least 40")


def subject_measures(
    samples: list[dict],
    subject_phrase: str,
    cls: str,
    world_id: int,
    models_dir: Path | str,
    lineup: int = LINEUP,
) -> dict:
    """The world's subject fidelity against the renderer's truth, per sample (dicts with ``path`` and
    ``prompt``): ``identification`` and ``attributes`` (``s2s.world.readout.subject_truth``), and the rate
    of each attribute over the samples whose context shows it."""
    from s2s.world.classifier import load_classifier
    from s2s.world.readout import load_readout, subject_truth
    from s2s.world.scene import CLASSES
    from s2s.world.subjects import distractors, world_subject

    models_dir = Path(models_dir)
    images = _load_uint8([Path(s["path"]) for s in samples])
    contexts = [prompt_parts(s["prompt"], subject_phrase)["context"] for s in samples]
    classifier = load_classifier(models_dir / "classifier.safetensors")
    with torch.no_grad():
        probability = classifier.head_logits(images)["class"].softmax(-1)[:, CLASSES.index(cls)].numpy()
    truth = subject_truth(
        images, contexts, world_subject(cls, world_id), distractors(cls, lineup),
        load_readout(models_dir / "readout.safetensors"), probability,
    )  # fmt: skip
    rates = {
        key.removeprefix("attribute_"): float(np.nanmean(values))
        for key, values in truth.items()
        if key.startswith("attribute_") and not np.isnan(values).all()
    }
    return {
        "identification": truth["identification"].tolist(),
        "attributes": truth["attributes"].tolist(),
        "details": {
            "lineup": lineup,
            "chance": 1 / (lineup + 1),
            "class_found": float((probability >= 0.5).mean()),
            "attribute_rates": rates,
        },
    }


def prompt_identification(
    config: dict,
    results: Path | str,
    subject_name: str,
    methods: list[str],
    seeds: list[int],
    steps: int = 25,
    prompt: str | None = None,
) -> dict:
    """Identification of the subject in each method's (and the base model's) samples of ``prompt`` (by
    default the instance prompt, "a photo of sks dog"), ``seeds`` images each from the same noise, with the
    rate and, for each method, its paired difference from the base model (seeds resampled). The samples are
    saved under ``results/SUBJECT/prompt_identification/PROMPT/METHOD/SEED.png``; ``rates`` holds each
    sample's identification by seed, for pairing with another prompt's."""
    from s2s import config as cfgmod
    from s2s.job import instance_prompt_for
    from s2s.models import load_method_pipeline
    from s2s.sample import generate, set_scheduler

    subject = cfgmod.subject(config, subject_name)
    base = cfgmod.base_model(config)
    prompt = prompt or instance_prompt_for(config, subject)
    out: dict = {"prompt": prompt, "seeds": list(seeds), "methods": {}, "rates": {}}
    for method in ["base", *methods]:
        folder = None if method == "base" else Path(results) / subject_name / "models" / method
        pipe = load_method_pipeline(base, method, folder, torch.device("cpu"), torch.float32)
        set_scheduler(pipe, "ddim")
        images = generate(pipe, prompt, list(seeds), steps, 7.5, 64, len(seeds))
        slug = re.sub(r"\W+", "_", prompt)
        folder_of = Path(results) / subject_name / "prompt_identification" / slug / method
        folder_of.mkdir(parents=True, exist_ok=True)
        samples = []
        for seed, image in zip(seeds, images):
            image.save(folder_of / f"{seed}.png")
            samples.append({"path": folder_of / f"{seed}.png", "prompt": prompt})
        measures = subject_measures(
            samples, subject.phrase, subject.class_noun, subject.world, cfgmod.world_dir(config)
        )
        out["rates"][method] = dict(zip(seeds, measures["identification"]))
        out["methods"][method] = {
            "identification": float(np.mean(measures["identification"])),
            "attributes": float(np.mean(measures["attributes"])),
            **measures["details"],
        }
    for method in methods:
        out["methods"][method]["minus_base"] = paired_difference(out["rates"][method], out["rates"]["base"])
    return out


def paired_difference(rates: dict[int, float], other: dict[int, float], n_boot: int = 1000) -> dict:
    """The mean of ``rates - other`` over the seeds both have, with its percentile-bootstrap interval
    (seeds resampled): e.g. a method against the base model on one prompt, or one method's instance prompt
    against its class prompt."""
    return paired_difference_ci(
        {(s, 0): v for s, v in rates.items()}, {(s, 0): v for s, v in other.items()}, n_boot=n_boot, seed=0
    )
