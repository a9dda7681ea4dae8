"""A synthetic multimodal world: a few concepts, each rendered procedurally as an image, a sound, a
short video, a 3D point cloud and text, with seeded random variation.

The embedded `toy` model is trained on it (tools/build_toy_model.py) and evaluated on fresh seeds of
it (tools/eval_toy.py). Every sample is a pure function of (world seed, concept, modality, index), so a
held-out set is just other indices, and samples can be rendered in any order or in parallel.

Files are written with real encoders (PNG, WAV, MP3 via the ffmpeg of imageio-ffmpeg, MP4 via OpenCV,
PLY) so that training and evaluation read them back through `ibllm_agent.media`, like user files.
Renders are small (the loaders scale them to the official 224-pixel / 16 kHz / 8192-point inputs).
"""

from __future__ import annotations

import math
import struct
import subprocess
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 112
"""Rendered image side in pixels (half of the loaders' 224: they upscale)."""
SAMPLE_RATE = 16_000
"""Audio sample rate; the loaders resample everything to 16 kHz anyway."""
VIDEO_FPS = 8
"""Frames per second of the toy videos (the loader picks 2 frames per 2-second clip)."""
MODALITIES = ("image", "audio", "video", "point", "text")
WORLD_DESCRIPTION = (
    "a toy world: a small ImageBind-LLM trained from scratch on synthetic pictures, sounds, videos and "
    "3D shapes of a few concepts; it knows nothing else"
)


@dataclass(frozen=True)
class Concept:
    """One thing of the toy world and the words used for it."""

    name: str
    """The label, also the word an answer must contain."""
    noun: str
    """With article where English wants one ("a dog", "rain")."""
    look: str
    """What a picture of it shows."""
    sound: str
    """What it sounds like, as a noun phrase."""
    shape: str
    """Its 3D shape."""
    motion: str
    """What happens in a video of it (a sentence fragment after the noun)."""


CONCEPTS: tuple[Concept, ...] = (
    Concept("rain", "rain", "grey clouds with blue drops falling from them", "a steady patter of drops",
            "a cloud above falling drops", "falls from the clouds"),
    Concept("dog", "a dog", "a brown dog with floppy ears standing on four legs", "loud short barks",
            "a body on four legs with a head and a tail", "walks along"),
    Concept("cat", "a cat", "a cat with pointed ears and whiskers", "a high meow that rises and falls",
            "a round body with a head and two pointed ears", "sits and swishes its tail"),
    Concept("bird", "a bird", "a small bird with spread wings and an orange beak", "quick high chirps",
            "a small body with two wide wings", "flies across the sky"),
    Concept("bee", "a bee", "a yellow bee with black stripes and small wings", "a constant buzz",
            "a round striped body with two small wings", "zigzags from side to side"),
    Concept("bell", "a bell", "a golden bell with a clapper", "a clear ringing tone that fades slowly",
            "a hollow dome that flares at the bottom", "swings back and forth"),
    Concept("drum", "a drum", "a red drum with a white top", "deep booming beats",
            "a short cylinder", "is struck in a steady beat"),
    Concept("car", "a car", "a car with a cabin and two black wheels", "the low hum of an engine",
            "a long box on four wheels", "drives across the road"),
    Concept("clock", "a clock", "a round white clock face with two hands", "a steady tick tock",
            "a flat disk", "turns its hands"),
    Concept("fire", "a fire", "orange and yellow flames over brown logs", "crackling and popping",
            "a cone of flame over crossed logs", "flickers upward"),
    Concept("ocean", "the ocean", "blue waves with white crests under the sky", "waves that swell and wash",
            "a wavy surface", "rolls in waves"),
    Concept("phone", "a phone", "a black phone with a glowing screen", "a ringing trill",
            "a thin flat slab", "buzzes and rings"),
    Concept("piano", "a piano", "a row of white and black piano keys", "a melody of notes",
            "a large box on legs", "plays a tune"),
    Concept("ball", "a ball", "a bright striped ball with a shadow", "bouncing thuds that come faster",
            "a sphere", "bounces up and down"),
)
CONCEPT_NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS)
_BY_NAME = {c.name: c for c in CONCEPTS}


def concept(name: str) -> Concept:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown toy concept {name!r}; known: {', '.join(CONCEPT_NAMES)}") from None


def find_concepts(text: str) -> list[str]:
    """Concept names mentioned in `text`, in order of first mention (whole words, case-insensitive)."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    hits: list[tuple[int, str]] = []
    for name in CONCEPT_NAMES:
        forms = {name, name + "s", name + "es"}
        first = next((i for i, w in enumerate(words) if w in forms), None)
        if first is not None:
            hits.append((first, name))
    return [name for _, name in sorted(hits)]


def names_concept(text: str, name: str) -> bool:
    """True when the first concept `text` mentions is `name`: how the evaluation scores an answer."""
    found = find_concepts(text)
    return bool(found) and found[0] == name


# ---------------------------------------------------------------------------------------------------
# Text: captions (pretraining), descriptions and instruction data (finetuning)
# ---------------------------------------------------------------------------------------------------

_CAPTION_TEMPLATES = (
    "a photo of {noun}.",
    "a picture of {noun}.",
    "{Noun}.",
    "an image of {look}.",
    "{look}.",
    "a simple drawing of {noun}.",
    "{noun}, drawn on a plain background.",
    "this picture shows {noun}.",
)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def captions(c: Concept) -> list[str]:
    """Several caption phrasings of a concept (the image-text pairs of pretraining)."""
    return [t.format(noun=c.noun, Noun=_cap(c.noun), look=c.look) for t in _CAPTION_TEMPLATES]


def description(c: Concept) -> str:
    """A longer description: what it looks like, sounds like, its shape and how it moves."""
    return (f"This is {c.noun}. It looks like {c.look}. It makes {c.sound}. "
            f"Its shape is {c.shape}, and it {c.motion}.")


def text_prompts(c: Concept) -> list[str]:
    """Short texts used as the text modality (zero-shot prompts, text-as-input evaluation)."""
    return [f"{c.name}", f"a photo of {c.noun}", f"the sound of {c.noun}", f"{c.noun}"]


_ANSWER_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("What is this?", "This is {noun}."),
    ("What is in this picture?", "The picture shows {noun}."),
    ("What do you see?", "I see {noun}: {look}."),
    ("What do you hear?", "I hear {noun}: {sound}."),
    ("What sound does this make?", "It sounds like {noun}: {sound}."),
    ("What is its shape?", "It is {noun}, shaped like {shape}."),
    ("Describe it in detail.", "{description}"),
    ("Describe the image in detail.", "{description}"),
    ("Name the thing shown here in one word.", "{Name}."),
    ("What is happening?", "{Noun} {motion}."),
)
"""Questions about the visual input and their answer patterns. The answers always name the concept
first, so that an answer can be scored by the first concept it mentions."""

EVAL_QUESTION = "What is this?"


def _fill(template: str, c: Concept) -> str:
    return template.format(noun=c.noun, Noun=_cap(c.noun), look=c.look, sound=c.sound, shape=c.shape,
                           motion=c.motion, name=c.name, Name=_cap(c.name), description=description(c))


def visual_instructions(c: Concept) -> list[dict[str, str]]:
    """Instruction/response pairs about an input showing concept `c` (Alpaca fields, no `input`)."""
    return [{"instruction": q, "input": "", "output": _fill(a, c)} for q, a in _ANSWER_TEMPLATES]


def text_instructions() -> list[dict[str, str]]:
    """Text-only toy questions (trained with a zero image, as upstream does for text-only samples)."""
    out = [
        {"instruction": "Who are you?", "input": "",
         "output": "I am a toy ImageBind-LLM. I was trained on " + WORLD_DESCRIPTION + "."},
        {"instruction": "What things do you know?", "input": "",
         "output": "I know " + ", ".join(c.name for c in CONCEPTS[:-1]) + f" and {CONCEPTS[-1].name}."},
    ]
    for c in CONCEPTS:
        out += [
            {"instruction": f"What sound does {c.noun} make?", "input": "", "output": f"{_cap(c.noun)} makes {c.sound}."},
            {"instruction": f"What does {c.noun} look like?", "input": "", "output": f"{_cap(c.noun)} looks like {c.look}."},
            {"instruction": f"Tell me about {c.noun}.", "input": "", "output": description(c)},
            {"instruction": "Which thing makes this sound?", "input": c.sound, "output": f"{_cap(c.noun)} makes {c.sound}."},
        ]
    return out


def corpus() -> list[str]:
    """All toy text: what the tokenizer and the language model are trained on."""
    lines: list[str] = []
    for c in CONCEPTS:
        lines += captions(c) + [description(c)] + text_prompts(c)
        lines += [f"{s['instruction']} {s['output']}" for s in visual_instructions(c)]
    lines += [f"{s['instruction']} {s['input']} {s['output']}" for s in text_instructions()]
    return lines


# ---------------------------------------------------------------------------------------------------
# Randomness: one generator per sample
# ---------------------------------------------------------------------------------------------------


def sample_rng(seed: int, name: str, modality: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent of the order in which samples are drawn."""
    return np.random.default_rng([seed, CONCEPT_NAMES.index(name), MODALITIES.index(modality), index])


def _color(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 30) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-spread, spread + 1), 0, 255)) for v in base)


# ---------------------------------------------------------------------------------------------------
# Images and video frames: draw(d, p, t) paints concept-specific shapes at time t (seconds)
# ---------------------------------------------------------------------------------------------------

Params = dict


def _image_params(rng: np.random.Generator) -> Params:
    return {
        "x": rng.uniform(0.35, 0.65), "y": rng.uniform(0.4, 0.6), "s": rng.uniform(0.75, 1.15),
        "bg1": tuple(int(v) for v in rng.integers(40, 220, 3)), "bg2": tuple(int(v) for v in rng.integers(40, 220, 3)),
        "noise": rng.uniform(2, 12), "phase": rng.uniform(0, 2 * math.pi), "speed": rng.uniform(0.7, 1.3),
        "rng": rng,
    }


class _Pen:
    """Drawing in unit coordinates around the object's (moving) centre, scaled by the sample's size."""

    def __init__(self, d: ImageDraw.ImageDraw, cx: float, cy: float, s: float):
        self.d, self.cx, self.cy, self.k = d, cx * IMAGE_SIZE, cy * IMAGE_SIZE, s * IMAGE_SIZE

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.k, self.cy + y * self.k)

    def box(self, x0, y0, x1, y1):
        (a, b), (c, e) = self.xy(x0, y0), self.xy(x1, y1)
        return [min(a, c), min(b, e), max(a, c), max(b, e)]

    def ellipse(self, x, y, rx, ry, fill, outline=None):
        self.d.ellipse(self.box(x - rx, y - ry, x + rx, y + ry), fill=fill, outline=outline)

    def rect(self, x0, y0, x1, y1, fill, outline=None):
        self.d.rectangle(self.box(x0, y0, x1, y1), fill=fill, outline=outline)

    def poly(self, pts, fill):
        self.d.polygon([self.xy(x, y) for x, y in pts], fill=fill)

    def line(self, pts, fill, width=1.0):
        self.d.line([self.xy(x, y) for x, y in pts], fill=fill, width=max(1, int(width * self.k / 40)))


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


def _shade(c: tuple[int, int, int], d: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + d, 0, 255)) for v in c)


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


def render_frame(name: str, p: Params, t: float) -> Image.Image:
    """One RGB frame of concept `name` with sample parameters `p` at time `t`."""
    bg1, bg2 = p.get("bg", (p["bg1"], p["bg2"]))
    ramp = np.linspace(0, 1, IMAGE_SIZE)[:, None, None]
    base = (1 - ramp) * np.array(bg1) + ramp * np.array(bg2)  # (H, 1, 3) vertical gradient
    canvas = Image.fromarray(np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8))
    cx, cy = _position(name, p, t)
    _DRAW[name](_Pen(ImageDraw.Draw(canvas), cx, cy, p["s"] * 0.9), p, t)
    noise_rng = np.random.default_rng([p["noise_seed"], int(round(t * 1000))])
    pixels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    pixels = pixels + noise_rng.normal(0, p["noise"], pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def image_params(seed: int, name: str, modality: str, index: int) -> Params:
    rng = sample_rng(seed, name, modality, index)
    p = _image_params(rng)
    p.update(_concept_params(name, rng))
    p["noise_seed"] = int(rng.integers(1 << 30))
    return p


# ---------------------------------------------------------------------------------------------------
# Sounds: synth(rng, n) -> float waveform in [-1, 1] of n samples at SAMPLE_RATE
# ---------------------------------------------------------------------------------------------------


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


def render_sound(seed: int, name: str, index: int, *, modality: str = "audio") -> np.ndarray:
    """A mono float32 waveform at SAMPLE_RATE, 2-4 s, peak-normalised with random gain and background noise."""
    rng = sample_rng(seed, name, modality, index)
    n = int(rng.uniform(2.0, 4.0) * SAMPLE_RATE)
    x = _SYNTH[name](rng, n)
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.4, 0.9)
    x = x + rng.normal(0, rng.uniform(0.002, 0.02), n)
    return np.clip(x, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Point clouds: shape(rng, n) -> [n, 3] surface samples, then rotation / scale / jitter
# ---------------------------------------------------------------------------------------------------


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


def render_points(seed: int, name: str, index: int) -> np.ndarray:
    """A float32 [N, 3] cloud: the concept's shape, fully randomly rotated, scaled, jittered (N in 2048..6144)."""
    rng = sample_rng(seed, name, "point", index)
    n = int(rng.integers(2048, 6145))
    pts = _SHAPES[name](rng, n)
    pts = pts * rng.uniform(0.85, 1.15, 3)  # anisotropic scale before rotating
    pts = pts @ _random_rotation(rng).T
    pts = pts * rng.uniform(0.5, 2.0) + rng.normal(0, 0.3, 3)
    pts = pts + rng.normal(0, rng.uniform(0.005, 0.02) * np.abs(pts).max(), pts.shape)
    return rng.permutation(pts).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Writing files with real encoders
# ---------------------------------------------------------------------------------------------------


def write_wav(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_mp3(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    subprocess.run([_ffmpeg(), "-y", "-loglevel", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
                    "-c:a", "libmp3lame", "-b:a", "64k", str(path)], input=pcm, check=True)
    return path


def write_mp4(path: Path, frames: list[Image.Image], fps: int = VIDEO_FPS) -> Path:
    import cv2

    w, h = frames[0].size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    try:
        for f in frames:
            writer.write(np.asarray(f)[:, :, ::-1])  # RGB -> BGR
    finally:
        writer.release()
    return path


def write_ply(path: Path, pts: np.ndarray, *, binary: bool) -> Path:
    header = ("ply\nformat {} 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\n"
              "end_header\n").format("binary_little_endian" if binary else "ascii", len(pts))
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            f.write(b"".join(struct.pack("<3f", *p) for p in pts.astype(np.float32)))
        else:
            f.write("".join(f"{x:.5f} {y:.5f} {z:.5f}\n" for x, y, z in pts).encode("ascii"))
    return path


@dataclass(frozen=True)
class Sample:
    """One rendered item of the world: a file (or a text) and its concept."""

    concept: str
    modality: str
    index: int
    path: str | None = None
    """The file, for image/audio/video/point."""
    text: str | None = None
    """The text, for the text modality."""


class ToyWorld:
    """The toy world of one seed: renders samples and writes them as files."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def image(self, name: str, index: int) -> Image.Image:
        return render_frame(name, image_params(self.seed, name, "image", index), 0.0)

    def video_frames(self, name: str, index: int) -> list[Image.Image]:
        rng = sample_rng(self.seed, name, "video", index)
        duration = rng.uniform(2.5, 4.0)
        p = image_params(self.seed, name, "video", index)
        return [render_frame(name, p, k / VIDEO_FPS) for k in range(int(duration * VIDEO_FPS))]

    def sound(self, name: str, index: int) -> np.ndarray:
        return render_sound(self.seed, name, index)

    def points(self, name: str, index: int) -> np.ndarray:
        return render_points(self.seed, name, index)

    def text(self, name: str, index: int) -> str:
        c = concept(name)
        options = captions(c) + text_prompts(c)
        return options[int(sample_rng(self.seed, name, "text", index).integers(len(options)))]

    def write(self, name: str, modality: str, index: int, folder: Path) -> Sample:
        """Render one sample; media are written under `folder` (audio alternates WAV and MP3, points
        alternate ASCII and binary PLY)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{name}_{modality}_{index:04d}"
        if modality == "text":
            return Sample(name, modality, index, text=self.text(name, index))
        if modality == "image":
            path = stem.with_suffix(".png")
            self.image(name, index).save(path)
        elif modality == "audio":
            path = (write_mp3 if index % 4 == 3 else write_wav)(stem.with_suffix(".mp3" if index % 4 == 3 else ".wav"),
                                                                 self.sound(name, index))
        elif modality == "video":
            path = write_mp4(stem.with_suffix(".mp4"), self.video_frames(name, index))
        elif modality == "point":
            path = write_ply(stem.with_suffix(".ply"), self.points(name, index), binary=index % 2 == 1)
        else:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return Sample(name, modality, index, path=str(path))

    def samples(self, modality: str, indices: range, folder: Path,
                names: tuple[str, ...] = CONCEPT_NAMES) -> Iterator[Sample]:
        for index in indices:
            for name in names:
                yield self.write(name, modality, index, folder)
