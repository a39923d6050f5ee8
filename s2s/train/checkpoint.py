"""Resumable training checkpoints in safetensors + JSON (no pickles).

A checkpoint holds the trainable tensors, the optimizer state, the lr-scheduler state and the training
step. No random-generator state is needed: the loop draws every random number from generators seeded by
the sample's position in the data stream, so a resumed run continues with exactly the numbers an
uninterrupted run would have used. accelerate's ``save_state`` would do most of this but writes the
optimizer state as a pickle, which this project never loads.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from s2s.io import atomic_dir, load_safetensors, save_safetensors

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _split_state(state: dict, prefix: str, tensors: dict, plain: dict) -> None:
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            plain[name] = value


def save_checkpoint(
    folder: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    total_limit: int,
) -> Path:
    target = folder / f"checkpoint-{step}"
    opt_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, object] = {}
    for idx, per_param in opt_state["state"].items():
        _split_state(per_param, f"{idx}/", tensors, plain)
    meta = {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "optimizer_plain": plain,
        "lr_scheduler": {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"},
    }
    with atomic_dir(target) as tmp:
        save_safetensors(trainable, tmp / "trainable.safetensors")
        save_safetensors(tensors or {"_empty": torch.zeros(0)}, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=float))
    for old in list_checkpoints(folder)[:-total_limit]:
        shutil.rmtree(old)
    log.info("saved checkpoint %s", target)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def load_checkpoint(
    path: Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
) -> int:
    """Restore everything ``save_checkpoint`` wrote; return the step to continue from."""
    meta = json.loads((path / "state.json").read_text())
    saved = load_safetensors(path / "trainable.safetensors")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name])
    tensors = load_safetensors(path / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["optimizer_plain"].items()):
        if name == "_empty":
            continue
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    lr_scheduler.load_state_dict(
        {**meta["lr_scheduler"], "lr_lambdas": [None] * len(lr_scheduler.lr_lambdas)}
    )
    return int(meta["step"])
