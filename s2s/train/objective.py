"""The denoising objective the training loop and the held-out loss share: the target by the scheduler's
``prediction_type`` and the mean squared error, optionally min-SNR weighted (``training.snr_gamma``).

Min-SNR weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") weights
each sample's error by min(SNR(t), gamma) expressed in the loss's own space: an epsilon error is SNR times
the x0 error, so the weight is min(SNR, gamma) / SNR; a velocity error is (SNR + 1) times it, so
min(SNR, gamma) / (SNR + 1). This is the convention of diffusers' train_text_to_image.py (fixed there in
huggingface/diffusers#6307); its dreambooth scripts still use min(SNR, gamma) / SNR + 1 for v_prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s2s.io import S2SError
from s2s.preflight import PREDICTION_TYPES


def _unknown(prediction_type: str) -> S2SError:
    return S2SError(
        f"the base model's scheduler has prediction_type {prediction_type!r}; the training loop supports "
        f"{' and '.join(PREDICTION_TYPES)}"
    )


def prediction_target(noise_scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v_prediction)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise _unknown(prediction_type)


def snr_weights(noise_scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Each sample's min-SNR loss weight, as diffusers' ``--snr_gamma``."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise _unknown(prediction_type)


def denoising_loss(model_pred, target, timesteps, noise_scheduler, snr_gamma: float | None) -> torch.Tensor:
    """The mean squared error of a batch; with ``snr_gamma`` each sample's mean error is min-SNR weighted
    before the batch mean (diffusers: ``loss.mean(dim=[1, 2, 3]) * mse_loss_weights``, then ``.mean()``)."""
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float())
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=list(range(1, per_sample.ndim)))
    return (per_sample * snr_weights(noise_scheduler, timesteps, snr_gamma)).mean()
