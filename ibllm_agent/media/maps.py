"""One-channel maps (depth maps, thermal images): decode a picture or an array into a 2-D array, and
resize + centre-crop a float map the way torchvision's ``Resize(224)`` + ``CenterCrop(224)`` do.

Pictures are read with Pillow, whatever wrote them (OpenCV and Pillow write the same 16-bit PNG and TIFF
files): 8-bit grey ("L"), 16-bit grey ("I;16", either byte order), 32-bit float ("F", as radiometric and
depth TIFFs hold them). A colour picture is accepted only when its channels are equal (grey saved as
RGB, within `GREY_TOLERANCE`); anything else is refused with `WrongChannelsError`: a false-colour rendering cannot be turned back
into the values it shows. Arrays come from ``.npy`` / ``.npz`` (no pickles) as (H, W), (1, H, W) or
(H, W, 1).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .detect import Format
from .errors import CorruptMediaError, InvalidValuesError, UnsafeMediaError, WrongChannelsError
from .image import IMAGE_SIZE, check_image_size, pillow_errors, resized_size
from .limits import MediaLimits
from .source import Source

GREY_TOLERANCE = 3
"""Grey levels by which the channels of a colour-coded grey picture may differ (JPEG's chroma rounding)."""
ARRAY_NAMES = ("map", "data")
"""Arrays an .npz is searched for after the loader's own names (a single array is taken whatever its name)."""


@dataclass(frozen=True)
class Map:
    """A decoded one-channel map and how it was stored."""

    values: np.ndarray
    """(H, W): uint8, uint16 or float32 (float64 arrays are kept as float64)."""
    encoding: str
    """"8-bit", "16-bit" or "float"."""
    meta: dict


def read_map(source: Source, fmt: Format, limits: MediaLimits, what: str, names: tuple[str, ...] = ()) -> Map:
    """The one channel of `source` (a picture or an array); `what` names the modality in errors, `names` the
    arrays of an .npz to take first."""
    if fmt.kind in ("npy", "npz"):
        arr = read_array(source, fmt, names + ARRAY_NAMES, what)
        meta = {"format": fmt.kind, "dtype": str(arr.dtype)}
    else:
        arr, meta = _read_picture(source, what, limits)
    arr = _one_channel(arr, source.name, what)
    h, w = arr.shape
    check_image_size(source.name, w, h, limits)
    meta["size_wh"] = [w, h]
    if arr.dtype == np.uint8:
        return Map(arr, "8-bit", meta)
    if arr.dtype == np.uint16:
        return Map(arr, "16-bit", meta)
    if arr.dtype.kind in "iu":  # 32-bit integer pictures ("I") and integer arrays
        if arr.min() < 0 or arr.max() > 0xFFFF:
            raise InvalidValuesError(source.name, f"{arr.dtype} values from {arr.min()} to {arr.max()} do not fit "
                                     f"16 bits; save the {what} as 16-bit or as float")
        return Map(arr.astype(np.uint16), "16-bit", meta)
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InvalidValuesError(source.name, f"{bad} of {arr.size} values of the {what} are NaN or infinite")
        return Map(arr if arr.dtype == np.float64 else arr.astype(np.float32), "float", meta)
    if arr.dtype == np.bool_:
        return Map(arr.astype(np.uint8) * 255, "8-bit", meta)
    raise WrongChannelsError(source.name, f"values of type {arr.dtype} are not a {what}")


def _read_picture(source: Source, what: str, limits: MediaLimits) -> tuple[np.ndarray, dict]:
    with pillow_errors(source.name), source.open() as fp, Image.open(fp) as img:
        w, h = img.size
        check_image_size(source.name, w, h, limits)  # from the header, before any pixel is decoded
        mode, pil_format = img.mode, img.format
        img.seek(0)
        return _picture_array(img, source.name, what), {"mode": mode, "format": pil_format}


def _picture_array(img: Image.Image, name: str, what: str) -> np.ndarray:
    mode = img.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(img)
    if mode in ("LA", "La", "PA"):
        return np.asarray(img.convert("LA"))[..., 0]
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "P"):
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        if np.abs(rgb[..., :2] - rgb[..., 1:]).max() <= GREY_TOLERANCE:
            return np.round(rgb.mean(axis=-1)).astype(np.uint8)
        raise WrongChannelsError(name, f"a colour picture ({mode}, channels that differ); a {what} has one channel "
                                 "(a false-colour rendering cannot be turned back into the values it shows)")
    raise WrongChannelsError(name, f"a {mode} picture; a {what} has one channel (grey, 8 or 16 bits, or float)")


def read_array(source: Source, fmt: Format, names: tuple[str, ...], what: str) -> np.ndarray:
    """The array of an .npy, or of an .npz the first of `names` (or its only array); no pickles."""
    try:
        with source.open() as f:
            if fmt.kind == "npy":
                return np.load(f, allow_pickle=False)
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise UnsafeMediaError(source.name, "refusing to unpickle an object array (allow_pickle=False)") from None
        raise CorruptMediaError(source.name, f"cannot read the {fmt.kind} array: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptMediaError(source.name, f"cannot read the {fmt.kind} array: {e}") from None
    for key in names:
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise WrongChannelsError(source.name, f"an .npz without a {what} array (arrays: {sorted(arrays)[:10]}); name "
                             f"it one of {', '.join(names)}")


def _one_channel(arr: np.ndarray, name: str, what: str) -> np.ndarray:
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise WrongChannelsError(name, f"an array of shape {list(arr.shape)}; a {what} is one channel: (H, W), "
                                 "(1, H, W) or (H, W, 1)")
    if arr.dtype.kind not in "biuf":
        raise WrongChannelsError(name, f"values of type {arr.dtype} are not a {what}")
    return arr


def resize_crop(values: np.ndarray, resample: int) -> torch.Tensor:
    """A float map (H, W) -> float32 [1, 224, 224]: shorter side to 224 with Pillow's `resample` filter on a
    32-bit float image (antialiased when shrinking, as torchvision's Resize), then the centre crop with
    torchvision's offsets (round half to even)."""
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    new_w, new_h = resized_size(*img.size)
    img = img.resize((new_w, new_h), resample)
    left, top = int(round((new_w - IMAGE_SIZE) / 2.0)), int(round((new_h - IMAGE_SIZE) / 2.0))
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return torch.from_numpy(np.array(img, dtype=np.float32, copy=True))[None]  # (1, 224, 224)


def resize_crop_8bit(values: np.ndarray, resample: int) -> torch.Tensor:
    """An 8-bit map (H, W) -> float32 [1, 224, 224] in [0, 1]: resized and cropped as an 8-bit Pillow image,
    exactly ``Resize(224, interpolation)``, ``CenterCrop(224)``, ``ToTensor()`` on a mode-"L" picture."""
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L")
    new_w, new_h = resized_size(*img.size)
    img = img.resize((new_w, new_h), resample)
    left, top = int(round((new_w - IMAGE_SIZE) / 2.0)), int(round((new_h - IMAGE_SIZE) / 2.0))
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).to(torch.float32).div(255)[None]
