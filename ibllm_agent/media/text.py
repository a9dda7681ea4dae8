"""Text: ImageBind's CLIP BPE tokenizer -> int64 [77]; over-long text is cut with the end token kept."""

from __future__ import annotations

import torch

from .errors import EmptyMediaError, MediaTooLargeError
from .limits import MediaLimits

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
