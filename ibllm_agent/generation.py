"""Prompts, sampling and the decoding loop.

Sampling is the reference's: greedy (argmax) when temperature is 0, else `softmax(logits / T)` and
top-p (`sample_top_p`), optionally from a seeded `torch.Generator`. Unlike the reference (batch 1, at
most 512 tokens, KV cache inside the model) a `Decoder` decodes a batch of prompts of any lengths
(left-padded, masked) with its own `KVCache`, up to the model's `max_seq_len`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ibllm_agent.llama import cuda_graphs
from ibllm_agent.llama.model import KVCache, Transformer
from ibllm_agent.llama.tokenizer import Tokenizer
from ibllm_agent.params import GenerationParams

__all__ = ["PROMPT_DICT", "Decoder", "Generation", "KVCache", "PromptTooLongError", "format_prompt",
           "sample_top_p"]

PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}
"""The Alpaca templates ImageBind-LLM was fine-tuned with (exact text, no trailing space)."""


def format_prompt(instruction: str, input: str | None = None) -> str:
    """The reference's prompt: the "input" template when `input` is non-empty, else "no input"."""
    if input is None or input == "":
        return PROMPT_DICT["prompt_no_input"].format_map({"instruction": instruction})
    return PROMPT_DICT["prompt_input"].format_map({"instruction": instruction, "input": input})


class PromptTooLongError(ValueError):
    """A prompt that leaves no room in the model's context (`max_seq_len`)."""


def sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Nucleus sampling as in the reference: keep the smallest prefix of the sorted probabilities whose
    mass before each kept token is <= p, renormalise, draw one. probs (B, V) -> (B, 1) token ids."""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p
    probs_sort[mask] = 0.0
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    next_token = torch.multinomial(probs_sort, num_samples=1, generator=generator)
    return torch.gather(probs_idx, -1, next_token)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) float32 logits -> (B,) token ids."""
    if temperature > 0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return sample_top_p(probs, top_p, generator).reshape(-1)
    return torch.argmax(logits, dim=-1)


@dataclass
class Generation:
    """One answer of `ImageBindLLM.generate_batch`."""

    text: str
    """The decoded answer (the reference decodes the whole id list at once; cut before a stop string)."""
    token_ids: list[int]
    """Generated ids (no EOS)."""
    prompt_tokens: int
    """Length of the encoded prompt, BOS included."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_gen_len or the context was reached)."""
    neighbors: list = field(default_factory=list)
    """The cache items blended into this answer's visual query (`Neighbor`s), empty without the cache."""


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: str | None = None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of `text` that must not be streamed yet: an incomplete UTF-8 sequence
    (decoded as U+FFFD) or the start of a stop string."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class Decoder:
    """Decode a batch of prompts together; iterate to get per-step text deltas, then read `results`.

    Rows are left-padded to the longest prompt, prefilled in one forward pass, then decoded one token
    per step. A row finishes at EOS, at a stop string or after `max_gen_len` tokens; decoding ends
    when all rows have finished.
    """

    def __init__(self, llama: Transformer, tokenizer: Tokenizer, prompts: list[list[int]],
                 adapter: list[torch.Tensor | None] | None, params: GenerationParams,
                 generator: torch.Generator | None = None):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be non-empty token lists")
        longest = max(len(p) for p in prompts)
        limit = llama.params.max_seq_len
        if longest >= limit:
            raise PromptTooLongError(f"prompt of {longest} tokens leaves no room in the context of {limit} "
                                     "tokens (max_seq_len); shorten the prompt or load with a larger max_seq_len")
        self.llama, self.tokenizer, self.prompts, self.adapter = llama, tokenizer, prompts, adapter
        self.params, self.generator = params, generator
        self.max_gen_len = min(params.max_tokens, limit - longest)
        self.stop = list(params.stop)
        self.rows = [_Row() for _ in prompts]
        if self.max_gen_len == 0:
            for row in self.rows:
                row.finish = "length"

    def _prefill(self) -> tuple[KVCache, torch.Tensor]:
        device = self.llama.tok_embeddings.weight.device
        B, P = len(self.prompts), max(len(p) for p in self.prompts)
        tokens = torch.zeros(B, P, dtype=torch.long)  # padding slots hold id 0; they are masked out
        pad = torch.tensor([P - len(p) for p in self.prompts], dtype=torch.long)
        for b, p in enumerate(self.prompts):
            tokens[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        cache = self.llama.new_cache(B, P + self.max_gen_len, pad=pad.to(device))
        logits = self.llama(tokens.to(device), cache, self.adapter, last_only=True)
        return cache, logits

    def _accept(self, b: int, token: int) -> str:
        row = self.rows[b]
        if token == self.tokenizer.eos_id:
            row.finish = "stop"
        else:
            row.ids.append(token)
            row.text = self.tokenizer.decode(row.ids)
            cut = min((i for i in (row.text.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.ids) >= self.max_gen_len:
                row.finish = "length"
        end = len(row.text) if row.finish else len(row.text) - _held_back(row.text, self.stop)
        delta, row.emitted = row.text[row.emitted:max(end, row.emitted)], max(end, row.emitted)
        return delta

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[str]]:
        if all(r.finish for r in self.rows):
            return
        cache, logits = self._prefill()
        step = None
        if cuda_graphs.enabled(logits.device, self.max_gen_len):
            step = cuda_graphs.GraphedDecodeStep(self.llama, cache, self.adapter or [None] * self.llama.n_layers)
        while True:
            tokens = next_tokens(logits, self.params.temperature, self.params.top_p, self.generator)
            deltas = ["" if row.finish else self._accept(b, int(tokens[b])) for b, row in enumerate(self.rows)]
            yield deltas
            if all(r.finish for r in self.rows):
                return
            logits = step(tokens) if step is not None else self.llama(tokens[:, None], cache, self.adapter,
                                                                       last_only=True)

    def run(self) -> list[tuple[str, list[int], str]]:
        """Decode to the end; (text, ids, finish_reason) per row."""
        for _ in self:
            pass
        return self.results()

    def results(self) -> list[tuple[str, list[int], str]]:
        return [(r.text, list(r.ids), r.finish or "length") for r in self.rows]
