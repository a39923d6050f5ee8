"""Measurements of the study that only the world allows: whether samples show what their prompt asks
(the world classifier reads class and context), and whether training drifts the class prior toward the
subject (the identity network compares "a photo of a dog" samples with the subject's photos).

Intervals are percentile bootstraps that resample prompts (all seeds of a prompt together), as the
evaluation's; the drift's resample seeds, paired between the base model and the trained one.
"""

from __future__ import annotations

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
