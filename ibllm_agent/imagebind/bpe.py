"""CLIP's byte-pair-encoding tokenizer, the text tokenizer of ImageBind (vocab 49408, context 77).

The vocabulary ``bpe_simple_vocab_16e6.txt.gz`` ships next to this file (MIT, see NOTICE.md) and is read
once. ``tokenize(["a dog"])`` -> [[49406, 320, 1929, 49407, 0, ...]] (SOT, tokens, EOT, zero padding).

Cleaning: CLIP runs ``ftfy.fix_text`` (mojibake repair + NFC), then ``html.unescape`` twice, collapses
whitespace and lower-cases. ftfy is not a dependency here: we apply NFC normalisation and the rest, which is
identical for well-formed text; only text with encoding damage (mojibake) tokenises differently.
"""

from __future__ import annotations

import gzip
import html
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import regex
import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# Merges used by CLIP: the file's lines 1 .. 48894 (49152 - 256 bytes - 2 special tokens).
NUM_MERGES = 49152 - 256 - 2
# CLIP's pre-tokenisation pattern: special tokens, English contractions, letter runs, single digits,
# runs of other non-space characters.
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map of the 256 byte values to printable characters (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping  # order matters: it is the order of the first 256 vocabulary entries


@lru_cache(maxsize=1)
def _load_merges() -> tuple[tuple[str, str], ...]:
    data = resources.files(__package__).joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    return tuple(tuple(line.split()) for line in lines)


def clean_text(text: str) -> str:
    """CLIP's cleaning without ftfy: NFC, HTML entities (twice), whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(unicodedata.normalize("NFC", text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    """CLIP BPE: ``encode(text) -> ids`` (no SOT/EOT), ``decode(ids) -> text``; ``sot_token``/``eot_token``."""

    def __init__(self) -> None:
        merges = _load_merges()
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}
        self.sot_token = self.encoder[SOT]
        self.eot_token = self.encoder[EOT]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> str:
        """Space-separated BPE pieces of one pre-token (the last piece carries the ``</w>`` end marker)."""
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            # Merge the adjacent pair with the best (lowest) rank, everywhere it occurs.
            ranked = [(self.bpe_ranks.get(pair, NUM_MERGES), pair) for pair in zip(word, word[1:])]
            rank, best = min(ranked)
            if rank == NUM_MERGES:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in PATTERN.findall(clean_text(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")


@lru_cache(maxsize=1)
def default_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer (building the rank tables takes ~0.2 s, so it is done once)."""
    return SimpleTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = True) -> torch.Tensor:
    """``[SOT] + encode(text) + [EOT]``, zero-padded to ``context_length``: LongTensor [B, context_length].

    Too long a text is cut to ``context_length`` with EOT kept as the last token when ``truncate`` (as
    open_clip does; upstream ImageBind cuts without keeping EOT), else it is a ValueError.
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot_token, *tok.encode(text), tok.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text of {len(ids)} tokens is too long for context length {context_length}: "
                                 f"{text[:60]!r}...")
            ids = ids[:context_length]
            ids[-1] = tok.eot_token
        result[row, : len(ids)] = torch.tensor(ids)
    return result
