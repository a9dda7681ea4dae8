"""`ImageBindEmbeddings`: one vector space for text, images, sounds, videos and point clouds.

    emb = ImageBindEmbeddings(model="toy")
    emb.embed_query("a dog barking")                  # ImageBind text encoder
    emb.embed_audio(["bark.wav"])                     # same space: compare with any other modality
    emb.embed_media(["scan.ply"])                     # detect the modality from the content
    Chroma(embedding_function=emb).add_images(["dog.png"])   # langchain-chroma calls embed_image

Vectors are L2-normalised (`normalize=True`), so inner product = cosine similarity across
modalities. With `base_url` (remote mode) an `ibllm serve` encodes (`POST /v1/embeddings`, the same
vectors); local files are read here and sent inline. Results are kept in an LRU cache keyed by the sha256 of the content (and the modality),
so re-embedding the same file or text is free. There is one `embed_<...>` method per medium of the
modality registry (`embed_image`, `embed_video`, `embed_audio`, `embed_point_cloud`), made from it.

`ImageBindEmbeddingFunction` does the same for a plain `chromadb` collection: documents are
embedded as text, numpy images (Chroma's `ImageLoader`) as images, and URIs loaded by
`ImageBindMediaLoader` as whatever medium they are.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from langchain_core.embeddings import Embeddings
from pydantic import PrivateAttr, model_validator

from ibllm_agent import modalities
from ibllm_agent.content_blocks import MediaPart
from ibllm_agent.model_pool import PooledModelFields
from ibllm_agent.remote import content_part
from ibllm_agent.sources import DEFAULT_MAX_BYTES, SourcePolicy

try:  # chromadb is a dependency, but keep the LangChain class importable without it
    from chromadb.api.types import EmbeddingFunction
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError:  # pragma: no cover
    EmbeddingFunction, register_embedding_function = object, (lambda cls: cls)


class ImageBindEmbeddings(PooledModelFields, Embeddings):
    """ImageBind embeddings (1024-d for the official model) for every modality in one space.

    Which model to load and where media may come from: see `PooledModelFields`.
    """

    normalize: bool = True
    """L2-normalise every vector (cosine = inner product across modalities)."""
    batch_size: int = 32
    """Inputs encoded per forward pass."""
    cache_entries: int = 4096
    """Vectors kept in the LRU cache (0 disables it)."""

    _cache: OrderedDict = PrivateAttr(default_factory=OrderedDict)
    _cache_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _normalised_remotely(self):
        if self.base_url is not None and not self.normalize:
            raise ValueError("the server returns L2-normalised vectors; normalize=False needs a local model")
        return self

    @property
    def dim(self) -> int:
        if self._remote is not None:
            return int(self._remote.get(f"/models/{self.model}")["ibllm"]["feature_dim"])
        return int(self._llm.feature_dim)

    # --- LangChain Embeddings -------------------------------------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Texts through the ImageBind text encoder."""
        return self._embed([("text", text, "<text>") for text in texts])

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    # --- other modalities (embed_image, embed_audio, ...: see _add_media_methods) ------------------

    def embed_media(self, sources: Sequence[str | os.PathLike | bytes | BinaryIO | MediaRef],
                    modality: str | None = None) -> list[list[float]]:
        """Paths (confined by `media_roots`), URLs (if allowed), raw bytes, binary file objects or `MediaRef`s,
        each read once and held to `max_media_bytes`; modality None = detect from the content."""
        items = []
        for source in sources:
            if isinstance(source, MediaRef):
                data, name = self._policy.read(source.data, source.name)
            else:
                data, name = self._policy.read(source)
            items.append((modality, data, name))
        return self._embed(items)

    def embed_tensor(self, sources: Sequence[str | os.PathLike | bytes | BinaryIO | MediaRef],
                     modality: str | None = None) -> torch.Tensor:
        """Like `embed_media`, as a float32 tensor (N, D)."""
        return torch.tensor(self.embed_media(sources, modality), dtype=torch.float32)

    # --- batching and the LRU cache ------------------------------------------------------------------

    def _embed(self, items: list[tuple[str | None, str | bytes, str]]) -> list[list[float]]:
        """(modality, text or media bytes, display name) -> vectors, encoding only what the cache lacks."""
        keys = [_content_key(modality, value) for modality, value, _ in items]
        out: list[list[float] | None] = [self._cached(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            vectors = self._encode([items[i] for i in chunk])
            for i, vector in zip(chunk, vectors.tolist()):
                out[i] = vector
                self._remember(keys[i], vector)
        return out

    def _encode(self, items: list[tuple[str | None, str | bytes, str]]) -> torch.Tensor:
        if self._remote is not None:
            inputs = [value if modality == "text" else content_part(MediaPart(value, modality, name))
                      for modality, value, name in items]
            body = self._remote.post("/embeddings", {"model": self.model, "input": inputs})
            return torch.tensor([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])
        from ibllm_agent.media import load_media, load_text

        loaded = [_load_text(value, load_text) if modality == "text" else load_media(value, modality, name=name)
                  for modality, value, name in items]
        with self._llm.card.lock:
            vectors = self._llm.encode(loaded)  # (N, D) float32
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def _cached(self, key: tuple) -> list[float] | None:
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def _remember(self, key: tuple, vector: list[float]) -> None:
        if self.cache_entries <= 0:
            return
        with self._cache_lock:
            self._cache[key] = vector
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)


def _add_media_methods(cls: type) -> None:
    """`embed_<medium>(uris)` for every medium of the registry (langchain-chroma calls `embed_image`)."""
    for modality in (modalities.get(name) for name in modalities.MEDIA):
        def method(self, uris: list[str], _modality: str = modality.name) -> list[list[float]]:
            return self.embed_media(uris, _modality)

        method.__name__ = method.__qualname__ = modality.embed_method
        method.__doc__ = f"Embed {modality.noun.split(' ', 1)[1]} files by path (confined by `media_roots`)."
        setattr(cls, modality.embed_method, method)


_add_media_methods(ImageBindEmbeddings)


def _content_key(modality: str | None, value: str | bytes) -> tuple[str | None, str]:
    """(modality, sha256 of the content): the same bytes under another name hit the cache."""
    return modality, hashlib.sha256(value.encode("utf-8") if isinstance(value, str) else value).hexdigest()


def _load_text(text: str, load_text):
    """A text input; an empty text is ImageBind's start + end tokens (vector stores embed empty documents)."""
    if text.strip():
        return load_text(text)
    from ibllm_agent.imagebind.bpe import tokenize
    from ibllm_agent.media import MediaInput

    return MediaInput("text", tokenize([""])[0], "<text>", hashlib.sha256(b"").hexdigest(), "text/plain")


# --- chromadb -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRef:
    """A medium loaded by `ImageBindMediaLoader`: its bytes and display name."""

    data: bytes
    name: str


class ImageBindMediaLoader:
    """A chromadb data loader: URIs (confined local paths, read once) -> `MediaRef`s the embedding function
    encodes."""

    def __init__(self, roots: Sequence[str | os.PathLike] | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.policy = SourcePolicy(roots=tuple(roots) if roots is not None else None, max_bytes=max_bytes)

    def __call__(self, uris: Sequence[str | None]) -> list[MediaRef | None]:
        out = []
        for uri in uris:
            if uri is None:
                out.append(None)
                continue
            out.append(MediaRef(*self.policy.read(uri)))
        return out


@register_embedding_function
class ImageBindEmbeddingFunction(EmbeddingFunction):
    """A chromadb embedding function over `ImageBindEmbeddings`: text, numpy images and `MediaRef`s."""

    def __init__(self, embeddings: ImageBindEmbeddings | None = None, model: str = "toy"):
        self.embeddings = embeddings if embeddings is not None else ImageBindEmbeddings(model=model)

    def __call__(self, input):  # noqa: A002 (chromadb's parameter name)
        vectors: list[list[float] | None] = [None] * len(input)
        texts = [(i, x) for i, x in enumerate(input) if isinstance(x, str)]
        media = [(i, _to_media(x)) for i, x in enumerate(input) if not isinstance(x, str)]
        if texts:
            for (i, _), v in zip(texts, self.embeddings.embed_documents([t for _, t in texts])):
                vectors[i] = v
        if media:
            for (i, _), v in zip(media, self.embeddings.embed_media([b for _, b in media])):
                vectors[i] = v
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    @staticmethod
    def name() -> str:
        return "ibllm_imagebind"

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        model = self.embeddings.model
        return {"model": model if isinstance(model, str) else self.embeddings.model_name}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> ImageBindEmbeddingFunction:
        return ImageBindEmbeddingFunction(model=config.get("model", "toy"))


def _to_media(item: Any) -> MediaRef | bytes:
    """A chromadb input that is not a document: our `MediaRef`, raw bytes, or an HxWx3 image array."""
    if isinstance(item, MediaRef):
        return item
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(item, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"cannot embed a {type(item).__name__}; pass text, an image array or MediaRef")
