"""The malformed-media corpus: every item raises the right typed MediaError, the process stays healthy,
and nothing is left behind (no temp files, no open file descriptors)."""

from __future__ import annotations

import io
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ibllm_agent.media import (
    CorruptMediaError,
    EmptyMediaError,
    InvalidValuesError,
    MediaError,
    MediaLimits,
    MediaTooLargeError,
    MediaTooLongError,
    UnsafeMediaError,
    UnsupportedFormatError,
    WrongChannelsError,
    load_media,
)

CORPUS = Path(__file__).resolve().parents[1] / "data" / "malformed"

EXPECTED = {
    "truncated.jpg": CorruptMediaError,
    "truncated.gif": CorruptMediaError,
    "one_pixel.png": EmptyMediaError,
    "bomb_20000x20000.png": MediaTooLargeError,
    "empty.wav": EmptyMediaError,
    "zero_seconds.wav": EmptyMediaError,
    "header_truncated.wav": CorruptMediaError,
    "garbage.mp3": CorruptMediaError,
    "broken_moov.mp4": CorruptMediaError,
    "text_named.wav": UnsupportedFormatError,
    "unknown.bin": UnsupportedFormatError,
    "nan_points.xyz": InvalidValuesError,
    "inf_points.npy": InvalidValuesError,
    "object_array.npy": UnsafeMediaError,
    "pickled_code.pt": UnsafeMediaError,
    "lying_header.ply": CorruptMediaError,
}

TALLY = {"tried": 0, "typed errors": 0, "crashes": 0}


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    line = "malformed media: " + ", ".join(f"{k} {v}" for k, v in TALLY.items())
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def _try(src, expected: type[MediaError], **kw) -> MediaError:
    TALLY["tried"] += 1
    try:
        load_media(src, **kw)
    except MediaError as e:
        TALLY["typed errors"] += 1
        assert isinstance(e, expected), f"{e!r} is not a {expected.__name__}"
        assert e.source and e.problem and e.source in str(e)
        return e
    except Exception:
        TALLY["crashes"] += 1
        raise
    pytest.fail(f"{src!r} loaded without an error")


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    pcm = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(pcm)) + pcm)


def test_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.iterdir() if p.name != "README.md") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_item_raises_typed_error(name, capfd):
    err = _try(CORPUS / name, EXPECTED[name])
    assert name in str(err)
    if name == "pickled_code.pt":
        assert "must never run" not in capfd.readouterr().out  # the pickled print was not called


@pytest.mark.parametrize("name", ["truncated.jpg", "garbage.mp3", "broken_moov.mp4", "pickled_code.pt"])
def test_corpus_item_as_bytes_and_stream(name):
    data = (CORPUS / name).read_bytes()
    _try(data, EXPECTED[name], name=name)
    _try(io.BytesIO(data), EXPECTED[name], name=name)


def test_generated_limits(tmp_path):
    long_wav = tmp_path / "long.wav"
    long_wav.write_bytes(_wav(np.zeros(16000 * 6)))
    _try(long_wav, MediaTooLongError, limits=MediaLimits(max_audio_seconds=5))
    _try(long_wav, MediaTooLargeError, limits=MediaLimits(max_file_bytes=1000))
    many = tmp_path / "many.npy"
    np.save(many, np.random.default_rng(0).normal(size=(5000, 3)).astype(np.float32))
    _try(many, MediaTooLargeError, limits=MediaLimits(max_points=4999))
    _try(b"a" * 101, MediaTooLargeError, modality="text", name="long.txt", limits=MediaLimits(max_text_chars=100))


def test_generated_short_and_empty(tmp_path):
    tiny = tmp_path / "tiny.wav"
    tiny.write_bytes(_wav(np.zeros(100)))  # 6 ms: fewer samples than one 25-ms fbank frame
    _try(tiny, EmptyMediaError)
    _try(b"   \n", EmptyMediaError, modality="text", name="blank.txt")
    no_vertices = b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    _try(no_vertices, EmptyMediaError, name="empty.ply")


def test_lying_extensions(tmp_path):
    # Binary content is read as what it is, whatever its name says.
    wav_as_png = tmp_path / "sound.png"
    wav_as_png.write_bytes(_wav(np.sin(np.arange(32000) / 5) * 8000))
    assert load_media(wav_as_png).modality == "audio"
    # Text under a binary name is refused; asking for a modality the content is not is refused.
    _try(b"hello there", UnsupportedFormatError, name="photo.jpg")
    _try(wav_as_png, UnsupportedFormatError, modality="image")
    _try(CORPUS / "nan_points.xyz", UnsupportedFormatError, modality="video")
    _try(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", UnsupportedFormatError, name="photo.heic")


def test_inconsistent_wav_headers(tmp_path):
    good = _wav(np.zeros(16000))
    zero_channels = bytearray(good)
    zero_channels[22:24] = b"\x00\x00"
    _try(bytes(zero_channels), CorruptMediaError, name="zero_channels.wav")
    nan_float = bytearray(good)
    nan_float[20:22] = struct.pack("<H", 3)  # IEEE float
    nan_float[34:36] = struct.pack("<H", 32)
    nan_float[32:34] = struct.pack("<H", 4)
    nan_float[44:52] = np.array([np.nan, 1.0], "<f4").tobytes()
    _try(bytes(nan_float), InvalidValuesError, name="nan.wav")


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


IMU_HEADER = "t,ax,ay,az,gx,gy,gz\n"


def _imu_csv(rows: str, header: str = IMU_HEADER) -> bytes:
    return (header + rows).encode()


def test_generated_depth_and_thermal(tmp_path):
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200  # a false-colour rendering: channels differ
    for modality in ("depth", "thermal"):
        _try(_png(colour), WrongChannelsError, modality=modality, name="turbo.png")
        _try(_npy(np.zeros((3, 32, 32), np.float32)), WrongChannelsError, modality=modality, name="rgb.npy")
        _try(_npy(np.zeros((4, 4, 4, 4), np.float32)), WrongChannelsError, modality=modality, name="4d.npy")
        _try(_npy(np.array([["a"]], dtype=object)), UnsafeMediaError, modality=modality, name="object.npy")
        _try(_npy(np.full((8, 8), np.nan, np.float32)), InvalidValuesError, modality=modality, name="nan.npy")
        _try(_npy(np.full((2, 2), 1.0, np.float32)), EmptyMediaError, modality=modality, name="tiny.npy")
        _try(_png(np.zeros((64, 64), np.uint16)), MediaTooLargeError, modality=modality, name="big.png",
             limits=MediaLimits(max_image_pixels=1000))
        _try((CORPUS / "bomb_20000x20000.png").read_bytes(), MediaTooLargeError, modality=modality, name="bomb.png")
        _try((CORPUS / "truncated.jpg").read_bytes(), CorruptMediaError, modality=modality, name="cut.jpg")
        _try(_wav(np.zeros(1600)), UnsupportedFormatError, modality=modality, name="sound.wav")
    _try(_npy(-np.ones((8, 8), np.float32)), InvalidValuesError, modality="depth", name="negative.npy")
    _try(_png(np.zeros((8, 8), np.uint16)), InvalidValuesError, modality="depth", name="all_holes.png")
    _try(_npy(np.full((8, 8), 70000, np.int32)), InvalidValuesError, modality="thermal", name="int32.npy")


def test_generated_imu(tmp_path):
    ok = "".join(f"{i / 100},0,0,9.8,0,0,0\n" for i in range(10))
    _try(_imu_csv(ok, "t,ax,ay,az\n"), WrongChannelsError, modality="imu", name="accel_only.csv")
    _try(_imu_csv(ok, "t,x,y,z,u,v,w\n"), WrongChannelsError, modality="imu", name="no_axes.csv")
    _try(_imu_csv(ok, "t,ax_furlong,ay,az,gx,gy,gz\n"), WrongChannelsError, modality="imu", name="unit.csv")
    _try(_imu_csv(ok, "t,ax_g,ay_mg,az,gx,gy,gz\n"), WrongChannelsError, name="mixed_units.csv")
    _try(_imu_csv(ok.replace("9.8", "nan", 1)), InvalidValuesError, name="nan.csv")
    _try(_imu_csv(ok.replace("9.8", "", 1)), InvalidValuesError, name="empty_field.csv")
    _try(_imu_csv(ok.replace("9.8", "inf", 1)), InvalidValuesError, name="inf.csv")
    _try(_imu_csv(ok.replace("9.8", "heavy", 1)), CorruptMediaError, name="garbage.csv")
    _try(_imu_csv(ok + "1,2\n"), CorruptMediaError, name="short_row.csv")
    _try(_imu_csv("0,0,0,9.8,0,0,0\n"), EmptyMediaError, name="one_row.csv")
    _try(_imu_csv(""), EmptyMediaError, name="header_only.csv")
    _try(_imu_csv("".join(f"0,0,0,9.8,0,0,{i}\n" for i in range(5))), EmptyMediaError, name="same_time.csv")
    _try(_imu_csv("".join(f"{i * 1e9},0,0,9.8,0,0,0\n" for i in range(5)), "time_s,ax,ay,az,gx,gy,gz\n"),
         InvalidValuesError, name="absurd_rate.csv")
    _try(_imu_csv(ok), MediaTooLargeError, name="rows.csv", limits=MediaLimits(max_imu_samples=5))
    _try(_imu_csv(ok), MediaTooLongError, name="long.csv", limits=MediaLimits(max_imu_seconds=0.05))
    _try(_imu_csv(ok, "time_fortnights,ax,ay,az,gx,gy,gz\n"), WrongChannelsError, name="time_unit.csv")
    _try(_npy(np.zeros((3, 100), np.float32)), WrongChannelsError, modality="imu", name="three.npy")
    _try(_npy(np.zeros((7, 9), np.float32)), WrongChannelsError, modality="imu", name="seven.npy")
    _try(_npy(np.full((6, 10), np.nan, np.float32)), InvalidValuesError, modality="imu", name="nan.npy")
    _try(_npy(np.zeros((6, 100), np.complex64)), WrongChannelsError, modality="imu", name="complex.npy")
    _try(_npy(np.zeros((6, 100), np.float32)), MediaTooLargeError, modality="imu", name="many.npy",
         limits=MediaLimits(max_imu_samples=50))
    _try(b"x,y,z\n1,2,3\n4,5,6\n", WrongChannelsError, modality="imu", name="cloud.xyz")
    _try(_png(np.zeros((8, 8), np.uint8)), UnsupportedFormatError, modality="imu", name="picture.png")


def test_process_stays_healthy_and_leaves_nothing_behind(media_dir):
    tmp = Path(tempfile.gettempdir())
    before_tmp = {p.name for p in tmp.glob("ibllm-media-*")}
    before_fds = len(os.listdir("/proc/self/fd"))
    for name, expected in EXPECTED.items():
        data = (CORPUS / name).read_bytes()
        for src in (CORPUS / name, data):  # bytes go through temporary files for ffmpeg/OpenCV
            _try(src, expected, name=name)
    assert {p.name for p in tmp.glob("ibllm-media-*")} == before_tmp
    assert len(os.listdir("/proc/self/fd")) <= before_fds
    # Still healthy: a good file loads after all of that.
    item = load_media(media_dir / "girl.jpg")
    assert item.tensor.shape == (3, 224, 224) and torch.isfinite(item.tensor).all()
