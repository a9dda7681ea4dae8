"""ChromaCache on the embedded PersistentClient: storage, exact and HNSW search, bad input."""

from __future__ import annotations

import http.server
import threading
import time

import numpy as np
import pytest
import torch

from ibllm_agent.cache import CacheError, retrieve_and_blend
from ibllm_agent.cache.chroma import DIM_KEY, ChromaCache, ChromaHnsw, connect
from ibllm_agent.cache.faiss import FaissCache


def clustered(n: int, dim: int = 1024, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Unit vectors around a few centres (ImageBind-like, where HNSW is reliable)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def client(tmp_path):
    c = connect(tmp_path / "chroma")
    yield c
    c.clear_system_cache()


def test_collection_is_created_with_ip_space_and_dimension(client):
    cache = ChromaCache.open("visual", client=client)
    assert cache.space == "ip" and cache.collection.metadata[DIM_KEY] == 1024
    hnsw = cache.collection.configuration["hnsw"]
    assert (hnsw["max_neighbors"], hnsw["ef_construction"], hnsw["ef_search"]) == (12, 48, 128)
    default = ChromaCache.open("plain", client=client, hnsw=ChromaHnsw.preset("chroma"))
    assert default.collection.configuration["hnsw"]["ef_construction"] == 100
    fast = ChromaCache.open("quick", client=client, hnsw=ChromaHnsw.preset("fast"))
    assert fast.collection.configuration["hnsw"]["max_neighbors"] == 8
    with pytest.raises(CacheError, match="unknown HNSW preset"):
        ChromaHnsw.preset("fastest")


def test_add_in_batches_is_idempotent_and_keeps_metadata(client):
    x = clustered(30)
    cache = ChromaCache.open("visual", client=client, max_batch_size=7)
    ids = [f"h{i}" for i in range(30)]
    metas = [{"uri": f"/m/{i}.png", "modality": "image", "caption": None if i % 2 else f"thing {i}"}
             for i in range(30)]
    assert cache.add(x[:20], ids=ids[:20], metadatas=metas[:20]) == 20
    assert cache.add(x, ids=ids, metadatas=metas) == 10
    assert cache.add(np.concatenate([x[:3], x[:3]]), ids=ids[:3] * 2) == 0
    assert len(cache) == 30
    res = cache.search(x[[4, 5]], 1)
    assert res.ids == [["h4"], ["h5"]]
    assert res.metadatas[0][0] == {"uri": "/m/4.png", "modality": "image", "caption": "thing 4"}
    assert res.metadatas[1][0] == {"uri": "/m/5.png", "modality": "image"}  # None values are dropped
    assert cache.existing_ids(["h1", "nope", "h29"]) == {"h1", "h29"}
    docs = cache.collection.get(ids=["h4", "h5"], include=["documents"])
    assert dict(zip(docs["ids"], docs["documents"])) == {"h4": "thing 4", "h5": "/m/5.png"}
    assert cache.stats()["modalities"] == {"image": 30}


def test_exact_search_matches_faiss_flat(client):
    x = clustered(600)
    faiss_cache = FaissCache.from_vectors(x)
    cache = ChromaCache.open("visual", client=client, search="exact")
    cache.add(x, ids=[str(i) for i in range(600)])
    q = clustered(5, seed=9) * 0.8
    a, b = cache.search(q, 10), faiss_cache.search(q, 10)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    out_c, n_c = retrieve_and_blend(cache, torch.from_numpy(q))
    out_f, n_f = retrieve_and_blend(faiss_cache, torch.from_numpy(q))
    assert (out_c - out_f).abs().max() <= 1e-5
    assert [[n.id for n in row] for row in n_c] == [[n.id for n in row] for row in n_f]


def test_hnsw_search_returns_true_inner_products_in_order(client):
    """HNSW is approximate (and Chroma builds it on several threads): recall, not identity; but
    the scores handed to the blend are the exact inner products of what was found, best first."""
    x = clustered(600)
    cache = ChromaCache.open("visual", client=client, search="hnsw")
    cache.add(x, ids=[str(i) for i in range(600)])
    q = clustered(20, seed=9) * 0.8
    res = cache.search(q, 10)
    exact = FaissCache.from_vectors(x).search(q, 10)
    hits = sum(len(set(a) & set(b)) for a, b in zip(res.ids, exact.ids))
    assert hits / 200 >= 0.9
    for row_ids, scores, vectors, query in zip(res.ids, res.scores, res.vectors, q):
        np.testing.assert_array_equal(vectors, x[[int(i) for i in row_ids]])
        np.testing.assert_allclose(scores, vectors @ query, atol=1e-6)
        assert (np.diff(scores) <= 0).all()


def test_widened_hnsw_search_and_exact_snapshot_refresh(client):
    x = clustered(400)
    cache = ChromaCache.open("visual", client=client, search="hnsw", candidates=200)
    cache.add(x[:300], ids=[str(i) for i in range(300)])
    res = cache.search(x[:20], 5)
    assert [row[0] for row in res.ids] == [str(i) for i in range(20)]
    cache.search_mode = "exact"
    assert cache.search(x[350:351], 1).ids[0][0] != "350"
    cache.add(x[300:], ids=[str(i) for i in range(300, 400)])  # the snapshot is re-read
    assert cache.search(x[350:351], 1).ids[0][0] == "350"


def test_reopen_persists(tmp_path):
    x = clustered(50)
    client = connect(tmp_path / "db")
    ChromaCache.open("visual", client=client).add(x, ids=[f"v{i}" for i in range(50)])
    client.clear_system_cache()
    again = ChromaCache.open("visual", path=tmp_path / "db", create=False)
    assert len(again) == 50 and again.search(x[7:8], 1).ids == [["v7"]]
    again.client.clear_system_cache()


def test_k_larger_than_cache_and_empty_cache(client):
    cache = ChromaCache.open("visual", client=client)
    with pytest.raises(CacheError, match="empty"):
        cache.search(clustered(1), 10)
    cache.add(clustered(3))
    assert cache.search(clustered(1, seed=3), 10).vectors.shape == (1, 3, 1024)
    for mode in ("hnsw", "exact"):
        cache.search_mode = mode
        out, neighbors = retrieve_and_blend(cache, torch.from_numpy(clustered(2, seed=4)), cache_size=10)
        assert out.shape == (2, 1024) and [len(r) for r in neighbors] == [3, 3]


def test_wrong_dimension_collection(client):
    ChromaCache.open("small", client=client, dim=512).add(clustered(3, dim=512))
    with pytest.raises(CacheError, match="dimension 512, but the model expects 1024"):
        ChromaCache.open("small", client=client)
    # a collection made by someone else, without our metadata: the stored vectors tell
    client.create_collection("foreign", embedding_function=None).add(ids=["a"], embeddings=clustered(1, dim=8))
    with pytest.raises(CacheError, match="dimension 8"):
        ChromaCache.open("foreign", client=client)
    cache = ChromaCache.open("visual", client=client)
    with pytest.raises(CacheError, match=r"shape \(n, 1024\)"):
        cache.add(clustered(2, dim=512))
    with pytest.raises(CacheError, match="does not exist"):
        ChromaCache.open("missing", client=client, create=False)
    with pytest.raises(CacheError, match="unknown search mode"):
        ChromaCache.open("visual", client=client, search="fast")


def test_unreachable_server_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(CacheError, match="cannot reach the Chroma server at http://127.0.0.1:9"):
        ChromaCache.open("visual", url="http://127.0.0.1:9")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(CacheError, match="must look like http://host:port"):
        connect(url="ftp://example")


def test_a_server_that_is_not_chroma_is_refused():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(CacheError, match="does not answer as a Chroma server"):
            connect(url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
