"""Small real media files for the LangChain-layer unit tests, written with real encoders into a folder
(the toy world's writers: WAV, OpenCV MP4, PLY).

(Imported by tests/unit/test_{embeddings,tools,graphs}.py and tests/integration/test_langchain_standard.py;
pytest puts tests/ on sys.path because tests/conftest.py lives there.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ibllm_agent.toy import write_mp4, write_ply, write_wav


def write_image(path: Path, color=(200, 40, 40), shape: str = "circle") -> Path:
    img = Image.new("RGB", (96, 80), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    box = (20, 15, 76, 65)
    draw.ellipse(box, fill=color) if shape == "circle" else draw.rectangle(box, fill=color)
    img.save(path)
    return path


def moving_square(frames: int = 16) -> list[Image.Image]:
    out = []
    for i in range(frames):
        frame = np.full((48, 64, 3), 30, np.uint8)
        frame[10:30, (i * 3) % 44:(i * 3) % 44 + 20] = (255, 200, 0)
        out.append(Image.fromarray(frame))
    return out


def make_media(folder: Path) -> dict[str, Path]:
    """One file per modality (plus a second image) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)
    cloud = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    return {
        "image": write_image(folder / "red_circle.png"),
        "image2": write_image(folder / "blue_square.png", (30, 60, 220), "square"),
        "audio": write_wav(folder / "tone.wav", tone),
        "video": write_mp4(folder / "clip.mp4", moving_square(), fps=8),
        "point": write_ply(folder / "cloud.ply", cloud, binary=False),
    }
