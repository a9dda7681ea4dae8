"""The chat: session history, turning it into LangChain messages, and streaming one answer.

The attached inputs belong to the conversation, not to one message: files attached to a question
replace them, and follow-up questions are asked about the same inputs (as in the paper's demo).
So only the current question carries media blocks; earlier turns are sent as plain text history.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage

from ibllm_agent.cache.base import Neighbor

if TYPE_CHECKING:
    from .attachments import Attachment


@dataclass
class Turn:
    """One message of the visible conversation."""

    role: str
    """"user" or "assistant"."""
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    """Files attached to this question (user turns), shown back in the history."""
    mixture: str = ""
    """The fused inputs this answer was conditioned on, as markdown (see `mixture_summary`)."""
    neighbors: list[Neighbor] = field(default_factory=list)
    """Cache items the answer leaned on, best first."""
    error: str | None = None
    """A friendly error shown instead of an answer; such turns are left out of the model's history."""
    output_tokens: int = 0
    finish_reason: str = ""
    """"stop" (the model ended the answer) or "length" (cut at max tokens)."""
    image: bytes | None = None
    """A drawn picture (PNG) instead of a text answer (the Draw button)."""
    drawing: str = ""
    """How the picture was drawn: generator, prompt, seconds."""

    def footer(self) -> str:
        """The caption under an answer: what conditioned it, how long it is, whether it was cut."""
        if self.image is not None:
            return f"Drawn from {self.mixture} · {self.drawing}"
        parts = [f"Conditioned on {self.mixture}" if self.mixture else "Text only"]
        if self.output_tokens:
            parts.append(f"{self.output_tokens} tokens")
        if self.finish_reason == "length":
            parts.append("cut at the max tokens setting")
        return " · ".join(parts)


def to_messages(history: list[Turn], question: str, inputs: list[Attachment], *,
                max_history: int | None = None) -> list[BaseMessage]:
    """LangChain messages for the next answer: the last `max_history` earlier messages as text (None: all),
    then the question with its media blocks."""
    messages: list[BaseMessage] = []
    for turn in history:
        if turn.error is not None or not turn.text or turn.image is not None:
            continue
        messages.append(HumanMessage(turn.text) if turn.role == "user" else AIMessage(turn.text))
    if max_history is not None:
        messages = messages[-max_history:] if max_history else []
    blocks = [att.content_block() for att in inputs]
    messages.append(HumanMessage([{"type": "text", "text": question}, *blocks]) if blocks else HumanMessage(question))
    return messages


class Reply:
    """Iterates over the text deltas of a streamed answer; afterwards holds the whole message.

    `st.write_stream(reply)` shows the tokens as they come; then `reply.message` has the text,
    usage and response metadata (finish reason, cache neighbours).
    """

    def __init__(self, chunks: Iterator[AIMessageChunk]):
        self._chunks = chunks
        self.message: AIMessageChunk | None = None

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            self.message = chunk if self.message is None else self.message + chunk
            if chunk.text:
                yield chunk.text

    def turn(self, mixture: str) -> Turn:
        """The finished answer as a history entry."""
        if self.message is None:
            return Turn("assistant", "", mixture=mixture)
        usage = self.message.usage_metadata or {}
        return Turn("assistant", self.message.text, mixture=mixture,
                    neighbors=neighbors_of(self.message.response_metadata),
                    output_tokens=usage.get("output_tokens", 0),
                    finish_reason=self.message.response_metadata.get("finish_reason", ""))


def neighbors_of(metadata: dict) -> list[Neighbor]:
    """The cache neighbours recorded in a response's metadata (dicts or `Neighbor`s), best first."""
    raw = metadata.get("cache_neighbors") or []
    if raw and isinstance(raw[0], list):  # one list per conditioned input batch: the UI sends one
        raw = raw[0]
    out = [n if isinstance(n, Neighbor) else Neighbor(**n) for n in raw]
    return sorted(out, key=lambda n: -n.score)
