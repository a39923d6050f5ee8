"""Sampling: shared noise across methods, and determinism."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig

from s2s.config import SamplingConfig
from s2s.sample import fill_prompt, sample_method


def sampling(seeds: list[int], steps: int, batch_size: int = 8) -> SamplingConfig:
    """sampling.* for a test's sampling: DDIM at guidance 7.5 (the schema's defaults)."""
    return SamplingConfig(
        prompts=[],
        seeds=seeds,
        num_inference_steps=steps,
        guidance_scale=7.5,
        scheduler="ddim",
        include_base=True,
        jobs="per_prompt",
        batch_size=batch_size,
    )


def test_base_row_and_a_method_equal_to_base_give_identical_images(tmp_path, tiny_sd):
    # A LoRA whose up-projections are zero leaves the model equal to the base model.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.unet.add_adapter(
        LoraConfig(
            r=2,
            lora_alpha=2,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    assert all(v.abs().sum() == 0 for k, v in layers.items() if "lora.up" in k or "lora_B" in k)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)

    prompts = {"p00": "a sks toy on the beach", "p01": "a sks toy in the snow"}
    for method, model_dir in (("base", None), ("lora", tmp_path / "lora")):
        sample_method(
            str(tiny_sd),
            method,
            model_dir,
            prompts,
            sampling([0, 5], 4, batch_size=2),
            tmp_path / method,
            64,
            device="cpu",
        )
    for pid in prompts:
        for seed in (0, 5):
            assert (tmp_path / "base" / pid / f"{seed}.png").read_bytes() == (
                tmp_path / "lora" / pid / f"{seed}.png"
            ).read_bytes()
    # ...and different seeds really are different noise.
    assert (tmp_path / "base" / "p00" / "0.png").read_bytes() != (
        tmp_path / "base" / "p00" / "5.png"
    ).read_bytes()
    # Each prompt's folder records its images and the seconds they took to sample.
    import json

    records = [json.loads((tmp_path / "base" / pid / "sampling.json").read_text()) for pid in prompts]
    assert [r["images"] for r in records] == [2, 2] and all(r["sampling_s"] > 0 for r in records)


def test_batched_seeds_equal_one_call_per_seed(tmp_path, tiny_sd):
    for folder, batch_size in (("batched", 3), ("single", 1)):
        sample_method(
            str(tiny_sd),
            "base",
            None,
            {"p00": "a toy"},
            sampling([1, 2, 3], 3, batch_size=batch_size),
            tmp_path / folder,
            64,
            device="cpu",
        )
    import numpy as np
    from PIL import Image

    for seed in (1, 2, 3):
        a = np.asarray(Image.open(tmp_path / "batched" / "p00" / f"{seed}.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "single" / "p00" / f"{seed}.png"), dtype=np.int16)
        # Batched matmuls may round differently in the last bit; after uint8 quantisation at most 1 level.
        assert np.abs(a - b).max() <= 1


def test_fill_prompt_treats_braces_and_shell_characters_as_data():
    template = 'a "{}"; $(rm -rf /) `x` {} {class}'
    assert fill_prompt(template, "sks dog") == 'a "sks dog"; $(rm -rf /) `x` sks dog {class}'
    assert torch.Generator().manual_seed(0).initial_seed() == 0
