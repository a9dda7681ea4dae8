"""Quality gates of weight-only quantisation on the trained toy model (issue 16): teacher-forced top-1
agreement with float32 over >= 500 positions (int8 >= 99 %, int4 >= 95 %), and the toy evaluation's
answers within a point of float32. The toy is trained, so its logits have the margins a real model has;
the random parity fixtures do not (tests/parity/test_quant_parity.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import ibllm_agent
from ibllm_agent import pretrained, toy
from ibllm_agent.generation import format_prompt
from ibllm_agent.media import load_media
from ibllm_agent.train.toy_eval import HELD_OUT_SEED, evaluate

pytestmark = pytest.mark.skipif(not (pretrained.TOY_DIR / "toy.json").is_file(), reason="the toy model is not built")

GATES = {"int8": 0.99, "int4": 0.95}


@pytest.fixture(scope="module")
def reference():
    """The float32 toy, held-out features (pictures, sounds, 3D shapes) and its greedy answers to them."""
    model = ibllm_agent.load("toy")
    world = toy.ToyWorld(HELD_OUT_SEED)
    with tempfile.TemporaryDirectory() as folder:
        items = [load_media(world.write(name, modality, 0, Path(folder)).path, modality)
                 for modality in ("image", "audio", "point") for name in toy.CONCEPT_NAMES]
        features = model.encode(items)
    prompt = format_prompt(toy.EVAL_QUESTION)
    ids = model.tokenizer.encode(prompt, bos=True, eos=False)
    gens = model.generate_batch([prompt] * len(features), features, max_tokens=16, temperature=0.0,
                                visual_cache=False)
    sequences = [ids + g.token_ids for g in gens]
    return model, features, sequences, teacher_forced(model, features, sequences)


def teacher_forced(model, features, sequences) -> torch.Tensor:
    """Next-token logits at every position of every sequence, [positions, vocab]."""
    out = []
    with torch.inference_mode():
        for feature, seq in zip(features, sequences):
            visual_query, _ = model.visual_query(feature, False)
            out.append(model(torch.tensor(seq)[None], visual_query)[0, :-1].float())
    return torch.cat(out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_teacher_forced_top1_agreement_with_float32(reference, scheme, dtype):
    _, features, sequences, expected = reference
    model = ibllm_agent.load("toy", quantize=scheme, dtype=dtype)
    assert model.card.quantize == scheme
    got = teacher_forced(model, features, sequences)
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert len(expected) >= 500
    assert agreement >= GATES[scheme], f"{scheme}/{dtype}: {agreement:.4f} over {len(expected)} positions"


@pytest.mark.slow
def test_toy_evaluation_within_a_point_of_float32(reference):
    """The answers of tools/eval_toy.py's table (every medium, cache off), quantised vs float32: at most one
    answer (or a point, on larger samples) apart. The full table: `python tools/eval_toy.py --quantize int4`."""
    base = evaluate(reference[0], per_concept=3, video_per_concept=1, mixture_pairs=2)
    for scheme in ("int8", "int4"):
        report = evaluate(ibllm_agent.load("toy", quantize=scheme), per_concept=3, video_per_concept=1,
                          mixture_pairs=2)
        for modality, r in report.results.items():
            b = base.results[modality]
            # answers apart, counted (1/42 * 42 is 1.0000000000000002 in floats)
            assert round(abs(r.accuracy - b.accuracy) * r.n) <= max(1, 0.01 * r.n), (scheme, modality, r.accuracy,
                                                                                b.accuracy)
