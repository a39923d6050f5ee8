"""The attribute read-out: what an image shows of an individual, read by a network trained on renders
passed through the world VAE, and a sample identified against a line-up by the renderer's truth.

The renderer knows every individual's attributes (``s2s.world.scene.attributes``: body and accent colour,
marking kind and place, build, head, ears, tail). The read-out predicts each from a 64 px image; it is
trained on VAE reconstructions (build part ``readout``), so it reads samples, which come out of the same
decoder, as it read its training images. It sees what the renderer draws, not what a photo resembles:
unlike the identity network (the DINO column), it cannot score a sample high for a similar overall colour
when the marking is wrong.

Identification ranks the subject against a line-up of other individuals of its class: each candidate
scores the sum over attributes of the log-probability the read-out gives its value, and a sample counts as
identified when the subject scores strictly highest (a tie with k candidates counts 1/k). A sample whose
class the world classifier does not find (probability below ``CLASS_GATE``) counts as not identified,
and its attributes as not found: a brown blob is not a brown dog.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2s.io import S2SError, load_safetensors, save_safetensors
from s2s.world.scene import ATTRIBUTES, Individual, attributes

FORMAT = "s2s-world-readout"
CLASS_GATE = 0.5
# Contexts that cover part of the object: the attributes they hide are not scored there.
HIDDEN_BY = {
    "wearing a yellow shirt": ("marking", "place"),
    "wearing a tuxedo": ("marking", "place"),
    "getting a bath": ("marking", "place", "build", "tail"),
    "sleeping on a bed": ("build",),
}


NORMS = {"group": lambda channels: nn.GroupNorm(8, channels), "batch": nn.BatchNorm2d}


class AttributeReadout(nn.Module):
    """A small CNN with one head per attribute (``ATTRIBUTES``); input uint8 [N, 3, 64, 64] or [-1, 1].

    Colours and marking kinds survive global pooling; proportions do not: a large head is told from a small
    one only against the rest of the body, whose size varies with the pose's scale and the build. With
    ``spatial`` channels the heads also see the last feature map position by position (and the input gets
    two coordinate channels), so they can compare parts of the body with each other.

    ``norm`` is ``"group"`` (GroupNorm, 8 groups) or ``"batch"`` (BatchNorm, whose running statistics are
    used once the model is in eval mode, as ``load_readout`` returns it). BatchNorm reads proportions better
    at the same steps (measured in the twelfth session: see the README's read-out paragraph)."""

    def __init__(self, width: int = 32, input_size: int = 64, spatial: int = 0, norm: str = "group") -> None:
        super().__init__()
        if norm not in NORMS:
            raise S2SError(f"read-out norm {norm!r}: expected one of {sorted(NORMS)}")
        self.width, self.input_size, self.spatial, self.norm = width, input_size, spatial, norm

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), NORMS[norm](cout), nn.SiLU())

        w = width
        self.convs = nn.Sequential(
            block(5 if spatial else 3, w, 1), block(w, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
            block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1), block(4 * w, 4 * w, 2),
        )  # fmt: skip
        features = 8 * w
        if spatial:
            self.reduce = nn.Conv2d(4 * w, spatial, 1)
            features += spatial * (input_size // 8) ** 2
        self.heads = nn.ModuleDict({k: nn.Linear(features, len(v)) for k, v in ATTRIBUTES.items()})

    def config(self) -> dict:
        config = {"width": self.width, "input_size": self.input_size, "spatial": self.spatial}
        return {**config, "norm": self.norm}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        if self.spatial:
            ramp = torch.linspace(-1, 1, self.input_size, device=x.device, dtype=x.dtype)
            ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
            x = torch.cat([x, xs.expand(len(x), 1, -1, -1), ys.expand(len(x), 1, -1, -1)], dim=1)
        h = self.convs(x)
        parts = [h.mean(dim=(2, 3)), h.amax(dim=(2, 3))]  # max: small markings count
        if self.spatial:
            parts.append(F.silu(self.reduce(h)).flatten(1))
        pooled = torch.cat(parts, dim=1)
        return {k: head(pooled) for k, head in self.heads.items()}

    @torch.no_grad()
    def log_probs(self, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        parts = [self(chunk) for chunk in images.split(batch)]
        return {k: torch.cat([p[k] for p in parts]).log_softmax(-1) for k in ATTRIBUTES}


def save_readout(model: AttributeReadout, path: Path | str, extra: dict | None = None) -> Path:
    metadata = {"format": FORMAT, "config": json.dumps(model.config()), **(extra or {})}
    save_safetensors(model.state_dict(), path, metadata=metadata)
    return Path(path)


def load_readout(path: Path | str) -> AttributeReadout:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise S2SError(f"{path}: no attribute read-out (rebuild the world: python -m s2s.world.build)")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise S2SError(f"{path}: not a world attribute read-out (no '{FORMAT}' metadata)")
    model = AttributeReadout(**json.loads(metadata["config"]))
    model.load_state_dict(load_safetensors(path), strict=True)
    return model.eval().requires_grad_(False)


def visible(context: str) -> tuple[str, ...]:
    """The attributes an image in ``context`` shows."""
    hidden = HIDDEN_BY.get(context, ())
    return tuple(k for k in ATTRIBUTES if k not in hidden)


def candidate_scores(log_probs: dict[str, torch.Tensor], candidates: list[Individual], keys) -> np.ndarray:
    """[N images, C candidates]: the summed log-probability of each candidate's attributes over ``keys``."""
    scores = np.zeros((next(iter(log_probs.values())).shape[0], len(candidates)))
    for c, individual in enumerate(candidates):
        truth = attributes(individual)
        for key in keys:
            scores[:, c] += log_probs[key][:, ATTRIBUTES[key].index(truth[key])].numpy()
    return scores


def identified(scores: np.ndarray, subject: int = 0) -> np.ndarray:
    """Per image: 1 when candidate ``subject`` scores strictly highest, 1/k when it ties k-way for the top,
    else 0."""
    top = scores.max(axis=1, keepdims=True)
    at_top = np.isclose(scores, top, rtol=0, atol=1e-9)
    return np.where(at_top[:, subject], 1.0 / at_top.sum(axis=1), 0.0)


def attribute_hits(log_probs: dict[str, torch.Tensor], truth: dict[str, str], keys) -> dict[str, np.ndarray]:
    """Per attribute in ``keys``: 1.0 where the read-out's most likely value is ``truth``'s, per image."""
    return {
        key: (log_probs[key].argmax(-1).numpy() == ATTRIBUTES[key].index(truth[key])).astype(float)
        for key in keys
    }


def subject_truth(
    images: torch.Tensor,
    contexts: list[str],
    subject: Individual,
    lineup: list[Individual],
    readout: AttributeReadout,
    class_probability: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per image (uint8 [N, 3, 64, 64] samples of ``subject`` in ``contexts``): ``identification`` (the
    subject against ``lineup``, ``identified``), ``attributes`` (share of the visible attributes read as
    the subject's) and one ``attribute_{key}`` per attribute (NaN where the context hides it); all 0 where
    ``class_probability`` (the world classifier's, of the subject's class) is below ``CLASS_GATE``."""
    log_probs = readout.log_probs(images)
    gate = np.asarray(class_probability) >= CLASS_GATE
    truth = attributes(subject)
    candidates = [subject, *lineup]
    n = images.shape[0]
    out = {"identification": np.zeros(n), "attributes": np.zeros(n)}
    out.update({f"attribute_{k}": np.full(n, np.nan) for k in ATTRIBUTES})
    for context in sorted(set(contexts)):
        rows = np.array([i for i, c in enumerate(contexts) if c == context])
        keys = visible(context)
        part = {k: v[rows] for k, v in log_probs.items()}
        out["identification"][rows] = identified(candidate_scores(part, candidates, keys))
        hits = attribute_hits(part, truth, keys)
        out["attributes"][rows] = np.mean([hits[k] for k in keys], axis=0)
        for key in keys:
            out[f"attribute_{key}"][rows] = hits[key]
    for key, values in out.items():
        out[key] = np.where(gate, values, np.where(np.isnan(values), np.nan, 0.0))
    return out
