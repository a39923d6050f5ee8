"""A deterministic renderer of the world's scenes: a scene description in, a 64 x 64 RGB image out.

64 x 64 because the world's models must pretrain on two CPU cores: a VAE that downsamples by 4 gives
16 x 16 latents (the issue's lever for samples per minute), and objects of ~30 px still show their class
by shape (ears, spout, straps, antenna), their colour by area and their context by background or
accessory. Scenes are drawn at 4x with PIL and downsampled with a box filter, so edges are anti-aliased
(a VAE reconstructs smooth edges far better than jagged ones). The same scene always gives the same
pixels; an individual's markings come from its own parameters, so they are the same in every photo.
"""

from __future__ import annotations

import hashlib
import math
import random

from PIL import Image, ImageDraw

from s2s.world.scene import PLAIN, Individual, Scene

SIZE = 64
SUPERSAMPLE = 4
S = SIZE * SUPERSAMPLE  # drawing canvas

Colour = tuple[int, int, int]


def _rng(*parts) -> random.Random:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _darker(c: Colour, f: float = 0.6) -> Colour:
    return tuple(int(v * f) for v in c)


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill, outline=None) -> None:
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill, outline=outline)


def _rect(d: ImageDraw.ImageDraw, x0, y0, x1, y1, fill, radius: float = 0) -> None:
    box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if radius:
        d.rounded_rectangle(box, radius=radius, fill=fill)
    else:
        d.rectangle(box, fill=fill)


# ---------------------------------------------------------------- backgrounds


def _sky(d, top: Colour, bottom: Colour, y1: float = 1.0) -> None:
    rows = int(S * y1)
    for y in range(rows):
        d.line([(0, y), (S, y)], fill=_mix(top, bottom, y / max(rows - 1, 1)))


def _ground(d, y0: float, colour: Colour) -> None:
    d.rectangle((0, int(S * y0), S, S), fill=colour)


def _plain(d, rng) -> None:
    base = (rng.randint(150, 235), rng.randint(150, 235), rng.randint(150, 235))
    _sky(d, base, _darker(base, 0.85))


def _jungle(d, rng) -> None:
    _sky(d, (20, 70, 30), (30, 90, 35))
    for _ in range(70):
        x, y = rng.uniform(0, S), rng.uniform(0, S)
        green = (rng.randint(20, 70), rng.randint(100, 170), rng.randint(20, 60))
        _ellipse(d, x, y, rng.uniform(8, 22), rng.uniform(4, 9), green)
    for _ in range(5):
        x = rng.uniform(0, S)
        d.line([(x, 0), (x + rng.uniform(-30, 30), S * 0.7)], fill=(90, 60, 25), width=4)


def _snow(d, rng) -> None:
    _sky(d, (185, 195, 210), (215, 220, 230), 0.45)
    _ground(d, 0.45, (245, 247, 252))
    for _ in range(8):
        x = rng.uniform(0, S)
        _ellipse(d, x, S * rng.uniform(0.5, 0.95), rng.uniform(20, 40), 6, (220, 228, 245))


def _beach(d, rng, carpet: bool = False) -> None:
    _sky(d, (120, 185, 240), (175, 215, 245), 0.3)
    d.rectangle((0, int(S * 0.3), S, int(S * 0.48)), fill=(30, 110, 190))
    for _ in range(6):
        y = S * rng.uniform(0.33, 0.46)
        x = rng.uniform(0, S)
        d.line([(x, y), (x + 20, y)], fill=(200, 225, 245), width=2)
    _ground(d, 0.48, (230, 205, 140))
    if carpet:
        d.polygon(
            [(S * 0.42, S * 0.48), (S * 0.58, S * 0.48), (S * 0.9, S), (S * 0.1, S)], fill=(190, 20, 35)
        )


def _wooden_floor(d, rng) -> None:
    _sky(d, (225, 215, 190), (210, 200, 175), 0.38)
    _ground(d, 0.38, (150, 95, 50))
    y = S * 0.38
    while y < S:
        d.line([(0, y), (S, y)], fill=(95, 55, 25), width=3)
        step = S * 0.1
        for x in range(int(rng.uniform(0, 60)), S, 70):
            d.line([(x, y), (x, y + step)], fill=(105, 65, 30), width=2)
        y += step


def _mountain(d, rng) -> None:
    _sky(d, (110, 170, 235), (190, 220, 245), 0.75)
    peak = rng.uniform(0.3, 0.7)
    d.polygon(
        [(S * (peak - 0.55), S * 0.75), (S * peak, S * 0.12), (S * (peak + 0.55), S * 0.75)],
        fill=(115, 110, 120),
    )
    d.polygon(
        [(S * (peak - 0.12), S * 0.27), (S * peak, S * 0.12), (S * (peak + 0.12), S * 0.27)],
        fill=(250, 250, 255),
    )
    _ground(d, 0.72, (80, 150, 60))


def _buildings(d, rng, y_base: float) -> None:
    x = -rng.uniform(0, 20)
    while x < S:
        w = rng.uniform(22, 45)
        h = rng.uniform(0.25, 0.55) * S
        grey = rng.randint(70, 140)
        d.rectangle((x, S * y_base - h, x + w - 3, S * y_base), fill=(grey, grey, grey + 10))
        for wy in range(int(S * y_base - h + 8), int(S * y_base - 6), 14):
            for wx in range(int(x + 5), int(x + w - 8), 10):
                if rng.random() < 0.6:
                    d.rectangle((wx, wy, wx + 4, wy + 6), fill=(240, 220, 120))
        x += w


def _city(d, rng) -> None:
    _sky(d, (170, 200, 230), (215, 225, 235), 0.7)
    _buildings(d, rng, 0.7)
    _ground(d, 0.7, (110, 110, 115))


def _blue_house(d, rng) -> None:
    _sky(d, (120, 180, 240), (190, 220, 245), 0.62)
    _ground(d, 0.62, (90, 160, 70))
    left = rng.random() < 0.5
    x0 = S * (0.05 if left else 0.55)
    w = S * 0.4
    d.rectangle((x0, S * 0.32, x0 + w, S * 0.64), fill=(40, 80, 200))
    d.polygon([(x0 - 8, S * 0.33), (x0 + w / 2, S * 0.12), (x0 + w + 8, S * 0.33)], fill=(90, 40, 35))
    d.rectangle((x0 + w * 0.4, S * 0.48, x0 + w * 0.6, S * 0.64), fill=(230, 230, 240))
    d.rectangle((x0 + w * 0.1, S * 0.38, x0 + w * 0.3, S * 0.48), fill=(210, 235, 250))


def _window(d, rng) -> None:
    _sky(d, (225, 210, 185), (215, 200, 175), 0.72)
    _ground(d, 0.72, (160, 120, 85))
    x0 = S * rng.uniform(0.15, 0.5)
    d.rectangle((x0 - 6, S * 0.08, x0 + S * 0.4 + 6, S * 0.52), fill=(245, 245, 245))
    d.rectangle((x0, S * 0.11, x0 + S * 0.4, S * 0.49), fill=(150, 205, 245))
    d.line([(x0 + S * 0.2, S * 0.11), (x0 + S * 0.2, S * 0.49)], fill=(245, 245, 245), width=5)
    d.line([(x0, S * 0.3), (x0 + S * 0.4, S * 0.3)], fill=(245, 245, 245), width=5)


def _sunflower(d, x: float, y: float, r: float) -> None:
    d.line([(x, y), (x, y + r * 3)], fill=(40, 120, 40), width=3)
    for k in range(10):
        a = k * math.pi / 5
        _ellipse(d, x + math.cos(a) * r, y + math.sin(a) * r, r * 0.55, r * 0.55, (250, 205, 20))
    _ellipse(d, x, y, r * 0.7, r * 0.7, (100, 60, 20))


def _sunflowers(d, rng) -> None:
    _sky(d, (130, 190, 240), (180, 215, 245), 0.35)
    _ground(d, 0.35, (70, 160, 50))
    for _ in range(9):
        side = rng.choice((rng.uniform(0.02, 0.3), rng.uniform(0.7, 0.98)))
        _sunflower(d, S * side, S * rng.uniform(0.3, 0.85), rng.uniform(8, 13))


def _people(d, rng, y_feet: float) -> None:
    for _ in range(12):
        x = rng.uniform(0, S)
        h = rng.uniform(40, 60)
        coat = (rng.randint(30, 220), rng.randint(30, 220), rng.randint(30, 220))
        _rect(d, x - 7, S * y_feet - h, x + 7, S * y_feet, coat, radius=5)
        _ellipse(d, x, S * y_feet - h - 7, 7, 7, (225, 185, 150))


def _sidewalk(d, rng) -> None:
    _sky(d, (180, 200, 225), (210, 215, 225), 0.55)
    _buildings(d, rng, 0.55)
    _ground(d, 0.55, (150, 150, 150))
    for x in range(0, S, 40):
        d.line([(x, S * 0.55), (x - 30, S)], fill=(120, 120, 120), width=2)
    _people(d, rng, 0.62)


def _taj_mahal(d, rng) -> None:
    _sky(d, (200, 215, 240), (240, 225, 205), 0.7)
    white = (245, 242, 235)
    cx = S * rng.uniform(0.4, 0.6)
    d.rectangle((cx - S * 0.25, S * 0.38, cx + S * 0.25, S * 0.68), fill=white)
    _ellipse(d, cx, S * 0.32, S * 0.13, S * 0.13, white)
    d.polygon([(cx - 5, S * 0.2), (cx, S * 0.1), (cx + 5, S * 0.2)], fill=white)
    for dx in (-0.36, -0.3, 0.3, 0.36):
        d.rectangle((cx + S * dx - 3, S * 0.22, cx + S * dx + 3, S * 0.68), fill=white)
    d.rectangle((cx - S * 0.06, S * 0.5, cx + S * 0.06, S * 0.68), fill=(200, 195, 185))
    _ground(d, 0.68, (200, 190, 160))
    d.rectangle((cx - S * 0.08, S * 0.7, cx + S * 0.08, S), fill=(90, 150, 200))


def _bath_wall(d, rng) -> None:
    _sky(d, (200, 225, 235), (190, 215, 230))
    for x in range(0, S, 24):
        d.line([(x, 0), (x, S)], fill=(235, 245, 250), width=2)
    for y in range(0, S, 24):
        d.line([(0, y), (S, y)], fill=(235, 245, 250), width=2)


def _wave(d, rng) -> None:
    _sky(d, (120, 185, 240), (180, 215, 245), 0.4)
    points = [(0, S * 0.55)]
    for k in range(9):
        x = S * k / 8
        points.append((x, S * (0.5 + 0.08 * math.sin(k * 1.3 + rng.uniform(0, 0.4)))))
    points += [(S, S), (0, S)]
    d.polygon(points, fill=(25, 95, 185))
    d.line(points[1:-2], fill=(235, 245, 255), width=6)
    _ellipse(d, S * 0.85, S * 0.42, S * 0.2, S * 0.12, (30, 110, 200))


def _space(d, rng) -> None:
    d.rectangle((0, 0, S, S), fill=(5, 5, 20))
    for _ in range(60):
        x, y = rng.uniform(0, S), rng.uniform(0, S)
        r = rng.uniform(0.8, 2.2)
        _ellipse(d, x, y, r, r, (255, 255, 230))
    px, py = S * rng.choice((0.18, 0.82)), S * rng.uniform(0.15, 0.3)
    _ellipse(d, px, py, 22, 22, (200, 120, 70))
    d.ellipse((px - 34, py - 6, px + 34, py + 6), outline=(230, 200, 150), width=3)


def _jump_sky(d, rng) -> None:
    _sky(d, (100, 165, 235), (185, 215, 245), 0.85)
    _ground(d, 0.85, (95, 160, 70))
    for _ in range(3):
        x, y = rng.uniform(0, S), rng.uniform(0.08, 0.3) * S
        for k in range(3):
            _ellipse(d, x + k * 12, y + (k % 2) * 4, 14, 9, (250, 250, 252))


def _bedroom(d, rng) -> None:
    _sky(d, (210, 195, 225), (200, 185, 215), 0.55)
    _ground(d, 0.55, (130, 95, 70))
    blanket = (rng.randint(60, 200), rng.randint(60, 200), rng.randint(120, 230))
    d.rectangle((S * 0.05, S * 0.45, S * 0.95, S * 0.9), fill=(110, 70, 40))  # frame
    d.rectangle((S * 0.07, S * 0.5, S * 0.93, S * 0.78), fill=blanket)
    _rect(d, S * 0.09, S * 0.42, S * 0.32, S * 0.56, (250, 250, 250), radius=10)  # pillow


BACKGROUNDS = {
    "in the jungle": _jungle,
    "in the snow": _snow,
    "on the beach": _beach,
    "on top of a wooden floor": _wooden_floor,
    "with a mountain in the background": _mountain,
    "with a city in the background": _city,
    "with a blue house in the background": _blue_house,
    "wearing a red hat": _plain,
    "wearing a yellow shirt": _plain,
    "sitting near the window": _window,
    "on top of green grass with sunflowers around it": _sunflowers,
    "wearing a tuxedo": _plain,
    "walking on a red carpet on the beach": lambda d, rng: _beach(d, rng, carpet=True),
    "on top of the sidewalk in a crowded city": _sidewalk,
    "with the Taj Mahal in the background": _taj_mahal,
    "getting a bath": _bath_wall,
    "surfing on a wave": _wave,
    "floating in space": _space,
    "jumping in the air": _jump_sky,
    "sleeping on a bed": _bedroom,
    PLAIN: _plain,
}


# ---------------------------------------------------------------- objects


class _Frame:
    """Object coordinates: units of the object's size, x mirrored when it faces left."""

    def __init__(self, cx: float, cy: float, unit: float, facing: int):
        self.cx, self.cy, self.unit, self.facing = cx, cy, unit, facing

    def p(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + self.facing * x * self.unit, self.cy + y * self.unit

    def r(self, v: float) -> float:
        return v * self.unit


PLACE_OFFSET = {"front": 0.5, "middle": 0.0, "back": -0.5}  # along the body, in body radii (front: the head)


def _markings(d, f: _Frame, ind: Individual, cx: float, cy: float, rx: float, ry: float) -> None:
    """The individual's markings on a body ellipse centred at (cx, cy) with radii rx, ry (object units);
    spots and a patch sit on the third of the body that ``ind.place`` names."""
    rng = _rng("markings", ind)
    at = cx + PLACE_OFFSET[ind.place] * rx
    if ind.marking == "spots":
        for _ in range(4):
            x, y = at + rng.uniform(-0.22, 0.22) * rx, cy + rng.uniform(-0.45, 0.45) * ry
            _ellipse(d, *f.p(x, y), f.r(0.17 * ry), f.r(0.15 * ry), ind.accent)
    elif ind.marking == "stripes":
        for k in range(4):
            x = cx + (-0.55 + 0.37 * k) * rx
            d.line(
                [f.p(x, cy - 0.8 * ry), f.p(x + 0.1 * rx, cy + 0.8 * ry)],
                fill=ind.accent,
                width=max(2, int(f.r(0.12))),
            )
    elif ind.marking == "patch":
        _ellipse(d, *f.p(at, cy - 0.15 * ry), f.r(0.42 * ry), f.r(0.36 * ry), ind.accent)
    elif ind.marking == "belly":
        _ellipse(d, *f.p(cx, cy + 0.45 * ry), f.r(0.75 * rx), f.r(0.45 * ry), ind.accent)


def _quadruped(d, f: _Frame, ind: Individual, cat: bool, lying: bool, legs_spread: bool) -> dict:
    bx, by = 0.9 * ind.length / 2, 0.42 * ind.height / 2
    if lying:
        by *= 0.75
    leg_h = 0.0 if lying else 0.28 * ind.height
    dark = _darker(ind.body, 0.75)
    if not lying:
        for x in (-0.7 * bx, -0.45 * bx, 0.45 * bx, 0.7 * bx):
            lean = (0.12 if x > 0 else -0.12) if legs_spread else 0.0
            d.line([f.p(x, by * 0.5), f.p(x + lean, by + leg_h)], fill=dark, width=max(3, int(f.r(0.09))))
    # tail
    if cat:
        d.line(
            [
                f.p(-bx * 0.95, -by * 0.2),
                f.p(-bx * 1.25, -by * (1.6 + 1.5 * ind.tail)),
                f.p(-bx * 1.05, -by * (2.0 + 2 * ind.tail)),
            ],
            fill=ind.body,
            width=max(3, int(f.r(0.07))),
            joint="curve",
        )
    else:
        d.line(
            [f.p(-bx * 0.95, -by * 0.3), f.p(-bx * (1.15 + 0.25 * ind.tail), -by * (0.7 + 0.9 * ind.tail))],
            fill=ind.body,
            width=max(3, int(f.r(0.08))),
        )
    _ellipse(d, *f.p(0, 0), f.r(bx), f.r(by), ind.body)
    _markings(d, f, ind, 0, 0, bx, by)
    hr = 0.2 * ind.head * (0.9 if cat else 1.0)
    hx, hy = bx * 0.95, -by * (0.4 if lying else 1.1)
    if cat:  # pointy ears
        for ex in (-0.55, 0.45):
            base = hx + ex * hr
            d.polygon(
                [
                    f.p(base - 0.45 * hr * ind.ears, hy - 0.55 * hr),
                    f.p(base + 0.05 * hr, hy - hr * (1.1 + 0.6 * ind.ears)),
                    f.p(base + 0.5 * hr * ind.ears, hy - 0.6 * hr),
                ],
                fill=ind.body,
            )
            d.polygon(
                [
                    f.p(base - 0.2 * hr, hy - 0.6 * hr),
                    f.p(base + 0.05 * hr, hy - hr * (0.9 + 0.4 * ind.ears)),
                    f.p(base + 0.25 * hr, hy - 0.62 * hr),
                ],
                fill=ind.accent,
            )
    _ellipse(d, *f.p(hx, hy), f.r(hr), f.r(hr * 0.95), ind.body)
    if not cat:  # snout and floppy ears
        _ellipse(
            d,
            *f.p(hx + hr * 0.85, hy + hr * 0.25),
            f.r(hr * 0.55),
            f.r(hr * 0.38),
            _mix(ind.body, (235, 220, 200), 0.35),
        )
        _ellipse(d, *f.p(hx + hr * 1.3, hy + hr * 0.12), f.r(hr * 0.16), f.r(hr * 0.13), (20, 20, 20))
        _ellipse(
            d,
            *f.p(hx - hr * 0.55, hy + hr * 0.2 * ind.ears),
            f.r(hr * 0.3),
            f.r(hr * 0.55 * ind.ears),
            ind.accent,
        )
    else:
        for k in (-1, 1):
            d.line(
                [f.p(hx + hr * 0.7, hy + hr * 0.3), f.p(hx + hr * 1.5, hy + hr * (0.3 + 0.25 * k))],
                fill=(30, 30, 30),
                width=1,
            )
    eye = (hx + hr * 0.35, hy - hr * 0.2)
    if lying:
        d.line([f.p(eye[0] - hr * 0.15, eye[1]), f.p(eye[0] + hr * 0.15, eye[1])], fill=(20, 20, 20), width=2)
    else:
        _ellipse(d, *f.p(*eye), f.r(hr * 0.14), f.r(hr * 0.14), (15, 15, 15))
    return {"head": (hx, hy - hr), "head_r": hr, "body": (0, 0, bx, by), "feet": by + leg_h}


def _teapot(d, f: _Frame, ind: Individual, **_) -> dict:
    bx, by = 0.42 * ind.length, 0.3 * ind.height
    width = max(4, int(f.r(0.09 * ind.tail)))
    d.arc(
        (*f.p(-bx - 0.22 * ind.tail, -by * 0.6), *f.p(-bx + 0.12, by * 0.5))
        if f.facing > 0
        else (*f.p(-bx + 0.12, -by * 0.6), *f.p(-bx - 0.22 * ind.tail, by * 0.5)),
        0,
        360,
        fill=_darker(ind.body, 0.8),
        width=width,
    )
    d.polygon(
        [
            f.p(bx * 0.8, by * 0.1),
            f.p(bx * 0.8, by * 0.5),
            f.p(bx + 0.3 * ind.ears, -by * (0.6 + 0.5 * ind.ears)),
            f.p(bx + 0.36 * ind.ears, -by * (0.75 + 0.5 * ind.ears)),
        ],
        fill=ind.body,
    )
    _ellipse(d, *f.p(0, 0), f.r(bx), f.r(by), ind.body)
    _markings(d, f, ind, 0, 0, bx, by)
    lid_r = 0.2 * ind.head
    _ellipse(d, *f.p(0, -by * 0.95), f.r(lid_r), f.r(lid_r * 0.35), ind.accent)
    _ellipse(d, *f.p(0, -by * 0.95 - lid_r * 0.4), f.r(lid_r * 0.28), f.r(lid_r * 0.28), ind.accent)
    return {"head": (0, -by * 0.95 - lid_r * 0.5), "head_r": lid_r, "body": (0, 0, bx, by), "feet": by}


def _backpack(d, f: _Frame, ind: Individual, **_) -> dict:
    bx, by = 0.3 * ind.length, 0.42 * ind.height
    strap = _darker(ind.body, 0.6)
    d.arc(
        (*f.p(-bx * 0.5, -by - 0.18 * ind.ears), *f.p(bx * 0.5, -by + 0.12))
        if f.facing > 0
        else (*f.p(bx * 0.5, -by - 0.18 * ind.ears), *f.p(-bx * 0.5, -by + 0.12)),
        180,
        360,
        fill=strap,
        width=max(3, int(f.r(0.06))),
    )
    _rect(d, *f.p(-bx, -by), *f.p(bx, by), ind.body, radius=f.r(0.14))
    _markings(d, f, ind, 0, -by * 0.3, bx, by * 0.6)
    ph = 0.3 * ind.head
    _rect(d, *f.p(-bx * 0.75, by - ph - 0.06), *f.p(bx * 0.75, by - 0.06), ind.accent, radius=f.r(0.06))
    for x in (-bx * 0.55, bx * 0.55):
        d.line([f.p(x, -by), f.p(x, by * 0.3)], fill=strap, width=max(2, int(f.r(0.05))))
    side = 0.1 * ind.tail
    _rect(d, *f.p(bx - 0.02, 0), *f.p(bx + side, by * 0.7), ind.accent, radius=f.r(0.03))
    return {"head": (0, -by), "head_r": 0.2, "body": (0, 0, bx, by), "feet": by}


def _toy(d, f: _Frame, ind: Individual, legs_spread: bool = False, lying: bool = False, **_) -> dict:
    bx, by = 0.26 * ind.length, 0.26 * ind.height
    dark = _darker(ind.body, 0.6)
    for x in (-bx * 0.5, bx * 0.5):
        lean = (0.1 if x > 0 else -0.1) if legs_spread else 0
        d.line([f.p(x, by), f.p(x + lean, by + 0.22)], fill=dark, width=max(4, int(f.r(0.1))))
    arm = 0.3 * ind.tail
    for k in (-1, 1):
        d.line(
            [f.p(k * bx, -by * 0.5), f.p(k * (bx + arm), -by * (0.1 if not legs_spread else 1.2))],
            fill=dark,
            width=max(3, int(f.r(0.07))),
        )
    _rect(d, *f.p(-bx, -by), *f.p(bx, by), ind.body, radius=f.r(0.04))
    _markings(d, f, ind, 0, 0, bx, by)
    hs = 0.2 * ind.head
    top = -by - 2 * hs
    _rect(d, *f.p(-hs, top), *f.p(hs, -by), ind.body, radius=f.r(0.03))
    for ex in (-0.45, 0.45):
        _ellipse(d, *f.p(ex * hs, top + hs * 0.8), f.r(hs * 0.2), f.r(hs * 0.2), (250, 250, 250))
    d.line([f.p(0, top), f.p(0, top - 0.18 * ind.ears)], fill=dark, width=max(2, int(f.r(0.04))))
    _ellipse(d, *f.p(0, top - 0.18 * ind.ears), f.r(0.06), f.r(0.06), ind.accent)
    return {"head": (0, top), "head_r": hs, "body": (0, 0, bx, by), "feet": by + 0.22}


def _draw_object(d, f: _Frame, ind: Individual, lying: bool, legs_spread: bool) -> dict:
    if ind.cls in ("dog", "cat"):
        return _quadruped(d, f, ind, cat=ind.cls == "cat", lying=lying, legs_spread=legs_spread)
    drawer = {"teapot": _teapot, "backpack": _backpack, "toy": _toy}[ind.cls]
    return drawer(d, f, ind, legs_spread=legs_spread, lying=lying)


# ---------------------------------------------------------------- accessories and foregrounds


def _hat(d, f: _Frame, anchor: dict) -> None:
    hx, hy = anchor["head"]
    r = max(anchor["head_r"], 0.15)
    d.rectangle(
        (*f.p(hx - 1.1 * r, hy - 0.02), *f.p(hx + 1.1 * r, hy + 0.06))
        if f.facing > 0
        else (*f.p(hx + 1.1 * r, hy - 0.02), *f.p(hx - 1.1 * r, hy + 0.06)),
        fill=(200, 20, 30),
    )
    d.polygon([f.p(hx - 0.7 * r, hy), f.p(hx, hy - 1.6 * r), f.p(hx + 0.7 * r, hy)], fill=(215, 25, 35))


def _shirt(d, f: _Frame, anchor: dict, colour: Colour, tuxedo: bool) -> None:
    cx, cy, bx, by = anchor["body"]
    d.chord(
        (*f.p(cx - bx * 0.55, cy - by * 1.02), *f.p(cx + bx * 0.75, cy + by * 1.02))
        if f.facing > 0
        else (*f.p(cx + bx * 0.75, cy - by * 1.02), *f.p(cx - bx * 0.55, cy + by * 1.02)),
        0,
        360,
        fill=colour,
    )
    if tuxedo:
        front = cx + bx * 0.5
        d.polygon(
            [f.p(front - 0.12, cy - by), f.p(front + 0.1, cy - by), f.p(front, cy + by * 0.4)],
            fill=(250, 250, 250),
        )
        d.polygon(
            [
                f.p(front - 0.08, cy - by * 0.95),
                f.p(front + 0.08, cy - by * 0.55),
                f.p(front + 0.08, cy - by * 0.95),
                f.p(front - 0.08, cy - by * 0.55),
            ],
            fill=(15, 15, 15),
        )


def render(scene: Scene, background_context: str | None = None) -> Image.Image:
    """The scene as a 64 x 64 RGB image (deterministic). ``background_context``: draw the background as for
    that context (same seed) instead of the scene's, which an edit's ground truth needs when it adds or
    removes an accessory (a plain background's colour is keyed on the context)."""
    image = Image.new("RGB", (S, S))
    d = ImageDraw.Draw(image)
    context = scene.context
    key = background_context or context
    BACKGROUNDS[key](d, _rng("background", key, scene.background_seed))
    ind = scene.individual
    y = scene.y
    if context == "jumping in the air":
        y = min(y, 0.42)
    elif context == "sleeping on a bed":
        y = 0.55
    elif context == "floating in space":
        y = min(y, 0.55)
    unit = S * 0.62 * scene.scale
    f = _Frame(S * scene.x, S * y, unit, scene.facing)
    if context == "jumping in the air":
        _ellipse(d, S * scene.x, S * 0.9, unit * 0.35, unit * 0.05, (60, 110, 50))
    if context == "surfing on a wave":
        _ellipse(d, S * scene.x, S * y + unit * 0.28, unit * 0.6, unit * 0.07, (250, 150, 40))
    anchor = _draw_object(
        d, f, ind, lying=context == "sleeping on a bed", legs_spread=context == "jumping in the air"
    )
    if context == "wearing a red hat":
        _hat(d, f, anchor)
    elif context == "wearing a yellow shirt":
        _shirt(d, f, anchor, (245, 215, 30), tuxedo=False)
    elif context == "wearing a tuxedo":
        _shirt(d, f, anchor, (20, 20, 25), tuxedo=True)
    elif context == "getting a bath":
        top = S * y + unit * 0.05
        _rect(d, S * 0.05, top, S * 0.95, S * 0.98, (250, 250, 252), radius=25)
        rng = _rng("bubbles", scene.background_seed)
        for _ in range(14):
            _ellipse(
                d,
                S * rng.uniform(0.1, 0.9),
                top + rng.uniform(-8, 6),
                rng.uniform(5, 11),
                rng.uniform(5, 11),
                (235, 240, 255),
            )
    elif context == "in the snow":
        rng = _rng("flakes", scene.background_seed)
        for _ in range(40):
            _ellipse(d, rng.uniform(0, S), rng.uniform(0, S), 1.8, 1.8, (255, 255, 255))
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)
