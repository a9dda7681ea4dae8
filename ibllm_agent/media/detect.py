"""Detect a media format from its content (magic bytes, text headers), not from its name.

The file name is only a hint: a PNG named ``.jpg`` is read as the PNG it is, while plain text
named ``.wav`` is refused, because the name claims a binary format that the content is not.

Each format has one default modality; `can_load_as` says which others may read it when the caller
names one. Content alone never makes a picture a depth map or a thermal image: a 16-bit grey PNG is a
valid picture too (and a radiometric frame, and a disparity map), so PNG, TIFF, JPEG, ... stay images
unless the caller says otherwise (``modality="depth"``, a content block's ``extras.modality`` or its
``image/x-depth`` MIME type, the CLI's ``--depth``). A CSV whose header names accelerometer and gyroscope
axes is an IMU recording by its content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UnsupportedFormatError


@dataclass(frozen=True)
class Format:
    """A detected format."""

    kind: str
    """Short name: "jpeg", "wav", "mp4", "ply", ..."""
    modality: str
    """The modality this content is loaded as by default: image, audio, video, point, text."""
    mime: str
    """MIME type reported in `MediaInput.mime`."""
    demuxer: str | None = None
    """The ffmpeg demuxer forced for this content (forcing it keeps ffmpeg from guessing
    playlist or concat formats that could read other files)."""


_F = Format
JPEG = _F("jpeg", "image", "image/jpeg")
PNG = _F("png", "image", "image/png")
GIF = _F("gif", "image", "image/gif")
WEBP = _F("webp", "image", "image/webp")
BMP = _F("bmp", "image", "image/bmp")
TIFF = _F("tiff", "image", "image/tiff")
AVIF = _F("avif", "image", "image/avif")
HEIF = _F("heif", "image", "image/heif")
"""Recognised so that it is refused by name: Pillow has no HEIF decoder without a plugin."""
WAV = _F("wav", "audio", "audio/wav", "wav")
FLAC = _F("flac", "audio", "audio/flac", "flac")
OGG = _F("ogg", "audio", "audio/ogg", "ogg")
MP3 = _F("mp3", "audio", "audio/mpeg", "mp3")
AAC = _F("aac", "audio", "audio/aac", "aac")
AIFF = _F("aiff", "audio", "audio/aiff", "aiff")
M4A = _F("m4a", "audio", "audio/mp4", "mov")
MP4 = _F("mp4", "video", "video/mp4", "mov")
MOV = _F("mov", "video", "video/quicktime", "mov")
WEBM = _F("webm", "video", "video/webm", "matroska")
MKV = _F("mkv", "video", "video/x-matroska", "matroska")
AVI = _F("avi", "video", "video/x-msvideo", "avi")
OGV = _F("ogv", "video", "video/ogg", "ogg")
TORCH = _F("pt", "point", "application/x-pytorch")
NPY = _F("npy", "point", "application/x-npy")
NPZ = _F("npz", "point", "application/x-npz")
PLY = _F("ply", "point", "model/x-ply")
PCD = _F("pcd", "point", "model/x-pcd")
OFF = _F("off", "point", "model/x-off")
OBJ = _F("obj", "point", "model/obj")
XYZ = _F("xyz", "point", "model/x-xyz")
IMU_CSV = _F("csv", "imu", "text/csv")
"""A table whose header names the accelerometer and gyroscope axes (`IMU_AXIS`)."""
TEXT = _F("text", "text", "text/plain")

ALL_FORMATS = (JPEG, PNG, GIF, WEBP, BMP, TIFF, AVIF, WAV, FLAC, OGG, MP3, AAC, AIFF, M4A, MP4, MOV, WEBM, MKV, AVI,
               OGV, TORCH, NPY, NPZ, PLY, PCD, OFF, OBJ, XYZ, IMU_CSV, TEXT)
MIME_TO_MODALITY = {f.mime: f.modality for f in ALL_FORMATS}
"""For callers that route by MIME type (LangChain content blocks)."""

# Extensions that promise binary content: text under one of these names is refused.
_BINARY_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".heic", ".bmp", ".tif", ".tiff", ".wav", ".flac", ".ogg", ".oga",
    ".opus", ".mp3", ".aac", ".m4a", ".aif", ".aiff", ".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi",
    ".ogv", ".pt", ".pth", ".npy", ".npz",
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
_NUMERIC_ROW = re.compile(rf"^\s*(?:{_NUMBER})(?:[\s,;]+(?:{_NUMBER})){{2,}}[\s,;]*$", re.IGNORECASE)


_ONE_CHANNEL_MAPS = frozenset({"png", "tiff", "jpeg", "bmp", "webp", "npy", "npz"})
"""Pictures and arrays that may hold a depth map or a thermal image (one channel)."""
_ALSO_LOADS_AS: dict[str, frozenset[str]] = {
    "audio": frozenset({"mp4", "mov", "webm", "mkv", "avi", "ogv", "m4a"}),  # a container's sound track
    "video": frozenset({"gif"}),
    "text": frozenset({"text", "xyz", "obj", "off", "pcd", "ply", "csv"}),  # a textual file as its text
    "depth": _ONE_CHANNEL_MAPS,
    "thermal": _ONE_CHANNEL_MAPS,
    # numeric tables without an IMU header and arrays: the loader reads arrays of shape (6, T) or (T, 6)
    # and tells a headerless table what it lacks
    "imu": frozenset({"npy", "npz", "xyz", "text"}),
}
"""Modality -> the format kinds that may be read as it besides those whose default it is."""


def can_load_as(fmt: Format, modality: str) -> bool:
    """Whether content of format `fmt` can be loaded as `modality` (besides its own modality: the audio
    track of a video container, a GIF as video, a textual file as text, a one-channel picture or array as a
    depth map or a thermal image, an array as an IMU recording)."""
    return fmt.modality == modality or fmt.kind in _ALSO_LOADS_AS.get(modality, ())


def loadable_as(fmt: Format, modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The names in `modalities` that content of format `fmt` can be loaded as, its own modality first."""
    return tuple(sorted((m for m in modalities if can_load_as(fmt, m)), key=lambda m: m != fmt.modality))


# ---------------------------------------------------------------- IMU table headers

IMU_AXIS = re.compile(
    r"^(?P<sensor>acc(?:elerometer|el|l)?|a|gyr(?:oscope|o)?|g|w|omega)[\s_.\-]*(?P<axis>[xyz])(?P<rest>\b.*|_.*|)$")
"""A column name of an accelerometer (acc, accel, accl, accelerometer, a) or gyroscope (gyro, gyr, gyroscope,
g, w, omega) axis, lower-cased: `accl_x` (Ego4D), `acc_x (g)`, `ax`, `Gyro X [deg/s]`, `gz_dps`; `rest`
holds a unit, if any."""


def imu_columns(names: list[str]) -> dict[str, tuple[int, str]]:
    """{"acc_x": (column, unit text), ..., "gyr_z": ...} for the axis columns of a header (first match wins)."""
    found: dict[str, tuple[int, str]] = {}
    for i, name in enumerate(names):
        m = IMU_AXIS.match(name.strip().strip('"\'').lower())
        if m:
            sensor = "acc" if m["sensor"].startswith("a") else "gyr"
            found.setdefault(f"{sensor}_{m['axis']}", (i, m["rest"].strip(" _-.()[]")))
    return found


def split_header(line: str) -> tuple[list[str], str | None]:
    """The fields of a table's header line and its delimiter (None: runs of whitespace)."""
    for delimiter in (",", ";", "\t"):
        if delimiter in line:
            return [f.strip() for f in line.split(delimiter)], delimiter
    return line.split(), None


def _is_imu_header(line: str) -> bool:
    return len(imu_columns(split_header(line)[0])) == 6


def detect(head: bytes, name: str, suffix: str) -> Format:
    """The format of content starting with `head`. Raises UnsupportedFormatError when unknown."""
    fmt = _detect_binary(head)
    if fmt is None:
        fmt = _detect_text(head)
        if fmt is not None and suffix in _BINARY_SUFFIXES:
            raise UnsupportedFormatError(
                name, f"the name says {suffix} but the content is plain text ({fmt.kind}); refusing to guess"
            )
    if fmt is None:
        raise UnsupportedFormatError(
            name, f"unrecognised content (first bytes {head[:12].hex(' ')}); supported: "
            + ", ".join(sorted({f.kind for f in ALL_FORMATS})),
        )
    return fmt


def _detect_binary(h: bytes) -> Format | None:
    if h.startswith(b"\xff\xd8\xff"):
        return JPEG
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if h[:4] in (b"RIFF", b"RF64") and len(h) >= 12:
        return {b"WEBP": WEBP, b"WAVE": WAV, b"AVI ": AVI}.get(h[8:12])
    if h.startswith(b"BM") and len(h) >= 18 and int.from_bytes(h[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return BMP
    if h[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if h.startswith(b"fLaC"):
        return FLAC
    if h.startswith(b"OggS"):
        return OGV if b"theora" in h[:512] else OGG
    if h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"):
        return AIFF
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in (b"avif", b"avis"):
            return AVIF
        if brand in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"):
            return HEIF
        if brand in (b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "):
            return M4A
        return MOV if brand == b"qt  " else MP4
    if h[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip") and len(h) >= 8:
        return MOV
    if h.startswith(b"\x1a\x45\xdf\xa3"):
        return WEBM if b"webm" in h[:64] else MKV
    if h.startswith((b"ply\n", b"ply\r\n")):
        return PLY
    if h.startswith((b"# .PCD", b"VERSION")) and b"\nFIELDS" in h and b"\nDATA" in h:
        return PCD
    if h.startswith(b"\x93NUMPY"):
        return NPY
    if h.startswith(b"PK\x03\x04"):
        if b"data.pkl" in h or b"/data/" in h or b"version" in h[:200]:
            return TORCH
        if b".npy" in h[:200]:
            return NPZ
        return None
    if len(h) >= 2 and h[0] == 0x80 and 2 <= h[1] <= 5:
        return TORCH  # a legacy (non-zip) torch.save pickle
    if h.startswith(b"ID3") or _is_mpeg_audio_frame(h):
        return MP3
    if len(h) >= 2 and h[0] == 0xFF and (h[1] & 0xF6) == 0xF0:
        return AAC  # ADTS
    return None


def _is_mpeg_audio_frame(h: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, a valid version/layer, bitrate and rate index."""
    if len(h) < 4 or h[0] != 0xFF or (h[1] & 0xE0) != 0xE0:
        return False
    version, layer = (h[1] >> 3) & 3, (h[1] >> 1) & 3
    bitrate, rate = h[2] >> 4, (h[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def _detect_text(h: bytes) -> Format | None:
    if b"\x00" in h:
        return None
    try:
        text = h.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(h) - 4:  # not just a multi-byte character cut at the end of the head
            return None
        text = h[: e.start].decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [ln.strip() for ln in text.splitlines()]
    if len(h) >= 4096 and not text.endswith("\n") and len(lines) > 1:
        lines = lines[:-1]  # the head cut the last line short
    content = [ln for ln in lines if ln and not ln.startswith("#")]
    first = content[0] if content else ""
    if any(ln.startswith("FIELDS") for ln in content) and any(ln.startswith("DATA") for ln in content):
        return PCD
    if first.split()[:1] and first.split()[0] in ("OFF", "COFF", "NOFF", "CNOFF", "STOFF", "4OFF"):
        return OFF
    if first and _is_imu_header(first):
        return IMU_CSV
    if content and sum(ln.startswith("v ") for ln in content) >= max(1, len(content) // 4):
        return OBJ
    rows = content[1:] if content and not any(ch.isdigit() for ch in content[0]) else content  # a "x y z" header
    if rows and all(_NUMERIC_ROW.match(ln) for ln in rows[:50]):
        return XYZ
    return TEXT
