"""Quantised, merged and fused inference on the official-format parity fixtures (issue 16).

* Merged LoRA + fused q/k/v and w1/w3 in float32: the reference's greedy answers, token for token.
* int8 / int4: teacher-forced top-1 agreement with float32 over >= 500 positions. The fixtures' weights
  are uniform noise, so their logits are nearly flat: the median gap between the first and second
  logit is 0.2 of the logits' spread, and a tenth of the positions are under 0.04. There, any rounding
  flips answers: bfloat16 activations alone (no quantisation) agree with float32 on only ~95 %. So the
  issue's gates (int8 >= 99 %, int4 >= 95 %) are checked on the trained toy
  (tests/integration/test_quant_toy.py); here int8 must cost no more than bfloat16 rounding does, and
  both must agree where float32's answer is decided (a top-1 margin above a quarter of the spread).
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

import ibllm_agent

pytestmark = [pytest.mark.parity, pytest.mark.slow]

MIXES = [{"Image": ("vision", 1.0)}, {"Audio": ("audio", 0.6), "Point": ("point", 0.4)}, {"Video": ("video", 1.0)},
         {"Text": ("text", 1.0)}]


def load(parity_dir, **options):
    return ibllm_agent.load(str(parity_dir / "adapter.pth"), str(parity_dir / "llama"),
                            imagebind_ckpt=str(parity_dir / "imagebind.pth"), knn=True,
                            knn_index=str(parity_dir / "knn.index"), device=os.environ.get("IBLLM_TEST_DEVICE", "cpu"),
                            **options)


@pytest.fixture(scope="module")
def inputs(parity_dir):
    return torch.load(parity_dir / "inputs.pt", map_location="cpu", weights_only=True)


def visual_query(model, inputs, mix, cache: bool):
    attached = model.visual_cache
    model.visual_cache = attached if cache else None
    try:
        return model.forward_visual({k: [inputs[branch], w] for k, (branch, w) in mix.items()})
    finally:
        model.visual_cache = attached


@pytest.fixture(scope="module")
def reference(parity_dir, inputs, parity_expected):
    """Sequences (prompt + float32 greedy answer of 40 tokens) for 4 input mixtures x cache off/on, and float32's
    teacher-forced logits on them."""
    model = load(parity_dir, dtype="float32")
    prompts = [c["prompt"] for c in parity_expected["generate"][::2]]
    cases = []
    for i, mix in enumerate(MIXES):
        for cache in (False, True):
            ids = model.tokenizer.encode(prompts[i % len(prompts)], bos=True, eos=False)
            decoder = model.decoder([ids], visual_query(model, inputs, mix, cache),
                                    ibllm_agent.GenerationParams(max_tokens=40, temperature=0.0))
            cases.append((mix, cache, ids + decoder.run()[0][1]))
    logits = teacher_forced(model, inputs, cases)
    del model
    gc.collect()
    return cases, logits


def teacher_forced(model, inputs, cases) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for mix, cache, seq in cases:
            out.append(model(torch.tensor(seq)[None], visual_query(model, inputs, mix, cache))[0, :-1].float())
    return torch.cat(out)


def agreement(got: torch.Tensor, expected: torch.Tensor, decided: float = 0.0) -> float:
    """Share of positions where the top-1 tokens agree, among those whose float32 top-1 margin is above
    `decided` x the standard deviation of their logits."""
    top2 = expected.topk(2, dim=-1).values
    keep = (top2[:, 0] - top2[:, 1]) >= decided * expected.std(dim=-1)
    return (got.argmax(-1) == expected.argmax(-1))[keep].float().mean().item()


def test_merged_and_fused_float32_gives_the_reference_answers(parity_dir, inputs, parity_expected):
    model = load(parity_dir, dtype="float32", fuse=True)
    layer = model.llama.layers[0]
    assert layer.attention.wqkv is not None and layer.feed_forward.w13 is not None and not layer.attention.w_lora
    cache = parity_expected["meta"]["cache"]
    for case in parity_expected["generate"]:
        attached = model.visual_cache
        model.visual_cache = attached if case["knn"] else None
        mix = {k: [inputs[branch], w] for k, (branch, w) in case["inputs"].items()}
        text = model.generate(mix, [case["prompt"]], max_gen_len=case["max_gen_len"], temperature=0.0, **cache)[0]
        model.visual_cache = attached
        assert text == case["text"], case["name"]


def test_quantised_agreement_with_float32(parity_dir, inputs, reference):
    cases, expected = reference
    assert len(expected) >= 500
    measured = {}
    for name, options in {"bf16": dict(dtype="bfloat16"), "int8": dict(dtype="bfloat16", quantize="int8"),
                          "int4": dict(dtype="bfloat16", quantize="int4")}.items():
        model = load(parity_dir, **options)
        got = teacher_forced(model, inputs, cases)
        measured[name] = (agreement(got, expected), agreement(got, expected, decided=0.25))
        del model, got
        gc.collect()
    print(f"teacher-forced top-1 agreement with float32 over {len(expected)} positions (all, decided):", measured)
    bf16, int8, int4 = measured["bf16"], measured["int8"], measured["int4"]
    assert int8[0] >= bf16[0] - 0.01  # int8 weights cost no more than bfloat16 rounding
    assert int8[1] >= 0.99 and int4[1] >= 0.80
    assert int4[0] >= 0.50
