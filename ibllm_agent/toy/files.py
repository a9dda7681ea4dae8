"""Writing toy samples as files with real encoders (WAV, MP3 through the ffmpeg of imageio-ffmpeg, MP4
through OpenCV, ASCII and binary PLY, 16-bit PNG and TIFF through Pillow and OpenCV, JPEG, CSV, .npy), so
that training and evaluation read them back through `ibllm_agent.media` like users' files. Pictures are
saved as PNG by PIL itself.
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


def write_depth(path: Path, depth_m: np.ndarray, *, encoder: str = "pillow") -> Path:
    """A depth map in metres as a 16-bit PNG of millimetres (Kinect / NYU's convention), written by Pillow
    or OpenCV, or, for a .npy path, as float32 metres."""
    if path.suffix == ".npy":
        np.save(path, depth_m.astype(np.float32))
        return path
    mm = np.round(np.asarray(depth_m, dtype=np.float64) * 1000).clip(0, 65535).astype(np.uint16)
    return _write_16bit(path, mm, encoder)


THERMAL_COUNTS_PER_KELVIN = 10
"""Radiometric frames store kelvin × 10 (the 0.1 K resolution of FLIR's TLinear output)."""


def write_thermal(path: Path, kelvin: np.ndarray, *, encoder: str = "pillow") -> Path:
    """A thermal frame: radiometric 16-bit PNG or TIFF (kelvin × 10), or, for a .jpg path, the 8-bit picture a
    camera's automatic gain makes of it (linear between the 1st and 99th percentile)."""
    k = np.asarray(kelvin, dtype=np.float64)
    if path.suffix in (".jpg", ".jpeg"):
        low, high = np.percentile(k, [1, 99])
        grey = ((k - low) / max(high - low, 1e-6)).clip(0, 1) * 255
        Image.fromarray(np.round(grey).astype(np.uint8), "L").save(path, quality=92)
        return path
    counts = np.round(k * THERMAL_COUNTS_PER_KELVIN).clip(0, 65535).astype(np.uint16)
    return _write_16bit(path, counts, encoder)


def _write_16bit(path: Path, values: np.ndarray, encoder: str) -> Path:
    if encoder == "opencv":
        import cv2

        if not cv2.imwrite(str(path), values):
            raise RuntimeError(f"OpenCV could not write {path}")
    else:
        Image.fromarray(values).save(path)  # mode I;16
    return path


EGO4D_COLUMNS = ("component_idx", "component_timestamp_ms", "canonical_timestamp_ms",
                 "gyro_x", "gyro_y", "gyro_z", "accl_x", "accl_y", "accl_z")
"""Ego4D's IMU CSV header (m/s², rad/s, milliseconds)."""


def write_imu(path: Path, times: np.ndarray, readings: np.ndarray, *, style: str = "ego4d",
              order: np.ndarray | None = None) -> Path:
    """IMU readings [T, 6] (accelerometer x, y, z in m/s², gyroscope x, y, z in rad/s) at `times` (s) as a CSV:
    Ego4D's layout, or a phone logger's ("app": seconds, g and °/s, its six columns in `order`); a .npy
    path gets the readings alone, [T, 6] float32."""
    if path.suffix == ".npy":
        np.save(path, readings.astype(np.float32))
        return path
    if style == "ego4d":
        acc, gyr = readings[:, :3], readings[:, 3:]
        ms = times * 1000
        rows = np.column_stack([np.zeros(len(times)), ms, ms, gyr, acc])
        header = ",".join(EGO4D_COLUMNS)
        formats = ["%d", "%.4f", "%.4f"] + ["%.6f"] * 6
    else:
        names = ["acc_x (g)", "acc_y (g)", "acc_z (g)", "gyro_x (deg/s)", "gyro_y (deg/s)", "gyro_z (deg/s)"]
        scaled = np.column_stack([readings[:, :3] / 9.80665, np.degrees(readings[:, 3:])])
        order = np.arange(6) if order is None else np.asarray(order)
        rows = np.column_stack([times, scaled[:, order]])
        header = ",".join(["time (s)"] + [names[i] for i in order])
        formats = ["%.6f"] + ["%.6f"] * 6
    np.savetxt(path, rows, fmt=formats, delimiter=",", header=header, comments="")
    return path
