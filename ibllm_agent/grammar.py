"""Grammar-constrained decoding: at each step only the tokens a grammar allows may be sampled.

    from ibllm_agent.grammar import Constraint
    params = GenerationParams(constraint=Constraint.json_schema({"type": "object", ...}))
    model.generate_batch([prompt], generation=params)      # the answer parses as that schema

A `Constraint` is a hashable spec (a JSON Schema, a regex, a list of choices or a Lark grammar), checked
when it is made, so a schema the engine cannot compile is refused where the user gave it. It travels in
`GenerationParams` to the one decode path: `Decoder.join` gives each constrained row its own `Matcher`
(the grammar state), and `Decoder._sample` sets the logits of every token the grammar forbids to -inf
before greedy or temperature/top-p sampling, row by row, so a batch mixes constrained and free rows.
EOS is allowed only where the grammar is complete; an answer cut by `max_tokens` first ends with
finish_reason "length" and is not parseable (the structured layer says so).

The engine is llguidance (the `structured` extra, imported when a constraint is first made): it computes
each mask from the grammar's Earley state and the token trie, with no per-grammar precompilation, which
measured fastest per request on our SentencePiece vocabularies (tools/bench_grammar.py). JSON is
generated in the `json.dumps` layout (", " and ": ", no other whitespace), so a model sees one format.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["JSON_LAYOUT", "Constraint", "ConstraintError", "Matcher", "engine_available"]

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is laid out: as `json.dumps` writes it (and as the toy's training data is written)."""

Kind = Literal["json_schema", "regex", "choice", "lark"]
_KINDS = ("json_schema", "regex", "choice", "lark")
_INSTALL = "grammar-constrained decoding needs llguidance: pip install 'ibllm-agent[structured]'"


class ConstraintError(ValueError):
    """A grammar the engine cannot compile, or constrained decoding that cannot run (no engine installed)."""


def _llguidance():
    try:
        import llguidance
    except ImportError as e:
        raise ConstraintError(_INSTALL) from e
    return llguidance


def engine_available() -> bool:
    """Whether llguidance is installed (constraints need it)."""
    try:
        _llguidance()
    except ConstraintError:
        return False
    return True


@dataclass(frozen=True)
class Constraint:
    """What an answer must match. Make one with `json_schema`, `json_object`, `regex`, `choice` or `lark`;
    equal specs are equal (and hash alike), so requests can be grouped and grammars cached."""

    kind: Kind
    source: str
    """The spec as text: a JSON Schema in canonical JSON, a regex, a JSON list of choices, a Lark grammar."""
    grammar: str = field(init=False, repr=False, compare=False)
    """The engine's grammar (llguidance), compiled and checked on construction."""

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ConstraintError(f"constraint kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise ConstraintError(f"constraint source must be text, got {type(self.source).__name__}")
        object.__setattr__(self, "grammar", _compile(self.kind, self.source))

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Constraint:
        """A JSON value valid under `schema` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the JSON Schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ConstraintError(f"a JSON Schema must be an object (dict), got {type(schema).__name__}")
        return cls("json_schema", _canonical(schema))

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (JSON mode)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Text that matches `pattern` in full (Rust `regex` syntax: no look-around, no back-references)."""
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str] | tuple[str, ...]) -> Constraint:
        """Exactly one of `options`."""
        if isinstance(options, str) or not options or not all(isinstance(o, str) and o for o in options):
            raise ConstraintError(f"choice needs a non-empty list of non-empty strings, got {options!r}")
        return cls("choice", json.dumps(list(options), ensure_ascii=False))

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """A Lark grammar in llguidance's dialect (`start` rule; `%json {schema}` embeds a JSON Schema)."""
        return cls("lark", grammar)

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema of a json_schema constraint, else None."""
        return json.loads(self.source) if self.kind == "json_schema" else None

    @property
    def options(self) -> list[str] | None:
        return json.loads(self.source) if self.kind == "choice" else None

    def matcher(self, tokenizer) -> Matcher:
        """A fresh grammar state for one answer decoded with `tokenizer` (a `llama.tokenizer.Tokenizer`)."""
        return Matcher(self, tokenizer)


def _canonical(schema: dict) -> str:
    try:
        return json.dumps(schema, sort_keys=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ConstraintError(f"the JSON Schema cannot be written as JSON: {e}") from None


def json_in_lark(schema: dict) -> str:
    """`%json {...}` for a Lark rule, laid out as `JSON_LAYOUT` (the schema's own x-guidance wins)."""
    return "%json " + _canonical({**schema, "x-guidance": {**JSON_LAYOUT, **schema.get("x-guidance", {})}})


def lark_literal(text: str) -> str:
    """`text` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


@lru_cache(maxsize=256)
def _compile(kind: str, source: str) -> str:
    llg = _llguidance()
    try:
        if kind == "json_schema":
            grammar = llg.LLMatcher.grammar_from_json_schema(source, overrides=JSON_LAYOUT)
        elif kind == "regex":
            grammar = llg.LLMatcher.grammar_from_regex(source)
        elif kind == "choice":
            grammar = llg.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(lark_literal(o) for o in json.loads(source)))
        else:
            grammar = llg.LLMatcher.grammar_from_lark(source)
    except ValueError as e:
        raise ConstraintError(f"cannot compile the {kind.replace('_', ' ')}: {e}") from None
    error = llg.LLMatcher.validate_grammar(grammar)
    if error:
        what = {"json_schema": "JSON Schema", "regex": "regex", "choice": "choice list", "lark": "Lark grammar"}[kind]
        raise ConstraintError(f"the {what} cannot be used for constrained decoding: {_first_lines(error)}")
    return grammar


def _first_lines(message: str, n: int = 4) -> str:
    """An engine message on one line: its first lines up to the grammar listing it appends."""
    lines = []
    for line in message.strip().splitlines():
        if line.lstrip().startswith(("1 |", "<state>", "<grammar>")):
            break
        if line.strip() and not set(line.strip()) <= {"^"}:
            lines.append(line.strip())
    return "; ".join(lines[:n])


# --- the tokenizer as the engine sees it -----------------------------------------------------------------

def token_bytes(sp_model) -> list[bytes]:
    """Each SentencePiece id's bytes: "▁" is a space, `<0xNN>` byte pieces are that byte, and control or
    unknown pieces get llguidance's special-token prefix 0xFF (grammars never produce them)."""
    out = []
    for i in range(sp_model.vocab_size()):
        piece = sp_model.id_to_piece(i)
        if sp_model.is_byte(i):
            out.append(bytes([int(piece[3:5], 16)]))
        elif sp_model.is_control(i) or sp_model.is_unknown(i):
            out.append(b"\xff" + piece.encode())
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out


class _SentencePieceForEngine:
    """What llguidance.TokenizerWrapper reads: the token bytes, EOS/BOS, and an encoder of forced text
    that adds no dummy-prefix space (the model's own encoder adds one at the start of every string)."""

    def __init__(self, sp_model):
        from sentencepiece import SentencePieceProcessor
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(sp_model.serialized_model_proto())
        proto.normalizer_spec.add_dummy_prefix = False
        proto.normalizer_spec.remove_extra_whitespaces = False
        self._raw = SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.tokens = token_bytes(sp_model)
        self.eos_token_id = sp_model.eos_id()
        self.bos_token_id = sp_model.bos_id() if sp_model.bos_id() >= 0 else None
        self.special_token_ids = [i for i in range(sp_model.vocab_size())
                                  if sp_model.is_control(i) or sp_model.is_unknown(i)]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._raw.encode(text)


_ENGINE_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENGINE_LOCK = threading.Lock()


def engine_tokenizer(tokenizer):
    """The llguidance tokenizer of a `Tokenizer` (built once per tokenizer object: ~0.1 s for 32,000 pieces)."""
    llg = _llguidance()
    with _ENGINE_LOCK:
        found = _ENGINE_TOKENIZERS.get(tokenizer)
        if found is None:
            found = llg.LLTokenizer(llg.TokenizerWrapper(_SentencePieceForEngine(tokenizer.sp_model)))
            _ENGINE_TOKENIZERS[tokenizer] = found
        return found


class Matcher:
    """One answer's grammar state: which tokens may come next (`allowed`), `accept` the sampled one."""

    def __init__(self, constraint: Constraint, tokenizer):
        llg = _llguidance()
        self.constraint = constraint
        self._tok = engine_tokenizer(tokenizer)
        self.eos_id = tokenizer.eos_id
        self.vocab = self._tok.vocab_size
        self._m = llg.LLMatcher(self._tok, constraint.grammar, log_level=0)
        if self._m.is_error():
            raise ConstraintError(f"cannot start the {constraint.kind}: {_first_lines(self._m.get_error())}")

    def allowed(self, width: int) -> torch.Tensor:
        """(width,) bool: the tokens the grammar allows next (EOS only where it is complete); columns past
        the tokenizer's vocabulary (a model may have more logits) are never allowed."""
        import torch  # not at import: the toy's training data uses this package's formats without torch

        bits = np.unpackbits(np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8), bitorder="little",
                             count=min(width, self.vocab))
        mask = torch.zeros(width, dtype=torch.bool)
        mask[: bits.shape[0]] = torch.from_numpy(bits.astype(np.bool_))
        return mask

    def accept(self, token: int) -> bool:
        """Advance by one sampled token; False if the grammar refuses it (then `error` says why)."""
        return self._m.consume_token(token)

    @property
    def complete(self) -> bool:
        """The text so far is a whole match (EOS may come now)."""
        return self._m.is_accepting()

    @property
    def stopped(self) -> bool:
        """Nothing may follow but EOS (or the matcher failed: see `error`)."""
        return self._m.is_stopped()

    @property
    def error(self) -> str:
        """Why the matcher failed ("" when it did not): a resource limit of the engine, an illegal token."""
        return _first_lines(self._m.get_error()) if self._m.is_error() else ""

    def decode(self, ids: list[int]) -> str:
        """The exact text the grammar matched (SentencePiece's own decode drops a leading space)."""
        return self._tok.decode_str(list(ids))
