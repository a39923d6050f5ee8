"""CLIP score, FID, KID, IS (torchmetrics), and the study's variants of FID and IS.

Our metrics follow torchmetrics' conventions:

- CLIP score: ``100 * max(cos(image, prompt), 0)`` per image, with a CLIP model (Hessel et al. 2021).
- FID / KID: on the extractor's pooled features (Inception-v3 pool3, 2048-d).
- IS: on the extractor's ``logits_unbiased`` (torchmetrics' default), one split by default because
  the evaluation sets here are small (torchmetrics' default of 10 splits would mean ~2 images each).

The study computed its numbers with pytorch-ignite's defaults (ignite.metrics.FID / InceptionScore
without arguments), which differ:

- network: torchvision's ImageNet Inception-v3 (1000 classes) with a softmax after ``fc``, not
  torch-fidelity's TF Inception (1008 classes); here the ``logits`` of the study extractor, softmaxed.
- ``study_fid``: the Frechet distance between the 1000-class *softmax outputs*, not the 2048-d pool
  features, with unbiased (n - 1) covariances; ignite's FID takes equal numbers of real and generated
  images. Its values are on another scale (0.03-0.1 in the study) than the usual FID.
- ``study_is``: exp of the mean KL(p(y|x) || p(y)) over the softmax outputs, one split (ignite adds
  1e-16 inside both logarithms; so does this).

Set-level metrics take features extracted once (``*_from_features``), so the bootstrap can recompute
them on resampled sets without running the networks again.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn

from s2s.metrics.features import extract_features, load_feature_extractor
from s2s.metrics.fidelity import ModelBundle, as_clip, as_features

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# CLIP score


class TensorFeaturesCLIP(nn.Module):
    """A CLIPModel whose get_image_features / get_text_features return tensors.

    torchmetrics 1.9 divides their result by its norm; transformers 5 returns a model output object
    from both (projected features in ``pooler_output``), which breaks torchmetrics' CLIPScore.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads text_config.max_position_embeddings

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return as_features(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return as_features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def torchmetrics_clip(clip: ModelBundle) -> Callable[[], tuple[nn.Module, object]]:
    """The ``model_name_or_path`` callable for torchmetrics' CLIPScore / clip_score: no second load."""
    return lambda: (TensorFeaturesCLIP(clip.model), clip.processor)


@torch.no_grad()
def clip_score(
    images: torch.Tensor | list[torch.Tensor],
    prompts: list[str],
    clip_model: str | ModelBundle,
    batch_size: int = 32,
) -> torch.Tensor:
    """Per-image CLIP score ``100 * max(cos, 0)`` of uint8 [3, H, W] images and their prompts (float64 [N]).

    torchmetrics' CLIPScore only returns the batch mean, clamped after averaging; its update function
    gives the per-pair ``100 * cos`` from one batched forward, so that is used and clamped per image.
    The mean of these values is the CLIP score of Hessel et al.; it equals CLIPScore's whenever no
    cosine is negative (always the case for real CLIP models on matching prompts).
    """
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    if len(images) != len(prompts):
        raise ValueError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
    clip = as_clip(clip_model)
    model, processor = torchmetrics_clip(clip)()
    device = next(clip.model.parameters()).device
    scores = []
    for start in range(0, len(prompts), batch_size):
        # torchmetrics runs the model on the images' device, so the images go to the model's.
        batch = [img.to(device) for img in images[start : start + batch_size]]
        raw, _ = _clip_score_update(batch, list(prompts[start : start + batch_size]), model, processor)
        scores.append(raw.double().clamp(min=0).cpu())
    return torch.cat(scores)


# ---------------------------------------------------------------------------------------------
# FID, KID, IS on precomputed features


class PrecomputedFeatures(nn.Module):
    """Identity 'feature extractor': the metric is fed features that were extracted once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_pair(real: torch.Tensor, fake: torch.Tensor, what: str) -> None:
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(
            f"{what} needs at least 2 real and 2 generated images, got {real.shape[0]} and {fake.shape[0]}"
        )


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics' FrechetInceptionDistance on pooled features [N, d] (float64 throughout)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_pair(real, fake, "FID")
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_subset_size(n_real: int, n_fake: int, requested: int = 1000) -> int:
    """torchmetrics' default subset size is 1000; it must not exceed either set."""
    return min(requested, n_real, n_fake)


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float, int, int]:
    """torchmetrics' KernelInceptionDistance -> (mean, std over subsets, subset_size, subsets) used."""
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_pair(real, fake, "KID")
    size = kid_subset_size(real.shape[0], fake.shape[0], subset_size)
    if size == real.shape[0] == fake.shape[0]:
        subsets = 1  # every subset would be the whole of both sets: one computation says it all
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    # KID draws its subsets from the global torch RNG; seed it locally so results are reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size, subsets


def is_from_logits(logits: torch.Tensor, splits: int = 1, seed: int = 0) -> tuple[float, float | None]:
    """torchmetrics' InceptionScore on logits [N, classes] -> (mean, std over splits; None for 1 split)."""
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=PrecomputedFeatures(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # IS shuffles before splitting, with the global RNG
        # With one split the std over splits is undefined (NaN); torch warns about it every call.
        warnings.filterwarnings("ignore", message=".*degrees of freedom is <= 0.*")
        mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else None)


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to x [n, d] and y [m, d] (unbiased covariances).

    ``tr sqrt(S_x S_y)`` is the sum of the singular values of ``Xc Yc^T / sqrt((n-1)(m-1))`` (Xc, Yc
    centred): the nonzero eigenvalues of ``S_x S_y`` are the squared singular values of that n x m
    matrix. This is exact, and costs O(n m d) instead of a d x d matrix square root, which matters for
    1000-d softmax outputs of a few dozen images and for bootstrap loops.
    """
    x, y = x.double(), y.double()
    _check_pair(x, y, "Frechet distance")
    n, m = x.shape[0], y.shape[0]
    xc, yc = x - x.mean(0), y - y.mean(0)
    mean_term = (x.mean(0) - y.mean(0)).square().sum()
    trace_term = xc.square().sum() / (n - 1) + yc.square().sum() / (m - 1)
    cross = torch.linalg.svdvals(xc @ yc.T).sum() / ((n - 1) * (m - 1)) ** 0.5
    return float(mean_term + trace_term - 2 * cross)


IGNITE_IS_EPS = 1e-16


def study_fid_from_logits(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> float:
    """The study's FID: Frechet distance between softmax outputs (pytorch-ignite's FID default).

    ignite takes ``tr sqrt(S1 S2)`` from ``scipy.linalg.sqrtm`` of the 1000 x 1000 product; the
    low-rank formula of ``frechet_distance`` gives the same number (tested against scipy).
    """
    return frechet_distance(real_logits.double().softmax(dim=1), fake_logits.double().softmax(dim=1))


def study_is_from_logits(logits: torch.Tensor) -> float:
    """The study's IS (pytorch-ignite): exp of the mean KL(p(y|x) || p(y)) on softmax outputs, one split."""
    p = logits.double().softmax(dim=1)
    marginal = p.mean(dim=0, keepdim=True)
    kl = (p * ((p + IGNITE_IS_EPS).log() - (marginal + IGNITE_IS_EPS).log())).sum(dim=1)
    return float(kl.mean().exp())


def fid_sample_size_warning(what: str, n_real: int, n_fake: int, dim: int) -> str | None:
    """A warning text when either set has fewer images than the feature dimension, else None."""
    if min(n_real, n_fake) >= dim:
        return None
    return (
        f"{what}: {n_fake} generated vs {n_real} real images for {dim}-d features: the covariance "
        f"estimates are rank-deficient, so the value is not meaningful at this sample size (it needs well "
        f"over {dim} images per set; it is reported for comparison with the study only)"
    )


# ---------------------------------------------------------------------------------------------
# The same metrics on images (feature extraction included)


def _extractor(extractor: nn.Module | str) -> nn.Module:
    return load_feature_extractor(extractor) if isinstance(extractor, str) else extractor


def _features(images, extractor: nn.Module | str) -> dict[str, torch.Tensor]:
    return extract_features(_extractor(extractor), images)


def _warn_size(what: str, real: torch.Tensor, fake: torch.Tensor) -> None:
    message = fid_sample_size_warning(what, real.shape[0], fake.shape[0], real.shape[1])
    if message:
        log.warning(message)


def fid(real_uint8, fake_uint8, extractor: nn.Module | str) -> float:
    """FID (torchmetrics) between two image sets on the extractor's pooled features."""
    extractor = _extractor(extractor)
    real, fake = _features(real_uint8, extractor)["pool"], _features(fake_uint8, extractor)["pool"]
    _warn_size("FID", real, fake)
    return fid_from_features(real, fake)


def kid(
    real_uint8,
    fake_uint8,
    extractor: nn.Module | str,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (torchmetrics) -> (mean, std over subsets); subset size capped at the smaller set."""
    extractor = _extractor(extractor)
    real, fake = _features(real_uint8, extractor)["pool"], _features(fake_uint8, extractor)["pool"]
    mean, std, _, _ = kid_from_features(real, fake, subsets=subsets, subset_size=subset_size, seed=seed)
    return mean, std


def inception_score(fake_uint8, extractor: nn.Module | str, splits: int = 1, seed: int = 0):
    """IS (torchmetrics, logits_unbiased) -> (mean, std over splits or None)."""
    return is_from_logits(_features(fake_uint8, extractor)["logits_unbiased"], splits=splits, seed=seed)


def study_fid(real_uint8, fake_uint8, extractor: nn.Module | str) -> float:
    """The study's FID variant: Frechet distance between the softmax outputs of generated vs real."""
    extractor = _extractor(extractor)
    real, fake = _features(real_uint8, extractor)["logits"], _features(fake_uint8, extractor)["logits"]
    _warn_size("study FID (softmax)", real, fake)
    return study_fid_from_logits(real, fake)


def study_is(fake_uint8, extractor: nn.Module | str) -> float:
    """The study's IS variant (ignite): softmax of the full logits, one split."""
    return study_is_from_logits(_features(fake_uint8, extractor)["logits"])
