"""Per-token cost of a grammar mask with our SentencePiece tokenizers: llguidance against outlines-core.

    python tools/bench_grammar.py                                   # the toy's 700 pieces
    python tools/bench_grammar.py --tokenizer /tmp/sp32k.model      # a 32,000-piece model (LLaMA's size)

For each engine, tokenizer and grammar: the one-off costs (the engine's view of the tokenizer; compiling
the grammar, which outlines-core does into a token-level automaton per grammar and vocabulary) and,
along seeded random paths of allowed tokens (at most --steps tokens each), the time per token of
computing the mask of allowed tokens and advancing the state by the chosen token (median, p95, best).
The engines run interleaved path by path, so load changes hit them alike. outlines-core is not a dependency
(`pip install outlines-core` to compare; without it only llguidance is timed). It needs a regex;
JSON Schemas go through its own `build_regex_from_schema` (whitespace: an optional space between items).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibllm_agent.grammar import Constraint, token_bytes  # noqa: E402
from ibllm_agent.llama.tokenizer import Tokenizer  # noqa: E402

TOY_TOKENIZER = Path(__file__).resolve().parents[1] / "ibllm_agent" / "assets" / "toy" / "llama" / "tokenizer.model"

GRAMMARS = {
    "joke (2 strings)": {"type": "object", "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
                         "required": ["setup", "punchline"], "additionalProperties": False},
    "nested (array of objects, enum, bounds, optional)": {
        "type": "object", "additionalProperties": False, "required": ["label", "items"],
        "properties": {
            "label": {"type": "string", "enum": ["dog", "bird", "bell", "rain"]},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "items": {"type": "array", "maxItems": 3, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "weight"],
                "properties": {"name": {"type": "string", "maxLength": 12}, "weight": {"type": "number"},
                               "loud": {"type": "boolean"}}}}}},
    "tool call (3 tools)": {"anyOf": [
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": f"tool_{k}"}, "arguments": {
             "type": "object", "additionalProperties": False, "required": [f"arg_{k}"],
             "properties": {f"arg_{k}": {"type": "integer"}}}}} for k in range(3)]},
    "regex (date)": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
}


class Llg:
    name = "llguidance"

    def __init__(self, tokenizer: Tokenizer):
        from ibllm_agent.grammar import engine_tokenizer

        t = time.perf_counter()
        engine_tokenizer(tokenizer)
        self.setup_s = time.perf_counter() - t
        self.tokenizer = tokenizer

    def compile(self, spec):
        c = Constraint.json_schema(spec) if isinstance(spec, dict) else Constraint.regex(spec)
        return lambda: c.matcher(self.tokenizer)

    @staticmethod
    def step(state, vocab: int) -> np.ndarray:
        return state.allowed(vocab).numpy()

    @staticmethod
    def advance(state, token: int) -> bool:
        return state.accept(token)


class Outlines:
    name = "outlines-core"

    def __init__(self, tokenizer: Tokenizer):
        import outlines_core as oc

        t = time.perf_counter()
        pieces: dict[bytes, list[int]] = {}
        sp = tokenizer.sp_model
        for i, b in enumerate(token_bytes(sp)):
            if i != tokenizer.eos_id and not (sp.is_control(i) or sp.is_unknown(i)):
                pieces.setdefault(b, []).append(i)
        self.vocabulary = oc.Vocabulary(tokenizer.eos_id, pieces)
        self.setup_s = time.perf_counter() - t
        self.oc = oc
        self._mask = None

    def compile(self, spec):
        regex = (self.oc.json_schema.build_regex_from_schema(json.dumps(spec), whitespace_pattern="[ ]?")
                 if isinstance(spec, dict) else spec)
        index = self.oc.Index(regex, self.vocabulary)
        return lambda: self.oc.Guide(index)

    def step(self, guide, vocab: int) -> np.ndarray:
        # the same work as ours: a bitmask written by the engine, unpacked to one flag per token
        words = np.zeros((vocab + 31) // 32, dtype=np.int32)
        guide.write_mask_into(words.ctypes.data, words.size, 4)
        return np.unpackbits(words.view(np.uint8), bitorder="little", count=vocab).astype(bool)

    @staticmethod
    def advance(guide, token: int) -> bool:
        guide.advance(token)
        return True


def walk(engine, start, vocab: int, eos: int, steps: int, rng: random.Random) -> list[float]:
    """Seconds per token (mask + advance) along one random path of allowed tokens."""
    state, times = start(), []
    for _ in range(steps):
        t = time.perf_counter()
        allowed = engine.step(state, vocab)
        choices = np.flatnonzero(allowed)
        others = choices[choices != eos]
        if len(others) == 0:
            break
        token = int(others[rng.randrange(len(others))])
        engine.advance(state, token)
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, action="append", help="SentencePiece model(s); default: the toy's")
    p.add_argument("--paths", type=int, default=20, help="random paths per grammar and engine")
    p.add_argument("--steps", type=int, default=48, help="most tokens per path")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    rows = []
    for path in args.tokenizer or [TOY_TOKENIZER]:
        tokenizer = Tokenizer(path)
        vocab = tokenizer.n_words
        engines = [Llg(tokenizer)]
        try:
            engines.append(Outlines(tokenizer))
        except ImportError:
            print("outlines-core is not installed: timing llguidance only", file=sys.stderr)
        for label, spec in GRAMMARS.items():
            compiled, per_token = {}, {e.name: [] for e in engines}
            for e in engines:
                t = time.perf_counter()
                start = e.compile(spec)
                start()
                compiled[e.name] = (start, time.perf_counter() - t)
            for k in range(args.paths):
                for e in engines:
                    per_token[e.name] += walk(e, compiled[e.name][0], vocab, tokenizer.eos_id, args.steps,
                                              random.Random(k))
            for e in engines:
                ts = sorted(per_token[e.name])
                row = {"tokenizer": f"{path.name} ({vocab} pieces)", "grammar": label, "engine": e.name,
                       "tokenizer_setup_ms": round(e.setup_s * 1e3, 2), "compile_ms": round(compiled[e.name][1] * 1e3, 2),
                       "tokens": len(ts), "per_token_us_median": round(statistics.median(ts) * 1e6, 1),
                       "per_token_us_p95": round(ts[int(0.95 * (len(ts) - 1))] * 1e6, 1),
                       "per_token_us_best": round(ts[0] * 1e6, 1)}
                rows.append(row)
                print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
