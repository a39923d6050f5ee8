"""The rehearsal's stand-ins: SD v1.4's real tokenizer and exact architectures (random weights)."""

from __future__ import annotations

import pytest

from s2s.clip_tokenizer import VOCAB_SIZE, find_bpe_file, write_clip_tokenizer


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    if find_bpe_file() is None:
        pytest.fail("CLIP's BPE merges file is missing: run `make` (scripts/fetch_clip_bpe.py fetches it)")
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer")))


def test_real_clip_tokenizer_has_sd14s_ids(clip_tokenizer):
    assert len(clip_tokenizer) == VOCAB_SIZE
    ids = clip_tokenizer("a photo of sks dog").input_ids
    assert ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    # A word CLIP splits: two tokens, as Prompt-to-Prompt's word swaps must handle.
    assert clip_tokenizer.tokenize("teddybear") == ["teddy", "bear</w>"]
    assert clip_tokenizer.model_max_length == 77


def test_sd14_architecture_counts(tmp_path):
    """The configs build SD v1.4's parameter counts (the meta device: no memory, no weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from s2s.rehearsal import CLIP_L14_TEXT, SD14_UNET, SD14_VAE

    with torch.device("meta"):
        counts = [
            sum(p.numel() for p in model.parameters())
            for model in (
                UNet2DConditionModel(**SD14_UNET),
                AutoencoderKL(**SD14_VAE),
                CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT)),
            )
        ]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
