"""The training memory estimate adds up what the loop allocates, and a job that cannot fit stops with the
options that would make it fit."""

from __future__ import annotations

import pytest

from s2s.io import S2SError
from s2s.memory import GIB, TrainingShape, check_fits, estimate, ways_to_fit

SD14 = {"unet_params": 859_520_964, "vae_params": 83_653_863, "text_params": 123_060_480}


def dreambooth(**changes) -> TrainingShape:
    settings = {
        "method": "dreambooth",
        **SD14,
        "trainable_params": SD14["unet_params"],
        "trains_unet": True,
        "trains_text": False,
        "unet_base_channels": 320,
        "latent_area": 64 * 64,
        "samples": 4,
        "mixed_precision": "fp16",
        "gradient_checkpointing": False,
        "use_8bit_adam": False,
    }
    return TrainingShape(**{**settings, **changes})


def test_parts_are_what_the_loop_allocates():
    shape = dreambooth()
    parts = estimate(shape).parts
    unet, vae, text = SD14["unet_params"], SD14["vae_params"], SD14["text_params"]
    assert parts["weights"] == 4 * unet + 2 * vae + 2 * text  # trained UNet fp32, frozen parts fp16
    assert parts["autocast copies"] == 2 * unet  # fp16 casts of the fp32 UNet, held for backward
    assert parts["gradients"] == 4 * unet
    assert parts["optimizer"] == 8 * unet  # two fp32 Adam moments
    assert parts["optimizer step"] == 4 * unet
    eight_bit = estimate(dreambooth(use_8bit_adam=True)).parts
    assert eight_bit["optimizer"] == 2 * unet and eight_bit["optimizer step"] == 0
    fp32 = estimate(dreambooth(mixed_precision="no")).parts
    assert fp32["weights"] == 4 * (unet + vae + text) and fp32["autocast copies"] == 0
    cpu = estimate(dreambooth(device_type="cpu")).parts
    assert cpu["optimizer step"] == 0 and cpu["CUDA context"] == 0


def test_activations_scale_with_samples_area_and_options():
    base = estimate(dreambooth()).parts["activations"]
    assert estimate(dreambooth(samples=2)).parts["activations"] == pytest.approx(base / 2)
    assert estimate(dreambooth(latent_area=32 * 32)).parts["activations"] == pytest.approx(base / 4)
    assert estimate(dreambooth(gradient_checkpointing=True)).parts["activations"] <= base / 2
    assert estimate(dreambooth(mixed_precision="no")).parts["activations"] > base


def test_lora_and_textual_inversion_keep_the_unet_frozen_in_half_precision():
    lora = estimate(dreambooth(method="lora", trainable_params=797_184, trains_unet=False)).parts
    assert lora["weights"] == 2 * (SD14["unet_params"] + SD14["vae_params"] + SD14["text_params"])
    ti = estimate(
        dreambooth(
            method="textual_inversion", trainable_params=37_945_344, trains_unet=False, trains_text=True
        )
    ).parts
    assert ti["weights"] == 2 * (SD14["unet_params"] + SD14["vae_params"]) + 4 * SD14["text_params"]


def test_a_job_that_does_not_fit_stops_with_the_options_that_would_make_it_fit():
    est = estimate(dreambooth())
    assert 18 * GIB < est.total < 26 * GIB  # weights, gradients, Adam and its step alone are 16.5 GiB
    with pytest.raises(S2SError) as error:
        check_fits(est, 16 * GIB, "cuda:0 (NVIDIA T4)")
    message = str(error.value)
    assert "training dreambooth" in message and "16.0 GiB" in message and "\n" not in message
    assert "gradient_checkpointing: true" in message and "use_8bit_adam: true" in message
    both = [line for line in ways_to_fit(est.shape, 16 * GIB) if line.startswith("both")]
    assert both and both[0].endswith("(fits)")
    check_fits(estimate(dreambooth(gradient_checkpointing=True, use_8bit_adam=True)), 16 * GIB, "cuda:0")
