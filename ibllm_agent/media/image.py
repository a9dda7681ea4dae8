"""Images: decode with Pillow, then the upstream ImageBind vision transform.

Upstream (ImageBind `load_and_transform_vision_data`): ``PIL.Image.open(f).convert("RGB")``,
``Resize(224, BICUBIC)`` on the PIL image (Pillow antialiases when it shrinks), ``CenterCrop(224)``,
``ToTensor``, ``Normalize(CLIP mean, std)``. Doing the resize with Pillow on the 8-bit image is
what makes this bit-exact; a torch bicubic resize is 0.015 off.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .detect import Format
from .errors import CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError, UnsupportedFormatError
from .limits import MediaLimits
from .source import Source

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False
               ) -> tuple[torch.Tensor, dict]:
    """Decode `source` and return the upstream-transformed tensor [3,224,224] and metadata; EXIF orientation
    is applied unless `exact_upstream` (upstream ignores it)."""
    if source.head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"):
        raise UnsupportedFormatError(source.name, "HEIF/HEIC images are not supported; convert to JPEG or PNG")
    img, meta = open_rgb(source, limits, exif_transpose=not exact_upstream)
    return transform_image(img), meta


def open_rgb(source: Source, limits: MediaLimits, *, exif_transpose: bool = True) -> tuple[Image.Image, dict]:
    """The first frame of the image as 8-bit RGB, with its EXIF orientation applied if asked.

    Upstream ignores EXIF orientation; for images without an orientation tag the two agree.
    An alpha channel is dropped without compositing, as upstream does.
    """
    with pillow_errors(source.name), source.open() as fp, Image.open(fp) as img:
        w, h = img.size
        pil_format = img.format
        check_image_size(source.name, w, h, limits)
        img.seek(0)
        img.load()
        orientation = img.getexif().get(0x0112, 1) if exif_transpose else 1
        if exif_transpose and orientation != 1:
            img = ImageOps.exif_transpose(img)
        mode = img.mode
        rgb = _to_rgb(img)
    meta = {"size_wh": [w, h], "mode": mode, "exif_orientation": orientation, "format": pil_format}
    return rgb, meta


@contextlib.contextmanager
def pillow_errors(name: str) -> Iterator[None]:
    """Decoding with Pillow: its failures become typed errors naming `name` (ours pass through), and its
    decompression-bomb warning is silenced: our own pixel limit (`check_image_size`) is checked on the
    header's size, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaTooLargeError(name, f"image too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise CorruptMediaError(name, "Pillow cannot read this image (damaged or truncated)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CorruptMediaError(name, f"cannot decode the image: {e}") from None


def check_image_size(name: str, w: int, h: int, limits: MediaLimits) -> None:
    if w * h > limits.max_image_pixels:
        raise MediaTooLargeError(
            name, f"{w}×{h} = {w * h} pixels, over the limit of {limits.max_image_pixels} (MediaLimits.max_image_pixels)"
        )
    if min(w, h) < limits.min_image_side:
        raise EmptyMediaError(
            name, f"the image is {w}×{h} pixels; at least {limits.min_image_side} per side are needed "
            "(MediaLimits.min_image_side)"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit and float greyscale are scaled to 8 bits first (Pillow would clip them)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a / (65535.0 if img.mode.startswith("I;16") else a.max() or 1.0) * 255.0,
                                      0, 255).round().astype(np.uint8))
    elif img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = a.min(), a.max()
        img = Image.fromarray(((a - lo) / ((hi - lo) or 1.0) * 255.0).round().astype(np.uint8))
    return img.convert("RGB")


def resized_size(w: int, h: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision Resize(int) on PIL: short side to `size`, long side int(size * long / short)
    (multiplication before division, truncated)."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def transform_image(img: Image.Image) -> torch.Tensor:
    """Upstream vision transform of an RGB PIL image -> float32 [3,224,224]."""
    new_w, new_h = resized_size(*img.size)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    # CenterCrop: Python's round-half-to-even on the offset (an excess of 75 gives 38).
    left = int(round((new_w - IMAGE_SIZE) / 2.0))
    top = int(round((new_h - IMAGE_SIZE) / 2.0))
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))  # (H, W, 3)
    x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # (3, H, W)
    return normalize_channels(x)


def normalize_channels(x: torch.Tensor) -> torch.Tensor:
    """(x - CLIP mean) / CLIP std over dim 0, in x's dtype, as torchvision's Normalize."""
    shape = (3,) + (1,) * (x.dim() - 1)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(shape)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(shape)
    return x.sub(mean).div(std)
