"""Training: what each method changes, loadable outputs, falling loss, prior term, exact resume, NaN stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.io import S2SError
from s2s.sample import sample_method
from s2s.train.loop import train

PROMPT = "a photo of sks toy"


def make_config(**training):
    raw = {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "training": training}
    return check_config(raw)


def run(tmp: Path, method: str, tiny_sd, instance, class_dir=None, stop_after=None, **overrides):
    shared = {k: v for k, v in overrides.items() if k in ("checkpointing_steps", "seed")}
    per_method = {k: v for k, v in overrides.items() if k not in shared}
    per_method.setdefault("max_train_steps", 4)
    config = make_config(**shared, **{method: per_method})
    cfg = train_config(config, method)
    return train(
        cfg,
        subject(config, "toy"),
        str(tiny_sd),
        instance,
        tmp / "model",
        tmp / "ckpt",
        64,
        PROMPT,
        class_dir=class_dir,
        class_prompt="a photo of a toy",
        device="cpu",
        stop_after_steps=stop_after,
    )


def test_textual_inversion_changes_exactly_the_new_rows(tmp_path, tiny_sd, toy_instance):
    run(tmp_path, "textual_inversion", tiny_sd, toy_instance, num_vectors=2, learning_rate=5e-2)
    learned = load_file(tmp_path / "model" / "learned_embeds.safetensors")
    assert list(learned) == ["sks"] and learned["sks"].shape == (2, 32)

    base = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    before = base.text_encoder.get_input_embeddings().weight.detach().clone()
    base.load_textual_inversion(str(tmp_path / "model" / "learned_embeds.safetensors"))
    after = base.text_encoder.get_input_embeddings().weight.detach()
    n = before.shape[0]
    assert torch.equal(after[:n], before)  # every existing row bit-identical
    init = before[base.tokenizer.convert_tokens_to_ids("toy</w>")]
    new_rows = after[n:]
    assert new_rows.shape[0] == 2
    assert not torch.equal(new_rows[0], init) and not torch.equal(new_rows[1], init)  # they trained


def test_lora_keeps_base_weights_and_loads_with_load_lora_weights(
    tmp_path, tiny_sd, toy_instance, toy_class_images
):
    run(
        tmp_path, "lora", tiny_sd, toy_instance, class_dir=toy_class_images, learning_rate=1e-2, rank=2,
        validation_prompt="a {} on the beach", validation_steps=2,
    )
    weights = tmp_path / "model" / "pytorch_lora_weights.safetensors"
    state = load_file(weights)
    assert state and all("lora" in k for k in state)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k or "lora.up" in k)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(tmp_path / "model"), weight_name=weights.name)
    pipe.unet.fuse_lora(lora_scale=0.0)  # scale 0: the base weights must come out unchanged
    pipe.unet.unfuse_lora()
    base_unet = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None).unet.state_dict()
    assert all(torch.equal(base_unet[k], base_state[k]) for k in base_unet)
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert summary["trainable_params"] == sum(v.numel() for v in state.values())
    # Periodic validation images for the configured prompt (every 2 of the 4 steps).
    assert sorted(p.name for p in (tmp_path / "ckpt" / "validation").iterdir()) == [
        "step-000002.png",
        "step-000004.png",
    ]
    assert summary["with_prior_preservation"] is True


def _standard_image(pipe, prompt, seed, steps=4):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        [prompt],
        generator=[torch.Generator().manual_seed(seed)],
        num_inference_steps=steps,
        height=64,
        width=64,
        guidance_scale=7.5,
    )
    return np.asarray(out.images[0], dtype=np.int16)


@pytest.mark.parametrize("method", ["textual_inversion", "dreambooth", "lora"])
def test_standard_loading_reproduces_project_sample(
    tmp_path, tiny_sd, toy_instance, toy_class_images, method
):
    lr = {"textual_inversion": 5e-2, "dreambooth": 1e-3, "lora": 1e-2}[method]
    run(tmp_path, method, tiny_sd, toy_instance, class_dir=toy_class_images, learning_rate=lr)
    model_dir = tmp_path / "model"
    sample_method(
        str(tiny_sd), method, model_dir, {"p00": PROMPT}, [7], tmp_path / "samples", 64, 4, 7.5, device="cpu"
    )
    ours = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "samples" / "p00" / "7.png"),
        dtype=np.int16,
    )
    # The plain diffusers way, as a user would load the result:
    if method == "dreambooth":
        pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, use_safetensors=True)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, use_safetensors=True)
        if method == "lora":
            pipe.load_lora_weights(str(model_dir), weight_name="pytorch_lora_weights.safetensors")
        else:
            pipe.load_textual_inversion(str(model_dir / "learned_embeds.safetensors"))
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = _standard_image(pipe, PROMPT, 7)
    assert np.array_equal(ours, theirs)
    base = _standard_image(StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None), PROMPT, 7)
    assert not np.array_equal(ours, base), "training changed nothing"


def _fixed_data_loss(unet_dir_or_pipe, tiny_sd, instance) -> float:
    """Denoising loss on fixed images, noise and timesteps (independent of the training loop's code)."""
    from diffusers import DDPMScheduler

    from s2s.data import list_images, load_prepared

    pipe = unet_dir_or_pipe
    scheduler = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    images = [np.asarray(load_prepared(p, 64), dtype=np.float32) / 127.5 - 1 for p in list_images(instance)]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(
            [PROMPT] * len(images), padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        text = pipe.text_encoder(ids)[0]
        losses = []
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, 1000, (latents.shape[0],), generator=gen)
            pred = pipe.unet(scheduler.add_noise(latents, noise, t), t, text).sample
            losses.append(torch.nn.functional.mse_loss(pred, noise).item())
    return float(np.mean(losses))


def test_loss_falls_on_fixed_data(tmp_path, tiny_sd, toy_instance):
    run(
        tmp_path,
        "dreambooth",
        tiny_sd,
        toy_instance,
        max_train_steps=30,
        learning_rate=1e-3,
        with_prior_preservation=False,
    )
    before = _fixed_data_loss(
        StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None), tiny_sd, toy_instance
    )
    after = _fixed_data_loss(
        StableDiffusionPipeline.from_pretrained(tmp_path / "model", safety_checker=None),
        tiny_sd,
        toy_instance,
    )
    assert after < 0.9 * before, (before, after)


def test_prior_preservation_adds_a_loss_term_that_changes_the_gradient(
    tmp_path, tiny_sd, toy_instance, toy_class_images
):
    run(
        tmp_path / "w0",
        "lora",
        tiny_sd,
        toy_instance,
        class_dir=toy_class_images,
        max_train_steps=1,
        prior_loss_weight=0.0,
    )
    run(
        tmp_path / "w1",
        "lora",
        tiny_sd,
        toy_instance,
        class_dir=toy_class_images,
        max_train_steps=1,
        prior_loss_weight=1.0,
    )
    w0 = load_file(tmp_path / "w0" / "model" / "pytorch_lora_weights.safetensors")
    w1 = load_file(tmp_path / "w1" / "model" / "pytorch_lora_weights.safetensors")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    prior = (tmp_path / "w1" / "model" / "loss.csv").read_text().splitlines()[1].split(",")
    assert float(prior[2]) > 0  # the class term was computed
    # with the weight at 0 the update equals training on the instance half alone: same step, same data


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_resume_after_interruption_gives_identical_weights(
    tmp_path, tiny_sd, toy_instance, toy_class_images, method
):
    opts = {"max_train_steps": 6, "checkpointing_steps": 3, "learning_rate": 1e-2}
    if method == "lora":
        opts["dropout"] = 0.1  # dropout draws from the global RNG, seeded per micro-batch
    run(tmp_path / "straight", method, tiny_sd, toy_instance, class_dir=toy_class_images, **opts)
    stopped = run(
        tmp_path / "resumed", method, tiny_sd, toy_instance, class_dir=toy_class_images, stop_after=4, **opts
    )
    assert stopped == {"stopped_at": 4}
    assert not (tmp_path / "resumed" / "model").exists()  # an interrupted run leaves no model
    summary = run(tmp_path / "resumed", method, tiny_sd, toy_instance, class_dir=toy_class_images, **opts)
    assert summary["resumed_from_step"] == 3
    name = "pytorch_lora_weights.safetensors" if method == "lora" else "learned_embeds.safetensors"
    a = load_file(tmp_path / "straight" / "model" / name)
    b = load_file(tmp_path / "resumed" / "model" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on CPU


def test_nan_loss_stops_with_step_and_cause_and_keeps_checkpoint(tmp_path, tiny_sd, toy_instance):
    with pytest.raises(S2SError) as info:
        run(
            tmp_path,
            "dreambooth",
            tiny_sd,
            toy_instance,
            max_train_steps=20,
            checkpointing_steps=1,
            learning_rate=1e8,
            with_prior_preservation=False,
            max_grad_norm=1e30,
        )
    message = str(info.value)
    assert "at step" in message and "learning_rate" in message
    step = int(message.split("at step ")[1].split(";")[0])
    assert (tmp_path / "ckpt" / f"checkpoint-{step - 1}" / "state.json").exists()
    assert not (tmp_path / "model").exists()


def test_prior_preservation_without_class_images_is_a_clear_error(tmp_path, tiny_sd, toy_instance):
    with pytest.raises(S2SError, match="with_prior_preservation.*class images"):
        run(tmp_path, "lora", tiny_sd, toy_instance, class_dir=tmp_path / "none")
