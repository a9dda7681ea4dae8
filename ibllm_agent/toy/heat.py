"""Thermal images: the pictures' geometry (`pictures.draw_concept`) seen by a thermal camera.

Each concept has a heat rule: a part's temperature runs from a value for its darkest colour to one for
its brightest (the fire's yellow flames are hotter than its red ones and its logs, the phone's screen is
warmer than its body, the bee's black stripes warmer than its wings), in °C or relative to the scene's
ambient temperature (the bell's metal mirrors the cold sky, a piano sits at room temperature). Living
things are warm, fire is very hot, the ocean and the rain clouds are cold. The optics blur the image a
little; the sensor adds its noise (NETD) and a fixed pattern per column. Temperatures are in kelvin.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ibllm_agent.toy.pictures import IMAGE_SIZE, Params, draw_concept, image_params

HEAT: dict[str, tuple[float, float, bool]] = {
    "rain": (2.0, 9.0, False), "dog": (34.0, 29.0, False), "cat": (34.0, 29.0, False),
    "bird": (28.0, 39.0, False), "bee": (34.0, 24.0, False), "bell": (-4.0, -1.0, True),
    "drum": (0.0, 3.0, True), "car": (60.0, 30.0, False), "clock": (0.0, 2.0, True),
    "fire": (150.0, 750.0, False), "ocean": (6.0, 14.0, False), "phone": (29.0, 42.0, False),
    "piano": (-1.0, 1.0, True), "ball": (7.0, 3.0, True),
}
"""Concept -> (°C of its darkest colour, °C of its brightest, relative to the ambient temperature?)."""
KELVIN = 273.15


def thermal_params(name: str, rng: np.random.Generator) -> Params:
    """A thermal sample's parameters: the picture's placement and shapes, then the scene's temperatures and
    the camera's blur and noise."""
    p = image_params(name, rng)
    p.update(ambient=rng.uniform(12.0, 26.0), gradient=rng.uniform(-4.0, 4.0), offset=rng.normal(0.0, 1.0),
             blur=rng.uniform(0.7, 1.5), netd=rng.uniform(0.03, 0.08), heat_seed=int(rng.integers(1 << 30)))
    return p


def render_thermal(name: str, p: Params) -> np.ndarray:
    """float32 [H, W] temperatures in kelvin of concept `name` with thermal parameters `p`."""
    rows = np.linspace(-0.5, 0.5, IMAGE_SIZE)[:, None]
    background = np.broadcast_to(p["ambient"] + p["gradient"] * rows + KELVIN, (IMAGE_SIZE, IMAGE_SIZE))
    canvas = Image.fromarray(np.ascontiguousarray(background, dtype=np.float32), "F")
    dark, bright, relative = HEAT[name]

    def paint(colour, part: int) -> float:
        luminance = (0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]) / 255
        celsius = dark + (bright - dark) * luminance + p["offset"] + (p["ambient"] if relative else 0.0)
        return celsius + KELVIN

    draw_concept(canvas, name, p, 0.0, paint)
    kelvin = _blur(np.asarray(canvas, dtype=np.float64), p["blur"])
    rng = np.random.default_rng(p["heat_seed"])
    kelvin = kelvin + rng.normal(0.0, p["netd"], kelvin.shape) + rng.normal(0.0, p["netd"], (1, kelvin.shape[1]))
    return kelvin.astype(np.float32)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur with edge padding (Pillow does not blur float images)."""
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, radius, mode="edge")
    rows = sum(w * padded[i:i + x.shape[0], :] for i, w in enumerate(k))
    return sum(w * rows[:, i:i + x.shape[1]] for i, w in enumerate(k))
