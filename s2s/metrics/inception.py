"""The two Inception-v3 networks of the evaluation, without torchvision and without pickles.

- ``inception-v3-compat``: the FID network, Inception-v3 ported from the TF graph of 2015-12-05 with
  1008 classes (what pytorch-fid, torch-fidelity and torchmetrics use). Images are resized to 299 px
  with TF1's bilinear resize and mapped from [0, 255] to [-1, 1] as torch-fidelity does.
- ``inception-v3-imagenet``: torchvision's ImageNet Inception-v3 (``IMAGENET1K_V1``, 1000 classes,
  ``transform_input=True`` as torchvision sets it for those weights), pytorch-ignite's default network
  for FID and IS. ignite feeds the tensor it is given straight to the network; s2s gives it the
  images as ignite's GAN evaluation tutorial does: resized to 299 px (bilinear) and scaled to [0, 1].

Weights are read only from safetensors files written by :func:`convert_original` (``prefetch``: the
published file is read with ``torch.load(weights_only=True)`` there and nowhere else) or by
:func:`build_random_inception` (random weights, same format, for the rehearsal). The file's metadata
names the architecture, so a config can give either a spec name or such a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from s2s.io import S2SError, load_safetensors, save_safetensors

log = logging.getLogger(__name__)

FID_SPEC = "inception-v3-compat"
IMAGENET_SPEC = "inception-v3-imagenet"
FORMAT = "s2s-inception-v3"

# The published originals; the hex in each name is the start of the file's sha256 (checked on download).
SOURCES = {
    FID_SPEC: {
        "url": "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        "hash_prefix": "6726825d",
    },
    IMAGENET_SPEC: {
        "url": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        "hash_prefix": "0cc3c7bd",
    },
}


def cache_dir() -> Path:
    """Where prefetch writes converted weights: ``$S2S_CACHE``, else ``$XDG_CACHE_HOME/s2s``, else
    ``~/.cache/s2s`` (a login node and its compute nodes must see the same folder)."""
    if os.environ.get("S2S_CACHE"):
        return Path(os.environ["S2S_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "s2s"


def cached_weights(spec: str) -> Path:
    return cache_dir() / "inception" / f"{spec}.safetensors"


# ------------------------------------------------------------------------------------------------
# Blocks. Attribute names follow torch-fidelity / torchvision, so the published state dicts load 1:1.


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    # TF's average pool ignores the zero padding; torchvision's counts it. The only difference of
    # the FID blocks A, C and E_1 from torchvision's.
    count_include_pad = True

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=self.count_include_pad)
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(pooled)], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    count_include_pad = True

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=self.count_include_pad)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(pooled)], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(self.pool(x))], 1)


class FIDInceptionA(InceptionA):
    count_include_pad = False


class FIDInceptionC(InceptionC):
    count_include_pad = False


class FIDInceptionE_1(InceptionE):  # noqa: N801 - the name the FID ports use
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionE_2(InceptionE):  # noqa: N801
    # The TF graph max-pools in the last block (the paper and torchvision average).
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride=1, padding=1)


class InceptionAux(nn.Module):
    """torchvision's auxiliary classifier: in the published state dict, unused in eval mode."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)


# ------------------------------------------------------------------------------------------------
# Networks


class _InceptionV3(nn.Module):
    """The shared trunk; subclasses choose the blocks, the head and the preprocessing."""

    pool_dim = 2048
    input_size = 299
    blocks = (InceptionA, InceptionC, InceptionE, InceptionE)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        block_a, block_c, block_e1, block_e2 = self.blocks
        self.num_classes = num_classes
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = block_a(192, pool_features=32)
        self.Mixed_5c = block_a(256, pool_features=64)
        self.Mixed_5d = block_a(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = block_c(768, channels_7x7=128)
        self.Mixed_6c = block_c(768, channels_7x7=160)
        self.Mixed_6d = block_c(768, channels_7x7=160)
        self.Mixed_6e = block_c(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = block_e1(1280)
        self.Mixed_7c = block_e2(2048)
        self.fc = nn.Linear(2048, num_classes)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        pool = self.trunk(self.preprocess(images))
        unbiased = pool @ self.fc.weight.T
        return {"pool": pool, "logits": unbiased + self.fc.bias, "logits_unbiased": unbiased}


class FIDInceptionV3(_InceptionV3):
    """The FID Inception-v3 (TF port, 1008 classes), as torch-fidelity computes ``inception-v3-compat``."""

    name = FID_SPEC
    blocks = (FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2)

    def __init__(self) -> None:
        super().__init__(num_classes=1008)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_bilinear_tf1(images.float(), self.input_size)
        return (x - 128) / 128


class ImageNetInceptionV3(_InceptionV3):
    """torchvision's ``inception_v3(weights=IMAGENET1K_V1)`` in eval mode: pytorch-ignite's FID/IS network."""

    name = IMAGENET_SPEC

    def __init__(self) -> None:
        super().__init__(num_classes=1000)
        self.AuxLogits = InceptionAux(768, 1000)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        # ignite's tutorial: PIL bilinear resize to 299 (antialiased when shrinking), ToTensor's [0, 1].
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", antialias=True) / 255
        # torchvision's transform_input=True for these weights: undo the ImageNet normalisation the
        # weights expect the caller to apply, mapping onto the range the TF-trained weights were fit on.
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5


ARCHITECTURES = {FID_SPEC: FIDInceptionV3, IMAGENET_SPEC: ImageNetInceptionV3}


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1's ``resize_bilinear`` (align_corners=False, no half-pixel centres): source = target * in/out.

    torch's bilinear resize samples at half-pixel centres and gives different pixels; FID's statistics
    were computed with this one (torch-fidelity reproduces it the same way)."""
    out = []
    for n_in in (x.shape[2], x.shape[3]):
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=x.dtype)
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        out.append((lo, hi, pos - lo.to(x.dtype)))
    (ylo, yhi, dy), (xlo, xhi, dx) = out
    top, bottom = x[:, :, ylo, :], x[:, :, yhi, :]
    top = top[:, :, :, xlo] + (top[:, :, :, xhi] - top[:, :, :, xlo]) * dx
    bottom = bottom[:, :, :, xlo] + (bottom[:, :, :, xhi] - bottom[:, :, :, xlo]) * dx
    return top + (bottom - top) * dy.view(-1, 1)


# ------------------------------------------------------------------------------------------------
# Files: conversion of the published weights, random rehearsal weights, loading


def _metadata(spec: str, **extra: str) -> dict[str, str]:
    return {"format": FORMAT, "architecture": spec, **extra}


def convert_original(original: Path | str, spec: str, out: Path | str, source_url: str = "") -> Path:
    """Read a published ``.pth`` state dict (``weights_only=True``), load it strictly into the
    package's network and save it as safetensors with its origin in the metadata."""
    original = Path(original)
    net = ARCHITECTURES[spec]()
    state = torch.load(original, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise S2SError(f"{original}: expected a state dict of {spec}, found a {type(state).__name__}")
    # Checkpoints older than torch 0.4.1 have no BatchNorm step counters (unused in eval): take the
    # module's zeros so the strict load below checks every real weight.
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise S2SError(f"{original}: not the {spec} weights ({first[0].strip()})") from exc
    metadata = _metadata(spec, source_url=source_url, source_sha256=sha256(original))
    save_safetensors(net.state_dict(), out, metadata=metadata)
    log.info("converted %s (%s) to %s", original.name, spec, out)
    return Path(out)


def build_random_inception(path: Path | str, spec: str = FID_SPEC, seed: int = 0) -> Path:
    """The real architecture with random weights, in exactly the format ``prefetch`` writes."""
    if spec not in ARCHITECTURES:
        raise S2SError(f"unknown Inception network {spec!r}; use one of {', '.join(ARCHITECTURES)}")
    net = ARCHITECTURES[spec]()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)
            if isinstance(module, nn.Linear):
                module.bias.normal_(0.0, 0.1, generator=gen)
                module.weight.mul_(4.0)  # peaked softmax, so IS is not ~1
            if isinstance(module, nn.BatchNorm2d):
                # Running statistics away from (0, 1), so a wrong eps or normalisation shows.
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
    metadata = _metadata(spec, source_url="random", seed=str(seed))
    save_safetensors(net.state_dict(), path, metadata=metadata)
    log.info("built a random %s (seed %d) in %s", spec, seed, path)
    return Path(path)


def inception_metadata(path: Path | str) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise S2SError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_inception(spec_or_path: str) -> _InceptionV3:
    """A spec name (reads the converted file from :func:`cache_dir`) or a file -> eval-mode network."""
    if spec_or_path in ARCHITECTURES:
        path = cached_weights(spec_or_path)
        if not path.is_file():
            raise S2SError(
                f"evaluation.feature_extractor: the {spec_or_path} weights are not at {path}; run "
                "`snakemake prefetch --cores 1 --configfile ...` on a machine with internet "
                "(set S2S_CACHE to the same folder on every node)"
            )
    else:
        path = Path(spec_or_path)
    metadata = inception_metadata(path)
    spec = metadata.get("architecture")
    if metadata.get("format") != FORMAT or spec not in ARCHITECTURES:
        raise S2SError(f"{path}: not an s2s Inception-v3 file (no '{FORMAT}' metadata)")
    net = ARCHITECTURES[spec]()
    try:
        net.load_state_dict(load_safetensors(path), strict=True)
    except RuntimeError as exc:
        raise S2SError(f"{path}: weights do not match the {spec} architecture") from exc
    net.source = metadata.get("source_url", "")
    return net.eval().requires_grad_(False)


def sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_inception(spec: str, out: Path | str | None = None) -> dict:
    """Download the published weights of ``spec``, convert them, keep only the safetensors file."""
    import tempfile

    from torch.hub import download_url_to_file

    source = SOURCES[spec]
    out = Path(out) if out is not None else cached_weights(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        original = Path(tmp) / Path(source["url"]).name
        try:
            download_url_to_file(source["url"], str(original), source["hash_prefix"], progress=False)
        except Exception as exc:  # network and hash errors come in many types
            raise S2SError(f"prefetch: could not download {source['url']} ({exc})") from exc
        convert_original(original, spec, out, source_url=source["url"])
    return {"name": spec, "path": str(out), **inception_metadata(out)}
