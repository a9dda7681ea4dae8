"""LangChain message content -> the question text and the media (or embeddings) of one turn.

Accepted (read through `message.content_blocks`, which normalises older shapes to v1 blocks):

- ``{"type": "text", "text": ...}`` and plain strings: the question;
- ``{"type": "image" | "audio" | "video", "base64": ..., "mime_type": ...}`` or ``"url": path | file://... |
  data:...;base64,... | http(s)://...`` (URLs only when the policy allows them);
- ``{"type": "file", ..., "mime_type": "model/ply" | "model/obj" | "application/x-npy" | ...}``: a point
  cloud (or any medium the content detection recognises); ``extras={"modality": "point"}`` forces it;
- the older OpenAI ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``;
- ``{"type": "imagebind_embedding", "embedding": [...1024 floats], "weight": w}`` (arrives as a
  ``non_standard`` block): a pre-computed ImageBind embedding, e.g. an arithmetic tool's result;
  `embedding_block()` builds one.

Every media block may carry ``extras={"weight": w}``: all media of a turn are fused with these
weights (default 1.0; negative weights subtract, see `ibllm_agent.arithmetic.combine`).
"""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from langchain_core.messages import BaseMessage

from ibllm_agent.sources import SourceError, SourcePolicy

EMBEDDING_BLOCK = "imagebind_embedding"

# MIME types whose modality the block type does not say (file blocks); others are detected from content.
POINT_MIME_TYPES = {
    "model/ply", "application/ply", "model/x-ply", "model/obj", "application/x-tgif", "model/x-obj",
    "application/x-npy", "application/npy", "chemical/x-xyz", "text/x-xyz", "model/x-xyz",
    "application/x-pcd", "model/x-pcd", "application/x-pytorch",
}
_BLOCK_MODALITY = {"image": "image", "audio": "audio", "video": "video"}
MODALITIES = ("image", "audio", "video", "point", "text")


class ContentError(ValueError):
    """A content block that cannot be used (malformed, refused by the source policy, unknown type)."""


@dataclass(frozen=True)
class MediaPart:
    """One medium of a turn: raw bytes or a confined local path, a modality hint, a fusion weight."""

    source: Path | bytes
    modality: str | None  # None = detect from the content
    name: str
    weight: float = 1.0
    mime_type: str | None = None


@dataclass(frozen=True)
class EmbeddingPart:
    """A pre-computed ImageBind embedding conditioning a turn."""

    vector: torch.Tensor  # (D,) float32
    weight: float = 1.0
    name: str = "embedding"


@dataclass
class Turn:
    """What one human message asks: its text and its media, in block order."""

    text: str = ""
    parts: list[MediaPart | EmbeddingPart] = field(default_factory=list)


def embedding_block(vector: Sequence[float] | torch.Tensor, weight: float = 1.0, name: str = "embedding") -> dict:
    """A content block carrying a pre-computed ImageBind embedding (JSON-serialisable)."""
    values = vector.detach().float().cpu().tolist() if isinstance(vector, torch.Tensor) else [float(v) for v in vector]
    return {"type": EMBEDDING_BLOCK, "embedding": values, "weight": float(weight), "name": name}


def parse_message(message: BaseMessage, policy: SourcePolicy) -> Turn:
    """Split a message into question text and media parts; raises ContentError with the block index."""
    turn = Turn()
    texts = []
    for index, block in enumerate(message.content_blocks):
        try:
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "text-plain":
                texts.append(block.get("text") or _decode_text(block))
            elif kind in ("image", "audio", "video", "file"):
                turn.parts.append(_media_part(block, policy, index))
            elif kind == "non_standard":
                turn.parts.append(_non_standard_part(block.get("value") or {}, policy, index))
            elif kind in ("reasoning", "tool_call", "tool_call_chunk", "invalid_tool_call"):
                continue
            else:
                raise ContentError(f"unsupported content block type {kind!r}")
        except (SourceError, ContentError) as exc:  # both carry a readable reason; add which block
            raise ContentError(f"content block {index}: {exc}") from None
    turn.text = "\n".join(t for t in texts if t)
    return turn


def _weight(value, where: str = "weight") -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ContentError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(weight):
        raise ContentError(f"{where} must be finite, got {value!r}")
    return weight


def _modality(block: dict) -> str | None:
    extras = block.get("extras") or {}
    forced = extras.get("modality")
    if forced is not None:
        if forced not in MODALITIES:
            raise ContentError(f"extras.modality must be one of {', '.join(MODALITIES)}, got {forced!r}")
        return forced
    if block["type"] in _BLOCK_MODALITY:
        return _BLOCK_MODALITY[block["type"]]
    mime = (block.get("mime_type") or "").lower()
    if mime in POINT_MIME_TYPES:
        return "point"
    return next((m for m in ("image", "audio", "video") if mime.startswith(m + "/")), None)


def _media_part(block: dict, policy: SourcePolicy, index: int) -> MediaPart:
    extras = block.get("extras") or {}
    weight = _weight(extras.get("weight", 1.0), "extras.weight")
    modality = _modality(block)
    mime = block.get("mime_type")
    name = extras.get("filename") or block.get("id") or f"{block['type']}-{index}"
    if block.get("base64") is not None:
        return MediaPart(_decode_base64(block["base64"], policy), modality, name, weight, mime)
    url = block.get("url")
    if url:
        if url.startswith("data:"):
            data, data_mime = _decode_data_url(url, policy)
            return MediaPart(data, modality, name, weight, mime or data_mime)
        source, display = policy.read(url)
        return MediaPart(source, modality, display, weight, mime)
    if block.get("file_id"):
        raise ContentError("file_id references need a provider file store; send base64 data or a local file")
    raise ContentError(f"{block['type']} block has neither base64 data nor a url")


def _non_standard_part(value: dict, policy: SourcePolicy, index: int) -> MediaPart | EmbeddingPart:
    kind = value.get("type")
    if kind == EMBEDDING_BLOCK:
        raw = value.get("embedding")
        try:
            vector = torch.tensor(raw, dtype=torch.float32)
        except (TypeError, ValueError):
            raise ContentError("imagebind_embedding needs 'embedding': a list of numbers") from None
        if vector.ndim != 1 or vector.numel() == 0 or not bool(torch.isfinite(vector).all()):
            raise ContentError("imagebind_embedding must be a non-empty, finite, flat list of numbers")
        return EmbeddingPart(vector, _weight(value.get("weight", 1.0)), str(value.get("name", "embedding")))
    if kind == "image_url":  # an image_url whose url is not a data URI, e.g. a local path
        url = value.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ContentError("image_url block without a url")
        return _media_part({"type": "image", "url": url}, policy, index)
    raise ContentError(f"unsupported non-standard content block {kind!r}")


def _decode_base64(data: str, policy: SourcePolicy) -> bytes:
    if len(data) * 3 // 4 > policy.max_bytes:
        raise ContentError(f"inline data is larger than the limit of {policy.max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ContentError("base64 data is malformed") from None


def _decode_data_url(url: str, policy: SourcePolicy) -> tuple[bytes, str | None]:
    header, _, payload = url.partition(",")
    mime = header[5:].split(";")[0] or None
    if header.endswith(";base64"):
        return _decode_base64(payload, policy), mime
    return urllib.parse.unquote_to_bytes(payload), mime


def _decode_text(block: dict) -> str:
    if block.get("base64"):
        return base64.b64decode(block["base64"]).decode("utf-8", errors="replace")
    return ""
