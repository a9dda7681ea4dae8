"""Hostile inputs to the expression parser, the content blocks and the shared batch: typed errors only.

Fuzzing uses fixed seeds and a few seconds each; every outcome is counted and printed (`-s` to see them):
attempts, accepted, typed errors, and anything else (which fails the test).
"""

from __future__ import annotations

import base64
import math
import random
import string
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from langchain_core.messages import HumanMessage

from ibllm_agent.arithmetic import ExpressionError, parse
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import ContentError, parse_message
from ibllm_agent.fusion import FLOAT32_MAX, MIN_NORM, FusionError, fuse
from ibllm_agent.sources import SourcePolicy

NUMBERS = ["0", "1", "2.5", ".5", "1e308", "1e39", "1e-320", "1e-45", "3e38", "0.0", "7", "1e-6", "123456789"]
OPERANDS = ["a", "emb_1", "image:x.png", "audio:'r a i n.wav'", "text:\"day\"", "media:scan.ply", "video:c.mp4",
            "point:p.ply"]


def _expression(rng: random.Random, depth: int = 0) -> str:
    kind = rng.random()
    if depth > 6 or kind < 0.3:
        return rng.choice(OPERANDS if rng.random() < 0.7 else NUMBERS)
    if kind < 0.45:
        return rng.choice("+-") * rng.randint(1, 3) + _expression(rng, depth + 1)
    if kind < 0.6:
        return "(" + _expression(rng, depth + 1) + ")"
    op = rng.choice(["+", "-", "*", "/"])
    return _expression(rng, depth + 1) + f" {op} " + _expression(rng, depth + 1)


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        i = rng.randint(0, len(chars))
        if rng.random() < 0.5 and chars:
            del chars[min(i, len(chars) - 1)]
        else:
            chars.insert(i, rng.choice(string.printable + "é∞\x00"))
    return "".join(chars)


def test_expression_fuzz_gives_finite_linear_terms_or_expression_errors():
    rng = random.Random(2026)
    counts = {"attempts": 0, "accepted": 0, "typed": 0, "fused": 0, "fusion_refused": 0}
    deep = ["(" * 300 + "a" + ")" * 300, "-" * 1999 + "a", "+-" * 999 + "a", "((((" * 70 + "a"]
    cases = deep + [_expression(rng) for _ in range(6000)]
    cases += [_mutate(rng, c) for c in cases[:4000]]
    for text in cases:
        counts["attempts"] += 1
        try:
            expr = parse(text)
        except ExpressionError:
            counts["typed"] += 1
            continue
        counts["accepted"] += 1
        for c in expr.coefficients:
            assert math.isfinite(c) and 0 < abs(c) <= FLOAT32_MAX, (text, c)
        vectors = torch.nn.functional.normalize(torch.randn(len(expr.operands), 16, generator=torch.Generator()
                                                            .manual_seed(counts["attempts"])), dim=-1)
        try:
            out = fuse(vectors, expr.coefficients)
        except FusionError:
            counts["fusion_refused"] += 1
            continue
        counts["fused"] += 1
        assert bool(torch.isfinite(out).all()) and float(out.norm()) >= MIN_NORM, text
    print("expression fuzz:", counts)
    assert counts["accepted"] > 1000 and counts["typed"] > 1000  # the fuzz reaches both sides


def _random_value(rng: random.Random):
    return rng.choice([None, 0, -1, 1e39, float("nan"), "", "x" * rng.randint(1, 50), [], {}, [1, 2], {"a": 1},
                       True, "data:image/png;base64,!!!", "data:,", "data:image/png," + "%41" * 10,
                       "../../etc/passwd", "file:///etc/passwd", "http://127.0.0.1:1/x", "\x00bad",
                       base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode()])


def _random_block(rng: random.Random) -> dict:
    block = {"type": rng.choice(["image", "audio", "video", "file", "text", "text-plain", "non_standard",
                                 "image_url", "input_audio", "reasoning", "mystery", 3, None])}
    for key in rng.sample(["base64", "url", "mime_type", "extras", "text", "value", "file_id", "id",
                           "image_url", "input_audio"], rng.randint(0, 4)):
        block[key] = _random_value(rng)
    if rng.random() < 0.3:
        block["extras"] = {rng.choice(["weight", "modality", "filename"]): _random_value(rng)}
    if rng.random() < 0.2:
        block["value"] = {"type": rng.choice(["imagebind_embedding", "image_url", "x"]),
                          "embedding": rng.choice([[0.0, 0.0], [1.0, float("inf")], "abc", [[1.0]], [1e39]]),
                          "image_url": _random_value(rng)}
    return block


def test_content_block_fuzz_gives_question_parts_or_content_errors(tmp_path):
    rng = random.Random(7)
    policy = SourcePolicy(roots=(tmp_path,), max_bytes=1024)
    counts = {"attempts": 0, "accepted": 0, "typed": 0, "refused_by_langchain": 0}
    for _ in range(3000):
        blocks = [_random_block(rng) for _ in range(rng.randint(1, 3))]
        try:
            message = HumanMessage(content=blocks)
            message.content_blocks  # noqa: B018 - LangChain's own conversion may refuse a block first
        except (ValueError, TypeError, KeyError, AttributeError):
            counts["refused_by_langchain"] += 1
            continue
        counts["attempts"] += 1
        try:
            parse_message(message, policy)
            counts["accepted"] += 1
        except ContentError:
            counts["typed"] += 1
    print("content block fuzz:", counts)
    assert counts["attempts"] > 1000 and counts["typed"] > 500


@pytest.fixture(scope="module")
def chat():
    return ChatImageBindLLM(model="tiny", temperature=0, max_tokens=6)


def test_sixteen_concurrent_chats_with_poisoned_ones_answer_as_alone(chat):
    """A weight beyond float32 used to make a NaN feature that failed the whole shared batch (6-7 of 15
    innocent requests failed). Now it is refused before it joins anything; the others answer as alone."""
    g = torch.Generator().manual_seed(3)
    vectors = torch.randn(16, chat.llm.feature_dim, generator=g)

    def message(i: int) -> list[HumanMessage]:
        block = {"type": "imagebind_embedding", "embedding": vectors[i].tolist(), "weight": 1.0}
        if i == 5:
            block["weight"] = 1e39  # finite in Python, infinite in float32
        if i == 11:
            return [HumanMessage("word " * 5000)]  # longer than the context window
        return [HumanMessage(content=[f"Question {i}?", {"type": "non_standard", "value": block}])]

    alone = {i: chat.invoke(message(i)).text for i in range(16) if i not in (5, 11)}
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(chat.invoke, message(i)) for i in range(16)]
    for i, future in enumerate(futures):
        if i == 5:
            with pytest.raises(FusionError, match="float32 range"):
                future.result()
        elif i == 11:
            with pytest.raises(ValueError, match="context window"):
                future.result()
        else:
            assert future.result().text == alone[i], i
