"""One benchmark run in a fresh process: ``python -m s2s.bench.child SPEC.json RESULT.json``.

A fresh process per run gives each run its own start-up cost (imports, model load, caching) and its own
peak memory (``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on GPU). Training goes through the
project's one training loop (``s2s.train.loop.train``); step times are read from the optimizer's global
step hook, so the loop is measured as it is, not a copy of it.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import accelerate  # noqa: E402, F401  - imported here so that import time is counted apart
import diffusers  # noqa: E402, F401
import peft  # noqa: E402, F401
import torch  # noqa: E402
import transformers  # noqa: E402, F401
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from s2s import config as cfgmod  # noqa: E402
from s2s.train.loop import train  # noqa: E402

IMPORTED = time.perf_counter()


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_train(spec: dict) -> dict:
    config = cfgmod.check_config(spec["config"], base_dir=spec["cwd"])
    cfg = replace(
        cfgmod.train_config(config, spec["method"]),
        max_train_steps=spec["steps"],
        train_batch_size=spec["batch_size"],
        cache_latents=spec["cache_latents"],
        with_prior_preservation=spec["with_prior_preservation"],
        gradient_accumulation_steps=1,
        checkpointing_steps=10**9,  # no checkpoint inside a timed run
        validation_prompt=None,
    )
    step_ends: list[float] = []
    hook = register_optimizer_step_post_hook(lambda *args: step_ends.append(time.perf_counter()))
    started = time.perf_counter()
    summary = train(
        cfg,
        cfgmod.subject(config, spec["subject"]),
        base_model=spec["base_model"],
        instance_dir=spec["instance_dir"],
        out_dir=spec["out_dir"],
        checkpoint_dir=spec["checkpoint_dir"],
        resolution=spec["resolution"],
        instance_prompt=spec["instance_prompt"],
        class_dir=spec.get("class_dir"),
        class_prompt=spec["class_prompt"],
        device=spec["device"],
    )
    finished = time.perf_counter()
    hook.remove()
    if len(step_ends) != spec["steps"]:
        raise RuntimeError(f"expected {spec['steps']} optimizer steps, the step hook saw {len(step_ends)}")
    step_s = [
        b - a for a, b in zip(step_ends, step_ends[1:], strict=False)
    ]  # the first step is not timed (warm-up)
    return {
        "step_s": step_s,
        "import_s": IMPORTED - STARTED,
        "before_first_step_end_s": step_ends[0] - started,
        "after_last_step_s": finished - step_ends[-1],
        "peak_memory_mb": summary["peak_memory_mb"],
        "loop_median_step_s": summary["median_step_s"],
        "trainable_params": summary["trainable_params"],
        "final_loss": summary["final_loss"],
        "cpu_s": _cpu_s(),
        "device": summary["device"],
        "mixed_precision": summary["mixed_precision"],
        "versions": summary["versions"],
    }


def run_load(spec: dict) -> dict:
    """Only load the models as the training loop does and place them on the device: the memory floor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from s2s.models import pick_device

    started = time.perf_counter()
    base = spec["base_model"]
    device = pick_device(spec["device"])
    CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    models = [
        CLIPTextModel.from_pretrained(base, subfolder="text_encoder", use_safetensors=True),
        AutoencoderKL.from_pretrained(base, subfolder="vae", use_safetensors=True),
        UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True),
    ]
    for model in models:
        model.to(device)
    return {
        "import_s": IMPORTED - STARTED,
        "load_s": time.perf_counter() - started,
        "peak_memory_mb": _peak_mb(str(device)),
        "cpu_s": _cpu_s(),
    }


def main(spec_path: str, result_path: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    result = run_load(spec) if spec["kind"] == "load" else run_train(spec)
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*sys.argv[1:])
