"""Training benchmarks (items 1 and 2 of docs/benchmarks.md): step time per method with and without
latent caching, the fixed cost of a run, peak memory, and achieved FLOP/s.

Every run is a fresh process (``s2s.bench.child``) running the project's training loop; runs of different
variants are interleaved (round-robin) so that a change in machine load hits all of them alike.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from s2s import registry
from s2s.bench.settings import PRIOR_SUFFIX, TrainingBench, bench_variants, variant_label
from s2s.bench.stats import ratio, summarize
from s2s.io import S2SError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

# Measured by the issue author on this machine with the official diffusers example scripts
# (train_dreambooth.py, train_dreambooth_lora.py, textual_inversion.py): tiny model, 64 px, batch 2, CPU.
REFERENCE = {
    "source": "reference (diffusers examples, measured by the issue author): tiny model, 64 px, batch 2, CPU",
    "step_s": {"dreambooth": 0.087, "dreambooth_prior": 0.128, "lora": 0.079, "textual_inversion": 0.077},
    "startup_s": 10.0,
}


def _child(spec: dict, work: Path, name: str) -> tuple[dict, float]:
    """Run one spec in a fresh Python process; return its result and the process's wall time."""
    spec_path, result_path, log_path = (
        work / f"{name}.spec.json",
        work / f"{name}.result.json",
        work / f"{name}.log",
    )
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    started = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "s2s.bench.child", str(spec_path), str(result_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=spec["cwd"],
        )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise S2SError(
            f"benchmark run {name} failed (exit {proc.returncode}); {log_path}: " + " | ".join(tail)
        )
    return json.loads(result_path.read_text()), wall


def _data(config: dict, subject: str, work: Path, resolution: int) -> tuple[Path, Path]:
    """Instance photos of the config's subject and class images (the drawn toy) at ``resolution``."""
    from s2s.data import draw_synthetic_subject, prepare_subject

    raw = config["subjects"][subject]
    photos = work / "photos"
    if raw.get("synthetic") or not raw.get("images"):
        draw_synthetic_subject(photos, 8, seed=config["seed"], resolution=resolution)
    else:
        photos = Path(raw["images"])
    prepare_subject(photos, work / "instance", resolution)
    draw_synthetic_subject(work / "class_photos", 8, seed=config["seed"] + 99, resolution=resolution)
    prepare_subject(work / "class_photos", work / "class_images", resolution)
    return work / "instance", work / "class_images"


def flop_mode(config: dict, name: str, subject: str) -> dict:
    """How a training step of ``name`` (a method or config variant) runs through the UNet: its method's
    ``unet_flop_mode`` (s2s.train.methods), from the run's training settings."""
    from s2s import config as cfgmod
    from s2s.train.methods import make_method

    return make_method(cfgmod.train_config(config, name), cfgmod.subject(config, subject)).unet_flop_mode()


def _flops(settings: TrainingBench, model_dir: Path, config: dict, subject: str) -> dict[str, int]:
    """UNet FLOPs of one training step per variant (forward + backward as that method trains)."""
    from s2s.bench.models import unet_config_of, unet_flops

    unet_config = unet_config_of(model_dir)
    variants = bench_variants(config)
    out = {}
    for variant in settings.variants:
        name, prior = variants[variant]
        batch = settings.batch_size * (2 if prior else 1)
        mode = flop_mode(config, name, subject)
        out[variant] = unet_flops(unet_config, batch, settings.resolution, **mode)
    return out


def bench_training(
    settings: TrainingBench, config: dict, work: Path, threads: int, peak_tflops: float | None
) -> dict:
    """Run every (variant, caching) ``settings.runs`` times, each in a fresh process; summarize."""
    from s2s import config as cfgmod
    from s2s.bench.models import build_model_folder, remove
    from s2s.job import class_prompt_for, instance_prompt_for

    work.mkdir(parents=True, exist_ok=True)
    subject_name = next(iter(config["subjects"]))
    subject = cfgmod.subject(config, subject_name)
    device = config["device"]
    started = time.perf_counter()
    model_dir = build_model_folder(
        settings.architecture, work / "model", settings.resolution, config["seed"], device
    )
    build_s = time.perf_counter() - started
    instance_dir, class_dir = _data(config, subject_name, work, settings.resolution)
    flops = _flops(settings, model_dir, config, subject_name)
    variants = bench_variants(config)
    base = {
        "config": {k: v for k, v in config.items() if k != "bench"},
        "cwd": str(Path.cwd()),
        "base_model": str(model_dir),
        "device": device,
        "threads": threads,
        "subject": subject_name,
        "resolution": settings.resolution,
    }
    jobs = [(v, c) for v in settings.variants for c in settings.cache_latents]
    raw: dict[tuple[str, bool], list[dict]] = {job: [] for job in jobs}
    baseline: list[dict] = []
    for run in range(settings.runs):
        if settings.load_baseline:
            result, wall = _child({**base, "kind": "load"}, work, f"load-run{run}")
            baseline.append({**result, "process_s": wall})
        for variant, cache in jobs:
            method, prior = variants[variant]
            name = f"{variant}-{'cache' if cache else 'nocache'}-run{run}"
            spec = {
                **base,
                "kind": "train",
                "method": method,  # a method's name or a config variant's (train_config reads both)
                "with_prior_preservation": prior,
                "cache_latents": cache,
                "steps": settings.steps,
                "batch_size": settings.batch_size,
                "instance_dir": str(instance_dir),
                "class_dir": str(class_dir) if prior else None,
                "instance_prompt": instance_prompt_for(config, subject),
                "class_prompt": class_prompt_for(config, subject),
                "out_dir": str(work / "out" / name),
                "checkpoint_dir": str(work / "ckpt" / name),
            }
            log.info("run %s", name)
            result, wall = _child(spec, work, name)
            raw[(variant, cache)].append({**result, "process_s": wall})
            remove(work / "out" / name)
    remove(model_dir)
    rows = [
        _row(variant, cache, raw[(variant, cache)], settings, flops[variant], peak_tflops, config)
        for variant, cache in jobs
    ]
    out = {
        "model_build_s": build_s,
        "rows": rows,
        "ratios": _ratios(rows),
        "flops_note": "UNet only, forward + backward as the method trains, counted with "
        "torch.utils.flop_counter.FlopCounterMode on the meta device",
        "memory_note": _memory_note(device),
        "versions": raw[jobs[0]][0]["versions"],
    }
    if baseline:
        out["load_baseline"] = {
            "peak_memory_mb": summarize([b["peak_memory_mb"] for b in baseline], "MiB"),
            "load_s": summarize([b["load_s"] for b in baseline], "s"),
            "process_s": summarize([b["process_s"] for b in baseline], "s"),
        }
    if settings.architecture == "tiny" and settings.resolution == 64 and settings.batch_size == 2:
        out["reference"] = REFERENCE
    return out


def _memory_note(device: str) -> str:
    if str(device).startswith("cuda"):
        return "peak memory: torch.cuda.max_memory_allocated of the run's own process"
    return (
        "peak memory: ru_maxrss (peak resident set) of the run's own fresh process, so it includes the "
        "Python runtime, the libraries and the frozen models; the load-only baseline, where measured, is "
        "that floor"
    )


def _row(
    variant, cache, runs: list[dict], settings: TrainingBench, flops: int, peak_tflops, config: dict
) -> dict:
    steps = [s for r in runs for s in r["step_s"]]
    step = summarize(steps, "s")
    # fixed cost per run: the process's wall time minus its timed steps and the untimed first step
    # (counted at the median step time)
    fixed = [r["process_s"] - sum(r["step_s"]) - step["median"] for r in runs]
    name, prior = bench_variants(config)[variant]
    row = {
        "variant": variant,
        "label": variant_label(config, variant),
        "method": registry.base_method(config, name),
        "trained": name,  # the method or config variant trained
        "with_prior_preservation": prior,
        "cache_latents": cache,
        "runs": len(runs),
        "steps_per_run": settings.steps,
        "step_s": step,
        "fixed_s": summarize(fixed, "s"),
        "process_s": summarize([r["process_s"] for r in runs], "s"),
        "import_s": summarize([r["import_s"] for r in runs], "s"),
        "setup_and_first_step_s": summarize([r["before_first_step_end_s"] for r in runs], "s"),
        "after_last_step_s": summarize([r["after_last_step_s"] for r in runs], "s"),
        "peak_memory_mb": summarize([r["peak_memory_mb"] for r in runs], "MiB"),
        "cpu_per_wall": summarize([r["cpu_s"] / r["process_s"] for r in runs], "cores"),
        "trainable_params": runs[0]["trainable_params"],
        "run_records": [{k: v for k, v in r.items() if k != "versions"} for r in runs],
        "unet_gflop_per_step": flops / 1e9,
        "achieved_tflops": flops / step["median"] / 1e12,
    }
    if peak_tflops:
        row["fraction_of_peak"] = row["achieved_tflops"] / peak_tflops
    ref = REFERENCE["step_s"].get(variant)
    if (
        ref is not None
        and settings.architecture == "tiny"
        and settings.resolution == 64
        and settings.batch_size == 2
    ):
        row["reference_step_s"] = ref
    return row


def _ratios(rows: list[dict]) -> list[dict]:
    by = {(r["variant"], r["cache_latents"]): r for r in rows}
    out = []
    for (variant, cache), row in by.items():
        if cache and (variant, False) in by:
            out.append(
                ratio(
                    by[(variant, False)]["step_s"],
                    row["step_s"],
                    f"{variant}: step time without / with latent caching",
                    "> 1: caching saves that much per step",
                )
            )
    for cache in (True, False):
        tag = "cached" if cache else "uncached"
        lora = by.get(("lora", cache))
        # Every other variant against LoRA (the study's cheapest adapter), in the settings' order.
        for other in [v for v, c in by if c == cache and v != "lora"]:
            if lora:
                out.append(
                    ratio(
                        by[(other, cache)]["step_s"],
                        lora["step_s"],
                        f"{other} / lora step time ({tag})",
                        "> 1: slower than LoRA",
                    )
                )
                out.append(
                    ratio(
                        by[(other, cache)]["peak_memory_mb"],
                        lora["peak_memory_mb"],
                        f"{other} / lora peak memory ({tag})",
                        "> 1: more memory than LoRA",
                    )
                )
        for variant in [v for v, c in by if c == cache and v.endswith(PRIOR_SUFFIX)]:
            plain = variant.removesuffix(PRIOR_SUFFIX)
            if (plain, cache) in by and by[(variant, cache)]["with_prior_preservation"]:
                out.append(
                    ratio(
                        by[(variant, cache)]["step_s"],
                        by[(plain, cache)]["step_s"],
                        f"{plain} with / without prior preservation step time ({tag})",
                        "the prior term doubles the batch",
                    )
                )
    return out
