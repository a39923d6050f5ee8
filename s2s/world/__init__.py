"""A miniature world for the study: procedurally drawn subjects and scenes, captioned in the study's prompt
language, small enough to pretrain Stable-Diffusion-shaped models on two CPU cores (issue 15).

- ``s2s.world.scene``: the vocabulary (classes, colours, the study's contexts) and scene descriptions;
- ``s2s.world.render``: a deterministic renderer of 64 x 64 scenes;
- ``s2s.world.captions``: captions of scenes and parsing of prompts back into scenes.
- ``s2s.world.build``: pretraining the world's models (``python -m s2s.world.build``); the committed build
  is ``models/world`` (``WORLD_MODELS``), with its ``BUILD.json``.

This package holds the world's building blocks only (scene, render, captions, names, identifiers, tokenizer,
data, classifier, read-out, masks, subjects, edit cases, build) and imports nothing from the pipeline
(sampling, training, editing, metrics, reports, the workflow); the studies that run the pipeline on the
world are ``s2s.world_studies``. tests/test_layers.py checks the layers.
"""

from pathlib import Path

# The committed build, beside the package in a checkout (the workflow's folder is the repository).
WORLD_MODELS = Path(__file__).resolve().parents[2] / "models" / "world"
