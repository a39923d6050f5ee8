"""Sampling: every prompt x seed for one method, with one fixed CPU generator per seed.

A seed's generator produces the same initial noise for every method (and for a plain
``StableDiffusionPipeline`` call with ``generator=torch.Generator().manual_seed(seed)``), so methods
are compared on identical noise. The model is loaded once per job; seeds are batched per prompt.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from s2s.config import ClassImagesConfig, SamplingConfig
from s2s.io import S2SError, check_safe_name, save_png, write_json
from s2s.models import load_method_pipeline, pick_device, pick_dtype
from s2s.progress import Progress

log = logging.getLogger(__name__)
# Beside each prompt's images: how long they took to sample (model compute, read by s2s.bench.dag).
SAMPLING_RECORD = "sampling.json"

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def set_scheduler(pipe, name: str) -> None:
    import diffusers

    if name not in SCHEDULERS:
        raise S2SError(
            f"config key sampling.scheduler: unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}"
        )
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def fill_prompt(template: str, phrase: str) -> str:
    """Put the subject phrase into a prompt template; str.replace, so braces in prompts are data."""
    return template.replace("{}", phrase)


def seed_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def generate(
    pipe,
    prompt: str,
    seeds: list[int],
    steps: int,
    guidance: float,
    resolution: int,
    batch_size: int,
    progress: Progress | None = None,
):
    images = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        out = pipe(
            prompt=[prompt] * len(chunk),
            generator=seed_generators(chunk),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
        )
        images.extend(out.images)
        if progress is not None:
            progress.update(len(chunk))
    return images


def generate_with(
    pipe,
    prompt: str,
    seeds: list[int],
    settings: SamplingConfig | ClassImagesConfig,
    resolution: int,
    progress: Progress | None = None,
):
    """``generate`` with the steps, guidance and batch size of a sampling or class-prior stage's settings."""
    return generate(
        pipe, prompt, seeds, settings.num_inference_steps, settings.guidance_scale, resolution,
        settings.batch_size, progress,
    )  # fmt: skip


def sample_method(
    base_model: str,
    method: str,
    model_dir: Path | str | None,
    prompts: dict[str, str],
    settings: SamplingConfig,
    out_root: Path | str,
    resolution: int,
    device: str = "auto",
    precision: str = "no",
) -> list[Path]:
    """Write ``out_root/{prompt_id}/{seed}.png`` for each prompt id and seed of ``settings`` (sampling.*:
    seeds, steps, guidance, scheduler, batch size), plus a prompt.json each and a sampling.json with the
    seconds its images took. ``prompts`` are this job's, subject phrase filled in."""
    seeds = settings.seeds
    dev = pick_device(device)
    pipe = load_method_pipeline(base_model, method, model_dir, dev, pick_dtype(precision, dev))
    set_scheduler(pipe, settings.scheduler)
    written = []
    started = time.perf_counter()
    progress = Progress(f"sampling {method}", len(prompts) * len(seeds), log, unit="images")
    for prompt_id, prompt in prompts.items():
        check_safe_name(prompt_id, "prompt id")
        folder = Path(out_root) / prompt_id
        prompt_started = time.perf_counter()
        images = generate_with(pipe, prompt, seeds, settings, resolution, progress)
        for seed, image in zip(seeds, images):
            save_png(image, folder / f"{seed}.png")
            written.append(folder / f"{seed}.png")
        write_json(
            folder / "prompt.json",
            {"prompt_id": prompt_id, "prompt": prompt, "seeds": list(seeds), "method": method},
        )
        write_json(
            folder / SAMPLING_RECORD,
            {"images": len(images), "sampling_s": time.perf_counter() - prompt_started},
        )
    log.info("sampled %d images for %s in %.1f s", len(written), method, time.perf_counter() - started)
    return written


def generate_class_images(
    base_model: str,
    class_prompt: str,
    settings: ClassImagesConfig,
    out_dir: Path | str,
    resolution: int,
    seed: int,
    device: str = "auto",
    precision: str = "no",
) -> list[Path]:
    """Class-prior images ("a photo of a dog") from the base model, batched, one seed per image; how many
    and how they are sampled from ``settings`` (class_images.*)."""
    from s2s.io import atomic_dir

    dev = pick_device(device)
    pipe = load_method_pipeline(base_model, "base", None, dev, pick_dtype(precision, dev))
    set_scheduler(pipe, "ddim")
    count = settings.num_class_images
    seeds = [seed * 100_000 + i for i in range(count)]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        progress = Progress("class-prior images", count, log, unit="images")
        images = generate_with(pipe, class_prompt, seeds, settings, resolution, progress)
        for i, image in enumerate(images):
            save_png(image, tmp / f"class_{i:04d}.png")
        write_json(tmp / "class_prompt.json", {"prompt": class_prompt, "seeds": seeds})
    return sorted(out_dir.glob("*.png"))
