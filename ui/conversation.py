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
    """The fused inputs this answer was conditioned on, e.g. `🔊 rain.wav + 🖼️ dog.png ×0.5`."""
    neighbors: list[Neighbor] = field(default_factory=list)
    """Cache items the answer leaned on, best first."""
    error: str | None = None
    """A friendly error shown instead of an answer; such turns are left out of the model's history."""


def to_messages(history: list[Turn], question: str, inputs: list[Attachment]) -> list[BaseMessage]:
    """LangChain messages for the next answer: text-only history, then the question with its media blocks."""
    messages: list[BaseMessage] = []
    for turn in history:
        if turn.error is not None or not turn.text:
            continue
        messages.append(HumanMessage(turn.text) if turn.role == "user" else AIMessage(turn.text))
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

    @property
    def text(self) -> str:
        return self.message.text if self.message is not None else ""

    @property
    def neighbors(self) -> list[Neighbor]:
        return neighbors_of(self.message.response_metadata if self.message is not None else {})


def neighbors_of(metadata: dict) -> list[Neighbor]:
    """The cache neighbours recorded in a response's metadata (dicts or `Neighbor`s), best first."""
    raw = metadata.get("cache_neighbors") or []
    if raw and isinstance(raw[0], list):  # one list per conditioned input batch: the UI sends one
        raw = raw[0]
    out = [n if isinstance(n, Neighbor) else Neighbor(**n) for n in raw]
    return sorted(out, key=lambda n: -n.score)
