"""The server's parts without a server process: OpenAI parts -> LangChain blocks, the app's life cycle
(/health before and after loading, a failed load), and the remote client's retries and request shape."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage
from starlette.testclient import TestClient

import ibllm_agent
from ibllm_agent import factory
from ibllm_agent.params import GenerationParams, VisualCacheParams
from ibllm_agent.remote import RemoteClient, RemoteError, RemoteRequestError, chat_request
from ibllm_agent.serve import protocol
from ibllm_agent.serve.app import create_app
from ibllm_agent.serve.protocol import APIError
from ibllm_agent.sources import SourcePolicy

PNG = "data:image/png;base64,iVBORw0KGgo="


def block(part: dict, *, allow_urls: bool = False, max_bytes: int = 1000) -> dict:
    return protocol.part_to_block(part, "p", allow_urls=allow_urls, max_bytes=max_bytes)


def test_every_openai_part_type_becomes_its_langchain_block():
    assert block({"type": "text", "text": "hi"}) == {"type": "text", "text": "hi"}
    assert block({"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}) == {"type": "image", "url": PNG}
    assert block({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "MP3"}}) == \
        {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/mp3"}
    assert block({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}) == \
        {"type": "video", "url": "data:video/mp4;base64,AAAA"}
    assert block({"type": "file", "file": {"file_data": "data:model/ply;base64,cGx5", "filename": "a.ply"}}) == \
        {"type": "file", "url": "data:model/ply;base64,cGx5", "mime_type": "model/ply", "extras": {"filename": "a.ply"}}
    assert block({"type": "file", "file": {"file_data": "cGx5"}}) == {"type": "file", "base64": "cGx5", "extras": {}}
    url = {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}
    assert block(url, allow_urls=True) == {"type": "image", "url": "https://example.org/a.png"}


@pytest.mark.parametrize(("part", "status", "fragment"), [
    ({"type": "point_cloud"}, 400, "not supported"),
    ({"type": "image_url", "image_url": {"url": "/etc/passwd"}}, 400, "only data: URLs"),
    ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, 400, "only data: URLs"),
    ({"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}, 400, "--allow-urls"),
    ({"type": "image_url", "image_url": "data:,x"}, 400, "must be an object"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "../wav"}}, 400, "format"),
    ({"type": "file", "file": {"file_id": "file-123"}}, 400, "no file store"),
    ({"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + "A" * 2000}}, 413, "larger than"),
    ({"type": "input_audio", "input_audio": {"data": "A" * 2000, "format": "wav"}}, 413, "larger than"),
])
def test_parts_that_cannot_be_read_are_refused_with_their_status(part, status, fragment):
    with pytest.raises(APIError, match=fragment) as caught:
        block(part)
    assert caught.value.status == status and caught.value.param.startswith("p")


def test_weights_and_embeddings_apply_to_the_message_named():
    request = protocol.ChatCompletionRequest(model="toy", messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "assistant", "content": "A dog."},
        {"role": "user", "content": "And now?"}],
        ibllm={"message": 0, "weights": [0.5], "embeddings": [{"handle": "mix", "weight": -0.2}]})
    kept = {"mix": torch.ones(4)}
    messages = protocol.chat_messages(request, allow_urls=False, max_bytes=1000,
                                      embedding_of=lambda handle, where: kept[handle])
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, HumanMessage]
    assert messages[0].content[0]["extras"] == {"weight": 0.5}
    assert messages[0].content[1] == {"type": "imagebind_embedding", "embedding": [1.0] * 4, "weight": -0.2,
                                      "name": "mix"}
    with pytest.raises(APIError, match="index of a user message"):
        protocol.chat_messages(request.model_copy(update={"ibllm": protocol.ChatExtensions(message=1, weights=[1])}),
                               allow_urls=False, max_bytes=1000, embedding_of=None)


def test_unsupported_options_are_named():
    with pytest.raises(APIError, match="unknown parameter 'best_of'"):
        protocol.parse_body(protocol.ChatCompletionRequest, b'{"model": "toy", "messages": [{}], "best_of": 2}')
    request = protocol.ChatCompletionRequest(model="toy", messages=[{}], logit_bias={"1": 5})
    with pytest.raises(APIError, match="logit_bias"):
        request.refuse_unsupported()
    assert protocol.ChatCompletionRequest(model="toy", messages=[{}], max_tokens=9, max_completion_tokens=5,
                                          seed=1).overrides() == {"max_tokens": 5, "seed": 1}


# --- the app ---------------------------------------------------------------------------------------------


def test_health_is_503_until_the_model_is_loaded(monkeypatch):
    release, real_load = threading.Event(), factory.load

    def slow_load(name, **kwargs):
        release.wait(30)
        return real_load(name, **kwargs)

    monkeypatch.setattr(factory, "load", slow_load)
    with TestClient(create_app("tiny")) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.json() == {"status": "loading"}
        assert loading.headers["Retry-After"]
        chat = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "model_not_ready"
        release.set()
        for _ in range(300):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/health").json() == {"status": "ok", "model": "tiny"}
        answer = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3, "temperature": 0,
                                                           "messages": [{"role": "user", "content": "hi"}]}).json()
        expected = ibllm_agent.load("tiny").generate_batch([ibllm_agent.format_prompt("hi")], max_tokens=3,
                                                           temperature=0)[0]
        assert answer["choices"][0]["message"]["content"] == expected.text


def test_a_model_that_fails_to_load_is_reported(monkeypatch):
    def broken(name, **kwargs):
        raise ibllm_agent.CheckpointError("adapter.pth: not a checkpoint")

    monkeypatch.setattr(factory, "load", broken)
    failures = []
    with TestClient(create_app("7B", on_load_error=failures.append)) as client:
        for _ in range(100):
            if failures:
                break
            threading.Event().wait(0.02)
        assert client.get("/health").json() == {"status": "error"}
        error = client.get("/v1/models").json()["error"]
        assert "not a checkpoint" in error["message"] and error["type"] == "service_unavailable_error"
    assert isinstance(failures[0], ibllm_agent.CheckpointError)


# --- the remote client -----------------------------------------------------------------------------------


def remote_with(answers: list, max_retries: int = 2) -> tuple[RemoteClient, list]:
    """A RemoteClient whose transport plays `answers` (responses, or exceptions to raise) in order."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[len(seen) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    remote = RemoteClient("http://server/v1", api_key="k", max_retries=max_retries)
    remote._client = httpx.Client(base_url=remote.base_url, headers=remote.headers,
                                  transport=httpx.MockTransport(handler))
    return remote, seen


def busy(status: int = 503) -> httpx.Response:
    return httpx.Response(status, headers={"Retry-After": "0"}, json={"error": {"message": "busy", "type": "x"}})


def test_transient_failures_are_retried_then_reported():
    remote, seen = remote_with([httpx.ConnectError("refused"), busy(429), busy(503), httpx.Response(200, json={"ok": 1})],
                               max_retries=3)
    assert remote.post("/chat/completions", {}) == {"ok": 1}
    assert len(seen) == 4 and seen[0].headers["Authorization"] == "Bearer k"

    remote, seen = remote_with([busy(), busy()], max_retries=1)
    with pytest.raises(RemoteError, match="busy") as caught:
        remote.post("/chat/completions", {})
    assert caught.value.status == 503 and len(seen) == 2 and not isinstance(caught.value, ValueError)

    remote, seen = remote_with([httpx.Response(400, json={"error": {"message": "bad part", "code": "c"}})])
    with pytest.raises(RemoteRequestError, match="bad part"):  # a ValueError, as in process; never retried
        remote.post("/chat/completions", {})
    assert len(seen) == 1


def test_the_request_carries_the_conditioning_message_and_its_weights(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    messages = [HumanMessage(content=[{"type": "image", "url": str(image), "extras": {"weight": 0.25}},
                                      {"type": "imagebind_embedding", "embedding": [1.0, 2.0], "weight": -1.0}]),
                AIMessage("A dog."), HumanMessage("What colour is it?")]
    request = chat_request(messages, model="toy", generation=GenerationParams(temperature=0, seed=4, stop=("x",)),
                           visual_cache=VisualCacheParams(enabled=False), policy=SourcePolicy(roots=(tmp_path,)),
                           on_unsupported="error", max_text_chars=100, default_question="Describe.")
    payload = request.payload
    assert payload["ibllm"]["message"] == 0 and payload["ibllm"]["weights"] == [0.25]
    assert payload["ibllm"]["embeddings"] == [{"embedding": [1.0, 2.0], "weight": -1.0, "name": "embedding"}]
    assert payload["ibllm"]["visual_cache"] == {"enabled": False, "size": 10, "t": 20.0, "weight": 0.5}
    assert payload["messages"][0]["content"][0]["image_url"]["url"].startswith("data:;base64,iVBORw0KGgo")
    assert payload["messages"][2]["content"] == [{"type": "text", "text": "What colour is it?"}]
    assert (payload["seed"], payload["stop"], request.media) == (4, ["x"], ["a.png", "embedding"])
    asked_nothing = chat_request(messages[:1], model="toy", generation=GenerationParams(),
                                 visual_cache=VisualCacheParams(), policy=SourcePolicy(roots=(tmp_path,)),
                                 on_unsupported="error", max_text_chars=100, default_question="Describe.")
    assert asked_nothing.payload["messages"][0]["content"][-1] == {"type": "text", "text": "Describe."}
