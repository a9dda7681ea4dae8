"""The image-generation conditioning vector against the reference's `image_generate` (expected_generate.pt).

Five cases on the parity fixtures: image with the visual cache off and on, audio 0.6 + point 0.4 off
and on, video on. The reference's vector is [1024] with the cache off and [1, 1024] with it on; ours
is always [B, 1024] (compared element-wise, as the README of the fixtures says).
"""

from __future__ import annotations

import pytest
import torch

import ibllm_agent
from ibllm_agent.image_generation import POINT_SCALE
from ibllm_agent.params import VisualCacheParams

pytestmark = [pytest.mark.parity, pytest.mark.slow]


@pytest.fixture(scope="module")
def expected(shared_dir):
    path = shared_dir / "parity" / "expected_generate.pt"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(parity_dir):
    return ibllm_agent.load(str(parity_dir / "adapter.pth"), str(parity_dir / "llama"),
                            imagebind_ckpt=str(parity_dir / "imagebind.pth"), knn=True,
                            knn_index=str(parity_dir / "knn.index"), dtype="float32")


@pytest.fixture(scope="module")
def inputs(parity_dir):
    return torch.load(parity_dir / "inputs.pt", map_location="cpu", weights_only=True)


def close(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.numel() == expected.numel(), (tuple(got.shape), tuple(expected.shape))
    diff = (got.float().flatten() - expected.float().flatten()).abs().max().item()
    return diff / max(1.0, expected.abs().max().item())


def test_expected_file_matches_the_fixtures(expected, parity_dir):
    import json

    digest = json.loads((parity_dir / "fixtures.json").read_text())["digest"]
    assert expected["meta"]["fixtures_digest"] == digest
    assert expected["meta"]["point_scale"] == POINT_SCALE


CASES = ["image|knn=0", "image|knn=1", "audio0.6+point0.4|knn=0", "audio0.6+point0.4|knn=1", "video|knn=1"]


@pytest.mark.parametrize("case", CASES)
def test_image_embedding_matches_the_reference(model, inputs, expected, case):
    spec = expected["generate_image_embeds"][case]
    cache = VisualCacheParams(enabled=bool(spec["knn"]), **{k.removeprefix("cache_"): v
                                                              for k, v in expected["meta"]["cache"].items()})
    mixture = {key: [inputs[name], weight] for key, (name, weight) in spec["inputs"].items()}
    got = model.image_embedding(mixture, cache)
    assert got.shape == (1, 1024)
    err = close(got, spec["image_embeds"])
    print(f"{case}: relative max error {err:.2e}, norm {got.norm():.4f}")
    assert err <= 1e-4


def test_media_input_path_gives_the_same_vector(model, inputs, expected):
    """(MediaInput, weight) pairs, as the CLI and the app pass them, are the same mixture."""
    from ibllm_agent.media import MediaInput

    spec = expected["generate_image_embeds"]["audio0.6+point0.4|knn=1"]
    items = [(MediaInput("audio", inputs["audio"][0], "a", "", ""), 0.6),
             (MediaInput("point", inputs["point"][0], "p", "", ""), 0.4)]
    got = model.image_embedding(items, VisualCacheParams(enabled=True))
    assert close(got, spec["image_embeds"]) <= 1e-4


def test_forward_visual_is_unchanged_by_the_prenorm_path(model, inputs, parity_expected):
    """The answer path still reads the post-processed embeddings (fusion.fuse), not the prenorm ones."""
    value = parity_expected["bind"]["image|knn=0"]["value"]
    model.visual_cache, cache = None, model.visual_cache
    try:
        got = model.forward_visual({"Image": [inputs["vision"], 1]})
    finally:
        model.visual_cache = cache
    assert close(got, value) <= 1e-4
