"""Depth maps: a 16-bit PNG (millimetres), a float array or TIFF (metres) or an 8-bit disparity picture ->
the normalised disparity ImageBind's depth trunk takes, float32 [1, 224, 224].

ImageBind (Girdhar et al. 2023, §3.2) encodes depth "as one-channel images" and follows Omnivore
(Girdhar et al. 2022) "to convert depth into disparity maps for scale invariance"; its trunk was bound on
SUN RGB-D. The ImageBind repository ships no depth loader; the steps and constants below are Omnivore's,
which the ImageBind authors pointed to (facebookresearch/ImageBind#69, #134):

1. depth in metres: 16-bit pictures hold ``value / units_per_metre`` (`UNITS_PER_METRE` = 1000: millimetres,
   as Kinect, NYU Depth v2 and most RGB-D tools store them; pass 5000 for TUM RGB-D, 8000 for SUN RGB-D's
   PNGs, which hold the millimetres shifted left by 3 bits); float arrays and float TIFFs are metres;
2. ``depth.clip(MIN_DEPTH=0.01, MAX_DEPTH=50)`` metres, ``disparity = BASELINE * FOCAL_LENGTH / depth``
   (``convert_depth_to_disparity`` of facebookresearch/omnivore#12, by an author of both papers), with the
   Kinect v1 of NYU Depth v2 / SUN RGB-D as the default camera: `FOCAL_LENGTH` 518.857901 px (the ``fx`` of
   those datasets' ``intrinsics.txt``) and `BASELINE` 0.075 m (omnivore#12's value for Kinect v1 and v2);
3. Omnivore's ``DepthNorm(max_depth=75, clamp_max_before_scale=True)``: clamp the disparity to
   [`MIN_DISPARITY` 0.01 (its ``min_depth`` default), `MAX_DISPARITY` 75] and divide by 75;
4. ``Resize(224)`` (bilinear, torchvision's default for tensors) and ``CenterCrop(224)``;
5. ``Normalize(mean=0.0418, std=0.0295)``: the depth channel's statistics on SUN RGB-D in Omnivore's RGB-D
   transform (``omnivore/predict.py``, ``inference_tutorial.ipynb``: `DISPARITY_MEAN`, `DISPARITY_STD`).

Where we differ, and why: a depth of 0 is a Kinect hole (no reading), not 1 cm; step 2 would make every
hole the nearest thing in view (disparity 3891, clamped to 75), so holes get disparity 0 instead (then
DepthNorm's floor, 0.01): as far as the scale goes. The maps the trunk was bound on were hole-filled.

8-bit pictures are read as *relative disparity* (brighter = nearer), the output of monocular estimators
(MiDaS, DPT, Depth Anything) saved as greyscale: their scale and shift are unknown, so after steps 4 each
map is standardised to zero mean and unit variance, the statistics step 5 gives the data the trunk was
trained on (our choice; there is no reference for such maps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from .detect import Format
from .errors import InvalidValuesError
from .limits import MediaLimits
from .maps import read_map, resize_crop
from .source import Source

UNITS_PER_METRE = 1000.0
"""16-bit depth pictures: values per metre (millimetres)."""
FOCAL_LENGTH = 518.857901
"""Pixels: fx of the Kinect v1 in NYU Depth v2 and SUN RGB-D (their intrinsics.txt)."""
BASELINE = 0.075
"""Metres: Kinect v1/v2 (facebookresearch/omnivore#12; 0.095 for RealSense and Xtion)."""
MIN_DEPTH, MAX_DEPTH = 0.01, 50.0
"""Metres: the clip before depth -> disparity (omnivore#12)."""
MIN_DISPARITY, MAX_DISPARITY = 0.01, 75.0
"""Omnivore's DepthNorm(max_depth=75, clamp_max_before_scale=True), min_depth default 0.01."""
DISPARITY_MEAN, DISPARITY_STD = 0.0418, 0.0295
"""Omnivore's Normalize of the depth channel (SUN RGB-D), after DepthNorm."""
NPZ_NAMES = ("depth", "depth_m", "z")
"""The arrays of an .npz taken as the depth map, in this order."""


def load_depth(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False,
               units_per_metre: float = UNITS_PER_METRE, focal_length: float = FOCAL_LENGTH,
               baseline: float = BASELINE) -> tuple[torch.Tensor, dict]:
    """A depth map -> float32 [1, 224, 224] normalised disparity, and metadata (size, encoding, the depth
    range in metres). `exact_upstream` changes nothing: upstream has no depth loader."""
    for key, value in (("units_per_metre", units_per_metre), ("focal_length", focal_length), ("baseline", baseline)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    m = read_map(source, fmt, limits, "depth map", names=NPZ_NAMES)
    meta = dict(m.meta, encoding=m.encoding)
    if m.encoding == "8-bit":
        relative = resize_crop(m.values.astype(np.float32) / 255.0, Image.BILINEAR)
        std = relative.std()
        meta["read_as"] = "relative disparity (brighter = nearer), standardised"
        return (relative - relative.mean()) / (std if std > 0 else 1.0), meta
    depth = m.values.astype(np.float64) / (units_per_metre if m.encoding == "16-bit" else 1.0)
    if (depth < 0).any():
        raise InvalidValuesError(source.name, f"{int((depth < 0).sum())} negative depths (down to {depth.min():.3g} m)")
    holes = depth == 0
    if holes.all():
        raise InvalidValuesError(source.name, "every pixel is 0 (no depth reading anywhere)")
    valid = depth[~holes]
    meta.update(read_as=f"depth in metres ({'value / ' + format(units_per_metre, 'g') if m.encoding == '16-bit' else 'float'})",
                depth_range_m=[float(valid.min()), float(valid.max())], holes=int(holes.sum()))
    return normalised_disparity(depth, holes, focal_length, baseline), meta


def normalised_disparity(depth: np.ndarray, holes: np.ndarray, focal_length: float = FOCAL_LENGTH,
                         baseline: float = BASELINE) -> torch.Tensor:
    """Depth in metres (H, W) -> Omnivore's normalised disparity [1, 224, 224] (steps 2-5 of the module doc)."""
    disparity = baseline * focal_length / depth.clip(MIN_DEPTH, MAX_DEPTH)
    disparity[holes] = 0.0
    disparity = disparity.clip(MIN_DISPARITY, MAX_DISPARITY) / MAX_DISPARITY  # DepthNorm
    x = resize_crop(disparity, Image.BILINEAR)
    return (x - DISPARITY_MEAN) / DISPARITY_STD
