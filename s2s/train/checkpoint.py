"""Resumable training checkpoints in safetensors + JSON (no pickles).

A checkpoint holds the trainable tensors, the optimizer state, the lr-scheduler state, the gradient
scaler's state (fp16), the loss history and the training step. No random-generator state is needed: the
loop draws every random number from generators seeded by the sample's position in the data stream, so a
resumed run continues with exactly the numbers an uninterrupted run would have used. accelerate's
``save_state`` would do most of this but writes the optimizer state as a pickle, which this project never
loads.

A checkpoint belongs to the settings that made it: ``state.json`` records them and their hash, and a run
resumes only from a checkpoint with its own hash (``resumable``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from s2s.io import atomic_dir, load_safetensors, save_safetensors

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Restored:
    step: int
    #: (step, loss, prior_loss) of every step up to ``step``
    losses: list[tuple[int, float, float]] = field(default_factory=list)
    #: step -> held-out loss of every checkpoint up to ``step`` (training.validation_split)
    validation_losses: dict[int, float] = field(default_factory=dict)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _split_state(state: dict, prefix: str, tensors: dict, plain: dict) -> None:
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            plain[name] = value


def scaler_state(scaler) -> dict | None:
    """The state of an enabled gradient scaler (fp16) as plain JSON values; None without one."""
    if scaler is None or not scaler.is_enabled():
        return None
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}


def save_checkpoint(
    folder: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    total_limit: int,
    settings: dict | None = None,
    losses: list[tuple[int, float, float]] | None = None,
    scaler=None,
    validation_losses: dict[int, float] | None = None,
) -> Path:
    target = folder / f"checkpoint-{step}"
    opt_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, object] = {}
    for idx, per_param in opt_state["state"].items():
        _split_state(per_param, f"{idx}/", tensors, plain)
    meta = {
        "step": step,
        "settings_hash": settings_hash(settings) if settings is not None else None,
        "settings": settings,
        "param_groups": opt_state["param_groups"],
        "optimizer_plain": plain,
        "lr_scheduler": {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"},
        "grad_scaler": scaler_state(scaler),
        # floats survive JSON exactly (repr round trip), so a resumed loss.csv equals a straight run's
        "losses": [list(row) for row in losses or []],
        "validation_losses": [[s, v] for s, v in sorted((validation_losses or {}).items())],
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


def _differences(old: dict | None, new: dict, limit: int = 4) -> str:
    if not old:
        return "no settings recorded"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"{len(keys) - limit} more")
    return ", ".join(shown) or "hash differs"


def resumable(folder: Path, settings: dict) -> tuple[Path | None, list[Path], str]:
    """The newest checkpoint made with ``settings``, the checkpoints made with others, and why."""
    # Compare through JSON so that tuples and lists, ints and floats compare as they were saved.
    settings = json.loads(json.dumps(settings, default=str))
    wanted = settings_hash(settings)
    match, stale, reasons = None, [], []
    for path in list_checkpoints(folder):
        meta = json.loads((path / "state.json").read_text())
        if meta.get("settings_hash") == wanted:
            match = path
        else:
            stale.append(path)
            reasons.append(
                f"{path.name} was made with other settings ({_differences(meta.get('settings'), settings)})"
            )
    return match, stale, "; ".join(reasons)


def folder_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def delete_checkpoints(paths: list[Path]) -> int:
    """Delete checkpoint folders; return the bytes they held."""
    size = folder_bytes(paths)
    for path in paths:
        shutil.rmtree(path)
    return size


def load_checkpoint(
    path: Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    scaler=None,
) -> Restored:
    """Restore everything ``save_checkpoint`` wrote; return the step to continue from and the losses."""
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
    if scaler is not None and scaler.is_enabled() and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    losses = [(int(s), float(v), float(p)) for s, v, p in meta.get("losses", [])]
    validation_losses = {int(s): float(v) for s, v in meta.get("validation_losses", [])}
    return Restored(int(meta["step"]), losses, validation_losses)
