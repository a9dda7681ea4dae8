"""The HTTP API: a FastAPI app factory over one ImageBind-LLM and its engine.

    app = create_app("toy")                                   # loads in the background; /health says when
    app = create_app(loaded_model, settings=ServeSettings(api_key="s3cret", max_batch=16))
    uvicorn.run(app, host="127.0.0.1", port=8000)             # or `ibllm serve`

Routes: POST /v1/chat/completions, /v1/embeddings, /v1/images/generations, /v1/ibllm/arithmetic,
/v1/ibllm/cache/search; GET /v1/models, /health, /metrics. A chat request is parsed into LangChain messages (`protocol.py`), turned into
a prompt and a fused feature by `ChatImageBindLLM.prepare` (the chat model's own path, in a worker thread:
media decoding is CPU work) and decoded by the engine. An image request reads its media parts the same way
and draws one picture (`image_generation.generate_image`: the toy's decoder, or Stable unCLIP from the
`--unclip-dir` folder), one picture at a time. Every failure is an OpenAI-style error object with
the right status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.tools import ToolException
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ibllm_agent.arithmetic import ExpressionError, evaluate, parse
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import MediaPart, parse_message
from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.fusion import FusionError
from ibllm_agent.media.errors import MediaTooLargeError
from ibllm_agent.perception_tools import EmbeddingStore, nearest
from ibllm_agent.serve import protocol
from ibllm_agent.serve.engine import Engine, EngineStoppedError, QueueFullError
from ibllm_agent.serve.engine import Request as EngineRequest
from ibllm_agent.serve.metrics import Metrics
from ibllm_agent.serve.protocol import APIError, bad_request
from ibllm_agent.serve.settings import ServeSettings
from ibllm_agent.sources import SourcePolicy

logger = logging.getLogger(__name__)

RETRY_AFTER_S = "1"
"""What 429 and 503 answers ask clients to wait: a place in the queue frees within a few tokens."""


class Server:
    """What the routes share: the model once loaded, its engine, the objects that parse requests as the
    LangChain classes do, the embeddings kept under handles, the metrics."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.llm = self.engine = self.chat = self.embeddings = None
        self.name = settings.model_name
        self.load_error: BaseException | None = None
        self.created = int(time.time())
        self.store = EmbeddingStore(max_items=1024)
        # no local roots to confine to: protocol.py lets only data: and (with allow_urls) http(s) URLs through
        self.policy = SourcePolicy(roots=None, allow_urls=settings.allow_urls, max_bytes=settings.max_media_bytes)
        self.metrics = Metrics(lambda: self.engine.stats if self.engine is not None else None)
        # one picture at a time: a diffusers pipeline keeps per-call state (its scheduler's timesteps)
        self.draw_lock = threading.Lock()

    # --- life cycle -------------------------------------------------------------------------------------

    def load(self, model: str, load_kwargs: dict, on_error: Callable[[BaseException], None] | None) -> None:
        """Load by name (in a background thread, so /health can answer 503 meanwhile), then attach."""
        from ibllm_agent.factory import load

        started = time.perf_counter()
        try:
            llm = load(model, **load_kwargs)
            self.attach_generator(llm)
        except Exception as exc:  # noqa: BLE001 - reported by /health and to the caller's hook
            logger.error("could not load the model %r: %s", model, exc)
            self.load_error = exc
            if on_error is not None:
                on_error(exc)
            return
        self.metrics.load_seconds.set(time.perf_counter() - started)
        self.attach(llm)

    def attach_generator(self, llm) -> None:
        """Stable unCLIP from the settings' folder, checked and loaded before the model is served."""
        if self.settings.unclip_dir:
            from ibllm_agent.image_generation import attach_unclip

            attach_unclip(llm, self.settings.unclip_dir)

    def attach(self, llm) -> None:
        s = self.settings
        self.chat = ChatImageBindLLM(model=llm, model_name=self.name, allow_urls=s.allow_urls,
                                     max_media_bytes=s.max_media_bytes,
                                     **({"max_input_chars": s.max_input_chars} if s.max_input_chars else {}))
        self.embeddings = ImageBindEmbeddings(model=llm, allow_urls=s.allow_urls, max_media_bytes=s.max_media_bytes)
        self.name = self.chat.model_name
        self.engine = Engine(llm, max_batch=s.max_batch, max_queue=s.max_queue).start()
        self.llm = llm  # last: its presence means ready
        logger.info("serving %s: %s", llm.card.banner(), llm.card.placement)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop(deadline_s=self.settings.shutdown_timeout_s)

    def health(self) -> tuple[int, dict]:
        """(status, body) of `GET /health`; also Ray Serve's health check of a replica."""
        if self.llm is None:
            return 503, {"status": "error" if self.load_error else "loading"}
        if not self.engine.alive:
            return 503, {"status": "error", "detail": "the decoding engine has stopped"}
        return 200, {"status": "ok", "model": self.name}

    def require_ready(self, model: str | None = None) -> None:
        if self.llm is None:
            state = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise APIError(503, state, code="model_not_ready", headers={"Retry-After": RETRY_AFTER_S})
        if model is not None and model != self.name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.name!r}",
                           param="model", code="model_not_found")

    def model_card(self) -> dict:
        llm = self.llm
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "ibllm",
                "ibllm": {"feature_dim": int(llm.feature_dim), "max_seq_len": int(llm.max_seq_len),
                          "toy": llm.card.is_toy, "visual_cache": llm.visual_cache is not None,
                          "quantize": llm.card.quantize, "placement": llm.card.placement,
                          "image_generator": self.generator_name()}}

    def generator_name(self) -> str | None:
        """What draws on /v1/images/generations: the attached generator, the toy's decoder, or nothing."""
        llm = self.llm
        if llm.image_generator is not None:
            return llm.image_generator.name
        return "toy-decoder" if llm.card.is_toy else None

    # --- chat -------------------------------------------------------------------------------------------

    async def prepare(self, messages: list[BaseMessage], stop: list[str] | None, overrides: dict):
        """The chat model's prompt and fused feature for a conversation (media decoded in a worker thread)."""
        request = await _off_loop(self.chat.prepare, messages, stop, **overrides)
        if request.visual_cache.enabled and self.llm.visual_cache is None:
            raise bad_request("the visual cache was asked for, but this server has none (start it with "
                              "--visual-cache)", param="ibllm.visual_cache")
        return request

    def submit(self, prepared):
        try:
            return self.engine.submit(EngineRequest(prepared.prompt, prepared.feature, prepared.generation,
                                                    prepared.visual_cache))
        except QueueFullError as exc:
            raise APIError(429, f"the server is busy ({exc}); retry shortly", code="queue_full",
                           headers={"Retry-After": RETRY_AFTER_S}) from None
        except EngineStoppedError as exc:
            raise APIError(503, str(exc), code="shutting_down") from None
        except ValueError as exc:
            raise bad_request(str(exc)) from None

    async def events(self, ticket, started: float) -> AsyncIterator:
        """The ticket's events, timed for the latency histograms and counted when they end."""
        last = None
        async for event in ticket.events():
            if event.delta:
                now = time.perf_counter()
                (self.metrics.ttft if last is None else self.metrics.itl).observe(now - (last or started))
                last = now
            if event.done:
                self.metrics.finished.labels(event.finish_reason).inc()
                self.metrics.prompt_tokens.inc(event.prompt_tokens)
                self.metrics.completion_tokens.inc(event.completion_tokens)
            yield event

    def cancelled(self, ticket) -> None:
        """A request whose client went away before its end: free its place."""
        ticket.cancel()
        self.metrics.finished.labels("cancelled").inc()

    # --- vectors ----------------------------------------------------------------------------------------

    def embedding_of(self, handle: str, where: str) -> torch.Tensor:
        try:
            return self.store.get(handle).vector
        except ToolException as exc:
            raise bad_request(str(exc), param=where) from None

    def media_part(self, part: dict, where: str) -> MediaPart:
        """One content part, read as the chat model reads a block (bytes, modality, name)."""
        block = protocol.part_to_block(part, where, allow_urls=self.settings.allow_urls,
                                       max_bytes=self.settings.max_media_bytes)
        if block["type"] == "text":
            raise bad_request(f"{where}: give text as a plain string", param=where)
        try:
            return parse_message(HumanMessage(content=[block]), self.policy).parts[0]
        except ValueError as exc:
            raise bad_request(f"{where}: {exc}", param=where) from None

    def embed(self, items: list[str | MediaPart]) -> list[list[float]]:
        """Texts through the text encoder and media through their branches: `ImageBindEmbeddings`' vectors."""
        out: list[list[float] | None] = [None] * len(items)
        texts = [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
        if texts:
            for (i, _), vector in zip(texts, self.embeddings.embed_documents([t for _, t in texts])):
                out[i] = vector
        for i, item in enumerate(items):
            if isinstance(item, MediaPart):
                out[i] = self.embeddings.embed_media([item.source], item.modality)[0]
        return out

    def draw(self, request: protocol.ImageRequest, params, visual_cache):
        """One picture of the request's media parts (read as a chat message's are) -> `DrawResult`."""
        from ibllm_agent.chat_models import load_media_parts
        from ibllm_agent.image_generation import generate_image

        extensions = request.ibllm
        parts = [self.media_part(p, f"ibllm.inputs.{i}") for i, p in enumerate(extensions.inputs)]
        weights = extensions.weights if extensions.weights is not None else [1.0] * len(parts)
        if len(weights) != len(parts):
            raise bad_request(f"ibllm.weights has {len(weights)} weights for {len(parts)} inputs",
                              param="ibllm.weights")
        media = load_media_parts(parts)
        with self.draw_lock:
            return generate_image(self.llm, list(zip(media, weights)), request.prompt, params, visual_cache)

    def evaluate(self, request: protocol.VectorRequest) -> tuple[torch.Tensor, str]:
        """An embedding expression over the request's named inputs and the kept handles -> (vector, text)."""
        try:
            expression = parse(request.expression)
        except ExpressionError as exc:
            raise bad_request(str(exc), param="expression") from None
        inputs = {name: value if isinstance(value, str) else self.media_part(value, f"inputs.{name}")
                  for name, value in request.inputs.items()}

        def resolve(operands) -> torch.Tensor:
            vectors = []
            for op in operands:
                if op.kind == "handle":
                    item = inputs.get(op.value)
                    vectors.append(torch.tensor(self.embed([item])[0]) if item is not None
                                   else self.embedding_of(op.value, "expression"))
                elif op.kind == "text":
                    vectors.append(torch.tensor(self.embed([op.value])[0]))
                else:
                    raise bad_request(f"{op}: the server reads no files; send the medium as a named input "
                                      "(\"inputs\": {\"a\": <content part>}) and write a", param="expression")
            return torch.stack(vectors)

        try:
            return evaluate(expression, resolve), str(expression)
        except FusionError as exc:
            raise bad_request(str(exc), param="expression") from None


async def _off_loop(function, *args, **kwargs):
    """Run blocking model work in a worker thread; bad input becomes a 400 (413 when too large)."""
    try:
        return await run_in_threadpool(function, *args, **kwargs)
    except APIError:
        raise
    except MediaTooLargeError as exc:
        raise APIError(413, str(exc), code="media_too_large") from None
    except ValueError as exc:  # content, media, params, fusion, context window: all name the problem
        raise bad_request(str(exc)) from None


# --- the app --------------------------------------------------------------------------------------------


def create_app(model: Any = "toy", *, settings: ServeSettings | None = None,
               on_load_error: Callable[[BaseException], None] | None = None, **load_kwargs) -> FastAPI:
    """The ASGI app. `model`: a name or path as for `ibllm_agent.load` (loaded in the background with
    `load_kwargs`; /health answers 503 until it is ready) or an already-loaded `ImageBindLLM`."""
    settings = settings or ServeSettings()
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(model, str):
            threading.Thread(target=server.load, args=(model, load_kwargs, on_load_error), name="ibllm-load",
                             daemon=True).start()
        else:
            server.attach_generator(model)
            server.attach(model)
        yield
        await run_in_threadpool(server.close)

    app = FastAPI(title="ibllm serve", summary="ImageBind-LLM behind an OpenAI-compatible API", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.server = server
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(_CountRequests, metrics=server.metrics)

    @app.get("/health")
    async def health():
        status, body = server.health()
        return JSONResponse(body, status_code=status, headers={"Retry-After": RETRY_AFTER_S} if status != 200 else None)

    @app.get("/metrics")
    async def metrics():
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(_v1_routes(server), dependencies=[Depends(_auth(settings.api_key))])
    return app


def _v1_routes(server: Server) -> APIRouter:
    v1 = APIRouter()

    @v1.get("/v1/models")
    async def models():
        server.require_ready()
        return {"object": "list", "data": [server.model_card()]}

    @v1.get("/v1/models/{model_id}")
    async def model(model_id: str):
        server.require_ready(model_id)
        return server.model_card()

    @v1.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        body = protocol.parse_body(protocol.ChatCompletionRequest, await request.body())
        server.require_ready(body.model)
        body.refuse_unsupported()
        messages = protocol.chat_messages(body, allow_urls=server.settings.allow_urls,
                                          max_bytes=server.settings.max_media_bytes, embedding_of=server.embedding_of)
        prepared = await server.prepare(messages, body.stops(), body.overrides())
        ticket = server.submit(prepared)
        extras = {"media": prepared.media, "dropped_messages": prepared.dropped_messages, "cache_neighbors": []}
        cid = protocol.completion_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(server, ticket, cid, extras, include_usage, started, prepared.plan),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _complete(server, request, ticket, cid, extras, started, prepared.plan)

    @v1.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = protocol.parse_body(protocol.EmbeddingsRequest, await request.body())
        server.require_ready(body.model)
        dim = int(server.llm.feature_dim)
        if body.dimensions is not None and body.dimensions != dim:
            raise bad_request(f"this model's embeddings have {dim} dimensions; omit 'dimensions' or give {dim}",
                              param="dimensions")
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not 0 < len(inputs) <= protocol.MAX_EMBEDDING_INPUTS:
            raise bad_request(f"input must hold 1 to {protocol.MAX_EMBEDDING_INPUTS} items", param="input")
        items: list[str | MediaPart] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                items.append(item)
            elif isinstance(item, dict):
                items.append(server.media_part(item, f"input.{i}"))
            else:
                raise bad_request(f"input.{i}: give text as strings and media as content parts (token arrays "
                                  "are not accepted: ImageBind tokenises text itself)", param=f"input.{i}")
        vectors = await _off_loop(server.embed, items)
        texts = [t for t in items if isinstance(t, str)]
        tokens = await run_in_threadpool(_text_tokens, texts)
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": server.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @v1.post("/v1/images/generations")
    async def images(request: Request):
        body = protocol.parse_body(protocol.ImageRequest, await request.body())
        server.require_ready(body.model)
        params, visual_cache = body.draw_params(), body.visual_cache()
        if server.generator_name() is None:
            raise bad_request("this server has no image generator (start it with --unclip-dir, a local Stable "
                              "unCLIP folder)", code="no_image_generator")
        result = await _off_loop(server.draw, body, params, visual_cache)
        return {"created": int(time.time()), "output_format": "png", "size": "{}x{}".format(*result.image.size),
                "data": [{"b64_json": result.base64(), "revised_prompt": result.prompt}],
                "ibllm": result.summary()}

    @v1.post("/v1/ibllm/arithmetic")
    async def arithmetic(request: Request):
        body = protocol.parse_body(protocol.ArithmeticRequest, await request.body())
        server.require_ready(body.model)
        vector, expression = await _off_loop(server.evaluate, body)
        try:
            item = server.store.put(vector, expression, handle=body.name)
        except ToolException as exc:
            raise bad_request(str(exc), param="name") from None
        return {"object": "ibllm.embedding", "handle": item.handle, "expression": expression,
                "norm": float(vector.norm()), "embedding": vector.tolist()}

    @v1.post("/v1/ibllm/cache/search")
    async def cache_search(request: Request):
        body = protocol.parse_body(protocol.CacheSearchRequest, await request.body())
        server.require_ready(body.model)
        cache = server.llm.visual_cache
        if cache is None:
            raise bad_request("this server has no visual cache (start it with --visual-cache)",
                              code="no_visual_cache")
        if body.embedding is not None:
            vector = torch.tensor(body.embedding, dtype=torch.float32)
        else:
            vector, _ = await _off_loop(server.evaluate, body)
        hits = await _off_loop(nearest, cache, vector, body.k)
        return {"object": "list", "data": hits}

    return v1


async def _stream(server: Server, ticket, cid: str, extras: dict, include_usage: bool,
                  started: float, plan=None) -> AsyncIterator[bytes]:
    """Server-sent `chat.completion.chunk`s: the role, the text deltas (with tools, a call as `tool_calls`
    deltas), the finish (with our extras), the usage when asked, then [DONE]. A client that disconnects
    cancels its generation (the `finally`)."""
    from ibllm_agent.structured import ToolCallStream, openai_delta

    name, done, text = server.name, False, []
    split = ToolCallStream(plan) if plan is not None else None

    def deltas(delta: str, final: bool = False) -> list[dict]:
        if split is None:
            return [{"content": delta}] if delta else []
        return [openai_delta(e) for e in split.feed(delta, final=final)]

    try:
        yield protocol.sse(protocol.chunk(cid, name, {"role": "assistant", "content": ""}))
        async for event in server.events(ticket, started):
            extras["cache_neighbors"] += [n.to_dict() for n in event.neighbors]
            text.append(event.delta)
            for delta in deltas(event.delta):
                yield protocol.sse(protocol.chunk(cid, name, delta))
            if event.done:
                done = True
                if event.finish_reason in ("stop", "length"):
                    for delta in deltas("", final=True):
                        yield protocol.sse(protocol.chunk(cid, name, delta))
                    finish = event.finish_reason
                    if plan is not None:
                        extras.update(_plan_extras(plan, "".join(text), finish))
                        finish = "tool_calls" if plan.parse("".join(text), finish).tool_calls else finish
                    yield protocol.sse(protocol.chunk(cid, name, {}, finish, extras=extras))
                    if include_usage:
                        usage = protocol.usage(event.prompt_tokens, event.completion_tokens)
                        yield protocol.sse(protocol.chunk(cid, name, None, usage=usage))
                else:
                    error = _generation_error(event)
                    server.metrics.errors.labels("/v1/chat/completions", error.type).inc()
                    yield protocol.sse(error.body())
        yield protocol.SSE_DONE
    finally:
        if not done:
            server.cancelled(ticket)


async def _complete(server: Server, request: Request, ticket, cid: str, extras: dict, started: float,
                    plan=None) -> dict:
    """Wait for the whole answer, cancelling it if the client disconnects meanwhile; with tools or an answer
    format, the answer as OpenAI `tool_calls` or content."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, ticket))
    parts, final = [], None
    try:
        async for event in server.events(ticket, started):
            extras["cache_neighbors"] += [n.to_dict() for n in event.neighbors]
            parts.append(event.delta)
            final = event if event.done else None
    finally:
        watcher.cancel()
        if final is None:
            server.cancelled(ticket)
    if final.finish_reason not in ("stop", "length"):
        raise _generation_error(final)
    text, finish = "".join(parts), final.finish_reason
    message = {"role": "assistant", "content": text}
    if plan is not None:
        from ibllm_agent.structured import to_openai

        extras.update(_plan_extras(plan, text, finish))
        message, finish = to_openai(plan, text, finish)
    return protocol.completion(cid, server.name, message, finish, final.prompt_tokens, final.completion_tokens,
                               extras)


def _plan_extras(plan, text: str, finish_reason: str) -> dict:
    """A structured answer that did not come out whole (cut at max_tokens): say so, as the chat model does."""
    parsed = plan.parse(text, finish_reason)
    return {"parsing_error": parsed.error} if parsed.error else {}


async def _cancel_on_disconnect(request: Request, ticket) -> None:
    """Cancel the ticket when the client goes away (the body is read: the next message is the disconnect);
    the engine then ends it with "cancelled", which ends the wait."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    ticket.cancel()


def _generation_error(event) -> APIError:
    if event.finish_reason == "cancelled":
        return APIError(503, "the generation was cancelled (the server is shutting down)", code="cancelled")
    if isinstance(event.error, ValueError):
        return bad_request(str(event.error))
    logger.error("generation failed: %r", event.error)
    return APIError(500, "the generation failed on the server", code="generation_failed")


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai SDK asks for by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _text_tokens(texts: list[str]) -> int:
    """CLIP BPE tokens the text encoder read (start and end included, at most 77 per text)."""
    if not texts:
        return 0
    from ibllm_agent.imagebind.bpe import tokenize

    return int((tokenize(texts) != 0).sum())


# --- authentication, limits, counting, errors ---------------------------------------------------------


def _auth(api_key: str | None):
    expected = api_key.encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise APIError(401, "missing or wrong API key (send the header 'Authorization: Bearer <key>')",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return check


class _BodyLimit:
    """Refuses a request body larger than `max_bytes` before it is read: by its Content-Length when it has
    one, else while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is larger than the limit of {self.max_bytes} bytes",
                             code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse(too_large.body(), status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, limited_receive, send)


class _CountRequests:
    """Counts requests by route template (never the raw path: unbounded labels) and status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, protocol.ERROR_TYPES.get(status, "server_error")).inc()


def _add_error_handlers(app: FastAPI) -> None:
    def answer(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return answer(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):  # unknown routes and methods
        return answer(APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):  # logged with its traceback; the client gets none
        logger.exception("unexpected error on %s", request.url.path)
        return answer(APIError(500, "internal server error", code="internal_error"))
