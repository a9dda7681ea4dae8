"""The per-model generation batcher: concurrent requests share decoding loops; a failure stays with its cause."""

from __future__ import annotations

import threading

import pytest
import torch

from ibllm_agent.batching import GenerationBatcher
from ibllm_agent.factory import load
from ibllm_agent.generation import PromptTooLongError
from ibllm_agent.params import GenerationParams, VisualCacheParams

NO_CACHE = VisualCacheParams()


@pytest.fixture(scope="module")
def llm():
    return load("tiny")


def spy_on(llm, monkeypatch, gate: threading.Event, calls: list):
    real = llm.generate_batch

    def spy(prompts, features, generation, visual_cache):
        gate.wait(5)  # hold the first batch until every request is queued
        calls.append((len(prompts), generation[0]))  # the batcher passes each request's own settings
        return real(prompts, features, generation, visual_cache)

    monkeypatch.setattr(llm, "generate_batch", spy)


def test_concurrent_requests_share_a_batch_and_match_single_runs(llm, monkeypatch):
    batcher = GenerationBatcher(llm, max_batch_size=8)
    params = GenerationParams(max_tokens=6, temperature=0.0)
    prompts = [f"prompt {i} " + "x" * i for i in range(6)]
    singles = [llm.generate_batch([p], None, params)[0].text for p in prompts]
    gate, calls = threading.Event(), []
    spy_on(llm, monkeypatch, gate, calls)
    futures = [batcher.submit(p, None, params, NO_CACHE) for p in prompts]
    gate.set()
    assert [f.result(30).text for f in futures] == singles
    assert sum(n for n, _ in calls) == 6 and len(calls) <= 2  # the first alone at most, then the rest together


def test_different_settings_and_seeded_sampling_are_not_mixed(llm, monkeypatch):
    batcher = GenerationBatcher(llm)
    gate, calls = threading.Event(), []
    spy_on(llm, monkeypatch, gate, calls)
    seeded = GenerationParams(max_tokens=3, temperature=1.0, seed=1)
    futures = [batcher.submit("a", None, GenerationParams(max_tokens=3), NO_CACHE),
               batcher.submit("b", None, seeded, NO_CACHE), batcher.submit("c", None, seeded, NO_CACHE),
               batcher.submit("d", None, GenerationParams(max_tokens=4), NO_CACHE)]
    gate.set()
    for f in futures:
        f.result(30)
    got = sorted((n, g.max_tokens, -1 if g.seed is None else g.seed) for n, g in calls)
    assert got == [(1, 3, -1), (1, 3, 1), (1, 3, 1), (1, 4, -1)]


def test_a_poisoned_request_fails_alone_and_the_others_answer_as_alone(llm, monkeypatch):
    """16 concurrent requests, one of which cannot run (its prompt overflows the context): the batch it
    joined fails, each request is run again alone, and the 15 others get exactly their lone answers."""
    batcher = GenerationBatcher(llm, max_batch_size=16)
    params = GenerationParams(max_tokens=5, temperature=0.0)
    prompts = [f"question {i} " + "y" * (i % 5) for i in range(16)]
    poisoned = 7
    prompts[poisoned] = "z " * (llm.max_seq_len + 10)
    alone = {i: llm.generate_batch([p], None, params)[0].text for i, p in enumerate(prompts) if i != poisoned}
    gate, calls = threading.Event(), []
    spy_on(llm, monkeypatch, gate, calls)
    futures = [batcher.submit(p, None, params, NO_CACHE) for p in prompts]
    gate.set()
    for i, future in enumerate(futures):
        if i == poisoned:
            with pytest.raises(PromptTooLongError):
                future.result(60)
        else:
            assert future.result(60).text == alone[i], i
    assert max(n for n, _ in calls) > 1  # they did share a batch first
    assert batcher.submit("after", None, GenerationParams(max_tokens=2), NO_CACHE).result(30).text is not None


def test_a_feature_that_cannot_condition_is_refused_before_it_joins(llm):
    batcher = GenerationBatcher(llm)
    with pytest.raises(ValueError, match="finite"):
        batcher.submit("a", torch.full((llm.feature_dim,), float("nan")), GenerationParams(), NO_CACHE)
