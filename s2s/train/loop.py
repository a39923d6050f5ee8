"""One training loop for every method (``s2s.registry``; each a strategy in ``s2s.train.methods``).

It reads top to bottom like the diffusers training examples (encode, noise, UNet, target by
``prediction_type``, loss), with two differences that matter for cost and trust:
- frozen encoders run once: each image's latent distribution and each prompt's embedding is computed
  before the loop, and a fresh latent is drawn from the cached distribution every step (the examples
  re-encode every step);
- every random draw is a pure function of the seed and the sample's position in the data stream (which
  image, its latent draw, its noise and timestep), so an interrupted and resumed run ends with the same
  weights, and N processes with batch b train like one process with batch N*b (``num_processes``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from s2s.config import Subject, TrainConfig, training_settings_of
from s2s.data import list_images, load_prepared
from s2s.io import S2SError, atomic_dir, save_png, write_json, write_text
from s2s.memory import check_fits, training_shape
from s2s.memory import estimate as estimate_memory
from s2s.progress import Progress
from s2s.train.checkpoint import (
    delete_checkpoints,
    human_bytes,
    list_checkpoints,
    load_checkpoint,
    resumable,
    save_checkpoint,
)
from s2s.train.methods import _place, make_method
from s2s.train.objective import denoising_loss, prediction_target
from s2s.train.optimizer import make_optimizer

log = logging.getLogger(__name__)


def _pixels(paths: list[Path], resolution: int) -> torch.Tensor:
    import numpy as np

    arrays = [np.asarray(load_prepared(p, resolution), dtype=np.float32) for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


@torch.no_grad()
def encode_latent_distributions(
    vae, pixels: torch.Tensor, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of each image, computed once."""
    means, stds = [], []
    for chunk in pixels.split(batch_size):
        dist = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def encode_prompt(tokenizer, text_encoder, prompt: str | list[str], device) -> torch.Tensor:
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return text_encoder(ids)[0]


def stream_seed(seed: int, pos: int, salt: int) -> int:
    """The seed of one sample's generator: stream ``salt`` at data-stream position ``pos`` of training seed
    ``seed``.

    torch's CPU generator keeps only the low 32 bits of a seed, so the training seed must change those:
    ``seed * 2**40 + ...`` (the old form) gave every training seed the draws of seed 0. Seed 0's streams
    are unchanged (``pos * 4 + salt``); another seed shifts them by an odd multiple of the golden-ratio
    constant, which no position of a run reaches."""
    return (pos * 4 + salt + seed * 0x9E3779B1) % 2**32


def _batch_indices(seed: int, micro_index: int, batch_size: int, n: int, salt: int = 0) -> torch.Tensor:
    """Indices of one micro-batch: consecutive slices of per-epoch permutations (pure function)."""
    start = micro_index * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)
        out.append(int(torch.randperm(n, generator=gen)[offset]))
    return torch.tensor(out)


def sample_draws(
    gen: torch.Generator, shape: tuple[int, ...], num_timesteps: int, noise_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample's random draws, in this order: the latent's posterior draw, the noise, the timestep.

    With ``noise_offset`` the noise gets ``noise_offset`` times one normal draw per channel added, constant
    over the image (diffusers' ``--noise_offset``: ``noise += noise_offset * randn(b, c, 1, 1)``); it is
    drawn last, so the other draws are those of a run without it.
    """
    eps = torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    timestep = torch.randint(0, num_timesteps, (1,), generator=gen)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], 1, 1), generator=gen)
    return eps, noise, timestep


def _batch_draws(
    seed: int,
    micro_index: int,
    batch_size: int,
    shape: tuple[int, ...],
    num_timesteps: int,
    salt: int = 0,
    noise_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random draws of one micro-batch: per sample, the latent's posterior draw, the noise, the timestep.

    Each sample's draws come from a generator seeded by its position in the data stream, so they do not
    depend on how samples are split over processes, micro-batches or interrupted runs.
    """
    eps, noise, timesteps = [], [], []
    start = micro_index * batch_size
    for pos in range(start, start + batch_size):
        gen = torch.Generator().manual_seed(stream_seed(seed, pos, salt))
        draws = sample_draws(gen, shape, num_timesteps, noise_offset)
        for out, value in zip((eps, noise, timesteps), draws):
            out.append(value)
    return torch.stack(eps), torch.stack(noise), torch.cat(timesteps)


def _augment_draws(
    seed: int, micro_index: int, batch_size: int, num_prompts: int
) -> tuple[list[int], torch.Tensor]:
    """Per sample of one micro-batch: which training prompt, and whether to flip the image.

    Like ``_batch_draws`` a pure function of the sample's position, from a generator of its own (salt 2)
    so that turning templates or flips on leaves the latent, noise and timestep draws unchanged.
    """
    prompt_idx, flips = [], []
    start = micro_index * batch_size
    for pos in range(start, start + batch_size):
        gen = torch.Generator().manual_seed(stream_seed(seed, pos, 2))
        prompt_idx.append(int(torch.randint(0, num_prompts, (1,), generator=gen)))
        flips.append(bool(torch.rand(1, generator=gen) < 0.5))
    return prompt_idx, torch.tensor(flips)


def _mean_over_processes(accelerator, loss: torch.Tensor) -> float:
    """The loss of the whole (all-process) batch, for the log and loss.csv."""
    if accelerator.num_processes == 1:
        return loss.item()
    return accelerator.reduce(loss.detach().float(), reduction="mean").item()


def _check_precision(requested: str, device: torch.device, key: str = "training.mixed_precision") -> str:
    if requested == "fp16" and device.type != "cuda":
        raise S2SError(
            f"{key}: fp16 needs a CUDA GPU (this job trains on {device.type}); "
            "use bf16 (autocast works on CPU) or no"
        )
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise S2SError(f"{key}: bf16 is not supported by this GPU; use fp16")
    return requested


def _make_accelerator(mixed_precision: str, device: torch.device):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process and refuses another; a launched process trains once,
    # but a second run in one process (tests, notebooks) must be free to choose its own. The process
    # group (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")


def files_digest(paths: list[Path]) -> str:
    """A hash of the names (they set the data order) and bytes of a list of image files."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def training_settings(
    cfg: TrainConfig,
    subject: Subject,
    base_model: str,
    resolution: int,
    instance_prompt: str,
    class_prompt: str | None,
    instance_paths: list[Path],
    class_paths: list[Path],
) -> dict:
    """Everything that determines what a run learns: a checkpoint is resumed only by the same."""
    settings = training_settings_of(cfg)
    settings.update(
        base_model=str(base_model),
        resolution=resolution,
        instance_prompt=instance_prompt,
        subject_token=subject.token,
        subject_class=subject.class_noun,
        instance_images=files_digest(instance_paths),
        class_prompt=class_prompt if class_paths else None,
        class_images=files_digest(class_paths) if class_paths else None,
    )
    return settings


def _weight_dtypes(trainable: dict, **modules) -> dict[str, list[str]]:
    """The dtypes the weights are stored in: trained ones, and the frozen ones of each module."""
    trained = {id(p) for p in trainable.values()}

    def names(params) -> list[str]:
        return sorted({str(p.dtype).removeprefix("torch.") for p in params})

    out = {"trained": names(trainable.values())}
    for name, module in modules.items():
        out[f"frozen_{name}"] = names(p for p in module.parameters() if id(p) not in trained)
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(
    cfg: TrainConfig,
    subject: Subject,
    base_model: str,
    instance_dir: Path | str,
    out_dir: Path | str,
    checkpoint_dir: Path | str,
    resolution: int,
    instance_prompt: str,
    class_dir: Path | str | None = None,
    class_prompt: str | None = None,
    device: str = "auto",
    validation_dir: Path | str | None = None,
    stop_after_steps: int | None = None,
) -> dict:
    """Train one method and write its model into ``out_dir`` (atomically). Returns the summary.

    ``stop_after_steps`` ends the run early without saving the model (tests use it to simulate an
    interruption after a checkpoint).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from s2s.models import check_model_source, offline_hint, pick_device
    from s2s.train.heldout import HeldOutLoss, split_photos

    started = time.perf_counter()
    out_dir, checkpoint_dir, instance_dir = Path(out_dir), Path(checkpoint_dir), Path(instance_dir)
    dev = pick_device(device)
    # Mixed precision runs wherever autocast does: bf16 on CPU too (the same half-precision code paths
    # as on a GPU), fp16 only on CUDA.
    mixed_precision = _check_precision(cfg.mixed_precision, dev, cfg.key("mixed_precision"))
    accelerator = _make_accelerator(mixed_precision, dev)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    torch.manual_seed(cfg.seed)

    # ---- load the frozen and trainable components the standard way
    check_model_source(base_model, "model.name_or_path")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(
            base_model, subfolder="text_encoder", use_safetensors=True
        )
        vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae", use_safetensors=True)
        unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", use_safetensors=True)
        noise_scheduler = DDPMScheduler.from_pretrained(base_model, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise offline_hint(base_model, "model.name_or_path", exc) from exc

    method = make_method(cfg, subject)
    method.setup(unet, text_encoder, tokenizer)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if method.trains_text:
            text_encoder.gradient_checkpointing_enable()
    # ---- memory: estimated before any weight moves to the device, and on a GPU checked against the card
    memory = estimate_memory(
        replace(
            training_shape(
                cfg, unet, vae, text_encoder, sum(p.numel() for p in method.trainable().values()),
                method.trains_text, resolution, method.uses_prior, dev.type, method.trains_unet,
            ),
            mixed_precision=mixed_precision,
        )
    )  # fmt: skip
    log.info("estimated peak memory (s2s.memory): %s", memory.describe())
    if dev.type == "cuda":
        card = accelerator.device
        name = f"{card} ({torch.cuda.get_device_name(card)})"
        check_fits(memory, torch.cuda.get_device_properties(card).total_memory, name)
    vae.requires_grad_(False)
    # Frozen parts run in the mixed-precision dtype; trained parts stay fp32 (their optimizer state too).
    _place(vae, accelerator.device, weight_dtype)
    method.place(unet, text_encoder, accelerator.device, weight_dtype)

    # ---- data: instance (and class) images, encoded once; validation_split holds some photos out
    photos = list_images(instance_dir)
    if not photos:
        raise S2SError(f"{instance_dir}: no prepared instance images; run the prepare rule first")
    instance_paths, held_out_paths = split_photos(
        photos, cfg.validation_split, cfg.seed, cfg.key("validation_split"), subject.name
    )
    use_prior = method.uses_prior
    class_paths: list[Path] = []
    if use_prior:
        if class_dir is None or not list_images(class_dir):
            raise S2SError(
                f"{cfg.key('with_prior_preservation')} is on but no class images were found "
                f"in {class_dir}; generate them (class_priors rule) or set with_prior_preservation: false"
            )
        class_paths = list_images(class_dir)
    train_prompts = method.training_prompts(instance_prompt)
    instance_pixels = _pixels(instance_paths, resolution)
    if cfg.random_flip:
        # Image i flipped is image i + n: the VAE is not flip-equivariant, so each orientation gets its
        # own (cached) posterior and flipping keeps latent caching.
        instance_pixels = torch.cat([instance_pixels, instance_pixels.flip(-1)])
    class_pixels = _pixels(class_paths, resolution) if use_prior else None
    if cfg.cache_latents:
        inst_mean, inst_std = encode_latent_distributions(vae, instance_pixels)
        if use_prior:
            cls_mean, cls_std = encode_latent_distributions(vae, class_pixels)
    text_cache: dict[str, torch.Tensor] = {}
    if not method.trains_text:
        with torch.no_grad():
            for p in dict.fromkeys(train_prompts + ([class_prompt] if use_prior else [])):
                text_cache[p] = encode_prompt(tokenizer, text_encoder, p, accelerator.device)
    held_out = None
    if held_out_paths:
        held_mean, held_std = encode_latent_distributions(vae, _pixels(held_out_paths, resolution))
        held_out = HeldOutLoss(
            held_mean, held_std, vae.config.scaling_factor, train_prompts[0], noise_scheduler, cfg,
            text=text_cache.get(train_prompts[0]),
        )  # fmt: skip

    # ---- optimizer, schedule, accelerate
    trainable = method.trainable()
    n_trainable = sum(p.numel() for p in trainable.values())
    weight_dtypes = _weight_dtypes(trainable, unet=unet, text_encoder=text_encoder, vae=vae)
    stored = ", ".join(f"{k} {'/'.join(v)}" for k, v in weight_dtypes.items() if v)
    if mixed_precision != "no":
        log.info(
            "mixed precision %s: autocast on (%s on %s); weights stored as: %s",
            mixed_precision,
            weight_dtype,
            accelerator.device.type,
            stored,
        )
    else:
        log.info("mixed precision off: autocast off; weights stored as: %s", stored)
    optimizer, lr = make_optimizer(cfg, method, accelerator.num_processes)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.max_train_steps,
    )
    unet_dtype = unet.dtype  # read before accelerate wraps it (DDP has no .dtype)
    # Every module with trained weights goes through accelerate, so that DDP all-reduces its gradients.
    trained_ids = {id(p) for p in trainable.values()}
    modules = {"unet": unet, "text_encoder": text_encoder}
    trained_names = [k for k, m in modules.items() if any(id(p) in trained_ids for p in m.parameters())]
    *prepared, optimizer = accelerator.prepare(*(modules[k] for k in trained_names), optimizer)
    modules.update(zip(trained_names, prepared))
    unet, text_encoder = modules["unet"], modules["text_encoder"]
    trained_modules = prepared

    # ---- resume, only from a checkpoint of these very settings
    settings = training_settings(
        cfg, subject, base_model, resolution, instance_prompt, class_prompt, photos, class_paths
    )
    start_step = 0
    losses: list[tuple[int, float, float]] = []
    validation_losses: dict[int, float] = {}  # step -> held-out loss, at each checkpoint
    checkpoint, stale, why = resumable(checkpoint_dir, settings)
    if stale:
        instead = "starting fresh" if checkpoint is None else f"resuming {checkpoint.name} instead"
        log.info("%s: %s; deleting %d stale checkpoint(s)", why, instead, len(stale))
        accelerator.wait_for_everyone()  # every process has read them before they go
        if accelerator.is_main_process:
            delete_checkpoints(stale)
    if checkpoint is not None:
        restored = load_checkpoint(checkpoint, trainable, optimizer, lr_scheduler, accelerator.scaler)
        start_step, losses = restored.step, restored.losses
        validation_losses = restored.validation_losses
        log.info("resuming from checkpoint %s (step %d of %d)", checkpoint, start_step, cfg.max_train_steps)
    else:
        log.info("starting %s training from scratch (%d steps)", cfg.run_name, cfg.max_train_steps)
    log.info(
        "run: method=%s instance_images=%d held_out_images=%d class_images=%d batch=%d accumulation=%d "
        "lr=%g trainable_params=%d prior=%s cache_latents=%s snr_gamma=%s noise_offset=%g device=%s "
        "precision=%s",
        cfg.method,
        len(instance_paths),
        len(held_out_paths),
        len(class_paths),
        cfg.train_batch_size,
        cfg.gradient_accumulation_steps,
        lr,
        n_trainable,
        use_prior,
        cfg.cache_latents,
        cfg.snr_gamma,
        cfg.noise_offset,
        accelerator.device,
        mixed_precision,
    )

    scaling = vae.config.scaling_factor
    num_timesteps = noise_scheduler.config.num_train_timesteps
    step_times: list[float] = []
    bs = cfg.train_batch_size
    world = accelerator.num_processes
    rank = accelerator.process_index

    latent_shape = (
        vae.config.latent_channels,
        resolution // 2 ** (len(vae.config.block_out_channels) - 1),
        resolution // 2 ** (len(vae.config.block_out_channels) - 1),
    )

    def latents_for(indices, eps, mean, std, pixels):
        if cfg.cache_latents:
            return (mean[indices] + std[indices] * eps).to(accelerator.device)
        with torch.no_grad():
            dist = vae.encode(pixels[indices].to(accelerator.device, weight_dtype)).latent_dist
            return (dist.mean + dist.std * eps.to(dist.mean)).float()

    def texts_for(prompts: list[str]) -> torch.Tensor:
        if all(p in text_cache for p in prompts):
            return torch.cat([text_cache[p] for p in prompts])
        # One text-encoder call per micro-batch (DDP expects one forward per backward).
        unique = list(dict.fromkeys(prompts))
        encoded = encode_prompt(tokenizer, text_encoder, unique, accelerator.device)
        return encoded[[unique.index(p) for p in prompts]]

    # Train mode also for a trained text encoder: transformers' gradient checkpointing acts only then.
    for module in trained_modules:
        module.train()
    # A line about every 10% of the run, at least every 5 minutes, and at the last step.
    progress = Progress(
        cfg.run_name,
        cfg.max_train_steps,
        log,
        every_s=300.0,
        every_items=max(1, cfg.max_train_steps // 10),
        first=False,
        start=start_step,
        label="step ",
    )
    for step in range(start_step, cfg.max_train_steps):
        t0 = time.perf_counter()
        step_loss = step_prior = 0.0
        for micro in range(cfg.gradient_accumulation_steps):
            micro_index = (step * cfg.gradient_accumulation_steps + micro) * world + rank
            # Dropout (LoRA dropout) draws from torch's global generator: seed it per micro-batch too.
            torch.manual_seed(stream_seed(cfg.seed, micro_index, 3))
            # 1. pick images; draw latents from their (cached) posterior
            idx = _batch_indices(cfg.seed, micro_index, bs, len(instance_paths))
            eps, noise, timesteps = _batch_draws(
                cfg.seed, micro_index, bs, latent_shape, num_timesteps, noise_offset=cfg.noise_offset
            )
            prompt_idx, flips = _augment_draws(cfg.seed, micro_index, bs, len(train_prompts))
            if cfg.random_flip:
                idx = idx + len(instance_paths) * flips
            latents = latents_for(
                idx, eps, *(inst_mean, inst_std) if cfg.cache_latents else (None, None), instance_pixels
            )
            prompts = [train_prompts[i] for i in prompt_idx]
            if use_prior:
                cidx = _batch_indices(cfg.seed, micro_index, bs, len(class_paths), salt=1)
                c_eps, c_noise, c_timesteps = _batch_draws(
                    cfg.seed, micro_index, bs, latent_shape, num_timesteps, 1, noise_offset=cfg.noise_offset
                )
                c_lat = latents_for(
                    cidx, c_eps, *(cls_mean, cls_std) if cfg.cache_latents else (None, None), class_pixels
                )
                latents = torch.cat([latents, c_lat])
                noise = torch.cat([noise, c_noise])
                timesteps = torch.cat([timesteps, c_timesteps])
                prompts += [class_prompt] * bs
            texts = texts_for(prompts)
            latents = latents * scaling
            # 2. noise (with noise_offset, offset per channel) at random timesteps
            noise = noise.to(latents)
            timesteps = timesteps.to(latents.device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            # 3. predict, and the target by prediction type (noise or velocity)
            with accelerator.autocast():
                model_pred = unet(noisy.to(unet_dtype), timesteps, texts.to(unet_dtype)).sample
            target = prediction_target(noise_scheduler, latents, noise, timesteps)
            # 4. loss: instance term (min-SNR weighted with snr_gamma), plus the weighted class
            #    prior-preservation term (not SNR-weighted, as in diffusers' train_dreambooth.py)
            if use_prior:
                pred_inst, pred_cls = model_pred.float().chunk(2)
                tgt_inst, tgt_cls = target.float().chunk(2)
                t_inst, _ = timesteps.chunk(2)
                instance_loss = denoising_loss(pred_inst, tgt_inst, t_inst, noise_scheduler, cfg.snr_gamma)
                prior_loss = F.mse_loss(pred_cls, tgt_cls)
                loss = instance_loss + cfg.prior_loss_weight * prior_loss
                step_prior += _mean_over_processes(accelerator, prior_loss) / cfg.gradient_accumulation_steps
            else:
                loss = denoising_loss(model_pred, target, timesteps, noise_scheduler, cfg.snr_gamma)
            if not torch.isfinite(loss):
                last = list_checkpoints(checkpoint_dir)
                kept = (
                    f"the last good checkpoint {last[-1]} is kept"
                    if last
                    else "no checkpoint was written yet"
                )
                raise S2SError(
                    f"training {cfg.run_name}: loss became {loss.item()} at step {step + 1}; likely cause: "
                    f"learning rate too high ({cfg.key('learning_rate')}={lr:g}) or fp16 overflow "
                    f"(try mixed_precision: bf16 or no); {kept}"
                )
            step_loss += _mean_over_processes(accelerator, loss) / cfg.gradient_accumulation_steps
            last_micro = micro == cfg.gradient_accumulation_steps - 1
            with contextlib.ExitStack() as no_sync:
                if not last_micro:
                    for module in trained_modules:
                        no_sync.enter_context(accelerator.no_sync(module))
                accelerator.backward(loss / cfg.gradient_accumulation_steps)
        # 5. one optimizer step per accumulated batch
        accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
        method.before_optimizer_step(step, optimizer)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step()
        global_step = step + 1
        step_times.append(time.perf_counter() - t0)
        losses.append((global_step, step_loss, step_prior))
        if accelerator.is_main_process:
            per_step = sum(step_times) / len(step_times)
            progress.update(
                seconds_per_item=per_step,
                loss=f"{step_loss:.4f}",
                lr=f"{lr_scheduler.get_last_lr()[0]:.2e}",
                **{"s/step": f"{per_step:.3f}"},
            )
            # The last step is checkpointed too, before validation and saving: a failure in either
            # resumes at the end instead of training again (or forever).
            if global_step % cfg.checkpointing_steps == 0 or global_step == cfg.max_train_steps:
                if held_out is not None:
                    validation_losses[global_step] = held_out(
                        accelerator,
                        accelerator.unwrap_model(unet),
                        accelerator.unwrap_model(text_encoder),
                        tokenizer,
                        unet_dtype,
                    )
                    log.info(
                        "%s: step %d, held-out loss %.4f on %d photo(s), training loss %.4f",
                        cfg.run_name,
                        global_step,
                        validation_losses[global_step],
                        len(held_out_paths),
                        step_loss,
                    )
                save_checkpoint(
                    checkpoint_dir,
                    global_step,
                    trainable,
                    optimizer,
                    lr_scheduler,
                    cfg.checkpoints_total_limit,
                    settings=settings,
                    losses=losses,
                    scaler=accelerator.scaler,
                    validation_losses=validation_losses,
                )
            if cfg.validation_prompt and global_step % cfg.validation_steps == 0:
                _validation_image(
                    accelerator,
                    cfg,
                    subject,
                    method,
                    base_model,
                    accelerator.unwrap_model(unet),
                    accelerator.unwrap_model(text_encoder),
                    tokenizer,
                    vae,
                    validation_dir or checkpoint_dir / "validation",
                    global_step,
                    resolution,
                )
        if stop_after_steps is not None and global_step >= stop_after_steps:
            log.info("stopping early after step %d (stop_after_steps)", global_step)
            return {"stopped_at": global_step}
    accelerator.wait_for_everyone()

    summary = {
        "method": cfg.method,
        "name": cfg.run_name,
        "subject": subject.name,
        "steps": cfg.max_train_steps,
        "resumed_from_step": start_step,
        "steps_this_run": cfg.max_train_steps - start_step,
        "final_loss": losses[-1][1] if losses else None,
        "mean_loss": sum(v for _, v, _ in losses) / len(losses) if losses else None,
        "wall_time_s": time.perf_counter() - started,
        "train_time_s": sum(step_times),
        "median_step_s": sorted(step_times)[len(step_times) // 2] if step_times else None,
        "steps_per_s": len(step_times) / sum(step_times) if step_times else None,
        "peak_memory_mb": _peak_memory_mb(accelerator.device),
        "memory_estimate_mb": round(memory.total / 2**20),
        "trainable_params": n_trainable,
        "learning_rate": lr,
        "with_prior_preservation": use_prior,
        "held_out_images": [p.name for p in held_out_paths],
        "final_validation_loss": validation_losses.get(cfg.max_train_steps),
        "cache_latents": cfg.cache_latents,
        "mixed_precision": mixed_precision,
        "weight_dtypes": weight_dtypes,
        "num_processes": world,
        "device": str(accelerator.device),
        "versions": versions(),
    }
    if accelerator.is_main_process:
        unwrapped_unet = accelerator.unwrap_model(unet)
        unwrapped_text = accelerator.unwrap_model(text_encoder)
        with atomic_dir(out_dir) as tmp:
            method.save(tmp, base_model, unwrapped_unet, unwrapped_text, tokenizer)
            write_json(tmp / "train_summary.json", summary)
            write_text(tmp / "loss.csv", _loss_csv(losses, None if held_out is None else validation_losses))
        log.info(
            "finished %s: %d steps, final loss %.4f, %.3f s/step median",
            cfg.run_name,
            cfg.max_train_steps,
            summary["final_loss"] or math.nan,
            summary["median_step_s"] or 0,
        )
        if not cfg.keep_checkpoints:
            _delete_checkpoints_after_save(checkpoint_dir)
    return summary


def _loss_csv(losses: list[tuple[int, float, float]], validation_losses: dict[int, float] | None) -> str:
    """Every step's loss and prior term; with validation_split, the held-out loss at each checkpoint's step
    (empty at the others)."""
    if validation_losses is None:
        return "step,loss,prior_loss\n" + "".join(f"{s},{v:.6f},{p:.6f}\n" for s, v, p in losses)
    rows = []
    for s, v, p in losses:
        held = f"{validation_losses[s]:.6f}" if s in validation_losses else ""
        rows.append(f"{s},{v:.6f},{p:.6f},{held}\n")
    return "step,loss,prior_loss,validation_loss\n" + "".join(rows)


def _delete_checkpoints_after_save(checkpoint_dir: Path) -> None:
    # Folders of a save killed half-way (atomic_dir's temporaries) go too.
    done = list_checkpoints(checkpoint_dir) + sorted(checkpoint_dir.glob(".checkpoint-*.tmp"))
    if done:
        size = delete_checkpoints(done)
        log.info(
            "deleted %d checkpoint(s) (%s) from %s: the model is written (training.keep_checkpoints: false)",
            len(done),
            human_bytes(size),
            checkpoint_dir,
        )


@torch.no_grad()
def _validation_image(
    accelerator,
    cfg,
    subject,
    method,
    base_model,
    unet,
    text_encoder,
    tokenizer,
    vae,
    folder,
    step,
    resolution,
):
    """One image of the validation prompt. Under mixed precision its parts are in different dtypes
    (frozen ones in half precision, trained ones in fp32): it runs under the training's autocast, as the
    diffusers examples do."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler.from_pretrained(base_model, subfolder="scheduler")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    prompt = method.expand_prompt(cfg.validation_prompt.replace("{}", subject.phrase))
    # Eval mode for the image (no dropout, LoRA's included), then back to each module's training mode.
    modes = {module: module.training for module in (unet, text_encoder)}
    for module in modes:
        module.eval()
    with accelerator.autocast():
        image = pipe(
            prompt,
            num_inference_steps=cfg.validation_inference_steps,
            generator=torch.Generator().manual_seed(0),
            height=resolution,
            width=resolution,
        ).images[0]
    for module, training in modes.items():
        module.train(training)
    save_png(image, Path(folder) / f"step-{step:06d}.png")


def versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "cuda": torch.version.cuda or "none",
        "host": os.uname().nodename,
    }
