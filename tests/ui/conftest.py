"""Fixtures for the app's tests: toy-world media files and a config that points the app at a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ibllm_agent import modalities
from ibllm_agent.pretrained import TOY_DIR

ROOT = Path(__file__).resolve().parents[2]
TOY_READY = (TOY_DIR / "toy.json").is_file()

TOY_SEED = 2026
"""A world seed the toy model was not trained on (training uses seed 0)."""


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict[str, Path]:
    """One file per modality of the toy concept "dog", rendered from an unseen seed."""
    from ibllm_agent.toy import ToyWorld

    folder = tmp_path_factory.mktemp("toy-media")
    world = ToyWorld(TOY_SEED)
    return {m: Path(world.write("dog", m, 0, folder).path) for m in modalities.MEDIA}


@pytest.fixture
def app_config(tmp_path, monkeypatch) -> str:
    """Point the app at the toy model when it is built, else at the tiny random test model."""
    path = tmp_path / "ui.json"
    path.write_text(json.dumps({"model": {"name": "toy" if TOY_READY else "tiny"}}))
    monkeypatch.setenv("IBLLM_UI_CONFIG", str(path))
    return "toy" if TOY_READY else "tiny"


@pytest.fixture
def needs_toy() -> None:
    """Skip a test that checks what the toy model answers when the toy model is not built."""
    if not TOY_READY:
        pytest.skip("the toy model is not built (tools/build_toy_model.py)")
