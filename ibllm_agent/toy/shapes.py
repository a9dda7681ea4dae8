"""3D shapes: each concept as a point cloud sampled on simple surfaces (spheres, cylinders, boxes, cones,
segments, triangles), then randomly scaled, rotated, moved and jittered.

A shape `_shape_<name>(rng, n)` returns [n, 3] surface points; `render_points` picks n and applies the
random pose. Clouds are small (2048-6144 points): the loader resamples them to the official 8192.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _sphere(rng, n, c=(0, 0, 0), r=(1, 1, 1)):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True) * np.array(r) + np.array(c)


def _cylinder(rng, n, c=(0, 0, 0), r=1.0, h=1.0, axis=2, caps=True):
    k = rng.uniform(0, 1, n)
    a = rng.uniform(0, 2 * math.pi, n)
    z = rng.uniform(-h / 2, h / 2, n)
    rad = np.full(n, r)
    if caps:  # about a third of the points on the two caps
        cap = k < 0.35
        rad[cap] = r * np.sqrt(rng.uniform(0, 1, cap.sum()))
        z[cap] = np.where(rng.uniform(0, 1, cap.sum()) < 0.5, -h / 2, h / 2)
    p = np.stack([rad * np.cos(a), rad * np.sin(a), z], 1)
    return np.roll(p, axis - 2, axis=1) + np.array(c)


def _box(rng, n, c=(0, 0, 0), size=(1, 1, 1)):
    p = rng.uniform(-0.5, 0.5, (n, 3))
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = np.where(rng.uniform(0, 1, n) < 0.5, -0.5, 0.5)
    return p * np.array(size) + np.array(c)


def _cone(rng, n, c=(0, 0, 0), r=1.0, h=1.0):
    u = np.sqrt(rng.uniform(0, 1, n))  # uniform on the lateral surface
    a = rng.uniform(0, 2 * math.pi, n)
    return np.stack([r * u * np.cos(a), r * u * np.sin(a), h * (1 - u)], 1) + np.array(c)


def _segment(rng, n, a, b):
    s = rng.uniform(0, 1, (n, 1))
    return np.array(a) * (1 - s) + np.array(b) * s


def _triangle(rng, n, a, b, c):
    u, v = rng.uniform(0, 1, (2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    a, b, c = map(np.array, (a, b, c))
    return a + u * (b - a) + v * (c - a)


def _split(n: int, weights: list[float]) -> list[int]:
    w = np.array(weights) / sum(weights)
    counts = (w * n).astype(int)
    counts[0] += n - counts.sum()
    return counts.tolist()


def _shape_rain(rng, n):
    a, b = _split(n, [0.45, 0.55])
    cloud = np.concatenate([_sphere(rng, m, (x, 0, 0.8), (0.45, 0.35, 0.25))
                            for m, x in zip(_split(a, [1, 1, 1]), (-0.4, 0.0, 0.4))])
    drops = [_segment(rng, m, (x, y, z), (x, y, z - 0.2))
             for m, x, y, z in zip(_split(b, [1] * 24), rng.uniform(-0.8, 0.8, 24), rng.uniform(-0.4, 0.4, 24),
                                   rng.uniform(-0.8, 0.4, 24))]
    return np.concatenate([cloud, *drops])


def _shape_dog(rng, n):
    parts = _split(n, [0.4, 0.15, 0.32, 0.05, 0.08])
    legs = np.concatenate([_cylinder(rng, m, (x, y, -0.45), 0.07, 0.5, caps=False)
                           for m, x, y in zip(_split(parts[2], [1] * 4), (-0.4, -0.4, 0.4, 0.4), (-0.15, 0.15) * 2)])
    return np.concatenate([
        _sphere(rng, parts[0], (0, 0, 0), (0.6, 0.22, 0.22)), _sphere(rng, parts[1], (0.7, 0, 0.3), (0.2, 0.16, 0.16)),
        legs, _segment(rng, parts[3], (-0.6, 0, 0.05), (-0.85, 0, 0.35)), _sphere(rng, parts[4], (0.88, 0, 0.25), (0.1, 0.07, 0.07)),
    ])


def _shape_cat(rng, n):
    parts = _split(n, [0.5, 0.28, 0.08, 0.08, 0.06])
    return np.concatenate([
        _sphere(rng, parts[0], (0, 0, 0), (0.35, 0.32, 0.45)), _sphere(rng, parts[1], (0, 0, 0.65), (0.26, 0.24, 0.22)),
        _cone(rng, parts[2], (-0.14, 0, 0.78), 0.09, 0.25), _cone(rng, parts[3], (0.14, 0, 0.78), 0.09, 0.25),
        _segment(rng, parts[4], (0, -0.3, -0.4), (0, -0.7, 0.1)),
    ])


def _shape_bird(rng, n):
    parts = _split(n, [0.35, 0.27, 0.27, 0.05, 0.06])
    return np.concatenate([
        _sphere(rng, parts[0], (0, 0, 0), (0.35, 0.13, 0.13)),
        _triangle(rng, parts[1], (-0.1, 0, 0), (0.15, 0, 0), (-0.05, 0.9, 0.15)),
        _triangle(rng, parts[2], (-0.1, 0, 0), (0.15, 0, 0), (-0.05, -0.9, 0.15)),
        _cone(rng, parts[3], (0.35, 0, 0), 0.04, 0.15)[:, [2, 1, 0]] + np.array([0.35, 0, -0.35]),
        _triangle(rng, parts[4], (-0.3, 0, 0), (-0.6, 0.15, 0), (-0.6, -0.15, 0)),
    ])


def _shape_bee(rng, n):
    parts = _split(n, [0.62, 0.14, 0.14, 0.1])
    return np.concatenate([
        _sphere(rng, parts[0], (0, 0, 0), (0.5, 0.32, 0.32)),
        _sphere(rng, parts[1], (0.0, 0.22, 0.42), (0.2, 0.12, 0.02)), _sphere(rng, parts[2], (0.0, -0.22, 0.42), (0.2, 0.12, 0.02)),
        _sphere(rng, parts[3], (0.58, 0, 0.05), (0.16, 0.16, 0.16)),
    ])


def _shape_bell(rng, n):
    a, b = _split(n, [0.9, 0.1])
    z = rng.uniform(0, 1, a)
    ang = rng.uniform(0, 2 * math.pi, a)
    radius = 0.25 + 0.3 * z ** 2 + 0.15 * np.clip((z - 0.8) / 0.2, 0, 1)  # narrow top, flared mouth
    dome = np.stack([radius * np.cos(ang), radius * np.sin(ang), 0.5 - z], 1)
    return np.concatenate([dome, _sphere(rng, b, (0, 0, -0.55), (0.09, 0.09, 0.09))])


def _shape_drum(rng, n):
    return _cylinder(rng, n, r=0.6, h=0.6)


def _shape_car(rng, n):
    parts = _split(n, [0.5, 0.22, 0.28])
    wheels = np.concatenate([_cylinder(rng, m, (x, y, -0.2), 0.16, 0.08, axis=1)
                             for m, x, y in zip(_split(parts[2], [1] * 4), (-0.45, -0.45, 0.45, 0.45), (-0.3, 0.3) * 2)])
    return np.concatenate([_box(rng, parts[0], (0, 0, 0), (1.4, 0.6, 0.3)),
                           _box(rng, parts[1], (-0.05, 0, 0.25), (0.7, 0.55, 0.25)), wheels])


def _shape_clock(rng, n):
    a, b = _split(n, [0.9, 0.1])
    return np.concatenate([_cylinder(rng, a, r=0.8, h=0.08), _segment(rng, b // 2, (0, 0, 0.05), (0.5, 0.2, 0.05)),
                           _segment(rng, b - b // 2, (0, 0, 0.05), (-0.1, 0.35, 0.05))])


def _shape_fire(rng, n):
    a, b, c = _split(n, [0.7, 0.15, 0.15])
    flame = _cone(rng, a, (0, 0, -0.2), 0.45, 1.1)
    flame[:, :2] *= 1 + 0.15 * np.sin(flame[:, 2:] * 12 + rng.uniform(0, 6))
    return np.concatenate([flame, _cylinder(rng, b, (0, 0, -0.3), 0.08, 1.2, axis=0),
                           _cylinder(rng, c, (0, 0, -0.3), 0.08, 1.2, axis=1)])


def _shape_ocean(rng, n):
    xy = rng.uniform(-1, 1, (n, 2))
    k = rng.uniform(3, 5)
    z = 0.12 * np.sin(k * xy[:, 0] + rng.uniform(0, 6)) + 0.05 * np.sin(2 * k * xy[:, 1])
    return np.concatenate([xy, z[:, None]], 1)


def _shape_phone(rng, n):
    return _box(rng, n, size=(0.6, 1.2, 0.08))


def _shape_piano(rng, n):
    parts = _split(n, [0.7, 0.3])
    legs = np.concatenate([_cylinder(rng, m, (x, y, -0.6), 0.05, 0.6, caps=False)
                           for m, x, y in zip(_split(parts[1], [1] * 3), (-0.55, 0.55, 0.0), (-0.2, -0.2, 0.25))])
    return np.concatenate([_box(rng, parts[0], (0, 0, 0), (1.3, 0.6, 0.6)), legs])


def _shape_ball(rng, n):
    return _sphere(rng, n, r=(0.6, 0.6, 0.6))


_SHAPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "rain": _shape_rain, "dog": _shape_dog, "cat": _shape_cat, "bird": _shape_bird, "bee": _shape_bee,
    "bell": _shape_bell, "drum": _shape_drum, "car": _shape_car, "clock": _shape_clock, "fire": _shape_fire,
    "ocean": _shape_ocean, "phone": _shape_phone, "piano": _shape_piano, "ball": _shape_ball,
}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # Haar-uniform
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def render_points(name: str, rng: np.random.Generator) -> np.ndarray:
    """A float32 [N, 3] cloud: the concept's shape, fully randomly rotated, scaled, jittered (N in 2048..6144)."""
    n = int(rng.integers(2048, 6145))
    pts = _SHAPES[name](rng, n)
    pts = pts * rng.uniform(0.85, 1.15, 3)  # anisotropic scale before rotating
    pts = pts @ _random_rotation(rng).T
    pts = pts * rng.uniform(0.5, 2.0) + rng.normal(0, 0.3, 3)
    pts = pts + rng.normal(0, rng.uniform(0.005, 0.02) * np.abs(pts).max(), pts.shape)
    return rng.permutation(pts).astype(np.float32)
