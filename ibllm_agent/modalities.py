"""The one registry of what ImageBind-LLM can take in: each modality, once, with everything every layer needs.

    >>> from ibllm_agent import modalities
    >>> modalities.MEDIA                          # what a user attaches
    ('image', 'video', 'audio', 'point', 'depth', 'thermal', 'imu')
    >>> modalities.get("audio").branch            # the ImageBind trunk that encodes it
    'audio'

Media detection, content blocks, the arithmetic grammar, the tools' argument schemas,
`ImageBindEmbeddings.embed_*`, the CLI flags, the cache build and the app all derive from this table
(tests/unit/test_modalities.py walks it and checks every layer accepts exactly these names).
Adding a modality: an entry here, a loader in `ibllm_agent/media/`, and for the toy a renderer in
`ibllm_agent/toy/` (README, "Extending: adding a modality").

Text is a modality too (ImageBind's text encoder: `text:"..."` in expressions, `embed_query`), but
not a medium: in a chat a text block is the question, so text has no block type or CLI flag.

Routing. A content block names its modality by `extras={"modality": ...}`, else by a MIME type one entry
lists exactly (`image/x-depth` in an image or file block is a depth map), else by its block type's first
entry (an image block is a picture), else (a file block without a telling MIME type) by its content. Depth
maps and thermal images arrive as image files, so they ride in image blocks; content alone never makes a
PNG a depth map (a 16-bit grey PNG is a valid picture too): the caller says so. An IMU recording rides in a
file block (`text/csv`, or detected by its header).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    """One kind of input and how each layer names, routes, loads and shows it."""

    name: str
    """Our name: the `MediaInput.modality`, the arithmetic prefix (`audio:rain.wav`), the tools' enum."""
    branch: str
    """ImageBind's branch that encodes it (images and videos share "vision")."""
    upstream_key: str
    """The key of the reference's `forward_visual` / `generate` inputs ("Image", "Audio", ...)."""
    noun: str
    """How help texts and prompts name one of them ("a picture", "a sound")."""
    loader: str
    """`module:function` that turns a `Source` of a detected `Format` into (tensor, metadata); imported
    only when such an input arrives, so decoders stay unloaded until needed."""
    block_type: str | None = None
    """LangChain v1 content block type that carries it (point clouds ride in "file" blocks); None = not
    a medium (text is the question)."""
    mime_types: tuple[str, ...] = ()
    """MIME types that say a block holds this modality; "image/*" matches the whole family."""
    suffixes: tuple[str, ...] = ()
    """File name endings offered by file pickers (content decides, never the name)."""
    aliases: tuple[str, ...] = ()
    """Other names accepted for it (`modality="photo"`)."""
    question: str = "Describe this input."
    """Asked when an input arrives without a question."""
    embed_method: str | None = None
    """The `ImageBindEmbeddings` method for a list of files of this modality (LangChain's names where
    they exist: langchain-chroma calls `embed_image`)."""
    icon: str = ""
    """Material symbol for the app (renders without an emoji font)."""
    preview: str | None = None
    """How the app shows one back: "image", "audio", "video", "points", "disparity" (false colour, near
    bright), "thermogram" (false colour, hot bright) or "traces" (one line per channel)."""

    @property
    def is_medium(self) -> bool:
        """Attached as a file or a content block (everything but text)."""
        return self.block_type is not None

    @property
    def cli_flag(self) -> str | None:
        return f"--{self.name}" if self.is_medium else None

    def load_function(self) -> Callable:
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)

    def accepts_mime(self, mime: str | None) -> bool:
        mime = (mime or "").lower().split(";")[0].strip()
        return any(mime == m or (m.endswith("/*") and mime.startswith(m[:-1])) for m in self.mime_types)


_MEDIA = "ibllm_agent.media."
FILE_BLOCK = "file"
"""LangChain's generic block type: its MIME type or its content says which medium it holds."""

REGISTRY: dict[str, Modality] = {m.name: m for m in (
    Modality("image", "vision", "Image", "a picture", _MEDIA + "image:load_image", block_type="image",
             mime_types=("image/*",), suffixes=("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"),
             aliases=("vision", "picture", "photo"), question="What is in this picture?", embed_method="embed_image",
             icon=":material/image:", preview="image"),
    Modality("video", "vision", "Video", "a clip", _MEDIA + "video:load_video", block_type="video",
             mime_types=("video/*",), suffixes=("mp4", "webm", "mov", "avi", "mkv", "ogv"), aliases=("clip", "movie"),
             question="What do you see?", embed_method="embed_video", icon=":material/movie:", preview="video"),
    Modality("audio", "audio", "Audio", "a sound", _MEDIA + "audio:load_audio", block_type="audio",
             mime_types=("audio/*",), suffixes=("wav", "mp3", "ogg", "oga", "opus", "flac", "m4a", "aac", "aif", "aiff"),
             aliases=("sound",), question="What do you hear?", embed_method="embed_audio",
             icon=":material/graphic_eq:", preview="audio"),
    Modality("point", "point", "Point", "a 3D shape", _MEDIA + "points:load_points", block_type=FILE_BLOCK,
             mime_types=("model/ply", "model/x-ply", "application/ply", "model/obj", "model/x-obj", "model/x-off",
                         "model/x-xyz", "chemical/x-xyz", "text/x-xyz", "model/x-pcd", "application/x-pcd",
                         "application/x-npy", "application/npy", "application/x-npz", "application/x-pytorch"),
             suffixes=("ply", "obj", "off", "xyz", "pcd", "npy", "npz", "pt"),
             aliases=("points", "point_cloud", "pointcloud", "3d", "shape"), question="What is this 3D shape?",
             embed_method="embed_point_cloud", icon=":material/view_in_ar:", preview="points"),
    Modality("depth", "depth", "Depth", "a depth map", _MEDIA + "depth:load_depth", block_type="image",
             mime_types=("image/x-depth",), suffixes=("png", "tif", "tiff", "npy", "npz", "jpg", "jpeg"),
             aliases=("disparity", "depth_map"), question="What is this?", embed_method="embed_depth",
             icon=":material/layers:", preview="disparity"),
    Modality("thermal", "thermal", "Thermal", "a thermal image", _MEDIA + "thermal:load_thermal", block_type="image",
             mime_types=("image/x-thermal",), suffixes=("png", "tif", "tiff", "jpg", "jpeg", "bmp", "npy", "npz"),
             aliases=("infrared", "ir", "thermogram", "heat"), question="What is this?", embed_method="embed_thermal",
             icon=":material/thermostat:", preview="thermogram"),
    Modality("imu", "imu", "IMU", "an IMU recording", _MEDIA + "imu:load_imu", block_type=FILE_BLOCK,
             mime_types=("text/csv", "application/csv", "text/x-imu+csv"), suffixes=("csv", "npy", "npz"),
             aliases=("motion", "inertial", "accelerometer", "gyroscope"), question="What is this?",
             embed_method="embed_imu", icon=":material/vibration:", preview="traces"),
    Modality("text", "text", "Text", "a text", _MEDIA + "text:load_text_file", mime_types=("text/plain",),
             suffixes=("txt",), question="What does this text describe?"),
)}
"""Every modality, in the order menus show them."""

NAMES: tuple[str, ...] = tuple(REGISTRY)
"""All modality names, text included."""
MEDIA: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if m.is_medium)
"""The modalities a user attaches as files or content blocks."""
DETECT = "media"
"""The arithmetic prefix (and tool value) meaning "detect the modality from the content"."""

_BY_ALIAS = {alias: m for m in REGISTRY.values() for alias in (m.name, *m.aliases)}


class UnknownModalityError(ValueError):
    """A modality name that is not in the registry."""


def get(name: str) -> Modality:
    """The modality called `name` (or one of its aliases, any case)."""
    found = _BY_ALIAS.get(str(name).lower())
    if found is None:
        raise UnknownModalityError(f"unknown modality {name!r}; expected one of {', '.join(NAMES)}")
    return found


def canonical(name: str | None) -> str | None:
    """The registry name of `name` (aliases resolved); None stays None (= detect from the content)."""
    return None if name is None else get(name).name


def for_mime(mime: str | None, *, media_only: bool = True) -> Modality | None:
    """The modality whose MIME types include `mime` (one that lists it exactly before a family like
    "image/*"), or None."""
    candidates = [m for m in REGISTRY.values() if (m.is_medium or not media_only) and m.accepts_mime(mime)]
    return next((m for m in candidates if _exact_mime(m, mime)), candidates[0] if candidates else None)


def for_block_type(block_type: str, mime: str | None = None) -> Modality | None:
    """The modality a content block type names ("image", "audio", "video"; "file" names none): the entry of
    that block type that lists `mime` exactly (an image block of type image/x-depth is a depth map), else
    the first entry of that block type."""
    if block_type == FILE_BLOCK:
        return None
    of_type = [m for m in REGISTRY.values() if m.block_type == block_type]
    return next((m for m in of_type if _exact_mime(m, mime)), of_type[0] if of_type else None)


def _exact_mime(modality: Modality, mime: str | None) -> bool:
    return (mime or "").lower().split(";")[0].strip() in modality.mime_types


def block_types() -> tuple[str, ...]:
    """Content block types that carry media."""
    return tuple(dict.fromkeys(m.block_type for m in REGISTRY.values() if m.is_medium))


def describe(names: tuple[str, ...] = MEDIA) -> str:
    """"a picture, a clip, a sound or a 3D shape" for help texts."""
    nouns = [REGISTRY[n].noun for n in names]
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]
