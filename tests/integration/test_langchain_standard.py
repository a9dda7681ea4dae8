"""The langchain-tests standard suites for the chat model, the embeddings and every perception tool.

Capability flags are honest: no tool calling or structured output (those tests skip with the
suite's reason); the image/audio input flags stay off because the standard multimodal tests
download their media from the internet - tests/integration/test_chat_multimodal.py and
tests/unit/test_chat_models.py send the same block shapes with real local files.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import uuid
from pathlib import Path

import chromadb
import torch
from langchain_media import make_media
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    ToolsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests, ToolsUnitTests

from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.model_pool import shared_model
from ibllm_agent.tools import get_tools

MODEL = "toy"
"""The embedded toy model (integration) - the unit suites use it too: loading is pooled, so it loads once."""


# --- chat model --------------------------------------------------------------------------------------


class TestChatImageBindLLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatImageBindLLM

    @property
    def chat_model_params(self):
        return {"model": MODEL}

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per object; switch models by building another object


class TestChatImageBindLLMIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self):
        return ChatImageBindLLM

    @property
    def chat_model_params(self):
        return {"model": MODEL, "max_tokens": 24}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # the standard test fetches its PNG from the internet; see test_chat_multimodal.py

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # the standard test fetches its WAV from the internet; see test_chat_multimodal.py


# --- embeddings ----------------------------------------------------------------------------------------


class TestImageBindEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self):
        return ImageBindEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": MODEL}


class TestImageBindEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self):
        return ImageBindEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": MODEL}


# --- tools: one unit + one integration class per tool ------------------------------------------------


@functools.cache
def _tools() -> dict:
    """All seven tools over real media files in a temporary root (with a FAISS cache and a Chroma collection)."""
    root = Path(tempfile.mkdtemp(prefix="ibllm-std-tools-"))
    atexit.register(shutil.rmtree, root, True)
    media = make_media(root)
    emb = ImageBindEmbeddings(model=shared_model(MODEL))
    names = ["image", "image2", "video"]
    vectors = torch.tensor(emb.embed_media([str(media[n]) for n in names])).numpy()
    cache = FaissCache.from_vectors(vectors, ids=names, metadatas=[{"caption": n} for n in names])
    client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
    collection = client.create_collection(f"std{uuid.uuid4().hex[:8]}", embedding_function=None,
                                          configuration={"hnsw": {"space": "cosine"}})
    collection.add(ids=names, embeddings=vectors, uris=[str(media[n]) for n in names])
    return {t.name: t for t in get_tools(MODEL, roots=[root], cache=cache, collection=collection, max_tokens=16)}


EXAMPLES = {
    "describe_media": {"path": "tone.wav", "question": "What do you hear?"},
    "embed_media": {"path": "red_circle.png"},
    "embedding_arithmetic": {"expression": '0.6*audio:tone.wav + image:red_circle.png - 0.3*text:"night"'},
    "describe_embedding": {"handle": "0.5*image:red_circle.png + 0.5*point:cloud.ply"},
    "retrieve_from_cache": {"query": "video:clip.mp4", "k": 2},
    "search_collection": {"query": 'text:"a red circle"', "k": 2},
    "classify_media": {"target": "blue_square.png", "labels": ["a red circle", "a blue square"]},
}


def _suite(base, tool_name: str):
    class Suite(base):
        @property
        def tool_constructor(self):
            return _tools()[tool_name]

        @property
        def tool_invoke_params_example(self):
            return dict(EXAMPLES[tool_name])

    return Suite


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


for _name in EXAMPLES:
    for _base, _kind in ((ToolsUnitTests, "Unit"), (ToolsIntegrationTests, "Integration")):
        _cls = _suite(_base, _name)
        _cls.__name__ = _cls.__qualname__ = f"Test{_camel(_name)}Tool{_kind}"
        globals()[_cls.__name__] = _cls
del _name, _base, _kind, _cls
