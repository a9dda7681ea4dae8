"""Load a photo, a sound, a clip, a 3D scan, a depth map, a thermal image, an IMU recording or a text into
the tensor ImageBind expects.

    >>> from ibllm_agent.media import load_media
    >>> item = load_media("dog.jpg")            # a path, bytes or a binary file object
    >>> item.modality, item.tensor.shape        # ("image", torch.Size([3, 224, 224]))
    >>> item.batched().shape                    # torch.Size([1, 3, 224, 224])

The format is detected from the content; the modality follows from it unless you pass one
(``modality="audio"`` on an MP4 loads its audio track, ``modality="video"`` on a GIF its frames,
``modality="depth"`` or ``"thermal"`` reads a one-channel PNG, TIFF or array as that sense: content alone
keeps pictures pictures, see `detect`). Loader options pass through (``load_media("scan.png", "depth",
units_per_metre=5000)``).
Every failure is a `MediaError` subclass that names the input and the problem.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace

import torch

from ibllm_agent import modalities

from .detect import MIME_TO_MODALITY, Format, can_load_as, detect
from .errors import (
    CorruptMediaError,
    EmptyMediaError,
    InvalidValuesError,
    MediaError,
    MediaTooLargeError,
    MediaTooLongError,
    UnsafeMediaError,
    UnsupportedFormatError,
    WrongChannelsError,
    typed_errors,
)
from .limits import DEFAULT_LIMITS, MediaLimits
from .source import Source, SourceLike

__all__ = [
    "MIME_TO_MODALITY", "MediaInput", "MediaLimits", "Format", "load_media", "load_audio_track",
    "load_text", "detect_format", "MediaError", "UnsupportedFormatError", "CorruptMediaError", "EmptyMediaError",
    "MediaTooLargeError", "MediaTooLongError", "InvalidValuesError", "UnsafeMediaError", "WrongChannelsError",
]

@dataclass(frozen=True)
class MediaInput:
    """One loaded input, ready for ImageBind."""

    modality: str
    """A name of the modality registry (`ibllm_agent.modalities.NAMES`)."""
    tensor: torch.Tensor
    """Unbatched: image [3,224,224], video [15,3,2,224,224], audio [3,1,128,204], point [8192,3],
    depth [1,224,224], thermal [1,224,224], imu [6,2000], text [77] int64."""
    name: str
    """The file name, or the name given for bytes / file objects."""
    sha256: str
    """Of the source bytes (of the UTF-8 text for text given as a string)."""
    mime: str
    """MIME type of the detected format."""
    meta: dict = field(default_factory=dict, compare=False)
    """What the loader found: sizes, sample rates, clip boundaries, selected frames, ..."""

    def batched(self) -> torch.Tensor:
        """The tensor with a leading batch dimension of 1."""
        return self.tensor.unsqueeze(0)


def load_media(src: SourceLike, modality: str | None = None, *, limits: MediaLimits | None = None,
               name: str | None = None, exact_upstream: bool = False, **loader_options) -> MediaInput:
    """Load `src` (path, bytes or binary file object) as `modality`, or as what its content is.

    For ``modality="text"``, a `str` that is not an existing file is taken as the text itself.
    ``exact_upstream=True`` reproduces upstream's loaders where we deliberately differ: EXIF
    orientation is ignored, and point clouds come back as stored (no resampling or normalisation).
    `loader_options` go to the modality's loader (e.g. upstream's clip settings for audio and video).
    """
    limits = limits or DEFAULT_LIMITS
    modality = modalities.canonical(modality)
    if modality == "text" and isinstance(src, str) and not os.path.isfile(src):
        return load_text(src, limits=limits, name=name)
    source = Source(src, limits, name)
    fmt = detect(source.head, source.name, source.suffix)
    target = modality or fmt.modality
    with typed_errors(source.name, target):
        try:
            tensor, meta = _load(source, fmt, target, limits, exact_upstream, loader_options)
        except (CorruptMediaError, EmptyMediaError):
            # A video container without pictures (a browser's audio recording in WebM, an MP4 of
            # sound only) is what it sounds like: audio. Only when no modality was asked for.
            if modality is not None or fmt.modality != "video" or not _has_audio_only(source, fmt):
                raise
            target, fmt = "audio", replace(fmt, modality="audio", mime=fmt.mime.replace("video/", "audio/"))
            tensor, meta = _load(source, fmt, target, limits, exact_upstream, loader_options)
    return MediaInput(target, tensor, source.name, source.sha256, fmt.mime, meta)


def load_audio_track(src: SourceLike, *, limits: MediaLimits | None = None, name: str | None = None) -> MediaInput:
    """The audio of a video file (or of an audio file) as an audio input [3,1,128,204]."""
    return load_media(src, "audio", limits=limits, name=name)


def load_text(text: str, *, limits: MediaLimits | None = None, name: str | None = None) -> MediaInput:
    """A text input: CLIP BPE token ids [77]."""
    from .text import tokenize_text

    limits = limits or DEFAULT_LIMITS
    name = name or "<text>"
    tokens = tokenize_text(text, name, limits)
    return MediaInput("text", tokens, name, hashlib.sha256(text.encode("utf-8")).hexdigest(), "text/plain",
                      {"chars": len(text)})


def detect_format(src: SourceLike, *, limits: MediaLimits | None = None, name: str | None = None) -> Format:
    """The format of `src` from its content (reads only the first bytes of a path)."""
    source = Source(src, limits or DEFAULT_LIMITS, name)
    return detect(source.head, source.name, source.suffix)


def _has_audio_only(source: Source, fmt: Format) -> bool:
    from .audio import probe

    with source.as_path(suffix="." + fmt.kind) as path:
        try:
            streams = probe(str(path), fmt.demuxer, source.name)
        except MediaError:
            return False
    return bool(streams["audio"]) and not streams["video"]


def _load(source: Source, fmt: Format, target: str, limits: MediaLimits, exact_upstream: bool,
          options: dict) -> tuple[torch.Tensor, dict]:
    if not can_load_as(fmt, target):
        raise UnsupportedFormatError(source.name, f"asked for {target}, but the content is {fmt.kind} ({fmt.modality})")
    return modalities.get(target).load_function()(source, fmt, limits, exact_upstream=exact_upstream, **options)
