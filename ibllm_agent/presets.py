"""Named architectures, separate from where weights come from (`pretrained.py`).

The official 7B sizes come with its params.json; the presets here name them for benchmarks and
document them, and give the small random configurations the tests and `load("tiny")` use.
"""

from __future__ import annotations

from ibllm_agent.imagebind.model import imagebind_huge_args, imagebind_tiny_args
from ibllm_agent.llama.model import ModelArgs

__all__ = ["LLAMA_PRESETS", "imagebind_huge_args", "imagebind_tiny_args", "llama_args", "tiny_llama_args"]

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
