"""Thermal images: 8-bit grey pictures (PNG, JPEG, as thermal cameras display them) and 16-bit or float
radiometric frames (TIFF, PNG, .npy, as FLIR tools export them) -> float32 [1, 224, 224] in [0, 1].

ImageBind (Girdhar et al. 2023, §3.2) encodes thermal images "as one-channel images" with a ViT; its
thermal trunk was bound on LLVIP, whose infrared frames are 8-bit pictures the camera's automatic gain
control has already mapped to grey levels. The ImageBind repository ships no thermal loader; we apply its
vision transform to the one channel, as facebookresearch/ImageBind#73 proposes:

* ``Resize(224, BICUBIC)`` and ``CenterCrop(224)`` (``load_and_transform_vision_data`` of ImageBind's
  ``data.py``; `RESAMPLE`), then ``ToTensor`` (8 bits / 255);
* no mean/std normalisation: the ImageBind#73 thread measured LLVIP zero-shot at 62.4 % without it and
  55.2 % with CLIP's, against the paper's 63.4 %.

A 16-bit or float frame has no gain control applied: we stretch it linearly between its 1st and 99th
percentile (`LOW_PERCENTILE`, `HIGH_PERCENTILE`; the linear automatic gain of thermal cameras, as in
microsoft/arcticseals#4 for 16-bit thermal PNGs) to [0, 1], then resize and crop in float.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .detect import Format
from .limits import MediaLimits
from .maps import read_map, resize_crop, resize_crop_8bit
from .source import Source

RESAMPLE = Image.BICUBIC
"""ImageBind's vision Resize interpolation."""
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
"""The linear gain of 16-bit and float frames: these percentiles map to 0 and 1."""
NPZ_NAMES = ("thermal", "temperature", "radiometric", "ir")
"""The arrays of an .npz taken as the thermal image, in this order."""


def load_thermal(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False
                 ) -> tuple[torch.Tensor, dict]:
    """A thermal image -> float32 [1, 224, 224] in [0, 1] and metadata (size, encoding, the raw range
    stretched). `exact_upstream` changes nothing: upstream has no thermal loader."""
    m = read_map(source, fmt, limits, "thermal image", names=NPZ_NAMES)
    meta = dict(m.meta, encoding=m.encoding)
    if m.encoding == "8-bit":
        return resize_crop_8bit(m.values, RESAMPLE), meta
    stretched, low, high = automatic_gain(m.values)
    meta["stretched_range"] = [low, high]
    return resize_crop(stretched, RESAMPLE).clamp_(0.0, 1.0), meta


def automatic_gain(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A radiometric frame -> float32 in [0, 1]: linear between its 1st and 99th percentile (a flat frame is 0)."""
    v = values.astype(np.float64)
    low, high = (float(x) for x in np.percentile(v, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if high <= low:
        return np.zeros(v.shape, np.float32), low, high
    return ((v - low) / (high - low)).clip(0.0, 1.0).astype(np.float32), low, high
