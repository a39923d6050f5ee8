"""The ways of teaching the model a subject, as small strategy objects for the one training loop.

Each method decides what trains (``setup``, ``trainable``), in which dtype its modules are stored
(``place``), keeps what must not change unchanged (``after_optimizer_step``), writes its result in the
format diffusers loads (``save``) and loads it into a pipeline with plain diffusers calls
(``load_pipeline``). The loop names no method; ``s2s.registry`` lists them.
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
    #: whether every UNet weight trains (the UNet is then stored in fp32; else in the frozen dtype)
    trains_unet = False
    uses_prior = False

    def __init__(self, cfg: TrainConfig, subject: Subject):
        self.cfg = cfg
        self.subject = subject

    @property
    def label(self) -> str:
        from s2s.registry import METHODS

        return METHODS[self.name].label

    def setup(self, unet, text_encoder, tokenizer) -> None:
        raise NotImplementedError

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def place(self, unet, text_encoder, device, weight_dtype) -> None:
        """Move the modules to the device: frozen ones in the mixed-precision dtype, trained ones in fp32.

        A text encoder with trained weights (DreamBooth's whole, TI's new rows, LoRA's adapters) stays fp32
        whole: for LoRA that keeps its frozen base in fp32 too (SD's is 123M parameters, 0.25 GB more than
        half precision), as s2s.memory counts it. Trained parameters of a half-precision module (adapters)
        are cast back to fp32 after the move."""
        _place(unet, device, torch.float32 if self.trains_unet else weight_dtype)
        _place(text_encoder, device, torch.float32 if self.trains_text else weight_dtype)
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    def optimizer_groups(self, lr: float) -> list[dict]:
        """The optimizer's parameter groups (one, at the learning rate, unless a method says otherwise)."""
        return [{"params": list(self.trainable().values()), "lr": lr}]

    def expand_prompt(self, prompt: str) -> str:
        return prompt

    def training_prompts(self, instance_prompt: str) -> list[str]:
        """The instance prompts the loop draws from, one per sample (a single one unless templated)."""
        return [self.expand_prompt(instance_prompt)]

    def before_optimizer_step(self, step: int, optimizer) -> None:
        """Called before optimizer step ``step`` (0-based), after the scheduler set its learning rates."""

    def after_optimizer_step(self) -> None:
        pass

    def unet_flop_mode(self) -> dict:
        """How a training step runs through the UNet, for counting its FLOPs: the keywords of
        ``s2s.bench.models.unet_flops`` (mode, lora, text_grad)."""
        raise NotImplementedError

    def save(self, out_dir: Path, base_model: str, unet, text_encoder, tokenizer) -> None:
        raise NotImplementedError

    @classmethod
    def weights_path(cls, model_dir: Path) -> Path:
        """The file (or folder) a trained model must have for loading."""
        from s2s.registry import METHODS

        return Path(model_dir) / METHODS[cls.name].marker

    @classmethod
    def load_pipeline(cls, base_model: str, model_dir: Path, device, dtype):
        """The trained model as a StableDiffusionPipeline, loaded with plain diffusers calls."""
        raise NotImplementedError


def _place(module, device, dtype) -> None:
    # Only cast when needed: diffusers warns on any dtype cast through .to().
    if dtype == torch.float32:
        module.to(device)
    else:
        module.to(device, dtype=dtype)


def _load_embeddings(pipe, path: Path) -> None:
    from s2s.progress import without_log_records

    # transformers announces how it initialises the new token's embedding row; diffusers then
    # overwrites that row with the learned embedding, so the initialisation never matters.
    with without_log_records("transformers.modeling_utils", "The new embeddings will be initialized"):
        pipe.load_textual_inversion(str(path))


def _load_lora(pipe, path: Path) -> None:
    from s2s.progress import without_log_records

    # Without train_text_encoder the LoRA adapts the UNet only; diffusers then warns that the text
    # encoder got no LoRA keys.
    with without_log_records("diffusers.loaders", "No LoRA keys associated to CLIPTextModel"):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)


class NewToken:
    """The subject's placeholder token as new embedding rows (``num_vectors`` of them, initialised from a
    one-token word) of a frozen text encoder; every other row stays bit-identical. Textual Inversion trains
    them alone, pivotal tuning beside a LoRA."""

    def add_token(self, text_encoder, tokenizer) -> None:
        token = self.subject.token
        self.tokens = [token] + [f"{token}_{i}" for i in range(1, self.cfg.num_vectors)]
        added = tokenizer.add_tokens(self.tokens)
        if added != len(self.tokens):
            raise S2SError(
                f"subjects.{self.subject.name}.token: {token!r} is already a token of the tokenizer; "
                f"{self.label} needs a new placeholder token (pick another, e.g. 'sks' or '<my-toy>')"
            )
        init_word = self.cfg.initializer_token or self.subject.class_noun
        init_ids = tokenizer.encode(init_word, add_special_tokens=False)
        if len(init_ids) != 1:
            raise S2SError(
                f"{self.cfg.key('initializer_token')}: {init_word!r} is {len(init_ids)} tokens; "
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
        self.embeddings.weight.requires_grad_(True)

    def expand_prompt(self, prompt: str) -> str:
        return prompt.replace(self.subject.token, " ".join(self.tokens), 1)

    def after_optimizer_step(self) -> None:
        # AdamW's weight decay touches every row; put the untouched rows back exactly.
        with torch.no_grad():
            self.embeddings.weight[self.frozen_rows] = self.original[self.frozen_rows].to(
                self.embeddings.weight.dtype
            )

    def save_embeddings(self, path: Path) -> None:
        learned = self.embeddings.weight.detach()[self.token_ids].float().cpu()
        # diffusers' load_textual_inversion reads {token: tensor[num_vectors, dim]}.
        save_safetensors({self.subject.token: learned}, path)


class TextualInversion(NewToken, Method):
    """A new token embedding (optionally several vectors); every other row stays bit-identical."""

    name = "textual_inversion"
    trains_text = True

    def setup(self, unet, text_encoder, tokenizer) -> None:
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        self.add_token(text_encoder, tokenizer)

    def trainable(self):
        return {"token_embedding": self.embeddings.weight}

    def unet_flop_mode(self) -> dict:
        return {"mode": "text"}  # no UNet weight trains; the backward pass reaches the prompt only

    def training_prompts(self, instance_prompt: str) -> list[str]:
        if self.cfg.prompt_templates is None:
            return super().training_prompts(instance_prompt)
        # As the diffusers example: the placeholder alone, without the class noun.
        templates = PROMPT_TEMPLATES[self.cfg.prompt_templates]
        return [self.expand_prompt(t.format(self.subject.token)) for t in templates]

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        self.save_embeddings(self.weights_path(out_dir))

    @classmethod
    def load_pipeline(cls, base_model, model_dir, device, dtype):
        from s2s.models import load_base_pipeline

        pipe = load_base_pipeline(base_model, device, dtype)
        _load_embeddings(pipe, cls.weights_path(model_dir))
        return pipe


class DreamBooth(Method):
    """Full UNet fine-tuning (text encoder optional) with the class prior-preservation loss."""

    name = "dreambooth"
    trains_unet = True

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

    def unet_flop_mode(self) -> dict:
        return {"mode": "full", "text_grad": self.cfg.train_text_encoder}

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        from diffusers import StableDiffusionPipeline
        from transformers import CLIPTextModel

        if not self.trains_text and text_encoder.dtype != torch.float32:
            # The frozen text encoder ran in half precision; the saved model gets the base model's own
            # fp32 weights (upcasting would keep the rounding).
            text_encoder = CLIPTextModel.from_pretrained(
                base_model, subfolder="text_encoder", use_safetensors=True
            )
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

    @classmethod
    def load_pipeline(cls, base_model, model_dir, device, dtype):
        from s2s.models import load_base_pipeline

        return load_base_pipeline(str(model_dir), device, dtype, key=f"trained model {model_dir}")


class LoRA(Method):
    """peft LoRA adapters on the UNet attention projections (and, with ``train_text_encoder``, on the text
    encoder's); base weights stay frozen. With ``use_dora`` the adapters are DoRA's (magnitude and
    direction)."""

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
            # DoRA: a trained magnitude vector per adapted weight (saved as lora_magnitude_vector keys)
            use_dora=self.cfg.use_dora,
        )

    def setup(self, unet, text_encoder, tokenizer) -> None:
        self.unet, self.text_encoder = unet, text_encoder
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        unet.add_adapter(self._lora_config(self.cfg.target_modules))
        if self.cfg.train_text_encoder:
            from peft import inject_adapter_in_model

            # The layers transformers' add_adapter (the diffusers example's call) injects; it asks for a
            # newer peft (>= 0.22) than this project pins, peft's own injection does not.
            inject_adapter_in_model(self._lora_config(self.TEXT_ENCODER_TARGET_MODULES), text_encoder)

    def trainable(self):
        # The UNet's names carry no prefix (as in checkpoints written before the text-encoder adapter).
        params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        if self.cfg.train_text_encoder:
            text = self.text_encoder.named_parameters()
            params.update({f"text_encoder.{n}": p for n, p in text if p.requires_grad})
        return params

    def unet_flop_mode(self) -> dict:
        lora = {
            "r": self.cfg.rank,
            "lora_alpha": self.cfg.alpha,
            "target_modules": list(self.cfg.target_modules),
            "use_dora": self.cfg.use_dora,
        }
        return {"mode": "lora", "lora": lora, "text_grad": self.trains_text}

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        from diffusers import StableDiffusionPipeline

        unet_layers, unet_metadata = _adapter_layers(unet)
        text_layers, text_metadata = (None, None)
        if self.cfg.train_text_encoder:
            text_layers, text_metadata = _adapter_layers(text_encoder)
        StableDiffusionPipeline.save_lora_weights(
            out_dir,
            unet_lora_layers=unet_layers,
            unet_lora_adapter_metadata=unet_metadata,
            text_encoder_lora_layers=text_layers,
            text_encoder_lora_adapter_metadata=text_metadata,
            safe_serialization=True,
        )

    @classmethod
    def load_pipeline(cls, base_model, model_dir, device, dtype):
        from s2s.models import load_base_pipeline

        pipe = load_base_pipeline(base_model, device, dtype)
        _load_lora(pipe, cls.weights_path(model_dir))
        return pipe


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


def make_method(cfg: TrainConfig, subject: Subject) -> Method:
    from s2s.registry import method_class

    return method_class(cfg.method)(cfg, subject)
