"""Video: frame selection by timestamp, the resize/crop arithmetic, OpenCV-written files, GIF."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ibllm_agent.media import MediaLimits, MediaTooLongError, load_media
from ibllm_agent.media.video import _select, crop_offsets, read_clip_frames, short_side_size, transform_clips


def _write_cv2(path, n: int, fps: float, size=(64, 48), fourcc="mp4v") -> None:
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for i in range(n):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, :] = (0, 0, (i * 255) // max(n - 1, 1))  # red grows with the frame index (BGR)
        writer.write(frame)
    writer.release()


def test_sizes_and_crop_offsets():
    assert short_side_size(240, 320) == (224, 298)
    assert short_side_size(300, 180) == (373, 224)
    assert short_side_size(100, 100) == (224, 224)
    assert crop_offsets(224, 298) == [(0, 0), (0, 37), (0, 74)]
    assert crop_offsets(373, 224) == [(0, 0), (75, 0), (149, 0)]  # ceil(74.5) = 75, not the image path's 74
    assert crop_offsets(224, 224) == [(0, 0)] * 3


def test_select_first_and_last_frame_of_each_window():
    times = [Fraction(i, 30) for i in range(210)]
    picks, clips = _select(times, Fraction(7), 5, 2, 2)
    assert picks == [0, 59, 38, 97, 75, 134, 113, 172, 150, 209]
    assert clips[1]["frames_in_clip"] == 60


def test_select_ignores_decode_order_and_handles_gaps():
    times = [Fraction(i, 10) for i in range(30)]
    shuffled = times[::-1]
    picks, _ = _select(shuffled, Fraction(3), 5, 2, 2)
    assert [shuffled[i] for i in picks[:2]] == [Fraction(0), Fraction(19, 10)]
    sparse = [Fraction(0), Fraction(9)]  # a 10-s clip with two frames: windows 2..4 s hold none
    picks, clips = _select(sparse, Fraction(10), 5, 2, 2)
    assert len(picks) == 10 and clips[1]["frames_in_clip"] == 1


def test_transform_shape_and_value_range():
    frames = torch.randint(0, 256, (5, 2, 90, 160, 3), dtype=torch.uint8)
    out = transform_clips(frames)
    assert out.shape == (15, 3, 2, 224, 224) and out.dtype == torch.float32
    assert out.min() >= (0 - 0.49) / 0.26 and out.max() <= (1 - 0.40) / 0.26


def test_opencv_written_mp4_and_avi(tmp_path):
    for name, fourcc in (("clip.mp4", "mp4v"), ("clip.avi", "MJPG")):
        path = tmp_path / name
        _write_cv2(path, 90, 30.0, fourcc=fourcc)
        item = load_media(path)
        assert item.modality == "video" and item.tensor.shape == (15, 3, 2, 224, 224)
        assert item.meta["num_frames"] == 90 and item.meta["duration_s"] == pytest.approx(3.0)
        assert [c["selected_frame_index"] for c in item.meta["clips"]][-1] == [30, 89]
        # red grows over time: the last clip's last frame is redder than the first clip's first frame
        assert item.tensor[-1, 0, 1].mean() > item.tensor[0, 0, 0].mean()


def test_wrong_frame_count_in_header_does_not_matter(tmp_path):
    path = tmp_path / "clip.avi"
    _write_cv2(path, 75, 25.0, fourcc="MJPG")
    honest, meta = read_clip_frames(str(path), "clip", MediaLimits())
    data = bytearray(path.read_bytes())
    # The AVI header's frame counts (avih dwTotalFrames, strh dwLength, dmlh) all claim 9999 frames.
    for tag, offset in ((b"avih", 16), (b"strh", 32), (b"dmlh", 0)):
        at = data.find(tag) + 8 + offset
        data[at : at + 4] = struct.pack("<I", 9999)
    lying = tmp_path / "lying.avi"
    lying.write_bytes(bytes(data))
    lied, lied_meta = read_clip_frames(str(lying), "lying", MediaLimits())
    assert lied_meta["frames_in_header"] == 9999 and lied_meta["num_frames"] == 75
    assert torch.equal(honest, lied) and lied_meta["clips"] == meta["clips"]


def test_animated_gif_as_video():
    frames = [Image.new("RGB", (40, 30), (i * 25, 0, 0)) for i in range(10)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
    item = load_media(b.getvalue(), "video", name="anim.gif")
    assert item.tensor.shape == (15, 3, 2, 224, 224)
    assert item.meta["duration_s"] == pytest.approx(2.5)
    assert load_media(b.getvalue(), name="anim.gif").modality == "image"  # by default a GIF is an image


def test_video_limits(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_cv2(path, 60, 30.0)
    with pytest.raises(MediaTooLongError):
        load_media(path, limits=MediaLimits(max_video_frames=50))
    with pytest.raises(MediaTooLongError):
        load_media(path, limits=MediaLimits(max_video_seconds=1.5))
