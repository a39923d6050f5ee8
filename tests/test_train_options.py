"""The loss options of every method (issue 22): min-SNR weighting (snr_gamma) against its formula for
epsilon and v-prediction and in the first step's loss (instance term only, as diffusers' train_dreambooth.py),
offset noise (noise_offset) as a per-channel constant, and the held-out validation loss (validation_split):
config errors, photos never trained on, fixed draws, and its column in loss.csv for every method."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from s2s import plots
from s2s.config import check_config, held_out_count, subject, train_config
from s2s.data import list_images, load_prepared
from s2s.io import S2SError
from s2s.train.heldout import HeldOutLoss, held_out_timesteps, split_photos
from s2s.train.loop import (
    _batch_draws,
    _batch_indices,
    _loss_csv,
    _make_accelerator,
    _pixels,
    encode_latent_distributions,
    encode_prompt,
    train,
)
from s2s.train.objective import snr_weights

PROMPT = "a photo of sks toy"
CLASS_PROMPT = "a photo of a toy"
WEIGHT_FILES = {
    "lora": "pytorch_lora_weights.safetensors",
    "textual_inversion": "learned_embeds.safetensors",
    "dreambooth": "unet/diffusion_pytorch_model.safetensors",
}


def make_config(**training):
    return check_config({"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "training": training})


def run(tmp: Path, method: str, model, instance, class_dir=None, stop_after=None, **options):
    options.setdefault("max_train_steps", 1)
    config = make_config(**{method: options})
    return train(
        train_config(config, method),
        subject(config, "toy"),
        str(model),
        instance,
        tmp / "model",
        tmp / "ckpt",
        64,
        PROMPT,
        class_dir=class_dir,
        class_prompt=CLASS_PROMPT,
        device="cpu",
        stop_after_steps=stop_after,
    )


def _v_prediction_model(tiny_sd, folder: Path) -> Path:
    shutil.copytree(tiny_sd, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(
        json.dumps({**json.loads(config_file.read_text()), "prediction_type": "v_prediction"})
    )
    return folder


def _hand_snr(scheduler, timesteps) -> torch.Tensor:
    abar = scheduler.alphas_cumprod[timesteps].double()
    return abar / (1 - abar)


def _per_sample_errors(pipe, scheduler, folder, text, seed=0, salt=0, bs=2, noise_offset=0.0):
    """Each sample's mean squared error in the loop's first micro-batch (instance: salt 0, class: salt 1),
    computed by hand from ``pipe`` on the loop's draws, and the samples' timesteps."""
    paths = list_images(folder)
    idx = _batch_indices(seed, 0, bs, len(paths), salt=salt)
    eps, noise, t = _batch_draws(seed, 0, bs, (4, 32, 32), 1000, salt=salt, noise_offset=noise_offset)
    images = [np.asarray(load_prepared(paths[i], 64), dtype=np.float32) / 127.5 - 1 for i in idx]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        dist = pipe.vae.encode(pixels).latent_dist
        x0 = (dist.mean + dist.std * eps) * pipe.vae.config.scaling_factor
        abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        ids = pipe.tokenizer([text] * bs, padding="max_length", max_length=77, return_tensors="pt").input_ids
        pred = pipe.unet(noisy, t, pipe.text_encoder(ids)[0]).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    else:
        target = noise
    return ((pred - target) ** 2).mean(dim=(1, 2, 3)).double(), t


# ---------------------------------------------------------------- snr_gamma


def test_snr_weights_follow_the_min_snr_formula_for_epsilon_and_v_prediction(tiny_sd):
    epsilon = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    velocity = DDPMScheduler.from_config(epsilon.config, prediction_type="v_prediction")
    assert epsilon.config.prediction_type == "epsilon"
    t = torch.arange(0, 1000, 7)
    gamma = 5.0
    snr = _hand_snr(epsilon, t)
    assert (snr > gamma).any() and (snr < gamma).any()  # both sides of the clip are tested
    expected_eps = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr
    expected_v = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / (snr + 1)
    got_eps = snr_weights(epsilon, t, gamma).double()
    got_v = snr_weights(velocity, t, gamma).double()
    torch.testing.assert_close(got_eps, expected_eps, rtol=1e-5, atol=0)
    torch.testing.assert_close(got_v, expected_v, rtol=1e-5, atol=0)
    # Epsilon: weight 1 below gamma (noisy steps untouched), gamma / SNR above it; v: never 1.
    assert torch.all(got_eps[snr < gamma] == 1) and torch.all(got_eps[snr > gamma] < 1)
    assert torch.all(got_v < got_eps)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_first_step_loss_weights_the_instance_term_only(
    tmp_path, tiny_sd, toy_instance, toy_class_images, one_torch_thread, prediction
):
    # One LoRA step: the logged loss is the base model's (the adapters' up projections start at zero).
    model = tiny_sd if prediction == "epsilon" else _v_prediction_model(tiny_sd, tmp_path / "sd_v")
    # gamma 0.25 falls between the SNRs of this step's timesteps (instance 415 and 581: SNR 0.67 and 0.22;
    # class 893 and 538: 0.015 and 0.30), so every weighting below gives another loss.
    gamma, weight = 0.25, 3.0
    opts = {"learning_rate": 1e-2, "prior_loss_weight": weight, "seed": 3}
    summary = run(tmp_path / "snr", "lora", model, toy_instance, toy_class_images, snr_gamma=gamma, **opts)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    errors, t = _per_sample_errors(pipe, scheduler, toy_instance, PROMPT, seed=3)
    prior_errors, t_prior = _per_sample_errors(
        pipe, scheduler, toy_class_images, CLASS_PROMPT, seed=3, salt=1
    )

    def min_snr(timesteps):
        snr = _hand_snr(scheduler, timesteps)
        return torch.clamp(snr, max=gamma) / (snr if prediction == "epsilon" else snr + 1)

    weights = min_snr(t)
    assert weights.max() - weights.min() > 0.02, weights  # these draws tell the samples' weights apart
    expected = (errors * weights).mean() + weight * prior_errors.mean()
    assert summary["final_loss"] == pytest.approx(float(expected), rel=1e-4)
    # Weighting the prior term too, no weighting, or the class samples' weights would be far off:
    for other in (
        (errors * weights).mean() + weight * (prior_errors * min_snr(t_prior)).mean(),
        errors.mean() + weight * prior_errors.mean(),
        (errors * min_snr(t_prior)).mean() + weight * prior_errors.mean(),
    ):
        assert float(other) != pytest.approx(summary["final_loss"], rel=1e-3)
    logged_prior = float((tmp_path / "snr" / "model" / "loss.csv").read_text().splitlines()[1].split(",")[2])
    assert logged_prior == pytest.approx(float(prior_errors.mean()), rel=1e-4, abs=2e-6)


def test_a_run_with_snr_gamma_trains_other_weights_than_one_without(
    tmp_path, tiny_sd, toy_instance, one_torch_thread
):
    opts = {"learning_rate": 1e-2, "max_train_steps": 2, "with_prior_preservation": False}
    run(tmp_path / "plain", "lora", tiny_sd, toy_instance, **opts)
    run(tmp_path / "snr", "lora", tiny_sd, toy_instance, snr_gamma=0.3, **opts)
    plain = load_file(tmp_path / "plain" / "model" / WEIGHT_FILES["lora"])
    weighted = load_file(tmp_path / "snr" / "model" / WEIGHT_FILES["lora"])
    assert max((plain[k] - weighted[k]).abs().max() for k in plain) > 1e-5


# ---------------------------------------------------------------- noise_offset


def test_noise_offset_adds_a_per_channel_constant_to_the_noise():
    shape = (4, 16, 16)
    for salt in (0, 1):  # instance and class draws alike
        eps0, noise0, t0 = _batch_draws(7, 3, 64, shape, 1000, salt=salt)
        eps1, noise1, t1 = _batch_draws(7, 3, 64, shape, 1000, salt=salt, noise_offset=0.1)
        _, noise3, _ = _batch_draws(7, 3, 64, shape, 1000, salt=salt, noise_offset=0.3)
        # The offset changes only the noise: the posterior draws and timesteps are a plain run's.
        assert torch.equal(eps0, eps1) and torch.equal(t0, t1)
        offset = noise1 - noise0
        per_channel = offset[:, :, :1, :1]
        torch.testing.assert_close(
            offset, per_channel.expand_as(offset), rtol=0, atol=1e-6
        )  # constant over H, W
        assert per_channel.flatten(1).std(dim=1).min() > 0  # differs between channels
        assert per_channel[:, 0].std() > 0  # and between samples
        torch.testing.assert_close((noise3 - noise0) / 0.3, offset / 0.1, rtol=0, atol=1e-5)  # scales with it
        # noise_offset x a standard normal draw per (sample, channel), as diffusers' randn(b, c, 1, 1).
        assert (per_channel / 0.1).std().item() == pytest.approx(1.0, abs=0.15)
        assert abs((per_channel / 0.1).mean().item()) < 0.2


def test_noise_offset_reaches_the_training_loss(tmp_path, tiny_sd, toy_instance, one_torch_thread):
    opts = {"learning_rate": 1e-2, "with_prior_preservation": False, "seed": 2}
    summary = run(tmp_path, "lora", tiny_sd, toy_instance, noise_offset=0.5, **opts)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    scheduler = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    with_offset, _ = _per_sample_errors(pipe, scheduler, toy_instance, PROMPT, seed=2, noise_offset=0.5)
    without, _ = _per_sample_errors(pipe, scheduler, toy_instance, PROMPT, seed=2)
    assert summary["final_loss"] == pytest.approx(float(with_offset.mean()), rel=1e-4)
    assert float(without.mean()) != pytest.approx(float(with_offset.mean()), rel=1e-3)


# ---------------------------------------------------------------- validation_split


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        (
            {"validation_split": 0.05},
            "config key training.validation_split: 0.05 of subject toy's 8 photos holds out none",
        ),
        (
            {"validation_split": 0.95},
            "training.validation_split: 0.95 of subject toy's 8 photos holds out all",
        ),
        ({"lora": {"validation_split": 0.94}}, "config key training.lora.validation_split: 0.94"),
        ({"validation_split": 1.0}, "config key training.validation_split: 1.0 is greater than or equal"),
    ],
)
def test_a_split_that_leaves_no_photo_on_either_side_is_a_config_error(training, expected):
    with pytest.raises(S2SError) as info:
        make_config(**training)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_split_is_checked_against_a_photo_folder_too(tmp_path):
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    raw = {
        "subjects": {"dog": {"images": str(tmp_path), "class": "dog"}},
        "training": {"validation_split": 0.09},
    }
    with pytest.raises(S2SError, match="0.09 of subject dog's 5 photos holds out none; set at least 0.2"):
        check_config(raw)
    raw["training"]["validation_split"] = 0.2
    assert train_config(check_config(raw), "lora").validation_split == 0.2
    assert train_config(make_config(), "dreambooth").validation_split == 0  # off by default


def test_held_out_photos_are_a_seeded_part_of_the_folder_never_the_training_set():
    chosen = set()
    for n in (2, 5, 8, 20):
        paths = [Path(f"{i:02d}.png") for i in range(n)]
        for split in (0.25, 0.5):
            for seed in range(6):
                train_part, held = split_photos(paths, split, seed, "training.validation_split", "toy")
                assert len(held) == held_out_count(n, split) >= 1 and train_part
                assert not set(train_part) & set(held) and sorted(train_part + held) == paths
                assert split_photos(paths, split, seed, "k", "toy") == (train_part, held)  # the seed decides
                if n == 8 and split == 0.25:
                    chosen.add(tuple(held))
    assert len(chosen) > 3  # different seeds hold out different photos
    assert split_photos(paths, 0.0, 0, "k", "toy") == (paths, [])


def test_training_never_sees_the_held_out_photos(tmp_path, tiny_sd, toy_instance, toy_class_images):
    # The held-out photos replaced by other images: the same training (weights, losses), another
    # held-out loss.
    opts = {"learning_rate": 1e-2, "max_train_steps": 2, "validation_split": 0.25, "seed": 1}
    opts["with_prior_preservation"] = False
    _, held = split_photos(list_images(toy_instance), 0.25, 1, "k", "toy")
    assert len(held) == 2
    other = tmp_path / "other_instance"
    shutil.copytree(toy_instance, other)
    for path, replacement in zip(held, list_images(toy_class_images)):
        shutil.copy(replacement, other / path.name)
    first = run(tmp_path / "a", "lora", tiny_sd, toy_instance, **opts)
    second = run(tmp_path / "b", "lora", tiny_sd, other, **opts)
    assert first["held_out_images"] == second["held_out_images"] == [p.name for p in held]
    a = load_file(tmp_path / "a" / "model" / WEIGHT_FILES["lora"])
    b = load_file(tmp_path / "b" / "model" / WEIGHT_FILES["lora"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [(tmp_path / d / "model" / "loss.csv").read_text().splitlines()[1:] for d in "ab"]
    assert [r.split(",")[1] for r in rows[0]] == [r.split(",")[1] for r in rows[1]]
    # On the tiny random model the photo moves the loss little (1e-4), but an equal input gives equal bits.
    assert first["final_validation_loss"] != second["final_validation_loss"]


def _held_out_loss(pipe, scheduler, instance, held_paths, cfg, text=None):
    mean, std = encode_latent_distributions(pipe.vae, _pixels(held_paths, 64))
    return HeldOutLoss(mean, std, pipe.vae.config.scaling_factor, PROMPT, scheduler, cfg, text=text)


def test_held_out_loss_is_fixed_for_fixed_weights_and_moves_with_them(
    tiny_sd, toy_instance, one_torch_thread
):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    scheduler = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    cfg = train_config(make_config(validation_split=0.25, train_batch_size=3), "lora")
    _, held = split_photos(list_images(toy_instance), 0.25, cfg.seed, "k", "toy")
    accelerator = _make_accelerator("no", torch.device("cpu"))

    def value(loss):
        return loss(accelerator, pipe.unet, pipe.text_encoder, pipe.tokenizer, torch.float32)

    held_out = _held_out_loss(pipe, scheduler, toy_instance, held, cfg)
    assert len(held_out) == 2 * 4 and held_out.timesteps.tolist() == [200, 400, 600, 800] * 2
    assert held_out_timesteps(1000).tolist() == [200, 400, 600, 800]
    pipe.unet.train()  # the loss is taken in eval mode and the mode restored
    first = value(held_out)
    assert value(held_out) == first and pipe.unet.training
    assert value(_held_out_loss(pipe, scheduler, toy_instance, held, cfg)) == first  # same seed, same draws
    text = encode_prompt(pipe.tokenizer, pipe.text_encoder, PROMPT, "cpu")
    assert value(_held_out_loss(pipe, scheduler, toy_instance, held, cfg, text=text)) == pytest.approx(first)
    other_seed = train_config(make_config(validation_split=0.25, seed=5), "lora")
    assert value(_held_out_loss(pipe, scheduler, toy_instance, held, other_seed)) != pytest.approx(
        first, rel=1e-4
    )
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(1.05)
    assert value(held_out) != pytest.approx(first, rel=1e-4)


def _final_held_out_loss(method, model_dir, tiny_sd, toy_instance, cfg):
    """The held-out loss of a saved model, loaded the plain diffusers way."""
    if method == "dreambooth":
        pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
        if method == "lora":
            pipe.load_lora_weights(str(model_dir), weight_name=WEIGHT_FILES["lora"])
        else:
            pipe.load_textual_inversion(str(model_dir / WEIGHT_FILES["textual_inversion"]))
    scheduler = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    _, held = split_photos(list_images(toy_instance), cfg.validation_split, cfg.seed, "k", "toy")
    loss = _held_out_loss(pipe, scheduler, toy_instance, held, cfg)
    accelerator = _make_accelerator("no", torch.device("cpu"))
    return loss(accelerator, pipe.unet, pipe.text_encoder, pipe.tokenizer, torch.float32)


@pytest.mark.parametrize("method", ["textual_inversion", "dreambooth", "lora"])
def test_loss_csv_holds_the_held_out_loss_at_each_checkpoint(
    tmp_path, tiny_sd, toy_instance, toy_class_images, method
):
    lr = {"textual_inversion": 5e-2, "dreambooth": 1e-3, "lora": 1e-2}[method]
    opts = {
        "learning_rate": lr, "max_train_steps": 5, "checkpointing_steps": 2, "validation_split": 0.25,
        "snr_gamma": 5.0, "noise_offset": 0.1,
    }  # fmt: skip
    summary = run(tmp_path, method, tiny_sd, toy_instance, toy_class_images, **opts)
    lines = (tmp_path / "model" / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,prior_loss,validation_loss"
    held = {int(r.split(",")[0]): r.split(",")[3] for r in lines[1:]}
    assert [s for s, v in held.items() if v] == [2, 4, 5]  # every checkpoint, the last step's included
    values = [float(held[s]) for s in (2, 4, 5)]
    assert len(set(values)) == 3  # the weights moved between checkpoints
    assert summary["final_validation_loss"] == pytest.approx(values[-1], abs=1e-6)
    assert summary["held_out_images"] and len(summary["held_out_images"]) == 2
    # The logged value is the held-out loss of the saved model, recomputed independently of the loop.
    cfg = train_config(make_config(**{method: opts}), method)
    final = _final_held_out_loss(method, tmp_path / "model", tiny_sd, toy_instance, cfg)
    assert final == pytest.approx(values[-1], rel=1e-4)


def test_held_out_losses_survive_a_resume(tmp_path, tiny_sd, toy_instance, one_torch_thread):
    opts = {"learning_rate": 5e-2, "max_train_steps": 4, "checkpointing_steps": 2, "validation_split": 0.25}
    run(tmp_path / "straight", "textual_inversion", tiny_sd, toy_instance, **opts)
    run(tmp_path / "resumed", "textual_inversion", tiny_sd, toy_instance, stop_after=3, **opts)
    summary = run(tmp_path / "resumed", "textual_inversion", tiny_sd, toy_instance, **opts)
    assert summary["resumed_from_step"] == 2
    straight, resumed = ((tmp_path / d / "model" / "loss.csv").read_text() for d in ("straight", "resumed"))
    assert resumed == straight and straight.splitlines()[2].split(",")[3]  # step 2's held-out loss is kept


def test_loss_curves_draw_the_held_out_loss_beside_the_training_loss(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig))
    losses = [(s, 1.0 / s, 0.0) for s in range(1, 7)]
    (tmp_path / "loss.csv").write_text(_loss_csv(losses, {3: 0.4, 6: 0.5}))
    columns = plots.read_loss_csv(tmp_path / "loss.csv")
    assert np.isnan(columns["validation_loss"][[0, 1, 3, 4]]).all()
    plots.loss_curves({"lora": columns}, tmp_path / "loss.png")
    lines = {line.get_label(): line for line in drawn[0].axes[0].get_lines()}
    held = lines["held-out photos (per checkpoint)"]
    assert list(held.get_xdata()) == [3, 6] and list(held.get_ydata()) == [0.4, 0.5]
    assert "loss (per step)" in lines
