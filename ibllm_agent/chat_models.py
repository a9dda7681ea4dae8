"""`ChatImageBindLLM`: ImageBind-LLM as a LangChain chat model.

    from ibllm_agent import ChatImageBindLLM
    from langchain_core.messages import HumanMessage

    chat = ChatImageBindLLM(model="toy")                 # the embedded toy world, no other argument
    chat.invoke([HumanMessage(content=[
        {"type": "text", "text": "What do you hear?"},
        {"type": "audio", "url": "rain.wav"},            # or base64 + mime_type; see content_blocks.py
    ])])

One human turn's media (images, sounds, videos, point clouds, pre-computed embeddings) are fused
into one ImageBind feature (optional per-block weights, `ibllm_agent.fusion`), which conditions the
answer through the visual cache and the bind network. A block the model cannot read (a PDF, an unknown
type) is an error unless `on_unsupported="skip"`, which lists what was skipped in
`response_metadata["ignored_blocks"]`. The prompt is the Alpaca template the model was tuned with:
a lone question is exactly upstream's `format_prompt(question)`; a system message and earlier
turns become the template's "Input" context, oldest turns dropped (with a warning) when the
context window is short. The current question is never truncated.

Media stay with the conversation: when the current turn has none, the latest earlier human turn
that had some conditions the answer (so "and what colour is it?" still sees the picture).

Structured output and tools (`ibllm_agent.structured`, grammar-constrained decoding):

    chat.with_structured_output(Animal).invoke([...describe this sound...])   # -> Animal(...), always valid
    chat.bind_tools([get_weather], tool_choice="any").invoke("Weather in Oslo?").tool_calls

Bound tools are listed in the prompt's context; the answer is text or one call whose name is a bound tool
and whose arguments validate under its schema (the grammar allows nothing else). Earlier calls and tool
results in the history go into the prompt as the model writes and reads them.

Remote mode: `ChatImageBindLLM(model="toy", base_url="http://host:8000/v1", api_key=...)` sends the
conversation to an `ibllm serve` (`ibllm_agent.remote`) and loads nothing here; the answers, usage and cache
neighbours are the same, and local files named in blocks are read here and sent inline.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from pydantic import ConfigDict, field_validator

from ibllm_agent import modalities
from ibllm_agent.batching import batcher_for
from ibllm_agent.content_blocks import MAX_TEXT_CHARS, EmbeddingPart, MediaPart, Question, parse_message
from ibllm_agent.fusion import fuse, fusion_weights
from ibllm_agent.grammar import engine_available
from ibllm_agent.model_pool import PooledModelFields
from ibllm_agent.params import DEFAULT_GENERATION, GenerationParams, VisualCacheParams
from ibllm_agent.remote import ChatAnswer, ChatRequest, chat_request
from ibllm_agent.structured import (
    OutputPlan,
    StructuredOutputParser,
    ToolCallStream,
    render_tool_call,
    render_tool_result,
)

_GENERATION_OVERRIDES = ("temperature", "top_p", "max_tokens", "seed")
_CALL_OVERRIDES = (*_GENERATION_OVERRIDES, "visual_cache")
_CALL_IGNORED = ("stream", "ls_structured_output_format")
"""Call keywords LangChain itself passes (to pick the streaming path, to trace); they say nothing about the answer."""
_PLAN_KEYS = ("tools", "tool_choice", "response_format")
"""Call keywords `bind_tools` and `with_structured_output` bind: they make the request's `OutputPlan`."""


class ContextWindowWarning(UserWarning):
    """Earlier turns of a conversation were left out because the context window is full."""


@dataclass
class PreparedRequest:
    """A conversation turned into what the model consumes."""

    prompt: str
    feature: torch.Tensor | None  # (D,) fused ImageBind feature, None = text only
    prompt_tokens: int
    generation: GenerationParams
    visual_cache: VisualCacheParams
    media: list[str]  # display names of the media that conditioned the answer
    dropped_messages: int
    ignored_blocks: list[dict]  # blocks skipped under on_unsupported="skip"
    plan: OutputPlan | None = None  # tools / answer schema; its constraint is in `generation`


class ChatImageBindLLM(BaseChatModel, PooledModelFields):
    """ImageBind-LLM chat model: text plus images, audio, video, point clouds and embeddings in, text out.

    Tool calling (`bind_tools`) and structured output (`with_structured_output`) are grammar-constrained:
    the form is guaranteed, the values are the model's (the toy is trained on a small tool-use skill).
    Which model to load and where media may come from: see `PooledModelFields`.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt or foreign option is an error, not ignored

    temperature: float = DEFAULT_GENERATION.temperature
    """Sampling temperature; 0 = greedy. Default as upstream."""
    top_p: float = DEFAULT_GENERATION.top_p
    """Nucleus sampling mass. Default as upstream."""
    max_tokens: int = DEFAULT_GENERATION.max_tokens
    """Most tokens to generate per answer."""
    stop: list[str] | None = None
    """Strings that end an answer (not included in it)."""
    seed: int | None = None
    """Seed for sampling (temperature > 0); seeded requests are never batched with others."""
    timeout: float | None = None
    """Seconds to wait for an answer before raising TimeoutError (a streamed answer stops there; a
    batched one finishes in the background, since a decoding step cannot be interrupted)."""
    streaming: bool = False
    """Stream tokens through callbacks on `invoke` as well."""

    visual_cache: VisualCacheParams = VisualCacheParams()
    """The visual cache (upstream `knn`, `cache_size`, `cache_t`, `cache_weight`): `True`/`False`, a dict
    such as `{"size": 5}`, or `VisualCacheParams`; the default uses it whenever the model has one.
    (Not `cache`: that field of every LangChain model switches LangChain's response cache.)"""

    default_question: str = "Describe this input."
    """Question asked when a turn has media but no text."""
    on_unsupported: Literal["error", "skip"] = "error"
    """A content block the model cannot read (a PDF, an unknown type): "error" raises `ContentError`;
    "skip" leaves it out and lists it in `response_metadata["ignored_blocks"]`."""
    max_input_chars: int = MAX_TEXT_CHARS
    """Characters of text one message may carry."""
    max_batch_size: int = 8
    """Most concurrent conversations decoded together in one batch (local mode)."""

    LOCAL_ONLY: ClassVar[tuple[str, ...]] = (*PooledModelFields.LOCAL_ONLY, "max_batch_size")

    @field_validator("visual_cache", mode="before")
    @classmethod
    def _visual_cache(cls, value: Any) -> VisualCacheParams:
        return VisualCacheParams.of(value)

    @property
    def _llm_type(self) -> str:
        return "imagebind-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "visual_cache": self.visual_cache}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "ibllm"
        override = kwargs.get("model")
        params["ls_model_name"] = override if isinstance(override, str) else self.model_name
        return params

    def _resolve_model_profile(self) -> dict[str, Any]:
        """What this model honestly does (read by `create_agent` and other LangChain helpers)."""
        profile = {"name": self.model_name or str(self.model), "open_weights": True, "text_inputs": True,
                   "image_inputs": True, "image_url_inputs": self.allow_urls, "audio_inputs": True,
                   "video_inputs": True, "pdf_inputs": False, "text_outputs": True}
        # grammar-constrained: possible when the engine (the `structured` extra) is installed
        profile["tool_calling"] = profile["tool_choice"] = profile["structured_output"] = engine_available()
        if self._llm is not None:
            profile["max_input_tokens"] = profile["max_output_tokens"] = int(self._llm.max_seq_len)
        return profile

    def get_token_ids(self, text: str) -> list[int]:
        """The model's own (sentencepiece) token ids, so `get_num_tokens` and `trim_messages` count right."""
        if self._llm is None:
            raise NotImplementedError("token counting needs the model's tokenizer, which remote mode does not load; "
                                      "read usage_metadata from the answers instead")
        return list(self._llm.tokenizer.encode(text, bos=False, eos=False))

    # --- conversation -> prompt + feature -------------------------------------------------------

    def prepare(self, messages: Sequence[BaseMessage], stop: list[str] | None = None,
                **kwargs: Any) -> PreparedRequest:
        """Format the conversation, load and fuse its media; raises ValueError on unusable input."""
        if self._llm is None:
            raise ValueError("prepare() needs a local model; in remote mode the server prepares requests")
        plan = self._plan({k: kwargs.pop(k) for k in _PLAN_KEYS if k in kwargs})
        generation, visual_cache = self._params(stop, kwargs)
        if plan is not None:
            generation = replace(generation, constraint=plan.constraint())
        last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last_human is None:
            raise ValueError("the conversation needs at least one human message")
        asked = self._parse(messages[last_human])
        with_media = asked if asked.parts else self._latest_media_question(messages[:last_human])
        question = asked.text.strip() or (self.default_question if with_media else "")
        if not question:
            raise ValueError("the last human message has neither text nor media")
        context = [plan.context()] if plan is not None and plan.context() else []
        system = "\n\n".join(context + [m.text for m in messages if isinstance(m, SystemMessage) and m.text])
        call_names = {c["id"]: c["name"] for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
        history = [_transcript_line(m, call_names) for i, m in enumerate(messages)
                   if i != last_human and not isinstance(m, SystemMessage)]
        prompt, prompt_tokens, dropped = self._fit(question, system, [h for h in history if h], generation)
        feature, names = self._feature(with_media) if with_media else (None, [])
        return PreparedRequest(prompt, feature, prompt_tokens, generation, visual_cache, names, dropped,
                               asked.ignored, plan)

    @staticmethod
    def _plan(bound: dict[str, Any]) -> OutputPlan | None:
        """The request's tools and answer format (bound by `bind_tools` / `with_structured_output`)."""
        if not bound:
            return None
        response_format = bound.get("response_format") or {}
        kind = response_format.get("type", "text")
        # ours ({"type", "schema"}) or OpenAI's ({"type": "json_schema", "json_schema": {"schema": ...}})
        schema = response_format.get("schema") or (response_format.get("json_schema") or {}).get("schema")
        plan = OutputPlan.make(bound.get("tools") or (), bound.get("tool_choice"), answer_schema=schema,
                               json_answer=kind in ("json_schema", "json_object"),
                               describe_schema=kind == "json_schema")
        return plan if plan.active else None

    def _parse(self, message: BaseMessage) -> Question:
        return parse_message(message, self._policy, on_unsupported=self.on_unsupported,
                             max_text_chars=self.max_input_chars)

    def _params(self, stop: list[str] | None, overrides: dict[str, Any]) -> tuple[GenerationParams, VisualCacheParams]:
        unknown = sorted(set(overrides) - set(_CALL_OVERRIDES) - set(_CALL_IGNORED))
        if unknown:
            raise ValueError(f"unknown call options {unknown}; ChatImageBindLLM takes {', '.join(_CALL_OVERRIDES)}")
        values = {key: overrides.get(key, getattr(self, key)) for key in _GENERATION_OVERRIDES}
        stops = tuple(stop if stop is not None else (self.stop or ()))
        generation = GenerationParams(max_tokens=values["max_tokens"], temperature=values["temperature"],
                                      top_p=values["top_p"], seed=values["seed"], stop=stops)
        return generation, VisualCacheParams.of(overrides.get("visual_cache", self.visual_cache))

    def _latest_media_question(self, messages: Sequence[BaseMessage]) -> Question | None:
        for message in reversed(messages):
            if isinstance(message, HumanMessage) and any(
                    b.get("type") in modalities.block_types() or b.get("type") == "non_standard"
                    for b in message.content_blocks):
                earlier = self._parse(message)
                if earlier.parts:
                    return earlier
        return None

    def _count_tokens(self, text: str) -> int:
        return len(self._llm.tokenizer.encode(text, bos=True, eos=False))

    def _context_window(self) -> int:
        return int(self._llm.max_seq_len)

    def _fit(self, question: str, system: str, history: list[str],
             params: GenerationParams) -> tuple[str, int, int]:
        """The prompt with as much recent history as fits `max_seq_len - max_tokens`."""
        from ibllm_agent.generation import format_prompt

        budget = self._context_window() - max(1, params.max_tokens)
        for dropped in range(len(history) + 1):
            context = "\n\n".join(part for part in (system, "\n".join(history[dropped:])) if part)
            prompt = format_prompt(question, context or None)
            tokens = self._count_tokens(prompt)
            if tokens <= budget:
                if dropped:
                    warnings.warn(f"dropped the {dropped} oldest message(s) of the conversation to fit the "
                                  f"context window ({self._context_window()} tokens, {params.max_tokens} "
                                  "reserved for the answer)", ContextWindowWarning, stacklevel=4)
                return prompt, tokens, dropped
        raise ValueError(f"the question (with the system prompt) takes {tokens} tokens, more than the "
                         f"{budget} left in the context window of {self._context_window()} after reserving "
                         f"{params.max_tokens} for the answer; shorten it or lower max_tokens")

    def _feature(self, question: Question) -> tuple[torch.Tensor | None, list[str]]:
        """Encode a message's media and fuse them with their weights into one (D,) feature."""
        media = [p for p in question.parts if isinstance(p, MediaPart)]
        embeddings = [p for p in question.parts if isinstance(p, EmbeddingPart)]
        dim = int(self._llm.feature_dim)
        for part in embeddings:
            if part.vector.numel() != dim:
                raise ValueError(f"embedding {part.name!r} has {part.vector.numel()} values; this model's "
                                 f"ImageBind features have {dim}")
        names = [p.name for p in media] + [p.name for p in embeddings]
        weights = [p.weight for p in media] + [p.weight for p in embeddings]
        fusion_weights(weights, names=names)  # refuse a weight of 0 or beyond float32 before any work
        if not media and len(embeddings) == 1:
            # a lone embedding (e.g. an arithmetic result, already a fused feature) conditions the turn as it
            # is: its norm is part of what it says; only the sign of its weight matters
            only = embeddings[0]
            return (only.vector if only.weight > 0 else -only.vector), [only.name]
        vectors = []
        if media:
            items = load_media_parts(media)
            with self._llm.card.lock:
                vectors.append(self._llm.encode(items))
        vectors += [p.vector[None] for p in embeddings]
        return fuse(torch.cat(vectors), weights, names=names), names

    # --- results ---------------------------------------------------------------------------------

    # --- tools and structured output ------------------------------------------------------------------

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        """Bind tools (LangChain tools, functions, pydantic classes, TypedDicts or OpenAI tool dicts).
        `tool_choice`: None/"auto" (text or one call), "any"/"required" (a call), a tool's name (that tool),
        "none" (no call). Checked here: a bad tool or choice raises `StructuredRequestError` (a ValueError)."""
        plan = OutputPlan.make(tools, tool_choice)
        formatted = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                       "parameters": t.parameters}} for t in plan.tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: Any = None, *, method: Literal["json_schema", "json_mode",
                                                                            "function_calling"] = "json_schema",
                               include_raw: bool = False, strict: bool | None = None, **kwargs: Any) -> Runnable:
        """Answers as `schema` (a pydantic class -> instances; a TypedDict or JSON Schema dict -> dicts).

        - "json_schema": the prompt shows the shape and the grammar holds the answer to the schema;
        - "json_mode": the answer is JSON (the prompt is left as written); with a schema, the grammar also
          holds it to the schema, else it is any JSON object;
        - "function_calling": the schema is bound as a tool that must be called.

        `include_raw=True` returns {"raw": AIMessage, "parsed": ..., "parsing_error": ...}: an answer cut at
        max_tokens (finish_reason "length") has parsed None and the error; without it, that raises
        `OutputParserException`. Answers are always held to the schema, so `strict` (OpenAI's switch for
        that) is accepted and changes nothing."""
        from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
        from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
        from langchain_core.utils.pydantic import is_basemodel_subclass

        if kwargs:
            raise ValueError(f"with_structured_output: unknown arguments {sorted(kwargs)}")
        if schema is None and method != "json_mode":
            raise ValueError(f"with_structured_output(method={method!r}) needs a schema")
        pydantic_class = schema if isinstance(schema, type) and is_basemodel_subclass(schema) else None
        try:
            json_schema = None if schema is None else convert_to_json_schema(schema)
        except Exception as e:  # noqa: BLE001 - LangChain raises several kinds for what it cannot convert
            raise ValueError(f"with_structured_output: cannot read the schema ({e})") from e
        trace = {"ls_structured_output_format": {"kwargs": {"method": method}, "schema": json_schema}}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, **trace)
            parser = (PydanticToolsParser(tools=[schema], first_tool_only=True) if pydantic_class else
                      JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            kind = "json_schema" if method == "json_schema" else "json_object"
            plan = OutputPlan.make(answer_schema=json_schema, json_answer=True, describe_schema=kind == "json_schema")
            llm = self.bind(response_format={"type": kind, "schema": json_schema}, **trace)
            parser = StructuredOutputParser(plan=plan, pydantic_object=pydantic_class)
        else:
            raise ValueError(f"with_structured_output: method must be json_schema, json_mode or function_calling, "
                             f"got {method!r}")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=(lambda x: x["raw"]) | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")

    def _message(self, request: PreparedRequest, text: str, finish_reason: str, error: str,
                 neighbors: list, output_tokens: int) -> AIMessage:
        metadata = self._local_metadata(request, finish_reason, neighbors)
        if error:
            metadata["error"] = error
        fields: dict[str, Any] = {"content": text}
        if request.plan is not None:
            parsed = request.plan.parse(text, finish_reason)
            fields = {"content": parsed.content if (parsed.tool_calls or parsed.invalid_tool_calls) else text,
                      "tool_calls": parsed.tool_calls, "invalid_tool_calls": parsed.invalid_tool_calls}
            if parsed.error:
                metadata["parsing_error"] = parsed.error
        return AIMessage(**fields, usage_metadata=self._usage(request.prompt_tokens, output_tokens),
                         response_metadata=metadata)

    def _metadata(self, finish_reason: str, media: list[str], neighbors: list[dict], dropped_messages: int,
                  ignored_blocks: list[dict]) -> dict[str, Any]:
        metadata = {
            "model_name": self.model_name,
            "model_provider": "ibllm",
            "finish_reason": finish_reason,
            "media": media,
            "cache_neighbors": neighbors,
            "dropped_messages": dropped_messages,
        }
        if ignored_blocks:
            metadata["ignored_blocks"] = ignored_blocks
        return metadata

    def _local_metadata(self, request: PreparedRequest, finish_reason: str, neighbors: list) -> dict[str, Any]:
        return self._metadata(finish_reason, request.media, [n.to_dict() for n in neighbors],
                              request.dropped_messages, request.ignored_blocks)

    @staticmethod
    def _usage(input_tokens: int, output_tokens: int) -> UsageMetadata:
        return UsageMetadata(input_tokens=input_tokens, output_tokens=output_tokens,
                             total_tokens=input_tokens + output_tokens)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self._remote is not None:
            request = self._remote_request(messages, stop, kwargs)
            return self._remote_result(request, self._remote.post("/chat/completions", request.payload))
        request = self.prepare(messages, stop, **kwargs)
        future = batcher_for(self._llm, self.max_batch_size).submit(request.prompt, request.feature, request.generation,
                                                                    request.visual_cache)
        generation = future.result(timeout=self.timeout)
        message = self._message(request, generation.text, generation.finish_reason, generation.error,
                                generation.neighbors, len(generation.token_ids))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if self._remote is not None:
            request, answer = self._remote_request(messages, stop, kwargs, stream=True), ChatAnswer()
            for body in self._remote.stream("/chat/completions", request.payload):
                text = answer.read(body)
                if text or answer.tool_call_chunks:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text,
                                                                       tool_call_chunks=answer.tool_call_chunks))
                    if run_manager:
                        run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk
            yield self._remote_last_chunk(request, answer)
            return
        request = self.prepare(messages, stop, **kwargs)
        llm = self._llm
        with llm.card.lock:
            decoder, _, neighbors = llm.start([request.prompt], request.feature, request.generation,
                                              request.visual_cache)
        steps = iter(decoder)
        split = ToolCallStream(request.plan) if request.plan is not None else None
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the answer took longer than timeout={self.timeout} s")
            with llm.card.lock:  # per step, so batched requests and other streams interleave fairly
                deltas = next(steps, None)
            if deltas is None:
                break
            if deltas[0]:
                yield from self._chunks(deltas[0], split, run_manager)
        row = next(iter(decoder.rows.values()))
        if split is not None:
            yield from self._chunks("", split, run_manager, final=True)
        metadata = self._local_metadata(request, row.finish or "length", neighbors[0])
        if row.error:
            metadata["error"] = row.error
        if request.plan is not None:
            parsed = request.plan.parse(row.text, row.finish or "length")
            if parsed.error:
                metadata["parsing_error"] = parsed.error
        # usage and model name on exactly one chunk: chunks are summed, and the sum must count them once
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last", usage_metadata=self._usage(request.prompt_tokens, len(row.ids)),
            response_metadata=metadata))

    @staticmethod
    def _chunks(delta: str, split: ToolCallStream | None, run_manager, final: bool = False
                ) -> Iterator[ChatGenerationChunk]:
        """Text deltas as content chunks; with tools bound, a call's pieces as tool_call_chunks."""
        events = [("text", delta)] if split is None else list(split.feed(delta, final=final))
        for kind, value in events:
            message = (AIMessageChunk(content=value) if kind == "text" else
                       AIMessageChunk(content="", tool_call_chunks=[value]))
            chunk = ChatGenerationChunk(message=message)
            if run_manager:
                run_manager.on_llm_new_token(value if kind == "text" else "", chunk=chunk)
            yield chunk


    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self._remote is None:
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        request = await asyncio.to_thread(self._remote_request, messages, stop, kwargs)  # reads local files
        return self._remote_result(request, await self._remote.apost("/chat/completions", request.payload))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self._remote is None:
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
            return
        request, answer = await asyncio.to_thread(self._remote_request, messages, stop, kwargs, True), ChatAnswer()
        async for body in self._remote.astream("/chat/completions", request.payload):
            text = answer.read(body)
            if text or answer.tool_call_chunks:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, tool_call_chunks=answer.tool_call_chunks))
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield self._remote_last_chunk(request, answer)

    # --- remote mode (base_url): the server answers -----------------------------------------------------

    def _remote_request(self, messages: Sequence[BaseMessage], stop: list[str] | None, overrides: dict[str, Any],
                        stream: bool = False) -> ChatRequest:
        bound = {k: overrides.pop(k) for k in _PLAN_KEYS if k in overrides}  # tools / answer format: the server's
        self._plan(bound)  # checked here, as in local mode
        generation, visual_cache = self._params(stop, overrides)
        request = chat_request(messages, model=self.model, generation=generation, visual_cache=visual_cache,
                               policy=self._policy, on_unsupported=self.on_unsupported,
                               max_text_chars=self.max_input_chars, default_question=self.default_question)
        request.payload.update({k: _openai_format(v) if k == "response_format" else v for k, v in bound.items()})
        if stream:
            request.payload.update(stream=True, stream_options={"include_usage": True})
        return request

    def _remote_metadata(self, request: ChatRequest, answer: ChatAnswer) -> dict[str, Any]:
        dropped = int(answer.extras.get("dropped_messages", 0))
        if dropped:
            warnings.warn(f"the server dropped the {dropped} oldest message(s) of the conversation to fit its "
                          "context window", ContextWindowWarning, stacklevel=4)
        return self._metadata(answer.finish_reason, request.media, answer.extras.get("cache_neighbors", []),
                              dropped, request.ignored_blocks)

    def _remote_usage(self, answer: ChatAnswer) -> UsageMetadata:
        return self._usage(int(answer.usage.get("prompt_tokens", 0)), int(answer.usage.get("completion_tokens", 0)))

    def _remote_result(self, request: ChatRequest, body: dict) -> ChatResult:
        answer = ChatAnswer()
        text = answer.read(body)
        metadata = self._remote_metadata(request, answer)
        if "parsing_error" in answer.extras:
            metadata["parsing_error"] = answer.extras["parsing_error"]
        message = AIMessage(content=text, tool_calls=answer.tool_calls, usage_metadata=self._remote_usage(answer),
                            response_metadata=metadata)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _remote_last_chunk(self, request: ChatRequest, answer: ChatAnswer) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last", usage_metadata=self._remote_usage(answer),
            response_metadata=self._remote_metadata(request, answer)))


def _openai_format(response_format: dict) -> dict:
    """Our bound `{"type", "schema"}` (with_structured_output) in OpenAI's shape, which the server reads."""
    if response_format.get("type") == "json_schema" and "json_schema" not in response_format:
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": response_format.get("schema")}}
    if response_format.get("type") == "json_object" and response_format.get("schema") is not None:
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": response_format["schema"]}}
    return {k: v for k, v in response_format.items() if k != "schema"}


def load_media_parts(parts: Sequence[MediaPart]) -> list:
    """`MediaInput`s of media parts (decoded, checked, transformed as upstream)."""
    from ibllm_agent.media import load_media  # decoders (PIL, OpenCV, ffmpeg) only when media arrive

    return [load_media(p.source, p.modality, name=p.name) for p in parts]


def _transcript_line(message: BaseMessage, call_names: dict[str, str] | None = None) -> str:
    """One earlier message as a line of the prompt's context; media are named, not inlined; an answer's tool
    calls as the model writes them, a tool's result named by its tool."""
    media = [b.get("type") for b in message.content_blocks if b.get("type") in modalities.block_types()]
    text = message.text.strip()
    if media:
        text = " ".join(f"[{kind}]" for kind in media) + (" " + text if text else "")
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = " ".join(render_tool_call(c["name"], c["args"]) for c in message.tool_calls)
        text = f"{text} {calls}".strip()
    if not text:
        return ""
    if isinstance(message, HumanMessage):
        return f"User: {text}"
    if isinstance(message, AIMessage):
        return f"Assistant: {text}"
    if isinstance(message, ToolMessage):
        return render_tool_result(message.name or (call_names or {}).get(message.tool_call_id), text)
    return f"{message.type.capitalize()}: {text}"
