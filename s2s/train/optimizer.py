"""The training's optimiser: the learning rate a run trains at, the method's parameter groups at it, and
AdamW (or 8-bit AdamW) over them. The loop calls ``make_optimizer`` once, before the schedule."""

from __future__ import annotations

import torch

from s2s.config import TrainConfig
from s2s.io import S2SError


def learning_rate(cfg: TrainConfig, num_processes: int) -> float:
    """``learning_rate``, times the samples of one optimiser step with ``scale_lr`` (batch x accumulation
    x processes), as the diffusers examples scale it."""
    lr = cfg.learning_rate
    if cfg.scale_lr:
        lr *= cfg.train_batch_size * cfg.gradient_accumulation_steps * num_processes
    return lr


def make_optimizer(cfg: TrainConfig, method, num_processes: int) -> tuple[torch.optim.Optimizer, float]:
    """AdamW (or 8-bit AdamW) over the method's parameter groups (``Method.optimizer_groups``: each group
    at the learning rate unless the method sets its own), and that learning rate."""
    lr = learning_rate(cfg, num_processes)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise S2SError(
                f"{cfg.key('use_8bit_adam')}: bitsandbytes is not installed; `pip install bitsandbytes` "
                "(CUDA only) or set use_8bit_adam: false"
            ) from exc
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    optimizer = optimizer_cls(
        method.optimizer_groups(lr),
        lr=lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    return optimizer, lr
