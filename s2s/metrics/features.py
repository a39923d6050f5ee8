"""Image features for FID, KID and IS: the two Inception-v3 networks of ``s2s.metrics.inception``, the
miniature world's classifier (``s2s.world.classifier``), or a tiny stand-in (see docs/evaluation.md for
which metric uses which).

An extractor is an ``nn.Module`` whose forward takes uint8 images ``[N, 3, H, W]`` (any H, W) and
returns a dict of feature tensors:

- ``pool``: the pooled features FID and KID compare (Inception's 2048-d pool3),
- ``logits``: the full class logits (the study's softmax FID and IS use their softmax),
- ``logits_unbiased``: logits without the final bias (what torchmetrics' InceptionScore uses).

``FeatureView(extractor, name)`` exposes one of them in the form torchmetrics' ``feature=`` argument
expects (forward returns ``[N, d]``, ``num_features`` attribute).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from s2s.io import S2SError, load_safetensors, save_safetensors
from s2s.metrics import inception
from s2s.metrics.inception import FID_SPEC, IMAGENET_SPEC, inception_metadata, load_inception

log = logging.getLogger(__name__)

INCEPTION_SPEC = FID_SPEC
TINY_FORMAT = "s2s-tiny-feature-extractor"
WORLD_FORMAT = "s2s-world-classifier"  # s2s.world.classifier.FORMAT (that module needs the world package)
OUTPUTS = ("pool", "logits", "logits_unbiased")


class TinyInceptionLike(nn.Module):
    """A small conv net with Inception-v3's interface (pooled features + 1000 logits), for the demo."""

    name = "tiny-inception-like"

    def __init__(self, pool_dim: int = 64, num_classes: int = 1000, input_size: int = 64) -> None:
        super().__init__()
        self.pool_dim = pool_dim
        self.num_classes = num_classes
        self.input_size = input_size
        self.convs = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, pool_dim, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(pool_dim, num_classes)

    def config(self) -> dict:
        return {"pool_dim": self.pool_dim, "num_classes": self.num_classes, "input_size": self.input_size}

    def reset_parameters(self, seed: int) -> None:
        """Deterministic init from ``seed``, independent of the global RNG."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)
                    module.bias.normal_(0.0, 0.1, generator=gen)
            # Larger logits than kaiming gives, so the softmax is not nearly uniform and IS is not ~1.
            self.fc.weight.mul_(4.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _check_uint8(images).float()
        # Same preprocessing as torch-fidelity's Inception: resize, then map [0, 255] to [-1, 1].
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        x = (x - 128) / 128
        pool = self.convs(x).mean(dim=(2, 3))
        unbiased = pool @ self.fc.weight.T
        return {"pool": pool, "logits": unbiased + self.fc.bias, "logits_unbiased": unbiased}


class FeatureView(nn.Module):
    """One output of an extractor, shaped for torchmetrics' ``feature=`` argument."""

    def __init__(self, extractor: nn.Module, output: str) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown feature output {output!r}; use one of {OUTPUTS}")
        self.extractor = extractor
        self.output = output
        # torchmetrics reads num_features instead of running a dummy image through the net.
        self.num_features = extractor.pool_dim if output == "pool" else extractor.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[self.output]


def _check_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images


def build_tiny_feature_extractor(
    path: Path | str, seed: int = 0, pool_dim: int = 64, num_classes: int = 1000, input_size: int = 64
) -> Path:
    """Save a randomly initialised ``TinyInceptionLike`` as safetensors (config in the file's metadata)."""
    net = TinyInceptionLike(pool_dim=pool_dim, num_classes=num_classes, input_size=input_size)
    net.reset_parameters(seed)
    metadata = {"format": TINY_FORMAT, "config": json.dumps({**net.config(), "seed": seed})}
    save_safetensors(net.state_dict(), path, metadata=metadata)
    log.info("built tiny feature extractor (%d-d pool, %d classes) in %s", pool_dim, num_classes, path)
    return Path(path)


def load_feature_extractor(spec: str) -> nn.Module:
    """A network name (``inception-v3-compat``, ``inception-v3-imagenet``: converted weights from the
    prefetch cache), or a .safetensors file: an Inception written by prefetch / ``build_random_inception``
    or a tiny extractor (told apart by the file's metadata) -> eval-mode module."""
    if spec in inception.ARCHITECTURES or _file_format(spec) == inception.FORMAT:
        net: nn.Module = load_inception(spec)
    elif _file_format(spec) == WORLD_FORMAT:
        from s2s.world.classifier import load_classifier

        net = load_classifier(spec)
    else:
        path = Path(spec)
        state = load_safetensors(path)  # refuses pickle formats and missing files
        net = TinyInceptionLike(**_tiny_config(path))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise S2SError(f"{path}: weights do not match the tiny extractor's config ({exc})") from exc
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return net.eval().requires_grad_(False).to(device)


def _file_format(spec: str) -> str | None:
    path = Path(spec)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    return inception_metadata(path).get("format")


def _tiny_config(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != TINY_FORMAT:
        raise S2SError(
            f"{path}: not an s2s feature extractor (no '{TINY_FORMAT}' metadata); use "
            f"{INCEPTION_SPEC!r}, {IMAGENET_SPEC!r} or a file written by build_tiny_feature_extractor or "
            "build_random_inception"
        )
    config = json.loads(metadata["config"])
    return {k: config[k] for k in ("pool_dim", "num_classes", "input_size")}


def to_batch(images: torch.Tensor | list[torch.Tensor], size: int) -> torch.Tensor:
    """Stack uint8 images into ``[N, 3, size, size]``; images of other sizes are resized first.

    Only needed when sizes differ (real photos): the extractors resize to ``size`` internally anyway,
    so resizing here to the same size changes nothing but lets differently sized images share a batch.
    """
    if isinstance(images, torch.Tensor):
        return images
    out = []
    for img in images:
        if img.shape[-2:] != (size, size):
            img = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        out.append(img)
    return torch.stack(out)


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: torch.Tensor | list[torch.Tensor], batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """Run the extractor once over all images (in batches); float64 CPU tensors per output."""
    device = next(extractor.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in OUTPUTS}
    for start in range(0, len(images), batch_size):
        batch = to_batch(images[start : start + batch_size], extractor.input_size).to(device)
        for key, value in extractor(batch).items():
            chunks[key].append(value.double().cpu())
    return {k: torch.cat(v) for k, v in chunks.items()}
