"""Benchmarks for the report: P2P's cost over plain sampling; null-text vs negative-prompt inversion.

Times are medians over ``reps`` runs after one warm-up run each; the compared runs alternate, so a busy
machine slows both alike.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image

from s2s.edit.inversion import invert
from s2s.edit.p2p import generate_edit
from s2s.edit.processors import count_unet_calls

log = logging.getLogger(__name__)

SOURCE, TARGET = "a dog on the beach", "a horse on the beach"


def bench_p2p_vs_plain(pipe, steps: int = 50, reps: int = 5, seed: int = 0) -> dict:
    """Median seconds of a 2-prompt P2P replace edit and of a plain 2-prompt generation, same steps, and
    their ratio. Both decode their images."""
    size = pipe.unet.config.sample_size
    noise = torch.randn(
        (1, pipe.unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed)
    )
    noise = noise.to(pipe._execution_device, pipe.unet.dtype)

    def plain() -> int:
        with count_unet_calls(pipe.unet) as count:
            pipe([SOURCE, TARGET], latents=noise.expand(2, -1, -1, -1), num_inference_steps=steps)
        return count.calls

    def p2p() -> int:
        spec = {"edit": "replace", "cross_replace_steps": 0.8, "self_replace_steps": 0.4}
        return generate_edit(pipe, SOURCE, TARGET, spec, latents=noise, num_inference_steps=steps).unet_calls

    wall: dict[str, list[float]] = {"plain": [], "p2p": []}
    cpu: dict[str, list[float]] = {"plain": [], "p2p": []}
    calls = {}
    for rep in range(reps + 1):
        for name, run in (("plain", plain), ("p2p", p2p)):
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[name] = run()
            if rep:  # the first round warms up caches and lazy initialisation
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    out = {"steps": steps, "reps": reps}
    for name in ("plain", "p2p"):
        out[f"{name}_s"] = statistics.median(wall[name])
        # CPU time of this process: on a shared CPU it is far less noisy than wall time (meaningless on GPU).
        out[f"{name}_cpu_s"] = statistics.median(cpu[name])
        out[f"{name}_unet_calls"] = calls[name]
    out["ratio"] = out["p2p_s"] / out["plain_s"]
    out["cpu_ratio"] = out["p2p_cpu_s"] / out["plain_cpu_s"]
    return out


def bench_inversion(
    pipe,
    image: Image.Image,
    reps: int = 3,
    steps: int = 50,
    guidance_scale: float = 7.5,
    prompt: str = SOURCE,
) -> dict:
    """Null-text vs negative-prompt inversion of ``image``: seconds (inversion + the edit's generation),
    UNet calls, and reconstruction error (latent MSE and pixel MSE of the source branch)."""
    from s2s.edit.inversion import encode_image

    target_pixels = torch.tensor(list(image.getdata()), dtype=torch.float32) / 255.0
    out = {"steps": steps, "guidance_scale": guidance_scale, "reps": reps}
    runs = {"null_text": [], "negative_prompt": []}
    for rep in range(reps + 1):
        for method in runs:
            start = time.perf_counter()
            inversion = invert(pipe, image, prompt, method, steps, guidance_scale)
            result = generate_edit(
                pipe,
                prompt,
                prompt,
                None,
                inversion=inversion,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
            )
            seconds = time.perf_counter() - start
            if rep:
                runs[method].append((seconds, inversion, result))
    image_latent = encode_image(pipe, image)
    for method, results in runs.items():
        _, inversion, result = results[-1]
        pixels = torch.tensor(list(result.source_image.getdata()), dtype=torch.float32) / 255.0
        out[method] = {
            "seconds": statistics.median(r[0] for r in results),
            "inversion_s": statistics.median(r[1].seconds for r in results),
            "unet_calls": inversion.unet_calls + result.unet_calls,
            "inversion_unet_calls": inversion.unet_calls,
            "latent_mse": F.mse_loss(result.latents[:1].float().cpu(), image_latent.float().cpu()).item(),
            "pixel_mse": F.mse_loss(pixels, target_pixels).item(),
        }
    out["speedup"] = out["null_text"]["seconds"] / out["negative_prompt"]["seconds"]
    return out
