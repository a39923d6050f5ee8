"""Attention-map aggregation and local blending against hand computations on small synthetic maps."""

from __future__ import annotations

import math

import pytest
import torch

from s2s.edit.controllers import AttentionStore, LocalBlend


def _softmax_row(scores: list[float]) -> list[float]:
    exps = [math.exp(s) for s in scores]
    return [e / sum(exps) for e in exps]


def test_average_maps_is_the_mean_over_heads_layers_and_steps():
    """Two steps through ``attend`` (batch [uncond_src, uncond_tgt, cond_src, cond_tgt]); each stored map is
    the softmax of the stored prompt's conditional row; the average is over heads, the layers at
    latent / 4 and the steps, reshaped row-major to [H, W, tokens]."""
    g = torch.Generator().manual_seed(0)
    store = AttentionStore(store_prompts=(0, 1))
    store.reset(2, (8, 8))
    heads, dim, tokens = 2, 4, 3
    layers = {"down.a": 4, "up.b": 4, "up.c": 16}  # 2x2 maps (latent 8 / 4) twice, and a 4x4 one
    inputs = []
    for step in range(2):
        for name, pixels in layers.items():
            q = torch.randn(4, heads, pixels, dim, generator=g)
            k = torch.randn(4, heads, tokens, dim, generator=g)
            store.attend(name, True, q, k, torch.randn(4, heads, tokens, dim, generator=g), None, 0.5)
            inputs.append((name, q, k))
        store.step_end(step, None)
    assert store.stored_steps == 2 and set(store.total_maps) == {"down.a", "up.b"}
    for prompt in (0, 1):
        row = 2 + prompt  # the conditional row of the prompt
        expected = [[[0.0] * tokens for _ in range(2)] for _ in range(2)]
        for name, q, k in inputs:
            if layers[name] != 4:
                continue
            for h in range(heads):
                for pixel in range(4):
                    scores = [0.5 * float(q[row, h, pixel] @ k[row, h, t]) for t in range(tokens)]
                    for t, p in enumerate(_softmax_row(scores)):
                        expected[pixel // 2][pixel % 2][t] += p / (2 * heads * 2)  # layers, heads, steps
        assert torch.allclose(store.average_maps(prompt), torch.tensor(expected), atol=1e-6), prompt


def _store_with(maps: torch.Tensor) -> AttentionStore:
    """A store holding ``maps[prompt, pixels, tokens]`` as one layer's map, one head, one step."""
    store = AttentionStore(store_prompts=(0, 1))
    store.reset(1, (8, 8))
    store.total_maps = {"up.attn2": maps[:, None]}
    store.stored_steps = 1
    return store


def test_local_blend_mask_by_hand():
    # 4x4 attention maps on an 8x8 latent. Source words at tokens 2 and 3 (one word of two tokens): their
    # attention adds up to 1.0 at cell (0, 0). Target word at token 5: 0.25 at (3, 3), 0.05 at (0, 3).
    maps = torch.zeros(2, 16, 8)
    maps[0, 0, 2], maps[0, 0, 3] = 0.6, 0.4
    maps[1, 15, 5], maps[1, 3, 5] = 0.25, 0.05
    maps[:, :, 7] = 1.0  # another token, not blended: must not count
    blend = LocalBlend([2, 3], [5], threshold=0.3, start_step=1)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    store = _store_with(maps)
    assert torch.equal(blend(store, 0, latents), latents) and blend.mask is None  # before start_step

    # By hand: max-pooling 3x3 spreads each hot cell to its 8 neighbours; normalised by each prompt's own
    # maximum, the source keeps cells within one of (0, 0), the target those within one of (3, 3) (0.05 /
    # 0.25 = 0.2 < 0.3 drops (0, 3)); each 4x4 cell covers 2x2 latent pixels.
    def kept(cell_y, cell_x):
        near = lambda y, x: max(abs(cell_y - y), abs(cell_x - x)) <= 1  # noqa: E731
        return near(0, 0) or near(3, 3)

    expected = torch.tensor([[float(kept(y // 2, x // 2)) for x in range(8)] for y in range(8)])
    out = blend(store, 1, latents)
    assert torch.equal(blend.mask, expected[None])
    assert torch.equal(out[0], latents[0])
    inside = expected.bool()
    assert torch.equal(out[1][:, ~inside], latents[0][:, ~inside])
    assert torch.allclose(out[1][:, inside], latents[1][:, inside], atol=1e-6)  # x_s + (x_t - x_s)
    assert 0 < expected.sum() < 64  # a partial mask: both kinds of pixel are checked


def test_local_blend_keep_words_by_hand():
    """``keep`` (P2P's substruct_words): the kept words' region, not max-pooled and thresholded at
    ``keep_threshold``, leaves the mask; with keep words alone the mask is everything else."""
    maps = torch.zeros(2, 16, 8)
    maps[0, 0, 2] = 1.0  # blend word (source): cell (0, 0), pooled to (0..1, 0..1)
    maps[0, 5, 4], maps[0, 6, 4] = 0.8, 0.2  # keep word (source): (1, 1) hot, (1, 2) at 0.25 of max
    maps[1, 10, 4] = 0.5  # keep word (target): (2, 2)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    store = _store_with(maps)

    def cells(*keep_cells, base=None):
        rows = []
        for y in range(8):
            row = []
            for x in range(8):
                cell = (y // 2, x // 2)
                inside = True if base is None else base(*cell)
                row.append(float(inside and cell not in keep_cells))
            rows.append(row)
        return torch.tensor(rows)[None]

    keep_only = LocalBlend([], [], threshold=0.3, keep=([4], [4]), keep_threshold=0.3)
    out = keep_only(store, 0, latents)
    # Not pooled: only the hot cells (1, 1) and (2, 2) are kept; (1, 2) at 0.25 < 0.3 is not.
    assert torch.equal(keep_only.mask, cells((1, 1), (2, 2)))
    kept = ~keep_only.mask[0].bool()
    assert torch.equal(out[1][:, kept], latents[0][:, kept])
    assert torch.allclose(out[1][:, ~kept], latents[1][:, ~kept], atol=1e-6)

    lower = LocalBlend([], [], threshold=0.3, keep=([4], [4]), keep_threshold=0.2)
    lower(store, 0, latents)
    assert torch.equal(lower.mask, cells((1, 1), (1, 2), (2, 2)))  # its own threshold, not the blend's

    both = LocalBlend([2], [], threshold=0.3, keep=([4], [4]), keep_threshold=0.3)
    both(store, 0, latents)
    near_origin = lambda y, x: y <= 1 and x <= 1  # noqa: E731  (the blend word's pooled region)
    assert torch.equal(both.mask, cells((1, 1), (2, 2), base=near_origin))
    with pytest.raises(ValueError, match="blend words or of keep words"):
        LocalBlend([], [], threshold=0.3)  # no words: neither an edit region nor a kept one
