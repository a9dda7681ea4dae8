"""Video: decode with OpenCV, pick frames by container timestamp, then ImageBind's video transform.

Upstream (ImageBind `load_and_transform_video_data` on pytorchvideo + PyAV): 5 clips of 2 s spread
evenly over the duration; a clip holds the frames with start <= t < end (t from the container's
timestamps); of its T frames, positions ``linspace(0, T-1, 2).long()`` are kept, i.e. the first and
the last frame of the window; /255; short side to 224 with torch bilinear interpolation
(align_corners False, no antialias, long side ``floor(long / short * 224)``); CLIP mean/std;
3 spatial crops (left/centre/right, or top/centre/bottom for portrait) with *ceil* centre offsets.

We never trust the frame count in the header: every frame is grabbed once to read its timestamp
(``CAP_PROP_POS_MSEC``, relative to the stream start), and the duration is the last timestamp plus
one frame interval. OpenCV's decoded RGB equals PyAV's on the reference files. Unlike PyAV, OpenCV
applies a rotation stored in the container (phone videos come out upright).
"""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import median

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .clips import clip_spans
from .detect import Format
from .errors import CorruptMediaError, EmptyMediaError, MediaTooLargeError, MediaTooLongError
from .image import normalize_channels
from .limits import MediaLimits
from .source import Source

CLIP_SECONDS = 2
NUM_CLIPS = 5
FRAMES_PER_CLIP = CLIP_SECONDS  # upstream: UniformTemporalSubsample(num_samples=clip_duration)
CROP_SIZE = 224


def load_video(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False,
               num_clips: int = NUM_CLIPS, clip_seconds: int = CLIP_SECONDS) -> tuple[torch.Tensor, dict]:
    """Decode and transform -> float32 [num_clips * 3, 3, 2, 224, 224] and metadata (always as upstream,
    so `exact_upstream` changes nothing).

    Upstream keeps `clip_seconds` frames per clip (its UniformTemporalSubsample gets clip_duration);
    we follow it, so the default 2-s clips give 2 frames.
    """
    with source.as_path(suffix="." + fmt.kind) as path:
        frames, meta = read_clip_frames(str(path), source.name, limits, num_clips=num_clips,
                                        clip_seconds=clip_seconds, frames_per_clip=clip_seconds)
    return transform_clips(frames), meta


def read_clip_frames(path: str, name: str, limits: MediaLimits, *, num_clips: int = NUM_CLIPS,
                     clip_seconds: int = CLIP_SECONDS, frames_per_clip: int = FRAMES_PER_CLIP) -> tuple[torch.Tensor, dict]:
    """The RGB frames upstream would keep: uint8 [num_clips, frames_per_clip, H, W, 3], and metadata."""
    cap = _open(path, name, limits)
    try:
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        header_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        # Guess the frames we will need from the header, and keep them while grabbing; the real
        # selection comes from the timestamps, and any frame the guess missed is read in a second pass.
        guessed = set()
        if fps > 0 and 0 < header_count <= limits.max_video_frames:
            guess_times = [_us(1000.0 * i / fps) for i in range(header_count)]
            guess_dur = Fraction(header_count, 1) / Fraction(fps).limit_denominator(100000)
            guessed = set(_select(guess_times, guess_dur, num_clips, clip_seconds, frames_per_clip)[0])
        times, kept = [], {}
        while cap.grab():
            if len(times) >= limits.max_video_frames:
                raise MediaTooLongError(name, f"more than {limits.max_video_frames} frames (MediaLimits.max_video_frames)")
            times.append(_us(cap.get(cv2.CAP_PROP_POS_MSEC)))
            if times[-1] > limits.max_video_seconds:  # stop early rather than decode hours of video
                raise MediaTooLongError(name, f"longer than {limits.max_video_seconds} s (MediaLimits.max_video_seconds)")
            if len(times) - 1 in guessed:
                kept[len(times) - 1] = _retrieve(cap, name)
    finally:
        cap.release()
    if not times:
        raise EmptyMediaError(name, "the video has no decodable frames")
    deltas = [b - a for a, b in zip(times, times[1:]) if b > a]
    interval = Fraction(median(deltas)) if deltas else (Fraction(1) / Fraction(fps).limit_denominator(100000)
                                                       if fps > 0 else Fraction(0))
    duration = max(times) + interval
    if duration > limits.max_video_seconds:
        raise MediaTooLongError(name, f"{float(duration):.1f} s of video, over the limit of {limits.max_video_seconds} s "
                                "(MediaLimits.max_video_seconds)")
    picks, clips = _select(times, duration, num_clips, clip_seconds, frames_per_clip)
    missing = sorted(set(picks) - kept.keys())
    if missing:
        kept.update(_read_frames(path, name, limits, missing))
    frames = torch.from_numpy(np.stack([kept[i] for i in picks]))  # (clips * per_clip, H, W, 3)
    frames = frames.view(num_clips, frames_per_clip, *frames.shape[1:])
    meta = {"size_wh": [width, height], "fps": fps, "frames_in_header": header_count, "num_frames": len(times),
            "duration_s": float(duration), "clips": clips}
    return frames, meta


def _us(ms: float) -> Fraction:
    """A timestamp in seconds, snapped to whole microseconds so that 5000.000000001 ms is 5 s exactly."""
    return Fraction(round(ms * 1000), 1_000_000)


def _select(times: list[Fraction], duration: Fraction, num_clips: int, clip_seconds: int,
            per_clip: int) -> tuple[list[int], list[dict]]:
    """Frame indices (decode order) to keep, clip by clip, and a description of each clip."""
    order = sorted(range(len(times)), key=lambda i: times[i])  # presentation order
    picks, clips = [], []
    for start, end in clip_spans(duration, clip_seconds, num_clips):
        window = [i for i in order if start <= times[i] < end]
        if not window:  # a gap in the stream: fall back to the last frame shown before the window ends
            window = [max((i for i in order if times[i] < end), key=lambda i: times[i], default=order[0])]
        positions = torch.linspace(0, len(window) - 1, per_clip).clamp(0, len(window) - 1).long().tolist()
        chosen = [window[p] for p in positions]
        picks += chosen
        clips.append({"start_s": float(start), "end_s": float(end), "frames_in_clip": len(window),
                      "selected_frame_index": chosen, "selected_frame_time_s": [float(times[i]) for i in chosen]})
    return picks, clips


def _open(path: str, name: str, limits: MediaLimits) -> cv2.VideoCapture:
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a failed open is our error to report
    try:
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        raise CorruptMediaError(name, "OpenCV/ffmpeg cannot open this video (damaged or unsupported container)")
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if w * h > limits.max_image_pixels:
        cap.release()
        raise MediaTooLargeError(name, f"{w}×{h} frames, over the limit of {limits.max_image_pixels} pixels "
                                 "(MediaLimits.max_image_pixels)")
    return cap


def _retrieve(cap: cv2.VideoCapture, name: str) -> np.ndarray:
    ok, bgr = cap.retrieve()
    if not ok or bgr is None:
        raise CorruptMediaError(name, "a frame could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_frames(path: str, name: str, limits: MediaLimits, indices: list[int]) -> dict[int, np.ndarray]:
    """Second pass: grab sequentially (seeking is not frame-exact in every container) and keep `indices`."""
    cap = _open(path, name, limits)
    wanted, out, i = set(indices), {}, 0
    try:
        while wanted - out.keys() and cap.grab():
            if i in wanted:
                out[i] = _retrieve(cap, name)
            i += 1
    finally:
        cap.release()
    if wanted - out.keys():
        raise CorruptMediaError(name, "the video decoded differently on a second read")
    return out


def short_side_size(h: int, w: int, size: int = CROP_SIZE) -> tuple[int, int]:
    """pytorchvideo ShortSideScale: long side floor((long / short) * size), the division first."""
    if w < h:
        return int(math.floor((float(h) / w) * size)), size
    return size, int(math.floor((float(w) / h) * size))


def crop_offsets(h: int, w: int, size: int = CROP_SIZE) -> list[tuple[int, int]]:
    """(y, x) of the 3 spatial crops: top/centre/bottom if portrait, else left/centre/right.
    The centre uses ceil, unlike the image path's round-half-to-even."""
    y, x = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
    if h > w:
        return [(0, x), (y, x), (h - size, x)]
    return [(y, 0), (y, x), (y, w - size)]


def transform_clips(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [clips, T, H, W, 3] -> float32 [clips * 3, 3, T, 224, 224] (clip-major, crops 0, 1, 2)."""
    out = []
    for clip in frames:
        x = clip.permute(3, 0, 1, 2).to(torch.float32) / 255.0  # (3, T, H, W)
        new_h, new_w = short_side_size(x.shape[2], x.shape[3])
        # interpolate sees C as the batch and T as the channels, as upstream.
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        x = normalize_channels(x)
        out += [x[:, :, y : y + CROP_SIZE, xo : xo + CROP_SIZE] for y, xo in crop_offsets(new_h, new_w)]
    return torch.stack(out)
