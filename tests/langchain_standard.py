"""What the langchain-tests standard suites share (tests/unit/test_langchain_standard_unit.py and
tests/integration/test_langchain_standard.py): the model they use, honest flags, and the perception tools
over real media files."""

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

from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.model_pool import shared_model
from ibllm_agent.perception_tools import get_tools

MODEL = "toy"
"""The embedded toy model (loading is pooled: the unit and integration suites share one copy)."""

NOT_ACCEPTED = ("max_retries", "api_key")
"""Standard constructor arguments a local model would only ignore: it has nothing transient to retry and no
key to send, so ChatImageBindLLM refuses them (a caller must not believe they took effect)."""


class ChatSuite:
    """What both chat-model suites say about ChatImageBindLLM."""

    @property
    def chat_model_class(self):
        return ChatImageBindLLM

    @property
    def standard_chat_model_params(self):
        return {k: v for k, v in super().standard_chat_model_params.items() if k not in NOT_ACCEPTED}

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per object; switch models by building another object

    # grammar-constrained (ibllm_agent.structured): the form of a call or a JSON answer is guaranteed, its
    # values are the model's
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True


class EmbeddingsSuite:
    """What both embeddings suites say about ImageBindEmbeddings."""

    @property
    def embeddings_class(self):
        return ImageBindEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": MODEL}


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




def tool_suites(base, kind: str) -> dict[str, type]:
    """One `base` (ToolsUnitTests / ToolsIntegrationTests) subclass per tool, named Test<Tool>Tool<kind>."""
    out = {}
    for name in EXAMPLES:
        cls = _suite(base, name)
        cls.__name__ = cls.__qualname__ = f"Test{_camel(name)}Tool{kind}"
        out[cls.__name__] = cls
    return out
