"""Depth maps: the pictures' geometry (`pictures.draw_concept`) seen by a Kinect-like depth camera.

The thing stands at a random distance in front of a receding background (a floor/wall plane, nearer at
the bottom of the view); each part it is drawn with sits a little nearer than the parts drawn before it
(the drum's top over its shell, the clock's hands over its face), so its outline and its layers carry the
concept, not its colours. Depths are in metres; the sensor noise grows with the square of the distance as
a Kinect's does, and a few pixels have no reading (0), as real depth maps do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ibllm_agent.toy.pictures import IMAGE_SIZE, Params, draw_concept, image_params

KINECT_NOISE = (0.0012, 0.0019, 0.4)
"""Axial noise of a Kinect v1, sigma(z) = a + b (z - c)^2 metres (Nguyen, Izadi and Lovell, 2012)."""


def depth_params(name: str, rng: np.random.Generator) -> Params:
    """A depth sample's parameters: the picture's placement and shape parameters, then the scene's distances."""
    p = image_params(name, rng)
    distance = rng.uniform(1.0, 2.5)
    near = distance + rng.uniform(0.8, 2.0)
    p.update(distance=distance, step=rng.uniform(0.015, 0.04), background=(near, near + rng.uniform(1.0, 4.0)),
             holes=rng.uniform(0.0, 0.01), depth_seed=int(rng.integers(1 << 30)))
    return p


def render_depth(name: str, p: Params) -> np.ndarray:
    """float32 [H, W] depth in metres (0 = no reading) of concept `name` with depth parameters `p`."""
    near, far = p["background"]
    rows = np.linspace(0.0, 1.0, IMAGE_SIZE)[:, None]
    background = np.broadcast_to(far + (near - far) * rows, (IMAGE_SIZE, IMAGE_SIZE))
    canvas = Image.fromarray(np.round(background * 1000).astype(np.int32), "I")  # millimetres

    def paint(colour, part: int) -> int:  # later parts are in front
        return int(round((p["distance"] - p["step"] * part) * 1000))

    draw_concept(canvas, name, p, 0.0, paint)
    depth = np.asarray(canvas, dtype=np.float64) / 1000
    rng = np.random.default_rng(p["depth_seed"])
    a, b, c = KINECT_NOISE
    depth = depth + rng.normal(0.0, 1.0, depth.shape) * (a + b * (depth - c) ** 2)
    depth[rng.uniform(size=depth.shape) < p["holes"]] = 0.0
    return depth.clip(0.0, None).astype(np.float32)
