"""Training: what each method changes, loadable outputs, the loss against hand computations (prior term,
v-prediction, TI templates and flips), accumulation and scale_lr, exact resume, NaN stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from s2s.config import check_config, subject, train_config
from s2s.data import list_images, load_prepared
from s2s.io import S2SError
from s2s.sample import sample_method
from s2s.train.loop import train
from tests.test_sample import sampling

PROMPT = "a photo of sks toy"


def make_config(**training):
    raw = {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "training": training}
    return check_config(raw)


def run(tmp: Path, method: str, tiny_sd, instance, class_dir=None, stop_after=None, **overrides):
    shared = {k: v for k, v in overrides.items() if k in ("checkpointing_steps", "seed", "mixed_precision")}
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
    # A checkpoint holds the text encoder's whole embedding matrix as trained (the saved model holds only
    # the new rows, and load_textual_inversion appends rows without touching the others). AdamW's weight
    # decay moves every row each step, so the old rows stay bit-identical only if they are put back.
    run(
        tmp_path, "textual_inversion", tiny_sd, toy_instance, num_vectors=2, learning_rate=5e-2,
        max_train_steps=4, checkpointing_steps=3, keep_checkpoints=True,
    )
    trained = load_file(tmp_path / "ckpt" / "checkpoint-3" / "trainable.safetensors")["token_embedding"]
    base = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    before = base.text_encoder.get_input_embeddings().weight.detach()
    n = before.shape[0]
    assert trained.shape == (n + 2, 32)
    assert torch.equal(trained[:n], before)  # every existing row bit-identical after 3 steps
    init = before[base.tokenizer.convert_tokens_to_ids("toy</w>")]
    assert all((row - init).abs().max() > 1e-3 for row in trained[n:])  # the two new rows trained

    learned = load_file(tmp_path / "model" / "learned_embeds.safetensors")
    assert list(learned) == ["sks"] and learned["sks"].shape == (2, 32)
    base.load_textual_inversion(str(tmp_path / "model" / "learned_embeds.safetensors"))
    after = base.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[n:], learned["sks"])  # the saved rows load as the placeholder's vectors


def _unet_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 32, 32, generator=gen),
        torch.tensor([10, 700]),
        torch.randn(2, 77, 32, generator=gen),
    )


def test_lora_keeps_base_weights_and_loads_with_load_lora_weights(
    tmp_path, tiny_sd, toy_instance, toy_class_images
):
    run(
        tmp_path, "lora", tiny_sd, toy_instance, class_dir=toy_class_images, learning_rate=1e-2, rank=2,
        validation_prompt="a {} on the beach", validation_steps=2, checkpointing_steps=3,
        keep_checkpoints=True,
    )
    weights = tmp_path / "model" / "pytorch_lora_weights.safetensors"
    state = load_file(weights)
    assert state and all("lora" in k for k in state)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k or "lora.up" in k)
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert summary["trainable_params"] == sum(v.numel() for v in state.values())
    # What the optimizer trained (the checkpoint's tensors) is adapter weights only.
    trained = load_file(tmp_path / "ckpt" / "checkpoint-3" / "trainable.safetensors")
    assert trained and all("lora" in k for k in trained)

    untouched = load_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    with torch.no_grad():
        base_out = pipe.unet(*_unet_inputs()).sample
    pipe.load_lora_weights(str(tmp_path / "model"), weight_name=weights.name)
    loaded = {k.replace("base_layer.", ""): v for k, v in pipe.unet.state_dict().items() if "lora" not in k}
    assert loaded.keys() == untouched.keys()
    assert all(torch.equal(loaded[k], untouched[k]) for k in untouched)  # the base weights, unchanged
    with torch.no_grad():
        with_lora = pipe.unet(*_unet_inputs()).sample
        pipe.disable_lora()
        without = pipe.unet(*_unet_inputs()).sample
    assert torch.allclose(without, base_out, rtol=0, atol=1e-6)  # adapter off: the untouched base model
    assert (with_lora - base_out).abs().max() > 1e-4  # adapter on: the trained model
    # Periodic validation images for the configured prompt (every 2 of the 4 steps).
    assert sorted(p.name for p in (tmp_path / "ckpt" / "validation").iterdir()) == [
        "step-000002.png",
        "step-000004.png",
    ]
    assert summary["with_prior_preservation"] is True


def test_lora_alpha_survives_save_and_load(tmp_path, tiny_sd, one_torch_thread):
    from peft.tuners.lora import LoraLayer

    from s2s.train.methods import LoRA

    config = make_config(lora={"rank": 4, "alpha": 8})
    model = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    method = LoRA(train_config(config, "lora"), subject(config, "toy"))
    method.setup(model.unet, model.text_encoder, model.tokenizer)
    scalings = {m.scaling["default"] for m in model.unet.modules() if isinstance(m, LoraLayer)}
    assert scalings == {8 / 4}  # trained at alpha / r
    # Stands in for training: the adapters' up projections start at zero.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        trained = model.unet(*_unet_inputs()).sample
    method.save(tmp_path, str(tiny_sd), model.unet, model.text_encoder, model.tokenizer)
    # The metadata is written in a stable order (peft's target_modules is a set, ordered by the hash seed).
    from safetensors import safe_open

    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), "pt") as handle:
        adapter = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert adapter["unet.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
    assert adapter["unet.lora_alpha"] == 8

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    with torch.no_grad():
        base = pipe.unet(*_unet_inputs()).sample
        pipe.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors")
        reloaded = pipe.unet(*_unet_inputs()).sample
    effect = (trained - base).abs().max()
    assert effect > 1e-2, float(effect)
    # With alpha lost the reload runs at scale 4/4 instead of 8/4: half the effect.
    assert (reloaded - trained).abs().max() < 1e-5 * effect, float((reloaded - trained).abs().max())


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
        str(tiny_sd), method, model_dir, {"p00": PROMPT}, sampling([7], 4), tmp_path / "samples", 64,
        device="cpu",
    )  # fmt: skip
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


def _hand_loss(pipe, scheduler, folder, texts, seed=0, salt=0, flips=None):
    """The mse of the loop's first micro-batch for one part (instance: salt 0, class: salt 1), computed by
    hand from ``pipe`` on the loop's draws (image order, posterior draw, noise, timestep)."""
    from s2s.train.loop import _batch_draws, _batch_indices

    paths = list_images(folder)
    bs = len(texts)
    idx = _batch_indices(seed, 0, bs, len(paths), salt=salt)
    eps, noise, t = _batch_draws(seed, 0, bs, (4, 32, 32), 1000, salt=salt)
    images = [np.asarray(load_prepared(paths[i], 64), dtype=np.float32) / 127.5 - 1 for i in idx]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    if flips is not None:
        pixels = torch.where(flips.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    with torch.no_grad():
        dist = pipe.vae.encode(pixels).latent_dist
        x0 = (dist.mean + dist.std * eps) * pipe.vae.config.scaling_factor
        abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        ids = pipe.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        pred = pipe.unet(noisy, t, pipe.text_encoder(ids)[0]).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    else:
        target = noise
    return torch.nn.functional.mse_loss(pred, target).item()


def _scheduler(model):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_pretrained(model, subfolder="scheduler")


def test_prior_preservation_loss_is_instance_plus_weighted_class_term(
    tmp_path, tiny_sd, toy_instance, toy_class_images, one_torch_thread
):
    # One step: the logged loss is the base model's (LoRA's up projections start at zero).
    opts = {"max_train_steps": 1, "learning_rate": 1e-2}
    summary = run(
        tmp_path / "w2", "lora", tiny_sd, toy_instance, toy_class_images, prior_loss_weight=2.0, **opts
    )
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    instance = _hand_loss(pipe, _scheduler(tiny_sd), toy_instance, [PROMPT] * 2)
    prior = _hand_loss(pipe, _scheduler(tiny_sd), toy_class_images, ["a photo of a toy"] * 2, salt=1)
    logged_prior = float((tmp_path / "w2" / "model" / "loss.csv").read_text().splitlines()[1].split(",")[2])
    assert logged_prior == pytest.approx(prior, rel=1e-4, abs=2e-6)
    assert summary["final_loss"] == pytest.approx(instance + 2.0 * prior, rel=1e-4)

    # The class term changes the update: with weight 0 the same data trains other weights.
    run(tmp_path / "w0", "lora", tiny_sd, toy_instance, toy_class_images, prior_loss_weight=0.0, **opts)
    w0 = load_file(tmp_path / "w0" / "model" / "pytorch_lora_weights.safetensors")
    w2 = load_file(tmp_path / "w2" / "model" / "pytorch_lora_weights.safetensors")
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)


def test_v_prediction_trains_against_the_velocity(tmp_path, tiny_sd, toy_instance, one_torch_thread):
    import shutil

    model = tmp_path / "sd_v"
    shutil.copytree(tiny_sd, model)
    config_file = model / "scheduler" / "scheduler_config.json"
    scheduler_config = {**json.loads(config_file.read_text()), "prediction_type": "v_prediction"}
    config_file.write_text(json.dumps(scheduler_config))
    summary = run(
        tmp_path, "lora", model, toy_instance, max_train_steps=1, with_prior_preservation=False, seed=1
    )
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    velocity = _hand_loss(pipe, _scheduler(model), toy_instance, [PROMPT] * 2, seed=1)
    epsilon = _hand_loss(pipe, _scheduler(tiny_sd), toy_instance, [PROMPT] * 2, seed=1)
    assert abs(velocity - epsilon) > 1e-2 * velocity  # the two targets are told apart on these draws
    assert summary["final_loss"] == pytest.approx(velocity, rel=1e-4)


def _ti_pipe(tiny_sd, token="sks", init="toy"):
    """The base pipeline with the placeholder added as Textual Inversion starts it (one vector)."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.tokenizer.add_tokens([token])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    emb = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        ids = pipe.tokenizer.convert_tokens_to_ids([token, f"{init}</w>"])
        emb[ids[0]] = emb[ids[1]]
    return pipe


@pytest.mark.parametrize("cache_latents", [True, False])
def test_textual_inversion_trains_on_random_templates_and_flips(
    tmp_path, tiny_sd, toy_instance, cache_latents, one_torch_thread, monkeypatch
):
    from s2s.train import loop
    from s2s.train.methods import OBJECT_TEMPLATES

    encoded = []
    encode = loop.encode_prompt

    def recorded(tokenizer, text_encoder, prompt, device):
        encoded.append(prompt)
        return encode(tokenizer, text_encoder, prompt, device)

    monkeypatch.setattr(loop, "encode_prompt", recorded)
    seed, bs = 6, 4
    summary = run(
        tmp_path, "textual_inversion", tiny_sd, toy_instance, max_train_steps=1, train_batch_size=bs,
        seed=seed, prompt_templates="object", random_flip=True, cache_latents=cache_latents,
    )
    prompt_idx, flips = loop._augment_draws(seed, 0, bs, len(OBJECT_TEMPLATES))
    assert 0 < int(flips.sum()) < bs and len(set(prompt_idx)) > 1  # these draws tell the cases apart
    # The diffusers example's prompts: a template with the placeholder alone (no class noun).
    texts = [OBJECT_TEMPLATES[i].format("sks") for i in prompt_idx]
    assert encoded == [list(dict.fromkeys(texts))]  # one text-encoder call for the micro-batch
    pipe = _ti_pipe(tiny_sd)
    sched = _scheduler(tiny_sd)
    expected = _hand_loss(pipe, sched, toy_instance, texts, seed=seed, flips=flips)
    # Measured: equal to the last digit. On the tiny model at seed 6 the prompt and the flip move this loss
    # by 2.7e-4 and 1.7e-4 (relative), so the bound is 1e-5 and the two checks below make sure of the margin.
    assert summary["final_loss"] == pytest.approx(expected, rel=1e-5)
    assert _hand_loss(pipe, sched, toy_instance, [PROMPT] * bs, seed=seed, flips=flips) != pytest.approx(
        expected, rel=1e-4
    )
    assert _hand_loss(pipe, sched, toy_instance, texts, seed=seed) != pytest.approx(expected, rel=1e-4)


def test_template_and_flip_draws_do_not_depend_on_the_batch_split():
    from s2s.train.loop import _augment_draws

    whole = _augment_draws(5, 1, 4, 27)  # samples 4..7 as one micro-batch
    parts = [_augment_draws(5, m, 1, 27) for m in range(4, 8)]  # the same samples one by one
    assert whole[0] == [p[0][0] for p in parts]
    assert torch.equal(whole[1], torch.cat([p[1] for p in parts]))


def _accumulation_run(tmp, tiny_sd, instance, class_dir, batch, accumulation):
    # adam_epsilon 1 makes AdamW's update proportional to the gradient (|g| << 1), so a wrongly scaled
    # accumulated gradient shows in the weights; clipping is off for the same reason.
    return run(
        tmp, "lora", tiny_sd, instance, class_dir=class_dir, max_train_steps=3, checkpointing_steps=2,
        train_batch_size=batch, gradient_accumulation_steps=accumulation, scale_lr=True, learning_rate=5.0,
        adam_epsilon=1.0, max_grad_norm=1e9, keep_checkpoints=True,
    )


def test_accumulation_of_k_micro_batches_equals_one_batch_of_k_times_b_and_scales_lr(
    tmp_path, tiny_sd, toy_instance, toy_class_images, one_torch_thread
):
    one = _accumulation_run(tmp_path / "one", tiny_sd, toy_instance, toy_class_images, 2, 1)
    acc = _accumulation_run(tmp_path / "acc", tiny_sd, toy_instance, toy_class_images, 1, 2)
    # scale_lr: lr x batch x accumulation x processes, in the summary and in the optimizer itself.
    for folder, summary in (("one", one), ("acc", acc)):
        assert summary["learning_rate"] == pytest.approx(5.0 * 2)
        state = json.loads((tmp_path / folder / "ckpt" / "checkpoint-2" / "state.json").read_text())
        assert state["param_groups"][0]["lr"] == pytest.approx(5.0 * 2)
    name = "pytorch_lora_weights.safetensors"
    a, b = load_file(tmp_path / "one" / "model" / name), load_file(tmp_path / "acc" / "model" / name)
    moved = max(a[k].abs().max() for k in a if "lora_B" in k or "lora.up" in k)  # B starts at zero
    apart = max((a[k] - b[k]).abs().max() for k in a)
    # Measured: moved 6.6e-2, apart 8.6e-8 (float rounding of batch-2 vs batch-1 convolutions). The bound
    # is about 100x that noise; an accumulated gradient scaled by k puts the weights 6.5e-2 apart.
    assert moved > 1e-2, float(moved)
    assert apart < 1e-5, float(apart)
    one_csv = (tmp_path / "one" / "model" / "loss.csv").read_text().splitlines()[1:]
    acc_csv = (tmp_path / "acc" / "model" / "loss.csv").read_text().splitlines()[1:]
    for x, y in zip(one_csv, acc_csv, strict=True):
        assert float(x.split(",")[1]) == pytest.approx(float(y.split(",")[1]), abs=2e-6)


def test_dreambooth_trains_the_text_encoder_when_asked(tmp_path, tiny_sd, toy_instance, monkeypatch):
    from transformers.models.clip import modeling_clip

    calls = []
    forward = modeling_clip.CLIPMLP.forward

    def counted(self, *args, **kwargs):
        calls.append(self.training)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_clip.CLIPMLP, "forward", counted)
    run(
        tmp_path, "dreambooth", tiny_sd, toy_instance, max_train_steps=2, learning_rate=1e-3,
        with_prior_preservation=False, train_text_encoder=True, gradient_checkpointing=True,
    )
    # Gradient checkpointing recomputes each of the 5 layers in the backward pass: 2 calls per layer and
    # step, in train mode (transformers checkpoints only then).
    assert len(calls) == 2 * 5 * 2 and all(calls)
    base = load_file(tiny_sd / "text_encoder" / "model.safetensors")
    saved = load_file(tmp_path / "model" / "text_encoder" / "model.safetensors")
    assert saved.keys() == base.keys()
    assert max((saved[k] - base[k]).abs().max() for k in base) > 1e-4  # the text encoder trained
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model", safety_checker=None)
    loaded = pipe.text_encoder.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_bf16_training_runs_in_reduced_precision_with_fp32_adapters(tmp_path, tiny_sd, toy_instance):
    opts = {"max_train_steps": 2, "learning_rate": 1e-2, "with_prior_preservation": False}
    fp32 = run(tmp_path / "fp32", "lora", tiny_sd, toy_instance, **opts)
    bf16 = run(tmp_path / "bf16", "lora", tiny_sd, toy_instance, mixed_precision="bf16", **opts)
    assert bf16["mixed_precision"] == "bf16"
    first = [float((tmp_path / d / "model" / "loss.csv").read_text().splitlines()[1].split(",")[1])
             for d in ("fp32", "bf16")]
    # bf16 keeps 8 mantissa bits: the same first step's loss differs in the 3rd-4th digit, not more.
    assert first[0] != first[1] and first[1] == pytest.approx(first[0], rel=3e-2)
    state = load_file(tmp_path / "bf16" / "model" / "pytorch_lora_weights.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())
    assert fp32["mixed_precision"] == "no"


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_resume_after_interruption_gives_identical_weights(
    tmp_path, tiny_sd, toy_instance, toy_class_images, method
):
    opts = {"max_train_steps": 6, "checkpointing_steps": 3, "learning_rate": 1e-2}
    if method == "lora":
        opts["dropout"] = 0.1  # dropout draws from the global RNG, seeded per micro-batch
    else:
        opts.update(prompt_templates="object", random_flip=True)  # drawn per sample position too
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


def test_each_training_seed_draws_its_own_stream_and_seed_zero_keeps_its_draws():
    # torch's CPU generator keeps the low 32 bits of a seed: a training seed that only changes higher bits
    # gives every seed the draws of seed 0 (the study's two seeds then differ in image order alone).
    from s2s.train.loop import _augment_draws, _batch_draws, stream_seed

    shape = (4, 8, 8)
    draws = {seed: _batch_draws(seed, 0, 6, shape, 1000) for seed in (0, 1, 2)}
    for a, b in ((0, 1), (0, 2), (1, 2)):
        for part_a, part_b in zip(draws[a], draws[b]):
            assert not torch.equal(part_a, part_b), (a, b)
    flips = {seed: _augment_draws(seed, 0, 32, 3)[1] for seed in (0, 1)}
    assert not torch.equal(flips[0], flips[1])
    # Seed 0's streams are those the committed results were made with: position p, stream s -> p * 4 + s.
    for pos in range(6):
        gen = torch.Generator().manual_seed(pos * 4)
        assert torch.equal(draws[0][0][pos], torch.randn(shape, generator=gen))
    # The dropout stream (salt 3, torch's global generator) differs by seed as well.
    firsts = []
    for seed in (0, 1, 2):
        torch.manual_seed(stream_seed(seed, 5, 3))
        firsts.append(torch.rand(4))
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])
