"""A tool-calling agent (scripted fake LLM from langchain-core) drives the perception tools over real
toy-world media: embed -> arithmetic -> retrieve -> describe, and its final answer carries what
ImageBind-LLM said about the composed embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.fusion import fuse
from ibllm_agent.generation import format_prompt
from ibllm_agent.graphs import build_perception_graph, create_perception_agent
from ibllm_agent.model_pool import shared_model
from ibllm_agent.perception_tools import get_tools
from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld, find_concepts

HELD_OUT = 1000  # a world seed the toy model was not trained on


class ScriptedToolCaller(FakeMessagesListChatModel):
    """Plays scripted messages; `{last_tool_result}` in one is filled with the latest tool output."""

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        result = super()._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        if "{last_tool_result}" in message.content:
            last = next(m for m in reversed(messages) if isinstance(m, ToolMessage))
            message = AIMessage(message.content.format(last_tool_result=last.content))
            return ChatResult(generations=[ChatGeneration(message=message)])
        return result


@pytest.fixture(scope="module")
def llm():
    """The toy model with its visual cache (retrieve_from_cache searches it)."""
    return shared_model("toy", knn=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-media")
    world = ToyWorld(HELD_OUT)
    return {"dog": Path(world.write("dog", "image", 0, folder).path),
            "rain": Path(world.write("rain", "audio", 0, folder).path),
            "bell": Path(world.write("bell", "video", 0, folder).path),
            "car": Path(world.write("car", "point", 1, folder).path)}


def script(dog: str, rain: str) -> list[AIMessage]:
    def call(i, name, **args):
        return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{i}", "type": "tool_call"}])

    return [
        call(1, "embed_media", path=dog),
        # mostly dog: an even mix of these two lands on a third concept (in the toy space a dog picture
        # and a rain sound are anti-correlated, cos -0.6; see the README's mixture table)
        call(2, "embedding_arithmetic", expression=f"0.7*emb_1 + 0.3*audio:{rain}"),
        call(3, "retrieve_from_cache", query="emb_2", k=3),
        call(4, "describe_embedding", handle="emb_2"),
        AIMessage("Here is what the perception model says about the mixture: {last_tool_result}"),
    ]


def test_embed_arithmetic_retrieve_describe(llm, media):
    tools = get_tools(llm, [media["dog"].parent])
    agent = create_perception_agent(ScriptedToolCaller(responses=script(media["dog"].name, media["rain"].name)),
                                    tools=tools)
    out = agent.invoke({"messages": [HumanMessage("Mix the dog picture with the rain sound and describe it.")]})
    tool_messages = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [m.name for m in tool_messages] == ["embed_media", "embedding_arithmetic", "retrieve_from_cache",
                                               "describe_embedding"]
    assert all(m.status == "success" for m in tool_messages), [m.content for m in tool_messages]

    # the composed vector is the fusion of the two ImageBind embeddings
    emb = ImageBindEmbeddings(model=llm)
    dog, rain = emb.embed_image([str(media["dog"])])[0], emb.embed_audio([str(media["rain"])])[0]
    composed = fuse(torch.tensor([dog, rain]), [0.7, 0.3])
    assert tool_messages[1].artifact == pytest.approx(composed.tolist(), abs=1e-5)
    assert len(tool_messages[2].artifact) == 3

    # what the model itself says about that vector, asked directly (no LangChain in between)
    said = llm.generate_batch([format_prompt("Describe this input.")], composed[None], max_tokens=128,
                              temperature=0.0)[0].text
    final = out["messages"][-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert said.strip() and said in final.content
    assert find_concepts(said)[:1] == ["dog"], said


def test_agent_streams_updates_and_tokens(llm, media):
    tools = get_tools(llm, [media["dog"].parent])
    agent = create_perception_agent(ScriptedToolCaller(responses=script(media["dog"].name, media["rain"].name)),
                                    tools=tools)
    nodes, chunks = [], 0
    for mode, data in agent.stream({"messages": [HumanMessage("go")]}, stream_mode=["updates", "messages"]):
        if mode == "updates":
            nodes.extend(data)
        elif isinstance(data[0], AIMessageChunk):
            chunks += 1
    assert nodes.count("tools") == 4 and nodes[-1] == "model"
    assert chunks >= 1


def test_deterministic_graph_on_toy_media(llm, media):
    graph = build_perception_graph(llm, roots=[media["dog"].parent], max_tokens=48)
    out = graph.invoke({"question": "What is this?", "media": [media["bell"].name], "k": 3})
    assert out["steps"] == ["route", "encode", "combine", "retrieve", "answer"]
    assert [i["modality"] for i in out["inputs"]] == ["video"]
    assert len(out["neighbors"]) == 3
    assert out["messages"][-1].response_metadata["cache_neighbors"]  # the answer leaned on the cache
    assert "bell" in find_concepts(out["answer"]), out["answer"]


def test_zero_shot_classification_of_toy_media(llm, media):
    tools = {t.name: t for t in get_tools(llm, [media["dog"].parent])}
    labels = [f"a picture of a {name}" for name in CONCEPT_NAMES]
    msg = tools["classify_media"].invoke({"name": "classify_media", "args": {"target": media["dog"].name,
                                                                              "labels": labels},
                                          "id": "c1", "type": "tool_call"})
    assert msg.status == "success"
    assert next(iter(msg.artifact)) == "a picture of a dog", msg.content
