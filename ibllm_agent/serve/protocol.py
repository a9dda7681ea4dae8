"""The OpenAI wire format: request models, their translation into LangChain messages, response shapes.

A chat request becomes the LangChain messages `ChatImageBindLLM.prepare` reads, so the server parses content
exactly as the chat model does (`ibllm_agent.content_blocks`). Only the step from OpenAI content parts to
LangChain v1 blocks is here, in one table (`_PART_TO_BLOCK`):

    {"type": "text", "text": ...}                                  -> text block
    {"type": "image_url", "image_url": {"url": "data:..." | "https://..."}}   -> image block
    {"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}} -> audio block (audio/<format>)
    {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}  -> video block
    {"type": "file", "file": {"file_data": "data:<mime>;base64,...", "filename": ...}} -> file block with
        that MIME type (a point cloud, or any medium; application/octet-stream: the content decides)

langchain-core converts OpenAI parts too, but labels every file part "application/pdf" and does not know
`video_url`, so we translate all five ourselves. URLs are data: URLs, or http(s) with `--allow-urls`:
never a server-side path. Our extensions ride in a top-level "ibllm" object (what the SDKs' `extra_body`
sends): per-part fusion weights, visual-cache settings, and pre-computed embeddings (raw or by handle)
as extra parts of a message.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ibllm_agent.content_blocks import embedding_block
from ibllm_agent.params import DrawParams, ParamsError, VisualCacheParams

MAX_EMBEDDING_INPUTS = 2048
"""Inputs one /v1/embeddings request may carry (OpenAI's limit)."""

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "service_unavailable_error"}


class APIError(Exception):
    """An answer in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --- requests ------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an option we do not know is refused, never ignored


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """JSON bytes -> a validated request model, or a 400 naming the field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        unknown = first["type"] == "extra_forbidden"
        message = f"unknown parameter {where!r}" if unknown else f"{where}: {first['msg']}"
        raise bad_request(message, param=where, code="unknown_parameter" if unknown else None) from None


class EmbeddingRef(_Strict):
    """A pre-computed ImageBind embedding used as a part: the vector itself, or the handle of one the server
    keeps (a `/v1/ibllm/arithmetic` result)."""

    embedding: list[float] | None = None
    handle: str | None = None
    weight: float = 1.0
    name: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.embedding is None) == (self.handle is None):
            raise ValueError("give exactly one of 'embedding' and 'handle'")
        return self


class ChatExtensions(_Strict):
    """The request's "ibllm" object."""

    weights: list[float] | None = None
    """One fusion weight per media part of the user message `message`, in order (default 1 each)."""
    embeddings: list[EmbeddingRef] = Field(default_factory=list)
    """Embeddings fused with that message's media, after them."""
    message: int | None = None
    """Index in `messages` of the user message `weights` and `embeddings` apply to (default: the last)."""
    visual_cache: bool | dict | None = None
    """true / false, or {"enabled", "size", "t", "weight"}; omitted: used when the model has a cache."""


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # an OpenAI privacy padding option; nothing to pad here


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ibllm: ChatExtensions | None = None
    # structured output and tool calling: grammar-constrained decoding (ibllm_agent.structured)
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # one call per answer at most, whatever this says
    # OpenAI options accepted only at their neutral value
    functions: list | None = None
    function_call: Any = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict | None = None

    def refuse_unsupported(self) -> None:
        """A clear 400 for options this server does not implement (rather than answering without them)."""
        if self.n not in (None, 1):
            raise bad_request("only n=1 is supported", param="n")
        if self.functions or self.function_call not in (None, "none"):
            raise bad_request("functions/function_call (OpenAI's legacy form) are not supported; use tools and "
                              "tool_choice", param="functions", code="unsupported_parameter")
        self.plan()  # a bad response_format, tool or tool_choice is a 400 naming it
        for name in ("frequency_penalty", "presence_penalty", "top_logprobs"):
            if getattr(self, name):
                raise bad_request(f"{name} is not supported", param=name, code="unsupported_parameter")
        if self.logprobs or self.logit_bias:
            raise bad_request("logprobs and logit_bias are not supported", param="logprobs" if self.logprobs
                              else "logit_bias", code="unsupported_parameter")

    def plan(self):
        """The request's tools and answer format as an `OutputPlan` (None: free text)."""
        from ibllm_agent.structured import StructuredRequestError, from_openai

        if self.response_format is None and not self.tools and self.tool_choice in (None, "none"):
            return None
        try:
            plan = from_openai(self.response_format, self.tools, self.tool_choice)
        except StructuredRequestError as exc:
            raise bad_request(str(exc), param=exc.param or "tools") from None
        return plan if plan.active else None

    def overrides(self) -> dict[str, Any]:
        """The settings for `ChatImageBindLLM.prepare` this request gives (omitted: the model's defaults)."""
        out: dict[str, Any] = {}
        for key in ("tools", "tool_choice", "response_format"):  # prepare() makes the same plan from them
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        for key, value in (("temperature", self.temperature), ("top_p", self.top_p), ("max_tokens", max_tokens),
                           ("seed", self.seed)):
            if value is not None:
                out[key] = value
        if self.ibllm is not None and self.ibllm.visual_cache is not None:
            out["visual_cache"] = _visual_cache(self.ibllm.visual_cache)
        return out

    def stops(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


class EmbeddingsRequest(_Strict):
    model: str
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class VectorRequest(_Strict):
    """An embedding expression (`ibllm_agent.arithmetic`) whose handles may name `inputs` of this request
    (content parts, or strings for the text encoder) or embeddings the server keeps."""

    model: str | None = None
    expression: str | None = None
    inputs: dict[str, str | dict[str, Any]] = Field(default_factory=dict)


class ArithmeticRequest(VectorRequest):
    expression: str
    name: str | None = None
    """Keep the result under this handle (default: a new `emb_N`)."""


class CacheSearchRequest(VectorRequest):
    embedding: list[float] | None = None
    """A raw vector to search with, instead of an expression."""
    k: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_query(self):
        if (self.expression is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'expression' and 'embedding'")
        return self


MAX_DRAW_INPUTS = 16
"""Media one picture may be drawn from."""


class DrawExtensions(_Strict):
    """The "ibllm" object of an image request: the media to draw from and how (`DrawParams`)."""

    inputs: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_DRAW_INPUTS)
    """Content parts as in a chat message (image_url, input_audio, video_url, file), mixed into one picture."""
    weights: list[float] | None = None
    """One mixing weight per input (default 1 each; the reference divides by their sum)."""
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    noise_level: int | None = None
    visual_cache: bool | dict | None = None
    """As in a chat request; omitted: used when the model has a cache."""


class ImageRequest(_Strict):
    """`POST /v1/images/generations`: OpenAI's image request, drawing ImageBind-LLM's image output. The media
    to draw from ride in "ibllm" (the SDK's `extra_body`); the prompt guides Stable unCLIP (the toy ignores
    it). Only what this server can honour is accepted: one picture, returned as base64 PNG."""

    model: str | None = None
    prompt: str = ""
    n: int | None = None
    size: str | None = None
    """"WIDTHxHEIGHT" or "auto" (the generator's own size)."""
    response_format: str | None = None
    user: str | None = None
    ibllm: DrawExtensions | None = None

    def draw_params(self) -> DrawParams:
        """The request's settings, checked (a 400 naming the field)."""
        if self.n not in (None, 1):
            raise bad_request("only n=1 is supported", param="n")
        if self.response_format not in (None, "b64_json"):
            raise bad_request("only response_format 'b64_json' is supported (the server keeps no pictures to link "
                              "to)", param="response_format")
        if self.ibllm is None:
            raise bad_request("give the media to draw from in ibllm.inputs (content parts, as in a chat message): "
                              "the picture is drawn from their ImageBind embedding, not from the prompt alone",
                              param="ibllm.inputs")
        sides = {}
        if self.size not in (None, "auto"):
            match = re.fullmatch(r"([0-9]{1,5})x([0-9]{1,5})", self.size)
            if match is None:
                raise bad_request(f"size must be 'WIDTHxHEIGHT' (e.g. '768x768') or 'auto', got {self.size!r}",
                                  param="size")
            sides = {"width": int(match[1]), "height": int(match[2])}
        e = self.ibllm
        given = {"steps": e.steps, "guidance": e.guidance, "seed": e.seed, "noise_level": e.noise_level}
        try:
            return DrawParams(**{k: v for k, v in given.items() if v is not None}, **sides)
        except ParamsError as exc:
            field = str(exc).split(" ", 1)[0].removeprefix("draw.")
            raise bad_request(str(exc), param="size" if field in sides else f"ibllm.{field}") from None

    def visual_cache(self) -> VisualCacheParams | None:
        return None if self.ibllm is None or self.ibllm.visual_cache is None else _visual_cache(self.ibllm.visual_cache)


def _visual_cache(value: bool | dict) -> VisualCacheParams:
    """The "ibllm" object's visual_cache setting, checked."""
    try:
        return VisualCacheParams.of(value)
    except ParamsError as exc:
        raise bad_request(str(exc), param="ibllm.visual_cache") from None


# --- OpenAI content parts -> LangChain v1 blocks ---------------------------------------------------------

_BASE64_CHARS = 4 / 3  # base64 characters per byte
_FORMAT = re.compile(r"[A-Za-z0-9.+-]{1,32}")


def _media_url(url: Any, where: str, allow_urls: bool, max_bytes: int) -> str:
    """A data: URL (size checked before decoding) or, when allowed, an http(s) URL."""
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where} must be a non-empty string", param=where)
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep:
            raise bad_request(f"{where}: a data: URL needs a ',' before its data", param=where)
        _check_size(len(payload) / (_BASE64_CHARS if header.endswith(";base64") else 1), where, max_bytes)
        return url
    if url.lower().startswith(("http://", "https://")):
        if not allow_urls:
            raise bad_request(f"{where}: http(s) URLs are disabled on this server (start it with --allow-urls); "
                              "send the file inline as a data: URL", param=where)
        return url
    raise bad_request(f"{where}: only data: URLs{' and http(s) URLs' if allow_urls else ''} are accepted "
                      "(the server reads no files of its own)", param=where)


def _check_size(nbytes: float, where: str, max_bytes: int) -> None:
    if nbytes > max_bytes + 3:  # +3: base64 padding
        raise APIError(413, f"{where}: the data is larger than the limit of {max_bytes} bytes", param=where,
                       code="media_too_large")


def _field(part: dict, key: str, where: str) -> dict:
    value = part.get(key)
    if not isinstance(value, dict):
        raise bad_request(f"{where}.{key} must be an object", param=f"{where}.{key}")
    return value


def _text(part: dict, where: str, **_) -> dict:
    if not isinstance(part.get("text"), str):
        raise bad_request(f"{where}.text must be a string", param=f"{where}.text")
    return {"type": "text", "text": part["text"]}


def _image_url(part: dict, where: str, allow_urls: bool, max_bytes: int) -> dict:
    url = _field(part, "image_url", where).get("url")
    return {"type": "image", "url": _media_url(url, f"{where}.image_url.url", allow_urls, max_bytes)}


def _video_url(part: dict, where: str, allow_urls: bool, max_bytes: int) -> dict:
    url = _field(part, "video_url", where).get("url")
    return {"type": "video", "url": _media_url(url, f"{where}.video_url.url", allow_urls, max_bytes)}


def _input_audio(part: dict, where: str, max_bytes: int, **_) -> dict:
    audio = _field(part, "input_audio", where)
    data, fmt = audio.get("data"), audio.get("format")
    if not isinstance(data, str) or not data:
        raise bad_request(f"{where}.input_audio.data must be base64 text", param=f"{where}.input_audio.data")
    if not isinstance(fmt, str) or not _FORMAT.fullmatch(fmt):
        raise bad_request(f"{where}.input_audio.format must name an audio format such as 'wav' or 'mp3'",
                          param=f"{where}.input_audio.format")
    _check_size(len(data) / _BASE64_CHARS, f"{where}.input_audio.data", max_bytes)
    return {"type": "audio", "base64": data, "mime_type": f"audio/{fmt.lower()}"}


def _file(part: dict, where: str, max_bytes: int, **_) -> dict:
    file = _field(part, "file", where)
    if file.get("file_id") is not None:
        raise bad_request(f"{where}.file.file_id: this server has no file store; send file_data",
                          param=f"{where}.file.file_id")
    data, filename = file.get("file_data"), file.get("filename")
    if not isinstance(data, str) or not data:
        raise bad_request(f"{where}.file.file_data must be a data: URL or base64 text", param=f"{where}.file.file_data")
    if filename is not None and not isinstance(filename, str):
        raise bad_request(f"{where}.file.filename must be a string", param=f"{where}.file.filename")
    block: dict[str, Any] = {"type": "file", "extras": {"filename": filename} if filename else {}}
    if data.startswith("data:"):
        block["url"] = _media_url(data, f"{where}.file.file_data", False, max_bytes)
        mime = data[5:].partition(",")[0].split(";")[0]
        if mime:
            block["mime_type"] = mime
    else:
        _check_size(len(data) / _BASE64_CHARS, f"{where}.file.file_data", max_bytes)
        block["base64"] = data
    return block


_PART_TO_BLOCK = {"text": _text, "image_url": _image_url, "input_audio": _input_audio, "video_url": _video_url,
                  "file": _file}
"""OpenAI content part type -> its LangChain v1 block."""


def part_to_block(part: Any, where: str, *, allow_urls: bool, max_bytes: int) -> dict:
    """One OpenAI content part -> a LangChain v1 content block; unknown types are a 400, never dropped."""
    if not isinstance(part, dict):
        raise bad_request(f"{where} must be a content part object", param=where)
    convert = _PART_TO_BLOCK.get(part.get("type"))
    if convert is None:
        raise bad_request(f"{where}: content part type {part.get('type')!r} is not supported; this server reads "
                          f"{', '.join(_PART_TO_BLOCK)}", param=f"{where}.type", code="unsupported_content")
    return convert(part, where, allow_urls=allow_urls, max_bytes=max_bytes)


def _text_content(content: Any, where: str) -> str:
    """System, developer, assistant and tool content: a string or text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(_text(p, where)["text"] for p in content)
    raise bad_request(f"{where} must be a string or a list of text parts", param=where)


def chat_messages(request: ChatCompletionRequest, *, allow_urls: bool, max_bytes: int,
                  embedding_of) -> list[BaseMessage]:
    """The request's messages as LangChain messages, with the "ibllm" weights and embeddings applied.

    `embedding_of(handle)` returns the vector the server keeps under a handle (a 400 when there is none)."""
    users = [i for i, m in enumerate(request.messages) if isinstance(m, dict) and m.get("role") == "user"]
    extensions = request.ibllm or ChatExtensions()
    target = extensions.message if extensions.message is not None else (users[-1] if users else None)
    if (extensions.weights or extensions.embeddings) and target not in users:
        raise bad_request("ibllm.message must be the index of a user message", param="ibllm.message")
    out: list[BaseMessage] = []
    for i, message in enumerate(request.messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", param=where)
        role, content = message.get("role"), message.get("content")
        if role == "user":
            if isinstance(content, str):
                blocks: str | list[dict] = content
            elif isinstance(content, list):
                blocks = [part_to_block(p, f"{where}.content.{j}", allow_urls=allow_urls, max_bytes=max_bytes)
                          for j, p in enumerate(content)]
            else:
                raise bad_request(f"{where}.content must be a string or a list of content parts",
                                  param=f"{where}.content")
            if i == target:
                blocks = _with_extensions(blocks, extensions, embedding_of)
            out.append(HumanMessage(content=blocks))
        elif role in ("system", "developer"):
            out.append(SystemMessage(content=_text_content(content, f"{where}.content")))
        elif role == "assistant":
            if message.get("function_call"):
                raise bad_request(f"{where}: function_call is OpenAI's legacy form; send tool_calls",
                                  param=f"{where}.function_call")
            text = _text_content(content, f"{where}.content") if content is not None else ""
            out.append(AIMessage(content=text, tool_calls=_tool_calls(message.get("tool_calls"), where)))
        elif role == "tool":  # an earlier tool result: part of the conversation's transcript
            out.append(ToolMessage(content=_text_content(content, f"{where}.content"),
                                   tool_call_id=str(message.get("tool_call_id") or "")))
        else:
            raise bad_request(f"{where}.role must be system, developer, user, assistant or tool, got {role!r}",
                              param=f"{where}.role")
    return out


def _tool_calls(calls, where: str) -> list[dict]:
    """An assistant message's OpenAI `tool_calls` as LangChain tool calls (they go back into the prompt)."""
    if calls is None:
        return []
    out = []
    for j, call in enumerate(calls if isinstance(calls, list) else [None]):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where}.tool_calls.{j} must have a function with a name",
                              param=f"{where}.tool_calls.{j}")
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError:
            raise bad_request(f"{where}.tool_calls.{j}.function.arguments is not JSON",
                              param=f"{where}.tool_calls.{j}") from None
        out.append({"name": function["name"], "args": args if isinstance(args, dict) else {"value": args},
                    "id": str(call.get("id") or f"call_{j}"), "type": "tool_call"})
    return out


def _with_extensions(blocks: str | list[dict], extensions: ChatExtensions, embedding_of) -> list[dict]:
    blocks = [{"type": "text", "text": blocks}] if isinstance(blocks, str) else blocks
    media = [b for b in blocks if b["type"] != "text"]
    if extensions.weights is not None:
        if len(extensions.weights) != len(media):
            raise bad_request(f"ibllm.weights has {len(extensions.weights)} weights for {len(media)} media parts",
                              param="ibllm.weights")
        for block, weight in zip(media, extensions.weights):
            block.setdefault("extras", {})["weight"] = weight
    for j, ref in enumerate(extensions.embeddings):
        vector = ref.embedding if ref.embedding is not None else embedding_of(ref.handle, f"ibllm.embeddings.{j}")
        blocks.append(embedding_block(vector, ref.weight, ref.name or ref.handle or f"embedding-{j}"))
    return blocks


# --- responses ------------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, message: dict, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               extras: dict) -> dict:
    """A `chat.completion` object with the assistant `message`; `extras` (media, cache neighbours) ride under
    "ibllm"."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens), "ibllm": extras}


def chunk(cid: str, model: str, delta: dict | None, finish_reason: str | None = None, *, usage: dict | None = None,
          extras: dict | None = None) -> dict:
    """A `chat.completion.chunk`; `delta=None` is the usage chunk (no choices) of stream_options.include_usage."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": []}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    if usage is not None:
        body["usage"] = usage
    if extras is not None:
        body["ibllm"] = extras
    return body


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
