"""Thermal images: 8-bit pictures get ImageBind's vision resize and /255, radiometric 16-bit PNG and TIFF
frames (OpenCV, Pillow) and float arrays a linear gain between their 1st and 99th percentile."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ibllm_agent.media import load_media
from ibllm_agent.media.thermal import automatic_gain


@pytest.fixture(scope="module")
def frame():
    """Radiometric counts (kelvin × 10, FLIR's TLinear at 0.1 K): a 20 °C room, a 36 °C face."""
    yy, xx = np.mgrid[:96, :128]
    kelvin = np.where((yy - 48) ** 2 + (xx - 64) ** 2 < 30 ** 2, 309.15, 293.15)
    return np.round(kelvin * 10).astype(np.uint16)


def test_radiometric_png_and_tiff_from_opencv_and_pillow_agree(tmp_path, frame):
    cv2.imwrite(str(tmp_path / "cv.png"), frame)
    cv2.imwrite(str(tmp_path / "cv.tif"), frame)
    Image.fromarray(frame).save(tmp_path / "pil.png")
    Image.fromarray(frame).save(tmp_path / "pil.tif")
    Image.fromarray(frame.astype(np.float32) / 10 - 273.15).save(tmp_path / "celsius.tif")  # float °C
    np.save(tmp_path / "kelvin.npy", frame / 10.0)
    items = {p: load_media(tmp_path / p, "thermal")
             for p in ("cv.png", "cv.tif", "pil.png", "pil.tif", "celsius.tif", "kelvin.npy")}
    first = items["cv.png"]
    assert first.modality == "thermal" and first.tensor.shape == (1, 224, 224)
    assert first.meta["encoding"] == "16-bit" and first.meta["stretched_range"] == [2932.0, 3092.0]
    assert float(first.tensor.min()) == 0.0 and float(first.tensor.max()) == 1.0
    assert first.tensor[0, 112, 112] == 1.0 and first.tensor[0, 5, 5] == 0.0  # the face is hot
    for name, item in items.items():
        assert torch.allclose(item.tensor, first.tensor, atol=1e-5), name


def test_8bit_pictures_follow_imagebinds_vision_resize(tmp_path):
    grey = (np.arange(64 * 48).reshape(48, 64) % 251).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "ir.png")
    item = load_media(tmp_path / "ir.png", "thermal")
    expected = Image.fromarray(grey).resize((298, 224), Image.BICUBIC).crop((37, 0, 261, 224))
    assert torch.equal(item.tensor[0], torch.from_numpy(np.asarray(expected, np.float32) / 255))
    Image.fromarray(grey).convert("RGB").save(tmp_path / "ir_rgb.png")  # LLVIP stores grey as 3 channels
    assert torch.equal(load_media(tmp_path / "ir_rgb.png", "thermal").tensor, item.tensor)


def test_automatic_gain():
    v = np.arange(101, dtype=np.float64)
    out, low, high = automatic_gain(v)
    assert (low, high) == (1.0, 99.0) and out[0] == 0 and out[-1] == 1 and out[50] == pytest.approx(49 / 98)
    assert automatic_gain(np.full((4, 4), 7.0))[0].max() == 0  # a flat frame
