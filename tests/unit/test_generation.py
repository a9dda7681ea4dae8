"""Prompts, sampling and the decoding loop (on the tiny random model)."""

from __future__ import annotations

import pytest
import torch

import ibllm_agent
from ibllm_agent.generation import PROMPT_DICT, Decoder, PromptTooLongError, format_prompt, sample_top_p
from ibllm_agent.params import GenerationParams, ParamsError


@pytest.fixture(scope="module")
def model():
    return ibllm_agent.load("tiny")


def test_format_prompt_is_the_exact_alpaca_text():
    assert format_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:")
    assert format_prompt("Say hi.", "") == format_prompt("Say hi.", None)
    assert format_prompt("Q?", "ctx") == PROMPT_DICT["prompt_input"].format(instruction="Q?", input="ctx")
    assert format_prompt("Q?", "ctx").endswith("### Input:\nctx\n\n### Response:")


def test_sample_top_p_keeps_the_nucleus_and_is_seedable():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    draws = {int(sample_top_p(probs.clone(), 0.75, torch.Generator().manual_seed(s))) for s in range(200)}
    assert draws == {0, 1}  # mass before token 2 is 0.8 > 0.75: cut, as in the reference
    assert {int(sample_top_p(probs.clone(), 0.1, torch.Generator().manual_seed(s))) for s in range(50)} == {0}
    a = [int(sample_top_p(probs.clone(), 0.99, torch.Generator().manual_seed(3))) for _ in range(5)]
    b = [int(sample_top_p(probs.clone(), 0.99, torch.Generator().manual_seed(3))) for _ in range(5)]
    assert a == b


def test_decoder_stops_at_max_gen_len_and_streams_the_same_text(model):
    ids = [model.tokenizer.encode(format_prompt("Describe the dog."), bos=True, eos=False)]
    decoder = Decoder(model.llama, model.tokenizer, ids, None, GenerationParams(max_tokens=7, temperature=0.0))
    deltas = [d[0] for d in decoder]
    [(text, tokens, finish)] = decoder.results()
    assert len(tokens) == 7 and finish == "length"
    assert "".join(deltas) == text == model.tokenizer.decode(tokens)


def test_eos_ends_a_row_and_is_not_returned(model):
    ids = [model.tokenizer.encode("dog", bos=True, eos=False)]
    saved = model.llama.output.weight[model.tokenizer.eos_id].clone()
    with torch.no_grad():
        model.llama.output.weight[model.tokenizer.eos_id] += 50.0  # make EOS the greedy choice
    try:
        [(text, tokens, finish)] = Decoder(model.llama, model.tokenizer, ids, None,
                                           GenerationParams(max_tokens=5, temperature=0.0)).run()
    finally:
        with torch.no_grad():
            model.llama.output.weight[model.tokenizer.eos_id] = saved
    assert (text, tokens, finish) == ("", [], "stop")


def test_stop_strings_cut_the_text_and_are_never_streamed(model):
    prompt = format_prompt("Describe the bell.")
    [full] = model.generate_batch([prompt], None, max_tokens=12, temperature=0.0)
    assert len(full.text) > 3
    stop = full.text[2:4]
    [cut] = model.generate_batch([prompt], None, max_tokens=12, temperature=0.0, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    streamed = "".join(model.stream(prompt, None, max_tokens=12, temperature=0.0, stop=[stop]))
    assert streamed == cut.text


def test_batch_of_different_lengths_gives_each_prompt_its_own_greedy_answer(model):
    prompts = [format_prompt("Describe the rain."), "a dog", format_prompt("What is this?", "a red car")]
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, model.feature_dim, generator=g)
    batch = model.generate_batch(prompts, features, max_tokens=10, temperature=0.0)
    for prompt, feature, got in zip(prompts, features, batch):
        [alone] = model.generate_batch([prompt], feature, max_tokens=10, temperature=0.0)
        assert got.token_ids == alone.token_ids and got.text == alone.text
        assert got.prompt_tokens == len(model.tokenizer.encode(prompt, bos=True, eos=False))


def test_seeded_sampling_is_reproducible_and_the_stream_matches(model):
    prompt = format_prompt("Describe the drum.")
    a = model.generate_batch([prompt], None, max_tokens=10, temperature=1.0, top_p=0.95, seed=11)
    b = model.generate_batch([prompt], None, max_tokens=10, temperature=1.0, top_p=0.95, seed=11)
    assert a[0].token_ids == b[0].token_ids
    streamed = "".join(model.stream(prompt, None, max_tokens=10, temperature=1.0, top_p=0.95, seed=11))
    assert streamed == a[0].text
    others = {tuple(model.generate_batch([prompt], None, max_tokens=10, temperature=1.0, top_p=0.95,
                                         seed=s)[0].token_ids) for s in range(4)}
    assert len(others) > 1


def test_interleaved_streams_do_not_interfere(model):
    p1, p2 = format_prompt("Describe the cat."), format_prompt("What sound is this?", "wind and rain")
    expected = [model.generate_batch([p], None, max_tokens=8, temperature=0.0)[0].text for p in (p1, p2)]
    s1, s2 = model.stream(p1, None, max_tokens=8, temperature=0.0), model.stream(p2, None, max_tokens=8,
                                                                                  temperature=0.0)
    out1, out2 = [], []
    for a, b in zip(s1, s2):
        out1.append(a)
        out2.append(b)
    out1 += list(s1)
    out2 += list(s2)
    assert ["".join(out1), "".join(out2)] == expected


def test_prompt_longer_than_the_context_is_a_clear_error():
    small = ibllm_agent.load("tiny", max_seq_len=16)
    with pytest.raises(PromptTooLongError, match="max_seq_len"):
        small.generate_batch(["dog " * 40], None, max_tokens=4)
    [g] = small.generate_batch(["dog"], None, max_tokens=100, temperature=0.0)
    assert g.finish_reason == "length" and g.prompt_tokens + len(g.token_ids) <= 16


def test_bad_sampling_arguments(model):
    with pytest.raises(ValueError, match="top_p"):
        model.generate_batch(["dog"], None, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate_batch(["dog"], None, temperature=-1.0)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.1, "generation.temperature must be >= 0"),
    ("temperature", float("nan"), "generation.temperature"),
    ("top_p", 0.0, "generation.top_p must be > 0"),
    ("top_p", 1.5, "generation.top_p"),
    ("max_tokens", -1, "generation.max_tokens"),
    ("max_tokens", 2.5, "whole number"),
    ("seed", -3, "generation.seed"),
    ("stop", ["x"] * 40, "generation.stop"),
    ("temperature", "hot", "must be a number"),
])
def test_generation_params_refuse_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ParamsError, match=message):
        GenerationParams(**{field: value})


def test_generation_params_keep_the_reference_defaults():
    p = GenerationParams()
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop) == (256, 0.1, 0.75, None, ())
    assert p.updated(temperature=0, max_tokens=None) == GenerationParams(temperature=0.0)


def test_rows_join_and_leave_a_running_batch_and_answer_as_alone(model):
    """Continuous batching: rows of different lengths, settings and arrival times, one cancelled, in one
    running batch give each the greedy tokens it gets alone; finished rows free their cache slots."""
    questions = ["Describe the dog.", "What is this?", "a red car and a bell", "Tell me about the rain now, please."]
    prompts = [model.tokenizer.encode(format_prompt(q), bos=True, eos=False) for q in questions]
    g = torch.Generator().manual_seed(5)
    features = torch.randn(4, model.feature_dim, generator=g)
    budgets = [6, 14, 3, 9]
    alone = [model.generate_batch([p], f, max_tokens=n, temperature=0.0)[0].token_ids
             for p, f, n in zip(prompts, features, budgets)]
    decoder = Decoder(model.llama, model.tokenizer, dynamic=True)
    arrivals = {0: [0], 2: [1, 2], 5: [3]}  # step -> rows that join before it
    step = 0
    while step == 0 or not decoder.done or step <= max(arrivals):
        for i in arrivals.get(step, []):
            model.start([prompts[i]], features[i], GenerationParams(max_tokens=budgets[i], temperature=0.0),
                        into=decoder)
        if step == 4:
            decoder.remove(1)  # a client that went away
        decoder.step()
        step += 1
    got = [row.ids for row in decoder.rows.values()]
    assert got[0] == alone[0] and got[2] == alone[2] and got[3] == alone[3]
    assert decoder.rows[1].finish == "cancelled" and got[1] == alone[1][:len(got[1])]
    assert decoder.active == [] and decoder._cache is None


def test_a_long_running_batch_does_not_grow_its_cache_without_end(model):
    decoder = Decoder(model.llama, model.tokenizer, dynamic=True)
    prompt = model.tokenizer.encode(format_prompt("Describe the bell."), bos=True, eos=False)
    lengths = []
    for _ in range(30):  # a new short request every step, each answering 4 tokens
        model.start([prompt], None, GenerationParams(max_tokens=4, temperature=0.0), into=decoder)
        decoder.step()
        lengths.append(decoder._cache.length if decoder._cache is not None else 0)
    assert max(lengths) <= len(prompt) + 8, lengths  # leading padding slots are dropped as rows leave
