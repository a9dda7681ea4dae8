"""Small real media files for the LangChain-layer unit tests, written with real encoders into a folder
(the toy world's writers: WAV, OpenCV MP4, PLY, a 16-bit depth PNG by OpenCV, a radiometric 16-bit TIFF,
an IMU CSV in Ego4D's layout).

(Imported by tests/unit/test_{embeddings,tools,graphs}.py and tests/integration/test_langchain_standard.py;
pytest puts tests/ on sys.path because tests/conftest.py lives there.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ibllm_agent.toy import write_depth, write_imu, write_mp4, write_ply, write_thermal, write_wav


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


def depth_scene(h: int = 60, w: int = 80) -> np.ndarray:
    """Metres: a wall receding upwards (3-5 m) with a box at 1.5 m in front of it."""
    depth = np.linspace(5.0, 3.0, h)[:, None].repeat(w, axis=1)
    depth[20:45, 25:55] = 1.5
    return depth


def heat_scene(h: int = 60, w: int = 80) -> np.ndarray:
    """Kelvin: a 20 °C room with a 36 °C disc (a face) in it."""
    yy, xx = np.mgrid[:h, :w]
    return np.where((yy - 30) ** 2 + (xx - 40) ** 2 < 15 ** 2, 309.15, 293.15)


def imu_trace(seconds: float = 6.0, rate: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps s, readings [T, 6]): a sensor at rest (gravity on z) swinging about x at 1 Hz."""
    t = np.arange(int(seconds * rate)) / rate
    readings = np.zeros((len(t), 6))
    readings[:, 1] = 9.80665 * np.sin(0.5 * np.sin(2 * np.pi * t))
    readings[:, 2] = 9.80665 * np.cos(0.5 * np.sin(2 * np.pi * t))
    readings[:, 3] = 0.5 * 2 * np.pi * np.cos(2 * np.pi * t)
    return t, readings


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
        "depth": write_depth(folder / "room_depth.png", depth_scene(), encoder="opencv"),
        "thermal": write_thermal(folder / "face_thermal.tif", heat_scene()),
        "imu": write_imu(folder / "swing.csv", *imu_trace()),
    }
