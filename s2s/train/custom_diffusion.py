"""Custom Diffusion (Kumari et al. 2023): the key and value projections of the UNet's cross-attention layers
(with ``freeze_model: crossattn`` their query and output projections too) plus a new modifier token, as
diffusers' train_custom_diffusion.py (``--freeze_model crossattn_kv``, ``--modifier_token``).

The trained projections are copies of the layers' own, held by diffusers' ``CustomDiffusionAttnProcessor2_0``
installed on each cross-attention layer (``set_attn_processor``); the base weights stay frozen. Saved in the
format diffusers' Custom Diffusion loader reads (``pytorch_custom_diffusion_weights.safetensors``, the keys
``UNet.save_attn_procs`` writes: ``<layer>.processor.to_k_custom_diffusion.weight``, ...) plus the token's
embedding as Textual Inversion's file (``learned_embeds.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2s.io import save_safetensors
from s2s.train.methods import Method, NewToken, _load_embeddings

EMBEDDINGS_FILE = "learned_embeds.safetensors"
CROSS_ATTENTION = "attn2.processor"  # the processor names of the cross-attention layers (diffusers' UNet)


def load_custom_diffusion(pipe, path: Path) -> None:
    """Install a Custom Diffusion weights file on a pipeline's UNet with diffusers' loader.

    Two workarounds of diffusers 0.42's ``UNet2DConditionModel.load_attn_procs``: it installs the processors
    only when given ``_pipeline`` (its ``set_attn_processor`` call sits inside the offload block), and a
    safetensors file lacks the empty entries of the self-attention layers (``save_attn_procs`` drops them),
    without which ``set_attn_processor`` refuses a dict that does not cover every layer."""
    from safetensors.torch import load_file

    state: dict = load_file(str(path))
    for name in pipe.unet.attn_processors:
        if f"{name}.to_k_custom_diffusion.weight" not in state:
            state[name] = {}
    pipe.unet.load_attn_procs(state, _pipeline=pipe)


class CustomDiffusion(NewToken, Method):
    """Cross-attention K/V copies (``freeze_model``) and the modifier token's embedding row train."""

    name = "custom_diffusion"

    def __init__(self, cfg, subject):
        super().__init__(cfg, subject)
        self.trains_text = True  # the modifier token's row changes the prompt's encoding every step
        self.uses_prior = cfg.with_prior_preservation

    def setup(self, unet, text_encoder, tokenizer) -> None:
        from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

        self.unet = unet
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        train_q_out = self.cfg.freeze_model == "crossattn"
        processors = {}
        for name, processor in unet.attn_processors.items():
            if not name.endswith(CROSS_ATTENTION):
                processors[name] = processor
                continue
            layer = unet.get_submodule(name.removesuffix(".processor"))
            custom = CustomDiffusionAttnProcessor2_0(
                train_kv=True,
                train_q_out=train_q_out,
                hidden_size=layer.to_k.out_features,
                cross_attention_dim=layer.to_k.in_features,
            )
            # Start from the layer's own weights, as the diffusers example does.
            weights = {
                "to_k_custom_diffusion.weight": layer.to_k.weight,
                "to_v_custom_diffusion.weight": layer.to_v.weight,
            }
            if train_q_out:
                weights["to_q_custom_diffusion.weight"] = layer.to_q.weight
                weights["to_out_custom_diffusion.0.weight"] = layer.to_out[0].weight
                weights["to_out_custom_diffusion.0.bias"] = layer.to_out[0].bias
            custom.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
            processors[name] = custom.to(layer.to_k.weight.device, layer.to_k.weight.dtype)
        unet.set_attn_processor(processors)
        self.add_token(text_encoder, tokenizer)

    def _processor_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.unet.named_parameters() if p.requires_grad and "_custom_diffusion" in n}

    def trainable(self):
        return {**self._processor_parameters(), "token_embedding": self.embeddings.weight}

    def unet_flop_mode(self) -> dict:
        # The projections of freeze_model, and the modifier token's row behind the prompt.
        return {"mode": self.cfg.freeze_model, "text_grad": True}

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        # The keys of diffusers' save_attn_procs: attn_processors names, then the processor's own.
        state = {
            name: p.detach().float() for name, p in unet.named_parameters() if "_custom_diffusion" in name
        }
        save_safetensors(state, self.weights_path(out_dir), metadata={"format": "pt"})
        self.save_embeddings(Path(out_dir) / EMBEDDINGS_FILE)

    @classmethod
    def load_pipeline(cls, base_model, model_dir, device, dtype):
        from s2s.models import load_base_pipeline

        pipe = load_base_pipeline(base_model, device, dtype)
        load_custom_diffusion(pipe, cls.weights_path(model_dir))
        _load_embeddings(pipe, Path(model_dir) / EMBEDDINGS_FILE)
        return pipe
