"""Image loading: formats, the upstream resize/crop arithmetic, EXIF orientation, odd modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, features

from ibllm_agent.media import load_media
from ibllm_agent.media.image import CLIP_MEAN, CLIP_STD, resized_size, transform_image


def _pattern(w: int, h: int) -> Image.Image:
    """An asymmetric test image: a red block in the top-left corner on a gradient."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1).astype(np.uint8)
    a[: h // 4, : w // 4] = (255, 0, 0)
    return Image.fromarray(a)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


@pytest.mark.parametrize("w,h,expected", [(374, 249, (336, 224)), (249, 374, (224, 336)), (224, 224, (224, 224)),
                                          (1000, 3, (74666, 224)), (300, 301, (224, 224))])
def test_resized_size_truncates_after_multiplying(w, h, expected):
    assert resized_size(w, h) == expected


def test_center_crop_rounds_half_to_even():
    # 299 wide -> resized 299x224 ... an excess of 75 gives offset 38 (37.5 -> 38), 73 gives 36.
    for width, offset in ((299, 38), (297, 36)):
        img = Image.fromarray(np.tile(np.arange(width, dtype=np.uint8)[None, :, None], (224, 1, 3)))
        x = transform_image(img)
        first_col = round(float(x[0, 0, 0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255)
        assert first_col == offset


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                    ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("AVIF", {"quality": 90})])
def test_formats_load_to_the_upstream_shape(fmt, kw):
    if fmt in ("WEBP", "AVIF") and not features.check(fmt.lower()):
        pytest.skip(f"this Pillow build has no {fmt} codec")
    img = _pattern(120, 90)
    item = load_media(_encode(img, fmt, **kw), name=f"x.{fmt.lower()}")
    assert item.modality == "image" and item.tensor.shape == (3, 224, 224) and item.tensor.dtype == torch.float32
    assert item.mime.startswith("image/")
    if fmt in ("PNG", "WEBP", "BMP", "TIFF"):  # lossless: equals the transform of the original pixels
        assert torch.equal(item.tensor, transform_image(img))


def test_alpha_and_palette_and_16_bit():
    rgba = Image.new("RGBA", (40, 30), (10, 200, 30, 0))
    x = load_media(_encode(rgba, "PNG"), name="a.png").tensor
    assert torch.allclose(x, transform_image(Image.new("RGB", (40, 30), (10, 200, 30))))  # alpha dropped, as upstream
    deep = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    y = load_media(_encode(deep, "PNG"), name="deep.png").tensor
    assert y.std() > 0.1  # scaled to 8 bits rather than clipped to white
    pal = _pattern(40, 30).convert("P")
    assert load_media(_encode(pal, "PNG"), name="p.png").tensor.shape == (3, 224, 224)


def test_exif_orientation_applied_unless_exact_upstream():
    img = _pattern(160, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encode(img, "JPEG", quality=95, exif=exif.tobytes())
    upright = load_media(data, name="phone.jpg")
    assert upright.meta["exif_orientation"] == 6
    raw = load_media(data, name="phone.jpg", exact_upstream=True)
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    assert torch.equal(raw.tensor, transform_image(decoded))
    assert torch.equal(upright.tensor, transform_image(decoded.transpose(Image.Transpose.ROTATE_270)))
    assert not torch.equal(upright.tensor, raw.tensor)


def test_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=100)
    x = load_media(b.getvalue(), name="anim.gif").tensor
    assert x[0].mean() > x[2].mean()  # red, the first frame
