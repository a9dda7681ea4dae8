"""FaissCache: the official index as is, caches built from vectors, approximate options, bad input."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from ibllm_agent.cache import CacheError, retrieve_and_blend
from ibllm_agent.cache.faiss import FaissCache, FaissOptions, sidecar_path


def unit_vectors(n: int, dim: int = 1024, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def official_like(tmp_path):
    """A bare IndexFlatIP file like the official knn.index (no sidecar): 300 unit vectors."""
    x = unit_vectors(300)
    index = faiss.IndexFlatIP(1024)
    index.add(x)
    path = tmp_path / "knn.index"
    faiss.write_index(index, str(path))
    return path, x


def hand_topk(x: np.ndarray, q: np.ndarray, k: int):
    sims = q.astype(np.float64) @ x.astype(np.float64).T
    order = np.argsort(-sims, axis=1)[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("mmap", [True, False])
def test_load_official_layout_ids_are_positions(official_like, mmap):
    path, x = official_like
    cache = FaissCache.load(path, mmap=mmap)
    assert len(cache) == 300 and cache.dim == 1024 and cache.read_only == mmap
    q = unit_vectors(3, seed=1) * 0.7  # un-normalised, like the upstream weighted sum
    res = cache.search(q, 10)
    order, sims = hand_topk(x, q, 10)
    assert res.ids == [[str(i) for i in row] for row in order]
    np.testing.assert_allclose(res.scores, sims, atol=1e-5)
    np.testing.assert_array_equal(res.vectors, x[order])
    assert res.metadatas == [[{}] * 10] * 3


def test_blend_matches_hand_formula(official_like):
    path, x = official_like
    cache = FaissCache.load(path)
    q = torch.from_numpy(unit_vectors(1, seed=2)[0] * 0.999999)[None]
    out, neighbors = retrieve_and_blend(cache, q, cache_size=10, cache_t=20.0, cache_weight=0.5)
    order, sims = hand_topk(x, q.numpy(), 10)
    w = np.exp(20 * (sims[0] - sims[0].max()))
    w /= w.sum()
    mix = (w[:, None] * x[order[0]].astype(np.float64)).sum(0)
    mix /= np.linalg.norm(mix)
    expect = 0.5 * q.numpy()[0].astype(np.float64) + 0.5 * mix
    expect /= np.linalg.norm(expect)
    np.testing.assert_allclose(out[0].numpy(), expect, atol=1e-6)
    assert [n.id for n in neighbors[0]] == [str(i) for i in order[0]]
    np.testing.assert_allclose([n.weight for n in neighbors[0]], w, atol=1e-6)


def test_k_larger_than_cache_is_clamped():
    x = unit_vectors(4)
    cache = FaissCache.from_vectors(x)
    res = cache.search(x[:1], 10)
    assert res.scores.shape == (1, 4) and res.vectors.shape == (1, 4, 1024)
    assert res.ids[0][0] == "0"
    out, neighbors = retrieve_and_blend(cache, torch.from_numpy(x[:2]), cache_size=10)
    assert out.shape == (2, 1024) and len(neighbors[1]) == 4


def test_ids_metadata_sidecar_roundtrip_and_idempotent_add(tmp_path):
    x = unit_vectors(20)
    ids = [f"item{i}" for i in range(20)]
    metas = [{"uri": f"/data/{i}.png", "modality": "image"} for i in range(20)]
    cache = FaissCache.from_vectors(x[:15], ids=ids[:15], metadatas=metas[:15])
    assert cache.add(x[10:], ids=ids[10:], metadatas=metas[10:]) == 5  # 10..14 already present
    assert cache.add(x[:3], ids=ids[:3]) == 0
    path = cache.save(tmp_path / "built.index")
    assert sidecar_path(path).is_file()
    again = FaissCache.load(path, mmap=False)
    assert len(again) == 20
    res = again.search(x[[7, 19]], 1)
    assert res.ids == [["item7"], ["item19"]]
    assert res.metadatas[1][0] == {"uri": "/data/19.png", "modality": "image"}
    batches = list(again.iter_batches(8))
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), x)
    assert batches[2][0][-1] == "item19"


def test_adding_without_saving_leaves_files_untouched(tmp_path):
    x = unit_vectors(10)
    path = FaissCache.from_vectors(x[:5], ids=list("abcde")).save(tmp_path / "c.index")
    before = (path.read_bytes(), sidecar_path(path).read_bytes())
    cache = FaissCache.load(path, mmap=False)
    cache.add(x[5:], ids=list("fghij"))
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before
    assert len(FaissCache.load(path)) == 5


def test_mmapped_cache_is_read_only(official_like):
    cache = FaissCache.load(official_like[0], mmap=True)
    with pytest.raises(CacheError, match="read-only"):
        cache.add(unit_vectors(1))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_find_the_stored_vectors(tmp_path, kind):
    x = unit_vectors(2000, dim=64)
    cache = FaissCache.from_vectors(x, options=FaissOptions(kind=kind, nlist=16, nprobe=16))
    path = cache.save(tmp_path / f"{kind}.index")
    cache = FaissCache.load(path, dim=64)
    res = cache.search(x[:50], 5)
    assert [row[0] for row in res.ids] == [str(i) for i in range(50)]
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(res.vectors[:, 0], x[:50])
    cache.set_search_params(ef_search=16, nprobe=1)


def test_not_an_index(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a faiss index\n" * 10)
    with pytest.raises(CacheError, match="not a readable FAISS index"):
        FaissCache.load(bad)
    truncated = tmp_path / "trunc.index"
    index = faiss.IndexFlatIP(1024)
    index.add(unit_vectors(50))
    faiss.write_index(index, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CacheError, match="not a readable FAISS index"):
        FaissCache.load(truncated)
    with pytest.raises(CacheError, match="does not exist"):
        FaissCache.load(tmp_path / "missing.index")


def test_wrong_dimension_and_metric(tmp_path):
    path = tmp_path / "small.index"
    index = faiss.IndexFlatIP(512)
    index.add(unit_vectors(5, dim=512))
    faiss.write_index(index, str(path))
    with pytest.raises(CacheError, match="dimension 512, but the model expects 1024"):
        FaissCache.load(path)
    assert len(FaissCache.load(path, dim=None)) == 5
    l2 = faiss.IndexFlatL2(1024)
    faiss.write_index(l2, str(tmp_path / "l2.index"))
    with pytest.raises(CacheError, match="inner product"):
        FaissCache.load(tmp_path / "l2.index")
    cache = FaissCache.from_vectors(unit_vectors(5))
    with pytest.raises(CacheError, match=r"shape \(batch, 1024\)"):
        cache.search(unit_vectors(1, dim=512), 3)
    with pytest.raises(CacheError, match=r"shape \(n, 1024\)"):
        cache.add(unit_vectors(2, dim=512))


def test_empty_cache_and_bad_k():
    cache = FaissCache.create()
    with pytest.raises(CacheError, match="empty"):
        cache.search(unit_vectors(1), 10)
    cache.add(unit_vectors(3))
    with pytest.raises(CacheError, match="cache_size must be >= 1"):
        cache.search(unit_vectors(1), 0)
    with pytest.raises(CacheError, match="train_vectors"):
        FaissCache.create(options=FaissOptions(kind="ivf"))
    with pytest.raises(CacheError, match="unknown FAISS index kind"):
        FaissOptions(kind="lsh")


def test_sidecar_from_another_index_is_refused(tmp_path):
    x = unit_vectors(10)
    big = FaissCache.from_vectors(x, ids=[str(i) for i in range(10)]).save(tmp_path / "big.index")
    small = FaissCache.from_vectors(x[:3]).save(tmp_path / "small.index")
    sidecar_path(small).write_bytes(sidecar_path(big).read_bytes())
    with pytest.raises(CacheError, match="do not belong together"):
        FaissCache.load(small)
