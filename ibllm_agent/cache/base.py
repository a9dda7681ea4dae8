"""The visual cache model: one interface, one blend.

ImageBind-LLM pulls a (non-image) ImageBind feature toward the image features the LLM was
trained on by retrieving its nearest image features and mixing them in (paper §3.3).
Every backend (FAISS in process, Chroma local or server) implements `VisualCache.search`;
the math lives only in `blend` so all backends give the same result on the same neighbours.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class CacheError(ValueError):
    """A cache that cannot serve a request (wrong dimension, empty, unreadable, unreachable)."""


@dataclass(frozen=True)
class Neighbor:
    """One retrieved cache item: its id, inner-product score, softmax weight in the blend, metadata."""

    id: str
    score: float
    weight: float = 0.0
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready, as the chat model's `response_metadata["cache_neighbors"]` and the server report it."""
        return {"id": self.id, "score": self.score, "weight": self.weight, "metadata": dict(self.metadata)}


@dataclass
class SearchResult:
    """Top-k of a batch of queries. `vectors` are the stored features, so the blend needs no second lookup."""

    scores: np.ndarray  # (B, k) float32 inner products, best first
    vectors: np.ndarray  # (B, k, D) float32
    ids: list[list[str]]
    metadatas: list[list[dict]]


class VisualCache(ABC):
    """A store of ImageBind features searched by inner product."""

    dim: int

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Exact or approximate top-k by inner product for float32 queries of shape (B, dim)."""

    @abstractmethod
    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, *, ids: Sequence[str] | None = None,
            metadatas: Sequence[dict] | None = None) -> int:
        """Store vectors (N, dim) with optional ids and metadata; items whose id is present are skipped.

        Returns how many were added. Backends that can grow override this; the default is read-only.
        """
        raise CacheError(f"{type(self).__name__} is read-only")

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the cache holds (so builds skip them before encoding); none by default."""
        return set()

    def check_query(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Validate a query batch against this cache; returns a contiguous float32 (B, dim) array."""
        q = as_matrix(queries, self.dim, what="cache query", rows="batch")
        n = len(self)
        if n == 0:
            raise CacheError(f"{self!r} is empty: add features before using it")
        if k < 1:
            raise CacheError(f"cache_size must be >= 1, got {k}")
        return q


def as_matrix(x, dim: int | None, *, what: str = "cache vectors", rows: str = "n") -> np.ndarray:
    """`x` as a contiguous float32 (rows, dim) array of finite values, or a `CacheError` naming `what`."""
    m = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if m.ndim != 2 or (dim is not None and m.shape[1] != dim):
        raise CacheError(f"{what} must have shape ({rows}, {dim if dim is not None else 'dim'}), got {tuple(m.shape)}")
    if not np.isfinite(m).all():
        raise CacheError(f"{what} contains NaN or inf")
    return m


def first_positions(ids: Sequence[str]) -> list[int]:
    """Positions of the first occurrence of each id, in order (backends skip repeated ids in one add)."""
    first: dict[str, int] = {}
    for j, item_id in enumerate(ids):
        first.setdefault(item_id, j)
    return list(first.values())


def blend(query: torch.Tensor, scores: torch.Tensor, vectors: torch.Tensor, cache_t: float,
          cache_weight: float) -> torch.Tensor:
    """The upstream cache formula, per sample.

    query (B, D) is the *un-normalised* weighted sum of modality features; scores (B, k) its inner
    products with the retrieved vectors (B, k, D). Upstream: softmax(scores * t) mixes the
    neighbours, the mix is L2-normalised, blended (1-w)*query + w*mix and normalised again.
    Upstream multiplies (B, k) by (B, k, D) with `@`, which broadcasts to (B, B, D) and mixes the
    batch for B > 1; we compute the per-sample mix (identical at B = 1).
    """
    weights = F.softmax(scores.float() * cache_t, dim=-1)  # (B, k)
    mix = torch.einsum("bk,bkd->bd", weights, vectors.float())  # (B, D)
    mix = F.normalize(mix, dim=-1)
    out = (1 - cache_weight) * query.float() + cache_weight * mix
    return F.normalize(out, dim=-1).to(query.dtype)


def retrieve_and_blend(cache: VisualCache, query: torch.Tensor, cache_size: int = 10, cache_t: float = 20.0,
                       cache_weight: float = 0.5) -> tuple[torch.Tensor, list[list[Neighbor]]]:
    """Search `cache` with `query` (B, D) and blend; returns the blended features and the neighbours used."""
    if not 0.0 <= cache_weight <= 1.0:
        raise CacheError(f"cache_weight must be in [0, 1], got {cache_weight}")
    q = cache.check_query(query.detach().float().cpu().numpy(), cache_size)
    res = cache.search(q, min(cache_size, len(cache)))
    scores = torch.from_numpy(np.ascontiguousarray(res.scores, dtype=np.float32)).to(query.device)
    vectors = torch.from_numpy(np.ascontiguousarray(res.vectors, dtype=np.float32)).to(query.device)
    out = blend(query, scores, vectors, cache_t, cache_weight)
    weights = F.softmax(scores.float() * cache_t, dim=-1).cpu().numpy()
    neighbors = [
        [Neighbor(id=i, score=float(s), weight=float(w), metadata=m)
         for i, s, w, m in zip(ids, srow, wrow, metas)]
        for ids, srow, wrow, metas in zip(res.ids, res.scores, weights, res.metadatas)
    ]
    return out, neighbors
