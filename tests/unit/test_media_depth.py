"""Depth maps: 16-bit PNGs written by OpenCV and by Pillow, TIFFs, float arrays and 8-bit disparity pictures
become the same normalised disparity the depth trunk takes, with Omnivore's constants."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ibllm_agent.media import load_media
from ibllm_agent.media.depth import (
    BASELINE,
    DISPARITY_MEAN,
    DISPARITY_STD,
    FOCAL_LENGTH,
    MAX_DISPARITY,
    normalised_disparity,
)


@pytest.fixture(scope="module")
def scene():
    """Millimetres: a wall 3-5 m away with a box at 1.2 m and a few holes (0)."""
    depth = np.linspace(5000, 3000, 120)[:, None].repeat(160, axis=1)
    depth[30:80, 50:110] = 1200
    depth[:3, :3] = 0
    return np.round(depth).astype(np.uint16)


def _expected(mm: np.ndarray) -> torch.Tensor:
    """The module doc's steps written out in torch (bilinear, antialiased resize of the short side to 224)."""
    depth = torch.from_numpy(mm.astype(np.float64) / 1000)
    disparity = BASELINE * FOCAL_LENGTH / depth.clamp(0.01, 50)
    disparity[depth == 0] = 0
    x = (disparity.clamp(0.01, MAX_DISPARITY) / MAX_DISPARITY).float()[None, None]
    x = torch.nn.functional.interpolate(x, size=(224, 298), mode="bilinear", antialias=True, align_corners=False)
    x = x[..., :, 37:261]
    return ((x - DISPARITY_MEAN) / DISPARITY_STD)[0]


def test_png_by_opencv_and_by_pillow_and_npy_agree(tmp_path, scene):
    cv2.imwrite(str(tmp_path / "cv.png"), scene)
    Image.fromarray(scene).save(tmp_path / "pil.png")
    Image.fromarray(scene).save(tmp_path / "pil.tif")
    np.save(tmp_path / "metres.npy", scene.astype(np.float32) / 1000)
    np.savez(tmp_path / "metres.npz", rgb=np.zeros((2, 2)), depth=scene.astype(np.float32) / 1000)
    loaded = {p: load_media(tmp_path / p, "depth") for p in ("cv.png", "pil.png", "pil.tif", "metres.npy", "metres.npz")}
    first = loaded["cv.png"]
    assert first.modality == "depth" and first.tensor.shape == (1, 224, 224) and first.tensor.dtype == torch.float32
    assert first.meta["encoding"] == "16-bit" and first.meta["holes"] == 9
    assert first.meta["depth_range_m"] == [1.2, 5.0]
    for name, item in loaded.items():
        assert torch.allclose(item.tensor, first.tensor, atol=1e-4), name
    # the box (near) is brighter than the wall (far)
    assert first.tensor[0, 112, 112] > first.tensor[0, 200, 20]
    torch.testing.assert_close(first.tensor, _expected(scene), atol=0.02, rtol=0)


def test_constants_follow_omnivore():
    assert (FOCAL_LENGTH, BASELINE, MAX_DISPARITY) == (518.857901, 0.075, 75.0)
    assert (DISPARITY_MEAN, DISPARITY_STD) == (0.0418, 0.0295)
    # 1 m: disparity 38.9 -> DepthNorm 0.519 -> normalised 16.2
    x = normalised_disparity(np.ones((224, 224)), np.zeros((224, 224), bool))
    assert x.shape == (1, 224, 224)
    assert float(x.mean()) == pytest.approx((BASELINE * FOCAL_LENGTH / 75 - 0.0418) / 0.0295, rel=1e-5)


def test_units_and_camera_options(tmp_path, scene):
    Image.fromarray(scene).save(tmp_path / "mm.png")
    Image.fromarray((scene.astype(np.uint32) * 5 // 1).clip(0, 65535).astype(np.uint16)).save(tmp_path / "tum.png")
    mm = load_media(tmp_path / "mm.png", "depth").tensor
    tum = load_media(tmp_path / "tum.png", "depth", units_per_metre=5000).tensor  # TUM RGB-D's 5000 per metre
    assert torch.allclose(mm, tum, atol=1e-3)
    assert load_media(tmp_path / "mm.png", "depth", baseline=0.095).tensor.mean() > mm.mean()  # RealSense
    with pytest.raises(ValueError, match="focal_length"):
        load_media(tmp_path / "mm.png", "depth", focal_length=0)


def test_holes_are_far_not_near(tmp_path):
    depth = np.full((60, 80), 2000, np.uint16)
    depth[:, :40] = 0
    Image.fromarray(depth).save(tmp_path / "holes.png")
    x = load_media(tmp_path / "holes.png", "depth").tensor[0]
    floor = (0.01 / MAX_DISPARITY - DISPARITY_MEAN) / DISPARITY_STD
    assert float(x[:, :100].max()) == pytest.approx(floor, abs=1e-4) and float(x[:, 200:].min()) > 0


def test_8bit_disparity_is_relative_and_standardised(tmp_path, scene):
    disparity = (255 * (1000 / np.maximum(scene, 1000))).astype(np.uint8)  # brighter = nearer
    Image.fromarray(disparity).save(tmp_path / "midas.png")
    Image.fromarray(disparity).convert("RGB").save(tmp_path / "midas.jpg", quality=95)  # grey saved as colour
    for name in ("midas.png", "midas.jpg"):
        item = load_media(tmp_path / name, "depth")
        assert item.meta["encoding"] == "8-bit" and "relative" in item.meta["read_as"]
        assert abs(float(item.tensor.mean())) < 1e-5 and float(item.tensor.std()) == pytest.approx(1.0, abs=1e-3)
        assert item.tensor[0, 112, 112] > item.tensor[0, 200, 20]


def test_content_alone_keeps_a_depth_png_a_picture(tmp_path, scene):
    cv2.imwrite(str(tmp_path / "room.png"), scene)
    assert load_media(tmp_path / "room.png").modality == "image"
    assert load_media(tmp_path / "room.png", "disparity").modality == "depth"  # an alias
