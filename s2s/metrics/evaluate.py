"""Evaluate one method's samples: every metric with a bootstrap interval, into one JSON file.

Images are read once, each model is loaded once, and each network sees each image once; the bootstrap
works on the extracted features and per-image values. Intervals resample prompts (all seeds of a prompt
together, see ``s2s.metrics.bootstrap``); the real images stay fixed.

The study-compatible FID and IS (``study_fid``, ``study_is``) are computed as pytorch-ignite's defaults
compute them, which is how the study computed its Table 1: on the study extractor (torchvision's ImageNet
Inception-v3, 1000-class softmax), with equal numbers of generated and real images (ignite's FID refuses
unequal ones; the study compared 18 vs 18), chosen by ``study_selection``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from s2s.config import EvaluationConfig
from s2s.io import S2SError, write_json
from s2s.metrics.bootstrap import bootstrap_set_ci, cluster_bootstrap_ci, jackknife_set_ci
from s2s.metrics.features import extract_features, load_feature_extractor
from s2s.metrics.fidelity import load_clip, load_dino, subject_fidelity
from s2s.metrics.image_metrics import (
    clip_score,
    fid_from_features,
    fid_sample_size_warning,
    frechet_distance,
    is_from_logits,
    kid_from_features,
    study_fid_from_logits,
    study_is_from_logits,
)
from s2s.progress import Progress

log = logging.getLogger(__name__)

# Every model used here works at <= 518 px; shrinking multi-megapixel photos on load saves memory.
MAX_IMAGE_SIDE = 1024

DEFINITIONS = {
    "clip_score": "mean over images of 100*max(cos(CLIP image, CLIP prompt), 0) (torchmetrics CLIPScore)",
    "fid": "FID on the extractor's pooled features, all images (torchmetrics FrechetInceptionDistance)",
    "kid": "KID, polynomial kernel MMD^2 on pooled features (torchmetrics KernelInceptionDistance)",
    "inception_score": "IS on logits_unbiased (torchmetrics InceptionScore), one split, all images",
    "study_fid": "pytorch-ignite FID defaults: Frechet distance (unbiased covariances) between the "
    "1000-class softmax outputs of the study extractor, equal numbers of generated and real images",
    "study_is": "pytorch-ignite InceptionScore defaults: exp mean KL(p(y|x)||p(y)) on the study extractor's "
    "softmax outputs, one split, the study's generated images",
    "dino": "mean cosine of DINO CLS embeddings, generated vs real (DreamBooth paper)",
    "clip_i": "mean cosine of CLIP image embeddings, generated vs real (DreamBooth paper)",
    "clip_t": "mean raw cosine of CLIP prompt and image embeddings (DreamBooth paper)",
    "identification": "world only: share of samples in which the attribute read-out ranks the subject first "
    "against a line-up of other individuals of its class (s2s.world.readout; 0 where the world classifier "
    "does not find the class)",
    "attributes": "world only: per sample, the share of the subject's visible attributes that the read-out "
    "finds (body and accent colour, marking kind and place, build, head, ears, tail; 0 where the world "
    "classifier does not find the class)",
}


def load_images(paths: list[str | Path]) -> list[torch.Tensor]:
    """Read images as uint8 [3, H, W] RGB tensors (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise S2SError(f"{path}: image not found")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise S2SError(f"{path}: not a readable image ({exc})") from exc
        if max(im.size) > MAX_IMAGE_SIDE:
            im.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous())
    return out


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch on one intra-op thread for the block (the bootstrap's many tiny matrix operations).

    They gain nothing from threads, and when the CPUs are shared (parallel Snakemake jobs, each
    starting one torch thread per core) OpenMP's spinning barriers slowed them down 10-20x in tests.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_samples(samples: list[dict]) -> None:
    if not samples:
        raise S2SError("evaluate: no generated samples (the sample manifest is empty)")
    for i, sample in enumerate(samples):
        missing = {"prompt", "seed", "path"} - set(sample)
        if missing:
            raise S2SError(f"evaluate: sample {i} lacks {sorted(missing)} (each needs prompt, seed, path)")


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _entry(value: float | None, ci: tuple[float, float], n: int, key: str, **extra) -> dict:
    return {
        "value": _finite(value),
        "ci_low": _finite(ci[0]),
        "ci_high": _finite(ci[1]),
        "n": n,
        **extra,
        "definition": DEFINITIONS[key],
    }


def study_selection(samples: list[dict], n_real: int, n_images: int) -> tuple[list[int], int]:
    """The images of the study-compatible FID / IS -> (indices of generated samples, n per set).

    n = min(n_images, generated, real): ignite's FID needs equal sets. Generated: the first seed of each
    prompt (prompts in manifest order), then the second seed of each, and so on, so that n images cover
    as many prompts as possible; the real set is the first n real images (in their sorted order).
    """
    clusters = [s.get("prompt_id", s["prompt"]) for s in samples]
    rank: dict = {}
    order = []
    for i, cluster in enumerate(clusters):
        order.append((rank.get(cluster, 0), i))
        rank[cluster] = rank.get(cluster, 0) + 1
    n = min(n_images, len(samples), n_real)
    return [i for _, i in sorted(order)[:n]], n


def _per_image_metrics(
    per_image: dict[str, torch.Tensor | None], boot: dict, clusters: list
) -> dict[str, dict | None]:
    """Mean and prompt-resampled interval of each per-image metric (None where the metric was skipped)."""
    metrics: dict[str, dict | None] = {}
    for key, values in per_image.items():
        if values is None:
            metrics[key] = None
            continue
        arr = values.numpy()
        metrics[key] = _entry(float(arr.mean()), cluster_bootstrap_ci(arr, clusters, **boot), len(arr), key)
    return metrics


# IS falls with every repeated image, so a bootstrap resample (which repeats prompts) biases it low.
IS_INTERVAL = "value +- z * delete-one-prompt jackknife standard error"
JACKKNIFE_KEYS = ("inception_score", "study_is")


def _set_entry(
    key: str, value: float, of_indices: Callable[[np.ndarray], float], n: int, boot: dict, clusters: list,
    **extra,
) -> dict:  # fmt: skip
    """One set-level metric's entry: the jackknife interval for IS, the prompt bootstrap's otherwise."""
    if key in JACKKNIFE_KEYS:
        ci = jackknife_set_ci(of_indices, n, confidence=boot["confidence"], clusters=clusters)
        extra = {**extra, "interval": IS_INTERVAL}
    else:
        ci = bootstrap_set_ci(of_indices, n, clusters=clusters, **boot)
    return _entry(value, ci, n, key, **extra)


def _set_level_metrics(feats_real: dict, feats_gen: dict, boot: dict, clusters: list) -> dict[str, dict]:
    """FID, KID and IS, each with an interval over resampled prompts of the generated images."""
    pool_real, pool_gen = feats_real["pool"], feats_gen["pool"]
    unbiased_gen = feats_gen["logits_unbiased"]
    n_gen, n_real, seed = pool_gen.shape[0], pool_real.shape[0], boot["seed"]
    metrics: dict[str, dict] = {}

    def add(key: str, value: float, of_indices: Callable[[np.ndarray], float], **extra) -> None:
        metrics[key] = _set_entry(key, value, of_indices, n_gen, boot, clusters, n_generated=n_gen, **extra)

    # The point value comes from torchmetrics; resamples use the exact low-rank formula (tested equal),
    # because torchmetrics' eigendecomposition of a 2048 x 2048 matrix per resample is too slow.
    add(
        "fid",
        fid_from_features(pool_real, pool_gen),
        lambda idx: frechet_distance(pool_real, pool_gen[idx]),
        n_real=n_real,
        feature_dim=pool_gen.shape[1],
    )
    kid_mean, kid_std, subset_size, subsets = kid_from_features(pool_real, pool_gen, seed=seed)
    add(
        "kid",
        kid_mean,
        lambda idx: kid_from_features(pool_real, pool_gen[idx], seed=seed)[0],
        n_real=n_real,
        std_over_subsets=_finite(kid_std),
        subset_size=subset_size,
        subsets=subsets,
    )
    add(
        "inception_score",
        is_from_logits(unbiased_gen, seed=seed)[0],
        lambda idx: is_from_logits(unbiased_gen[idx], seed=seed)[0],
        splits=1,
    )
    return metrics


def _study_metrics(logits_real: torch.Tensor, logits_gen: torch.Tensor, boot: dict, clusters: list) -> dict:
    """The study-compatible FID and IS on the selected equal-sized sets (intervals over prompts)."""
    n = logits_gen.shape[0]
    extra = {"n_generated": n, "n_real": logits_real.shape[0], "feature_dim": logits_gen.shape[1]}

    def entry(key: str, value: float, of_indices: Callable[[np.ndarray], float]) -> dict:
        return _set_entry(key, value, of_indices, n, boot, clusters, **extra)

    return {
        "study_fid": entry(
            "study_fid",
            study_fid_from_logits(logits_real, logits_gen),
            lambda idx: study_fid_from_logits(logits_real, logits_gen[idx]),
        ),
        "study_is": entry(
            "study_is", study_is_from_logits(logits_gen), lambda idx: study_is_from_logits(logits_gen[idx])
        ),
    }


def evaluate_method(
    method: str,
    samples: list[dict],
    real_images: list[str],
    out_json: str | Path,
    settings: EvaluationConfig,
    seed: int = 0,
    confidence: float = 0.95,
    extra_per_image: dict[str, list[float]] | None = None,
    extra_details: dict | None = None,
) -> dict:
    """Compute all metrics for one method's samples and write them (atomically) to ``out_json``.

    ``samples``: dicts with prompt, seed, path of each generated image, and optionally prompt_id (the
    prompt's identity across methods, whose prompt texts differ by their subject token; by default the
    prompt text). ``real_images``: the subject's photos (the reference for DINO / CLIP-I, and the real set
    of FID / KID). ``settings`` (evaluation.*, with the `models` choice's metric models): the CLIP, DINO
    (None skips it) and feature networks, the folder of more real images added to the FID / KID real set
    only (``reference_images``), the network and set size of the study-compatible FID / IS
    (``study_feature_extractor``, ``study_n_images``) and the bootstrap's resamples. ``extra_per_image``:
    more per-image measures, one value per sample in ``samples`` order (the world's subject
    identification and attribute read-out), averaged with the same prompt-resampled intervals and paired
    in the companion table; ``extra_details`` is stored as it is under ``"extra"``.
    """
    _check_samples(samples)
    warnings: list[str] = []

    def warn(message: str) -> None:
        log.warning(message)
        warnings.append(message)

    folder = settings.reference_images
    reference_images = [str(p) for p in sorted(Path(folder).iterdir())] if folder else []
    generated = load_images([s["path"] for s in samples])
    prompts = [s["prompt"] for s in samples]
    real = load_images(real_images)
    fid_real = real + load_images(reference_images)
    n_gen, n_real, n_fid_real = len(generated), len(real), len(fid_real)
    if n_gen < 2 or n_fid_real < 2:
        raise S2SError(
            f"evaluate {method}: FID/KID/IS need at least 2 generated and 2 real images, "
            f"got {n_gen} and {n_fid_real}"
        )
    log.info(
        "evaluating %s: %d generated, %d real (+%d reference) images, %d bootstrap resamples",
        method,
        n_gen,
        n_real,
        n_fid_real - n_real,
        settings.n_boot,
    )

    # Two parts of different cost (networks, then the bootstrap): a line after each.
    progress = Progress(f"evaluating {method}", 2, log, every_s=0.0, unit="parts")
    extractor = load_feature_extractor(settings.feature_extractor)
    feats_gen = extract_features(extractor, generated)
    feats_real = extract_features(extractor, fid_real)
    study_spec = settings.study_feature_extractor
    study_extractor = (
        extractor if study_spec == settings.feature_extractor else load_feature_extractor(study_spec)
    )
    study_idx, n_study = study_selection(samples, n_fid_real, settings.study_n_images)
    if n_study < settings.study_n_images:
        warn(
            f"study FID/IS: {n_study} generated vs {n_study} real images, fewer than "
            f"evaluation.study_n_images = {settings.study_n_images} "
            f"({n_gen} generated, {n_fid_real} real available)"
        )
    if n_study < 2:
        raise S2SError(f"evaluate {method}: the study FID/IS need at least 2 images per set, got {n_study}")
    study_gen = extract_features(study_extractor, [generated[i] for i in study_idx])["logits"]
    study_real = extract_features(study_extractor, fid_real[:n_study])["logits"]
    clip = load_clip(settings.clip_model)
    dino = load_dino(settings.dino_model) if settings.dino_model else None
    if dino is None:
        warn("DINO skipped: no DINO model configured (evaluation.dino_model is null)")

    per_image = {"clip_score": clip_score(generated, prompts, clip)}
    fidelity = subject_fidelity(generated, real, prompts, clip, dino)
    per_image.update({k: fidelity[k] for k in ("clip_i", "clip_t", "dino")})
    for key, values in (extra_per_image or {}).items():
        if len(values) != n_gen:
            raise S2SError(f"evaluate {method}: {len(values)} values of {key!r} for {n_gen} samples")
        per_image[key] = torch.as_tensor(np.asarray(values, dtype=np.float64))
    progress.update()

    clusters = [s.get("prompt_id", s["prompt"]) for s in samples]
    boot = {"n_boot": settings.n_boot, "confidence": confidence, "seed": seed}
    with single_threaded_torch():
        metrics = {
            **_per_image_metrics(per_image, boot, clusters),
            **_set_level_metrics(feats_real, feats_gen, boot, clusters),
            **_study_metrics(study_real, study_gen, boot, [clusters[i] for i in study_idx]),
        }
    progress.update()

    for what, n_r, n_g, dim in (
        ("FID", n_fid_real, n_gen, feats_gen["pool"].shape[1]),
        ("study FID (softmax)", n_study, n_study, study_gen.shape[1]),
    ):
        message = fid_sample_size_warning(what, n_r, n_g, dim)
        if message:
            warn(message)

    result = {
        "method": method,
        "n_generated": n_gen,
        "n_real": n_real,
        "n_fid_real": n_fid_real,
        "metrics": metrics,
        # The DreamBooth paper's "Real Images" row: mean DINO / CLIP-I over pairs of distinct real images.
        "reference": {"dino_real": fidelity["dino_real"], "clip_i_real": fidelity["clip_i_real"]},
        "models": {
            "clip_model": settings.clip_model,
            "dino_model": settings.dino_model,
            "feature_extractor": settings.feature_extractor,
            "feature_extractor_name": extractor.name,
            "study_feature_extractor": study_spec,
            "study_feature_extractor_name": study_extractor.name,
        },
        "study_images": {
            "n": n_study,
            "generated": [str(samples[i]["path"]) for i in study_idx],
            "real": [str(p) for p in (list(real_images) + reference_images)[:n_study]],
            "selection": "first seed of each prompt in manifest order, then the second, ...; first n real",
        },
        "bootstrap": {
            **boot,
            "kind": "percentile",
            "resampled": "prompts with replacement, all seeds of a drawn prompt together (real images fixed)",
            "clusters": len(set(clusters)),
        },
        "per_image": [
            {
                "path": str(s["path"]),
                "prompt": s["prompt"],
                "prompt_id": clusters[i],
                "seed": s["seed"],
                **{k: (None if v is None else float(v[i])) for k, v in per_image.items()},
            }
            for i, s in enumerate(samples)
        ],
        "warnings": warnings,
        **({"extra": extra_details} if extra_details is not None else {}),
    }
    write_json(out_json, result)
    log.info("wrote %s", out_json)
    return result
