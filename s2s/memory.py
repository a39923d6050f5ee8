"""Peak memory of a training job, estimated before it starts, and checked against the GPU it runs on.

The estimate adds up what the loop allocates (``s2s.train.loop``):

- weights: frozen parts in the mixed-precision dtype (2 bytes), trained parts in fp32 (4 bytes);
- under autocast, half-precision copies of the fp32 trained weights, kept by the autograd graph until the
  backward pass;
- gradients (fp32) and optimizer state of the trained parameters: AdamW keeps two fp32 moments
  (8 bytes a parameter), bitsandbytes' 8-bit AdamW two 1-byte moments (2 bytes);
- the optimizer step's temporaries: torch's multi-tensor (foreach) AdamW, the default on CUDA, holds about
  one fp32 copy of the trained parameters while it steps (8-bit AdamW updates in place);
- activations kept for the backward pass: proportional to the samples per micro-batch (instance plus
  class images), the latent area and the UNet's width, calibrated on SD v1.4's UNet (``ACTIVATION_*``
  below, measured on CPU: docs/memory.md), smaller in half precision and much smaller with gradient
  checkpointing;
- on CUDA, the context and library workspaces.

It is an estimate: the note and docs/memory.md compare it with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from s2s.io import S2SError

GIB = 2**30
# Activation bytes per sample and latent pixel of SD v1.4's UNet (block_out_channels[0] = 320) in fp32,
# and the fractions kept in half precision and with gradient checkpointing (measured, docs/memory.md).
ACTIVATION_BYTES_PER_LATENT_PIXEL = 455e3
SD_BASE_CHANNELS = 320
HALF_PRECISION_ACTIVATIONS = 0.45
# With checkpointing only block inputs are kept (0.16 measured) plus one block recomputed at a time.
CHECKPOINTED_ACTIVATIONS = 0.3
CUDA_OVERHEAD = 0.8 * GIB  # CUDA context, cuBLAS / cuDNN workspaces


@dataclass(frozen=True)
class TrainingShape:
    """What decides a training job's memory."""

    method: str  # the run's name (a method's, or a variant's)
    unet_params: int
    vae_params: int
    text_params: int
    trainable_params: int
    trains_unet: bool
    trains_text: bool
    unet_base_channels: int
    latent_area: int  # latent pixels of one sample (resolution / VAE factor, squared)
    samples: int  # per micro-batch: instance images, plus as many class images with prior preservation
    mixed_precision: str  # no | fp16 | bf16
    gradient_checkpointing: bool
    use_8bit_adam: bool
    device_type: str = "cuda"
    # the config section a fix goes in (variants.NAME for a variant); empty: training.<method>
    section: str = ""


@dataclass(frozen=True)
class MemoryEstimate:
    shape: TrainingShape
    parts: dict[str, float]  # bytes

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = " + ".join(f"{name} {value / GIB:.1f}" for name, value in self.parts.items() if value)
        return f"{parts} = {self.total / GIB:.1f} GiB"


def estimate(shape: TrainingShape) -> MemoryEstimate:
    half = shape.mixed_precision in ("fp16", "bf16")
    frozen_bytes = 2 if half else 4

    def weights(params: int, trained: bool) -> float:
        return params * (4 if trained else frozen_bytes)

    # Trained modules stay fp32; with LoRA or TI the UNet is frozen. A text encoder with trained weights (TI's
    # new rows, train_text_encoder: DreamBooth's whole one or LoRA's adapters on it) is fp32 whole, as the
    # loop keeps it; the adapters themselves are counted in trainable_params.
    parts = {
        "weights": weights(shape.unet_params, shape.trains_unet)
        + weights(shape.vae_params, False)
        + weights(shape.text_params, shape.trains_text),
        "autocast copies": 2.0
        * ((shape.unet_params if shape.trains_unet else 0) + (shape.text_params if shape.trains_text else 0))
        * half
        # with checkpointing the casts are recomputed block by block instead of kept
        * (0.1 if shape.gradient_checkpointing else 1.0),
        "gradients": 4.0 * shape.trainable_params,
        "optimizer": (2.0 if shape.use_8bit_adam else 8.0) * shape.trainable_params,
        # bitsandbytes updates its 8-bit state in place; torch's foreach AdamW needs temporaries (CUDA only).
        "optimizer step": 4.0 * shape.trainable_params
        if shape.device_type == "cuda" and not shape.use_8bit_adam
        else 0.0,
    }
    activations = ACTIVATION_BYTES_PER_LATENT_PIXEL * shape.samples * shape.latent_area
    activations *= shape.unet_base_channels / SD_BASE_CHANNELS
    activations *= HALF_PRECISION_ACTIVATIONS if half else 1.0
    activations *= CHECKPOINTED_ACTIVATIONS if shape.gradient_checkpointing else 1.0
    parts["activations"] = activations
    parts["CUDA context"] = CUDA_OVERHEAD if shape.device_type == "cuda" else 0.0
    return MemoryEstimate(shape, parts)


def ways_to_fit(shape: TrainingShape, available: float) -> list[str]:
    """Config changes that each bring the estimate under ``available`` bytes (or lower it), best first."""
    options = []
    key = shape.section or f"training.{shape.method}"
    if not shape.gradient_checkpointing:
        options.append((f"{key}.gradient_checkpointing: true", replace(shape, gradient_checkpointing=True)))
    if not shape.use_8bit_adam and shape.device_type == "cuda":
        options.append((f"{key}.use_8bit_adam: true (bitsandbytes)", replace(shape, use_8bit_adam=True)))
    if not shape.gradient_checkpointing and not shape.use_8bit_adam and shape.device_type == "cuda":
        both = replace(shape, gradient_checkpointing=True, use_8bit_adam=True)
        options.append((f"both {key}.gradient_checkpointing and use_8bit_adam", both))
    if shape.mixed_precision == "no":
        options.append((f"{key}.mixed_precision: fp16", replace(shape, mixed_precision="fp16")))
    lines = []
    for text, changed in options:
        total = estimate(changed).total
        fits = "fits" if total <= available else "still too large"
        lines.append(f"{text} -> {total / GIB:.1f} GiB ({fits})")
    return lines


def check_fits(est: MemoryEstimate, available: float, device_name: str) -> None:
    """Stop before loading anything onto the GPU when the estimate exceeds its memory."""
    if est.total <= available:
        return
    options = "; ".join(ways_to_fit(est.shape, available)) or "use a larger GPU"
    raise S2SError(
        f"training {est.shape.method}: estimated peak memory {est.describe()} exceeds {device_name}'s "
        f"{available / GIB:.1f} GiB; options: {options} (or method lora)"
    )


def training_shape(
    cfg, unet, vae, text_encoder, trainable_params: int, trains_text: bool, resolution: int, uses_prior: bool,
    device_type: str, trains_unet: bool,
) -> TrainingShape:  # fmt: skip
    """The shape of a training job from its loaded modules (parameter counts read off them)."""

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return TrainingShape(
        method=cfg.run_name,
        section=cfg.section,
        unet_params=count(unet),
        vae_params=count(vae),
        text_params=count(text_encoder),
        trainable_params=trainable_params,
        trains_unet=trains_unet,
        trains_text=trains_text,
        unet_base_channels=int(unet.config.block_out_channels[0]),
        latent_area=(resolution // factor) ** 2,
        samples=cfg.train_batch_size * (2 if uses_prior else 1),
        mixed_precision=cfg.mixed_precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_8bit_adam=cfg.use_8bit_adam,
        device_type=device_type,
    )
