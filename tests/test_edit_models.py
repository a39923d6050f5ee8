"""A trained subject model reaches the edit: LoRA weights and TI embeddings change a ``subject`` edit, a LoRA
that adds nothing (zero-initialised, as peft starts one) leaves it as the base model's."""

from __future__ import annotations

import pytest
import torch

from s2s.edit.p2p import generate_edit
from s2s.io import save_safetensors
from s2s.models import load_method_pipeline

STEPS = 4
SOURCE, TARGET = "a dog on the beach", "a sks dog on the beach"
SPEC = {"edit": "subject"}
# The float noise between batches of one shape is below 3.2e-5 (see ROW_TOL in test_edit_controllers.py).
TOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def subject_models(tiny_sd, tmp_path_factory):
    """Two LoRAs (random, and zero as peft initialises one) and two TI embeddings of 'sks'."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("subject_models")
    for name, random_init in (("lora", True), ("zero_lora", False)):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
        config = LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights=not random_init,  # True: B = 0, the adapter adds exactly nothing
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
        pipe.unet.add_adapter(config)
        StableDiffusionPipeline.save_lora_weights(
            root / name, unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True
        )
    embedding = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    for name, scale in (("ti", 1.0), ("ti_scaled", 2.0)):
        save_safetensors({"sks": scale * embedding}, root / name / "learned_embeds.safetensors")
    return root


def _edit(base, method, model_dir=None):
    pipe = load_method_pipeline(str(base), method, model_dir, torch.device("cpu"), torch.float32)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    return generate_edit(pipe, SOURCE, TARGET, SPEC, latents=noise, num_inference_steps=STEPS).latents[1]


def test_lora_changes_the_subject_edit_and_a_zero_lora_does_not(tiny_sd, subject_models):
    base = _edit(tiny_sd, "base")
    lora = _edit(tiny_sd, "lora", subject_models / "lora")
    zero = _edit(tiny_sd, "lora", subject_models / "zero_lora")
    assert (lora - base).abs().max() > 30 * TOL
    assert (zero - base).abs().max() < TOL


def test_ti_embedding_changes_the_subject_edit(tiny_sd, subject_models):
    one = _edit(tiny_sd, "textual_inversion", subject_models / "ti")
    again = _edit(tiny_sd, "textual_inversion", subject_models / "ti")
    scaled = _edit(tiny_sd, "textual_inversion", subject_models / "ti_scaled")
    assert (scaled - one).abs().max() > 30 * TOL  # only the embedding's value differs
    assert (again - one).abs().max() < TOL
