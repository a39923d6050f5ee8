"""The object's silhouette in a rendered scene: which pixels of ``render(scene)`` the object covers.

``render`` gives only the image. The mask is drawn by the renderer's own object drawers on a black canvas
through a drawing proxy that paints every shape white, at the same frame (position, size, facing and the
contexts' pose changes) and with the same 4x supersampling and box filter, so its edges match the image's
anti-aliasing: a pixel's value is the fraction of it the object covers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from s2s.world import render as _render
from s2s.world.scene import Scene


class _Silhouette:
    """An ``ImageDraw`` whose shapes are all filled (and outlined) with 255."""

    def __init__(self, draw: ImageDraw.ImageDraw):
        self._draw = draw

    def __getattr__(self, name):
        method = getattr(self._draw, name)

        def paint(*args, **kwargs):
            if kwargs.get("fill") is not None:
                kwargs["fill"] = 255
            if kwargs.get("outline") is not None:
                kwargs["outline"] = 255
            return method(*args, **kwargs)

        return paint


def object_coverage(scene: Scene, accessories: bool = True) -> np.ndarray:
    """The fraction of each pixel of ``render(scene)`` that the object covers, float32 [64, 64] in [0, 1].

    The object is its body as drawn, before the foregrounds that may hide part of it (bath water,
    snowflakes); with ``accessories`` its hat or shirt counts as part of it. Shadows and surfboards do
    not. The frame follows ``render`` (its pose changes for jumping, sleeping and floating).
    """
    canvas = Image.new("L", (_render.S, _render.S), 0)
    d = _Silhouette(ImageDraw.Draw(canvas))
    context, y = scene.context, scene.y
    if context == "jumping in the air":
        y = min(y, 0.42)
    elif context == "sleeping on a bed":
        y = 0.55
    elif context == "floating in space":
        y = min(y, 0.55)
    unit = _render.S * 0.62 * scene.scale
    f = _render._Frame(_render.S * scene.x, _render.S * y, unit, scene.facing)
    anchor = _render._draw_object(
        d,
        f,
        scene.individual,
        lying=context == "sleeping on a bed",
        legs_spread=context == "jumping in the air",
    )
    if accessories and context == "wearing a red hat":
        _render._hat(d, f, anchor)
    elif accessories and context in ("wearing a yellow shirt", "wearing a tuxedo"):
        _render._shirt(d, f, anchor, (0, 0, 0), tuxedo=context == "wearing a tuxedo")
    small = canvas.resize((_render.SIZE, _render.SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def object_mask(scene: Scene, accessories: bool = True) -> np.ndarray:
    """Boolean [64, 64]: the pixels of ``render(scene)`` that the object touches at all (coverage > 0)."""
    return object_coverage(scene, accessories) > 0.0
