"""Grammar-constrained decoding in the one decode path: every constrained row matches its grammar, free rows
decode exactly as before, EOS only where a grammar is complete, an answer cut by max_tokens says "length"."""

from __future__ import annotations

import json
import re
import threading

import pytest
import torch

import ibllm_agent
from ibllm_agent.batching import GenerationBatcher
from ibllm_agent.generation import Decoder, format_prompt
from ibllm_agent.grammar import Constraint, ConstraintError, token_bytes
from ibllm_agent.params import GenerationParams, ParamsError, VisualCacheParams
from ibllm_agent.serve.engine import Engine, Request

pytest.importorskip("llguidance")

ANIMAL = {"type": "object", "additionalProperties": False, "required": ["name", "legs"],
          "properties": {"name": {"enum": ["dog", "bird", "bell"]}, "legs": {"type": "integer", "minimum": 0,
                                                                              "maximum": 8}}}


@pytest.fixture(scope="module")
def toy():
    return ibllm_agent.load("toy")


@pytest.fixture(scope="module")
def tiny():
    return ibllm_agent.load("tiny")


def greedy(max_tokens=40, constraint=None, **kw) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, constraint=constraint, **kw)


def test_a_constraint_is_a_hashable_spec_checked_when_made():
    a, b = Constraint.json_schema(ANIMAL), Constraint.json_schema(json.dumps(ANIMAL))
    assert a == b and hash(a) == hash(b) and a.schema == ANIMAL
    assert Constraint.choice(["x", "y"]) != Constraint.choice(["y", "x"])
    for bad, words in [({"type": "strin"}, "Invalid type"), ({"type": "integer", "minimum": 5, "maximum": 2},
                                                            "Unsatisfiable"),
                       ({"$ref": "#/$defs/missing"}, "does not exist"), ("{not json", "not valid JSON"),
                       ([1, 2], "must be an object")]:
        with pytest.raises(ConstraintError, match=words):
            Constraint.json_schema(bad)
    with pytest.raises(ConstraintError, match="look-around"):
        Constraint.regex("(?<=a)b")
    with pytest.raises(ConstraintError, match="non-empty list"):
        Constraint.choice([])
    with pytest.raises(ConstraintError, match="kind"):
        Constraint("yaml", "a: 1")
    with pytest.raises(ParamsError, match="constraint"):
        GenerationParams(constraint='{"type": "object"}')
    assert greedy(constraint=a).sampling == greedy()


def test_sentencepiece_pieces_are_the_bytes_the_grammar_sees(toy):
    sp = toy.tokenizer.sp_model
    table = token_bytes(sp)
    assert table[sp.piece_to_id("<0x7B>")] == b"{"
    assert table[toy.tokenizer.eos_id].startswith(b"\xff")  # special: never produced by a grammar
    word = next(i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("\u2581") and len(sp.id_to_piece(i)) > 2)
    assert table[word] == b" " + sp.id_to_piece(word)[1:].encode()


def test_each_row_matches_its_own_grammar_and_free_rows_are_unchanged(toy):
    q = format_prompt("What is this?")
    constraints = [None, Constraint.json_schema(ANIMAL), Constraint.regex(r"[a-z]+ [0-9]{2}"),
                   Constraint.choice(["dog", "bell", "rain"]), Constraint.json_object(), None]
    prompts = [q, q, format_prompt("What do you hear?"), q, q, format_prompt("Who are you?")]
    out = toy.generate_batch(prompts, None, [greedy(60, c) for c in constraints])
    free = toy.generate_batch([prompts[0], prompts[5]], None, greedy(60))
    assert [(g.text, g.token_ids, g.finish_reason) for g in (out[0], out[5])] == \
        [(g.text, g.token_ids, g.finish_reason) for g in free]
    assert all(g.finish_reason == "stop" for g in out[1:5]), [(g.text, g.finish_reason) for g in out]
    value = json.loads(out[1].text)
    assert value["name"] in ("dog", "bird", "bell") and 0 <= value["legs"] <= 8 and set(value) == {"name", "legs"}
    assert re.fullmatch(r"[a-z]+ [0-9]{2}", out[2].text)
    assert out[3].text in ("dog", "bell", "rain")
    assert isinstance(json.loads(out[4].text), dict)


def test_sampled_rows_also_stay_in_their_grammar(toy):
    c = Constraint.json_schema(ANIMAL)
    params = [GenerationParams(max_tokens=40, temperature=1.5, top_p=1.0, seed=s, constraint=c) for s in range(8)]
    for g in toy.generate_batch([format_prompt("What is this?")] * 8, None, params):
        assert g.finish_reason == "stop" and set(json.loads(g.text)) == {"name", "legs"}


def test_eos_is_allowed_only_where_the_grammar_is_complete(tiny):
    """Even with EOS made the model's favourite, a constrained row ends only once its JSON is whole."""
    saved = tiny.llama.output.weight[tiny.tokenizer.eos_id].clone()
    with torch.no_grad():
        tiny.llama.output.weight[tiny.tokenizer.eos_id] += 50.0
    try:
        [free, held] = tiny.generate_batch(["dog", "dog"], None, [greedy(40), greedy(40, Constraint.choice(["a b"]))])
    finally:
        with torch.no_grad():
            tiny.llama.output.weight[tiny.tokenizer.eos_id] = saved
    assert (free.text, free.finish_reason) == ("", "stop")
    assert (held.text, held.finish_reason) == ("a b", "stop")


def test_an_answer_cut_by_max_tokens_says_length(toy):
    long_string = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 50}}}
    [g] = toy.generate_batch([format_prompt("Describe it in detail.")], None,
                             greedy(10, Constraint.json_schema(long_string)))
    assert g.finish_reason == "length" and len(g.token_ids) == 10 and g.text.startswith('{"text": "')
    with pytest.raises(json.JSONDecodeError):
        json.loads(g.text)


def test_streamed_deltas_add_up_to_the_constrained_answer(toy):
    decoder, _, _ = toy.start([format_prompt("What is this?")], None, greedy(40, Constraint.json_schema(ANIMAL)))
    deltas = "".join(d[0] for d in decoder)
    [(text, _, finish)] = decoder.results()
    assert deltas == text and finish == "stop"


def test_a_grammar_that_fails_while_decoding_ends_its_row_with_error_only(tiny, monkeypatch):
    decoder = Decoder(tiny.llama, tiny.tokenizer)
    ids = [tiny.tokenizer.encode("dog", bos=True, eos=False)] * 2
    decoder.join(ids, None, [greedy(8), greedy(8, Constraint.regex("[a-z]{1,30}"))])
    matcher = decoder.rows[1].matcher
    monkeypatch.setattr(matcher, "allowed", lambda width: torch.zeros(width, dtype=torch.bool))
    decoder.run()
    assert decoder.rows[1].finish == "error" and decoder.rows[1].error
    assert decoder.rows[0].finish == "length" and len(decoder.rows[0].ids) == 8


def test_the_batcher_batches_different_grammars_together(toy, monkeypatch):
    batcher = GenerationBatcher(toy, max_batch_size=8)
    gate, calls = threading.Event(), []
    real = toy.generate_batch

    def spy(prompts, features, generation, visual_cache):
        gate.wait(5)
        calls.append(len(prompts))
        return real(prompts, features, generation, visual_cache)

    monkeypatch.setattr(toy, "generate_batch", spy)
    constraints = [None, Constraint.json_schema(ANIMAL), Constraint.choice(["dog", "bell"]), None]
    futures = [batcher.submit(format_prompt("What is this?"), None, greedy(40, c), VisualCacheParams())
               for c in constraints]
    gate.set()
    results = [f.result(60) for f in futures]
    assert sum(calls) == 4 and len(calls) <= 2
    assert set(json.loads(results[1].text)) == {"name", "legs"} and results[2].text in ("dog", "bell")


def test_the_engine_serves_constrained_and_free_requests_in_one_running_batch(toy):
    engine = Engine(toy, max_batch=8).start()
    try:
        reqs = [Request(format_prompt("What is this?"), None, greedy(40, c))
                for c in (None, Constraint.json_schema(ANIMAL), Constraint.regex("[a-z]{3}"))]
        finals = []
        for ticket in [engine.submit(r) for r in reqs]:
            events = list(ticket)
            finals.append(("".join(e.delta for e in events), events[-1].finish_reason))
    finally:
        engine.stop()
    alone = [toy.generate_batch([r.prompt], None, r.generation)[0] for r in reqs]
    assert finals == [(g.text, g.finish_reason) for g in alone]
    assert set(json.loads(finals[1][0])) == {"name", "legs"} and re.fullmatch("[a-z]{3}", finals[2][0])


def test_the_mask_cost_benchmark_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    pytest.importorskip("outlines_core")
    path = Path(__file__).resolve().parents[2] / "tools" / "bench_grammar.py"
    spec = importlib.util.spec_from_file_location("bench_grammar", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--paths", "1", "--steps", "4", "--json", str(tmp_path / "out.json")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    assert {r["engine"] for r in rows} == {"llguidance", "outlines-core"} and all(r["tokens"] > 0 for r in rows)
