"""ImageBind embeddings against the upstream reference outputs (../shared/parity/expected.pt)."""

from __future__ import annotations

import json

import pytest
import torch

from ibllm_agent.imagebind import ImageBindArgs, ImageBindModel, read_imagebind_config

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def imagebind(parity_dir) -> ImageBindModel:
    sd = torch.load(parity_dir / "imagebind.pth", map_location="cpu", weights_only=True)
    model = ImageBindModel(ImageBindArgs.from_state_dict(sd))
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def inputs(parity_dir) -> dict[str, torch.Tensor]:
    return torch.load(parity_dir / "inputs.pt", map_location="cpu", weights_only=True)


def test_inferred_sizes_match_the_fixture_config(parity_dir):
    sd = torch.load(parity_dir / "imagebind.pth", map_location="cpu", weights_only=True)
    assert len(sd) == 334
    args = ImageBindArgs.from_state_dict(sd)
    config = json.loads((parity_dir / "imagebind_config.json").read_text())["kwargs"]
    for key, value in config.items():
        assert getattr(args, key) == (tuple(value) if isinstance(value, list) else value), key
    assert args.modalities == ("vision", "text", "audio", "depth", "thermal", "imu", "point")
    # The config file as overrides agrees with the shapes.
    assert ImageBindArgs.from_state_dict(sd, read_imagebind_config(parity_dir / "imagebind_config.json")) == args


@pytest.mark.parametrize("name", ["vision", "text", "audio", "video", "point"])
def test_embeddings_match_the_reference(imagebind, inputs, parity_expected, name):
    entry = parity_expected["embeddings"][name]
    with torch.no_grad():
        got = imagebind({entry["modality"]: inputs[entry["input"]]})[entry["modality"]]
    expected = entry["value"]
    assert got.shape == expected.shape
    err = (got - expected).abs().max().item()
    assert err <= 1e-4 * max(1.0, expected.abs().max().item()), f"{name}: max abs error {err}"


# --- depth, thermal and IMU: the trunks the LLM demo never feeds (../shared/parity/README.md, expected_extra.pt)


@pytest.fixture(scope="module")
def expected_extra(shared_dir, parity_dir):
    extra = torch.load(shared_dir / "parity" / "expected_extra.pt", map_location="cpu", weights_only=True)
    assert extra["meta"]["fixtures_digest"] == json.loads((parity_dir / "fixtures.json").read_text())["digest"]
    return extra


@pytest.mark.parametrize("modality", ["depth", "thermal", "imu"])
def test_sense_trunks_match_the_reference(imagebind, expected_extra, modality):
    with torch.no_grad():
        got = imagebind({modality: expected_extra["inputs"][modality]})[modality]
    expected = expected_extra["image_bind"][modality]
    assert got.shape == expected.shape == (2, 1024)
    err = (got - expected).abs().max().item()
    assert err <= 1e-4 * max(1.0, expected.abs().max().item()), f"{modality}: max abs error {err}"
    # the reference's post-processing scales: depth x 5, thermal x 10, imu x 5
    assert torch.allclose(got.norm(dim=-1), torch.full((2,), {"depth": 5.0, "thermal": 10.0, "imu": 5.0}[modality]))


@pytest.mark.parametrize("modality", ["depth", "thermal", "imu"])
def test_our_loaders_feed_the_reference_shapes(imagebind, expected_extra, modality, tmp_path):
    """A real file of each sense, through its loader, is what the trunk takes (the shapes of expected_extra's
    inputs), and the official-size trunk encodes it."""
    from langchain_media import make_media

    from ibllm_agent.media import load_media

    item = load_media(make_media(tmp_path)[modality], modality)
    assert item.tensor.shape == expected_extra["inputs"][modality].shape[1:]
    with torch.no_grad():
        out = imagebind({modality: item.batched()})[modality]
    assert out.shape == (1, 1024) and torch.isfinite(out).all()
