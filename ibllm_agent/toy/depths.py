"""Depth maps: the pictures' geometry (`pictures.draw_concept`) seen by a Kinect-like depth camera.

The thing stands at a random distance in front of a receding background (a floor/wall plane, nearer at
the bottom of the view); each part it is drawn with sits a little nearer than the parts drawn before it
(the drum's top over its shell, the clock's hands over its face) and bulges toward the camera as a round
body of its width would (a ball is a sphere, a leg a cylinder, a wing a thin slab), so its outline, its
layers and its relief carry the concept, not its colours. Depths are in metres; the sensor noise grows
with the square of the distance as a Kinect's does, and a few pixels have no reading (0), as real depth
maps do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ibllm_agent.toy.pictures import IMAGE_SIZE, Params, draw_concept, image_params

KINECT_NOISE = (0.0012, 0.0019, 0.4)
"""Axial noise of a Kinect v1, sigma(z) = a + b (z - c)^2 metres (Nguyen, Izadi and Lovell, 2012)."""
PIXELS_PER_RADIAN = 120.0
"""The toy depth camera's focal length in pixels of its 112-pixel view (a 50° field of view)."""


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
    depth = np.broadcast_to(far + (near - far) * rows, (IMAGE_SIZE, IMAGE_SIZE)).copy()
    canvas = Image.fromarray(np.full((IMAGE_SIZE, IMAGE_SIZE), -1, np.int32), "I")
    draw_concept(canvas, name, p, 0.0, lambda colour, part: part)  # which part each pixel shows
    parts = np.asarray(canvas)
    for part in np.unique(parts[parts >= 0]):
        mask = parts == part
        inside = _inside_distance(mask)  # pixels to the part's edge
        half_width = inside.max()
        # a round body: the relief of a circle of the part's half-width, in metres at its distance
        relief = np.sqrt(np.clip(1 - (1 - inside / half_width) ** 2, 0, 1)) * half_width * p["distance"] / PIXELS_PER_RADIAN
        depth[mask] = p["distance"] - p["step"] * part - relief[mask]  # later parts are in front
    rng = np.random.default_rng(p["depth_seed"])
    a, b, c = KINECT_NOISE
    depth = depth + rng.normal(0.0, 1.0, depth.shape) * (a + b * (depth - c) ** 2)
    depth[rng.uniform(size=depth.shape) < p["holes"]] = 0.0
    return depth.clip(0.0, None).astype(np.float32)


def _inside_distance(mask: np.ndarray, limit: int = 40) -> np.ndarray:
    """For each pixel of `mask`, its distance in pixels to the nearest pixel outside (by 4-neighbour erosion,
    up to `limit`); 0 outside."""
    distance = np.zeros(mask.shape)
    current = mask.copy()
    for _ in range(limit):
        distance += current
        shrunk = current.copy()
        shrunk[1:] &= current[:-1]
        shrunk[:-1] &= current[1:]
        shrunk[:, 1:] &= current[:, :-1]
        shrunk[:, :-1] &= current[:, 1:]
        shrunk[0], shrunk[-1], shrunk[:, 0], shrunk[:, -1] = False, False, False, False
        if not shrunk.any():
            break
        current = shrunk
    return distance
