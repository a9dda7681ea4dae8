"""The visual cache on the parity knn.index: FAISS, Chroma (exact) and the upstream formula by hand agree.

Queries are the reference's own fused features: ImageBind outputs of the parity fixtures from
expected.pt, each L2-normalised and weighted w / (sum(w) + 1e-6), summed and NOT re-normalised,
exactly what upstream hands to `index.search`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ibllm_agent.cache import retrieve_and_blend
from ibllm_agent.cache.chroma import ChromaCache, connect
from ibllm_agent.cache.faiss import FaissCache

pytestmark = pytest.mark.parity

MIXTURES = {"image": {"vision": 1.0}, "audio": {"audio": 1.0}, "image0.5+audio0.5": {"vision": 0.5, "audio": 0.5},
            "point": {"point": 1.0}, "video": {"video": 1.0}, "text": {"text": 1.0},
            "audio0.6+point0.4": {"audio": 0.6, "point": 0.4}}
CACHE = {"cache_size": 10, "cache_t": 20.0, "cache_weight": 0.5}


def upstream_query(embeddings: dict, mixture: dict) -> np.ndarray:
    total = sum(mixture.values())
    q = sum(embeddings[name]["value"][0].double() / embeddings[name]["value"][0].double().norm() * w / (total + 1e-6)
            for name, w in mixture.items())
    return q.float().numpy()  # (1024,)


def by_hand(stored: np.ndarray, q: np.ndarray, cache_size: int, cache_t: float, cache_weight: float):
    """The upstream cache formula in float64: top-k inner products, softmax(t*s) mix, two normalisations."""
    sims = stored.astype(np.float64) @ q.astype(np.float64)  # (N,)
    top = np.argsort(-sims)[:cache_size]
    w = np.exp(cache_t * (sims[top] - sims[top].max()))
    w /= w.sum()
    mix = w @ stored[top].astype(np.float64)
    mix /= np.linalg.norm(mix)
    out = (1 - cache_weight) * q.astype(np.float64) + cache_weight * mix
    return out / np.linalg.norm(out), top


@pytest.fixture(scope="module")
def caches(parity_dir, tmp_path_factory):
    faiss_cache = FaissCache.load(parity_dir / "knn.index")
    client = connect(tmp_path_factory.mktemp("chroma"))
    chroma = ChromaCache.open("knn", client=client, search="exact")
    for ids, vectors, metas in faiss_cache.iter_batches(client.get_max_batch_size()):
        chroma.add(vectors, ids=ids, metadatas=metas)
    yield faiss_cache, chroma
    client.clear_system_cache()


@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_faiss_chroma_and_hand_formula_agree(caches, parity_expected, mixture):
    faiss_cache, chroma = caches
    stored = faiss_cache.get_vectors(0, len(faiss_cache))
    q = upstream_query(parity_expected["embeddings"], MIXTURES[mixture])
    expect, top = by_hand(stored, q, **CACHE)
    query = torch.from_numpy(q)[None]  # (1, 1024)
    out_f, n_f = retrieve_and_blend(faiss_cache, query, **CACHE)
    out_c, n_c = retrieve_and_blend(chroma, query, **CACHE)
    assert [n.id for n in n_f[0]] == [n.id for n in n_c[0]] == [str(i) for i in top]
    assert (out_f - out_c).abs().max().item() <= 1e-5
    np.testing.assert_allclose(out_f[0].numpy(), expect, atol=1e-5)
    np.testing.assert_allclose(out_c[0].numpy(), expect, atol=1e-5)
    np.testing.assert_allclose([n.score for n in n_c[0]], [n.score for n in n_f[0]], atol=1e-6)
    assert sum(n.weight for n in n_c[0]) == pytest.approx(1.0, abs=1e-5)


def test_batch_is_blended_per_sample(caches, parity_expected):
    """Upstream's `@` broadcasts (B, k) x (B, k, D) and mixes the batch for B > 1; ours equals B = 1 rows."""
    faiss_cache, chroma = caches
    qs = np.stack([upstream_query(parity_expected["embeddings"], MIXTURES[m]) for m in ("audio", "point", "text")])
    batch, _ = retrieve_and_blend(chroma, torch.from_numpy(qs), **CACHE)
    for row, q in zip(batch, qs):
        single, _ = retrieve_and_blend(faiss_cache, torch.from_numpy(q)[None], **CACHE)
        assert (row - single[0]).abs().max().item() <= 1e-5
