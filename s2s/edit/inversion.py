"""Inverting a photograph into the starting noise that regenerates it, so it can be edited like a sample.

- ``ddim``: DDIM inversion with the source prompt at guidance 1 (diffusers' ``DDIMInverseScheduler``).
  Regenerating at guidance 7.5 with an empty unconditional prompt drifts away from the photo.
- ``null_text``: Mokady et al.'s null-text inversion: after DDIM inversion, optimise one unconditional
  ("null") embedding per step so that guided sampling follows the inversion trajectory; optimised in fp32
  whatever the pipeline's precision.
- ``negative_prompt``: Miyake et al.'s negative-prompt inversion: no optimisation; sampling uses the
  source prompt's embedding as the unconditional one, so one inversion plus one generation in all.
- ``direct``: Ju et al.'s direct inversion: the source branch is put back on the inversion trajectory
  after every step (done while editing, see ``s2s.edit.p2p``); no optimisation either.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from s2s.edit.processors import count_unet_calls
from s2s.io import S2SError
from s2s.preflight import PREDICTION_TYPES

log = logging.getLogger(__name__)

INVERSIONS = ("negative_prompt", "null_text", "ddim", "direct")


@dataclass
class Inversion:
    method: str
    prompt: str
    num_inference_steps: int
    image_latent: torch.Tensor  # the photo's latent, [1, C, h, w]
    trajectory: list[torch.Tensor]  # DDIM-inverted latents, trajectory[0] = image latent ... [-1] = noise
    null_embeddings: list[torch.Tensor] | None  # null-text: the unconditional embedding of each sampling step
    unet_calls: int
    seconds: float

    @property
    def noise(self) -> torch.Tensor:
        return self.trajectory[-1]


def model_resolution(pipe) -> int:
    """The pixel size the model was built for (512 for SD 1.x, 64 for the tiny model)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def load_image(path: Path | str, size: int) -> Image.Image:
    """An RGB photo, upright per its EXIF tag, centre-cropped to a square and resized to ``size``."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError) as exc:
        raise S2SError(f"{path}: not a readable image ({exc})") from exc
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


@torch.no_grad()
def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """The VAE latent of an image (the posterior mean, so inversion is deterministic)."""
    pixels = pipe.image_processor.preprocess(image).to(pipe._execution_device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


def _check_ddim(pipe) -> None:
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise S2SError(
            f"inversion needs a DDIMScheduler in the pipeline, not {type(pipe.scheduler).__name__}: "
            "set pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )
    # Inversion and editing step through diffusers' DDIM schedulers, which read the prediction type from
    # the config: epsilon and v_prediction models invert alike (tests/test_edit_v_prediction.py).
    prediction_type = pipe.scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise S2SError(
            f"the model's scheduler has prediction_type {prediction_type!r}; inversion and editing support "
            f"{' and '.join(PREDICTION_TYPES)}"
        )


@torch.no_grad()
def ddim_invert(pipe, image_latent: torch.Tensor, prompt_embeds: torch.Tensor, num_inference_steps: int):
    """DDIM inversion at guidance 1: the latents at each timestep, from the image latent to the noise."""
    from diffusers import DDIMInverseScheduler

    # DDIMInverseScheduler with the sampler's config steps through exactly the reversed timesteps of
    # DDIMScheduler.set_timesteps (same spacing, offset and final alpha), which inversion needs. It reads
    # the model's output as noise: see noise_estimate.
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
    inverse.set_timesteps(num_inference_steps, device=image_latent.device)
    latent = image_latent
    trajectory = [latent]
    for t in inverse.timesteps:
        output = pipe.unet(latent, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        noise_pred = noise_estimate(pipe.scheduler, output, latent, t)
        latent = inverse.step(noise_pred, t, latent, return_dict=False)[0]
        trajectory.append(latent)
    return trajectory


def noise_estimate(scheduler, output: torch.Tensor, latent: torch.Tensor, t) -> torch.Tensor:
    """The model's estimate of the noise in ``latent`` read at timestep ``t``, the one the UNet was given.

    DDIM inversion (P2P's and diffusers') evaluates the UNet at the next, noisier timestep on the current
    latent and uses its prediction as the noise of the current step: a good shortcut for the noise, which
    barely depends on the level, but not for a velocity, whose meaning does. Read as velocity at the
    current level, a v-prediction model's inversion lands 7 dB below the same denoiser's in epsilon form (the
    world model at 20 steps, tests/test_edit_v_prediction.py); converted to noise at the timestep it was
    asked about, it inverts exactly as that denoiser does."""
    if scheduler.config.prediction_type == "epsilon":
        return output
    abar = scheduler.alphas_cumprod[torch.as_tensor(t).long().cpu()].to(latent.device, latent.dtype)
    return abar.sqrt() * output + (1 - abar).sqrt() * latent  # v_prediction (checked by _check_ddim)


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    """Stop gradients into a module's weights (only the null embedding is optimised); restore the flags."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@contextlib.contextmanager
def _in_fp32(module: torch.nn.Module):
    """Run ``module`` in fp32, autocast off, and give back its tensors in their own dtypes afterwards.

    Casting in place, rather than keeping an fp32 copy, adds only the difference between the fp32 and
    the half-precision weights (+1.7 GB for SD 1.x's UNet, against +3.4 GB for a copy), and the round trip
    half -> fp32 -> half is exact, so the pipeline comes back bit for bit. A module already in fp32 is left
    as it is.
    """
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    device = tensors[0].device if tensors else torch.device("cpu")
    with torch.no_grad():
        for t in tensors:
            t.data = t.data.float()
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        with torch.no_grad():
            for t, dtype in zip(tensors, dtypes, strict=True):
                t.data = t.data.to(dtype)


def optimise_null_text(
    pipe,
    trajectory,
    cond,
    uncond,
    guidance_scale: float,
    inner_steps: int = 10,
    lr: float = 1e-2,
    epsilon: float = 1e-5,
) -> list[torch.Tensor]:
    """Null-text optimisation (Mokady et al., Alg. 1): per sampling step, Adam on the null embedding so that
    the guided DDIM step from the current latent lands on the inversion trajectory.

    The whole optimisation runs in fp32 whatever the pipeline's precision: its gradients (~1e-6..1e-7 on
    SD) underflow in fp16, and bf16's 8-bit mantissa turns them into rounding noise. The embeddings come
    back in the pipeline's dtype. Written by hand because diffusers has no null-text inversion outside
    community examples.
    """
    from diffusers import DDIMScheduler

    n = len(trajectory) - 1
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(n, device=trajectory[0].device)
    out_dtype = cond.dtype
    cond = cond.float()
    latent = trajectory[-1].float()
    nulls = []
    with _frozen(pipe.unet), _in_fp32(pipe.unet):
        for i, t in enumerate(scheduler.timesteps):
            target = trajectory[n - i - 1].float()
            with torch.no_grad():
                noise_cond = pipe.unet(latent, t, encoder_hidden_states=cond, return_dict=False)[0]
            null = uncond.detach().to(torch.float32, copy=True).requires_grad_(True)
            # The paper's code decays lr as 1 - i/100 and relaxes the early stop by 2e-5 per step over
            # 50 steps; written as fractions of the schedule so other step counts keep the same shape.
            optimizer = torch.optim.Adam([null], lr=lr * (1.0 - i / (2.0 * n)))
            threshold = epsilon + 1e-3 * i / n
            for _ in range(inner_steps):
                noise_uncond = pipe.unet(latent, t, encoder_hidden_states=null, return_dict=False)[0]
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                prev = scheduler.step(noise, t, latent, return_dict=False)[0]
                loss = F.mse_loss(prev, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if loss.item() < threshold:
                    break
            # Sampling will use the embedding in the pipeline's dtype: the trajectory goes on from that one.
            uncond = null.detach().to(out_dtype).float()
            nulls.append(uncond.to(out_dtype))
            with torch.no_grad():
                noise_uncond = pipe.unet(latent, t, encoder_hidden_states=uncond, return_dict=False)[0]
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latent = scheduler.step(noise, t, latent, return_dict=False)[0]
    return nulls


def invert(
    pipe,
    image: Image.Image,
    prompt: str,
    method: str = "negative_prompt",
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    inner_steps: int = 10,
) -> Inversion:
    """Invert ``image`` (already at the model's resolution) with its caption ``prompt``."""
    if method not in INVERSIONS:
        raise S2SError(f"unknown inversion {method!r}; use one of {', '.join(INVERSIONS)}")
    _check_ddim(pipe)
    start = time.perf_counter()
    device = pipe._execution_device
    with count_unet_calls(pipe.unet) as count:
        image_latent = encode_image(pipe, image)
        cond, uncond = pipe.encode_prompt(prompt, device, 1, True)
        trajectory = ddim_invert(pipe, image_latent, cond, num_inference_steps)
        nulls = None
        if method == "null_text":
            nulls = optimise_null_text(pipe, trajectory, cond, uncond, guidance_scale, inner_steps)
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    log.info("%s inversion of %r: %d UNet calls, %.2f s", method, prompt, count.calls, seconds)
    return Inversion(
        method, prompt, num_inference_steps, image_latent, trajectory, nulls, count.calls, seconds
    )
