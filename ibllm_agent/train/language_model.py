"""A LLaMA from scratch on a small corpus: the SentencePiece tokenizer and next-token pretraining.

The toy model needs its own LLaMA (the real one cannot be downloaded here), so this trains the
tokenizer the way LLaMA's is configured (BPE, byte fallback, split digits, unk 0 / bos 1 / eos 2,
no pad id) and then the plain transformer (no biases, no LoRA: the base model of phase "pretrain"),
and writes both in Meta's layout: `tokenizer.model`, `<type>/params.json`, `<type>/consolidated.00.pth`.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ibllm_agent.train.datasets import trim_padding
from ibllm_agent.train.engine import TrainConfig, TrainResult, atomic_path, train

logger = logging.getLogger(__name__)

PARAMS_KEYS = ("dim", "multiple_of", "n_heads", "n_layers", "norm_eps", "vocab_size")
"""The keys of Meta's LLaMA-1 params.json (vocab_size -1: the tokenizer decides)."""


def train_tokenizer(lines: Sequence[str], model_path: str | Path, vocab_size: int = 1000,
                    user_defined_symbols: Sequence[str] = ()) -> Path:
    """Train a LLaMA-style SentencePiece BPE model on `lines`; writes `model_path` (tokenizer.model).
    `user_defined_symbols` are always one piece each (never merged with their neighbours).

    Deterministic for the same lines: single-threaded, no sentence sampling or shuffling.
    """
    import sentencepiece as spm

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, minloglevel=2, max_sentence_length=8192,
        user_defined_symbols=list(user_defined_symbols),
    )
    with atomic_path(model_path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return model_path


class TextDataset(Dataset):
    """Lines of text as BOS + tokens + EOS, padded/cut to `max_words` (labels: 0 = ignored)."""

    def __init__(self, lines: Sequence[str], tokenizer, max_words: int):
        self.items = []
        for line in lines:
            ids = tokenizer.encode(line, bos=True, eos=True)[:max_words]
            tokens = torch.zeros(max_words, dtype=torch.int64)
            tokens[: len(ids)] = torch.tensor(ids)
            self.items.append(tokens)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.items[i]}


class LanguageModelObjective(nn.Module):
    """Next-token cross-entropy of a `Transformer` over a batch of padded token rows (pad 0 ignored)."""

    def __init__(self, llama: nn.Module):
        super().__init__()
        self.llama = llama

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, _ = trim_padding(batch["tokens"], batch["tokens"])
        logits = self.llama(tokens)  # (B, L, vocab)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                               ignore_index=0)


def build_llama(params: dict, vocab_size: int, *, seed: int, phase: str = "pretrain") -> nn.Module:
    """A randomly initialised LLaMA of `params` (Meta's params.json fields)."""
    from ibllm_agent.llama.model import ModelArgs, Transformer, init_weights

    w = phase == "finetune"
    args = ModelArgs.from_params(dict(params), vocab_size=vocab_size, w_bias=w, w_lora=w)
    model = Transformer(args)
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


def pretrain_language_model(lines: Sequence[str], tokenizer, params: dict, cfg: TrainConfig,
                            max_words: int = 96) -> tuple[nn.Module, TrainResult]:
    """Train a fresh LLaMA of `params` as a language model on `lines` (shuffled by `cfg.seed`)."""
    lines = list(lines)
    random.Random(cfg.seed).shuffle(lines)
    llama = build_llama(params, tokenizer.n_words, seed=cfg.seed)
    objective = LanguageModelObjective(llama)
    result = train(objective, TextDataset(lines, tokenizer, max_words), cfg,
                   state_fn=lambda: llama.state_dict(), name="language model")
    return llama.cpu().eval(), result


def save_llama(llama: nn.Module, params: dict, llama_dir: str | Path, llama_type: str,
               tokenizer_path: str | Path | None = None) -> Path:
    """Write Meta's layout: `<llama_dir>/<llama_type>/params.json` + `consolidated.00.pth` (and
    `<llama_dir>/tokenizer.model` when given). Only the base keys are written (no bias/LoRA/gates:
    those belong in the adapter file)."""
    out = Path(llama_dir) / llama_type
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "params.json") as tmp:
        tmp.write_text(json.dumps({k: params[k] for k in PARAMS_KEYS if k in params}) + "\n")
    base = {k: v.detach().cpu().contiguous() for k, v in llama.state_dict().items()
            if not any(s in k for s in ("lora", "gate", ".bias"))}
    with atomic_path(out / "consolidated.00.pth") as tmp:
        torch.save(base, tmp)
    if tokenizer_path is not None:
        target = Path(llama_dir) / "tokenizer.model"
        if Path(tokenizer_path).resolve() != target.resolve():
            with atomic_path(target) as tmp:
                tmp.write_bytes(Path(tokenizer_path).read_bytes())
    return out
