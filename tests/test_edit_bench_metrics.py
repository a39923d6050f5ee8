"""PnPInversion's edit-benchmark conventions (s2s.edit.bench_metrics) on small hand-made images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from s2s.edit import bench_metrics as bm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rgb(array) -> Image.Image:
    return Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB")


def grey(size: int, value: int) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def left_half_mask(size: int) -> Image.Image:
    """255 (may change) on the left half of the columns."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255
    return Image.fromarray(mask, "L")


def test_background_psnr_and_mse_by_hand():
    """8x8, mask = left half. Inside the mask everything changes (ignored); outside one pixel changes by
    51/255 = 0.2 in all three channels. Both images times (1 - mask), then over all 8*8*3 values:
    MSE = 3 * 0.2^2 / 192 = 0.000625, PSNR = 10 log10(1 / 0.000625) = 32.04 dB."""
    source = grey(8, 0)
    edited = source.copy()
    edited[:, :4] = 250  # inside the mask
    edited[2, 6] = 51  # outside
    out = bm.background_metrics(rgb(source), rgb(edited), left_half_mask(8))
    assert out["background_mse"] == pytest.approx(0.000625, rel=1e-9)
    assert out["background_psnr"] == pytest.approx(10 * math.log10(1 / 0.000625), rel=1e-6)
    # over the 32 kept pixels only the MSE is twice as large: PSNR lower by 10 log10(64 / 32)
    kept_only = 10 * math.log10(1 / (3 * 0.04 / 96))
    assert out["background_psnr"] - kept_only == pytest.approx(10 * math.log10(2), rel=1e-6)


def test_background_ssim_is_one_when_only_the_masked_region_changes():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (16, 16, 3))
    edited = source.copy()
    edited[:, :8] = rng.integers(0, 256, (16, 8, 3))
    out = bm.background_metrics(rgb(source), rgb(edited), left_half_mask(16))
    assert out["background_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert out["background_psnr"] == bm.MAX_PSNR and out["background_mse"] == 0.0
    edited[3, 12] = 255 - source[3, 12]  # now one background pixel changes
    changed = bm.background_metrics(rgb(source), rgb(edited), left_half_mask(16))
    assert changed["background_ssim"] < 0.999 and changed["background_mse"] > 0


def test_background_of_a_full_mask_is_none_and_sizes_must_match():
    full = Image.new("L", (8, 8), 255)
    out = bm.background_metrics(rgb(grey(8, 0)), rgb(grey(8, 9)), full)
    assert out == {"background_psnr": None, "background_ssim": None, "background_mse": None}
    with pytest.raises(ValueError, match="mask is 4x4"):
        bm.background_metrics(rgb(grey(8, 0)), rgb(grey(8, 0)), Image.new("L", (4, 4), 0))


def test_gt_psnr_whole_and_in_mask_by_hand():
    """Edit vs ground truth: 4x4, one pixel off by 0.2 inside the mask (left half) and one off by 0.4
    outside it. Whole image: MSE = (0.04 + 0.16) * 3 / 48; in the mask (both times mask, whole image):
    MSE = 0.04 * 3 / 48."""
    target = grey(4, 100)
    edited = target.copy()
    edited[1, 1] = 151  # inside the mask, +0.2
    edited[2, 3] = 202  # outside, +0.4
    assert bm.gt_psnr(rgb(edited), rgb(target)) == pytest.approx(10 * math.log10(48 / (0.2 * 3)), rel=1e-6)
    in_mask = bm.gt_psnr_in_mask(rgb(edited), rgb(target), left_half_mask(4))
    assert in_mask == pytest.approx(10 * math.log10(48 / (0.04 * 3)), rel=1e-6)
    assert bm.gt_psnr_in_mask(rgb(edited), rgb(target), Image.new("L", (4, 4), 0)) is None


def tiny_vit(image_size: int = 16):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=image_size,
        patch_size=8,
    )
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size})
    return ViTModel(config, add_pooling_layer=False).eval(), processor


def test_self_similarity_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    c = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.0, c], [0.0, 1.0, c], [c, c, 1.0]], dtype=torch.float64)
    assert torch.allclose(bm.self_similarity(keys), expected)


def test_last_keys_are_the_last_blocks_key_projection_of_every_token():
    """CLS and the 4 patches of a 16 px image, the key projection of the last block's normed input."""
    vit, processor = tiny_vit()
    image = rgb(np.random.default_rng(1).integers(0, 256, (16, 16, 3)))
    keys = bm.last_keys(image, vit, processor)
    assert keys.shape == (1 + 4, 32)
    values = processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = vit(pixel_values=values, output_hidden_states=True).hidden_states[-2]
        block = vit.layers[-1]
        expected = block.attention.k_proj(block.layernorm_before(hidden))[0]
    assert torch.allclose(keys, expected.double(), atol=1e-6)


def test_pnp_unscaled_feeds_0_to_255_values_into_the_normalisation():
    """PnPInversion's evaluation normalises pixel values in 0..255 (no division by 255)."""
    vit, processor = tiny_vit()
    array = np.random.default_rng(4).integers(0, 256, (16, 16, 3))
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    values = torch.from_numpy(((array - mean) / std).transpose(2, 0, 1)[None]).float()
    with torch.no_grad():
        hidden = vit(pixel_values=values, output_hidden_states=True).hidden_states[-2]
        block = vit.layers[-1]
        expected = block.attention.k_proj(block.layernorm_before(hidden))[0]
    keys = bm.last_keys(rgb(array), vit, processor, pnp_unscaled=True)
    assert torch.allclose(keys, expected.double(), atol=1e-4)
    assert not torch.allclose(bm.last_keys(rgb(array), vit, processor), keys, atol=1e-2)


def test_structure_distance_is_zero_for_identical_images_and_grows_with_a_change():
    vit, processor = tiny_vit()
    rng = np.random.default_rng(2)
    source = rng.integers(0, 256, (16, 16, 3))
    assert bm.structure_distance(rgb(source), rgb(source.copy()), vit, processor) == 0.0
    edited = source.copy()
    edited[:8, :8] = 255 - edited[:8, :8]
    distance = bm.structure_distance(rgb(source), rgb(edited), vit, processor)
    assert distance > 0
    sims = [bm.self_similarity(bm.last_keys(rgb(x), vit, processor)) for x in (source, edited)]
    assert distance == pytest.approx(float(((sims[0] - sims[1]) ** 2).mean()))


@pytest.fixture(scope="module")
def clip(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)


def test_clip_similarity_whole_and_masked(clip):
    rng = np.random.default_rng(3)
    image = rgb(rng.integers(0, 256, (32, 32, 3)))
    whole = bm.clip_similarity(image, "a dog", *clip)
    assert 0.0 <= whole <= 100.0
    assert bm.clip_similarity(image, "a dog", *clip, mask=Image.new("L", (32, 32), 255)) == whole
    black = bm.clip_similarity(rgb(grey(32, 0)), "a dog", *clip)
    assert bm.clip_similarity(image, "a dog", *clip, mask=Image.new("L", (32, 32), 0)) == black
    half = bm.clip_similarity(image, "a dog", *clip, mask=left_half_mask(32))
    assert 0.0 <= half <= 100.0 and half not in (whole, black)


def test_bench_metrics_has_the_same_keys_with_and_without_models(clip):
    vit = tiny_vit(32)
    source, edited = rgb(grey(32, 10)), rgb(grey(32, 40))
    mask = left_half_mask(32)
    bare = bm.bench_metrics(source, edited, mask, "a cat")
    full = bm.bench_metrics(source, edited, mask, "a cat", target=edited, vit=vit, clip=clip)
    assert set(bare) == set(full)
    assert all(bare[k] is None for k in ("structure_distance", "clip_whole", "clip_edited", "gt_psnr"))
    assert all(v is not None for v in full.values()) and full["gt_psnr"] == bm.MAX_PSNR
