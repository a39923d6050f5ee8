"""Prompt-to-Prompt editing (Hertz et al.) of generated images and inverted photos.

Entry point: :func:`s2s.edit.batch.run_edit_batch` (a manifest of edits). Building blocks:
``seq_aligner`` (token alignment), ``controllers`` (P2P edits), ``processors`` (diffusers attention
processors), ``inversion`` (DDIM, null-text, negative-prompt inversion), ``p2p`` (one edit), ``metrics``,
``bench``.
"""

from s2s.edit.batch import run_edit_batch, validate_manifest
from s2s.edit.inversion import invert
from s2s.edit.p2p import EditResult, generate_edit

__all__ = ["EditResult", "generate_edit", "invert", "run_edit_batch", "validate_manifest"]
