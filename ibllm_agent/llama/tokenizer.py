"""LLaMA's SentencePiece tokenizer (`tokenizer.model`), with the reference's encode/decode contract."""

from __future__ import annotations

import logging
from pathlib import Path

from sentencepiece import SentencePieceProcessor

logger = logging.getLogger(__name__)


class Tokenizer:
    """`encode(s, bos, eos) -> list[int]`, `decode(ids) -> str`; `bos_id`, `eos_id`, `pad_id` (-1 for LLaMA), `n_words`."""

    def __init__(self, model_path: str | Path | None, *, model_proto: bytes | None = None):
        from ibllm_agent.checkpoint import CheckpointError, MissingFileError

        path = None if model_path is None else Path(model_path)
        if model_proto is not None:
            self.sp_model = SentencePieceProcessor(model_proto=model_proto)
        else:
            if path is None or not path.is_file():
                raise MissingFileError(f"{path}: tokenizer.model not found (expected <llama_dir>/tokenizer.model)",
                                       file=path)
            try:
                self.sp_model = SentencePieceProcessor(model_file=str(path))
            except (OSError, RuntimeError) as e:
                raise CheckpointError(f"{path}: not a SentencePiece model ({e})", file=path) from e
        self.path = path
        self.n_words: int = self.sp_model.vocab_size()
        self.bos_id: int = self.sp_model.bos_id()
        self.eos_id: int = self.sp_model.eos_id()
        self.pad_id: int = self.sp_model.pad_id()
        logger.info("tokenizer %s: %d words, bos %d, eos %d", path, self.n_words, self.bos_id, self.eos_id)

    @classmethod
    def from_proto(cls, model_proto: bytes) -> Tokenizer:
        """A tokenizer from the bytes of a SentencePiece model (no file)."""
        return cls(None, model_proto=model_proto)

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(s).__name__}")
        t = self.sp_model.encode(s)
        if bos:
            t = [self.bos_id] + t
        if eos:
            t = t + [self.eos_id]
        return t

    def decode(self, t: list[int]) -> str:
        return self.sp_model.decode(list(t))
