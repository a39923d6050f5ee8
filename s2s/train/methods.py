"""The three ways of teaching the model a subject, as small strategy objects for the one training loop.

Each method decides what trains (``setup``), keeps what must not change unchanged
(``after_optimizer_step``) and writes its result in the format diffusers loads (``save``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from s2s.config import Subject, TrainConfig
from s2s.io import S2SError, save_safetensors

log = logging.getLogger(__name__)

#: The study's code trained Textual Inversion with the diffusers textual_inversion example, whose dataset
#: draws one of these prompts per sample (``imagenet_templates_small``, learnable_property "object"),
#: filled with the placeholder token alone.
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)
PROMPT_TEMPLATES = {"object": OBJECT_TEMPLATES}


class Method:
    name = ""
    #: whether the text encoder's output changes during training (then prompts cannot be cached)
    trains_text = False
    uses_prior = False

    def __init__(self, cfg: TrainConfig, subject: Subject):
        self.cfg = cfg
        self.subject = subject

    def setup(self, unet, text_encoder, tokenizer) -> None:
        raise NotImplementedError

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def expand_prompt(self, prompt: str) -> str:
        return prompt

    def training_prompts(self, instance_prompt: str) -> list[str]:
        """The instance prompts the loop draws from, one per sample (a single one unless templated)."""
        return [self.expand_prompt(instance_prompt)]

    def after_optimizer_step(self) -> None:
        pass

    def save(self, out_dir: Path, base_model: str, unet, text_encoder, tokenizer) -> None:
        raise NotImplementedError


class TextualInversion(Method):
    """A new token embedding (optionally several vectors); every other row stays bit-identical."""

    name = "textual_inversion"
    trains_text = True

    def setup(self, unet, text_encoder, tokenizer) -> None:
        token = self.subject.token
        self.tokens = [token] + [f"{token}_{i}" for i in range(1, self.cfg.num_vectors)]
        added = tokenizer.add_tokens(self.tokens)
        if added != len(self.tokens):
            raise S2SError(
                f"subjects.{self.subject.name}.token: {token!r} is already a token of the tokenizer; "
                "Textual Inversion needs a new placeholder token (pick another, e.g. 'sks' or '<my-toy>')"
            )
        init_word = self.cfg.initializer_token or self.subject.class_noun
        init_ids = tokenizer.encode(init_word, add_special_tokens=False)
        if len(init_ids) != 1:
            raise S2SError(
                f"training.textual_inversion.initializer_token: {init_word!r} is {len(init_ids)} tokens; "
                "it must be a single token (choose a common one-word noun)"
            )
        text_encoder.resize_token_embeddings(len(tokenizer))
        self.token_ids = tokenizer.convert_tokens_to_ids(self.tokens)
        self.embeddings = text_encoder.get_input_embeddings()
        with torch.no_grad():
            for tid in self.token_ids:
                self.embeddings.weight[tid] = self.embeddings.weight[init_ids[0]].clone()
        self.original = self.embeddings.weight.detach().clone()
        self.frozen_rows = torch.ones(len(tokenizer), dtype=torch.bool)
        self.frozen_rows[self.token_ids] = False
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        self.embeddings.weight.requires_grad_(True)

    def trainable(self):
        return {"token_embedding": self.embeddings.weight}

    def expand_prompt(self, prompt: str) -> str:
        return prompt.replace(self.subject.token, " ".join(self.tokens), 1)

    def training_prompts(self, instance_prompt: str) -> list[str]:
        if self.cfg.prompt_templates is None:
            return super().training_prompts(instance_prompt)
        # As the diffusers example: the placeholder alone, without the class noun.
        templates = PROMPT_TEMPLATES[self.cfg.prompt_templates]
        return [self.expand_prompt(t.format(self.subject.token)) for t in templates]

    def after_optimizer_step(self) -> None:
        # AdamW's weight decay touches every row; put the untouched rows back exactly.
        with torch.no_grad():
            self.embeddings.weight[self.frozen_rows] = self.original[self.frozen_rows].to(
                self.embeddings.weight.dtype
            )

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        learned = self.embeddings.weight.detach()[self.token_ids].float().cpu()
        # diffusers' load_textual_inversion reads {token: tensor[num_vectors, dim]}.
        save_safetensors({self.subject.token: learned}, out_dir / "learned_embeds.safetensors")


class DreamBooth(Method):
    """Full UNet fine-tuning (text encoder optional) with the class prior-preservation loss."""

    name = "dreambooth"

    def __init__(self, cfg, subject):
        super().__init__(cfg, subject)
        self.trains_text = cfg.train_text_encoder
        self.uses_prior = cfg.with_prior_preservation

    def setup(self, unet, text_encoder, tokenizer) -> None:
        self.unet, self.text_encoder = unet, text_encoder
        unet.requires_grad_(True)
        text_encoder.requires_grad_(self.cfg.train_text_encoder)

    def trainable(self):
        params = {f"unet.{n}": p for n, p in self.unet.named_parameters()}
        if self.cfg.train_text_encoder:
            params.update({f"text_encoder.{n}": p for n, p in self.text_encoder.named_parameters()})
        return params

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            base_model,
            unet=unet,
            text_encoder=text_encoder,
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
            dtype=torch.float32,
        )
        pipe.save_pretrained(out_dir, safe_serialization=True)


class LoRA(Method):
    """peft LoRA adapters on the UNet attention projections (and, with ``train_text_encoder``, on the text
    encoder's); base weights stay frozen."""

    name = "lora"
    #: the CLIP text encoder's attention projections, as diffusers' train_dreambooth_lora.py
    #: ``--train_text_encoder``
    TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __init__(self, cfg, subject):
        super().__init__(cfg, subject)
        self.trains_text = cfg.train_text_encoder
        self.uses_prior = cfg.with_prior_preservation

    def _lora_config(self, target_modules):
        from peft import LoraConfig

        return LoraConfig(
            r=self.cfg.rank,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            init_lora_weights="gaussian",
            target_modules=list(target_modules),
        )

    def setup(self, unet, text_encoder, tokenizer) -> None:
        self.unet, self.text_encoder = unet, text_encoder
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        unet.add_adapter(self._lora_config(self.cfg.target_modules))
        adapted = [unet]
        if self.trains_text:
            from peft import inject_adapter_in_model

            # The layers transformers' add_adapter (the diffusers example's call) injects; it asks for a
            # newer peft (>= 0.22) than this project pins, peft's own injection does not.
            inject_adapter_in_model(self._lora_config(self.TEXT_ENCODER_TARGET_MODULES), text_encoder)
            adapted.append(text_encoder)
        for module in adapted:
            for param in module.parameters():
                if param.requires_grad:
                    param.data = param.data.float()  # adapters train in fp32 even under mixed precision

    def trainable(self):
        # The UNet's names carry no prefix (as in checkpoints written before the text-encoder adapter).
        params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        if self.trains_text:
            text = self.text_encoder.named_parameters()
            params.update({f"text_encoder.{n}": p for n, p in text if p.requires_grad})
        return params

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        from diffusers import StableDiffusionPipeline

        unet_layers, unet_metadata = _adapter_layers(unet)
        text_layers, text_metadata = _adapter_layers(text_encoder) if self.trains_text else (None, None)
        StableDiffusionPipeline.save_lora_weights(
            out_dir,
            unet_lora_layers=unet_layers,
            unet_lora_adapter_metadata=unet_metadata,
            text_encoder_lora_layers=text_layers,
            text_encoder_lora_adapter_metadata=text_metadata,
            safe_serialization=True,
        )


def _adapter_layers(module) -> tuple[dict, dict]:
    """A module's adapter weights with diffusers' key names, and the adapter's config for the metadata."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    # Without the adapter's config, load_lora_weights rebuilds it with lora_alpha = rank, so any
    # alpha != rank would reload at another scale than the one trained.
    config = module.peft_config["default"].to_dict()
    # peft keeps target_modules as a set, whose JSON order changes with the process's hash seed: sorted,
    # the same training writes the same bytes in every process.
    return layers, {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


METHOD_CLASSES = {cls.name: cls for cls in (TextualInversion, DreamBooth, LoRA)}


def make_method(cfg: TrainConfig, subject: Subject) -> Method:
    return METHOD_CLASSES[cfg.method](cfg, subject)
