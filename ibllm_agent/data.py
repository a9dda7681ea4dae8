"""The upstream ImageBind-LLM loaders, by their upstream names (``import ibllm_agent.data as data``).

Same arguments, same shapes, same numbers as ``imagebind_LLM/ImageBind/data.py``:
vision [B,3,224,224], audio [B,3,1,128,204], video [B,15,3,2,224,224], point clouds [B,N,3],
text [B,77]. Each returns None when given None, as upstream does.

Where `ibllm_agent.media.load_media` deliberately improves on upstream, these functions do not:
EXIF orientation is ignored, and point clouds come back exactly as stored (no resampling, no
centring); stacking then needs clouds of one size, as upstream. Inputs still go through content
detection and `MediaLimits`, and failures raise `MediaError` subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .media import load_media, load_text
from .media.audio import FBANK_MEAN, FBANK_STD, NUM_MEL_BINS, SAMPLE_RATE, TARGET_LENGTH
from .media.errors import CorruptMediaError

__all__ = [
    "load_and_transform_vision_data",
    "load_and_transform_text",
    "load_and_transform_audio_data",
    "load_and_transform_video_data",
    "load_and_transform_point_cloud_data",
]


def load_and_transform_vision_data(image_paths: Sequence | None, device) -> torch.Tensor | None:
    """Images -> float32 [B, 3, 224, 224] on `device`."""
    if image_paths is None:
        return None
    return _stack([load_media(p, "image", exact_upstream=True).tensor for p in image_paths]).to(device)


def load_and_transform_text(text: Sequence[str] | None, device) -> torch.Tensor | None:
    """Strings -> CLIP BPE token ids int64 [B, 77] on `device`."""
    if text is None:
        return None
    return _stack([load_text(t).tensor for t in text]).to(device)


def load_and_transform_audio_data(audio_paths: Sequence | None, device, num_mel_bins: int = NUM_MEL_BINS,
                                  target_length: int = TARGET_LENGTH, sample_rate: int = SAMPLE_RATE,
                                  clip_duration: int = 2, clips_per_video: int = 3, mean: float = FBANK_MEAN,
                                  std: float = FBANK_STD) -> torch.Tensor | None:
    """Audio files -> float32 [B, clips_per_video, 1, num_mel_bins, target_length] on `device`."""
    if audio_paths is None:
        return None
    options = {"sample_rate": sample_rate, "num_clips": clips_per_video, "clip_seconds": clip_duration,
               "num_mel_bins": num_mel_bins, "target_length": target_length, "mean": mean, "std": std}
    return _stack([load_media(p, "audio", exact_upstream=True, **options).tensor for p in audio_paths]).to(device)


def load_and_transform_video_data(video_paths: Sequence | None, device, clip_duration: int = 2,
                                  clips_per_video: int = 5, sample_rate: int = 16000) -> torch.Tensor | None:
    """Videos -> float32 [B, clips_per_video * 3, 3, clip_duration, 224, 224] on `device`.
    `sample_rate` is accepted for compatibility; upstream does not decode the audio here either."""
    if video_paths is None:
        return None
    options = {"num_clips": clips_per_video, "clip_seconds": clip_duration}
    return _stack([load_media(p, "video", exact_upstream=True, **options).tensor for p in video_paths]).to(device)


def load_and_transform_point_cloud_data(point_paths: Sequence | None, device) -> torch.Tensor | None:
    """Point clouds -> [B, N, 3] on `device`, as stored (the file's float dtype is kept, as upstream)."""
    if point_paths is None:
        return None
    return _stack([load_media(p, "point", exact_upstream=True).tensor for p in point_paths]).to(device)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    if len({tuple(t.shape) for t in tensors}) > 1:
        shapes = sorted({tuple(t.shape) for t in tensors})
        raise CorruptMediaError("<batch>", f"inputs of different shapes cannot be stacked: {shapes}")
    return torch.stack(tensors)
