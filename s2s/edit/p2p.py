"""One Prompt-to-Prompt edit: the source and the target prompt sampled together, the target's attention
controlled by a P2P controller.

Sampling is diffusers' own ``StableDiffusionPipeline.__call__``: the controller goes in as attention
processors, and ``callback_on_step_end`` tells it the step index, applies the local blend and direct
inversion's correction to the latents, and swaps in null-text inversion's per-step null embeddings. Source
and target share one UNet call per step (batch = 2 prompts x classifier-free guidance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from s2s.edit.controllers import AttentionStore, build_controller
from s2s.edit.inversion import Inversion
from s2s.edit.processors import count_unet_calls, p2p_attention
from s2s.edit.seq_aligner import token_ids

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    source_image: Image.Image  # the source branch: the generated source, or the photo's reconstruction
    edited_image: Image.Image
    latents: torch.Tensor  # final latents, [2, C, h, w]: source, edited
    attention_maps: torch.Tensor | None  # source prompt's cross-attention per token, [tokens, H, W]
    tokens: list[str]  # the tokens of attention_maps
    blend_mask: torch.Tensor | None  # last local-blend mask at latent size, [h, w]
    unet_calls: int
    seconds: float
    controller: AttentionStore


def convert_prompt(pipe, prompt: str) -> str:
    """The prompt as the tokenizer sees it: multi-vector textual-inversion tokens expanded, as diffusers'
    ``encode_prompt`` does, so that token positions line up with the embeddings."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    return convert(prompt, pipe.tokenizer) if convert is not None else prompt


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Latents to PIL images, as the pipeline's own ``output_type="pil"`` path does."""
    images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[
        0
    ]
    return pipe.image_processor.postprocess(images, output_type="pil")


def _token_labels(pipe, prompt: str) -> list[str]:
    ids = token_ids(pipe.tokenizer, prompt)[1:-1]
    return [token.replace("</w>", "") for token in pipe.tokenizer.convert_ids_to_tokens(ids)]


def generate_edit(
    pipe,
    source_prompt: str,
    target_prompt: str,
    controller_spec: dict | AttentionStore | None = None,
    *,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    inversion: Inversion | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> EditResult:
    """Sample ``source_prompt`` and ``target_prompt`` from the same noise, editing the target's attention.

    ``controller_spec`` is an edit spec (see ``s2s.edit.controllers.build_controller``), a ready controller,
    or None for a plain two-prompt generation that only records attention maps. The noise comes from
    ``inversion`` (a real photo), else ``latents`` ([1 or 2, C, h, w]), else ``generator``. ``on_step(i,
    latents)`` sees the latents after each step (after local blending).
    """
    start = time.perf_counter()
    device = pipe._execution_device
    source, target = convert_prompt(pipe, source_prompt), convert_prompt(pipe, target_prompt)
    if isinstance(controller_spec, AttentionStore):
        controller = controller_spec
    elif controller_spec:
        controller = build_controller(pipe.tokenizer, source, target, controller_spec, num_inference_steps)
    else:
        controller = AttentionStore()

    if inversion is not None:
        if inversion.num_inference_steps != num_inference_steps:
            raise ValueError(
                f"inversion has {inversion.num_inference_steps} steps; edit with the same num_inference_steps"
            )
        latents = inversion.noise
    elif latents is None:
        size = pipe.unet.config.sample_size
        shape = (1, pipe.unet.config.in_channels, size, size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=pipe.unet.dtype)
    latents = latents.to(device, pipe.unet.dtype)
    if latents.shape[0] == 1:  # P2P starts both prompts from the same noise
        latents = latents.expand(2, -1, -1, -1)

    do_cfg = guidance_scale > 1.0
    cond, uncond = pipe.encode_prompt([source_prompt, target_prompt], device, 1, True)
    nulls = None
    if inversion is not None and inversion.method == "negative_prompt":
        uncond = cond[:1].expand(2, -1, -1)
    elif inversion is not None and inversion.method == "null_text":
        nulls = inversion.null_embeddings
        uncond = nulls[0].expand(2, -1, -1)
    direct = inversion is not None and inversion.method == "direct"
    controller.reset(num_inference_steps, tuple(latents.shape[-2:]))

    def step_end(pipeline, i, t, tensors):
        x = tensors["latents"]
        if direct:
            # Direct inversion: the source branch goes back onto the inversion trajectory, so its errors
            # never reach the target through the shared attention.
            x = torch.cat([inversion.trajectory[num_inference_steps - 1 - i].to(x), x[1:]])
        x = controller.step_end(i, x)
        if on_step is not None:
            on_step(i, x)
        out = {"latents": x}
        if nulls is not None and do_cfg and i + 1 < num_inference_steps:
            out["prompt_embeds"] = torch.cat([nulls[i + 1].expand(2, -1, -1), tensors["prompt_embeds"][2:]])
        return out

    with count_unet_calls(pipe.unet) as count, p2p_attention(pipe.unet, controller):
        final = pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            latents=latents,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type="latent",
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
        ).images
    # Decoded here rather than by the pipeline so the final latents come back too (tests, metrics).
    source_image, edited_image = decode_latents(pipe, final)
    tokens = _token_labels(pipe, source)
    maps = None
    if 0 in controller.store_prompts and controller.total_maps:
        maps = controller.average_maps(0)[..., 1 : 1 + len(tokens)].permute(2, 0, 1).cpu()
    blend = getattr(controller, "local_blend", None)
    mask = blend.mask[0].cpu() if blend is not None and blend.mask is not None else None
    seconds = time.perf_counter() - start
    log.info("P2P edit %r -> %r: %d UNet calls, %.2f s", source_prompt, target_prompt, count.calls, seconds)
    return EditResult(source_image, edited_image, final, maps, tokens, mask, count.calls, seconds, controller)
