"""Editing benchmarks (items 3 and 4): Prompt-to-Prompt vs plain two-prompt generation, and null-text vs
negative-prompt inversion, through the edit package's own benchmark functions.

Those functions return medians only, so each is called ``reps`` times with one repetition (after its own
warm-up run); the spread is over those calls.
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2s.bench.settings import EditBench
from s2s.bench.stats import ratio, summarize
from s2s.edit.bench import bench_inversion, bench_p2p_vs_plain


def _inversion_image(config: dict, work: Path, size: int):
    from s2s.data import draw_synthetic_subject, list_images, prepare_subject
    from s2s.edit.inversion import load_image

    draw_synthetic_subject(work / "photo", 1, seed=config["seed"] + 7, resolution=size)
    prepare_subject(work / "photo", work / "prepared", size)
    return load_image(list_images(work / "prepared")[0], size)


def bench_edit(settings: EditBench, config: dict, work: Path, peak_tflops: float | None) -> dict:
    from s2s.bench.models import load_pipeline, unet_flops
    from s2s.models import pick_device, pick_dtype

    device = pick_device(config["device"])
    dtype = pick_dtype(config["training"].get("mixed_precision", "no"), device)
    work.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(settings.architecture, work, settings.resolution, device, dtype, config["seed"])
    out: dict = {
        "available": True,
        "dtype": str(dtype).replace("torch.", ""),
    }

    # 3. P2P edit of 2 prompts vs plain 2-prompt generation, same steps
    calls = [bench_p2p_vs_plain(pipe, steps=settings.steps, reps=1) for _ in range(settings.p2p_reps)]
    plain = summarize([c["plain_s"] for c in calls], "s")
    p2p = summarize([c["p2p_s"] for c in calls], "s")
    size = settings.resolution
    flops_per_call = unet_flops(pipe.unet.config, 4, size, "forward")  # 2 prompts x classifier-free guidance
    out["p2p"] = {
        "steps": settings.steps,
        "plain_s": plain,
        "p2p_s": p2p,
        "plain_unet_calls": calls[-1]["plain_unet_calls"],
        "p2p_unet_calls": calls[-1]["p2p_unet_calls"],
        "ratios": [ratio(p2p, plain, "P2P edit / plain generation time", "the cost of attention control")],
        "unet_gflop_per_call": flops_per_call / 1e9,
        "plain_achieved_tflops": flops_per_call * calls[-1]["plain_unet_calls"] / plain["median"] / 1e12,
        "p2p_achieved_tflops": flops_per_call * calls[-1]["p2p_unet_calls"] / p2p["median"] / 1e12,
    }
    for name in ("plain", "p2p"):
        if all(f"{name}_cpu_s" in c for c in calls):  # the process's CPU time: less noisy on a shared CPU
            out["p2p"][f"{name}_cpu_s"] = summarize([c[f"{name}_cpu_s"] for c in calls], "s")
    if "plain_cpu_s" in out["p2p"] and "p2p_cpu_s" in out["p2p"]:
        out["p2p"]["ratios"].append(
            ratio(
                out["p2p"]["p2p_cpu_s"],
                out["p2p"]["plain_cpu_s"],
                "P2P edit / plain generation CPU time",
                "the same, from the process's CPU time",
            )
        )
    if peak_tflops:
        out["p2p"]["plain_fraction_of_peak"] = out["p2p"]["plain_achieved_tflops"] / peak_tflops

    # 4. null-text vs negative-prompt inversion: time, UNet calls, reconstruction error
    image = _inversion_image(config, work, size)
    runs = [
        bench_inversion(pipe, image, reps=1, steps=settings.inversion_steps)
        for _ in range(settings.inversion_reps)
    ]
    inversion: dict = {"steps": settings.inversion_steps, "guidance_scale": runs[-1]["guidance_scale"]}
    for method in ("null_text", "negative_prompt"):
        inversion[method] = {
            "seconds": summarize([r[method]["seconds"] for r in runs], "s"),
            "inversion_s": summarize([r[method]["inversion_s"] for r in runs], "s"),
            "unet_calls": runs[-1][method]["unet_calls"],
            "inversion_unet_calls": runs[-1][method]["inversion_unet_calls"],
            "latent_mse": summarize([r[method]["latent_mse"] for r in runs], "mse"),
            "pixel_mse": summarize([r[method]["pixel_mse"] for r in runs], "mse"),
        }
    null, neg = inversion["null_text"], inversion["negative_prompt"]
    inversion["ratios"] = [
        ratio(
            null["seconds"],
            neg["seconds"],
            "null-text / negative-prompt time (inversion + edit)",
            "> 1: negative-prompt inversion is that much faster",
        ),
        ratio(
            null["pixel_mse"],
            neg["pixel_mse"],
            "null-text / negative-prompt reconstruction pixel MSE",
            "< 1: null-text reconstructs better",
        ),
    ]
    inversion["unet_calls_ratio"] = null["unet_calls"] / neg["unet_calls"]
    out["inversion"] = inversion
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out
