"""Inversion of photos on the tiny SD model: DDIM, null-text, negative-prompt and direct inversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from s2s.edit.inversion import invert, load_image, model_resolution
from s2s.edit.p2p import generate_edit
from s2s.edit.processors import count_unet_calls

STEPS = 5
PROMPT = "a dog on the beach"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


def draw_photo(size=(96, 64)) -> Image.Image:
    """A synthetic 'photo': sky, sand and a yellow blob, not square so cropping matters."""
    image = Image.new("RGB", size, (40, 120, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, size[1] * 3 // 4, size[0], size[1]), fill=(225, 205, 150))
    draw.ellipse((size[0] // 2 - 18, 12, size[0] // 2 + 14, 44), fill=(235, 190, 40))
    return image


@pytest.fixture(scope="module")
def photo(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    draw_photo().convert("RGBA").save(path)
    return load_image(path, model_resolution(pipe))


def test_load_image_crops_centre_to_model_resolution(tmp_path):
    path = tmp_path / "wide.png"
    image = Image.new("L", (120, 60), 0)
    ImageDraw.Draw(image).rectangle((30, 0, 89, 59), fill=255)  # the centre square is white, the sides black
    image.save(path)
    loaded = load_image(path, 64)
    assert loaded.mode == "RGB" and loaded.size == (64, 64)
    assert min(loaded.getpixel((x, y))[0] for x in (2, 32, 61) for y in (2, 32, 61)) > 200


def _latent_error(pipe, inversion, guidance=7.5):
    result = generate_edit(
        pipe, PROMPT, PROMPT, None, inversion=inversion, num_inference_steps=STEPS, guidance_scale=guidance
    )
    return F.mse_loss(result.latents[:1], inversion.image_latent).item(), result


def test_null_text_reconstructs_better_than_ddim(pipe, photo):
    ddim = invert(pipe, photo, PROMPT, "ddim", STEPS, 7.5)
    null = invert(pipe, photo, PROMPT, "null_text", STEPS, 7.5, inner_steps=10)
    assert len(null.null_embeddings) == STEPS and not torch.equal(
        null.null_embeddings[0], null.null_embeddings[-1]
    )
    ddim_error, _ = _latent_error(pipe, ddim)
    null_error, _ = _latent_error(pipe, null)
    assert null_error < 0.95 * ddim_error
    assert ddim.unet_calls == STEPS
    assert 3 * STEPS < null.unet_calls <= STEPS * (3 + 10)  # inversion + cond + Adam steps + update per step
    assert all(p.requires_grad for p in pipe.unet.parameters())  # the weights' flags are restored


def test_null_text_step_aims_at_the_next_inversion_latent(pipe, photo, monkeypatch):
    """Mokady et al.'s Alg. 1: at step i the loss is || guided DDIM step from z_t - z*_{t-1} ||^2, with
    z*_{t-1} the inversion's latent one step less noisy. On the tiny random model the reconstruction barely
    tells the right target from its neighbour, so the loss's arguments are observed (its value unchanged)."""
    from diffusers import DDIMScheduler

    import s2s.edit.inversion as inversion_module

    calls, mse = [], F.mse_loss

    def observed(prediction, target, *args, **kwargs):
        calls.append((prediction.detach().clone(), target.detach().clone()))
        return mse(prediction, target, *args, **kwargs)

    monkeypatch.setattr(inversion_module.F, "mse_loss", observed)
    steps, inner = 3, 2
    null = invert(pipe, photo, PROMPT, "null_text", steps, 7.5, inner_steps=inner)
    monkeypatch.undo()
    assert len(calls) == steps * inner  # no early stop at these losses
    for i in range(steps):
        assert torch.equal(calls[i * inner][1], null.trajectory[steps - i - 1]), i
    # the first prediction by hand: the guided DDIM step from the noise with the prompt's own null
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    with torch.no_grad():
        eps_u = pipe.unet(null.noise, t, uncond).sample
        eps_c = pipe.unet(null.noise, t, cond).sample
    expected = scheduler.step(eps_u + 7.5 * (eps_c - eps_u), t, null.noise).prev_sample
    assert torch.allclose(calls[0][0], expected, atol=1e-5)


def test_null_text_embeddings_change_every_step(pipe, photo):
    """The edit's source branch is the guided DDIM loop with null embedding i at step i."""
    null = invert(pipe, photo, PROMPT, "null_text", STEPS, 7.5, inner_steps=2)
    _, result = _latent_error(pipe, null)
    cond = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    pipe.scheduler.set_timesteps(STEPS)
    latent = null.noise
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            eps_u, eps_c = pipe.unet(
                latent.expand(2, -1, -1, -1), t, torch.cat([null.null_embeddings[i], cond])
            ).sample
            latent = pipe.scheduler.step(eps_u + 7.5 * (eps_c - eps_u), t, latent).prev_sample
    # batch 4 in the pipeline vs batch 2 here: float reordering drifts ~1e-4 over the steps
    assert torch.allclose(result.latents[0], latent[0], atol=1e-3)


def test_negative_prompt_inversion_is_one_inversion_plus_one_generation(pipe, photo):
    with count_unet_calls(pipe.unet) as count:
        inversion = invert(pipe, photo, PROMPT, "negative_prompt", STEPS, 7.5)
        result = generate_edit(
            pipe,
            PROMPT,
            "a horse on the beach",
            {"edit": "replace"},
            inversion=inversion,
            num_inference_steps=STEPS,
        )
    assert count.calls == 2 * STEPS
    assert inversion.unet_calls == STEPS and result.unet_calls == STEPS
    ddim = invert(pipe, photo, PROMPT, "ddim", STEPS, 7.5)
    assert torch.equal(ddim.noise, inversion.noise)  # same inversion; only the sampling's null prompt differs
    assert _latent_error(pipe, inversion)[0] < _latent_error(pipe, ddim)[0]


def test_negative_prompt_inversion_samples_with_the_source_prompt_as_unconditional(pipe, photo):
    """Miyake et al.: the unconditional ("negative") embedding of every sampling step, for both branches
    of an edit, is the source prompt's own embedding (nothing optimised); DDIM inversion samples with the
    empty prompt's."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    cond = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0][0]
    empty = pipe.encode_prompt("", "cpu", 1, False)[0][0]
    for method, uncond in (("negative_prompt", cond), ("ddim", empty)):
        inversion = invert(pipe, photo, PROMPT, method, STEPS, 7.5)
        seen.clear()
        handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            generate_edit(pipe, PROMPT, "a horse on the beach", {"edit": "replace"}, inversion=inversion,
                          num_inference_steps=STEPS)  # fmt: skip
        finally:
            handle.remove()
        assert len(seen) == STEPS and all(states.shape[0] == 4 for states in seen)  # [uncond x 2, cond x 2]
        for states in seen:
            assert torch.equal(states[0], uncond) and torch.equal(states[1], uncond), method
            assert torch.equal(states[2], cond), method


def test_direct_inversion_puts_source_back_on_the_trajectory(pipe, photo):
    inversion = invert(pipe, photo, PROMPT, "direct", STEPS, 7.5)
    error, result = _latent_error(pipe, inversion)
    assert error == 0.0
    assert not torch.equal(result.latents[1], result.latents[0])  # the target branch is not corrected


def test_direct_inversion_source_branch_is_the_inversion_latent_at_every_step(pipe, photo):
    """Ju et al.'s direct inversion: after every sampling step the source branch is exactly the DDIM
    inversion's latent of that step, also under a local-blended edit; no optimisation, so its UNet calls are
    DDIM inversion's (one per step) plus the edit's (one batched call per step)."""
    from s2s.edit.bench_metrics import gt_psnr
    from s2s.edit.p2p import decode_latents

    with count_unet_calls(pipe.unet) as count:
        inversion = invert(pipe, photo, PROMPT, "direct", STEPS, 7.5)
        seen = []
        result = generate_edit(
            pipe,
            PROMPT,
            "a horse on the beach",
            {"edit": "replace", "blend_words": ["dog", "horse"]},
            inversion=inversion,
            num_inference_steps=STEPS,
            on_step=lambda i, x: seen.append((i, x.detach().clone())),
        )
    assert [i for i, _ in seen] == list(range(STEPS))
    for i, x in seen:
        assert torch.equal(x[0], inversion.trajectory[STEPS - 1 - i][0]), i
    assert torch.equal(result.latents[0], inversion.image_latent[0])
    assert inversion.unet_calls == STEPS and result.unet_calls == STEPS and count.calls == 2 * STEPS
    assert inversion.seconds > 0 and inversion.null_embeddings is None
    ddim = invert(pipe, photo, PROMPT, "ddim", STEPS, 7.5)
    assert torch.equal(ddim.noise, inversion.noise)
    ddim_error, ddim_result = _latent_error(pipe, ddim)
    direct_error, direct_result = _latent_error(pipe, inversion)
    assert direct_error <= ddim_error and direct_error == 0.0
    # in pixels too: the source branch decodes to the photo's VAE reconstruction, DDIM's only near it
    vae_only = decode_latents(pipe, inversion.image_latent)[0]
    assert gt_psnr(direct_result.source_image, vae_only) >= gt_psnr(ddim_result.source_image, vae_only)


def test_inversion_needs_matching_steps(pipe, photo):
    inversion = invert(pipe, photo, PROMPT, "ddim", STEPS, 7.5)
    with pytest.raises(ValueError, match="same num_inference_steps"):
        generate_edit(pipe, PROMPT, PROMPT, None, inversion=inversion, num_inference_steps=STEPS + 1)


def test_null_text_is_optimised_in_fp32_in_a_bf16_pipeline(pipe, photo):
    """A bf16 pipeline, even under bf16 autocast, optimises its first null embedding exactly as an fp32
    pipeline with the same (bf16-rounded) weights and inputs does, and gives its UNet back unchanged. In
    bf16, gradients of ~1e-6 carry 8 bits: Adam's first steps follow their signs, which rounding flips."""
    import copy

    from s2s.edit.inversion import ddim_invert, encode_image, optimise_null_text

    half = copy.deepcopy(pipe.unet).to(torch.bfloat16)
    full = copy.deepcopy(half).float()  # the same weights, in fp32
    cond, uncond = (e.to(torch.bfloat16) for e in pipe.encode_prompt(PROMPT, "cpu", 1, True))
    with torch.no_grad():
        trajectory = ddim_invert(pipe, encode_image(pipe, photo), cond.float(), 3)
    trajectory = [x.to(torch.bfloat16) for x in trajectory]
    before = {name: t.clone() for name, t in half.state_dict().items()}
    inputs = {
        torch.bfloat16: (half, trajectory, cond, uncond),
        torch.float32: (full, [x.float() for x in trajectory], cond.float(), uncond.float()),
    }
    nulls = {}
    for dtype, (unet, traj, c, u) in inputs.items():
        view = copy.copy(pipe)  # the same pipeline with another UNet
        view.unet = unet
        # the bf16 run under autocast, as a run in emulated mixed precision would call it
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            nulls[dtype] = optimise_null_text(view, traj, c, u, 7.5, inner_steps=3)
    got, ref = nulls[torch.bfloat16][0], nulls[torch.float32][0]
    assert got.dtype == torch.bfloat16 and (ref - uncond.float()).abs().max() > 1e-2  # it did move
    differ = got.ne(ref.to(torch.bfloat16)).float().mean().item()
    assert differ < 0.01, f"{differ:.1%} of the first null embedding differs from the fp32 optimisation"
    assert half.dtype == torch.bfloat16
    assert all(torch.equal(before[name], t) for name, t in half.state_dict().items())
