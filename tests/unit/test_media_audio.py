"""Audio: the WAV reader, the resampler, the Kaldi fbank, clip boundaries and the in-place quirk."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

from ibllm_agent.media import load_media
from ibllm_agent.media.audio import kaldi_fbank, mel_banks, read_wav, resample, waveform_to_clips
from ibllm_agent.media.clips import clip_spans


def _wav(x: np.ndarray, rate: int, *, tag: int = 1, width: int = 2, extensible: bool = False) -> bytes:
    """x: [channels, n] float in [-1, 1] -> a WAV file."""
    channels = x.shape[0]
    inter = x.T.reshape(-1)
    if tag == 3:
        pcm = inter.astype("<f4" if width == 4 else "<f8").tobytes()
    elif width == 1:
        pcm = np.round(inter * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        v = np.round(inter * (2**23 - 1)).astype("<i4")
        pcm = b"".join(int(s).to_bytes(3, "little", signed=True) for s in v)
    else:
        pcm = np.round(inter * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    block = channels * width
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, width * 8)
    if extensible:
        fmt += struct.pack("<HHI", 22, width * 8, 0) + struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    body += b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("tag,width,tol", [(1, 1, 2 / 128), (1, 2, 1e-4), (1, 3, 1e-6), (1, 4, 1e-8), (3, 4, 0), (3, 8, 1e-7)])
@pytest.mark.parametrize("extensible", [False, True])
def test_read_wav_sample_formats(tag, width, tol, extensible):
    x = np.stack([np.linspace(-0.9, 0.9, 101), np.linspace(0.5, -0.5, 101)])
    samples, rate = read_wav(_wav(x, 8000, tag=tag, width=width, extensible=extensible), "x.wav")
    assert rate == 8000 and samples.shape == (2, 101) and samples.dtype == np.float32
    assert np.abs(samples - x).max() <= tol + 1e-7


def test_int16_scaling_matches_torchaudio_default():
    pcm = np.array([[-32768, 0, 16384, 32767]], dtype=np.int16)
    data = _wav(pcm / 32767.0, 16000)
    samples, _ = read_wav(data, "x.wav")
    assert samples[0, 0] == -1.0 and samples[0, 2] == 0.5  # int16 / 32768


def test_resample_length_and_band_limit():
    rate = 22050
    t = np.arange(rate) / rate
    x = torch.from_numpy(np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 10000 * t)]).astype(np.float32))
    y = resample(x, rate, 16000)
    assert y.shape == (2, math.ceil(16000 * rate / rate))
    spectrum = torch.fft.rfft(y[0, 2000:14000]).abs()
    assert abs(int(spectrum.argmax()) * 16000 / 12000 - 440) < 2  # the 440 Hz tone stays at 440 Hz
    assert y[1, 200:-200].abs().max() < 0.01  # 10 kHz is above the new Nyquist: filtered out
    assert resample(x, 16000, 16000) is x


def test_resample_odd_rate_uses_kernel_slices():
    x = torch.randn(1, 22051, generator=torch.Generator().manual_seed(0))
    y = resample(x, 22051, 16000)
    assert y.shape == (1, math.ceil(16000 * 22051 / 22051)) and torch.isfinite(y).all()


def test_mel_banks_shape_and_coverage():
    banks = mel_banks(128, 512, 16000.0)
    assert banks.shape == (128, 256) and banks.dtype == torch.float32
    assert (banks >= 0).all() and (banks <= 1).all()
    assert banks[:, 0].sum() == 0  # 0 Hz is below the 20 Hz lower edge
    used = banks.sum(dim=1) > 0  # a few of the narrowest low filters fall between FFT bins and stay empty
    assert used.sum() > 120
    peaks = banks[used].argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all()


def test_fbank_frames_and_tone_position():
    t = torch.arange(32000, dtype=torch.float32) / 16000
    fb = kaldi_fbank(torch.sin(2 * math.pi * 1000 * t))
    assert fb.shape == (1 + (32000 - 400) // 160, 128) == (198, 128)
    centre_hz = 700 * (torch.exp(torch.linspace(1127 * math.log(1 + 20 / 700), 1127 * math.log(1 + 8000 / 700), 130)[1:-1] / 1127) - 1)
    assert abs(float(centre_hz[fb.mean(0).argmax()]) - 1000) < 60
    silent = kaldi_fbank(torch.zeros(32000))
    assert torch.allclose(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))


def test_clip_spans_audio_float_subtraction():
    spans = clip_spans(2.9, 2, 3)
    assert [int(s * 16000) for s, _ in spans] == [0, 7199, 14399]  # 2.9 - 2 = 0.8999999999999999
    assert clip_spans(1.0, 2, 3) == [(0, 2)] * 3
    assert clip_spans(Fraction(7), 2, 5)[1] == (Fraction(5, 4), Fraction(13, 4))


def test_in_place_mean_removal_across_overlapping_clips():
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 40000, generator=g) * 0.1 + torch.tensor([[0.3], [-0.1]])
    out, info = waveform_to_clips(wave.clone())
    assert out.shape == (3, 1, 128, 204)
    # Clip 1 starts inside clip 0, so its mean is taken after clip 0's mean was subtracted in place.
    first_mean = float(wave[:, :32000].mean())
    assert info[0]["mean_removed"] == pytest.approx(first_mean, abs=1e-6)
    a, b = info[1]["sample_start"], info[1]["sample_end"]
    shifted = wave.clone()
    shifted[:, :32000] -= first_mean
    assert info[1]["mean_removed"] == pytest.approx(float(shifted[:, a:b].mean()), abs=1e-6)
    # Padding columns: zero log-mel becomes (0 + 4.268) / 9.138.
    assert torch.allclose(out[0, 0, :, 198:], torch.full((128, 6), 4.268 / 9.138))


def test_short_audio_gives_three_identical_clips(tmp_path):
    t = np.arange(12000) / 16000
    path = tmp_path / "short.wav"
    path.write_bytes(_wav(np.sin(2 * np.pi * 300 * t)[None] * 0.5, 16000))
    item = load_media(path)
    assert item.tensor.shape == (3, 1, 128, 204)
    assert torch.equal(item.tensor[0], item.tensor[1]) and torch.equal(item.tensor[1], item.tensor[2])
    assert [c["sample_end"] for c in item.meta["clips"]] == [12000] * 3


def test_stereo_uses_first_channel_for_features(tmp_path):
    t = np.arange(48000) / 16000
    left, right = np.sin(2 * np.pi * 300 * t) * 0.5, np.sin(2 * np.pi * 3000 * t) * 0.5
    a = load_media(_wav(np.stack([left, right]), 16000), name="lr.wav").tensor
    b = load_media(_wav(np.stack([left, np.zeros_like(left)]), 16000), name="l.wav").tensor
    assert (a - b).abs().max() < 1e-3  # only the shared mean differs; the right channel is not in the features
