"""Pretrain the world's models from a seed: VAE, CLIP (text + vision), the diffusion UNet, the world
classifier and the identity network, saved in the layouts of their real counterparts.

    python -m s2s.world.build OUT_DIR [--settings short|full|FILE.yaml]

``OUT_DIR`` gets ``sd/`` (a StableDiffusionPipeline folder whose text encoder is the world CLIP's),
``clip/`` (CLIPModel + processor), ``identity/`` (a ViT loaded like DINO), ``classifier.safetensors``,
``readout.safetensors`` (the attribute read-out, ``s2s.world.readout``) and ``BUILD.json`` (the command,
seed, settings, time per part and the sha256 of every file). Each part trains with one readable loop (AdamW,
warm-up then cosine decay) on pre-rendered scenes, under bf16 autocast where ``autocast`` is on (this CPU
has bf16 units: the VAE steps 1.8x faster); the UNet keeps an EMA copy, which is what is saved, and weighs
its loss by min-SNR. ``short`` is the recipe at a few steps, for CI; ``full`` is the committed build.

The build is resumable by part: each finished part is saved in ``OUT_DIR.parts/`` with its time and what
it was made from (``part_inputs``: its recipe version, the settings it reads, the parts and data it trains
on), and a build started again loads it instead of training it again when those match; a part whose inputs
changed is trained again, and so is every part trained on it. The folder is removed once ``OUT_DIR`` is
written.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from s2s.io import S2SError, atomic_dir, sha256_file, write_json
from s2s.progress import Progress
from s2s.world.classifier import WorldClassifier, load_classifier, save_classifier
from s2s.world.data import SceneSet, fresh_scene_set, identity_set, individuals, scene_set
from s2s.world.readout import NORMS, AttributeReadout, load_readout, save_readout
from s2s.world.scene import ATTRIBUTES
from s2s.world.tokenizer import write_world_tokenizer

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    threads: int = 2
    autocast: bool = True  # bf16 autocast on the CPU for every part's forward pass
    scenes: int = 50000  # pretraining scenes (VAE, CLIP, UNet, classifier, read-out)
    vae_channels: tuple[int, ...] = (32, 64, 128)
    vae_steps: int = 3500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    text_width: int = 128
    text_layers: int = 4
    clip_steps: int = 1600
    clip_batch: int = 128
    clip_lr: float = 1e-3
    token_loss_weight: float = 1.0  # the text states keep which word stood where (see train_clip)
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_steps: int = 3000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023); 0 turns it off
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    classifier_steps: int = 1500
    classifier_batch: int = 64
    identity_individuals: int = 600
    identity_photos: int = 12
    identity_steps: int = 2000
    identity_batch: int = 64
    readout_scenes: int = 20000  # the read-out's own scenes (fresh individuals), through the VAE
    readout_fresh: int = 32  # of each batch, renders drawn for that step (fresh individuals, no VAE)
    readout_steps: int = 6000
    readout_batch: int = 64
    readout_norm: str = "batch"  # "group" or "batch" (AttributeReadout); batch reads proportions better
    readout_spatial: int = 16  # channels of the read-out's position-by-position features (0: pooled only)
    warmup_steps: int = 200


SHORT = {
    "scenes": 400, "vae_steps": 4, "clip_steps": 4, "unet_steps": 4, "classifier_steps": 4,
    "identity_individuals": 10, "identity_photos": 2, "identity_steps": 4, "warmup_steps": 2,
    "vae_batch": 8, "clip_batch": 16, "unet_batch": 8, "classifier_batch": 16, "identity_batch": 16,
    "vae_channels": (16, 32, 64), "unet_channels": (32, 64, 64), "readout_scenes": 64, "readout_steps": 4,
    "readout_batch": 16, "readout_fresh": 8,
}  # fmt: skip  # the whole recipe at a few steps, for CI (~30 s): it keeps the recipe working

# Offsets from the build's seed of the scene streams it renders besides the pretraining scenes (offset 0):
# the identity network's individuals and their photos, and the read-out's scenes. The world check refuses
# held-out seeds that meet any of them.
IDENTITY_PEOPLE_SEED, IDENTITY_PHOTO_SEED, READOUT_SCENE_SEED = 100, 101, 102
SCENE_SEED_OFFSETS = (0, IDENTITY_PEOPLE_SEED, IDENTITY_PHOTO_SEED, READOUT_SCENE_SEED)


def load_settings(spec: str) -> BuildSettings:
    """``full``, ``short`` or a YAML file of ``BuildSettings`` fields; a file that is missing, not a mapping
    or names an unknown setting raises ``S2SError`` naming the file (the CLI prints it, the workflow
    prefixes its config key)."""
    if spec == "full":
        return BuildSettings()
    if spec == "short":
        return BuildSettings(**SHORT)
    if not Path(spec).is_file():
        raise S2SError(f"{spec}: no such settings file (the settings are short, full or a YAML file)")
    data = yaml.safe_load(Path(spec).read_text()) or {}
    if not isinstance(data, dict):
        raise S2SError(f"{spec}: build settings must be a YAML mapping of setting: value")
    known = {f.name for f in fields(BuildSettings)}
    unknown = set(data) - known
    if unknown:
        raise S2SError(f"{spec}: unknown build setting(s) {sorted(unknown)}; known: {sorted(known)}")
    tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
    settings = BuildSettings(**{**data, **tuples})
    if not 0 <= settings.readout_fresh <= settings.readout_batch:
        raise S2SError(f"{spec}: readout_fresh ({settings.readout_fresh}) must be from 0 to readout_batch")
    if settings.readout_scenes == 0 and settings.readout_fresh != settings.readout_batch:
        raise S2SError(f"{spec}: with readout_scenes 0, readout_fresh must equal readout_batch")
    if data.get("readout_norm", "batch") not in NORMS:  # known now, not after the build's first parts
        raise S2SError(f"{spec}: readout_norm {data['readout_norm']!r} must be one of {sorted(NORMS)}")
    return settings


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _pixels(images: np.ndarray, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """uint8 images -> float [-1, 1], NCHW, half of them flipped."""
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    flip = torch.rand(len(idx), generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def _autocast(s: BuildSettings):
    """bf16 autocast on the CPU where the settings ask for it (weights and optimiser stay fp32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.autocast)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """[-1, 1] images -> the processor's normalisation ((x/255 - mean) / std)."""
    x01 = (x + 1) / 2
    return (x01 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _progress(name: str, total: int) -> Progress:
    """A part's progress: a line at its first step, about every 5% of its steps, and at its last."""
    return Progress(name, total, log, every_s=None, every_items=max(1, total // 20), unit="steps")


def train_vae(data: SceneSet, s: BuildSettings):
    from diffusers import AutoencoderKL

    torch.manual_seed(s.seed)
    n = len(s.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=s.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        mid_block_add_attention=False,
    )
    optimizer = _optimizer(vae.parameters(), s.vae_lr)
    rng, gen = np.random.default_rng(s.seed), torch.Generator().manual_seed(s.seed)
    progress = _progress("vae", s.vae_steps)
    for step in range(s.vae_steps):
        _set_lr(optimizer, lr_at(step, s.vae_steps, s.vae_lr, s.warmup_steps))
        x = _pixels(data.images, rng.integers(0, len(data.images), s.vae_batch), gen)
        with _autocast(s):
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample(generator=gen)).sample.float()
        mse = F.mse_loss(reconstruction, x)
        loss = mse + 0.5 * F.l1_loss(reconstruction, x) + s.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(mse=f"{mse.item():.4f}", psnr=f"{10 * math.log10(4 / max(mse.item(), 1e-10)):.4f}")
    vae.eval().requires_grad_(False)
    # SD's convention: latents scaled to unit variance (SD v1's 0.18215 came from the same measurement).
    with torch.no_grad():
        sample = torch.from_numpy(data.images[:512]).permute(0, 3, 1, 2).float() / 127.5 - 1
        std = float(vae.encode(sample).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def train_clip(data: SceneSet, tokenizer, s: BuildSettings):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(s.seed + 1)
    w = s.text_width
    text = {
        "vocab_size": len(tokenizer), "hidden_size": w, "intermediate_size": 4 * w, "num_attention_heads": 4,
        "num_hidden_layers": s.text_layers, "max_position_embeddings": 77, "projection_dim": w,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    vision = {
        "hidden_size": w, "intermediate_size": 4 * w, "num_attention_heads": 4, "num_hidden_layers": 4,
        "image_size": 64, "patch_size": 8, "projection_dim": w,
    }  # fmt: skip
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=w))
    # SD's CLIP, trained on 400M captions, keeps each word in its own position's state, a rare word too, and
    # the UNet reads those states. A contrastive loss on 50,000 captions does not: it folds words that tell
    # images apart little (rare words, held-out identifiers) into the state of "a" (cosine 0.97 at sks's
    # position in the first rebuild), so no UNet-only method could tell "sks dog" from "a dog". A linear
    # head reading each word back from its position's state (discarded after the build) keeps them apart.
    word_head = torch.nn.Linear(w, len(tokenizer))
    ids = tokenizer(data.captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    optimizer = _optimizer([*clip.parameters(), *word_head.parameters()], s.clip_lr)
    rng, gen = np.random.default_rng(s.seed + 1), torch.Generator().manual_seed(s.seed + 1)
    progress = _progress("clip", s.clip_steps)
    for step in range(s.clip_steps):
        _set_lr(optimizer, lr_at(step, s.clip_steps, s.clip_lr, s.warmup_steps))
        idx = rng.integers(0, len(data.images), s.clip_batch)
        pixels = _normalise(_pixels(data.images, idx, gen), CLIP_MEAN, CLIP_STD)
        # Padding to the batch's longest caption instead of 77 gives the same states (the text model is
        # causal, and pools at the end-of-text token) for a fifth of the cost.
        length = int(ids.attention_mask[idx].sum(1).max())
        input_ids, mask = ids.input_ids[idx, :length], ids.attention_mask[idx, :length]
        with _autocast(s):
            out = clip(input_ids=input_ids, attention_mask=mask, pixel_values=pixels)
            word_logits = word_head(out.text_model_output.last_hidden_state)
        # Captions repeat within a batch: every image matching a caption counts as a right answer.
        same = torch.tensor(
            [[data.captions[i] == data.captions[j] for j in idx] for i in idx], dtype=torch.float
        )
        target = same / same.sum(1, keepdim=True)
        logits = out.logits_per_image.float()
        contrastive = (
            -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
        ) / 2
        words = F.cross_entropy(word_logits.float()[mask.bool()], input_ids[mask.bool()])
        loss = contrastive + s.token_loss_weight * words
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(contrastive=f"{contrastive.item():.4f}", words=f"{words.item():.4f}")
    return clip.eval().requires_grad_(False)


def text_encoder_of(clip):
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False)


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep loss weights of min-SNR-gamma for epsilon prediction, min(SNR, gamma) / SNR (Hang et
    al. 2023, as diffusers' ``--snr_gamma``): noisy timesteps keep weight 1, clean ones are damped so that
    they stop dominating the gradient. ``gamma`` 0 turns it off (all ones)."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr if gamma > 0 else torch.ones_like(snr)


def train_unet(data: SceneSet, vae, text_encoder, tokenizer, s: BuildSettings):
    import copy

    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(s.seed + 2)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=s.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    with torch.no_grad(), _autocast(s):
        means, stds = [], []  # each [2 (flip), N, 4, 16, 16] once stacked
        for flip in (False, True):
            parts = []
            for start in range(0, len(data.images), 512):
                x = torch.from_numpy(data.images[start : start + 512]).permute(0, 3, 1, 2).float() / 127.5 - 1
                parts.append(vae.encode(x.flip(-1) if flip else x).latent_dist)
            means.append(torch.cat([d.mean.float() for d in parts]))
            stds.append(torch.cat([d.std.float() for d in parts]))
        means, stds = torch.stack(means), torch.stack(stds)
        captions = sorted(set(data.captions)) + [""]
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with _autocast(s):
            embeddings = torch.cat([text_encoder(chunk)[0].float() for chunk in ids.input_ids.split(256)])
    position = {c: i for i, c in enumerate(captions)}
    caption_index = torch.tensor([position[c] for c in data.captions])
    empty = len(captions) - 1
    weight = min_snr_weights(scheduler.alphas_cumprod, s.snr_gamma)
    scale = vae.config.scaling_factor
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = _optimizer(unet.parameters(), s.unet_lr)
    rng, gen = np.random.default_rng(s.seed + 2), torch.Generator().manual_seed(s.seed + 2)
    progress = _progress("unet", s.unet_steps)
    for step in range(s.unet_steps):
        _set_lr(optimizer, lr_at(step, s.unet_steps, s.unet_lr, s.warmup_steps))
        idx = torch.from_numpy(rng.integers(0, len(data.images), s.unet_batch))
        flip = torch.randint(0, 2, (s.unet_batch,), generator=gen)
        latents = (
            means[flip, idx] + stds[flip, idx] * torch.randn(means[flip, idx].shape, generator=gen)
        ) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (s.unet_batch,), generator=gen)
        dropped = torch.rand(s.unet_batch, generator=gen) < s.caption_dropout
        cond = embeddings[torch.where(dropped, empty, caption_index[idx])]
        with _autocast(s):
            pred = unet(scheduler.add_noise(latents, noise, t), t, cond).sample.float()
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * weight[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        progress.update(loss=f"{loss.item():.4f}")
    return ema.eval()


def train_classifier(data: SceneSet, s: BuildSettings) -> WorldClassifier:
    torch.manual_seed(s.seed + 3)
    model = WorldClassifier()
    optimizer = _optimizer(model.parameters(), 2e-3)
    rng, gen = np.random.default_rng(s.seed + 3), torch.Generator().manual_seed(s.seed + 3)
    labels = {"class": data.cls, "colour": data.colour, "context": data.context}
    progress = _progress("classifier", s.classifier_steps)
    for step in range(s.classifier_steps):
        _set_lr(optimizer, lr_at(step, s.classifier_steps, 2e-3, s.warmup_steps))
        idx = rng.integers(0, len(data.images), s.classifier_batch)
        with _autocast(s):
            logits = model.head_logits(_pixels(data.images, idx, gen))
        loss = sum(F.cross_entropy(logits[k].float(), torch.from_numpy(v[idx])) for k, v in labels.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(loss=f"{loss.item():.4f}")
    return model.eval().requires_grad_(False)


def train_identity(s: BuildSettings):
    """A small ViT whose CLS embedding tells individuals apart (the DINO stand-in): normalised-softmax
    classification over training individuals, each seen in many contexts and poses."""
    from transformers import ViTConfig, ViTModel

    people = individuals(s.identity_individuals, s.seed + IDENTITY_PEOPLE_SEED)
    data = identity_set(people, s.identity_photos, s.seed + IDENTITY_PHOTO_SEED)
    torch.manual_seed(s.seed + 4)
    vit = ViTModel(
        ViTConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                  image_size=64, patch_size=8),
        add_pooling_layer=False,
    )  # fmt: skip
    head = torch.nn.Parameter(torch.randn(len(people), 96) * 0.05)
    optimizer = _optimizer([*vit.parameters(), head], 1e-3)
    rng, gen = np.random.default_rng(s.seed + 4), torch.Generator().manual_seed(s.seed + 4)
    progress = _progress("identity", s.identity_steps)
    for step in range(s.identity_steps):
        _set_lr(optimizer, lr_at(step, s.identity_steps, 1e-3, s.warmup_steps))
        idx = rng.integers(0, len(data.images), s.identity_batch)
        pixels = _normalise(_pixels(data.images, idx, gen), IMAGENET_MEAN, IMAGENET_STD)
        with _autocast(s):
            cls_token = vit(pixel_values=pixels).last_hidden_state[:, 0].float()
        embedding = F.normalize(cls_token, dim=-1)
        logits = 16.0 * embedding @ F.normalize(head, dim=-1).T
        loss = F.cross_entropy(logits, torch.from_numpy(data.individual[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(loss=f"{loss.item():.4f}")
    return vit.eval().requires_grad_(False)


def _readout_labels(data) -> torch.Tensor:
    """The scenes' attribute rows, with -100 (cross_entropy's ignore_index) where the context hides one."""
    from s2s.world.readout import HIDDEN_BY
    from s2s.world.scene import ALL_CONTEXTS

    keys = list(ATTRIBUTES)
    labels = torch.from_numpy(data.attributes).clone()
    for row, context in enumerate(data.context):
        for key in HIDDEN_BY.get(ALL_CONTEXTS[context], ()):
            labels[row, keys.index(key)] = -100
    return labels


def _fresh_renders(s: BuildSettings, steps_per_chunk: int = 50):
    """Endless ``(images, labels)`` of ``readout_fresh`` renders each, every one of an individual drawn for
    it, rendered a chunk of steps at a time. Chunk k is ``fresh_scene_set`` with the seed
    ``"{seed + READOUT_SCENE_SEED}:fresh:{k}"``: a string, so that no integer seed the world check may hold
    out can meet it."""
    for chunk in itertools.count():
        seed = f"{s.seed + READOUT_SCENE_SEED}:fresh:{chunk}"
        data = fresh_scene_set(s.readout_fresh * steps_per_chunk, seed)
        images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()
        labels = _readout_labels(data)
        for start in range(0, len(images), s.readout_fresh):
            yield images[start : start + s.readout_fresh], labels[start : start + s.readout_fresh]


def train_readout(vae, s: BuildSettings) -> AttributeReadout:
    """The attribute read-out, on scenes of its own: ``readout_scenes`` as the VAE reconstructs them (rounded
    to 8 bits, as a saved sample is), and in each batch ``readout_fresh`` renders drawn for that step; an
    attribute that the scene's context hides is not in the loss.

    Its scenes show fresh individuals only (none of the named pool), because it must read individuals it
    never saw: trained on the pretraining scenes, 40% of which show the named pool, the fourth build's
    read-out read its training images' ears at 97% and a fresh individual's at 73%. It had learned who an
    individual is, not what it looks like. A fixed set still leaves a gap (the fifth build: ears 88% on its
    own scenes, 80% on unseen ones), and reconstructing a scene costs ten times rendering it, so the
    renders drawn per step give it individuals it never sees twice (README, "The miniature world":
    Evidence)."""
    images = torch.zeros(0, 3, 64, 64, dtype=torch.uint8)
    labels = torch.zeros(0, len(ATTRIBUTES), dtype=torch.int64)
    if s.readout_scenes:
        data = fresh_scene_set(s.readout_scenes, s.seed + READOUT_SCENE_SEED)
        n = len(data.images)
        # channels_last: the VAE's reconstructions 38% faster, the read-out's steps 23% (sixteenth session,
        # bf16 autocast on 2 cores); a copy, so the caller's VAE keeps its layout
        coder = copy.deepcopy(vae).to(memory_format=torch.channels_last)
        with torch.no_grad(), _autocast(s):
            parts = []
            for start in range(0, n, 256):
                x = torch.from_numpy(data.images[start : min(n, start + 256)]).permute(0, 3, 1, 2)
                x = (x.float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)
                out = coder.decode(coder.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
                parts.append(((out + 1) * 127.5).round().to(torch.uint8))
        images, labels = torch.cat(parts), _readout_labels(data)
    fresh = _fresh_renders(s) if s.readout_fresh else None
    keys = list(ATTRIBUTES)
    torch.manual_seed(s.seed + 5)
    model = AttributeReadout(spatial=s.readout_spatial, norm=s.readout_norm)
    model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model.parameters(), 2e-3)
    rng, gen = np.random.default_rng(s.seed + 5), torch.Generator().manual_seed(s.seed + 5)
    progress = _progress("readout", s.readout_steps)
    for step in range(s.readout_steps):
        _set_lr(optimizer, lr_at(step, s.readout_steps, 2e-3, s.warmup_steps))
        idx = torch.from_numpy(rng.integers(0, len(images), s.readout_batch - s.readout_fresh))
        batch, y = images[idx], labels[idx]
        if fresh is not None:
            drawn, drawn_labels = next(fresh)
            batch, y = torch.cat([batch, drawn]), torch.cat([y, drawn_labels])
        x = batch.float() / 127.5 - 1
        flip = torch.rand(len(x), generator=gen) < 0.5  # a mirrored object keeps its front at its head
        x[flip] = x[flip].flip(-1)
        x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(s):
            logits = model(x)
        loss = sum(F.cross_entropy(logits[k].float(), y[:, j]) for j, k in enumerate(keys))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(loss=f"{loss.item():.4f}")
    return model.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)


# What each part's result depends on: a recipe version (raise it when a change to the part's code changes
# what it trains), the settings it reads, and what it trains on: the scenes' images, their captions, other
# parts. A resumed build reuses a finished part only when all of these match (``part_inputs``), so that a
# change to one part retrains it and what depends on it, and nothing else.
COMMON_SETTINGS = ("seed", "threads", "autocast", "warmup_steps")
DATA_RECIPES = {"images": 1, "captions": 2}  # captions 2: rare words with weak meanings
PART_RECIPES = {
    "vae": (1, ("scenes", "vae_channels", "vae_steps", "vae_batch", "vae_lr", "kl_weight"), ("images",)),
    "clip": (
        2,
        ("scenes", "text_width", "text_layers", "clip_steps", "clip_batch", "clip_lr", "token_loss_weight"),
        ("images", "captions"),
    ),  # 2: the word read-out loss
    "unet": (
        1, ("scenes", "unet_channels", "unet_steps", "unet_batch", "unet_lr", "snr_gamma", "ema_decay",
            "caption_dropout"),
        ("images", "captions", "vae", "clip"),
    ),
    "classifier": (1, ("scenes", "classifier_steps", "classifier_batch"), ("images",)),
    "identity": (1, ("identity_individuals", "identity_photos", "identity_steps", "identity_batch"), ()),
    "readout": (
        5,
        ("readout_scenes", "readout_fresh", "readout_steps", "readout_batch", "readout_spatial",
         "readout_norm"),
        ("images", "vae"),
    ),  # 2: position-by-position features; 3: the norm is a setting; 4: its own scenes, fresh individuals;
    # 5: renders drawn per step, channels_last
}  # fmt: skip


def part_inputs(name: str, s: BuildSettings) -> dict:
    """What part ``name`` of a build with settings ``s`` is made from, as JSON-ready data (a part's
    fingerprint: equal fingerprints, equal parts)."""
    settings = json.loads(json.dumps(asdict(s)))
    if name in DATA_RECIPES:
        return {"recipe": DATA_RECIPES[name], "settings": {k: settings[k] for k in ("seed", "scenes")}}
    recipe, keys, inputs = PART_RECIPES[name]
    return {
        "recipe": recipe,
        "settings": {k: settings[k] for k in (*COMMON_SETTINGS, *keys)},
        "inputs": {i: part_inputs(i, s) for i in inputs},
    }


class _Parts:
    """Finished parts of a build, saved beside its output so that a stopped build resumes by part."""

    def __init__(self, folder: Path, settings: BuildSettings):
        self.folder, self.settings = folder, settings
        folder.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.resumed: list[str] = []

    def run(self, name: str, train, save, load):
        """The part ``name``: loaded when a previous run finished it from the same inputs, else trained and
        saved (replacing a part made from other inputs)."""
        folder = self.folder / name
        wanted = part_inputs(name, self.settings)
        if (folder / "seconds.json").is_file():
            if json.loads((folder / "inputs.json").read_text()) == wanted:
                self.seconds[name] = json.loads((folder / "seconds.json").read_text())["seconds"]
                self.resumed.append(name)
                log.info("%s: finished earlier (%.0f s), loaded from %s", name, self.seconds[name], folder)
                return load(folder)
            log.info("%s: %s was made from other inputs; training it again", name, folder)
        start = time.perf_counter()
        result = train()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        with atomic_dir(folder) as tmp:
            save(result, tmp)
            write_json(tmp / "inputs.json", wanted)
            write_json(tmp / "seconds.json", {"seconds": self.seconds[name]})
        log.info("%s done in %.0f s", name, self.seconds[name])
        return result


def build_world(out_dir: Path | str, settings: BuildSettings, command: str = "") -> dict:
    """Train every world model and save them into ``out_dir`` (atomically); return the build record."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
        ViTModel,
    )

    torch.set_num_threads(settings.threads)
    out_dir = Path(out_dir)
    parts = _Parts(out_dir.with_name(out_dir.name + ".parts"), settings)
    rendered: list[SceneSet] = []

    def data() -> SceneSet:  # rendered once, and only when a part still to train needs it
        if not rendered:
            start = time.perf_counter()
            rendered.append(scene_set(settings.scenes, settings.seed))
            parts.seconds["render"] = round(time.perf_counter() - start, 1)
            log.info("render done in %.0f s", parts.seconds["render"])
            # kept beside the parts: a resumed build whose remaining parts need no scenes still counts it
            render = {"inputs": part_inputs("images", settings), "render": parts.seconds["render"]}
            write_json(parts.folder / "render.json", render)
        return rendered[0]

    def pretrained(cls, **kwargs):
        return lambda folder: cls.from_pretrained(folder, **kwargs).eval().requires_grad_(False)

    def save_pretrained(model, folder):
        model.save_pretrained(folder, safe_serialization=True)

    with atomic_dir(out_dir) as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_world_tokenizer(tmp / "sd" / "tokenizer"))
        vae = parts.run(
            "vae", lambda: train_vae(data(), settings), save_pretrained, pretrained(AutoencoderKL)
        )
        clip = parts.run(
            "clip", lambda: train_clip(data(), tokenizer, settings), save_pretrained, pretrained(CLIPModel)
        )
        text_encoder = text_encoder_of(clip)
        unet = parts.run(
            "unet", lambda: train_unet(data(), vae, text_encoder, tokenizer, settings), save_pretrained,
            pretrained(UNet2DConditionModel),
        )  # fmt: skip
        classifier = parts.run(
            "classifier", lambda: train_classifier(data(), settings),
            lambda model, folder: save_classifier(model, folder / "classifier.safetensors"),
            lambda folder: load_classifier(folder / "classifier.safetensors"),
        )  # fmt: skip
        identity = parts.run(
            "identity", lambda: train_identity(settings), save_pretrained,
            pretrained(ViTModel, add_pooling_layer=False),
        )  # fmt: skip
        readout = parts.run(
            "readout", lambda: train_readout(vae, settings),
            lambda model, folder: save_readout(model, folder / "readout.safetensors"),
            lambda folder: load_readout(folder / "readout.safetensors"),
        )  # fmt: skip
        times = parts.seconds
        earlier = parts.folder / "render.json"
        if "render" not in times and earlier.is_file():
            record = json.loads(earlier.read_text())
            if record["inputs"] == part_inputs("images", settings):
                times["render"] = record["render"]
        scheduler = DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False, steps_offset=1,
        )  # fmt: skip
        StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).save_pretrained(tmp / "sd", safe_serialization=True)  # fmt: skip
        clip_processor = CLIPImageProcessor(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )  # fmt: skip
        clip.save_pretrained(tmp / "clip", safe_serialization=True)
        CLIPProcessor(image_processor=clip_processor, tokenizer=tokenizer).save_pretrained(tmp / "clip")
        identity.save_pretrained(tmp / "identity", safe_serialization=True)
        ViTImageProcessor(
            size={"height": 64, "width": 64}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
        ).save_pretrained(tmp / "identity")
        save_classifier(classifier, tmp / "classifier.safetensors")
        save_readout(readout, tmp / "readout.safetensors")
        files = {
            str(p.relative_to(tmp)): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != "BUILD.json"
        }
        record = {
            "command": command,
            "settings": asdict(settings),
            "seconds": times,
            "total_seconds": round(sum(times.values()), 1),
            "resumed_parts": parts.resumed,
            "torch": torch.__version__,
            "files": files,
        }
        write_json(tmp / "BUILD.json", record)
    shutil.rmtree(parts.folder)
    log.info("world built in %s: %.0f s", out_dir, record["total_seconds"])
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir")
    parser.add_argument("--settings", default="full", help="short, full, or a YAML file of BuildSettings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    words = argv if argv is not None else sys.argv[1:]
    try:
        settings = load_settings(args.settings)
        build_world(args.out_dir, settings, command=" ".join(["python -m s2s.world.build", *words]))
    except S2SError as exc:  # a message for the user: one line on stderr and exit status 1, no traceback
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
