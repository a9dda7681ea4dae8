"""ImageBind-LLM against the reference's outputs on the official-format parity fixtures.

The fixture model (LLaMA dim 4096, 2 layers, full-width bind network; 3.4 GB of files) is loaded
once per module through `ibllm_agent.load`, exactly as a user loads the official files.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

import ibllm_agent

pytestmark = [pytest.mark.parity, pytest.mark.slow]


def close(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max(1, max |expected|), element-wise (shapes may differ: the cache quirk)."""
    assert got.numel() == expected.numel(), (tuple(got.shape), tuple(expected.shape))
    diff = (got.detach().float().cpu().flatten() - expected.flatten()).abs().max().item()
    return diff / max(1.0, expected.abs().max().item())


@pytest.fixture(scope="module")
def model(parity_dir):
    # tools/gpu_check.py runs this module on a GPU: float32 there, the same tolerances (and once more
    # with cuDNN's TF32 convolutions, PyTorch's default on such GPUs, turned off)
    if os.environ.get("IBLLM_TEST_NO_TF32") == "1":
        torch.backends.cudnn.allow_tf32 = False
    return ibllm_agent.load(str(parity_dir / "adapter.pth"), str(parity_dir / "llama"),
                            imagebind_ckpt=str(parity_dir / "imagebind.pth"), knn=True,
                            knn_index=str(parity_dir / "knn.index"),
                            device=os.environ.get("IBLLM_TEST_DEVICE", "cpu"), dtype="float32")


@pytest.fixture(scope="module")
def inputs(parity_dir):
    return torch.load(parity_dir / "inputs.pt", map_location="cpu", weights_only=True)


@contextlib.contextmanager
def knn(model, on: bool):
    """The reference's knn switch: the model uses its cache while one is attached."""
    attached = model.visual_cache
    model.visual_cache = attached if on else None
    try:
        yield
    finally:
        model.visual_cache = attached


def mixture(spec, inputs):
    return {modality: [inputs[key], weight] for modality, (key, weight) in spec.items()}


def test_loaded_model_matches_the_fixture_sizes(model, parity_expected):
    meta = parity_expected["meta"]
    assert model.query_layer == meta["query_layer"] == 2
    assert model.llama.vocab_size == meta["vocab"] == 800
    assert model.llama.params.dim == 4096 and model.llama.n_layers == 2
    assert model.visual_cache is not None and len(model.visual_cache) == 2000
    assert model.dtype == torch.float32


def test_prompts_and_token_ids(model, parity_expected):
    logits = parity_expected["logits"]
    assert ibllm_agent.format_prompt(logits["instruction"], logits["input"]) == logits["prompt"]
    assert model.tokenizer.encode(logits["prompt"], bos=True, eos=False) == logits["tokens"]
    for case in parity_expected["generate"]:
        assert ibllm_agent.format_prompt(case["instruction"], case["input"]) == case["prompt"]
        assert model.tokenizer.encode(case["prompt"], bos=True, eos=False) == case["prompt_tokens"]
        assert model.tokenizer.decode(case["token_ids"]) == case["text"]


@pytest.mark.parametrize("case", ["image", "audio", "image0.5+audio0.5", "point", "video", "text"])
@pytest.mark.parametrize("cache_on", [0, 1])
def test_forward_visual(model, inputs, parity_expected, case, cache_on):
    entry = parity_expected["bind"][f"{case}|knn={cache_on}"]
    cache = parity_expected["meta"]["cache"]
    with knn(model, bool(entry["knn"])):
        got = model.forward_visual(mixture(entry["inputs"], inputs), cache["cache_size"], cache["cache_t"],
                                   cache["cache_weight"])
    assert got.shape == (1, 1, 4096)  # the reference's cache-on [1, 1, 1, 4096] is its broadcast quirk
    assert close(got, entry["value"]) <= 1e-4


def test_forward_inference_logits(model, inputs, parity_expected):
    entry = parity_expected["logits"]
    with knn(model, entry["knn"]):
        visual = model.forward_visual(mixture(entry["inputs"], inputs))
    got = model.forward_inference(visual, torch.tensor(entry["tokens"])[None], entry["start_pos"])
    assert got.dtype == torch.float32 and got.shape == entry["value"].shape == (1, 800)
    assert close(got, entry["value"]) <= 1e-4


@pytest.mark.parametrize("index", range(4))
def test_greedy_generate(model, inputs, parity_expected, index):
    case = parity_expected["generate"][index]
    cache = parity_expected["meta"]["cache"]
    with knn(model, case["knn"]):
        text = model.generate(mixture(case["inputs"], inputs), [case["prompt"]], max_gen_len=case["max_gen_len"],
                              temperature=case["temperature"], top_p=0.75, **cache)[0]
    assert text == case["text"]


def test_generate_batch_gives_the_ids_and_a_stream_that_matches(model, inputs, parity_expected):
    case = parity_expected["generate"][0]
    assert not case["knn"]
    feature = model.fuse(model.image_bind_forward({"vision": inputs["vision"]})["vision"], [1.0])
    [gen] = model.generate_batch([case["prompt"]], feature, max_tokens=case["max_gen_len"], temperature=0.0,
                                 visual_cache=False)
    assert gen.token_ids == case["token_ids"] and gen.text == case["text"]
    assert gen.prompt_tokens == len(case["prompt_tokens"]) and gen.finish_reason == "length"
