"""load_media: sources (path, bytes, file object), detection, MediaInput, text, and the upstream data.* names."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import ibllm_agent.data as data
from ibllm_agent.media import (
    MIME_TO_MODALITY,
    MediaError,
    MediaInput,
    UnsupportedFormatError,
    detect_format,
    load_media,
    load_text,
)
from ibllm_agent.media.detect import detect

MAGIC = {
    b"\xff\xd8\xff\xe0\x00\x10JFIF": "jpeg", b"\x89PNG\r\n\x1a\n\x00\x00": "png", b"GIF89a\x01\x00": "gif",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ": "webp", b"RIFF\x00\x00\x00\x00WAVEfmt ": "wav", b"RIFF\x00\x00\x00\x00AVI LIST": "avi",
    b"fLaC\x00\x00\x00\x22": "flac", b"OggS\x00\x02" + b"\x00" * 22 + b"\x01vorbis": "ogg", b"ID3\x04\x00\x00": "mp3",
    b"\xff\xfb\x90\x64\x00": "mp3", b"\xff\xf1\x50\x80\x00": "aac", b"\x00\x00\x00\x20ftypM4A \x00": "m4a",
    b"\x00\x00\x00\x20ftypisom\x00": "mp4", b"\x00\x00\x00\x14ftypqt  \x00": "mov",
    b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\x42\x82\x84webm": "webm",
    b"\x93NUMPY\x01\x00": "npy", b"ply\nformat ascii 1.0\n": "ply", b"OFF\n3 1 0\n0 0 0\n": "off",
    b"v 0 0 0\nv 1 0 0\nf 1 2 3\n": "obj", b"0.1 0.2 0.3\n1 2 3\n": "xyz", b"II*\x00\x08\x00": "tiff",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00": "bmp", b"Hello, world.\n": "text",
}


@pytest.mark.parametrize("head,kind", list(MAGIC.items()))
def test_detect_by_content_not_name(head, kind):
    assert detect(head, "x.bin", ".bin").kind == kind


def test_mime_map_covers_modalities():
    assert MIME_TO_MODALITY["image/jpeg"] == "image" and MIME_TO_MODALITY["model/x-ply"] == "point"
    assert set(MIME_TO_MODALITY.values()) == {"image", "video", "audio", "point", "imu", "text"}
    assert MIME_TO_MODALITY["text/csv"] == "imu"  # a table naming accelerometer and gyroscope axes


def _png() -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(b, "PNG")
    return b.getvalue()


def test_path_bytes_and_file_object_agree(tmp_path):
    data_bytes = _png()
    path = tmp_path / "picture.jpg"  # the name lies; the content is a PNG
    path.write_bytes(data_bytes)
    items = [load_media(path), load_media(str(path)), load_media(data_bytes, name="picture.jpg"),
             load_media(io.BytesIO(data_bytes), name="picture.jpg")]
    for item in items:
        assert isinstance(item, MediaInput) and item.modality == "image" and item.mime == "image/png"
        assert item.name == "picture.jpg" and torch.equal(item.tensor, items[0].tensor)
        assert item.sha256 == items[0].sha256
    assert items[0].batched().shape == (1, 3, 224, 224)
    assert load_media(data_bytes).name == "<bytes>"
    assert detect_format(path).kind == "png"
    with open(path, "rb") as f:
        assert load_media(f).name == "picture.jpg"  # a real file object names itself


def test_same_file_same_tensor(media_dir):
    for name in ("girl.jpg", "girl_bgm.wav", "airplane.pt", "synthetic_portrait_short.mp4"):
        a, b = load_media(media_dir / name), load_media(media_dir / name)
        assert torch.equal(a.tensor, b.tensor), name


def test_modality_aliases_and_errors(tmp_path):
    assert load_media(_png(), "vision").modality == "image"
    with pytest.raises(ValueError, match="unknown modality"):
        load_media(_png(), "smell")
    with pytest.raises(UnsupportedFormatError, match="asked for audio"):
        load_media(_png(), "audio", name="x.png")
    with pytest.raises(MediaError, match="no such file"):
        load_media(tmp_path / "missing.wav")
    with pytest.raises(TypeError):
        load_media(12345)


def test_text_from_string_and_file(tmp_path):
    item = load_media("a dog barking", "text")
    assert item.modality == "text" and item.tensor.shape == (77,) and item.tensor.dtype == torch.int64
    assert torch.equal(item.tensor, load_text("a dog barking").tensor)
    note = tmp_path / "note.txt"
    note.write_text("a dog barking")
    from_file = load_media(note)
    assert from_file.modality == "text" and torch.equal(from_file.tensor, item.tensor)


def test_long_text_is_cut_with_end_token_kept():
    tokens = load_text("word " * 500).tensor
    assert tokens.shape == (77,) and tokens[0] == 49406 and tokens[-1] == 49407 and (tokens != 0).all()


def test_data_names_return_none_and_batch(media_dir):
    for fn in (data.load_and_transform_vision_data, data.load_and_transform_audio_data,
               data.load_and_transform_video_data, data.load_and_transform_point_cloud_data,
               data.load_and_transform_text):
        assert fn(None, "cpu") is None
    assert data.load_and_transform_text(["a", "b c"], "cpu").shape == (2, 77)
    two = data.load_and_transform_vision_data([media_dir / "girl.jpg"] * 2, "cpu")
    assert two.shape == (2, 3, 224, 224) and torch.equal(two[0], two[1])
    audio = data.load_and_transform_audio_data([media_dir / "girl_bgm.wav"], "cpu", clips_per_video=2, target_length=100)
    assert audio.shape == (1, 2, 1, 128, 100)


def test_data_point_clouds_keep_stored_values(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float64)
    np.save(tmp_path / "a.npy", pts)
    out = data.load_and_transform_point_cloud_data([tmp_path / "a.npy"], "cpu")
    assert out.dtype == torch.float64 and torch.equal(out[0], torch.from_numpy(pts))
    assert load_media(tmp_path / "a.npy").tensor.shape == (8192, 3)  # load_media resamples and normalises
