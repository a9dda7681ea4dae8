"""The toy world of one seed: every sample is a pure function of (world seed, concept, medium, index),
so a held-out set is just another seed or other indices, and samples render in any order or in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ibllm_agent.toy.concepts import CONCEPT_NAMES, captions, concept, text_prompts
from ibllm_agent.toy.depths import depth_params, render_depth
from ibllm_agent.toy.files import (
    write_depth,
    write_imu,
    write_mp3,
    write_mp4,
    write_ply,
    write_thermal,
    write_wav,
)
from ibllm_agent.toy.heat import render_thermal, thermal_params
from ibllm_agent.toy.motion import render_motion
from ibllm_agent.toy.pictures import VIDEO_FPS, image_params, render_frame
from ibllm_agent.toy.shapes import render_points
from ibllm_agent.toy.sounds import render_sound

STREAM_ID = {"image": 0, "audio": 1, "video": 2, "point": 3, "text": 4, "depth": 5, "thermal": 6, "imu": 7}
"""The toy's random streams: frozen by the shipped toy model (its samples must stay bit-identical), so new
media get new ids appended, never a renumbering."""


def sample_rng(seed: int, name: str, modality: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent of the order in which samples are drawn."""
    return np.random.default_rng([seed, CONCEPT_NAMES.index(name), STREAM_ID[modality], index])


@dataclass(frozen=True)
class Sample:
    """One rendered item of the world: a file (or a text) and its concept."""

    concept: str
    modality: str
    index: int
    path: str | None = None
    """The file, for every modality but text."""
    text: str | None = None
    """The text, for the text modality."""


class ToyWorld:
    """The toy world of one seed: renders samples and writes them as files."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def image(self, name: str, index: int) -> Image.Image:
        return render_frame(name, image_params(name, sample_rng(self.seed, name, "image", index)), 0.0)

    def video_frames(self, name: str, index: int) -> list[Image.Image]:
        # the duration and the drawing parameters are both drawn from the start of the video stream (frozen)
        duration = sample_rng(self.seed, name, "video", index).uniform(2.5, 4.0)
        p = image_params(name, sample_rng(self.seed, name, "video", index))
        return [render_frame(name, p, k / VIDEO_FPS) for k in range(int(duration * VIDEO_FPS))]

    def sound(self, name: str, index: int) -> np.ndarray:
        return render_sound(name, sample_rng(self.seed, name, "audio", index))

    def points(self, name: str, index: int) -> np.ndarray:
        return render_points(name, sample_rng(self.seed, name, "point", index))

    def depth(self, name: str, index: int) -> np.ndarray:
        """float32 [H, W] metres (0 = no reading)."""
        return render_depth(name, depth_params(name, sample_rng(self.seed, name, "depth", index)))

    def thermal(self, name: str, index: int) -> np.ndarray:
        """float32 [H, W] kelvin."""
        return render_thermal(name, thermal_params(name, sample_rng(self.seed, name, "thermal", index)))

    def motion(self, name: str, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(timestamps s, readings [T, 6] in m/s² and rad/s, nominal rate Hz); every fourth sample is an
        array at the IMU trunk's 400 Hz, without timestamp jitter."""
        rng = sample_rng(self.seed, name, "imu", index)
        return render_motion(name, rng, rate=400 if index % 4 == 3 else None)

    def text(self, name: str, index: int) -> str:
        c = concept(name)
        options = captions(c) + text_prompts(c)
        return options[int(sample_rng(self.seed, name, "text", index).integers(len(options)))]

    def write(self, name: str, modality: str, index: int, folder: Path) -> Sample:
        """Render one sample; media are written under `folder` (audio alternates WAV and MP3, points
        alternate ASCII and binary PLY; depth maps are 16-bit PNGs of millimetres, written by Pillow or
        OpenCV, and every fourth a .npy of metres; thermal images are radiometric 16-bit PNGs and TIFFs, and
        every fourth an 8-bit JPEG; IMU traces are CSVs in Ego4D's layout or a phone logger's (g, °/s,
        shuffled columns), and every fourth a .npy at 400 Hz)."""
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
        elif modality == "depth":
            path = write_depth(stem.with_suffix(".npy" if index % 4 == 3 else ".png"), self.depth(name, index),
                               encoder="opencv" if index % 4 == 1 else "pillow")
        elif modality == "thermal":
            suffix = {1: ".tif", 3: ".jpg"}.get(index % 4, ".png")
            path = write_thermal(stem.with_suffix(suffix), self.thermal(name, index),
                                 encoder="opencv" if index % 4 == 2 else "pillow")
        elif modality == "imu":
            times, readings, _ = self.motion(name, index)
            order = sample_rng(self.seed, name, "imu", index + (1 << 20)).permutation(6)  # the logger's layout
            path = write_imu(stem.with_suffix(".npy" if index % 4 == 3 else ".csv"), times, readings,
                             style="app" if index % 4 == 1 else "ego4d", order=order)
        else:
            raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(STREAM_ID)}")
        return Sample(name, modality, index, path=str(path))

    def samples(self, modality: str, indices: range, folder: Path,
                names: tuple[str, ...] = CONCEPT_NAMES) -> Iterator[Sample]:
        for index in indices:
            for name in names:
                yield self.write(name, modality, index, folder)
