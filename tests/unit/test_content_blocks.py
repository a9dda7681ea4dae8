"""LangChain content blocks -> question text, media parts and embedding parts."""

from __future__ import annotations

import base64

import pytest
import torch
from langchain_core.messages import HumanMessage
from langchain_core.messages.content import create_audio_block, create_file_block, create_image_block

from ibllm_agent.content_blocks import (
    ContentError,
    EmbeddingPart,
    MediaPart,
    UnsupportedContentError,
    embedding_block,
    parse_message,
)
from ibllm_agent.sources import SourcePolicy

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture()
def policy(tmp_path):
    (tmp_path / "dog.png").write_bytes(PNG)
    (tmp_path / "cloud.ply").write_bytes(b"ply\nformat ascii 1.0\n")
    return SourcePolicy(roots=(tmp_path,))


def test_standard_blocks_base64_and_local_files(policy, tmp_path):
    b64 = base64.b64encode(PNG).decode()
    msg = HumanMessage(content=[
        {"type": "text", "text": "What is this?"},
        create_image_block(base64=b64, mime_type="image/png", weight=0.25),
        create_audio_block(url=(tmp_path / "dog.png").as_uri()),
        create_file_block(url="cloud.ply", mime_type="model/ply"),
        {"type": "video", "url": str(tmp_path / "dog.png")},
        {"type": "file", "base64": b64, "mime_type": "application/octet-stream"},
        {"type": "file", "base64": b64, "mime_type": "text/plain", "extras": {"modality": "point"}},
    ])
    turn = parse_message(msg, policy)
    assert turn.text == "What is this?"
    assert [type(p) for p in turn.parts] == [MediaPart] * 6
    image, audio, cloud, video, unknown, forced = turn.parts
    assert image.source == PNG and image.modality == "image" and image.weight == 0.25
    assert audio.source == (tmp_path / "dog.png").read_bytes() and audio.modality == "audio"
    assert cloud.source == (tmp_path / "cloud.ply").read_bytes() and cloud.modality == "point"
    assert cloud.name == "cloud.ply"
    assert video.modality == "video"
    assert unknown.modality == "image"  # a generic MIME type: the content decides
    assert forced.modality == "point"


def test_openai_image_url_data_uri_and_local_path(policy, tmp_path):
    b64 = base64.b64encode(PNG).decode()
    msg = HumanMessage(content=[
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
        {"type": "image_url", "image_url": {"url": "dog.png"}},
        {"type": "image_url", "image_url": "dog.png"},
        "and a question",
    ])
    turn = parse_message(msg, policy)
    assert [p.source for p in turn.parts] == [PNG, PNG, PNG]  # local files arrive as bytes, read once
    assert all(p.modality == "image" for p in turn.parts)
    assert turn.text == "and a question"


def test_embedding_block():
    block = embedding_block(torch.tensor([0.5, -1.0, 2.0]), weight=0.7, name="emb_1")
    turn = parse_message(HumanMessage(content=["describe", block]), SourcePolicy())
    (part,) = turn.parts
    assert isinstance(part, EmbeddingPart)
    torch.testing.assert_close(part.vector, torch.tensor([0.5, -1.0, 2.0]))
    assert part.weight == pytest.approx(0.7) and part.name == "emb_1"


@pytest.mark.parametrize("block, message", [
    ({"type": "image", "url": "../etc/passwd"}, "content block 0 \\(image\\): .*'\\.\\.'"),
    ({"type": "image", "url": "http://example.com/a.png"}, "URLs are disabled"),
    ({"type": "image", "base64": "!!notbase64!!", "mime_type": "image/png"}, "malformed"),
    ({"type": "image", "file_id": "file-123"}, "file_id"),
    ({"type": "image", "url": "dog.png", "extras": {"weight": "heavy"}}, "weight must be a number"),
    ({"type": "image", "url": "dog.png", "extras": {"modality": "smell"}}, "extras.modality"),
    ({"type": "imagebind_embedding", "embedding": [[1.0], [2.0]]}, "flat list"),
    ({"type": "imagebind_embedding", "embedding": [float("nan")]}, "finite"),
    ({"type": "point_cloud", "data": "x"}, "is not one of ours"),
    ({"type": "image", "base64": 42, "mime_type": "image/png"}, "'base64' must be a string"),
    ({"type": "image", "url": 7}, "'url' must be a string"),
    ({"type": "image", "url": "dog.png", "extras": "heavy"}, "'extras' must be an object"),
    ({"type": "image", "url": "dog.png", "extras": {"filename": 3}}, "filename must be a string"),
    ({"type": "image", "url": "data:image/png;base64", "mime_type": "image/png"}, "needs a ','"),
    ({"type": "imagebind_embedding", "embedding": [0.0, 0.0]}, "all zeros"),
])
def test_bad_blocks_say_which_and_why(policy, block, message):
    with pytest.raises(ContentError, match=message):
        parse_message(HumanMessage(content=[block]), policy)


def test_inline_size_limit(tmp_path):
    small = SourcePolicy(roots=(tmp_path,), max_bytes=8)
    block = {"type": "image", "base64": base64.b64encode(PNG).decode(), "mime_type": "image/png"}
    with pytest.raises(ContentError, match="larger than the limit"):
        parse_message(HumanMessage(content=[block]), small)


def test_line_wrapped_base64_is_valid_and_every_inline_form_has_the_same_byte_limit(tmp_path):
    wrapped = base64.encodebytes(PNG * 20).decode()  # MIME style: a newline every 76 characters
    (part,) = parse_message(HumanMessage(content=[{"type": "image", "base64": wrapped, "mime_type": "image/png"}]),
                            SourcePolicy()).parts
    assert part.source == PNG * 20
    small = SourcePolicy(roots=(tmp_path,), max_bytes=100)
    raw = "data:image/png," + "A" * 500  # not base64: percent-encoded bytes, limited all the same
    with pytest.raises(ContentError, match="larger than the limit of 100"):
        parse_message(HumanMessage(content=[{"type": "image", "url": raw}]), small)
    with pytest.raises(ContentError, match="larger than the limit of 100"):
        parse_message(HumanMessage(content=[{"type": "image", "url": "data:image/png," + "%41" * 101}]), small)


def test_the_question_text_has_a_limit():
    with pytest.raises(ContentError, match="limit of 1000 characters"):
        parse_message(HumanMessage(content=[{"type": "text", "text": "x" * 600}, {"type": "text", "text": "y" * 600}]),
                      SourcePolicy(), max_text_chars=1000)
    with pytest.raises(ContentError, match="more than the limit of 1000"):
        parse_message(HumanMessage("z" * 5000), SourcePolicy(), max_text_chars=1000)


@pytest.mark.parametrize("block, reason", [
    ({"type": "file", "base64": base64.b64encode(PDF).decode(), "mime_type": "application/pdf"}, "application/pdf"),
    ({"type": "file", "base64": base64.b64encode(PDF).decode()}, "the content is text, not a medium"),
    ({"type": "file", "base64": base64.b64encode(b"plain words").decode(), "mime_type": "application/octet-stream"},
     "not a medium"),
    ({"type": "image", "base64": base64.b64encode(PDF).decode(), "mime_type": "application/pdf"}, "image block"),
    ({"type": "file", "base64": base64.b64encode(b"{}").decode(), "mime_type": "application/json"}, "application/json"),
    ({"type": "reasoning", "reasoning": "hmm"}, "'reasoning' blocks"),
    ({"type": "future_block", "x": 1}, "non-standard block"),
])
def test_unsupported_blocks_are_refused_or_skipped_and_listed(block, reason):
    message = HumanMessage(content=[{"type": "text", "text": "What is this?"}, block])
    with pytest.raises(UnsupportedContentError, match="content block 1") as info:
        parse_message(message, SourcePolicy())
    assert reason in str(info.value) and "this model reads text, image" in str(info.value)
    question = parse_message(message, SourcePolicy(), on_unsupported="skip")
    assert question.text == "What is this?" and question.parts == []
    assert [i["index"] for i in question.ignored] == [1] and reason in question.ignored[0]["reason"]
