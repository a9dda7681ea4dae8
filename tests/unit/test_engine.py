"""The serving engine on the tiny model: continuous batching gives every request its lone answer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

import ibllm_agent
from ibllm_agent.generation import PromptTooLongError, format_prompt
from ibllm_agent.params import GenerationParams
from ibllm_agent.serve.engine import Engine, EngineStoppedError, QueueFullError, Request


@pytest.fixture(scope="module")
def model():
    return ibllm_agent.load("tiny")


def requests(model, n: int) -> list[Request]:
    g = torch.Generator().manual_seed(9)
    out = []
    for i in range(n):
        feature = None if i % 4 == 0 else torch.randn(model.feature_dim, generator=g)
        question = f"Question {i}: describe it" + " more" * (i % 5)
        out.append(Request(format_prompt(question), feature, GenerationParams(max_tokens=4 + i % 7, temperature=0.0)))
    return out


def alone(model, request: Request):
    return model.generate_batch([request.prompt], request.feature, request.generation, request.visual_cache)[0]


def collect(ticket) -> tuple[str, list]:
    events = list(ticket)
    return "".join(e.delta for e in events), events


def test_concurrent_requests_join_the_running_batch_and_answer_as_alone(model):
    reqs = requests(model, 16)
    expected = [alone(model, r) for r in reqs]
    engine = Engine(model, max_batch=8).start()
    seen_running = []
    tickets = []
    for i, r in enumerate(reqs):  # arrivals spread over the answers of the others
        tickets.append(engine.submit(r))
        if i % 3 == 2:
            time.sleep(0.01)
        seen_running.append(engine.stats["running"])
    results = [collect(t) for t in tickets]
    engine.stop()
    for (text, events), exp in zip(results, expected):
        assert text == exp.text
        final = events[-1]
        assert final.done and final.finish_reason == exp.finish_reason
        assert (final.prompt_tokens, final.completion_tokens) == (exp.prompt_tokens, len(exp.token_ids))
    assert max(seen_running) > 1  # they shared the batch


def test_a_poisoned_request_fails_alone(model):
    reqs = requests(model, 6)
    poisoned = Request("word " * (model.max_seq_len + 20), None, GenerationParams(max_tokens=4, temperature=0.0))
    reqs.insert(3, poisoned)
    expected = {i: alone(model, r).text for i, r in enumerate(reqs) if r is not poisoned}
    engine = Engine(model).start()
    tickets = [engine.submit(r) for r in reqs]
    for i, ticket in enumerate(tickets):
        text, events = collect(ticket)
        if i == 3:
            assert events[-1].finish_reason == "error" and isinstance(events[-1].error, PromptTooLongError)
        else:
            assert text == expected[i], i
    engine.stop()


def test_a_bad_feature_is_refused_before_it_queues(model):
    engine = Engine(model).start()
    with pytest.raises(ValueError, match="finite vector"):
        engine.submit(Request("hi", torch.full((model.feature_dim,), float("nan"))))
    engine.stop()


def test_cancel_frees_the_place_and_the_queue_is_bounded(model):
    gate = threading.Lock()
    engine = Engine(model, max_batch=1, max_queue=2)
    long = Request(format_prompt("Tell a long story."), None, GenerationParams(max_tokens=400, temperature=0.0))
    with gate:
        engine.start()
        first = engine.submit(long)
        while engine.stats["running"] == 0:
            time.sleep(0.001)
        queued = [engine.submit(long), engine.submit(long)]
        with pytest.raises(QueueFullError, match="max_queue=2"):
            engine.submit(long)
    first.cancel()
    for ticket in queued:
        ticket.cancel()
    for ticket in (first, *queued):
        assert list(ticket)[-1].finish_reason == "cancelled"
    time.sleep(0.05)
    assert engine.stats["running"] == 0 and engine.stats["waiting"] == 0
    assert engine._decoder.rows == {} and engine._decoder.active == []  # nothing kept after they left
    engine.stop()


async def test_async_consumers_get_the_same_events(model):
    reqs = requests(model, 5)
    expected = [alone(model, r).text for r in reqs]
    engine = Engine(model).start()

    async def answer(request):
        return "".join([e.delta async for e in engine.submit(request).events()])

    assert await asyncio.gather(*(answer(r) for r in reqs)) == expected
    engine.stop()


def test_seeded_sampling_is_the_lone_seeded_answer(model):
    r = Request(format_prompt("Describe the drum."), None, GenerationParams(max_tokens=8, temperature=1.0, seed=3))
    engine = Engine(model).start()
    others = [engine.submit(q) for q in requests(model, 4)]
    text, _ = collect(engine.submit(r))
    for t in others:
        collect(t)
    engine.stop()
    assert text == alone(model, r).text


def test_stop_takes_nothing_new_and_cancels_what_outlives_the_deadline(model):
    engine = Engine(model).start()
    ticket = engine.submit(Request(format_prompt("Talk."), None, GenerationParams(max_tokens=5000, temperature=0.0)))
    engine.stop(deadline_s=0.2)
    assert list(ticket)[-1].finish_reason in ("cancelled", "length")
    with pytest.raises(EngineStoppedError):
        engine.submit(Request("hi", None))
