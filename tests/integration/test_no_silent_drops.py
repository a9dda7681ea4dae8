"""Nothing the user sends is silently dropped: every standard block type with every common MIME type either
conditions the answer (the registry supports it; the answer's metadata names it) or raises a typed error;
under on_unsupported="skip" what was left out is listed. Real files through real encoders."""

from __future__ import annotations

import base64
import io
import subprocess
import zipfile

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import ContentError, UnsupportedContentError
from ibllm_agent.fusion import FusionError
from ibllm_agent.media import MediaError
from ibllm_agent.media.audio import ffmpeg_exe

TYPED = (ContentError, MediaError, FusionError)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _zip(entries: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in entries.items():
            z.writestr(name, text)
    return buf.getvalue()


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (30, 160, 90)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, tuple[str, bytes, str | None]]:
    """name -> (MIME type, bytes, the modality the registry reads it as, or None: not a medium)."""
    d = tmp_path_factory.mktemp("formats")
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=16000"]
    _ffmpeg(*tone, "-c:a", "libvorbis", str(d / "a.ogg"))
    _ffmpeg(*tone, "-c:a", "flac", str(d / "a.flac"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=8:duration=2", "-c:v", "libvpx-vp9", "-b:v", "100k",
            str(d / "v.webm"))
    cloud = "\n".join(f"{x} {y} {z}" for x, y, z in ((i % 7, i % 5, i % 3) for i in range(200)))
    ply = "ply\nformat ascii 1.0\nelement vertex 200\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    return {
        "PDF": ("application/pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
                None),
        "DOCX": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                 _zip({"[Content_Types].xml": "<Types/>", "word/document.xml": "<w:document/>"}), None),
        "ZIP": ("application/zip", _zip({"notes.txt": "hello"}), None),
        "JSON": ("application/json", b'{"question": "what is this?"}', None),
        "HTML": ("text/html", b"<!doctype html><html><body><p>a dog</p></body></html>", None),
        "SVG": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect/></svg>', None),
        "GIF": ("image/gif", _image("GIF"), "image"),
        "WebP": ("image/webp", _image("WEBP"), "image"),
        "HEIC": ("image/heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, None),
        "OGG": ("audio/ogg", (d / "a.ogg").read_bytes(), "audio"),
        "FLAC": ("audio/flac", (d / "a.flac").read_bytes(), "audio"),
        "WebM": ("video/webm", (d / "v.webm").read_bytes(), "video"),
        "PLY": ("model/ply", (ply + cloud + "\n").encode(), "point"),
        "OBJ": ("model/obj", "\n".join("v " + line for line in cloud.splitlines()).encode(), "point"),
    }


@pytest.fixture(scope="module")
def chat():
    return ChatImageBindLLM(model="tiny", temperature=0, max_tokens=2)


def _blocks(mime: str, data: bytes, name: str) -> dict[str, dict]:
    b64 = base64.b64encode(data).decode()
    standard = {kind: {"type": kind, "base64": b64, "mime_type": mime, "extras": {"filename": name}}
                for kind in ("image", "audio", "video", "file")}
    fmt = mime.split("/")[-1]
    return {**standard,
            "openai image_url": {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}},
            "openai input_audio": {"type": "input_audio", "input_audio": {"data": b64, "format": fmt}},
            "openai file": {"type": "file", "file": {"file_data": f"data:{mime};base64,{b64}", "filename": name}}}


@pytest.mark.parametrize("fmt", ["PDF", "DOCX", "ZIP", "JSON", "HTML", "SVG", "GIF", "WebP", "HEIC", "OGG", "FLAC",
                                 "WebM", "PLY", "OBJ"])
def test_every_block_type_and_mime_type_is_used_or_refused(chat, samples, fmt):
    mime, data, modality = samples[fmt]
    outcomes = {}
    for kind, block in _blocks(mime, data, f"sample.{fmt.lower()}").items():
        message = HumanMessage(content=[{"type": "text", "text": "What is this?"}, block])
        try:
            reply = chat.invoke([message])
        except TYPED as exc:
            outcomes[kind] = type(exc).__name__
            if isinstance(exc, UnsupportedContentError):  # skippable: then it is listed, never silently gone
                skipping = ChatImageBindLLM(model=chat.llm, temperature=0, max_tokens=2, on_unsupported="skip")
                skipped = skipping.invoke([message])
                assert skipped.response_metadata["media"] == []
                assert [b["index"] for b in skipped.response_metadata["ignored_blocks"]] == [1]
            continue
        # it answered: then the block conditioned the answer
        assert len(reply.response_metadata["media"]) == 1, (fmt, kind, reply.response_metadata)
        assert "ignored_blocks" not in reply.response_metadata
        outcomes[kind] = "answered"
    answered = {k for k, v in outcomes.items() if v == "answered"}
    if modality is None:
        assert not answered, (fmt, outcomes)
    else:
        assert {"file", "openai file"} <= answered and (modality == "point" or modality in answered), (fmt, outcomes)
