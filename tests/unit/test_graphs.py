"""The deterministic perception graph and the tool-calling agent helper, on the tiny model."""

from __future__ import annotations

import pytest
import torch
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_media import make_media

from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import embedding_block
from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.factory import load
from ibllm_agent.fusion import fuse
from ibllm_agent.graphs import GraphInputError, build_perception_graph, create_perception_agent
from ibllm_agent.sources import SourceError


@pytest.fixture(scope="module")
def llm():
    return load("tiny")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("graph-media"))


@pytest.fixture(scope="module")
def chat(llm):
    return ChatImageBindLLM(model=llm, temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def emb(llm):
    return ImageBindEmbeddings(model=llm)


def expected_answer(chat, question, feature=None):
    blocks = [embedding_block(feature)] if feature is not None else []
    return chat.invoke([HumanMessage(content=[question, *blocks])]).text


def test_text_only_goes_straight_to_the_answer(llm, media, chat):
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    out = graph.invoke({"question": "Hello?"})
    assert out["steps"] == ["route", "answer"]
    assert out["answer"] == expected_answer(chat, "Hello?")
    assert [m.type for m in out["messages"]] == ["human", "ai"]


def test_weighted_inputs_are_fused_and_answered(llm, media, chat, emb):
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    out = graph.invoke({"question": "What is it?",
                        "media": ["tone.wav", {"path": "red_circle.png", "weight": 0.5}, "cloud.ply"]})
    assert out["steps"] == ["route", "encode", "combine", "retrieve skipped: no visual cache", "answer"]
    assert [i["modality"] for i in out["inputs"]] == ["audio", "image", "point"]
    assert out["handles"] == ["input_1", "input_2", "input_3"]
    vectors = torch.tensor([emb.embed_audio([str(media["audio"])])[0], emb.embed_image([str(media["image"])])[0],
                            emb.embed_point_cloud([str(media["point"])])[0]])
    fused = fuse(vectors, [1.0, 0.5, 1.0])
    assert out["feature"] == pytest.approx(fused.tolist(), abs=1e-5)
    assert out["answer"] == expected_answer(chat, "What is it?", fused)


def test_expression_over_inputs_and_streamed_updates(llm, media, chat, emb):
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    updates = list(graph.stream({"question": "Describe.", "media": ["red_circle.png", "blue_square.png"],
                                 "expression": "input_1 - 0.5*input_2 + text:'night'"}, stream_mode="updates"))
    assert [next(iter(u)) for u in updates] == ["route", "encode", "combine", "answer"]
    combined = updates[2]["combine"]
    assert combined["composition"] == '1*input_1 - 0.5*input_2 + 1*text:"night"'
    vectors = torch.tensor([emb.embed_image([str(media["image"])])[0], emb.embed_image([str(media["image2"])])[0],
                            emb.embed_query("night")])
    assert combined["feature"] == pytest.approx(fuse(vectors, [1.0, -0.5, 1.0]).tolist(), abs=1e-5)


def test_answer_tokens_stream_from_the_answer_node(llm, media):
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    tokens, final = [], None
    for mode, chunk in graph.stream({"question": "Hi", "media": ["tone.wav"]}, stream_mode=["messages", "values"]):
        if mode == "messages":
            message, meta = chunk
            if isinstance(message, AIMessageChunk) and meta["langgraph_node"] == "answer" and message.content:
                tokens.append(message.content)
        else:
            final = chunk
    assert len(tokens) > 1 and "".join(tokens) == final["answer"]


def test_retrieval_when_a_cache_is_given(llm, media, emb):
    cache = FaissCache.from_vectors(torch.tensor(emb.embed_media([str(media["image"]), str(media["video"])])).numpy(),
                                    ids=["img", "vid"], metadatas=[{"caption": "red"}, {"caption": "clip"}])
    graph = build_perception_graph(llm, roots=[media["image"].parent], cache=cache, max_tokens=8)
    out = graph.invoke({"question": "What?", "media": ["clip.mp4"], "k": 2})
    assert out["steps"] == ["route", "encode", "combine", "retrieve", "answer"]
    assert out["neighbors"][0]["id"] == "vid" and out["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    skipped = graph.invoke({"question": "What?", "media": ["clip.mp4"], "retrieve": False})
    assert "retrieve" not in skipped["steps"]


def test_paths_outside_the_roots_are_refused(llm, media):
    graph = build_perception_graph(llm, roots=[media["image"].parent])
    with pytest.raises(SourceError, match="contains '..'"):
        graph.invoke({"question": "?", "media": ["../etc/passwd"]})


class ScriptedToolCaller(FakeMessagesListChatModel):
    """A fake tool-calling model: plays its scripted messages, binding tools is a no-op."""

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self


def test_agent_reads_tool_errors_and_continues(llm, media):
    script = [
        AIMessage("", tool_calls=[{"name": "embed_media", "args": {"path": "../secret.png"}, "id": "c1",
                                   "type": "tool_call"}]),
        AIMessage("", tool_calls=[{"name": "embed_media", "args": {"path": "red_circle.png"}, "id": "c2",
                                   "type": "tool_call"}]),
        AIMessage("done"),
    ]
    agent = create_perception_agent(ScriptedToolCaller(responses=script), llm, roots=[media["image"].parent])
    out = agent.invoke({"messages": [HumanMessage("embed the red circle")]})
    tool_messages = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in tool_messages] == ["error", "success"]
    assert "contains '..'" in tool_messages[0].content
    assert tool_messages[1].content.startswith("emb_1:")
    assert out["messages"][-1].content == "done"


def test_chat_model_as_a_plain_agent_node(chat):
    from langchain.agents import create_agent

    agent = create_agent(chat, tools=[])  # no tools: no tool calling needed
    out = agent.invoke({"messages": [HumanMessage("Hello?")]})
    assert out["messages"][-1].content == expected_answer(chat, "Hello?")


def test_an_expression_naming_its_own_files_is_used_through_the_media_folders(llm, media, chat, emb):
    """Issue: the graph answered "as if" with no input when the expression named files but `media` was empty."""
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    out = graph.invoke({"question": "What is this?", "expression": "0.7*image:red_circle.png + 0.3*audio:tone.wav"})
    assert out["steps"] == ["route", "encode", "combine", "retrieve skipped: no visual cache", "answer"]
    vectors = torch.tensor([emb.embed_image([str(media["image"])])[0], emb.embed_audio([str(media["audio"])])[0]])
    fused = fuse(vectors, [0.7, 0.3])
    assert out["feature"] == pytest.approx(fused.tolist(), abs=1e-5)
    assert out["answer"] == expected_answer(chat, "What is this?", fused)
    with pytest.raises(SourceError, match="outside the allowed media folders"):
        graph.invoke({"question": "What?", "expression": "image:/etc/hostname"})


@pytest.mark.parametrize("state, message", [
    ({"question": "What?", "files": ["red_circle.png"]}, r"unknown input keys \['files'\]; .*'media'"),
    ({"question": "What?", "media": "red_circle.png"}, "'media' must be list or tuple"),
    ({"question": "What?", "media": [{"file": "red_circle.png"}]}, r"media\[0\] needs a 'path'"),
    ({"question": "What?", "k": 0}, "'k' must be between 1 and 100"),
    ({"question": 3}, "'question' must be str"),
])
def test_misspelt_or_mistyped_input_is_an_error_listing_what_is_accepted(llm, media, state, message):
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    with pytest.raises(GraphInputError, match=message):
        graph.invoke(state)


def test_asking_for_retrieval_without_a_cache_is_an_error_not_a_skipped_step(llm, media):
    graph = build_perception_graph(llm, roots=[media["image"].parent], max_tokens=8)
    with pytest.raises(GraphInputError, match="retrieve=True but there is no visual cache"):
        graph.invoke({"question": "What?", "media": ["red_circle.png"], "retrieve": True})
