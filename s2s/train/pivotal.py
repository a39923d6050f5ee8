"""Pivotal tuning: the subject's new token embeddings trained together with a UNet LoRA (optionally a
text-encoder LoRA too), as diffusers' advanced DreamBooth LoRA script with ``--train_text_encoder_ti``
(and OneTrainer's, ai-toolkit's "embedding + LoRA").

Saved as the LoRA file ``load_lora_weights`` reads plus the embeddings file ``load_textual_inversion``
reads (``{token: tensor[num_vectors, dim]}``, as Textual Inversion's).
"""

from __future__ import annotations

from pathlib import Path

from s2s.train.methods import LoRA, NewToken, _load_embeddings, _load_lora

EMBEDDINGS_FILE = "learned_embeds.safetensors"


class Pivotal(NewToken, LoRA):
    """New token rows of the frozen text encoder (``num_vectors``, lr ``text_encoder_lr``, for the first
    ``train_text_encoder_ti_frac`` of the steps) and LoRA adapters on the UNet (``rank``, ``alpha``,
    ``target_modules``, ``use_dora``; with ``train_text_encoder`` on the text encoder too)."""

    name = "pivotal"

    def __init__(self, cfg, subject):
        super().__init__(cfg, subject)
        self.trains_text = True  # the new rows change the instance prompt's encoding every step

    def setup(self, unet, text_encoder, tokenizer) -> None:
        LoRA.setup(self, unet, text_encoder, tokenizer)
        self.add_token(text_encoder, tokenizer)

    def trainable(self):
        return {**LoRA.trainable(self), "token_embedding": self.embeddings.weight}

    def optimizer_groups(self, lr: float) -> list[dict]:
        # The embeddings at text_encoder_lr (scaled as the learning rate is, with scale_lr), as the
        # advanced script's text parameter group; the adapters at the learning rate.
        text_lr = lr
        if self.cfg.text_encoder_lr is not None:
            text_lr = lr * self.cfg.text_encoder_lr / self.cfg.learning_rate
        adapters = [p for name, p in self.trainable().items() if name != "token_embedding"]
        return [{"params": adapters, "lr": lr}, {"params": [self.embeddings.weight], "lr": text_lr}]

    def before_optimizer_step(self, step: int, optimizer) -> None:
        # The pivot (the advanced script's --train_text_encoder_ti_frac): from step int(frac x steps) on,
        # the embeddings' group steps at lr 0, so AdamW leaves them exactly as they are (its weight decay
        # scales by 1 - lr x decay too). Set before every step: the scheduler rewrites each group's lr
        # after each one, and a resumed run needs no state for it.
        if step >= int(self.cfg.train_text_encoder_ti_frac * self.cfg.max_train_steps):
            for group in optimizer.param_groups:
                if any(p is self.embeddings.weight for p in group["params"]):
                    group["lr"] = 0.0

    def save(self, out_dir, base_model, unet, text_encoder, tokenizer) -> None:
        LoRA.save(self, out_dir, base_model, unet, text_encoder, tokenizer)
        self.save_embeddings(Path(out_dir) / EMBEDDINGS_FILE)

    @classmethod
    def load_pipeline(cls, base_model, model_dir, device, dtype):
        from s2s.models import load_base_pipeline

        pipe = load_base_pipeline(base_model, device, dtype)
        _load_lora(pipe, cls.weights_path(model_dir))
        _load_embeddings(pipe, Path(model_dir) / EMBEDDINGS_FILE)
        return pipe
