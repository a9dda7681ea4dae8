"""The client of `ibllm serve`: what `ChatImageBindLLM(base_url=...)` and `ImageBindEmbeddings(base_url=...)`
send and read back.

A conversation is parsed here exactly as the local chat model parses it (`content_blocks.parse_message`,
with the same `SourcePolicy`: local files are read on this side and sent inline as base64), then written as
an OpenAI chat request that the server parses back into the same blocks. The media that condition the
answer carry their fusion weights and pre-computed embeddings in the request's "ibllm" object, so a greedy
answer is the one the in-process model gives.

Transient failures (connection errors, 429, 503) are retried `max_retries` times, waiting what the
server's Retry-After says (or 0.5 s, 1 s, 2 s, ...); a stream is retried only before its first byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from ibllm_agent import modalities
from ibllm_agent.content_blocks import EmbeddingPart, MediaPart, OnUnsupported, Question, parse_message
from ibllm_agent.params import GenerationParams, VisualCacheParams
from ibllm_agent.serve.settings import API_KEY_ENV
from ibllm_agent.sources import SourcePolicy

RETRY_STATUSES = (429, 503)
CONNECTION_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
"""Failures before the request reached the server: safe to send again."""
MAX_RETRY_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


class RemoteError(RuntimeError):
    """The server answered with an error; `status`, `type` and `code` are its own."""

    def __init__(self, status: int, message: str, type: str | None = None, code: str | None = None):
        super().__init__(f"{message} (HTTP {status}{', ' + code if code else ''})")
        self.status, self.message, self.type, self.code = status, message, type, code


class RemoteRequestError(RemoteError, ValueError):
    """The server refused the request itself (bad content, unknown model, too large): a ValueError, as the
    same input raises in process."""


def _error(status: int, body: Any) -> RemoteError:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body)[:500]}
    cls = RemoteRequestError if 400 <= status < 500 and status not in (401, 403, 429) else RemoteError
    return cls(status, str(error.get("message")), error.get("type"), error.get("code"))


def _checked(response: httpx.Response, read=None) -> httpx.Response:
    """The response when it is a success, else its error raised (`read` loads a streamed error body first)."""
    if response.is_success:
        return response
    if read is not None:
        read()
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise _error(response.status_code, body)


class RemoteClient:
    """HTTP to one server's `/v1` (sync and async), with retries and OpenAI error objects turned into
    `RemoteError`s. `api_key` defaults to $IBLLM_API_KEY."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float | None = None,
                 max_retries: int = 2):
        self.base_url = base_url.rstrip("/")
        api_key = api_key or os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
        self.max_retries = max_retries
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        return self._client

    def _wait(self, attempt: int, response: httpx.Response | None = None) -> float | None:
        """After a connection error (no response) or an answer: seconds to wait before retrying, or None when
        the outcome is final."""
        if attempt >= self.max_retries or (response is not None and response.status_code not in RETRY_STATUSES):
            return None
        try:
            asked = float(response.headers["Retry-After"]) if response is not None else None
        except (KeyError, ValueError):
            asked = None
        return min(asked if asked is not None else 0.5 * 2 ** attempt, MAX_RETRY_WAIT_S)

    @contextlib.contextmanager
    def _timeouts(self, path: str):
        try:
            yield
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"{self.base_url}{path} did not answer in time ({exc})") from None

    def _open(self, method: str, path: str, payload: dict | None, stream: bool) -> httpx.Response:
        with self._timeouts(path):
            for attempt in itertools.count():
                try:
                    response = self.client.send(self.client.build_request(method, path, json=payload), stream=stream)
                except CONNECTION_ERRORS:
                    if (wait := self._wait(attempt)) is None:
                        raise
                else:
                    if (wait := self._wait(attempt, response)) is None:
                        return _checked(response, response.read)
                    response.close()
                time.sleep(wait)

    async def _aopen(self, client: httpx.AsyncClient, method: str, path: str, payload: dict | None,
                     stream: bool) -> httpx.Response:
        with self._timeouts(path):
            for attempt in itertools.count():
                try:
                    response = await client.send(client.build_request(method, path, json=payload), stream=stream)
                except CONNECTION_ERRORS:
                    if (wait := self._wait(attempt)) is None:
                        raise
                else:
                    if (wait := self._wait(attempt, response)) is None:
                        if not response.is_success:
                            await response.aread()
                        return _checked(response)
                    await response.aclose()
                await asyncio.sleep(wait)

    def _async_client(self) -> httpx.AsyncClient:  # one per call: an AsyncClient belongs to one event loop
        return httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    def get(self, path: str) -> dict:
        return self._open("GET", path, None, stream=False).json()

    def post(self, path: str, payload: dict) -> dict:
        return self._open("POST", path, payload, stream=False).json()

    def stream(self, path: str, payload: dict) -> Iterator[dict]:
        """The JSON objects of a server-sent-events answer, up to `data: [DONE]`."""
        response = self._open("POST", path, payload, stream=True)
        try:
            for line in response.iter_lines():
                if (event := _sse_event(line)) is _DONE:
                    return
                if event is not None:
                    yield event
        finally:
            response.close()

    async def apost(self, path: str, payload: dict) -> dict:
        async with self._async_client() as client:
            return (await self._aopen(client, "POST", path, payload, stream=False)).json()

    async def astream(self, path: str, payload: dict) -> AsyncIterator[dict]:
        async with self._async_client() as client:
            response = await self._aopen(client, "POST", path, payload, stream=True)
            try:
                async for line in response.aiter_lines():
                    if (event := _sse_event(line)) is _DONE:
                        return
                    if event is not None:
                        yield event
            finally:
                await response.aclose()


_DONE = object()


def _sse_event(line: str) -> dict | object | None:
    """One line of a server-sent-events stream: a JSON object, `_DONE`, or None (blank lines, comments)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    event = json.loads(data)
    if isinstance(event, dict) and "error" in event:  # an error after the answer had begun
        raise _error(500 if event["error"].get("type") == "server_error" else 400, event)
    return event


# --- LangChain messages -> an OpenAI chat request ---------------------------------------------------------


@dataclass
class ChatRequest:
    """The request to send, and what this side knows of it (the media's names, the blocks left out)."""

    payload: dict
    media: list[str] = field(default_factory=list)
    ignored_blocks: list[dict] = field(default_factory=list)


def chat_request(messages: Sequence[BaseMessage], *, model: str, generation: GenerationParams,
                 visual_cache: VisualCacheParams, policy: SourcePolicy, on_unsupported: OnUnsupported,
                 max_text_chars: int, default_question: str) -> ChatRequest:
    """An OpenAI chat request that the server turns back into these messages (see the module docstring);
    `default_question` is asked, as the chat model asks it, when the last message has media but no text."""
    questions = {i: parse_message(m, policy, on_unsupported=on_unsupported, max_text_chars=max_text_chars)
                 for i, m in enumerate(messages) if isinstance(m, HumanMessage)}
    if not questions:
        raise ValueError("the conversation needs at least one human message")
    last = max(questions)
    # the message whose media condition the answer, as the chat model picks it: the last human one, or
    # when it has none, the latest earlier one that has some
    target = next((i for i in sorted(questions, reverse=True) if questions[i].parts), last)
    sent = [_openai_message(m, questions.get(i)) for i, m in enumerate(messages)]
    if not questions[last].text.strip() and questions[target].parts:
        sent[last]["content"].append({"type": "text", "text": default_question})
    media = [p for p in questions[target].parts if isinstance(p, MediaPart)]
    embeddings = [p for p in questions[target].parts if isinstance(p, EmbeddingPart)]
    extensions: dict[str, Any] = {"message": target, "visual_cache": asdict(visual_cache)}
    if any(p.weight != 1.0 for p in media):
        extensions["weights"] = [p.weight for p in media]
    if embeddings:
        extensions["embeddings"] = [{"embedding": p.vector.tolist(), "weight": p.weight, "name": p.name}
                                    for p in embeddings]
    payload = {"model": model, "messages": sent, "temperature": generation.temperature, "top_p": generation.top_p,
               "max_tokens": generation.max_tokens, "ibllm": extensions}
    if generation.seed is not None:
        payload["seed"] = generation.seed
    if generation.stop:
        payload["stop"] = list(generation.stop)
    return ChatRequest(payload, [p.name for p in media + embeddings], questions[last].ignored)


def _openai_message(message: BaseMessage, question: Question | None) -> dict:
    if isinstance(message, HumanMessage):
        if isinstance(message.content, str):
            texts = [message.content]
        else:  # one text part per text block: the server's `message.text` and question text come out the same
            texts = [_block_text(b) for b in message.content_blocks if b.get("type") in ("text", "text-plain")]
        parts = [{"type": "text", "text": t} for t in texts]
        parts += [content_part(p) for p in question.parts if isinstance(p, MediaPart)]
        return {"role": "user", "content": parts}
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, AIMessage):  # its tool calls go back into the prompt, as the model wrote them
        sent: dict[str, Any] = {"role": "assistant", "content": message.text}
        if message.tool_calls:
            sent["tool_calls"] = [{"id": c.get("id") or f"call_{i}", "type": "function",
                                   "function": {"name": c["name"], "arguments": json.dumps(c["args"])}}
                                  for i, c in enumerate(message.tool_calls)]
        return sent
    if isinstance(message, ToolMessage):
        return {"role": "tool", "content": message.text, "tool_call_id": message.tool_call_id}
    raise ValueError(f"{type(message).__name__} messages cannot be sent to a server; use human, AI, system or "
                     "tool messages")


def _block_text(block: dict) -> str:
    """A text block's text; a text-plain document's, decoded (the chat model reads both as the question)."""
    if block.get("text") is not None:
        return block["text"]
    return base64.b64decode(block.get("base64") or "").decode("utf-8", errors="replace")


def content_part(part: MediaPart) -> dict:
    """A medium as the OpenAI content part of its LangChain block type (the registry says which)."""
    data = part.source if isinstance(part.source, bytes) else Path(part.source).read_bytes()
    encoded = base64.b64encode(data).decode()
    block_type = modalities.get(part.modality).block_type if part.modality else modalities.FILE_BLOCK
    mime = part.mime_type or ""
    if block_type == "image":
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}
    if block_type == "video":
        return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{encoded}"}}
    if block_type == "audio":
        return {"type": "input_audio", "input_audio": {"data": encoded, "format": _audio_format(mime, data)}}
    if part.modality and not modalities.get(part.modality).accepts_mime(mime):
        # a file block's MIME type is what names its modality on the server
        mime = modalities.get(part.modality).mime_types[0]
    return {"type": "file", "file": {"file_data": f"data:{mime or 'application/octet-stream'};base64,{encoded}",
                                     "filename": part.name}}


def _audio_format(mime: str, data: bytes) -> str:
    """input_audio's "format": the MIME subtype, else the detected format (the content decides anyway)."""
    if mime.startswith("audio/"):
        return mime.split("/", 1)[1].split(";")[0]
    from ibllm_agent.media import MediaError, detect_format

    try:
        return detect_format(data).kind
    except MediaError:
        return "octet-stream"


# --- what comes back ------------------------------------------------------------------------------------


@dataclass
class ChatAnswer:
    """What a chat answer says, read from a completion or from the chunks of a stream."""

    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    """The server's "ibllm" object: cache_neighbors, dropped_messages, media."""

    tool_calls: list[dict] = field(default_factory=list)
    """A whole answer's calls, as LangChain tool calls."""
    tool_call_chunks: list[dict] = field(default_factory=list)
    """The last chunk's call pieces, as LangChain tool-call chunks."""

    def read(self, body: dict) -> str:
        """Take what a completion or a chunk says; returns its text."""
        self.usage = body.get("usage") or self.usage
        self.tool_call_chunks = []
        text = ""
        for choice in body.get("choices") or []:
            said = choice.get("message") or choice.get("delta") or {}
            text += said.get("content") or ""
            for call in said.get("tool_calls") or []:
                function = call.get("function") or {}
                if "message" in choice:
                    self.tool_calls.append({"name": function.get("name"), "id": call.get("id"), "type": "tool_call",
                                            "args": json.loads(function.get("arguments") or "{}")})
                else:
                    self.tool_call_chunks.append({"name": function.get("name"), "args": function.get("arguments"),
                                                  "id": call.get("id"), "index": call.get("index", 0),
                                                  "type": "tool_call_chunk"})
            if choice.get("finish_reason"):
                self.finish_reason, self.extras = choice["finish_reason"], body.get("ibllm") or {}
        return text
