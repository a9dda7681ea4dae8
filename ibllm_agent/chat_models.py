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

Remote mode: `ChatImageBindLLM(model="toy", base_url="http://host:8000/v1", api_key=...)` sends the
conversation to an `ibllm serve` (`ibllm_agent.remote`) and loads nothing here; the answers, usage and cache
neighbours are the same, and local files named in blocks are read here and sent inline.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
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
from pydantic import ConfigDict, field_validator

from ibllm_agent import modalities
from ibllm_agent.batching import batcher_for
from ibllm_agent.content_blocks import MAX_TEXT_CHARS, EmbeddingPart, MediaPart, Question, parse_message
from ibllm_agent.fusion import fuse
from ibllm_agent.model_pool import PooledModelFields
from ibllm_agent.params import DEFAULT_GENERATION, GenerationParams, VisualCacheParams
from ibllm_agent.remote import ChatAnswer, ChatRequest, chat_request

_GENERATION_OVERRIDES = ("temperature", "top_p", "max_tokens", "seed")
_CALL_OVERRIDES = (*_GENERATION_OVERRIDES, "visual_cache")
_CALL_IGNORED = ("stream",)
"""Call keywords LangChain itself passes to pick the streaming path; they say nothing about the answer."""


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


class ChatImageBindLLM(BaseChatModel, PooledModelFields):
    """ImageBind-LLM chat model: text plus images, audio, video, point clouds and embeddings in, text out.

    Not a tool-calling model: `bind_tools` is not implemented, so agents that need tool calls
    should use another chat model and reach ImageBind-LLM through `ibllm_agent.perception_tools`.
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
                   "video_inputs": True, "pdf_inputs": False, "text_outputs": True, "tool_calling": False,
                   "tool_choice": False, "structured_output": False}
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
        generation, visual_cache = self._params(stop, kwargs)
        last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last_human is None:
            raise ValueError("the conversation needs at least one human message")
        asked = self._parse(messages[last_human])
        with_media = asked if asked.parts else self._latest_media_question(messages[:last_human])
        question = asked.text.strip() or (self.default_question if with_media else "")
        if not question:
            raise ValueError("the last human message has neither text nor media")
        system = "\n\n".join(m.text for m in messages if isinstance(m, SystemMessage) and m.text)
        history = [_transcript_line(m) for i, m in enumerate(messages)
                   if i != last_human and not isinstance(m, SystemMessage)]
        prompt, prompt_tokens, dropped = self._fit(question, system, [h for h in history if h], generation)
        feature, names = self._feature(with_media) if with_media else (None, [])
        return PreparedRequest(prompt, feature, prompt_tokens, generation, visual_cache, names, dropped,
                               asked.ignored)

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
        if not media and len(embeddings) == 1:
            return embeddings[0].vector, [embeddings[0].name]  # a lone embedding conditions the turn as is
        vectors = []
        if media:
            items = load_media_parts(media)
            with self._llm.card.lock:
                vectors.append(self._llm.encode(items))
        vectors += [p.vector[None] for p in embeddings]
        weights = [p.weight for p in media] + [p.weight for p in embeddings]
        names = [p.name for p in media] + [p.name for p in embeddings]
        return fuse(torch.cat(vectors), weights, names=names), names

    # --- results ---------------------------------------------------------------------------------

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
        message = AIMessage(content=generation.text,
                            usage_metadata=self._usage(request.prompt_tokens, len(generation.token_ids)),
                            response_metadata=self._local_metadata(request, generation.finish_reason,
                                                                   generation.neighbors))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if self._remote is not None:
            request, answer = self._remote_request(messages, stop, kwargs, stream=True), ChatAnswer()
            for body in self._remote.stream("/chat/completions", request.payload):
                if text := answer.read(body):
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if run_manager:
                        run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk
            yield self._remote_last_chunk(request, answer)
            return
        request = self.prepare(messages, stop, **kwargs)
        llm = self._llm
        with llm.card.lock:
            decoder, neighbors = llm.start([request.prompt], request.feature, request.generation, request.visual_cache)
        steps = iter(decoder)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the answer took longer than timeout={self.timeout} s")
            with llm.card.lock:  # per step, so batched requests and other streams interleave fairly
                deltas = next(steps, None)
            if deltas is None:
                break
            if not deltas[0]:
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=deltas[0]))
            if run_manager:
                run_manager.on_llm_new_token(deltas[0], chunk=chunk)
            yield chunk
        _, token_ids, finish_reason = decoder.results()[0]
        # usage and model name on exactly one chunk: chunks are summed, and the sum must count them once
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last", usage_metadata=self._usage(request.prompt_tokens, len(token_ids)),
            response_metadata=self._local_metadata(request, finish_reason, neighbors[0])))

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
            if text := answer.read(body):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield self._remote_last_chunk(request, answer)

    # --- remote mode (base_url): the server answers -----------------------------------------------------

    def _remote_request(self, messages: Sequence[BaseMessage], stop: list[str] | None, overrides: dict[str, Any],
                        stream: bool = False) -> ChatRequest:
        generation, visual_cache = self._params(stop, overrides)
        request = chat_request(messages, model=self.model, generation=generation, visual_cache=visual_cache,
                               policy=self._policy, on_unsupported=self.on_unsupported,
                               max_text_chars=self.max_input_chars, default_question=self.default_question)
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
        message = AIMessage(content=text, usage_metadata=self._remote_usage(answer),
                            response_metadata=self._remote_metadata(request, answer))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _remote_last_chunk(self, request: ChatRequest, answer: ChatAnswer) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last", usage_metadata=self._remote_usage(answer),
            response_metadata=self._remote_metadata(request, answer)))


def load_media_parts(parts: Sequence[MediaPart]) -> list:
    """`MediaInput`s of media parts (decoded, checked, transformed as upstream)."""
    from ibllm_agent.media import load_media  # decoders (PIL, OpenCV, ffmpeg) only when media arrive

    return [load_media(p.source, p.modality, name=p.name) for p in parts]


def _transcript_line(message: BaseMessage) -> str:
    """One earlier message as a line of the prompt's context; media are named, not inlined."""
    media = [b.get("type") for b in message.content_blocks if b.get("type") in modalities.block_types()]
    text = message.text.strip()
    if media:
        text = " ".join(f"[{kind}]" for kind in media) + (" " + text if text else "")
    if not text:
        return ""
    if isinstance(message, HumanMessage):
        return f"User: {text}"
    if isinstance(message, AIMessage):
        return f"Assistant: {text}"
    if isinstance(message, ToolMessage):
        return f"Tool result: {text}"
    return f"{message.type.capitalize()}: {text}"
