"""Small real media files for the LangChain-layer tests, written with real encoders into a folder.

(Imported by tests/unit/test_{embeddings,tools,chat_models}.py; pytest puts tests/ on sys.path
because tests/conftest.py lives there.)
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_image(path: Path, color=(200, 40, 40), shape: str = "circle") -> Path:
    img = Image.new("RGB", (96, 80), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    box = (20, 15, 76, 65)
    draw.ellipse(box, fill=color) if shape == "circle" else draw.rectangle(box, fill=color)
    img.save(path)
    return path


def write_wav(path: Path, freq: float = 440.0, seconds: float = 1.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def write_mp4(path: Path, frames: int = 16, fps: int = 8) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(frames):
        frame = np.full((48, 64, 3), 30, np.uint8)
        frame[10:30, (i * 3) % 44:(i * 3) % 44 + 20] = (0, 200, 255)
        writer.write(frame)
    writer.release()
    return path


def write_ply(path: Path, n: int = 500, seed: int = 0) -> Path:
    pts = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    header = f"ply\nformat ascii 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    path.write_text(header + "\n".join(" ".join(f"{v:.5f}" for v in p) for p in pts) + "\n")
    return path


def make_media(folder: Path) -> dict[str, Path]:
    """One file per modality (plus a second image) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "image": write_image(folder / "red_circle.png"),
        "image2": write_image(folder / "blue_square.png", (30, 60, 220), "square"),
        "audio": write_wav(folder / "tone.wav"),
        "video": write_mp4(folder / "clip.mp4"),
        "point": write_ply(folder / "cloud.ply"),
    }
