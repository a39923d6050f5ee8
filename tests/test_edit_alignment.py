"""Prompt-to-Prompt's word-level alignment and step windows, checked against hand computations of what
google/prompt-to-prompt computes (``get_replacement_mapper_``, ``get_time_words_attention_alpha``,
``AttentionControlEdit.num_self_replace``, ``LocalBlend.start_blend``), with the real CLIP tokenizer where
words split into several tokens."""

from __future__ import annotations

import pytest
import torch

from s2s.edit.controllers import Replace, Reweight, build_controller
from s2s.edit.seq_aligner import EditSpecError, cross_replace_alphas, replacement_mapper, token_ids


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    """SD v1.4's tokenizer, built offline from CLIP's BPE merges."""
    from transformers import CLIPTokenizer

    from s2s.clip_tokenizer import find_bpe_file, write_clip_tokenizer

    if find_bpe_file() is None:
        pytest.fail("CLIP's BPE merges file is missing: run `make` to fetch it")
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def _expected(pairs: dict[tuple[int, int], float], max_len: int = 77) -> torch.Tensor:
    mapper = torch.zeros(max_len, max_len)
    for (k, j), value in pairs.items():
        mapper[k, j] = value
    return mapper


# ---- word swaps with multi-token words ------------------------------------------------------------------


def test_one_token_word_onto_two_tokens_shares_its_attention(clip_tokenizer):
    source, target = "a photo of a cat", "a photo of a teddybear"
    assert len(token_ids(clip_tokenizer, source)) == 7 and len(token_ids(clip_tokenizer, target)) == 8
    mapper = replacement_mapper(clip_tokenizer, source, target)
    # Hand computation: start + 4 unchanged words token to token; "cat" (5) -> "teddy" (5) and "bear" (6)
    # at 1/2 each (P2P's ratio 1 / target tokens); end token 6 -> 7, padding 7.. -> 8.. (source 76 unused).
    pairs = {(k, k): 1.0 for k in range(5)} | {(5, 5): 0.5, (5, 6): 0.5}
    pairs |= {(k, k + 1): 1.0 for k in range(6, 76)}
    assert torch.equal(mapper, _expected(pairs))


def test_two_token_word_onto_one_token_sums_its_attention(clip_tokenizer):
    mapper = replacement_mapper(clip_tokenizer, "a teddybear on the beach", "a cat on the beach")
    # "teddy" (2) and "bear" (3) both feed "cat" (2) at ratio 1; later words shift back by one token; the
    # last target padding position (76) takes the source's last padding token.
    pairs = {(0, 0): 1.0, (1, 1): 1.0, (2, 2): 1.0, (3, 2): 1.0}
    pairs |= {(k, k - 1): 1.0 for k in range(4, 77)} | {(76, 76): 1.0}
    assert torch.equal(mapper, _expected(pairs))


def test_words_after_an_unequal_swap_keep_their_own_attention(clip_tokenizer):
    source, target = "a cat on the beach", "a teddybear on the beach"
    mapper = replacement_mapper(clip_tokenizer, source, target)
    src, tgt = token_ids(clip_tokenizer, source), token_ids(clip_tokenizer, target)
    for j in range(4, len(tgt)):  # on, the, beach, end token: each from the same token of the source
        (k,) = mapper[:, j].nonzero().flatten().tolist()
        assert src[k] == tgt[j] and mapper[k, j] == 1.0, j
    assert torch.allclose(mapper.sum(0)[: len(tgt)], torch.tensor([1, 1, 0.5, 0.5, 1, 1, 1, 1.0]))


def test_replace_controller_sends_the_source_word_to_both_target_tokens(clip_tokenizer):
    """The edit as P2P's ``einsum('hpw,bwn->bhpn', attn_base, mapper)``, computed by hand per token."""
    controller = build_controller(clip_tokenizer, "a photo of a cat", "a photo of a teddybear", {}, 10)
    assert isinstance(controller, Replace)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, n, 8, generator=g) for n in (16, 77, 77))
    controller.reset(10, (8, 8))
    out = controller.attend("up.attn2", True, q, k, v, None, 8**-0.5)
    p_src = (q[2] @ k[2].transpose(-1, -2) * 8**-0.5).softmax(-1)
    new_map = torch.zeros_like(p_src)
    new_map[..., :5] = p_src[..., :5]
    new_map[..., 5] = new_map[..., 6] = p_src[..., 5] / 2
    new_map[..., 7:] = p_src[..., 6:76]
    assert torch.allclose(out[3], new_map @ v[3], atol=1e-5)


def test_word_counts_not_token_counts_decide(clip_tokenizer, tiny_pipe):
    with pytest.raises(EditSpecError, match="same number of words") as info:
        replacement_mapper(clip_tokenizer, "a photo of a cat", "a photo of a teddy bear")
    assert info.value.key == "target_prompt"
    # the tiny tokenizer splits "sks" into several tokens: a swap all the same
    tok = tiny_pipe.tokenizer
    assert len(token_ids(tok, "a sks on the beach")) > len(token_ids(tok, "a dog on the beach"))
    mapper = replacement_mapper(tok, "a dog on the beach", "a sks on the beach")
    n_sks = len(tok("sks", add_special_tokens=False).input_ids)
    assert torch.allclose(mapper[2, 2 : 2 + n_sks], torch.full((n_sks,), 1.0 / n_sks))


def test_reweight_of_a_multi_token_swap_chains_onto_the_word_swap(clip_tokenizer):
    spec = {"edit": "reweight", "equalizer": {"teddybear": 2.0}}
    controller = build_controller(clip_tokenizer, "a photo of a cat", "a photo of a teddybear", spec, 10)
    assert isinstance(controller, Reweight) and isinstance(controller.prev, Replace)
    a, d = controller.cross_mix()
    assert d is None and a[5, 5] == a[5, 6] == 1.0 and a[6, 7] == 1.0  # (1/2 each) x 2 at "teddy", "bear"


# ---- step windows -----------------------------------------------------------------------------------------


def test_cross_replace_window_has_p2p_bounds(tiny_pipe):
    tok, target = tiny_pipe.tokenizer, "a horse on the beach"
    # P2P: a table of n + 1 = 26 rows, bounds int(f * 26): 0.7 -> 18 steps (int(0.7 * 25) would give 17)
    alphas = cross_replace_alphas(tok, target, 25, 0.7)
    assert alphas.shape == (25, 77) and alphas[:, 0].tolist() == [1.0] * 18 + [0.0] * 7
    window = cross_replace_alphas(tok, target, 25, [0.2, 0.5])[:, 0]  # int(5.2), int(13.0)
    assert window.tolist() == [0.0] * 5 + [1.0] * 8 + [0.0] * 12
    assert cross_replace_alphas(tok, target, 25, 1.0).all()
    per_word = cross_replace_alphas(tok, target, 25, {"default_": 1.0, "horse": 0.35})  # int(9.1)
    assert per_word[:, 2].tolist() == [1.0] * 9 + [0.0] * 16 and per_word[:, 1].all()


def test_self_replace_and_blend_start_keep_p2p_bounds(tiny_pipe):
    spec = {"self_replace_steps": 0.7, "start_blend": 0.7, "blend_words": ["dog"], "cross_replace_steps": 0.7}
    controller = build_controller(tiny_pipe.tokenizer, "a dog on the beach", "a horse on the beach", spec, 25)
    # P2P: num_self_replace = int(25 * 0.7) = 17 (steps 0..16); LocalBlend.start_blend = int(0.7 * 25) = 17
    # and blends once its counter (i + 1 after step i) exceeds it: from step 17 on.
    assert controller.self_window == (0, 17)
    assert controller.local_blend.start_step == 17
    assert int(controller.cross_alphas[:, 0].sum()) == 18
