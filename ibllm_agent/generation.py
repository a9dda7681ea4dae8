"""Prompts, sampling and the decoding loop.

Sampling is the reference's: greedy (argmax) when temperature is 0, else `softmax(logits / T)` and
top-p (`sample_top_p`), optionally from a seeded `torch.Generator`. Unlike the reference (batch 1, at
most 512 tokens, KV cache inside the model) a `Decoder` decodes a batch of prompts of any lengths
(left-padded, masked) with its own `KVCache`, up to the model's `max_seq_len`. A row whose settings carry
a `grammar.Constraint` keeps its own grammar state and samples only the tokens it allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ibllm_agent.llama import cuda_graphs
from ibllm_agent.llama.model import KVCache, Transformer
from ibllm_agent.llama.tokenizer import Tokenizer
from ibllm_agent.params import GenerationParams

if TYPE_CHECKING:
    from ibllm_agent.grammar import Matcher

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
    """"stop" (EOS, a stop string, or the end of its grammar), "length" (max_gen_len or the context was
    reached; a constrained answer is then incomplete), or "error" (its grammar failed: see `error`)."""
    neighbors: list = field(default_factory=list)
    """The cache items blended into this answer's visual query (`Neighbor`s), empty without the cache."""
    error: str = ""
    """Why a constrained answer stopped with finish_reason "error" (e.g. an engine limit)."""


@dataclass
class _Row:
    """One prompt being answered."""

    prompt: list[int]
    params: GenerationParams
    max_gen_len: int
    """Tokens this row may generate: its max_tokens, or what its context leaves."""
    generator: torch.Generator | None = None
    matcher: Matcher | None = None
    """The grammar state of a constrained row (its `params.constraint`), None for free text."""
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: str | None = None
    error: str = ""


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
    """Rows of prompts decoded together, one token per step: the one decoding loop of the project.

    `join` prefills new prompts (left-padded to their longest, one forward pass) and adds them to the batch
    at a step boundary; `step` samples one token for every row (each with its own settings, generator and
    grammar, if any) and returns the text deltas. A row finishes at EOS, at a stop string, where its grammar
    ends, or after its `max_gen_len` tokens.

    Two ways to use it:
    - a fixed batch (`Decoder(llama, tokenizer, prompts, adapter, params)`, then iterate for per-step deltas
      and read `results()`), as `generate_batch`, `stream` and the chat model do; on CUDA its steps replay
      as one captured graph;
    - a running batch (`dynamic=True`), as the server's engine does: requests `join` between steps and
      leave when they finish or are `remove`d, and their rows' cache slots are freed at once.
    """

    def __init__(self, llama: Transformer, tokenizer: Tokenizer, prompts: Sequence[list[int]] = (),
                 adapter: list[torch.Tensor | None] | None = None, params: GenerationParams | None = None,
                 generator: torch.Generator | None = None, *, dynamic: bool = False):
        self.llama, self.tokenizer, self.dynamic = llama, tokenizer, dynamic
        self.rows: dict[int, _Row] = {}
        """The rows by id, in the order they joined (a running batch `forget`s finished ones)."""
        self._next_id = 0
        self._active: list[int] = []  # row ids in the order of the cache's rows
        self._cache: KVCache | None = None
        self._adapter: list[torch.Tensor | None] = [None] * llama.n_layers
        self._logits: torch.Tensor | None = None  # (B, vocab): the next token's logits of each active row
        self._graph = None
        if prompts:
            self.join(prompts, adapter, params or GenerationParams(), generator)

    @property
    def prompts(self) -> list[list[int]]:
        return [row.prompt for row in self.rows.values()]

    @property
    def active(self) -> list[int]:
        """Ids of the rows in the batch now."""
        return list(self._active)

    @property
    def done(self) -> bool:
        return all(self.rows[i].finish for i in self._active)

    @torch.inference_mode()
    def join(self, prompts: Sequence[list[int]], adapter: list[torch.Tensor | None] | None,
             params: GenerationParams | Sequence[GenerationParams],
             generator: torch.Generator | None | Sequence[torch.Generator | None] = None) -> list[int]:
        """Prefill `prompts` (token ids) with their adapter values (per layer (n, H, 1, hd) or None) and add them
        to the batch; returns their row ids. One settings object and generator may serve all of them (a fixed
        batch samples its rows together from one generator, as the reference does). Nothing changes if this raises."""
        n = len(prompts)
        params = [params] * n if isinstance(params, GenerationParams) else list(params)
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * n
        if not prompts or any(len(p) == 0 for p in prompts) or len(params) != n or len(generators) != n:
            raise ValueError("join needs non-empty token lists, one GenerationParams and generator per prompt")
        limit = self.llama.params.max_seq_len
        longest = max(len(p) for p in prompts)
        if longest >= limit:
            raise PromptTooLongError(f"prompt of {longest} tokens leaves no room in the context of {limit} "
                                     "tokens (max_seq_len); shorten the prompt or load with a larger max_seq_len")
        if self._graph is not None:
            raise RuntimeError("rows cannot join a batch whose steps run as a CUDA graph")
        matchers = [None if prm.constraint is None else prm.constraint.matcher(self.tokenizer) for prm in params]
        rows = [_Row(list(p), prm, min(prm.max_tokens, limit - len(p)), g, m)
                for p, prm, g, m in zip(prompts, params, generators, matchers)]
        room = max(r.max_gen_len for r in rows)
        cache, logits = self._prefill(prompts, adapter, room)
        if self._cache is None:
            self._cache, self._logits = cache, logits
            self._adapter = list(adapter) if adapter is not None else [None] * self.llama.n_layers
        else:
            running = max((r.max_gen_len - len(r.ids) for r in (self.rows[i] for i in self._active)), default=0)
            self._cache = KVCache.concat(self._cache, cache, max(room, running))
            self._logits = torch.cat([self._logits, logits])
            self._adapter = [_cat_rows(a, b) for a, b in zip(self._adapter, adapter or [None] * self.llama.n_layers)]
        ids = list(range(self._next_id, self._next_id + n))
        self._next_id += n
        for i, row in zip(ids, rows):
            if row.max_gen_len == 0:
                row.finish = "length"
            self.rows[i] = row
        self._active += ids
        return ids

    def _prefill(self, prompts: Sequence[list[int]], adapter, room: int) -> tuple[KVCache, torch.Tensor]:
        device = self.llama.tok_embeddings.weight.device
        B, P = len(prompts), max(len(p) for p in prompts)
        tokens = torch.zeros(B, P, dtype=torch.long)  # padding slots hold id 0; they are masked out
        pad = torch.tensor([P - len(p) for p in prompts], dtype=torch.long)
        for b, p in enumerate(prompts):
            tokens[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        cache = self.llama.new_cache(B, P + room, pad=pad.to(device))
        logits = self.llama(tokens.to(device), cache, adapter, last_only=True)
        return cache, logits

    def _sample(self) -> torch.Tensor:
        """One token per active row. Rows that share settings and a generator are drawn in one call, so a fixed
        batch consumes its random stream exactly as one `sample_top_p` over the whole batch."""
        logits = self._masked_logits()
        tokens = torch.argmax(logits, dim=-1)
        groups: dict[tuple, list[int]] = {}
        for b, i in enumerate(self._active):
            row = self.rows[i]
            if row.params.temperature > 0:
                groups.setdefault((row.params.temperature, row.params.top_p, id(row.generator)), []).append(b)
        for (temperature, top_p, _), members in groups.items():
            rows = torch.tensor(members, device=tokens.device)
            tokens[rows] = next_tokens(logits[rows], temperature, top_p, self.rows[self._active[members[0]]].generator)
        return tokens

    def _masked_logits(self) -> torch.Tensor:
        """The logits with every token a row's grammar forbids at -inf (the same tensor when no row has one,
        so free rows sample from exactly the values they always did)."""
        constrained = [(b, self.rows[i]) for b, i in enumerate(self._active)
                       if self.rows[i].matcher is not None and not self.rows[i].finish]
        if not constrained:
            return self._logits
        logits = self._logits.clone()
        for b, row in constrained:
            allowed = row.matcher.allowed(logits.shape[-1]).to(logits.device)
            if not bool(allowed.any()):
                row.finish, row.error = "error", row.matcher.error or "the grammar allows no token here"
                continue
            logits[b].masked_fill_(~allowed, float("-inf"))
        return logits

    def _accept(self, row: _Row, token: int) -> str:
        if row.matcher is not None:
            return self._accept_constrained(row, token)
        stop = row.params.stop
        if token == self.tokenizer.eos_id:
            row.finish = "stop"
        else:
            row.ids.append(token)
            row.text = self.tokenizer.decode(row.ids)
            cut = min((i for i in (row.text.find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.ids) >= row.max_gen_len:
                row.finish = "length"
        return self._delta(row, stop)

    def _accept_constrained(self, row: _Row, token: int) -> str:
        """Advance a row's grammar. EOS is sampled only where the grammar is complete; a grammar that admits
        nothing more ends the row at once; stop strings do not cut it (the grammar says where it ends)."""
        matcher = row.matcher
        if token == self.tokenizer.eos_id:
            row.finish = "stop"
        elif not matcher.accept(token):
            row.finish, row.error = "error", matcher.error or f"the grammar refused token {token}"
        else:
            row.ids.append(token)
            row.text = matcher.decode(row.ids)
            if matcher.stopped:
                row.finish = "stop" if matcher.complete else "error"
                row.error = "" if matcher.complete else matcher.error
            elif len(row.ids) >= row.max_gen_len:
                row.finish = "length"
        return self._delta(row, ())

    @staticmethod
    def _delta(row: _Row, stop: Sequence[str]) -> str:
        end = len(row.text) if row.finish else len(row.text) - _held_back(row.text, stop)
        delta, row.emitted = row.text[row.emitted:max(end, row.emitted)], max(end, row.emitted)
        return delta

    @torch.inference_mode()
    def step(self) -> dict[int, str]:
        """Sample the next token of every active row and advance the batch; {row id: new text}."""
        if self._logits is None:
            return {}
        tokens = self._sample()
        deltas = {i: ("" if self.rows[i].finish else self._accept(self.rows[i], int(t)))
                  for i, t in zip(self._active, tokens.tolist())}
        if self.dynamic:
            tokens = self._drop([b for b, i in enumerate(self._active) if self.rows[i].finish], tokens)
        if self.done:
            self._logits = None
            return deltas
        if self._graph is None and not self.dynamic and cuda_graphs.enabled(
                tokens.device, max(r.max_gen_len for r in self.rows.values())):
            self._graph = cuda_graphs.GraphedDecodeStep(self.llama, self._cache, self._adapter)
        self._logits = (self._graph(tokens) if self._graph is not None
                        else self.llama(tokens[:, None], self._cache, self._adapter, last_only=True))
        return deltas

    def remove(self, row_id: int) -> None:
        """Stop a row now (finish reason "cancelled"); in a running batch its cache slots are freed at once."""
        row = self.rows[row_id]
        if not row.finish:
            row.finish = "cancelled"
        if self.dynamic and row_id in self._active:
            self._drop([self._active.index(row_id)], None)

    def forget(self, row_id: int) -> None:
        """Let a finished row go (a running batch would otherwise keep every answer it ever gave)."""
        if row_id in self._active and not self.rows[row_id].finish:
            raise ValueError(f"row {row_id} is still decoding; remove() it first")
        if row_id in self._active:
            self._drop([self._active.index(row_id)], None)
        del self.rows[row_id]

    def _drop(self, positions: list[int], tokens: torch.Tensor | None) -> torch.Tensor | None:
        if not positions:
            return tokens
        keep = [b for b in range(len(self._active)) if b not in set(positions)]
        self._active = [self._active[b] for b in keep]
        if not keep:
            self._cache, self._logits = None, None
            self._adapter = [None] * self.llama.n_layers
            return None
        self._cache.select(keep)
        rows = torch.tensor(keep, device=self._logits.device)
        self._logits = self._logits[rows]
        self._adapter = [None if a is None else a[rows] for a in self._adapter]
        return None if tokens is None else tokens[rows]

    def __iter__(self) -> Iterator[list[str]]:
        """Per step, the text delta of every row (by row id), until all rows have finished."""
        while not self.done:
            deltas = self.step()
            yield [deltas.get(i, "") for i in self.rows]

    def run(self) -> list[tuple[str, list[int], str]]:
        """Decode to the end; (text, ids, finish_reason) per row."""
        for _ in self:
            pass
        return self.results()

    def results(self) -> list[tuple[str, list[int], str]]:
        return [(r.text, list(r.ids), r.finish or "length") for r in self.rows.values()]


def _cat_rows(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Adapter values of two groups of rows; a layer without any (None) must be so for both."""
    if (a is None) != (b is None):
        raise ValueError("rows with and without a visual query cannot share a batch")
    return None if a is None else torch.cat([a, b])
