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
from ibllm_agent.toy.files import write_mp3, write_mp4, write_ply, write_wav
from ibllm_agent.toy.pictures import VIDEO_FPS, image_params, render_frame
from ibllm_agent.toy.shapes import render_points
from ibllm_agent.toy.sounds import render_sound

STREAM_ID = {"image": 0, "audio": 1, "video": 2, "point": 3, "text": 4}
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
    """The file, for image/audio/video/point."""
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
            raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(STREAM_ID)}")
        return Sample(name, modality, index, path=str(path))

    def samples(self, modality: str, indices: range, folder: Path,
                names: tuple[str, ...] = CONCEPT_NAMES) -> Iterator[Sample]:
        for index in indices:
            for name in names:
                yield self.write(name, modality, index, folder)
