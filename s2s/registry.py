"""The methods s2s trains: the one list of their names, and what the workflow needs to know about each.

This module imports no torch: the Snakefile, the config check, the preflight, the plan, the tables and
the plots read it. Each method's training, saving and loading is its class (``MethodInfo.implementation``,
in ``s2s/train/``), which the training job and the loaders import through ``method_class``.

A run trains the methods its config lists (``methods:``). An entry is a method's name, or the name of a
variant declared under ``variants:`` (``NAME: {method: BASE, KEY: value, ...}``): the base method
trained with some of its training keys overridden, under its own name, so with its own results folder
(``results/<subject>/models/NAME``), Table 1 row, grids and rerun trigger.
"""

from __future__ import annotations

import importlib
import zlib
from dataclasses import dataclass

from s2s.io import S2SError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    label: str  # Table 1's row, the plots' legends
    colour: str  # the plots' colour
    marker: str  # the file of a trained model's folder that the workflow tracks (its rule's output)
    implementation: str  # "module:Class" of the training strategy (s2s.train.methods.Method subclass)
    study: bool = False  # one of the study's three methods
    prior: bool = True  # whether it has the class prior-preservation loss (with_prior_preservation)


_METHODS = (
    MethodInfo(
        "textual_inversion",
        "Textual Inversion",
        "#1f77b4",
        "learned_embeds.safetensors",
        "s2s.train.methods:TextualInversion",
        study=True,
        prior=False,
    ),
    MethodInfo(
        "dreambooth", "DreamBooth", "#d62728", "model_index.json", "s2s.train.methods:DreamBooth", study=True
    ),
    MethodInfo(
        "lora", "LoRA", "#2ca02c", "pytorch_lora_weights.safetensors", "s2s.train.methods:LoRA", study=True
    ),
    MethodInfo(
        "pivotal",
        "Pivotal tuning",
        "#ff7f0e",
        "pytorch_lora_weights.safetensors",
        "s2s.train.pivotal:Pivotal",
    ),
    MethodInfo(
        "custom_diffusion",
        "Custom Diffusion",
        "#8c564b",
        "pytorch_custom_diffusion_weights.safetensors",
        "s2s.train.custom_diffusion:CustomDiffusion",
    ),
)
#: name -> method, in the study's order (new methods after the study's three)
METHODS = {m.name: m for m in _METHODS}
NAMES = tuple(METHODS)
STUDY_METHODS = tuple(m.name for m in _METHODS if m.study)
#: the untouched base model, sampled and evaluated as the reference row
BASE = "base"
BASE_LABEL = "Base model"
BASE_COLOUR = "#7f7f7f"
# Colours of variants, picked by name (a variant is not its base method's colour).
VARIANT_COLOURS = ("#9467bd", "#e377c2", "#bcbd22", "#17becf", "#7f3f00", "#003f7f")
#: keys of a variant block that are not training keys
VARIANT_KEYS = ("method",)


def variants(config: dict) -> dict[str, dict]:
    """The config's variant blocks (config key ``variants``), NAME -> block."""
    return dict(config.get("variants") or {})


def base_method(config: dict, name: str) -> str:
    """The method a configured name trains: itself, or a variant's base method."""
    if name in METHODS:
        return name
    block = variants(config).get(name)
    if block is None:
        declared = ", ".join(variants(config)) or "none"
        raise S2SError(
            f"unknown method {name!r}; use one of {', '.join(NAMES)} or a variant declared under "
            f"variants: (declared: {declared})"
        )
    return block["method"]


def overrides(config: dict, name: str) -> dict:
    """The training keys a variant sets (empty for a method's own name)."""
    if name in METHODS:
        return {}
    return {k: v for k, v in variants(config).get(name, {}).items() if k not in VARIANT_KEYS}


def info(config: dict, name: str) -> MethodInfo:
    return METHODS[base_method(config, name)]


def label(name: str) -> str:
    """A row's label in tables, plots and the bench: the method's, else (a variant) its name."""
    if name == BASE:
        return BASE_LABEL
    return METHODS[name].label if name in METHODS else name


def colour(name: str) -> str:
    """A row's colour in the plots: the method's, else (a variant) one picked by its name."""
    if name == BASE:
        return BASE_COLOUR
    if name in METHODS:
        return METHODS[name].colour
    return VARIANT_COLOURS[zlib.crc32(name.encode()) % len(VARIANT_COLOURS)]


def method_class(name: str):
    """The training strategy class of a method (imports torch)."""
    module, cls = METHODS[name].implementation.split(":")
    return getattr(importlib.import_module(module), cls)
