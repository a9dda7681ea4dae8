"""IMU traces: what an accelerometer and a gyroscope riding on each thing record.

Each concept moves in its own way, with random rates, amplitudes and phases: the car drives off and
brakes, the ball falls (an accelerometer reads 0 in free fall) and hits the ground in bounces that come
faster, the bell swings (gravity turning through its frame) and its clapper strikes at each end, the
clock ticks once a second, the bee buzzes and zigzags, the dog trots, the bird beats its wings, the drum
is struck in a steady beat, the phone buzzes in its ring cadence, the ocean heaves and rolls a buoy, the
piano's keys strike an irregular tune, rain drops patter, fire flickers, the cat sits and swishes its tail.

`render_motion` gives the readings of one sample at its own rate (200 or 400 Hz, timestamps with a little
jitter), 5-6.5 s long, in SI units: specific force in m/s² (gravity included) and angular rate in rad/s,
in the frame of a sensor mounted at a random heading and a small random tilt, with noise and bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

G = 9.80665
ACCEL_RANGE, GYRO_RANGE = 16 * G, math.radians(2000)
"""Full scale of the simulated sensor (±16 g, ±2000 °/s, a common MEMS IMU setting): readings saturate."""
Motion = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _zeros(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    acc = np.zeros((len(t), 3))
    acc[:, 2] = G
    return acc, np.zeros((len(t), 3))


def _rings(t: np.ndarray, hits, freq: float, decay: float, amps) -> np.ndarray:
    """Damped oscillations started at each hit time: what a struck thing's vibration looks like."""
    out = np.zeros(len(t))
    for hit, amp in zip(hits, amps):
        dt = t - hit
        on = dt >= 0
        out[on] += amp * np.exp(-dt[on] / decay) * np.sin(2 * math.pi * freq * dt[on])
    return out


def _rain(t, rng):
    acc, gyr = _zeros(t)
    hits = np.sort(rng.uniform(t[0], t[-1], rng.poisson(rng.uniform(8, 20) * (t[-1] - t[0]))))
    amps = rng.uniform(0.5, 2.0, len(hits))
    ring = _rings(t, hits, rng.uniform(35, 50), 0.02, amps)
    acc[:, 2] += ring
    acc[:, 0] += 0.3 * _rings(t, hits, 45, 0.02, amps * rng.choice([-1, 1], len(hits)))
    gyr[:, 1] += 0.05 * ring
    return acc, gyr


def _dog(t, rng):
    acc, gyr = _zeros(t)
    f, a, phase = rng.uniform(1.8, 2.8), rng.uniform(2.0, 4.0), rng.uniform(0, 2 * math.pi)
    step = np.sin(2 * math.pi * f * t + phase)
    acc[:, 2] += 2 * a * np.maximum(step, 0) ** 2 - a / 2  # a bounce at each footfall
    acc[:, 0] += 0.6 * a * np.sin(math.pi * f * t + phase)
    acc[:, 1] += 0.3 * a * np.sin(2 * math.pi * f * t + 2 * phase)
    gyr[:, 0] += 0.4 * np.sin(math.pi * f * t + phase)
    gyr[:, 2] += 0.3 * np.sin(rng.uniform(0.3, 0.8) * t)
    return acc, gyr


def _cat(t, rng):
    acc, gyr = _zeros(t)
    f, b, phase = rng.uniform(0.4, 0.9), rng.uniform(0.4, 1.0), rng.uniform(0, 2 * math.pi)
    swish = np.sin(2 * math.pi * f * t + phase)
    gyr[:, 2] += b * swish
    acc[:, 1] += 0.5 * b * np.cos(2 * math.pi * f * t + phase)
    return acc, gyr


def _bird(t, rng):
    acc, gyr = _zeros(t)
    f, a, phase = rng.uniform(7, 11), rng.uniform(6, 12), rng.uniform(0, 2 * math.pi)
    acc[:, 2] += a * np.sin(2 * math.pi * f * t + phase) + 1.5 * np.sin(math.pi * t)
    acc[:, 0] += 1.0 + 0.5 * np.sin(4 * math.pi * f * t + phase)
    gyr[:, 0] += 0.8 * np.sin(2 * math.pi * f * t + phase + 1.0)
    return acc, gyr


def _bee(t, rng):
    acc, gyr = _zeros(t)
    f, a, fz = rng.uniform(90, 140), rng.uniform(1.0, 3.0), rng.uniform(1.0, 2.0)
    for axis in range(3):
        acc[:, axis] += a * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    zig = rng.uniform(0, 2 * math.pi)
    gyr[:, 2] += 2.5 * np.sin(2 * math.pi * fz * t + zig)
    acc[:, 1] += 2.0 * np.cos(2 * math.pi * fz * t + zig)
    return acc, gyr


def _bell(t, rng):
    acc, gyr = np.zeros((len(t), 3)), np.zeros((len(t), 3))
    f, angle, phase, arm = rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.7), rng.uniform(0, 2 * math.pi), 0.3
    w = 2 * math.pi * f
    theta = angle * np.sin(w * t + phase)
    rate, accel = angle * w * np.cos(w * t + phase), -angle * w * w * np.sin(w * t + phase)
    acc[:, 1] = G * np.sin(theta) + arm * accel  # gravity turning through the swinging frame
    acc[:, 2] = G * np.cos(theta) + arm * rate ** 2
    gyr[:, 0] = rate
    ends = (np.arange(-1, 2 * f * t[-1] + 2) + 0.5 - phase / math.pi) / (2 * f)  # where sin(w t + phase) = ±1
    ends = ends[(ends >= t[0]) & (ends <= t[-1])]
    acc[:, 1] += _rings(t, ends, 50, 0.05, np.full(len(ends), 3.0))
    return acc, gyr


def _drum(t, rng):
    acc, gyr = _zeros(t)
    beat = rng.uniform(1.5, 3.0)
    hits = np.arange(rng.uniform(0, 1 / beat), t[-1], 1 / beat)
    amps = rng.uniform(6, 14) * rng.uniform(0.85, 1.15, len(hits))
    ring = _rings(t, hits, rng.uniform(50, 90), 0.03, amps)
    acc[:, 2] += ring
    acc[:, 0] += 0.3 * ring
    gyr[:, 1] += 0.02 * ring
    return acc, gyr


def _car(t, rng):
    acc, gyr = _zeros(t)
    start = rng.uniform(0.3, 1.2)
    cruise = start + rng.uniform(1.5, 2.5)
    brake = cruise + rng.uniform(0.4, 1.2)
    stop = brake + rng.uniform(0.8, 1.4)
    a = np.select([(t >= start) & (t < cruise), (t >= brake) & (t < stop)],
                  [rng.uniform(1.5, 3.0), -rng.uniform(4.0, 7.0)], 0.0)
    kernel = np.hanning(max(3, int(0.25 / max(np.median(np.diff(t)), 1e-3))))
    a = np.convolve(a, kernel / kernel.sum(), mode="same")  # the drivetrain smooths the jolts
    moving = (t >= start) & (t < stop)
    engine = rng.uniform(25, 40)
    acc[:, 0] += a
    acc[:, 2] += (0.2 + 0.15 * (a > 0.5)) * np.sin(2 * math.pi * engine * t) * np.where(moving, 1.0, 0.4)
    gyr[:, 1] += -0.03 * a  # the body pitches back under throttle, dives when braking
    gyr[:, 2] += rng.uniform(-0.2, 0.2) * moving
    return acc, gyr


def _clock(t, rng):
    acc, gyr = _zeros(t)
    ticks = np.arange(rng.uniform(0, 1.0), t[-1], 1.0)
    amps = rng.uniform(1.0, 3.0) * np.ones(len(ticks))
    acc[:, 0] += _rings(t, ticks, 60, 0.012, amps)
    gyr[:, 2] += 0.01 * _rings(t, ticks, 60, 0.012, amps)
    return acc, gyr


def _fire(t, rng):
    acc, gyr = _zeros(t)
    for axis in range(3):
        for _ in range(6):  # turbulent flicker: a few random slow sines per axis
            f = rng.uniform(0.5, 4.0)
            acc[:, axis] += rng.uniform(0.1, 0.35) * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
            gyr[:, axis] += rng.uniform(0.02, 0.08) * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    return acc, gyr


def _ocean(t, rng):
    acc, gyr = np.zeros((len(t), 3)), np.zeros((len(t), 3))
    f, height, roll, phase = rng.uniform(0.12, 0.3), rng.uniform(0.5, 1.5), rng.uniform(0.1, 0.3), rng.uniform(0, 6)
    w = 2 * math.pi * f
    angle = roll * np.sin(w * t + phase + 1.2)
    acc[:, 2] = G * np.cos(angle) + height * w * w * np.sin(w * t + phase)
    acc[:, 1] = G * np.sin(angle)
    gyr[:, 0] = roll * w * np.cos(w * t + phase + 1.2)
    gyr[:, 1] = 0.4 * roll * w * np.cos(w * t + phase)
    return acc, gyr


def _phone(t, rng):
    acc, gyr = _zeros(t)
    on, off, f, a = rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.8), rng.uniform(60, 90), rng.uniform(3, 6)
    ringing = ((t + rng.uniform(0, on + off)) % (on + off)) < on
    acc[:, 0] += a * ringing * np.sin(2 * math.pi * f * t)
    acc[:, 1] += a * ringing * np.cos(2 * math.pi * f * t)  # a spinning eccentric mass
    gyr[:, 2] += 0.05 * ringing * np.sin(2 * math.pi * f * t)
    return acc, gyr


def _piano(t, rng):
    acc, gyr = _zeros(t)
    notes = np.cumsum(rng.uniform(0.15, 0.5, 40)) + rng.uniform(0, 0.3)
    notes = notes[notes < t[-1]]
    for note in notes:
        ring = _rings(t, [note], rng.uniform(30, 100), 0.3, [rng.uniform(0.3, 1.0)])
        acc[:, 2] += ring
        gyr[:, 0] += 0.02 * ring
    return acc, gyr


def _ball(t, rng):
    acc, gyr = np.zeros((len(t), 3)), np.zeros((len(t), 3))  # free fall: the accelerometer reads 0
    first, interval, restitution = rng.uniform(0.2, 0.8), rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.8)
    impacts, when = [], first
    while interval > 0.04 and when < t[-1]:
        impacts.append((when, interval))
        when, interval = when + interval, interval * restitution
    rest = when if interval <= 0.04 else math.inf
    for when, flight in impacts:  # a short half-sine push at each bounce, stronger for higher bounces
        on = (t >= when) & (t < when + 0.015)
        acc[on, 2] += G * flight / 0.015 * 1.5 * np.sin(math.pi * (t[on] - when) / 0.015)
    acc[t >= rest, 2] = G
    axis = rng.normal(size=3)
    spin = rng.uniform(2, 6) * restitution ** np.searchsorted([w for w, _ in impacts], t)
    gyr += spin[:, None] * (axis / np.linalg.norm(axis))[None]
    gyr[t >= rest] = 0.0
    return acc, gyr


MOTIONS: dict[str, Motion] = {
    "rain": _rain, "dog": _dog, "cat": _cat, "bird": _bird, "bee": _bee, "bell": _bell, "drum": _drum,
    "car": _car, "clock": _clock, "fire": _fire, "ocean": _ocean, "phone": _phone, "piano": _piano, "ball": _ball,
}


def _mounting(rng: np.random.Generator) -> np.ndarray:
    """A rotation: any heading about the vertical, then a tilt of up to 0.25 rad about a horizontal axis."""
    yaw, tilt, about = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.25), rng.uniform(0, 2 * math.pi)
    c, s = math.cos(yaw), math.sin(yaw)
    heading = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    k = np.array([math.cos(about), math.sin(about), 0.0])
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    tilted = np.eye(3) + math.sin(tilt) * cross + (1 - math.cos(tilt)) * cross @ cross  # Rodrigues
    return tilted @ heading


def render_motion(name: str, rng: np.random.Generator, rate: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(timestamps in s [T], readings [T, 6] = accelerometer x, y, z in m/s², gyroscope x, y, z in rad/s, the
    nominal rate in Hz) of one sample; `rate` fixes the rate and drops the timestamp jitter (arrays)."""
    nominal = int(rng.choice([200, 400])) if rate is None else rate
    duration = rng.uniform(5.0, 6.5)
    t = np.arange(int(duration * nominal)) / nominal
    if rate is None:
        t = t + rng.uniform(-0.02, 0.02, len(t)) / nominal
    acc, gyr = MOTIONS[name](t, rng)
    turn = _mounting(rng)
    acc, gyr = acc @ turn.T, gyr @ turn.T
    acc = acc + rng.normal(0, rng.uniform(0.02, 0.06), acc.shape) + rng.normal(0, 0.05, 3)
    gyr = gyr + rng.normal(0, rng.uniform(0.003, 0.01), gyr.shape) + rng.normal(0, 0.01, 3)
    return t, np.concatenate([acc.clip(-ACCEL_RANGE, ACCEL_RANGE), gyr.clip(-GYRO_RANGE, GYRO_RANGE)], axis=1), nominal
