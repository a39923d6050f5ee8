"""The held-out validation loss (``training.validation_split``, as kohya's ``--validation_split``).

A fraction of the subject's photos is held out of training. At every checkpoint the loop computes the
training's instance loss (the same target, min-SNR weighting and noise offset) on them, at noise and
timesteps fixed once for the run, so that the values of one run are comparable between checkpoints and
the same for the same seed: each held-out photo at each of kohya's four validation timesteps (200, 400,
600, 800 of 1000), with one posterior draw and one noise draw per pair from a generator of its own.
A training loss that falls while this one rises is the model learning the training photos rather than
the subject.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from s2s.config import TrainConfig, check_held_out
from s2s.train.loop import encode_prompt, sample_draws
from s2s.train.objective import denoising_loss, prediction_target

#: timesteps per held-out photo, evenly spaced inside (0, T), as kohya's train_network.py
NUM_TIMESTEPS = 4


def _generator(seed: int, stream: str) -> torch.Generator:
    """A generator of its own for each purpose, so that no draw of the training stream is reused. Its seed
    is 32 bits: torch's CPU generator (mt19937) keeps only the low 32 bits of any seed it is given."""
    digest = hashlib.sha256(f"{stream}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "big"))


def split_photos(
    paths: list[Path], validation_split: float, seed: int, key: str, subject_name: str
) -> tuple[list[Path], list[Path]]:
    """The photos to train on and the held-out ones (``round(n x validation_split)`` of them, chosen by the
    seed); both keep the folder's order. One line naming ``key`` if either side would be empty."""
    held = check_held_out(len(paths), validation_split, key, subject_name)
    chosen = set(torch.randperm(len(paths), generator=_generator(seed, "held-out photos"))[:held].tolist())
    train = [p for i, p in enumerate(paths) if i not in chosen]
    held_out = [p for i, p in enumerate(paths) if i in chosen]
    return train, held_out


def held_out_timesteps(num_train_timesteps: int) -> torch.Tensor:
    return torch.linspace(0, num_train_timesteps, NUM_TIMESTEPS + 2)[1:-1].round().long()


class HeldOutLoss:
    """The denoising loss on the held-out photos, at fixed draws.

    ``latent_mean`` / ``latent_std``: the VAE posterior of each held-out photo (s2s.train.loop's
    ``encode_latent_distributions``); ``prompt``: the prompt the loss conditions on (the first training
    prompt); ``text``: its embedding where the text encoder is frozen (else it is encoded at each call).
    """

    def __init__(
        self,
        latent_mean: torch.Tensor,
        latent_std: torch.Tensor,
        scaling_factor: float,
        prompt: str,
        noise_scheduler,
        cfg: TrainConfig,
        text: torch.Tensor | None = None,
    ):
        self.prompt, self.text, self.noise_scheduler = prompt, text, noise_scheduler
        self.snr_gamma, self.batch_size = cfg.snr_gamma, cfg.train_batch_size
        num_train_timesteps = noise_scheduler.config.num_train_timesteps
        steps = held_out_timesteps(num_train_timesteps)
        n_photos, shape = latent_mean.shape[0], tuple(latent_mean.shape[1:])
        # Photo-major: photo 0 at each timestep, then photo 1, ...
        photo = torch.arange(n_photos).repeat_interleave(len(steps))
        gen = _generator(cfg.seed, "held-out draws")
        eps, noise = [], []
        for _ in range(len(photo)):
            e, z, _t = sample_draws(gen, shape, num_train_timesteps, cfg.noise_offset)
            eps.append(e)
            noise.append(z)
        device = latent_mean.device
        self.timesteps = steps.repeat(n_photos).to(device)
        self.latents = (latent_mean[photo] + latent_std[photo] * torch.stack(eps).to(device)) * scaling_factor
        self.noise = torch.stack(noise).to(device)

    def __len__(self) -> int:
        return len(self.timesteps)

    @torch.no_grad()
    def __call__(self, accelerator, unet, text_encoder, tokenizer, unet_dtype) -> float:
        """The loss of the current weights (unwrapped modules), in eval mode (no dropout), under the
        training's autocast; each module's mode is restored afterwards."""
        modes = {module: module.training for module in (unet, text_encoder)}
        for module in modes:
            module.eval()
        try:
            text = self.text
            if text is None:
                text = encode_prompt(tokenizer, text_encoder, self.prompt, self.latents.device)
            noise = self.noise  # the same noise at every checkpoint
            noisy = self.noise_scheduler.add_noise(self.latents, noise, self.timesteps)
            target = prediction_target(self.noise_scheduler, self.latents, noise, self.timesteps)
            preds = []
            for start in range(0, len(self), self.batch_size):
                part = slice(start, start + self.batch_size)
                chunk = noisy[part]
                texts = text.expand(len(chunk), -1, -1)
                with accelerator.autocast():
                    pred = unet(chunk.to(unet_dtype), self.timesteps[part], texts.to(unet_dtype)).sample
                preds.append(pred.float())
            preds = torch.cat(preds)
            loss = denoising_loss(preds, target, self.timesteps, self.noise_scheduler, self.snr_gamma)
        finally:
            for module, training in modes.items():
                module.train(training)
        return loss.item()
