"""The world classifier: class, colour and context of a 64 px image; the world's FID/IS feature network.

It has the interface of the evaluation's feature extractors (``s2s.metrics.features``): ``pool`` features
for FID/KID and ``logits`` for IS. Its logits are over the joint (class, context) labels, the log of the
product of the two heads' probabilities, so IS measures both what is shown and where.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from s2s.io import S2SError, load_safetensors, save_safetensors
from s2s.world.scene import ALL_CONTEXTS, CLASSES, COLOURS

FORMAT = "s2s-world-classifier"
HEADS = {"class": CLASSES, "colour": tuple(COLOURS), "context": ALL_CONTEXTS}


class WorldClassifier(nn.Module):
    name = FORMAT

    def __init__(self, width: int = 32, pool_dim: int = 128, input_size: int = 64) -> None:
        super().__init__()
        self.width, self.pool_dim, self.input_size = width, pool_dim, input_size
        self.num_classes = len(CLASSES) * len(ALL_CONTEXTS)

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        w = width
        self.convs = nn.Sequential(
            block(3, w, 1), block(w, w, 2), block(w, 2 * w, 1), block(2 * w, 2 * w, 2),
            block(2 * w, 4 * w, 1), block(4 * w, 4 * w, 2), block(4 * w, pool_dim, 1),
        )  # fmt: skip
        self.heads = nn.ModuleDict({k: nn.Linear(pool_dim, len(v)) for k, v in HEADS.items()})

    def config(self) -> dict:
        return {"width": self.width, "pool_dim": self.pool_dim, "input_size": self.input_size}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of uint8 [N, 3, H, W] images (or float images in [-1, 1])."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return self.convs(x).mean(dim=(2, 3))

    def head_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = self.features(images)
        return {k: head(pool) for k, head in self.heads.items()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = self.features(images)
        log_cls = self.heads["class"](pool).log_softmax(-1)
        log_ctx = self.heads["context"](pool).log_softmax(-1)
        joint = (log_cls[:, :, None] + log_ctx[:, None, :]).flatten(1)
        return {"pool": pool, "logits": joint, "logits_unbiased": joint}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The most likely class, colour and context of each image."""
        return {k: [HEADS[k][i] for i in v.argmax(-1).tolist()] for k, v in self.head_logits(images).items()}


def save_classifier(model: WorldClassifier, path: Path | str, extra: dict | None = None) -> Path:
    metadata = {"format": FORMAT, "config": json.dumps(model.config()), **(extra or {})}
    save_safetensors(model.state_dict(), path, metadata=metadata)
    return Path(path)


def load_classifier(path: Path | str) -> WorldClassifier:
    from safetensors import safe_open

    path = Path(path)
    state = load_safetensors(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise S2SError(f"{path}: not a world classifier (no '{FORMAT}' metadata)")
    model = WorldClassifier(**json.loads(metadata["config"]))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
