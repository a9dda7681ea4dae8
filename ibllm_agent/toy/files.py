"""Writing toy samples as files with real encoders (WAV, MP3 through the ffmpeg of imageio-ffmpeg, MP4
through OpenCV, ASCII and binary PLY), so that training and evaluation read them back through
`ibllm_agent.media` like users' files. Pictures are saved as PNG by PIL itself.
"""

from __future__ import annotations

import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from ibllm_agent.toy.pictures import VIDEO_FPS
from ibllm_agent.toy.sounds import SAMPLE_RATE


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def write_wav(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(_pcm16(x))
    return path


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_mp3(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    subprocess.run([_ffmpeg(), "-y", "-loglevel", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
                    "-c:a", "libmp3lame", "-b:a", "64k", str(path)], input=_pcm16(x), check=True)
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
