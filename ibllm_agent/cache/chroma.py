"""The Chroma backend: a visual cache in a Chroma collection, embedded or on a `chroma run` server.

Each item is one ImageBind feature with metadata (`uri`, `modality`, `caption`, `sha256`, ...).
The collection is created with the "ip" space, whose distance is `1 - <q, v>`: its order is the
inner-product order FAISS uses for *any* vectors, whereas "cosine" would re-normalise the
un-normalised upstream query and the stored vectors. Scores handed to the blend are never the
distances: they are recomputed as `<q, v>` from the stored embeddings, which is also an exact
re-rank of the candidates. Small collections (`search="auto"`, up to `exact_max` items) are
searched exhaustively from a local copy of the embeddings, so top-k and blend equal FAISS
`IndexFlatIP`; larger ones go through Chroma's HNSW (k neighbours, or `candidates` deep when
that is set above the collection's ef_search) and a re-rank.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ibllm_agent.cache.base import CacheError, SearchResult, VisualCache, as_matrix, first_positions

logger = logging.getLogger(__name__)

IMAGEBIND_DIM = 1024
DIM_KEY = "ibllm:dim"
"""Collection metadata key recording the feature dimension, checked when a collection is opened."""
SEARCH_MODES = ("auto", "exact", "hnsw")


@dataclass(frozen=True)
class ChromaHnsw:
    """HNSW settings of a new collection (Chroma cannot change most of them later).

    The defaults are the "tuned" column of the README table: on clustered ImageBind-like data they
    keep recall@10 >= 0.95 while ingesting faster than Chroma's defaults (measured in the same run);
    `ChromaHnsw.chroma_defaults()` gives Chroma's own values.
    """

    space: str = "ip"
    """Distance; "ip" reproduces FAISS inner-product order. "cosine"/"l2" are accepted but not advised."""
    ef_construction: int = 48
    """Candidate list while inserting (Chroma default 100): the main cost of ingest."""
    max_neighbors: int = 12
    """Graph degree M (Chroma default 16)."""
    ef_search: int = 128
    """Candidate list while searching (Chroma default 100); a query with more `n_results` widens it."""
    sync_threshold: int = 20_000
    """Items buffered before the index is written to disk (Chroma default 1000)."""
    resize_factor: float = 1.2
    """Growth factor of the index allocation (Chroma default)."""

    @classmethod
    def chroma_defaults(cls) -> ChromaHnsw:
        return cls(ef_construction=100, max_neighbors=16, ef_search=100, sync_threshold=1000)

    @classmethod
    def fast_ingest(cls) -> ChromaHnsw:
        """A sparser graph: ~3x the ingest rate of Chroma's defaults (1.6x tuned), recall@10 0.976 at 100k
        clustered vectors instead of 1.000 (README)."""
        return cls(ef_construction=32, max_neighbors=8)

    @classmethod
    def preset(cls, name: str) -> ChromaHnsw:
        """"tuned" (the default), "fast" or "chroma" (Chroma's own defaults)."""
        presets = {"tuned": cls, "fast": cls.fast_ingest, "chroma": cls.chroma_defaults}
        if name not in presets:
            raise CacheError(f"unknown HNSW preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]()

    def configuration(self) -> dict:
        return {"hnsw": asdict(self)}


def connect(path: str | Path | None = None, url: str | None = None, *, connect_timeout: float = 3.0):
    """A Chroma client: `HttpClient` for `url` ("http://host:port"), else `PersistentClient(path)`.

    An unreachable server fails within `connect_timeout` seconds with a `CacheError`.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if url is None:
        path = path or "./chroma"
        with chroma_errors(f"Chroma folder {path}"):
            return chromadb.PersistentClient(path=str(path), settings=settings)
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CacheError(f"Chroma server URL must look like http://host:port, got {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 8000)
    try:
        socket.create_connection((parsed.hostname, port), timeout=connect_timeout).close()
    except OSError as e:
        raise CacheError(f"cannot reach the Chroma server at {url}: {e}") from None
    try:
        client = chromadb.HttpClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https",
                                     settings=settings)
        client.heartbeat()
    except Exception as e:  # something listens there, but it does not answer as Chroma does
        detail = " ".join(str(e).split())[:160]
        raise CacheError(f"{url} does not answer as a Chroma server ({type(e).__name__}: {detail})") from None
    return client


@contextmanager
def chroma_errors(where: str):
    """Chroma's own failures (a corrupt chroma.sqlite3, a server error) as a `CacheError` naming `where`."""
    from chromadb.errors import ChromaError

    try:
        yield
    except ChromaError as e:
        raise CacheError(f"{where} failed: {type(e).__name__}: {_one_line(e)}") from None
    except BaseException as e:
        # Chroma's Rust core panics on some corrupt databases; pyo3 raises that as a BaseException
        # subclass that cannot be imported by name.
        if type(e).__name__ != "PanicException":
            raise
        raise CacheError(f"{where} is corrupt: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _reported(method):
    """Run a ChromaCache method under `chroma_errors` for its client."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with chroma_errors(self.where):
            return method(self, *args, **kwargs)
    return run


def _where(client) -> str:
    """The folder or server of a Chroma client, for error messages."""
    settings = client.get_settings()
    if settings.is_persistent:
        return f"Chroma folder {settings.persist_directory}"
    return f"Chroma server {settings.chroma_server_host}:{settings.chroma_server_http_port}"


class ChromaCache(VisualCache):
    """A `VisualCache` over one Chroma collection of ImageBind features.

    Open with `ChromaCache.open(name, path=... | url=...)`. `search(q, k)` clamps k to the size.
    """

    def __init__(self, collection, client, *, dim: int = IMAGEBIND_DIM, search: str = "auto",
                 exact_max: int = 20_000, candidates: int = 0, max_batch_size: int | None = None,
                 count_ttl: float = 1.0):
        if search not in SEARCH_MODES:
            raise CacheError(f"unknown search mode {search!r}; expected one of {SEARCH_MODES}")
        self.collection = collection
        self.client = client
        self.where = _where(client)
        self.dim = dim
        self.search_mode = search
        self.exact_max = exact_max
        self.candidates = candidates
        with chroma_errors(self.where):
            limit = client.get_max_batch_size()
        self.max_batch_size = min(max_batch_size or limit, limit)
        self.count_ttl = count_ttl
        self._lock = threading.Lock()
        self._snapshot: tuple[int, np.ndarray, list[str], list[dict]] | None = None
        self._counted: tuple[float, int] | None = None

    @classmethod
    def open(cls, name: str, *, path: str | Path | None = None, url: str | None = None, client=None,
             dim: int = IMAGEBIND_DIM, create: bool = True, hnsw: ChromaHnsw | None = None,
             **options) -> ChromaCache:
        """Open (or create) collection `name` on `client`, or on a client for `url` / `path`.

        Raises `CacheError` when the collection holds vectors of another dimension, is missing and
        `create` is False, or the server is unreachable. `options` go to the constructor.
        """
        client = client or connect(path, url)
        where = _where(client)
        with chroma_errors(where):  # the other failures: a corrupt folder, a server error
            try:
                collection = client.get_collection(name, embedding_function=None)
            except Exception as e:  # Chroma raises NotFoundError (local) or a ValueError subclass (http)
                if "does not exist" not in str(e) and type(e).__name__ != "NotFoundError":
                    raise CacheError(f"{where}: cannot open collection {name!r}: {_one_line(e)}") from None
                if not create:
                    raise CacheError(f"Chroma collection {name!r} does not exist") from None
                try:
                    collection = client.get_or_create_collection(
                        name, configuration=(hnsw or ChromaHnsw()).configuration(), metadata={DIM_KEY: dim},
                        embedding_function=None)
                except Exception as e2:
                    raise CacheError(f"{where}: cannot create collection {name!r}: {_one_line(e2)}") from None
                logger.info("created Chroma collection %r (dim %d, %s)", name, dim, hnsw or ChromaHnsw())
        cache = cls(collection, client, dim=dim, **options)
        cache._check_collection()
        return cache

    def __repr__(self) -> str:
        return f"ChromaCache({self.collection.name!r}, {len(self)} x {self.dim})"

    @_reported
    def __len__(self) -> int:
        """The item count, re-read at most every `count_ttl` seconds and after each `add`.

        Chroma's count() costs milliseconds (~17 ms at 20k items here) and a blend needs the
        size several times, so adds by *other* processes show up within `count_ttl` seconds.
        """
        now = time.monotonic()
        if self._counted is None or now - self._counted[0] >= self.count_ttl:
            self._counted = (now, int(self.collection.count()))
        return self._counted[1]

    @property
    def space(self) -> str:
        hnsw = (self.collection.configuration or {}).get("hnsw") or {}
        return hnsw.get("space") or (self.collection.metadata or {}).get("hnsw:space", "l2")

    @_reported
    def _check_collection(self) -> None:
        stored = (self.collection.metadata or {}).get(DIM_KEY)
        if stored is None:
            sample = self.collection.get(limit=1, include=["embeddings"])["embeddings"]
            stored = len(sample[0]) if sample is not None and len(sample) else None
        if stored is not None and int(stored) != self.dim:
            raise CacheError(f"Chroma collection {self.collection.name!r} holds vectors of dimension {stored}, "
                             f"but the model expects {self.dim}")
        if self.space != "ip":
            logger.warning("collection %r uses the %r space: HNSW candidates follow that order, scores are "
                           "still re-ranked by inner product", self.collection.name, self.space)

    # -- writing ------------------------------------------------------------------------------

    @_reported
    def add(self, vectors: np.ndarray, *, ids: Sequence[str] | None = None,
            metadatas: Sequence[dict] | None = None, documents: Sequence[str] | None = None) -> int:
        """Add vectors (N, D) in batches of at most the client's max batch size; existing ids are skipped.

        Without ids, ids are positions continuing from the current count (single writer only).
        Without documents, an item's document is its caption or URI from the metadata, so that
        LangChain's `Chroma` wrapper (which drops items without a document) sees it too.
        Returns how many items were added.
        """
        x = as_matrix(vectors, self.dim)
        n = len(x)
        if documents is None and metadatas is not None:
            documents = [(m or {}).get("caption") or (m or {}).get("uri") for m in metadatas]
            documents = documents if any(d is not None for d in documents) else None
        if ids is None:
            start = int(self.collection.count())
            ids = [str(start + i) for i in range(n)]
        for name, seq in (("ids", ids), ("metadatas", metadatas), ("documents", documents)):
            if seq is not None and len(seq) != n:
                raise CacheError(f"add() got {n} vectors but {len(seq)} {name}")
        added = 0
        for lo in range(0, n, self.max_batch_size):
            hi = min(lo + self.max_batch_size, n)
            batch_ids = [str(i) for i in ids[lo:hi]]
            first = first_positions(batch_ids)
            existing = set(self.collection.get(ids=[batch_ids[j] for j in first], include=[])["ids"])
            keep = [j for j in first if batch_ids[j] not in existing]
            if not keep:
                continue
            self.collection.add(
                ids=[batch_ids[j] for j in keep], embeddings=x[lo:hi][keep],
                metadatas=[_clean_metadata(metadatas[lo + j]) for j in keep] if metadatas is not None else None,
                documents=[documents[lo + j] for j in keep] if documents is not None else None)
            added += len(keep)
            self._counted = None
        return added

    # -- reading ------------------------------------------------------------------------------

    @_reported
    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k by inner product (exact for "exact" and small "auto" collections); k is clamped to the size."""
        q = self.check_query(queries, k)
        n = len(self)
        k = min(k, n)
        if self.search_mode == "exact" or (self.search_mode == "auto" and n <= self.exact_max):
            return self._search_exact(q, k, n)
        return self._search_hnsw(q, k, n)

    def _search_hnsw(self, q: np.ndarray, k: int, n: int) -> SearchResult:
        if self.candidates <= k:
            res = self.collection.query(query_embeddings=q, n_results=k, include=["embeddings", "metadatas"])
            rows = [(ids, np.asarray(emb, dtype=np.float32), [m or {} for m in metas])
                    for ids, emb, metas in zip(res["ids"], res["embeddings"], res["metadatas"])]
        else:
            rows = self._widened_candidates(q, k, min(self.candidates, n))
        found = min(len(row_ids) for row_ids, _, _ in rows)  # < k only if items vanished since counting
        if found == 0:
            raise CacheError(f"{self!r} is empty: add features before using it")
        scores, vectors, ids, metas = [], [], [], []
        for b, (row_ids, cand, row_metas) in enumerate(rows):
            row_ids, cand, row_metas = row_ids[:found], cand[:found], row_metas[:found]
            sims = cand @ q[b]  # (k,) the true inner products of the stored float32 vectors
            order = np.argsort(-sims, kind="stable")  # re-rank: exact order among the candidates
            scores.append(sims[order])
            vectors.append(cand[order])
            ids.append([row_ids[j] for j in order])
            metas.append([row_metas[j] for j in order])
        return SearchResult(scores=np.stack(scores), vectors=np.stack(vectors), ids=ids, metadatas=metas)

    def _widened_candidates(self, q: np.ndarray, k: int, candidates: int):
        """Search `candidates` deep (more than ef_search widens the graph search), keep the best k.

        Only ids come back from the deep search: fetching hundreds of embeddings per query costs more
        than the search itself. Chroma orders them by 1 - <q, v>, i.e. by inner product.
        """
        res = self.collection.query(query_embeddings=q, n_results=candidates, include=["distances"])
        top_ids = [row[:k] for row in res["ids"]]
        got = self.collection.get(ids=sorted({i for row in top_ids for i in row}),
                                  include=["embeddings", "metadatas"])
        stored = {i: (np.asarray(v, dtype=np.float32), m or {})
                  for i, v, m in zip(got["ids"], got["embeddings"], got["metadatas"])}
        return [(row, np.stack([stored[i][0] for i in row]), [stored[i][1] for i in row]) for row in top_ids]

    def _search_exact(self, q: np.ndarray, k: int, n: int) -> SearchResult:
        _, matrix, all_ids, all_metas = self._exact_snapshot(n)
        sims = q @ matrix.T  # (B, N)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(q), 1))
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.take_along_axis(top, np.argsort(-top_sims, axis=1, kind="stable"), axis=1)  # (B, k)
        return SearchResult(scores=np.take_along_axis(sims, order, axis=1), vectors=matrix[order],
                            ids=[[all_ids[j] for j in row] for row in order],
                            metadatas=[[all_metas[j] for j in row] for row in order])

    def _exact_snapshot(self, n: int) -> tuple[int, np.ndarray, list[str], list[dict]]:
        """All embeddings, read once and again whenever the collection's count changes."""
        with self._lock:
            if self._snapshot is None or self._snapshot[0] != n:
                ids, chunks, metas = [], [], []
                for batch_ids, batch_vectors, batch_metas in self.iter_batches():
                    ids += batch_ids
                    chunks.append(batch_vectors)
                    metas += batch_metas
                matrix = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
                self._snapshot = (len(ids), matrix, ids, metas)
                logger.debug("read %d embeddings of %r for exact search", len(ids), self.collection.name)
            return self._snapshot

    def iter_batches(self, batch_size: int | None = None,
                     include_documents: bool = False) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
        """(ids, vectors (n, D) float32, metadatas) of the whole collection, page by page."""
        batch_size = min(batch_size or self.max_batch_size, self.max_batch_size)
        offset = 0
        while True:
            with chroma_errors(self.where):
                page = self.collection.get(limit=batch_size, offset=offset, include=["embeddings", "metadatas"])
            if not page["ids"]:
                return
            vectors = np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), self.dim)
            yield list(page["ids"]), vectors, [m or {} for m in page["metadatas"]]
            offset += len(page["ids"])

    @_reported
    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are stored (looked up in batches)."""
        found: set[str] = set()
        for lo in range(0, len(ids), self.max_batch_size):
            chunk = list(dict.fromkeys(ids[lo:lo + self.max_batch_size]))
            found.update(self.collection.get(ids=chunk, include=[])["ids"])
        return found

    @_reported
    def stats(self) -> dict:
        """Count, dimension, space, HNSW settings and modality counts (modalities from the metadata)."""
        modalities: dict[str, int] = {}
        offset, page_size = 0, self.max_batch_size
        while True:
            page = self.collection.get(limit=page_size, offset=offset, include=["metadatas"])
            if not page["ids"]:
                break
            for m in page["metadatas"]:
                key = (m or {}).get("modality", "unknown")
                modalities[key] = modalities.get(key, 0) + 1
            offset += len(page["ids"])
        return {"backend": "chroma", "collection": self.collection.name, "count": len(self), "dim": self.dim,
                "space": self.space, "hnsw": (self.collection.configuration or {}).get("hnsw"),
                "modalities": modalities}


def _clean_metadata(meta: dict | None) -> dict | None:
    """Chroma accepts only non-empty dicts of str/int/float/bool values."""
    if not meta:
        return None
    out = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    return out or None

