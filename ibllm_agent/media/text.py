"""Text: ImageBind's CLIP BPE tokenizer -> int64 [77]; over-long text is cut with the end token kept."""

from __future__ import annotations

import torch

from .detect import Format
from .errors import EmptyMediaError, MediaTooLargeError
from .limits import MediaLimits
from .source import Source

CONTEXT_LENGTH = 77


def tokenize_text(text: str, name: str, limits: MediaLimits) -> torch.Tensor:
    """Token ids int64 [77]: start token, BPE tokens, end token, zero padding."""
    from ibllm_agent.imagebind.bpe import tokenize

    if len(text) > limits.max_text_chars:
        raise MediaTooLargeError(name, f"{len(text)} characters, over the limit of {limits.max_text_chars} "
                                 "(MediaLimits.max_text_chars)")
    if not text.strip():
        raise EmptyMediaError(name, "the text is empty")
    return tokenize([text], context_length=CONTEXT_LENGTH, truncate=True)[0]


def load_text_file(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False
                   ) -> tuple[torch.Tensor, dict]:
    """A UTF-8 text file (a leading BOM dropped) -> token ids [77] and its length."""
    text = source.read_bytes().decode("utf-8", "replace").lstrip("\ufeff")
    return tokenize_text(text, source.name, limits), {"chars": len(text)}
