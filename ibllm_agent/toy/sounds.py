"""Sounds: each concept synthesised with numpy (pitch, timbre, rhythm varied by the sample's random
stream), 2-4 seconds of mono audio at SAMPLE_RATE.

A synth `_sound_<name>(rng, n)` returns n samples of unnormalised waveform; `render_sound` picks the
length, normalises, sets a random gain and adds background noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SAMPLE_RATE = 16_000
"""Audio sample rate; the loaders resample everything to 16 kHz anyway."""


def _time(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _fft_filter(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Band-pass by zeroing FFT bins outside [lo, hi] Hz."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, len(x))


def _harmonic(f0: np.ndarray | float, n: int, partials: int = 5, rolloff: float = 0.6) -> np.ndarray:
    phase = 2 * math.pi * np.cumsum(np.broadcast_to(f0, (n,))) / SAMPLE_RATE
    return sum(rolloff ** k * np.sin((k + 1) * phase) for k in range(partials))


def _env(n: int, start: int, length: int, decay: float) -> np.ndarray:
    e = np.zeros(n)
    end = min(n, start + length)
    e[start:end] = np.exp(-np.arange(end - start) / (decay * SAMPLE_RATE))
    return e


def _sound_rain(rng, n):
    hiss = _fft_filter(rng.normal(0, 1, n), 800, rng.uniform(4000, 7000))
    drips = np.zeros(n)
    for s in rng.integers(0, n, int(n / SAMPLE_RATE * rng.uniform(20, 40))):
        drips += rng.uniform(0.5, 1.5) * _env(n, s, 400, 0.003) * np.sin(2 * math.pi * rng.uniform(2000, 4000) * _time(n))
    return 0.5 * hiss / (np.abs(hiss).max() + 1e-9) + 0.4 * drips


def _sound_dog(rng, n):
    out, t = np.zeros(n), _time(n)
    pos = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    while pos < n:
        length = int(rng.uniform(0.12, 0.2) * SAMPLE_RATE)
        f0 = rng.uniform(380, 600) * (1 - 0.3 * np.clip((t - pos / SAMPLE_RATE) / 0.2, 0, 1))
        bark = _harmonic(f0, n, 6, 0.8) + 0.5 * rng.normal(0, 1, n)
        out += _env(n, pos, length, 0.06) * bark
        pos += length + int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    return out


def _sound_cat(rng, n):
    out, t = np.zeros(n), _time(n)
    pos = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
    while pos < n:
        length = int(rng.uniform(0.5, 0.9) * SAMPLE_RATE)
        u = np.clip((t - pos / SAMPLE_RATE) / (length / SAMPLE_RATE), 0, 1)
        f0 = rng.uniform(500, 700) * (1 + 0.45 * np.sin(math.pi * u)) * (1 + 0.02 * np.sin(2 * math.pi * 6 * t))
        window = np.where((u > 0) & (u < 1), np.sin(math.pi * u), 0.0)
        out += window * _harmonic(f0, n, 5, 0.55)
        pos += length + int(rng.uniform(0.3, 0.8) * SAMPLE_RATE)
    return out


def _sound_bird(rng, n):
    out, t = np.zeros(n), _time(n)
    pos = int(rng.uniform(0.0, 0.2) * SAMPLE_RATE)
    lo, hi = rng.uniform(2200, 3000), rng.uniform(3800, 5200)
    while pos < n:
        length = int(rng.uniform(0.05, 0.1) * SAMPLE_RATE)
        u = np.clip((t - pos / SAMPLE_RATE) / (length / SAMPLE_RATE), 0, 1)
        window = np.where((u > 0) & (u < 1), np.sin(math.pi * u), 0.0)
        out += window * np.sin(2 * math.pi * np.cumsum(lo + (hi - lo) * u) / SAMPLE_RATE)
        pos += length + int(rng.uniform(0.04, 0.25) * SAMPLE_RATE)
    return out


def _sound_bee(rng, n):
    t = _time(n)
    f0 = rng.uniform(170, 260) * (1 + 0.03 * np.sin(2 * math.pi * rng.uniform(4, 8) * t))
    phase = np.cumsum(f0) / SAMPLE_RATE
    saw = 2 * (phase % 1.0) - 1
    return saw * (0.8 + 0.2 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * t))


def _sound_bell(rng, n):
    out, t, f = np.zeros(n), _time(n), rng.uniform(550, 1000)
    for s in sorted(rng.integers(0, max(1, n // 2), int(rng.integers(1, 3)))):
        for ratio, amp in ((1.0, 1.0), (2.0, 0.6), (2.4, 0.5), (3.0, 0.35), (4.2, 0.25)):
            out += amp * _env(n, s, n, rng.uniform(0.8, 1.6) / ratio) * np.sin(2 * math.pi * f * ratio * t)
    return out


def _sound_drum(rng, n):
    out, t = np.zeros(n), _time(n)
    beat, pos = rng.uniform(0.25, 0.5), int(rng.uniform(0, 0.2) * SAMPLE_RATE)
    f = rng.uniform(65, 120)
    while pos < n:
        local = np.clip(t - pos / SAMPLE_RATE, 0, None)
        body = np.sin(2 * math.pi * f * local * (1 - 0.3 * np.clip(local / 0.15, 0, 1)))
        out += _env(n, pos, int(0.4 * SAMPLE_RATE), 0.12) * (body + 0.3 * rng.normal(0, 1, n))
        pos += int(beat * SAMPLE_RATE)
    return out


def _sound_car(rng, n):
    t = _time(n)
    f0 = rng.uniform(40, 70) * (1 + rng.uniform(0.1, 0.6) * t / t[-1])
    rumble = _harmonic(f0, n, 8, 0.85)
    return rumble + 0.6 * _fft_filter(rng.normal(0, 1, n), 30, 400) / 10


def _sound_clock(rng, n):
    out, t = np.zeros(n), _time(n)
    period, pos, k = rng.uniform(0.45, 0.7), int(rng.uniform(0, 0.2) * SAMPLE_RATE), 0
    f_tick, f_tock = rng.uniform(2500, 3500), rng.uniform(1500, 2200)
    while pos < n:
        out += _env(n, pos, 300, 0.002) * np.sin(2 * math.pi * (f_tick if k % 2 == 0 else f_tock) * t)
        pos, k = pos + int(period * SAMPLE_RATE), k + 1
    return out


def _sound_fire(rng, n):
    out = 0.15 * _fft_filter(rng.normal(0, 1, n), 40, 300) / 3
    for s in rng.integers(0, n, int(n / SAMPLE_RATE * rng.uniform(15, 35))):
        out += rng.uniform(0.3, 1.0) * _env(n, s, 200, 0.0015) * rng.normal(0, 1, n)
    return out


def _sound_ocean(rng, n):
    t = _time(n)
    noise = _fft_filter(rng.normal(0, 1, n), 60, rng.uniform(900, 1600))
    swell = 0.55 + 0.45 * np.sin(2 * math.pi * rng.uniform(0.25, 0.5) * t + rng.uniform(0, 6.3))
    return noise * swell ** 2


def _sound_phone(rng, n):
    t = _time(n)
    fa, fb = rng.uniform(900, 1100), rng.uniform(1200, 1400)
    trill = np.where(np.sin(2 * math.pi * 20 * t) > 0, np.sin(2 * math.pi * fa * t), np.sin(2 * math.pi * fb * t))
    on = ((t + rng.uniform(0, 1)) % 1.0) < rng.uniform(0.45, 0.65)
    return trill * on


def _sound_piano(rng, n):
    out, pos = np.zeros(n), int(rng.uniform(0, 0.1) * SAMPLE_RATE)
    root = rng.uniform(220, 330)
    while pos < n:
        f = root * 2 ** (int(rng.choice([0, 2, 4, 5, 7, 9, 11, 12])) / 12)
        out += _env(n, pos, n, 0.5) * _harmonic(f, n, 6, 0.5)
        pos += int(rng.uniform(0.2, 0.45) * SAMPLE_RATE)
    return out


def _sound_ball(rng, n):
    out, t = np.zeros(n), _time(n)
    pos, gap, amp, f = int(rng.uniform(0, 0.2) * SAMPLE_RATE), rng.uniform(0.5, 0.7), 1.0, rng.uniform(180, 300)
    while pos < n and gap > 0.04:
        out += amp * _env(n, pos, int(0.1 * SAMPLE_RATE), 0.025) * np.sin(2 * math.pi * f * t)
        pos += int(gap * SAMPLE_RATE)
        gap, amp = gap * 0.78, amp * 0.85
    return out


_SYNTH: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "rain": _sound_rain, "dog": _sound_dog, "cat": _sound_cat, "bird": _sound_bird, "bee": _sound_bee,
    "bell": _sound_bell, "drum": _sound_drum, "car": _sound_car, "clock": _sound_clock, "fire": _sound_fire,
    "ocean": _sound_ocean, "phone": _sound_phone, "piano": _sound_piano, "ball": _sound_ball,
}


def render_sound(name: str, rng: np.random.Generator) -> np.ndarray:
    """A mono float32 waveform at SAMPLE_RATE, 2-4 s, peak-normalised with random gain and background noise."""
    n = int(rng.uniform(2.0, 4.0) * SAMPLE_RATE)
    x = _SYNTH[name](rng, n)
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.4, 0.9)
    x = x + rng.normal(0, rng.uniform(0.002, 0.02), n)
    return np.clip(x, -1, 1).astype(np.float32)
