"""The per-model generation batcher: concurrent requests share decoding loops, failures reach every waiter."""

from __future__ import annotations

import threading

import pytest

from ibllm_agent.batching import GenerationBatcher, GenerationParams
from ibllm_agent.model import load


@pytest.fixture(scope="module")
def llm():
    return load("tiny")


def test_concurrent_requests_share_a_batch_and_match_single_runs(llm, monkeypatch):
    batcher = GenerationBatcher(llm, max_batch_size=8)
    params = GenerationParams(max_gen_len=6, temperature=0.0)
    prompts = [f"prompt {i} " + "x" * i for i in range(6)]
    singles = [llm.generate_batch([p], None, **params.as_kwargs())[0].text for p in prompts]
    sizes = []
    real = llm.generate_batch
    gate = threading.Event()

    def spy(prompts, features, **kw):
        gate.wait(5)  # hold the first batch until every request is queued
        sizes.append(len(prompts))
        return real(prompts, features, **kw)

    monkeypatch.setattr(llm, "generate_batch", spy)
    futures = [batcher.submit(p, None, params) for p in prompts]
    gate.set()
    assert [f.result(30).text for f in futures] == singles
    assert sum(sizes) == 6 and len(sizes) <= 2  # the first alone at most, then the rest together


def test_different_settings_and_seeded_sampling_are_not_mixed(llm, monkeypatch):
    batcher = GenerationBatcher(llm)
    sizes = []
    real = llm.generate_batch
    gate = threading.Event()

    def spy(prompts, features, **kw):
        gate.wait(5)
        sizes.append((len(prompts), kw["max_gen_len"], kw["seed"]))
        return real(prompts, features, **kw)

    monkeypatch.setattr(llm, "generate_batch", spy)
    seeded = GenerationParams(max_gen_len=3, temperature=1.0, seed=1)
    futures = [batcher.submit("a", None, GenerationParams(max_gen_len=3)),
               batcher.submit("b", None, seeded), batcher.submit("c", None, seeded),
               batcher.submit("d", None, GenerationParams(max_gen_len=4))]
    gate.set()
    for f in futures:
        f.result(30)
    assert sorted(sizes, key=str) == sorted([(1, 3, None), (1, 3, 1), (1, 3, 1), (1, 4, None)], key=str)


def test_a_failing_batch_fails_every_request(llm):
    batcher = GenerationBatcher(llm)
    bad = GenerationParams(top_p=0.0)  # rejected by the decoder
    futures = [batcher.submit("a", None, bad), batcher.submit("b", None, bad)]
    for f in futures:
        with pytest.raises(ValueError, match="top_p"):
            f.result(30)
    assert batcher.submit("c", None, GenerationParams(max_gen_len=2)).result(30).text is not None
