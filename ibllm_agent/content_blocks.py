"""LangChain message content -> the question text and the media (or embeddings) one human message sends.

Accepted (read through `message.content_blocks`, which normalises older shapes to v1 blocks):

- ``{"type": "text", "text": ...}``, plain strings and ``text-plain`` documents: the question;
- a block of each medium of the modality registry (`ibllm_agent.modalities`): ``{"type": "image" |
  "audio" | "video", "base64": ..., "mime_type": ...}`` or ``"url": path | file://... | data:... |
  http(s)://...`` (URLs only when the policy allows them), and ``{"type": "file", ..., "mime_type": ...}``
  for point clouds (``model/ply``, ``model/obj``, ...) or any medium; ``extras={"modality": "point"}``
  names the modality outright; a file block without a MIME type (or ``application/octet-stream``) is
  recognised from its content;
- the older OpenAI ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``;
- ``{"type": "imagebind_embedding", "embedding": [...1024 floats], "weight": w}`` (arrives as a
  ``non_standard`` block): a pre-computed ImageBind embedding, e.g. an arithmetic tool's result;
  `embedding_block()` builds one.

Nothing is dropped silently. A block this model cannot read (a PDF, an Office document, an unknown
type, someone else's ``non_standard`` block) raises `UnsupportedContentError` naming the block, its
index and what is supported, unless the caller opts in to skipping (``on_unsupported="skip"``), and
then every skipped block is listed in `Question.ignored`. Malformed blocks (bad base64, a URL that is
not a string, a path outside the media folders) are always errors.

Every media block may carry ``extras={"weight": w}``: the inputs of a message are fused with these
weights (default 1.0; negative weights subtract, see `ibllm_agent.fusion`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from langchain_core.messages import BaseMessage

from ibllm_agent import modalities
from ibllm_agent.sources import SourceError, SourcePolicy

logger = logging.getLogger(__name__)

EMBEDDING_BLOCK = "imagebind_embedding"
GENERIC_MIME_TYPES = ("", "application/octet-stream", "binary/octet-stream")
"""MIME types that say nothing: the content decides."""
MAX_TEXT_CHARS = 200_000
"""Characters of text one message may carry (the 7B's context holds a few thousand words; the tokenizer
would otherwise spend seconds and gigabytes on a runaway paste before the context check refuses it)."""

OnUnsupported = Literal["error", "skip"]


class ContentError(ValueError):
    """A content block that cannot be used (malformed, refused by the source policy, unsupported)."""


class UnsupportedContentError(ContentError):
    """A well-formed block of a kind this model cannot read (a PDF, an unknown block type)."""


@dataclass(frozen=True)
class MediaPart:
    """One medium of a message: its bytes (read once through the source policy), modality, fusion weight."""

    source: bytes
    modality: str | None  # None = detect from the content
    name: str
    weight: float = 1.0
    mime_type: str | None = None


@dataclass(frozen=True)
class EmbeddingPart:
    """A pre-computed ImageBind embedding conditioning a message."""

    vector: torch.Tensor  # (D,) float32
    weight: float = 1.0
    name: str = "embedding"


@dataclass
class Question:
    """What one human message asks: its text, its media in block order, and the blocks skipped."""

    text: str = ""
    parts: list[MediaPart | EmbeddingPart] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)
    """One entry per block left out under ``on_unsupported="skip"``: index, type, mime_type, reason."""


def supported_summary() -> str:
    """What a message may carry, for error messages."""
    media = ", ".join(f"{m.name} ({m.block_type} blocks{', ' + ', '.join(m.mime_types[:3]) if m.mime_types else ''})"
                      for m in (modalities.get(n) for n in modalities.MEDIA))
    return f"text, {media}, and {EMBEDDING_BLOCK} blocks"


def embedding_block(vector: Sequence[float] | torch.Tensor, weight: float = 1.0, name: str = "embedding") -> dict:
    """A content block carrying a pre-computed ImageBind embedding (JSON-serialisable)."""
    values = vector.detach().float().cpu().tolist() if isinstance(vector, torch.Tensor) else [float(v) for v in vector]
    return {"type": EMBEDDING_BLOCK, "embedding": values, "weight": float(weight), "name": name}


def parse_message(message: BaseMessage, policy: SourcePolicy, *, on_unsupported: OnUnsupported = "error",
                  max_text_chars: int = MAX_TEXT_CHARS) -> Question:
    """Split a message into question text and media parts; raises ContentError naming the block."""
    if on_unsupported not in ("error", "skip"):
        raise ValueError(f"on_unsupported must be 'error' or 'skip', got {on_unsupported!r}")
    if isinstance(message.content, str) and len(message.content) > max_text_chars:
        raise ContentError(f"the message has {len(message.content)} characters, more than the limit of "
                           f"{max_text_chars}")
    question = Question()
    texts, chars = [], 0
    for index, block in enumerate(message.content_blocks):
        kind = block.get("type")
        try:
            if kind in ("text", "text-plain"):
                text = block.get("text")
                if text is None and kind == "text-plain":
                    text = _decode_text(block, policy)
                if not isinstance(text, str):
                    raise ContentError(f"'text' must be a string, got {type(text).__name__}")
                chars += len(text)
                if chars > max_text_chars:
                    raise ContentError(f"the message's text is longer than the limit of {max_text_chars} characters")
                texts.append(text)
            elif kind in modalities.block_types():
                question.parts.append(_media_part(block, policy, index))
            elif kind == "non_standard":
                question.parts.append(_non_standard_part(block.get("value"), policy, index))
            else:
                raise UnsupportedContentError(f"{kind!r} blocks are not supported")
        except UnsupportedContentError as exc:
            if on_unsupported == "error":
                raise UnsupportedContentError(f"content block {index} ({_describe(block)}): {exc}; this model "
                                              f"reads {supported_summary()}") from None
            question.ignored.append({"index": index, "type": kind, "mime_type": block.get("mime_type"),
                                     "reason": str(exc)})
            logger.warning("content block %d (%s) ignored: %s", index, _describe(block), exc)
        except (SourceError, ContentError) as exc:  # both carry a readable reason; add which block
            raise ContentError(f"content block {index} ({_describe(block)}): {exc}") from None
    question.text = "\n".join(t for t in texts if t)
    return question


def _describe(block: dict) -> str:
    mime = block.get("mime_type")
    return f"{block.get('type')}{', ' + str(mime) if mime else ''}"


def _weight(value, where: str = "weight") -> float:
    if isinstance(value, bool):
        raise ContentError(f"{where} must be a number, got {value!r}")
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ContentError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(weight):
        raise ContentError(f"{where} must be finite, got {value!r}")
    return weight


def _str_field(block: dict, key: str) -> str | None:
    value = block.get(key)
    if value is not None and not isinstance(value, str):
        raise ContentError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _modality(block: dict, extras: dict) -> str | None:
    """The registry modality a media block names, None when only its content can tell."""
    forced = extras.get("modality")
    if forced is not None:
        try:
            modality = modalities.get(forced)
        except (modalities.UnknownModalityError, TypeError):
            modality = None
        if modality is None or not modality.is_medium:
            raise ContentError(f"extras.modality must be one of {', '.join(modalities.MEDIA)}, got {forced!r}")
        return modality.name
    mime = _mime(block)
    by_type = modalities.for_block_type(block["type"])
    if by_type is not None:
        if mime not in GENERIC_MIME_TYPES and not by_type.accepts_mime(mime):
            raise UnsupportedContentError(f"an {block['type']} block with MIME type {mime!r}")
        return by_type.name
    if mime in GENERIC_MIME_TYPES:
        return None
    by_mime = modalities.for_mime(mime)
    if by_mime is None:
        raise UnsupportedContentError(f"MIME type {mime!r} is not a medium this model reads")
    return by_mime.name


def _mime(block: dict) -> str:
    mime = (block.get("mime_type") or "").lower().split(";")[0].strip()
    if mime == "application/pdf" and block["type"] == modalities.FILE_BLOCK and not _starts_like_pdf(block):
        # LangChain turns every OpenAI file part into a "PDF" (OpenAI takes only PDFs there), losing the
        # part's own type: a "PDF" that is not one is told by its content
        return ""
    return mime


def _starts_like_pdf(block: dict) -> bool:
    data = block.get("base64")
    return not isinstance(data, str) or base64.b64decode(data[:8] + "=" * (-len(data[:8]) % 4), validate=False) \
        .startswith(b"%PDF")


def _media_part(block: dict, policy: SourcePolicy, index: int) -> MediaPart:
    extras = block.get("extras") or {}
    if not isinstance(extras, dict):
        raise ContentError(f"'extras' must be an object, got {type(extras).__name__}")
    weight = _weight(extras.get("weight", 1.0), "extras.weight")
    mime = _str_field(block, "mime_type")
    modality = _modality(block, extras)
    name = extras.get("filename") or block.get("id") or f"{block['type']}-{index}"
    if not isinstance(name, str):
        raise ContentError(f"extras.filename must be a string, got {type(name).__name__}")
    data = _str_field(block, "base64")
    url = _str_field(block, "url")
    if data is not None:
        source = _decode_base64(data, policy)
    elif url:
        if url.startswith("data:"):
            source, data_mime = _decode_data_url(url, policy)
            mime = mime or data_mime
        else:
            source, name = policy.read(url)
    elif block.get("file_id"):
        raise ContentError("file_id references need a provider file store; send base64 data or a local file")
    else:
        raise ContentError(f"{block['type']} block has neither base64 data nor a url")
    if modality is None:
        modality = _detected_medium(source, name)
    return MediaPart(source, modality, name, weight, mime)


def _detected_medium(source: bytes, name: str) -> str:
    """The medium the content is, for blocks whose type and MIME type do not say."""
    from ibllm_agent.media import MediaError, detect_format

    try:
        fmt = detect_format(source, name=name)
    except MediaError as exc:
        raise UnsupportedContentError(f"the content is no medium this model reads ({exc.problem})") from None
    if fmt.modality not in modalities.MEDIA:
        raise UnsupportedContentError(f"the content is {fmt.kind}, not a medium this model reads (send text "
                                      "as a text block)")
    return fmt.modality


def _non_standard_part(value, policy: SourcePolicy, index: int) -> MediaPart | EmbeddingPart:
    if not isinstance(value, dict):
        raise UnsupportedContentError("a non_standard block without a value object")
    kind = value.get("type")
    if kind == EMBEDDING_BLOCK:
        raw = value.get("embedding")
        try:
            vector = torch.tensor(raw, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ContentError("imagebind_embedding needs 'embedding': a list of numbers") from None
        if vector.ndim != 1 or vector.numel() == 0 or not bool(torch.isfinite(vector).all()):
            raise ContentError("imagebind_embedding must be a non-empty, finite, flat list of numbers")
        if not bool(vector.any()):
            raise ContentError("imagebind_embedding is all zeros: it has no direction (zero means 'no media' "
                               "to the model); drop the block for a text-only question")
        name = value.get("name", "embedding")
        return EmbeddingPart(vector, _weight(value.get("weight", 1.0)), str(name))
    if kind == "image_url":  # an image_url whose url is not a data URI, e.g. a local path
        url = value.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ContentError("image_url block without a url")
        return _media_part({"type": "image", "url": url}, policy, index)
    raise UnsupportedContentError(f"non-standard block {kind!r} is not one of ours ({EMBEDDING_BLOCK}, image_url)")


_WHITESPACE = re.compile(r"\s+")


def _decode_base64(data: str, policy: SourcePolicy) -> bytes:
    """Standard base64, line-wrapped (MIME) or not, refused before decoding when over the byte limit."""
    limit = policy.max_bytes
    if len(data) > 2 * limit + 1024:  # far beyond any wrapping: refuse before copying it
        raise ContentError(f"inline data is larger than the limit of {limit} bytes")
    compact = _WHITESPACE.sub("", data)
    if len(compact) * 3 // 4 - compact[-2:].count("=") > limit:
        raise ContentError(f"inline data is larger than the limit of {limit} bytes")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ContentError("base64 data is malformed") from None


def _decode_data_url(url: str, policy: SourcePolicy) -> tuple[bytes, str | None]:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ContentError("a data: URL needs a ',' before its data")
    mime = header[5:].split(";")[0] or None
    if header.endswith(";base64"):
        return _decode_base64(payload, policy), mime
    if len(payload) > 3 * policy.max_bytes:  # each byte takes at most 3 characters (%xx)
        raise ContentError(f"inline data is larger than the limit of {policy.max_bytes} bytes")
    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > policy.max_bytes:
        raise ContentError(f"inline data is larger than the limit of {policy.max_bytes} bytes")
    return data, mime


def _decode_text(block: dict, policy: SourcePolicy) -> str:
    data = _str_field(block, "base64")
    if data is None:
        raise ContentError("a text-plain block needs 'text' or 'base64'")
    return _decode_base64(data, policy).decode("utf-8", errors="replace")
