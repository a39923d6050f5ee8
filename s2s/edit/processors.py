"""Diffusers attention processors that hand attention to a P2P controller, and a UNet call counter.

Processors are installed by layer name with ``unet.set_attn_processor(dict)`` and the originals are put
back afterwards; no module's ``forward`` is replaced.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


class P2PAttnProcessor:
    """``AttnProcessor2_0`` with the attention itself delegated to ``controller.attend``.

    Everything around the attention (projections, norms, residual) follows diffusers' ``AttnProcessor2_0``
    op for op, so an idle controller gives bit-identical outputs.
    """

    def __init__(self, controller, place: str):
        self.controller = controller
        self.place = place  # layer name, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape if not is_cross else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # SDPA's default scale (1/sqrt(head_dim)) is what AttnProcessor2_0 uses; maps must use the same.
        hidden_states = self.controller.attend(
            self.place, is_cross, query, key, value, attention_mask, head_dim**-0.5
        )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def p2p_attention(unet, controller) -> Iterator[None]:
    """Route every attention layer of ``unet`` through ``controller``; restore the previous processors."""
    original = dict(unet.attn_processors)
    unet.set_attn_processor(
        {name: P2PAttnProcessor(controller, name.removesuffix(".processor")) for name in original}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(original)


@dataclass
class CallCount:
    calls: int = 0
    samples: int = 0  # batch rows seen, for cost comparisons across batch sizes


@contextlib.contextmanager
def count_unet_calls(unet) -> Iterator[CallCount]:
    """Count forward calls of ``unet`` with a forward pre-hook (removed afterwards)."""
    count = CallCount()

    def hook(module, args, kwargs):
        count.calls += 1
        sample = args[0] if args else kwargs.get("sample")
        count.samples += int(sample.shape[0]) if isinstance(sample, torch.Tensor) else 0

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()
