"""`ChatImageBindLLM`: ImageBind-LLM as a LangChain chat model.

    from ibllm_agent import ChatImageBindLLM
    from langchain_core.messages import HumanMessage

    chat = ChatImageBindLLM(model="toy")                 # the embedded toy world, no other argument
    chat.invoke([HumanMessage(content=[
        {"type": "text", "text": "What do you hear?"},
        {"type": "audio", "url": "rain.wav"},            # or base64 + mime_type; see content_blocks.py
    ])])

One human turn's media (images, sounds, videos, point clouds, pre-computed embeddings) are fused
into one ImageBind feature (optional per-block weights), which conditions the answer through the
visual cache and the bind network. The prompt is the Alpaca template the model was tuned with:
a lone question is exactly upstream's `format_prompt(question)`; a system message and earlier
turns become the template's "Input" context, oldest turns dropped (with a warning) when the
context window is short. The current question is never truncated.

Media stay with the conversation: when the current turn has none, the latest earlier human turn
that had some conditions the answer (so "and what colour is it?" still sees the picture).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
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

from ibllm_agent.arithmetic import combine
from ibllm_agent.batching import GenerationParams, batcher_for
from ibllm_agent.content_blocks import EmbeddingPart, MediaPart, Turn, parse_message
from ibllm_agent.model_pool import PooledModelFields

_MEDIA_TYPES = ("image", "audio", "video", "file")
_CALL_OVERRIDES = ("temperature", "top_p", "max_tokens", "seed", "visual_cache", "cache_size", "cache_t",
                   "cache_weight")


class ContextWindowWarning(UserWarning):
    """Earlier turns of a conversation were left out because the context window is full."""


@dataclass
class PreparedRequest:
    """A conversation turned into what the model consumes."""

    prompt: str
    feature: torch.Tensor | None  # (D,) fused ImageBind feature, None = text only
    prompt_tokens: int
    params: GenerationParams
    media: list[str]  # display names of the media that conditioned the answer
    dropped_messages: int


class ChatImageBindLLM(BaseChatModel, PooledModelFields):
    """ImageBind-LLM chat model: text plus images, audio, video, point clouds and embeddings in, text out.

    Not a tool-calling model: `bind_tools` is not implemented, so agents that need tool calls
    should use another chat model and reach ImageBind-LLM through `ibllm_agent.tools`.
    Which model to load and where media may come from: see `PooledModelFields`.
    """

    temperature: float = 0.1
    """Sampling temperature; 0 = greedy. Default as upstream."""
    top_p: float = 0.75
    """Nucleus sampling mass. Default as upstream."""
    max_tokens: int = 256
    """Most tokens to generate per answer."""
    stop: list[str] | None = None
    """Strings that end an answer (not included in it)."""
    seed: int | None = None
    """Seed for sampling (temperature > 0); seeded requests are never batched with others."""
    timeout: float | None = None
    """Seconds to wait for an answer before raising TimeoutError (a streamed answer stops there; a
    batched one finishes in the background, since a decoding step cannot be interrupted)."""
    max_retries: int = 0
    """Accepted for compatibility with hosted chat models; a local model has no transient failures to retry."""
    streaming: bool = False
    """Stream tokens through callbacks on `invoke` as well."""

    visual_cache: bool | None = None
    """Blend the model's visual cache into the feature (upstream `knn`): None = whenever the model has one.
    (Not `cache`: that field of every LangChain model switches LangChain's response cache.)"""
    cache_size: int = 10
    """Neighbours retrieved from the cache (upstream default)."""
    cache_t: float = 20.0
    """Softmax temperature over neighbour similarities (upstream default)."""
    cache_weight: float = 0.5
    """Share of the cache blend in the visual feature (upstream default)."""

    default_question: str = "Describe this input."
    """Question asked when a turn has media but no text."""
    max_batch_size: int = 8
    """Most concurrent conversations decoded together in one batch."""

    @property
    def _llm_type(self) -> str:
        return "imagebind-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "visual_cache": self.visual_cache, "cache_size": self.cache_size,
                "cache_t": self.cache_t, "cache_weight": self.cache_weight}

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
        return list(self._llm.tokenizer.encode(text, bos=False, eos=False))

    # --- conversation -> prompt + feature -------------------------------------------------------

    def prepare(self, messages: Sequence[BaseMessage], stop: list[str] | None = None,
                **kwargs: Any) -> PreparedRequest:
        """Format the conversation, load and fuse its media; raises ValueError on unusable input."""
        params = self._params(stop, kwargs)
        last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last_human is None:
            raise ValueError("the conversation needs at least one human message")
        turn = parse_message(messages[last_human], self._policy)
        media_turn = turn if turn.parts else self._latest_media_turn(messages[:last_human])
        question = turn.text.strip() or (self.default_question if media_turn and media_turn.parts else "")
        if not question:
            raise ValueError("the last human message has neither text nor media")
        system = "\n\n".join(m.text for m in messages if isinstance(m, SystemMessage) and m.text)
        history = [_transcript_line(m) for i, m in enumerate(messages)
                   if i != last_human and not isinstance(m, SystemMessage)]
        prompt, prompt_tokens, dropped = self._fit(question, system, [h for h in history if h], params)
        feature, names = self._feature(media_turn) if media_turn else (None, [])
        return PreparedRequest(prompt, feature, prompt_tokens, params, names, dropped)

    def _params(self, stop: list[str] | None, overrides: dict[str, Any]) -> GenerationParams:
        values = {key: overrides.get(key, getattr(self, key)) for key in _CALL_OVERRIDES}
        stops = tuple(stop if stop is not None else (self.stop or ()))
        return GenerationParams(max_gen_len=int(values["max_tokens"]), temperature=float(values["temperature"]),
                                top_p=float(values["top_p"]), seed=values["seed"], stop=stops,
                                cache=values["visual_cache"], cache_size=int(values["cache_size"]),
                                cache_t=float(values["cache_t"]), cache_weight=float(values["cache_weight"]))

    def _latest_media_turn(self, messages: Sequence[BaseMessage]) -> Turn | None:
        for message in reversed(messages):
            if isinstance(message, HumanMessage) and any(
                    b.get("type") in _MEDIA_TYPES or b.get("type") == "non_standard" for b in message.content_blocks):
                turn = parse_message(message, self._policy)
                if turn.parts:
                    return turn
        return None

    def _count_tokens(self, text: str) -> int:
        return len(self._llm.tokenizer.encode(text, bos=True, eos=False))

    def _context_window(self) -> int:
        return int(self._llm.max_seq_len)

    def _fit(self, question: str, system: str, history: list[str],
             params: GenerationParams) -> tuple[str, int, int]:
        """The prompt with as much recent history as fits `max_seq_len - max_tokens`."""
        from ibllm_agent.generation import format_prompt

        budget = self._context_window() - max(1, params.max_gen_len)
        for dropped in range(len(history) + 1):
            context = "\n\n".join(part for part in (system, "\n".join(history[dropped:])) if part)
            prompt = format_prompt(question, context or None)
            tokens = self._count_tokens(prompt)
            if tokens <= budget:
                if dropped:
                    warnings.warn(f"dropped the {dropped} oldest message(s) of the conversation to fit the "
                                  f"context window ({self._context_window()} tokens, {params.max_gen_len} "
                                  "reserved for the answer)", ContextWindowWarning, stacklevel=4)
                return prompt, tokens, dropped
        raise ValueError(f"the question (with the system prompt) takes {tokens} tokens, more than the "
                         f"{budget} left in the context window of {self._context_window()} after reserving "
                         f"{params.max_gen_len} for the answer; shorten it or lower max_tokens")

    def _feature(self, turn: Turn) -> tuple[torch.Tensor | None, list[str]]:
        """Encode a turn's media and fuse them with their weights into one (D,) feature."""
        media = [p for p in turn.parts if isinstance(p, MediaPart)]
        embeddings = [p for p in turn.parts if isinstance(p, EmbeddingPart)]
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
            with self._llm.lock:
                vectors.append(self._llm.encode(items))
        vectors += [p.vector[None] for p in embeddings]
        weights = [p.weight for p in media] + [p.weight for p in embeddings]
        names = [p.name for p in media] + [p.name for p in embeddings]
        return combine(torch.cat(vectors), weights), names

    # --- results ---------------------------------------------------------------------------------

    def _metadata(self, request: PreparedRequest, finish_reason: str, neighbors: list) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "ibllm",
            "finish_reason": finish_reason,
            "media": request.media,
            "cache_neighbors": [{"id": n.id, "score": n.score, "weight": n.weight, "metadata": dict(n.metadata)}
                                for n in neighbors],
            "dropped_messages": request.dropped_messages,
        }

    @staticmethod
    def _usage(request: PreparedRequest, output_tokens: int) -> UsageMetadata:
        return UsageMetadata(input_tokens=request.prompt_tokens, output_tokens=output_tokens,
                             total_tokens=request.prompt_tokens + output_tokens)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self.prepare(messages, stop, **kwargs)
        future = batcher_for(self._llm, self.max_batch_size).submit(request.prompt, request.feature, request.params)
        generation = future.result(timeout=self.timeout)
        message = AIMessage(content=generation.text,
                            usage_metadata=self._usage(request, len(generation.token_ids)),
                            response_metadata=self._metadata(request, generation.finish_reason,
                                                             generation.neighbors))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self.prepare(messages, stop, **kwargs)
        llm, p = self._llm, request.params
        feature = request.feature[None] if request.feature is not None else torch.zeros(1, llm.feature_dim)
        with llm.lock:
            visual_query, neighbors = llm.visual_query(feature, cache=p.cache, cache_size=p.cache_size,
                                                       cache_t=p.cache_t, cache_weight=p.cache_weight)
            decoder = llm.decoder([request.prompt], visual_query, max_gen_len=p.max_gen_len,
                                  temperature=p.temperature, top_p=p.top_p, seed=p.seed, stop=list(p.stop))
        steps = iter(decoder)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the answer took longer than timeout={self.timeout} s")
            with llm.lock:  # per step, so batched requests and other streams interleave fairly
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
            content="", chunk_position="last", usage_metadata=self._usage(request, len(token_ids)),
            response_metadata=self._metadata(request, finish_reason, neighbors[0])))


def load_media_parts(parts: Sequence[MediaPart]) -> list:
    """`MediaInput`s of media parts (decoded, checked, transformed as upstream)."""
    from ibllm_agent.media import load_media  # decoders (PIL, OpenCV, ffmpeg) only when media arrive

    return [load_media(p.source, p.modality, name=p.name) for p in parts]


def _transcript_line(message: BaseMessage) -> str:
    """One earlier message as a line of the prompt's context; media are named, not inlined."""
    media = [b.get("type") for b in message.content_blocks if b.get("type") in _MEDIA_TYPES]
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
