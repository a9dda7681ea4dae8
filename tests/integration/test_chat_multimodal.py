"""ChatImageBindLLM end to end on the toy model with real toy-world files: the multimodal block shapes
of the langchain-tests standard suite (sent from local files instead of downloads), video and point
cloud blocks, streaming, and concurrent conversations."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.generation import format_prompt
from ibllm_agent.media import load_media
from ibllm_agent.toy import ToyWorld, find_concepts

HELD_OUT = 1000  # a world seed the toy model was not trained on


@pytest.fixture(scope="module")
def chat():
    return ChatImageBindLLM(model="toy", temperature=0, max_tokens=48)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-chat")
    world = ToyWorld(HELD_OUT)
    return {"image": (Path(world.write("dog", "image", 0, folder).path), "dog"),
            "audio": (Path(world.write("bell", "audio", 0, folder).path), "bell"),
            "video": (Path(world.write("car", "video", 0, folder).path), "car"),
            "point": (Path(world.write("ball", "point", 0, folder).path), "ball")}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def direct(chat, question: str, path: Path, modality: str) -> str:
    """The model's own answer on the loaded file, without LangChain."""
    feature = chat.llm.encode([load_media(path, modality)])
    return chat.llm.generate_batch([format_prompt(question)], chat.llm.fuse(feature, [1.0])[None],
                                   max_tokens=chat.max_tokens, temperature=0.0)[0].text


def block_shapes(files) -> list[tuple[str, dict]]:
    image, audio, video, point = (files[k][0] for k in ("image", "audio", "video", "point"))
    return [
        ("image", {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(image)}"}}),
        ("image", {"type": "image", "base64": b64(image), "mime_type": "image/png"}),
        ("image", {"type": "image", "url": image.as_uri()}),
        ("audio", {"type": "audio", "mime_type": "audio/wav", "base64": b64(audio)}),
        ("audio", {"type": "input_audio", "input_audio": {"data": b64(audio), "format": "wav"}}),
        ("video", {"type": "video", "mime_type": "video/mp4", "base64": b64(video)}),
        ("point", {"type": "file", "mime_type": "model/ply", "base64": b64(point)}),
        ("point", {"type": "file", "url": str(point), "extras": {"modality": "point"}}),
    ]


def test_standard_block_shapes_from_local_files(chat, files):
    question = "What is this?"
    for modality, block in block_shapes(files):
        path, concept = files[modality]
        answer = chat.invoke([HumanMessage(content=[{"type": "text", "text": question}, block])])
        assert isinstance(answer, AIMessage) and answer.content
        assert answer.content == direct(chat, question, path, modality), (modality, block["type"])
        if modality in ("image", "video"):  # what the toy LLM was tuned on; audio/points: see tools/eval_toy.py
            assert concept in find_concepts(answer.content), (modality, block["type"], answer.content)


def test_streaming_with_media_equals_invoke(chat, files):
    path, _ = files["audio"]
    message = [HumanMessage(content=["What do you hear?", {"type": "audio", "url": str(path)}])]
    chunks = [c.content for c in chat.stream(message)]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == chat.invoke(message).content


def test_multi_turn_keeps_the_picture(chat, files):
    path, _ = files["image"]
    first = [HumanMessage(content=["What is this?", {"type": "image", "url": str(path)}])]
    reply = chat.invoke(first)
    conversation = [*first, reply, HumanMessage("Describe it again.")]
    follow_up = chat.invoke(conversation)
    assert follow_up.content and follow_up.response_metadata["media"] == [path.name]
    request = chat.prepare(conversation)
    assert request.prompt == format_prompt("Describe it again.", f"User: [image] What is this?\nAssistant: {reply.text.strip()}")
    expected = chat.llm.fuse(chat.llm.encode([load_media(path, "image")]), [1.0])
    assert (request.feature - expected).abs().max() < 1e-5


def test_eight_parallel_conversations_equal_one_by_one(chat, files):
    conversations = []
    for modality, (path, _) in files.items():
        for question in ("What is this?", "Describe it in detail."):
            conversations.append([HumanMessage(content=[question, {"type": "file", "url": str(path),
                                                                   "extras": {"modality": modality}}])])
    assert len(conversations) == 8
    one_by_one = [chat.invoke(c).content for c in conversations]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda c: chat.invoke(c).content, conversations))
    assert parallel == one_by_one


@pytest.fixture(scope="module")
def sense_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-senses")
    world = ToyWorld(HELD_OUT)
    return {"depth": (Path(world.write("cat", "depth", 0, folder).path), "cat"),
            "thermal": (Path(world.write("fire", "thermal", 0, folder).path), "fire"),
            "imu": (Path(world.write("ball", "imu", 0, folder).path), "ball")}


def sense_block_shapes(files) -> list[tuple[str, dict]]:
    depth, thermal, imu = (files[k][0] for k in ("depth", "thermal", "imu"))
    return [
        ("depth", {"type": "image", "url": depth.as_uri(), "mime_type": "image/x-depth"}),
        ("depth", {"type": "image", "base64": b64(depth), "mime_type": "image/png", "extras": {"modality": "depth"}}),
        ("depth", {"type": "file", "url": str(depth), "mime_type": "image/x-depth"}),
        ("thermal", {"type": "image", "base64": b64(thermal), "mime_type": "image/x-thermal"}),
        ("thermal", {"type": "file", "url": str(thermal), "extras": {"modality": "thermal"}}),
        ("imu", {"type": "file", "base64": b64(imu), "mime_type": "text/csv"}),
        ("imu", {"type": "file", "url": str(imu)}),  # a CSV naming accelerometer and gyroscope axes
    ]


def test_depth_thermal_and_imu_blocks(chat, sense_files):
    """The LLM never saw these senses; the toy answers about them through the shared space (tools/eval_toy.py)."""
    question = "What is this?"
    for modality, block in sense_block_shapes(sense_files):
        path, concept = sense_files[modality]
        answer = chat.invoke([HumanMessage(content=[{"type": "text", "text": question}, block])])
        assert answer.content == direct(chat, question, path, modality), (modality, block)
        assert find_concepts(answer.content)[:1] == [concept], (modality, block, answer.content)
    # without a word from the block, a depth map's PNG is a picture (and answered as one)
    path, _ = sense_files["depth"]
    as_picture = chat.invoke([HumanMessage(content=[question, {"type": "image", "url": str(path)}])])
    assert as_picture.content == direct(chat, question, path, "image")
