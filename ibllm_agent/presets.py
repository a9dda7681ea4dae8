"""Named architectures, separate from where weights come from (`pretrained.py`).

The official 7B sizes come with its params.json; the presets here name them for benchmarks and
document them, and give the small random configurations the tests and `load("tiny")` use.
"""

from __future__ import annotations

import functools
import io

from ibllm_agent.imagebind.model import imagebind_huge_args, imagebind_tiny_args
from ibllm_agent.llama.model import ModelArgs
from ibllm_agent.llama.tokenizer import Tokenizer

__all__ = ["LLAMA_PRESETS", "imagebind_huge_args", "imagebind_tiny_args", "llama_args", "tiny_llama_args",
           "tiny_tokenizer"]

LLAMA_PRESETS: dict[str, dict] = {
    # Meta's LLaMA-1 7B params.json (vocab 32000 from its tokenizer); ImageBind-LLM adapts all 32 layers
    "7B": {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-6},
    # the parity fixtures' LLaMA: 7B width, 2 layers (vocab 800 from the fixture tokenizer)
    "parity": {"dim": 4096, "n_layers": 2, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-6},
    # a mid-size random model for benchmarks
    "mid": {"dim": 2048, "n_layers": 4, "n_heads": 16, "multiple_of": 256, "norm_eps": 1e-6},
    # unit tests and load("tiny")
    "tiny": {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 16, "norm_eps": 1e-6},
}


def llama_args(preset: str, **overrides) -> ModelArgs:
    """ModelArgs of a named preset; overrides (vocab_size, max_seq_len, w_bias, ...) on top."""
    if preset not in LLAMA_PRESETS:
        raise ValueError(f"unknown LLaMA preset {preset!r}; known: {', '.join(LLAMA_PRESETS)}")
    return ModelArgs.from_params(LLAMA_PRESETS[preset], **overrides)


def tiny_llama_args(**overrides) -> ModelArgs:
    return llama_args("tiny", **overrides)


def tiny_tokenizer() -> Tokenizer:
    """The "tiny" preset's tokenizer: a 320-piece SentencePiece BPE trained in memory (deterministic)."""
    return Tokenizer.from_proto(_tiny_tokenizer_proto())


@functools.cache
def _tiny_tokenizer_proto() -> bytes:
    import sentencepiece as spm

    from ibllm_agent.generation import format_prompt

    words = ("dog bird bell drum rain car cat sea wind fire a the is in of and with what sound image video "
             "shape describe answer question picture loud quiet red blue green small big").split()
    lines = [format_prompt(f"Describe the {w}.") for w in words]
    lines += [format_prompt("What is this?", f"a {a} and a {b}") for a, b in zip(words, reversed(words))]
    lines += [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=320,
                                   model_type="bpe", byte_fallback=True, split_digits=True,
                                   character_coverage=1.0, num_threads=1, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=2)
    return buf.getvalue()
