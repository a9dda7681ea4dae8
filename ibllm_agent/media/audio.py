"""Audio: decode (WAV ourselves, everything else through pydub + the ffmpeg of imageio-ffmpeg),
resample to 16 kHz, cut 3 clips of 2 s, Kaldi fbank, pad to 204 frames, normalise.

This reproduces ImageBind's `load_and_transform_audio_data` with torchaudio 0.13 bit for bit:
the windowed-sinc resampler builds its kernel in the waveform's dtype (float32) with the same
operation order, and the fbank follows `torchaudio.compliance.kaldi.fbank`'s float32 op order.
No torchaudio is needed.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .clips import clip_spans
from .detect import Format
from .errors import (
    CorruptMediaError,
    EmptyMediaError,
    InvalidValuesError,
    MediaTooLongError,
    UnsupportedFormatError,
)
from .limits import MediaLimits
from .source import Source

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_LENGTH = 204
CLIP_SECONDS = 2
NUM_CLIPS = 3
FBANK_MEAN = -4.268
FBANK_STD = 9.138
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
FFT_SIZE = 512  # next power of two above the frame length
EPSILON = torch.finfo(torch.float32).eps


# ---------------------------------------------------------------- decoding


def decode_audio(source: Source, fmt: Format, limits: MediaLimits) -> tuple[torch.Tensor, int, dict]:
    """All channels as float32 [C, N] in [-1, 1], the sample rate, and metadata.

    WAV (integer PCM 8/16/24/32 bit, float 32/64 bit, extensible) is parsed here without ffmpeg;
    other formats and WAV codecs (ADPCM, A-law...) go through ffmpeg. Integer samples are divided
    by 2**(bits-1), as torchaudio.load does by default.
    """
    decoded = read_wav(source.read_bytes(), source.name) if fmt.kind == "wav" else None
    meta = {"codec": "pcm"}
    if decoded is None:
        decoded, meta = _decode_with_ffmpeg(source, fmt, limits)
    samples, rate = decoded
    channels, n = samples.shape
    if n == 0:
        raise EmptyMediaError(source.name, "the audio holds no samples (0 s)")
    if not np.isfinite(samples).all():
        raise InvalidValuesError(source.name, "the audio holds NaN or infinite samples")
    duration = n / rate
    if duration > limits.max_audio_seconds:
        raise MediaTooLongError(
            source.name, f"{duration:.1f} s of audio, over the limit of {limits.max_audio_seconds} s "
            "(MediaLimits.max_audio_seconds)"
        )
    meta.update(orig_sample_rate=rate, channels=channels, orig_num_samples=n, duration_s=duration)
    return torch.from_numpy(samples), rate, meta


def read_wav(data: bytes, name: str) -> tuple[np.ndarray, int] | None:
    """Parse a RIFF/WAVE file. Returns (float32 [C, N], rate), or None for a codec we leave to ffmpeg."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise CorruptMediaError(name, "not a RIFF/WAVE file")
    pos, fmt, raw = 12, None, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise CorruptMediaError(name, "WAV 'fmt ' chunk is too short")
            tag, channels, rate = (int.from_bytes(data[body + a : body + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
            block_align, bits = (int.from_bytes(data[body + a : body + b], "little") for a, b in ((12, 14), (14, 16)))
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
                tag = int.from_bytes(data[body + 24 : body + 26], "little")
            fmt = (tag, channels, rate, block_align, bits)
        elif chunk == b"data":
            if fmt is None:
                raise CorruptMediaError(name, "WAV 'data' chunk before its 'fmt ' chunk")
            # 0xFFFFFFFF (RF64, or a WAV written to a pipe) means "up to the end of the file".
            end = len(data) if size == 0xFFFFFFFF else min(body + size, len(data))
            raw = data[body:end]
            break
        pos = body + size + (size & 1)
    if fmt is None or raw is None:
        raise CorruptMediaError(name, "WAV file without a 'fmt ' or 'data' chunk")
    tag, channels, rate, block_align, bits = fmt
    if channels == 0 or rate == 0 or block_align == 0:
        raise CorruptMediaError(name, f"WAV header with {channels} channels at {rate} Hz")
    width = block_align // channels
    pcm = raw[: len(raw) // block_align * block_align]
    if tag == 1 and width in (1, 2, 3, 4):
        x = _pcm_to_float(pcm, width)
    elif tag == 3 and width in (4, 8):
        x = np.frombuffer(pcm, "<f4" if width == 4 else "<f8").astype(np.float32)
    else:
        return None
    return np.ascontiguousarray(x.reshape(-1, channels).T), rate


def _pcm_to_float(pcm: bytes, width: int) -> np.ndarray:
    if width == 1:
        return (np.frombuffer(pcm, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(pcm, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    return (np.frombuffer(pcm, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


_STREAM_RE = re.compile(r"Stream #\d+:\d+[^:]*: (Audio|Video): ([A-Za-z0-9_]+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def probe(path: str, demuxer: str | None, name: str) -> dict:
    """Streams and duration of a file, read from ``ffmpeg -i`` (imageio-ffmpeg ships no ffprobe).

    Returns {"audio": [codec...], "video": [codec...], "duration_s": float | None}.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin"] + (["-f", demuxer] if demuxer else []) + ["-i", path]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CorruptMediaError(name, "ffmpeg took more than 60 s to read the header") from None
    err = proc.stderr.decode("utf-8", "replace")
    streams: dict = {"audio": [], "video": [], "duration_s": None}
    for kind, codec in _STREAM_RE.findall(err):
        streams[kind.lower()].append(codec)
    m = _DURATION_RE.search(err)
    if m:
        streams["duration_s"] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    if not streams["audio"] and not streams["video"]:
        last = [ln for ln in err.strip().splitlines() if ln.strip()]
        raise CorruptMediaError(name, f"ffmpeg cannot read it: {last[-1] if last else 'no streams found'}")
    return streams


def _decode_with_ffmpeg(source: Source, fmt: Format, limits: MediaLimits) -> tuple[tuple[np.ndarray, int], dict]:
    """Decode the first audio stream with pydub (which runs ffmpeg and pipes a WAV back)."""
    with source.as_path(suffix="." + fmt.kind) as path:
        info = probe(str(path), fmt.demuxer, source.name)
        if not info["audio"]:
            raise EmptyMediaError(source.name, f"the {fmt.kind} file has no audio track")
        if info["duration_s"] is not None and info["duration_s"] > limits.max_audio_seconds:
            raise MediaTooLongError(
                source.name, f"{info['duration_s']:.1f} s of audio, over the limit of {limits.max_audio_seconds} s "
                "(MediaLimits.max_audio_seconds)"
            )
        codec = info["audio"][0]
        segment = _pydub_decode(str(path), fmt.demuxer, codec, source.name)
    if segment.sample_width not in (1, 2, 3, 4):
        raise UnsupportedFormatError(source.name, f"{segment.sample_width}-byte samples from ffmpeg")
    x = _pcm_to_float(segment.raw_data, segment.sample_width)
    samples = np.ascontiguousarray(x.reshape(-1, segment.channels).T)
    return (samples, segment.frame_rate), {"codec": codec}


def _pydub_decode(path: str, demuxer: str | None, codec: str, name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydub warns at import when no ffmpeg is on PATH
        from pydub import AudioSegment
        from pydub.exceptions import CouldntDecodeError
    if AudioSegment.converter == "ffmpeg" and shutil.which("ffmpeg") is None:
        AudioSegment.converter = ffmpeg_exe()
    try:
        # format and codec given: pydub then needs no ffprobe (which imageio-ffmpeg lacks).
        return AudioSegment.from_file(path, format=demuxer, codec=codec)
    except CouldntDecodeError as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise CorruptMediaError(name, f"ffmpeg could not decode the audio: {lines[-1] if lines else e}") from None
    except (IndexError, ValueError, OSError) as e:
        raise CorruptMediaError(name, f"could not decode the audio: {e}") from None


# ---------------------------------------------------------------- resampling


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling [..., N] -> [..., ceil(new * N / orig)], as torchaudio.functional.resample
    with its defaults (Hann-windowed sinc, lowpass_filter_width 6, rolloff 0.99), bit for bit in float32."""
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    if new * orig > 4_000_000:
        # torchaudio's dense kernel would hold new × (orig + 2·width) values (16000 × 22069 for
        # 22051 Hz), almost all zero: evaluate only the nonzero taps instead (float64, not bit-exact).
        return _resample_sparse(waveform, orig, new)
    kernel, width = _sinc_kernel(orig, new, waveform.dtype)
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    length = x.shape[-1]
    x = F.pad(x, (width, width + orig))[:, None]  # (B, 1, N + 2*width + orig)
    y = F.conv1d(x, kernel, stride=orig)  # (B, new, steps): phase j of output step m
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # output sample new*m + j
    # torchaudio computes the length with a float32 ceil; we follow it.
    target = int(torch.ceil(torch.as_tensor(new * length / orig, dtype=torch.float32)))
    return y[:, :target].reshape(shape[:-1] + (-1,))


def _sinc_kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Kernel [new, 1, 2*width + orig]; every op in `dtype` and in torchaudio's order, so the
    float32 kernel is the very one torchaudio builds."""
    lowpass_filter_width, rolloff = 6, 0.99
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t *= base
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * (base / orig)
    return kernel, width


def _resample_sparse(waveform: torch.Tensor, orig: int, new: int, chunk: int = 1 << 16) -> torch.Tensor:
    """The same windowed sinc as `_sinc_kernel`, evaluated per output sample on its ~17 nonzero taps:
    y[k] = sum_n x[n] · sinc(t) · hann(t) · base/orig with t = (n/orig - k/new) · base, |t| < 6."""
    lowpass_filter_width, base = 6, min(orig, new) * 0.99
    reach = math.ceil(lowpass_filter_width * orig / base) + 1
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1]).to(torch.float64)
    length = x.shape[-1]
    target = math.ceil(new * length / orig)
    offsets = torch.arange(-reach, reach + 1)
    out = []
    for k0 in range(0, target, chunk):
        k = torch.arange(k0, min(k0 + chunk, target), dtype=torch.float64)
        n = torch.floor(k * orig / new).long()[:, None] + offsets  # (K, taps): input samples near each output
        t = ((n.to(torch.float64) / orig - k[:, None] / new) * base).clamp(-lowpass_filter_width, lowpass_filter_width)
        w = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t = t * math.pi
        w = w * torch.where(t == 0, torch.ones_like(t), t.sin() / t) * (base / orig)
        valid = (n >= 0) & (n < length)
        taps = x[:, n.clamp(0, length - 1)] * valid  # (B, K, taps)
        out.append((taps * w).sum(-1))
    return torch.cat(out, dim=1).to(waveform.dtype).reshape(shape[:-1] + (-1,))


# ---------------------------------------------------------------- Kaldi fbank


@lru_cache(maxsize=4)
def mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float = 20.0) -> torch.Tensor:
    """Kaldi's triangular HTK-mel filters [num_bins, fft_size // 2], float32 in torchaudio's op order."""

    def mel(f):
        return 1127.0 * (1.0 + f / 700.0).log()

    nyquist = 0.5 * sample_rate
    mel_low, mel_high = 1127.0 * math.log(1.0 + low_freq / 700.0), 1127.0 * math.log(1.0 + nyquist / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)  # (bins, 1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    bin_mel = mel((sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=torch.float32)).unsqueeze(0)
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up, down))  # (bins, fft_size // 2)


def kaldi_fbank(x: torch.Tensor, num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Log mel energies [frames, bins] of a 1-D waveform, as ``kaldi.fbank(..., htk_compat=True,
    use_energy=False, window_type="hanning", dither=0, frame_length=25, frame_shift=10)``:
    snip_edges, per-frame DC removal, pre-emphasis 0.97, symmetric Hann, |rfft(512)|², natural log."""
    frames = x.unfold(0, FRAME_LENGTH, FRAME_SHIFT)  # (m, 400)
    frames = frames - frames.mean(dim=1).unsqueeze(1)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # the first sample is its own predecessor
    frames = frames - 0.97 * previous
    frames = frames * torch.hann_window(FRAME_LENGTH, periodic=False, dtype=x.dtype).unsqueeze(0)
    frames = F.pad(frames, (0, FFT_SIZE - FRAME_LENGTH))  # (m, 512)
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (m, 257)
    banks = F.pad(mel_banks(num_mel_bins, FFT_SIZE, float(sample_rate)).to(x.dtype), (0, 1))  # Nyquist bin: 0
    energies = torch.mm(power, banks.T)  # (m, bins)
    return torch.max(energies, torch.tensor(EPSILON, dtype=x.dtype)).log()


# ---------------------------------------------------------------- clips


def waveform_to_clips(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE, *, num_clips: int = NUM_CLIPS,
                      clip_seconds: int = CLIP_SECONDS, num_mel_bins: int = NUM_MEL_BINS,
                      target_length: int = TARGET_LENGTH, mean: float = FBANK_MEAN, std: float = FBANK_STD,
                      name: str = "<audio>") -> tuple[torch.Tensor, list[dict]]:
    """16 kHz float32 [C, N] -> normalised fbank clips [num_clips, 1, bins, target_length].

    UPSTREAM QUIRK, reproduced on purpose: each clip's mean (over *all* channels) is subtracted
    in place from a view of `waveform`, so when clips overlap (inputs shorter than 6 s) a later
    clip sees samples an earlier clip already shifted. The mel features then use channel 0 only.
    `waveform` is modified; pass a copy if you need it afterwards.
    """
    n = waveform.shape[1]
    out, info = [], []
    for start, end in clip_spans(n / sample_rate, clip_seconds, num_clips):
        a, b = int(start * sample_rate), int(end * sample_rate)
        clip = waveform[:, a:b]  # a view: the in-place subtraction below writes into `waveform`
        if clip.shape[1] < FRAME_LENGTH:
            raise EmptyMediaError(name, f"{n} samples at {sample_rate} Hz; at least {FRAME_LENGTH} (25 ms) are needed")
        clip_mean = clip.mean()
        clip -= clip_mean
        fbank = kaldi_fbank(clip[0], num_mel_bins, sample_rate).transpose(0, 1)  # (bins, frames)
        frames = fbank.shape[1]
        if abs(target_length - frames) / frames > 0.2:
            log.debug("%s: %d fbank frames padded or cut to %d", name, frames, target_length)
        fbank = F.pad(fbank, (0, target_length - frames)) if frames < target_length else fbank[:, :target_length]
        fbank = fbank.unsqueeze(0)  # (1, bins, target_length)
        out.append(fbank.sub(torch.tensor(mean, dtype=fbank.dtype)).div(torch.tensor(std, dtype=fbank.dtype)))
        info.append({"start_s": float(start), "end_s": float(end), "sample_start": a, "sample_end": a + clip.shape[1],
                     "fbank_frames": frames, "mean_removed": float(clip_mean)})
    return torch.stack(out), info


def load_audio(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False,
               sample_rate: int = SAMPLE_RATE, **clip_options) -> tuple[torch.Tensor, dict]:
    """Decode, resample and cut into clips -> float32 [3, 1, 128, 204] and metadata (always as upstream,
    so `exact_upstream` changes nothing). `clip_options` are those of `waveform_to_clips`."""
    waveform, rate, meta = decode_audio(source, fmt, limits)
    waveform = resample(waveform, rate, sample_rate).contiguous()
    tensor, clips = waveform_to_clips(waveform, sample_rate, name=source.name, **clip_options)
    meta.update(resampled_num_samples=waveform.shape[1], clips=clips)
    return tensor, meta
