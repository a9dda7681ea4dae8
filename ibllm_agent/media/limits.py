"""Limits that every loader checks before it spends memory or time on an input."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    """Upper (and a few lower) bounds for one input. The defaults suit an interactive app on a
    laptop; raise them for batch jobs on known data."""

    max_file_bytes: int = 1 << 30
    """Size of the encoded input (1 GiB)."""
    max_image_pixels: int = 64_000_000
    """Width × height of a decoded image or video frame; guards against decompression bombs
    (a 20000×20000 PNG can be a few kilobytes)."""
    min_image_side: int = 4
    """Images smaller than this on either side carry no content (a 1×1 tracking pixel)."""
    max_audio_seconds: float = 600.0
    """Duration of an audio input, or of the audio track of a video. The whole track is decoded
    into memory (10 min of 48 kHz stereo peaks at about 0.4 GB)."""
    max_video_seconds: float = 1800.0
    """Duration of a video (only the 10 frames used are kept, but every frame is decoded)."""
    max_video_frames: int = 100_000
    """Frames decoded from one video (every frame is decoded to find the timestamps)."""
    max_points: int = 20_000_000
    """Points in one cloud before resampling."""
    max_imu_samples: int = 10_000_000
    """Rows of one IMU recording (a day at 100 Hz) before resampling."""
    max_imu_seconds: float = 86_400.0
    """Duration of one IMU recording (only a 5 s window is used, but the whole file is parsed)."""
    max_text_chars: int = 100_000
    """Characters of one text input (the tokenizer keeps 77 tokens anyway)."""


DEFAULT_LIMITS = MediaLimits()
