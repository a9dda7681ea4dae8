"""Pictures and video frames: each concept drawn procedurally with PIL, its look varied by the sample's
random parameters, moving with time for videos. `draw_concept` draws the same geometry with other
values per part (distances, temperatures) for the depth maps and thermal images.

`image_params` draws a sample's parameters (position, size, colours, background, noise) from its
random stream; `render_frame(name, params, t)` paints the frame at time t (seconds; 0 for a picture).
Frames are small: the loaders scale them to the official 224 pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 112
"""Rendered image side in pixels (half of the loaders' 224: they upscale)."""
VIDEO_FPS = 8
"""Frames per second of the toy videos (the loader picks 2 frames per 2-second clip)."""

Params = dict
"""A sample's drawing parameters, from `image_params`."""


def _color(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 30) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-spread, spread + 1), 0, 255)) for v in base)


def _shade(c: tuple[int, int, int], d: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + d, 0, 255)) for v in c)


Paint = Callable[[tuple[int, int, int], int], float]
"""A part's value on another kind of canvas: (its colour in the picture, its index in drawing order) -> the
value to fill it with (a distance for depth maps, a temperature for thermal images)."""


class _Pen:
    """Drawing in unit coordinates around the object's (moving) centre, scaled by the sample's size.
    With `paint`, each part is filled with `paint(colour, part index)` instead of its colour."""

    def __init__(self, d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, paint: Paint | None = None):
        self.d, self.cx, self.cy, self.k = d, cx * IMAGE_SIZE, cy * IMAGE_SIZE, s * IMAGE_SIZE
        self.paint, self.part = paint, 0

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.k, self.cy + y * self.k)

    def box(self, x0, y0, x1, y1):
        (a, b), (c, e) = self.xy(x0, y0), self.xy(x1, y1)
        return [min(a, c), min(b, e), max(a, c), max(b, e)]

    def _fill(self, colour):
        if self.paint is None or colour is None:
            return colour
        self.part += 1
        return self.paint(colour, self.part - 1)

    def ellipse(self, x, y, rx, ry, fill, outline=None):
        self.d.ellipse(self.box(x - rx, y - ry, x + rx, y + ry), fill=self._fill(fill), outline=self._fill(outline))

    def rect(self, x0, y0, x1, y1, fill, outline=None):
        self.d.rectangle(self.box(x0, y0, x1, y1), fill=self._fill(fill), outline=self._fill(outline))

    def poly(self, pts, fill):
        self.d.polygon([self.xy(x, y) for x, y in pts], fill=self._fill(fill))

    def line(self, pts, fill, width=1.0):
        self.d.line([self.xy(x, y) for x, y in pts], fill=self._fill(fill), width=max(1, int(width * self.k / 40)))


def _draw_rain(pen: _Pen, p: Params, t: float) -> None:
    rng = np.random.default_rng(p["streak_seed"])
    drop = p["drop"]
    for _ in range(p["n_streaks"]):
        x, y0 = rng.uniform(-0.55, 0.55), rng.uniform(-0.1, 0.6)
        y = -0.1 + (y0 + t * 0.6 * p["speed"]) % 0.75
        pen.line([(x, y), (x + 0.03 * p["wind"], y + 0.08)], fill=drop, width=2)
    for dx, r in ((-0.25, 0.18), (0.0, 0.24), (0.25, 0.17)):
        pen.ellipse(dx, -0.3, r, 0.13, fill=p["cloud"])


def _draw_dog(pen: _Pen, p: Params, t: float) -> None:
    fur, step = p["fur"], math.sin(6 * t * p["speed"]) * 0.04
    for lx, sw in ((-0.22, step), (-0.1, -step), (0.12, step), (0.24, -step)):
        pen.rect(lx - 0.035 + sw, 0.05, lx + 0.035 + sw, 0.3, fill=fur)
    pen.ellipse(0, 0, 0.32, 0.14, fill=fur)
    pen.line([(-0.3, -0.05), (-0.42, -0.2)], fill=fur, width=3)
    pen.ellipse(0.33, -0.15, 0.13, 0.12, fill=fur)
    pen.ellipse(0.27, -0.1, 0.05, 0.11, fill=p["ear"])
    pen.ellipse(0.38, -0.18, 0.018, 0.018, fill=(10, 10, 10))
    pen.ellipse(0.46, -0.12, 0.03, 0.025, fill=(20, 20, 20))


def _draw_cat(pen: _Pen, p: Params, t: float) -> None:
    fur, tail = p["fur"], 0.15 * math.sin(3 * t * p["speed"])
    pen.line([(0.15, 0.25), (0.35, 0.1 + tail), (0.4, -0.1 + tail)], fill=fur, width=3)
    pen.ellipse(0, 0.12, 0.2, 0.2, fill=fur)
    pen.poly([(-0.16, -0.2), (-0.1, -0.42), (-0.02, -0.22)], fill=fur)
    pen.poly([(0.16, -0.2), (0.1, -0.42), (0.02, -0.22)], fill=fur)
    pen.ellipse(0, -0.15, 0.16, 0.13, fill=fur)
    for ex in (-0.06, 0.06):
        pen.ellipse(ex, -0.17, 0.025, 0.03, fill=p["eye"])
    for wy in (-0.11, -0.08):
        pen.line([(-0.3, wy - 0.02), (-0.05, wy)], fill=(240, 240, 240), width=1)
        pen.line([(0.3, wy - 0.02), (0.05, wy)], fill=(240, 240, 240), width=1)


def _draw_bird(pen: _Pen, p: Params, t: float) -> None:
    flap = math.sin(10 * t * p["speed"] + p["phase"]) * 0.2
    pen.poly([(-0.05, -0.02), (0.1, -0.02), (-0.1, -0.25 - flap)], fill=p["wing"])
    pen.ellipse(0, 0, 0.16, 0.08, fill=p["body"])
    pen.ellipse(0.15, -0.05, 0.06, 0.06, fill=p["body"])
    pen.poly([(0.2, -0.07), (0.3, -0.04), (0.2, -0.02)], fill=(250, 150, 20))
    pen.poly([(-0.15, 0.0), (-0.3, -0.06), (-0.3, 0.06)], fill=p["wing"])


def _draw_bee(pen: _Pen, p: Params, t: float) -> None:
    flap = abs(math.sin(25 * t)) * 0.04
    pen.ellipse(-0.05, -0.16, 0.09, 0.07 + flap, fill=(225, 235, 245))
    pen.ellipse(0.07, -0.16, 0.09, 0.07 + flap, fill=(225, 235, 245))
    pen.ellipse(0, 0, 0.22, 0.13, fill=(240, 200, 30))
    for sx in (-0.1, 0.0, 0.1):
        pen.rect(sx - 0.025, -0.12, sx + 0.025, 0.12, fill=(20, 20, 20))
    pen.ellipse(0.24, 0, 0.07, 0.07, fill=(30, 30, 30))


def _draw_bell(pen: _Pen, p: Params, t: float) -> None:
    sway = 0.08 * math.sin(4 * t * p["speed"] + p["phase"])
    gold = p["gold"]
    pen.ellipse(sway * 0.3, -0.3, 0.04, 0.04, fill=(90, 70, 30))
    pen.poly([(-0.12 + sway * 0.5, -0.25), (0.12 + sway * 0.5, -0.25), (0.2 + sway, 0.15),
              (0.28 + sway, 0.22), (-0.28 + sway, 0.22), (-0.2 + sway, 0.15)], fill=gold)
    pen.ellipse(sway * 0.5, -0.25, 0.12, 0.07, fill=gold)
    pen.ellipse(sway * 1.3, 0.27, 0.05, 0.05, fill=(120, 90, 40))


def _draw_drum(pen: _Pen, p: Params, t: float) -> None:
    hit = abs(math.sin(4 * t * p["speed"]))
    pen.rect(-0.28, -0.05, 0.28, 0.25, fill=p["shell"])
    pen.ellipse(0, 0.25, 0.28, 0.07, fill=p["shell"])
    for zx in (-0.2, -0.07, 0.07, 0.2):
        pen.line([(zx, -0.02), (zx + 0.06, 0.2)], fill=(240, 220, 120), width=1)
    pen.ellipse(0, -0.05, 0.28, 0.08, fill=(245, 245, 235), outline=(90, 60, 40))
    pen.line([(-0.35, -0.35 + 0.2 * hit), (-0.08, -0.08)], fill=(150, 110, 60), width=2)
    pen.line([(0.35, -0.35 + 0.2 * (1 - hit)), (0.08, -0.08)], fill=(150, 110, 60), width=2)


def _draw_car(pen: _Pen, p: Params, t: float) -> None:
    pen.rect(-0.36, -0.05, 0.36, 0.12, fill=p["paint"])
    pen.poly([(-0.2, -0.05), (-0.12, -0.2), (0.12, -0.2), (0.22, -0.05)], fill=p["paint"])
    pen.poly([(-0.15, -0.06), (-0.1, -0.17), (0.0, -0.17), (0.0, -0.06)], fill=(170, 210, 240))
    for wx in (-0.22, 0.22):
        pen.ellipse(wx, 0.13, 0.08, 0.08, fill=(20, 20, 20))
        pen.ellipse(wx, 0.13, 0.03, 0.03, fill=(160, 160, 160))


def _draw_clock(pen: _Pen, p: Params, t: float) -> None:
    pen.ellipse(0, 0, 0.32, 0.32, fill=(20, 20, 20))
    pen.ellipse(0, 0, 0.28, 0.28, fill=(248, 248, 240))
    for h in range(12):
        a = h * math.pi / 6
        pen.line([(0.22 * math.sin(a), -0.22 * math.cos(a)), (0.26 * math.sin(a), -0.26 * math.cos(a))],
                 fill=(30, 30, 30), width=2)
    hour, minute = p["phase"], p["phase"] * 7 + t * 2.0 * p["speed"]
    pen.line([(0, 0), (0.14 * math.sin(hour), -0.14 * math.cos(hour))], fill=(20, 20, 20), width=3)
    pen.line([(0, 0), (0.22 * math.sin(minute), -0.22 * math.cos(minute))], fill=(20, 20, 20), width=2)


def _draw_fire(pen: _Pen, p: Params, t: float) -> None:
    rng = np.random.default_rng([p["streak_seed"], int(t * VIDEO_FPS)])
    pen.rect(-0.3, 0.22, 0.3, 0.3, fill=(110, 70, 30))
    pen.line([(-0.3, 0.32), (0.3, 0.18)], fill=(90, 55, 25), width=4)
    for col, h, w in (((230, 60, 20), 0.5, 0.25), ((250, 140, 20), 0.38, 0.18), ((255, 230, 90), 0.24, 0.1)):
        jx, jh = rng.uniform(-0.03, 0.03), rng.uniform(-0.05, 0.05)
        pen.poly([(-w, 0.22), (w, 0.22), (w * 0.5, 0.0), (jx, 0.22 - h - jh), (-w * 0.5, 0.0)], fill=col)


def _draw_ocean(pen: _Pen, p: Params, t: float) -> None:
    for band in range(4):
        y = -0.1 + band * 0.12
        pts = [(x / 10 - 0.6, y + 0.035 * math.sin(x * 0.9 + band + t * 3 * p["speed"] + p["phase"]))
               for x in range(13)]
        pen.poly(pts + [(0.6, 0.6), (-0.6, 0.6)], fill=_shade(p["sea"], -band * 18))
        pen.line(pts, fill=(240, 250, 255), width=2)


def _draw_phone(pen: _Pen, p: Params, t: float) -> None:
    buzz = 0.012 * math.sin(60 * t) if int(t * 3) % 2 == 0 else 0.0
    pen.rect(-0.14 + buzz, -0.3, 0.14 + buzz, 0.3, fill=(25, 25, 30))
    pen.rect(-0.11 + buzz, -0.25, 0.11 + buzz, 0.2, fill=p["screen"])
    pen.ellipse(buzz, 0.25, 0.025, 0.025, fill=(90, 90, 90))


def _draw_piano(pen: _Pen, p: Params, t: float) -> None:
    pressed = int(t * 4 * p["speed"] + p["phase"] * 3) % 8
    for k in range(8):
        x0 = -0.4 + k * 0.1
        pen.rect(x0, -0.2, x0 + 0.095, 0.22, fill=(200, 200, 190) if k == pressed else (250, 250, 245),
                 outline=(60, 60, 60))
    for k in (0, 1, 3, 4, 5):
        x0 = -0.4 + k * 0.1 + 0.065
        pen.rect(x0, -0.2, x0 + 0.06, 0.05, fill=(15, 15, 15))
    pen.rect(-0.42, -0.3, 0.42, -0.2, fill=p["wood"])


def _draw_ball(pen: _Pen, p: Params, t: float) -> None:
    pen.ellipse(0, 0.33, 0.2, 0.04, fill=(60, 60, 60))
    pen.ellipse(0, 0, 0.2, 0.2, fill=p["paint"])
    pen.line([(-0.2, 0.0), (0.2, 0.0)], fill=p["stripe"], width=4)
    pen.line([(0.0, -0.2), (0.0, 0.2)], fill=p["stripe"], width=4)


def _concept_params(name: str, rng: np.random.Generator) -> Params:
    """Concept-specific random colours and details."""
    if name == "rain":
        return {"streak_seed": int(rng.integers(1 << 30)), "n_streaks": int(rng.integers(18, 34)),
                "drop": _color(rng, (90, 140, 230)), "cloud": _color(rng, (150, 150, 160), 20),
                "wind": rng.uniform(-1, 1), "bg": ((60, 70, 90), (110, 120, 140))}
    if name == "dog":
        return {"fur": _color(rng, (140, 90, 45), 35), "ear": _color(rng, (90, 55, 25), 20)}
    if name == "cat":
        return {"fur": _color(rng, rng.choice([(130, 130, 135), (220, 140, 60), (60, 60, 60)]).tolist(), 20),
                "eye": _color(rng, (90, 200, 80), 30)}
    if name == "bird":
        return {"body": _color(rng, rng.choice([(200, 40, 40), (40, 90, 200), (230, 200, 40)]).tolist(), 25),
                "wing": _color(rng, (70, 60, 60), 25), "bg": ((120, 180, 235), (190, 220, 250))}
    if name == "bee":
        return {"bg": ((110, 180, 90), (170, 220, 140))}
    if name == "bell":
        return {"gold": _color(rng, (215, 170, 40), 25)}
    if name == "drum":
        return {"shell": _color(rng, (200, 30, 40), 30)}
    if name == "car":
        return {"paint": _color(rng, rng.choice([(30, 80, 200), (200, 30, 30), (40, 160, 60), (230, 230, 230)]).tolist(), 20),
                "bg": ((150, 190, 230), (110, 110, 110))}
    if name == "fire":
        return {"streak_seed": int(rng.integers(1 << 30)), "bg": ((20, 15, 30), (50, 30, 30))}
    if name == "ocean":
        return {"sea": _color(rng, (30, 100, 190), 25), "bg": ((140, 190, 240), (200, 225, 250))}
    if name == "phone":
        return {"screen": _color(rng, (120, 200, 250), 40)}
    if name == "piano":
        return {"wood": _color(rng, (60, 30, 20), 20)}
    if name == "ball":
        return {"paint": tuple(int(v) for v in rng.integers(60, 255, 3)), "stripe": tuple(int(v) for v in rng.integers(0, 255, 3))}
    return {}


_DRAW: dict[str, Callable[[_Pen, Params, float], None]] = {
    "rain": _draw_rain, "dog": _draw_dog, "cat": _draw_cat, "bird": _draw_bird, "bee": _draw_bee,
    "bell": _draw_bell, "drum": _draw_drum, "car": _draw_car, "clock": _draw_clock, "fire": _draw_fire,
    "ocean": _draw_ocean, "phone": _draw_phone, "piano": _draw_piano, "ball": _draw_ball,
}


def _position(name: str, p: Params, t: float) -> tuple[float, float]:
    """Where the object's centre is at time t: the concept's motion in a video."""
    x, y, v = p["x"], p["y"], p["speed"]
    if name in ("car", "dog"):
        return (x - 0.25 + (0.12 * v * t) % 0.5, y)
    if name == "bird":
        return (x - 0.25 + (0.15 * v * t) % 0.5, y + 0.06 * math.sin(2 * t + p["phase"]))
    if name == "bee":
        return (x + 0.12 * math.sin(3 * v * t + p["phase"]), y + 0.06 * math.sin(7 * v * t))
    if name == "ball":
        return (x, y - 0.25 * abs(math.sin(3 * v * t + p["phase"])) + 0.1)
    return (x, y)


def draw_concept(canvas: Image.Image, name: str, p: Params, t: float, paint: Paint | None = None) -> None:
    """Draw concept `name` (sample parameters `p`, time `t`) on `canvas`, in its colours or, on a canvas
    of another mode ("I", "F"), in the values `paint` gives its parts: depth maps and thermal images share
    the pictures' geometry."""
    cx, cy = _position(name, p, t)
    _DRAW[name](_Pen(ImageDraw.Draw(canvas), cx, cy, p["s"] * 0.9, paint), p, t)


def render_frame(name: str, p: Params, t: float) -> Image.Image:
    """One RGB frame of concept `name` with sample parameters `p` at time `t`."""
    bg1, bg2 = p.get("bg", (p["bg1"], p["bg2"]))
    ramp = np.linspace(0, 1, IMAGE_SIZE)[:, None, None]
    base = (1 - ramp) * np.array(bg1) + ramp * np.array(bg2)  # (H, 1, 3) vertical gradient
    canvas = Image.fromarray(np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8))
    draw_concept(canvas, name, p, t)
    noise_rng = np.random.default_rng([p["noise_seed"], int(round(t * 1000))])
    pixels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    pixels = pixels + noise_rng.normal(0, p["noise"], pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def image_params(name: str, rng: np.random.Generator) -> Params:
    """A sample's drawing parameters: placement, background and noise, then the concept's own colours."""
    p = {
        "x": rng.uniform(0.35, 0.65), "y": rng.uniform(0.4, 0.6), "s": rng.uniform(0.75, 1.15),
        "bg1": tuple(int(v) for v in rng.integers(40, 220, 3)), "bg2": tuple(int(v) for v in rng.integers(40, 220, 3)),
        "noise": rng.uniform(2, 12), "phase": rng.uniform(0, 2 * math.pi), "speed": rng.uniform(0.7, 1.3),
    }
    p.update(_concept_params(name, rng))
    p["noise_seed"] = int(rng.integers(1 << 30))
    return p
