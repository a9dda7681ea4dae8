"""ImageBindEmbeddings and the chromadb embedding function on the tiny model with real media files."""

from __future__ import annotations

import uuid

import chromadb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from langchain_media import make_media

from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.embeddings import ImageBindEmbeddingFunction, ImageBindEmbeddings, ImageBindMediaLoader
from ibllm_agent.media import load_media, load_text
from ibllm_agent.sources import SourceError


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def emb():
    return ImageBindEmbeddings(model="tiny")


def reference(llm, items) -> list[list[float]]:
    return F.normalize(llm.encode(items), dim=-1).tolist()


def test_text_goes_through_the_imagebind_text_encoder(emb):
    vectors = emb.embed_documents(["a red circle", "a tone"])
    assert len(vectors) == 2 and len(vectors[0]) == emb.llm.feature_dim == emb.dim
    np.testing.assert_allclose(vectors, reference(emb.llm, [load_text("a red circle"), load_text("a tone")]),
                               atol=1e-5)
    assert np.linalg.norm(emb.embed_query("a red circle")) == pytest.approx(1.0, abs=1e-5)
    assert len(emb.embed_query("")) == emb.dim  # vector stores embed empty documents too


@pytest.mark.parametrize("method, key, modality", [
    ("embed_image", "image", "image"), ("embed_audio", "audio", "audio"),
    ("embed_video", "video", "video"), ("embed_point_cloud", "point", "point"),
])
def test_each_modality_in_the_same_space(emb, media, method, key, modality):
    (vector,) = getattr(emb, method)([str(media[key])])
    np.testing.assert_allclose(vector, reference(emb.llm, [load_media(media[key], modality)])[0], atol=1e-5)


def test_batched_mixed_inputs_and_bytes(emb, media):
    batch = emb.embed_media([str(media["image"]), media["image2"].read_bytes(), str(media["audio"])])
    singles = [emb.embed_media([s])[0] for s in (str(media["image"]), str(media["image2"]), str(media["audio"]))]
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert emb.embed_tensor([str(media["image"])]).shape == (1, emb.dim)


def test_lru_cache_by_content(emb, media, tmp_path, monkeypatch):
    fresh = ImageBindEmbeddings(model=emb.llm, cache_entries=2)
    calls = []
    real_encode = fresh.llm.encode
    monkeypatch.setattr(fresh.llm, "encode", lambda items: calls.append(len(items)) or real_encode(items))
    first = fresh.embed_image([str(media["image"])])
    copy = tmp_path / "same-bytes-other-name.png"
    copy.write_bytes(media["image"].read_bytes())
    assert fresh.embed_image([str(copy)]) == first and calls == [1]
    fresh.embed_documents(["a", "b"])  # evicts the image (2 entries)
    fresh.embed_image([str(media["image"])])
    assert calls == [1, 2, 1]


def test_confined_roots_and_urls(media, tmp_path):
    confined = ImageBindEmbeddings(model="tiny", media_roots=[str(tmp_path)])
    with pytest.raises(SourceError, match="outside the allowed media folders"):
        confined.embed_image([str(media["image"])])
    with pytest.raises(SourceError, match="URLs are disabled"):
        confined.embed_image(["https://example.com/dog.png"])


def test_shares_the_chat_models_weights(emb):
    assert ChatImageBindLLM(model="tiny").llm is emb.llm


def test_chromadb_embedding_function_for_any_modality(emb, media):
    client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
    ef = ImageBindEmbeddingFunction(emb)
    col = client.create_collection(f"c{uuid.uuid4().hex[:8]}", embedding_function=ef,
                                   data_loader=ImageBindMediaLoader(roots=[media["image"].parent]),
                                   configuration={"hnsw": {"space": "cosine"}})
    names = ["image", "audio", "video", "point"]
    col.add(ids=names, uris=[str(media[n]) for n in names])
    col.add(ids=["doc"], documents=["a red circle"])
    stored = col.get(ids=["audio", "doc"], include=["embeddings"])["embeddings"]
    np.testing.assert_allclose(stored[0], emb.embed_audio([str(media["audio"])])[0], atol=1e-5)
    np.testing.assert_allclose(stored[1], emb.embed_query("a red circle"), atol=1e-5)
    hits = col.query(query_uris=[str(media["video"])], n_results=1)["ids"][0]
    assert hits == ["video"]
    assert ef.get_config() == {"model": "tiny"} and ef.name() == "ibllm_imagebind"


def test_chromadb_numpy_images(emb, media):
    from PIL import Image

    ef = ImageBindEmbeddingFunction(emb)
    array = np.array(Image.open(media["image"]))
    (vector,) = ef([array])
    assert torch.nn.functional.cosine_similarity(torch.tensor(vector),
                                                 torch.tensor(emb.embed_image([str(media["image"])])[0]),
                                                 dim=0) > 0.999


def test_langchain_chroma_add_images_and_search_by_image(emb, media):
    from langchain_chroma import Chroma

    store = Chroma(collection_name=f"lc{uuid.uuid4().hex[:8]}", embedding_function=emb,
                   client=chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False)),
                   collection_configuration={"hnsw": {"space": "cosine"}})
    store.add_images([str(media["image"]), str(media["image2"])], ids=["red", "blue"])
    (hit,) = store.similarity_search_by_image(str(media["image2"]), k=1)
    assert hit.id == "blue"


def test_unknown_options_are_refused_not_ignored():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        ImageBindEmbeddings(model="tiny", normalise=False)  # a misspelling of `normalize`
