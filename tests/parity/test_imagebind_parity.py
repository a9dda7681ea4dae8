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
