"""Files the user attaches: validated once on upload, then weighted, shown back and sent to the chat model.

An `Attachment` keeps the raw bytes (to show the file back and to send it as a LangChain content
block) next to the decoded `MediaInput` (which proves the file is usable before any question is asked,
and feeds the embedding explorer). Anything wrong with a file becomes an `AttachmentError` whose
message is written for the person at the keyboard.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ibllm_agent import modalities
from ibllm_agent.media import MediaError, MediaInput, detect_format, load_media
from ibllm_agent.media.detect import loadable_as

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 50
"""Per-file upload limit; the same number is set as server.maxUploadSize in ui/.streamlit/config.toml."""

FILE_TYPES: dict[str, tuple[str, ...]] = {m: modalities.get(m).suffixes for m in modalities.MEDIA}
"""Extensions offered in the file pickers, by medium (the content decides the modality, not the name)."""

ALL_FILE_TYPES = list(dict.fromkeys(ext for exts in FILE_TYPES.values() for ext in exts))
"""Each once (a PNG may be a picture, a depth map or a thermal image)."""

MODALITY_ICONS = {m: modalities.get(m).icon for m in modalities.MEDIA}
"""Streamlit's bundled Material Symbols (they render without an emoji font, e.g. in headless Chromium)."""


class AttachmentError(ValueError):
    """A file the app cannot use; the message is shown to the user as is."""


@dataclass
class Attachment:
    """One attached file, its decoded media and its place in the mixture."""

    name: str
    data: bytes
    media: MediaInput
    weight: float = 1.0
    """Mixing weight (the paper's modality mixture): how much this input counts in the fused query."""
    subtract: bool = False
    """Subtract this input instead of adding it (embedding arithmetic)."""

    @property
    def modality(self) -> str:
        return self.media.modality

    @property
    def key(self) -> str:
        """Stable id for widgets and de-duplication: the content hash."""
        return self.media.sha256[:16]

    @property
    def signed_weight(self) -> float:
        return -self.weight if self.subtract else self.weight

    @property
    def mime(self) -> str:
        return self.media.mime or "application/octet-stream"

    @property
    def plain_label(self) -> str:
        """Name and weight as plain text, e.g. `rain.wav ×0.6` (tables, chart axes)."""
        sign = "−" if self.subtract else ""
        weight = f" ×{sign}{self.weight:g}" if self.subtract or self.weight != 1.0 else ""
        return f"{self.name}{weight}"

    @property
    def label(self) -> str:
        """The same as Streamlit markdown, with the modality's icon."""
        return f"{MODALITY_ICONS[self.modality]} {self.plain_label}"

    @property
    def alternatives(self) -> tuple[str, ...]:
        """The media this file can be read as, the one its content says first: a PNG is a picture, a depth
        map or a thermal image; an MP4 a clip or a sound."""
        try:
            return loadable_as(detect_format(self.data, name=self.name), modalities.MEDIA)
        except MediaError:
            return (self.modality,)

    def read_as(self, modality: str) -> Attachment:
        """The same file read as `modality` (weight and sign kept); AttachmentError if it cannot be."""
        return replace(read_upload(self.name, self.data, modality=modality), weight=self.weight,
                       subtract=self.subtract)

    def content_block(self) -> dict:
        """A LangChain v1 content block (base64) carrying the file, its name and its signed weight."""
        extras = {"filename": self.name, "weight": self.signed_weight, "modality": self.modality}
        return {"type": modalities.get(self.modality).block_type, "base64": base64.b64encode(self.data).decode("ascii"),
                "mime_type": self.mime, "extras": extras}


def read_upload(name: str, data: bytes, *, max_mb: float = MAX_UPLOAD_MB, modality: str | None = None) -> Attachment:
    """Decode an uploaded file into an `Attachment` (as `modality`, or as what its content is), or raise
    `AttachmentError` with a friendly message."""
    size_mb = len(data) / 2**20
    if size_mb > max_mb:
        raise AttachmentError(f"**{name}** is {size_mb:.1f} MB; files up to {max_mb:g} MB are accepted.")
    if not data:
        raise AttachmentError(f"**{name}** is empty.")
    try:
        media = load_media(data, modality, name=name)
    except MediaError as exc:
        raise AttachmentError(f"**{name}** cannot be used: {exc.problem}") from exc
    if media.modality not in modalities.MEDIA:
        raise AttachmentError(f"**{name}** looks like {media.modality}; attach {modalities.describe()} "
                              "(type text questions in the chat box).")
    log.info("attached %s as %s (%d bytes)", name, media.modality, len(data))
    return Attachment(name=name, data=data, media=media)


def read_uploads(files) -> tuple[list[Attachment], list[str]]:
    """Decode Streamlit `UploadedFile`s; returns the attachments and the friendly errors of the files that failed."""
    attachments, errors = [], []
    for f in files:
        try:
            attachments.append(read_upload(f.name, f.getvalue()))
        except AttachmentError as exc:
            errors.append(str(exc))
    return attachments, errors


def browser_video(data: bytes, suffix: str = ".mp4") -> bytes:
    """The video re-encoded as H.264 MP4, which every browser plays (OpenCV writes MPEG-4 part 2, which
    Chromium does not); the original bytes if ffmpeg fails. Only for showing the clip back."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / f"in{suffix}", Path(tmp) / "out.mp4"
        src.write_bytes(data)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-c:v", "libx264",
               "-preset", "veryfast", "-pix_fmt", "yuv420p", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
               "-c:a", "aac", "-movflags", "+faststart", str(dst)]
        result = subprocess.run(cmd, capture_output=True, timeout=120)
        if result.returncode != 0 or not dst.is_file():
            log.warning("could not re-encode a video for the browser: %s", result.stderr.decode()[-300:])
            return data
        return dst.read_bytes()


def mixture_summary(attachments: list[Attachment]) -> str:
    """The fused query as markdown, e.g. `:material/graphic_eq: rain.wav ×0.6 + :material/image: dog.png`."""
    parts = []
    for i, att in enumerate(attachments):
        sign = "− " if att.subtract else ("+ " if i else "")
        weight = "" if att.weight == 1.0 else f" ×{att.weight:g}"
        parts.append(f"{sign}{MODALITY_ICONS[att.modality]} {att.name}{weight}")
    return " ".join(parts)
