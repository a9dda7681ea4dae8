"""Perception tools on the tiny model: results, artifacts, handles, and readable refusals."""

from __future__ import annotations

import os
import uuid

import chromadb
import pytest
import torch
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_media import make_media

from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import embedding_block
from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.factory import load
from ibllm_agent.fusion import fuse
from ibllm_agent.perception_tools import get_tools


@pytest.fixture(scope="module")
def llm():
    return load("tiny")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    files = make_media(root / "media")
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(files["image"].read_bytes())
    os.symlink(outside, root / "media" / "link.png")
    (root / "media" / "big.wav").write_bytes(files["audio"].read_bytes() + b"\0" * 200_000)
    files["outside"] = outside
    return files


@pytest.fixture(scope="module")
def emb(llm):
    return ImageBindEmbeddings(model=llm)


@pytest.fixture(scope="module")
def cache(emb, media):
    names = ["image", "image2", "video"]
    vectors = torch.tensor(emb.embed_media([str(media[n]) for n in names])).numpy()
    return FaissCache.from_vectors(vectors, ids=names, metadatas=[{"caption": f"a {n}"} for n in names])


@pytest.fixture()
def tools(llm, media, cache):
    return {t.name: t for t in get_tools(llm, roots=[media["image"].parent], cache=cache, max_bytes=100_000,
                                         max_tokens=8)}


def call(tool, **args) -> ToolMessage:
    return tool.invoke({"name": tool.name, "args": args, "id": f"call_{uuid.uuid4().hex[:6]}", "type": "tool_call"})


def test_tool_set_and_descriptions(llm, media, tools):
    assert sorted(tools) == ["classify_media", "describe_embedding", "describe_media", "embed_media",
                             "embedding_arithmetic", "retrieve_from_cache"]
    assert str(media["image"].parent) in tools["describe_media"].description
    bare = {t.name for t in get_tools(llm, roots=[media["image"].parent])}
    assert "retrieve_from_cache" not in bare and "search_collection" not in bare  # nothing to search


def test_embed_media_keeps_a_handle_and_returns_the_vector(tools, emb, media):
    msg = call(tools["embed_media"], path="red_circle.png")
    assert msg.status == "success" and msg.content.startswith("emb_1: embedding of media red_circle.png")
    assert msg.artifact == pytest.approx(emb.embed_image([str(media["image"])])[0], abs=1e-6)
    named = call(tools["embed_media"], text="a red circle", name="red")
    assert named.content.startswith("red: embedding of text 'a red circle'")
    assert named.artifact == pytest.approx(emb.embed_query("a red circle"), abs=1e-6)


def test_arithmetic_over_handles_files_and_text(tools, emb, media):
    call(tools["embed_media"], path="red_circle.png")
    msg = call(tools["embedding_arithmetic"], expression='0.6*emb_1 + audio:tone.wav - 0.3*text:"a square"')
    assert msg.status == "success" and msg.content.startswith("emb_2 = 0.6*emb_1 + 1*audio:\"tone.wav\"")
    vectors = torch.tensor([emb.embed_image([str(media["image"])])[0], emb.embed_audio([str(media["audio"])])[0],
                            emb.embed_query("a square")])
    expected = fuse(vectors, [0.6, 1.0, -0.3])
    assert msg.artifact == pytest.approx(expected.tolist(), abs=1e-5)


def test_describe_embedding_is_what_the_chat_model_says(tools, llm):
    stored = call(tools["embedding_arithmetic"], expression="0.5*image:red_circle.png + 0.5*video:clip.mp4")
    msg = call(tools["describe_embedding"], handle="emb_1", question="What is it?")
    chat = ChatImageBindLLM(model=llm, temperature=0, max_tokens=8)
    expected = chat.invoke([HumanMessage(content=["What is it?", embedding_block(stored.artifact)])]).text
    assert msg.content == f'[emb_1 (0.5*image:"red_circle.png" + 0.5*video:"clip.mp4")] {expected}'


@pytest.mark.parametrize("path, modality", [("red_circle.png", None), ("tone.wav", None), ("clip.mp4", None),
                                            ("cloud.ply", None), ("clip.mp4", "video")])
def test_describe_media_routes_every_modality(tools, path, modality):
    msg = call(tools["describe_media"], path=path, modality=modality)
    assert msg.status == "success" and msg.content.startswith(f"[{path}] ")


@pytest.mark.parametrize("path, modality", [("room_depth.png", "depth"), ("face_thermal.tif", "thermal"),
                                            ("swing.csv", None), ("swing.csv", "imu")])
def test_describe_media_reads_depth_thermal_and_imu(tools, path, modality):
    msg = call(tools["describe_media"], path=path, modality=modality)
    assert msg.status == "success" and msg.content.startswith(f"[{path}] ")


def test_senses_are_embedded_by_their_own_trunks(tools, emb, media):
    depth = call(tools["embed_media"], path="room_depth.png", modality="depth")
    assert depth.status == "success" and depth.content.startswith("emb_1: embedding of depth room_depth.png")
    assert depth.artifact == pytest.approx(emb.embed_depth([str(media["depth"])])[0], abs=1e-6)
    picture = call(tools["embed_media"], path="room_depth.png")  # by its content alone a PNG is a picture
    assert picture.artifact == pytest.approx(emb.embed_image([str(media["depth"])])[0], abs=1e-6)
    assert picture.artifact != pytest.approx(depth.artifact, abs=1e-3)
    msg = call(tools["embedding_arithmetic"], expression="depth:room_depth.png + thermal:face_thermal.tif - imu:swing.csv")
    vectors = torch.tensor([emb.embed_depth([str(media["depth"])])[0], emb.embed_thermal([str(media["thermal"])])[0],
                            emb.embed_imu([str(media["imu"])])[0]])
    assert msg.status == "success" and msg.artifact == pytest.approx(fuse(vectors, [1, 1, -1]).tolist(), abs=1e-5)


def test_retrieve_from_cache(tools):
    msg = call(tools["retrieve_from_cache"], query="image:blue_square.png", k=2)
    assert msg.status == "success"
    assert [hit["id"] for hit in msg.artifact][0] == "image2"
    assert msg.artifact[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "1. image2 (score 1.000) a image2" in msg.content


def test_search_collection(llm, emb, media):
    client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
    col = client.create_collection(f"t{uuid.uuid4().hex[:8]}", embedding_function=None,
                                   configuration={"hnsw": {"space": "cosine"}})
    names = ["image", "audio", "point"]
    col.add(ids=names, embeddings=emb.embed_media([str(media[n]) for n in names]),
            uris=[str(media[n]) for n in names])
    tools = {t.name: t for t in get_tools(llm, roots=[media["image"].parent], collection=col)}
    msg = call(tools["search_collection"], query="cloud.ply", k=2)
    assert msg.status == "success" and msg.artifact[0]["id"] == "point"
    assert msg.artifact[0]["distance"] == pytest.approx(0.0, abs=1e-4)


def test_classify(tools):
    msg = call(tools["classify_media"], target="red_circle.png", labels=["a red circle", "a dog", "rain"])
    assert msg.status == "success"
    assert sum(msg.artifact.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(msg.artifact) == {"a red circle", "a dog", "rain"}


@pytest.mark.parametrize("tool, args, message", [
    ("describe_media", {"path": "../outside/secret.png"}, "contains '..'"),
    ("describe_media", {"path": "SECRET"}, "outside the allowed media folders"),
    ("embed_media", {"path": "link.png"}, "outside the allowed media folders"),
    ("embed_media", {"path": "https://example.com/dog.png"}, "URLs are disabled"),
    ("embed_media", {"path": "file:///etc/passwd"}, "outside the allowed media folders"),
    ("describe_media", {"path": "big.wav"}, "more than the limit of 100000"),
    ("embed_media", {"path": "missing.png"}, "file not found"),
    ("embed_media", {"path": "red_circle.png", "text": "both"}, "exactly one of"),
    ("embedding_arithmetic", {"expression": "image:red_circle.png * image:clip.mp4"}, "cannot multiply two"),
    ("embedding_arithmetic", {"expression": "0.5*emb_9"}, "unknown embedding handle 'emb_9'"),
    ("embedding_arithmetic", {"expression": "2 +"}, "operand is missing"),
    ("embedding_arithmetic", {"expression": "image:../x.png"}, "contains '..'"),
    ("describe_embedding", {"handle": "((("}, "neither a stored handle"),
    ("classify_media", {"target": "red_circle.png", "labels": ["only one"]}, "at least 2"),
    ("retrieve_from_cache", {"query": "red_circle.png", "k": 0}, "greater than or equal to 1"),
    ("describe_media", {"path": "cloud.ply", "modality": "smell"}, "modality: Input should be 'image'"),
])
def test_refusals_are_tool_errors_the_agent_can_read(tools, media, tool, args, message):
    if args.get("path") == "SECRET":
        args = {**args, "path": str(media["outside"])}
    msg = call(tools[tool], **args)
    assert isinstance(msg, ToolMessage)
    assert msg.status == "error", msg.content
    assert message in msg.content


async def test_async_invoke(tools):
    msg = await tools["embed_media"].ainvoke({"name": "embed_media", "args": {"text": "hello"}, "id": "a1",
                                              "type": "tool_call"})
    assert msg.status == "success" and len(msg.artifact) > 0
