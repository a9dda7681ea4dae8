"""The FAISS backend: the official `knn.index` as is, or a cache built from vectors.

The official cache is a bare `IndexFlatIP` of ~3M x 1024 unit ImageBind image features with no
metadata, so an item's id is its position. Caches we build keep ids and metadata in a SQLite
sidecar next to the index (`<index>.meta.sqlite`, one row per position). Search is exact
(`IndexFlatIP`) by default; `kind="hnsw"` or `kind="ivf"` trade recall for latency on millions
of vectors (see tools/bench_cache.py and the README's "Visual cache" table).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ibllm_agent.cache.base import CacheError, SearchResult, VisualCache, as_matrix, first_positions
from ibllm_agent.cache.faiss_file import check_index_file

logger = logging.getLogger(__name__)

IMAGEBIND_DIM = 1024
INDEX_KINDS = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class FaissOptions:
    """How to build (and search) a FAISS index; only `kind` matters for the exact default."""

    kind: str = "flat"
    """"flat" (exact IndexFlatIP), "hnsw" (IndexHNSWFlat) or "ivf" (IndexIVFFlat), all inner product."""
    hnsw_m: int = 32
    """HNSW graph degree: higher = better recall, more memory and slower build."""
    ef_construction: int = 64
    """HNSW candidate list while building."""
    ef_search: int = 128
    """HNSW candidate list while searching (recall/latency knob, can be changed after loading)."""
    nlist: int | None = None
    """IVF cells; None = about 4 * sqrt(n) of the training vectors."""
    nprobe: int = 32
    """IVF cells visited per query (recall/latency knob, can be changed after loading)."""

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise CacheError(f"unknown FAISS index kind {self.kind!r}; expected one of {INDEX_KINDS}")


def sidecar_path(index_path: str | Path) -> Path:
    """Where the ids and metadata of the index at `index_path` live."""
    return Path(f"{index_path}.meta.sqlite")


class FaissCache(VisualCache):
    """A `VisualCache` over a FAISS inner-product index.

    Construct with `FaissCache.load(path)` (an existing index, e.g. the official knn.index),
    `FaissCache.create(dim, options)` (empty) or `FaissCache.from_vectors(vectors, ...)`.
    `search(q, k)` clamps k to the cache size; `retrieve_and_blend` does the same.
    """

    def __init__(self, index: faiss.Index, *, meta: sqlite3.Connection | None = None, read_only: bool = False,
                 path: Path | None = None):
        self.index = index
        self.dim = index.d
        self.read_only = read_only
        self.path = path
        self._lock = threading.Lock()
        self._meta = meta if meta is not None else _new_meta_db()

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"FaissCache({type(self.index).__name__}, {len(self)} x {self.dim}{where})"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int = IMAGEBIND_DIM, options: FaissOptions | None = None,
               train_vectors: np.ndarray | None = None) -> FaissCache:
        """An empty cache; an IVF index is trained on `train_vectors` (required for kind="ivf")."""
        options = options or FaissOptions()
        if options.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif options.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = options.ef_construction
            index.hnsw.efSearch = options.ef_search
        else:
            if train_vectors is None or len(train_vectors) == 0:
                raise CacheError("an IVF index needs train_vectors (a sample of the data) to be built")
            train = as_matrix(train_vectors, dim)
            nlist = options.nlist or max(1, int(4 * math.sqrt(len(train))))
            nlist = min(nlist, len(train))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(train)
            index.nprobe = options.nprobe
            index.make_direct_map()  # so that search can return the stored vectors (reconstruct)
        return cls(index)

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, *, ids: Sequence[str] | None = None,
                     metadatas: Sequence[dict] | None = None, options: FaissOptions | None = None) -> FaissCache:
        """A cache holding `vectors` (N, D) with optional ids and metadata."""
        vectors = as_matrix(vectors, None)
        options = options or FaissOptions()
        cache = cls.create(vectors.shape[1], options, train_vectors=vectors if options.kind == "ivf" else None)
        cache.add(vectors, ids=ids, metadatas=metadatas)
        return cache

    @classmethod
    def load(cls, path: str | Path, *, dim: int | None = IMAGEBIND_DIM, mmap: bool = True,
             ef_search: int | None = None, nprobe: int | None = None) -> FaissCache:
        """Open a FAISS index file as is (plus its metadata sidecar when there is one).

        `dim` is the dimension the caller expects (ImageBind's 1024; None accepts any).
        `mmap=True` maps a flat index instead of reading it (the official 12 GB file is then served
        from the page cache); such a cache is read-only. Raises `CacheError` for a missing file, a
        file that is not a complete FAISS index of a type the cache reads (flat, HNSW flat, IVF flat;
        checked before FAISS reads it, see faiss_file.py), a wrong dimension, a metric other than
        inner product, or a bad metadata sidecar.
        """
        path = Path(path)
        if not path.exists():
            raise CacheError(f"FAISS index {path} does not exist")
        if not path.is_file():  # a folder, FIFO or device: never opened
            raise CacheError(f"FAISS index {path} is not a regular file")
        # FAISS crashes (SIGSEGV) on some truncated files instead of raising: check the layout first.
        layout = check_index_file(path)
        if dim is not None and layout.d != dim:
            raise CacheError(f"{path} holds vectors of dimension {layout.d}, but the model expects {dim}")
        if layout.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise CacheError(f"{path} uses FAISS metric {layout.metric_type}; the visual cache needs inner "
                             "product (METRIC_INNER_PRODUCT, e.g. IndexFlatIP)")
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
            if isinstance(index, faiss.IndexIVF):
                # Rebuilt from the lists rather than trusted from the file: reconstruct follows its
                # entries into the lists unchecked, and this refuses ids outside 0..ntotal-1.
                index.set_direct_map_type(faiss.DirectMap.NoMap)
                index.make_direct_map()
        except RuntimeError as e:
            raise CacheError(f"{path} is not a readable FAISS index: {_faiss_reason(e)}") from None
        mapped = mmap and isinstance(index, faiss.IndexFlat)
        _configure(index, ef_search=ef_search, nprobe=nprobe)
        meta = _load_meta_db(sidecar_path(path), len_index=index.ntotal)
        logger.info("loaded %s: %d x %d (%s%s)", path, index.ntotal, index.d, type(index).__name__,
                    ", memory-mapped" if mapped else "")
        return cls(index, meta=meta, read_only=mapped, path=path)

    def save(self, path: str | Path) -> Path:
        """Write the index and (when any item has an id or metadata) its sidecar; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        side = sidecar_path(path)
        side_tmp = side.with_name(side.name + ".tmp")
        side_tmp.unlink(missing_ok=True)
        with self._lock:
            has_rows = self._meta.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
            if has_rows:
                with sqlite3.connect(side_tmp) as dst:
                    self._meta.backup(dst)
                dst.close()
        # Both are written to temporary files and renamed into place: never a half-written file.
        tmp.replace(path)
        if has_rows:
            side_tmp.replace(side)
        else:
            side.unlink(missing_ok=True)
        self.path = path
        return path

    # -- writing ------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, *, ids: Sequence[str] | None = None,
            metadatas: Sequence[dict] | None = None) -> int:
        """Append vectors (N, D); items whose id is already present are skipped. Returns how many were added."""
        if self.read_only:
            raise CacheError(f"{self!r} is memory-mapped and read-only; load it with mmap=False to add to it")
        vectors = as_matrix(vectors, self.dim)
        n = len(vectors)
        if ids is not None and len(ids) != n or metadatas is not None and len(metadatas) != n:
            raise CacheError(f"add() got {n} vectors but {len(ids or [])} ids and {len(metadatas or [])} metadatas")
        if n == 0:
            return 0
        with self._lock:
            keep = np.arange(n)
            if ids is not None:
                ids = [str(i) for i in ids]
                keep = np.array([j for j in first_positions(ids) if not self._has_id(ids[j])], dtype=np.int64)
            if len(keep) == 0:
                return 0
            start = int(self.index.ntotal)
            self.index.add(np.ascontiguousarray(vectors[keep]))
            if ids is not None or metadatas is not None:
                rows = [(start + r, ids[j] if ids is not None else str(start + r),
                         json.dumps(metadatas[j] if metadatas is not None else {}))
                        for r, j in enumerate(keep.tolist())]
                self._meta.executemany("INSERT INTO items (pos, id, metadata) VALUES (?, ?, ?)", rows)
                self._meta.commit()
        return len(keep)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are stored."""
        with self._lock:
            return {str(i) for i in ids if self._has_id(str(i))}

    # -- reading ------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k by inner product; k larger than the cache is clamped to its size."""
        q = self.check_query(queries, k)
        k = min(k, len(self))
        scores, positions = self.index.search(q, k)  # (B, k), (B, k)
        if (positions < 0).any():
            raise CacheError(f"{type(self.index).__name__} found fewer than {k} neighbours; raise ef_search / "
                             "nprobe or use an exact index")
        vectors = self.index.reconstruct_batch(positions.reshape(-1)).reshape(len(q), k, self.dim)
        ids, metas = self._lookup(positions.reshape(-1).tolist())
        ids_rows = [ids[r * k:(r + 1) * k] for r in range(len(q))]
        meta_rows = [metas[r * k:(r + 1) * k] for r in range(len(q))]
        return SearchResult(scores=scores, vectors=vectors, ids=ids_rows, metadatas=meta_rows)

    def get_vectors(self, start: int, stop: int) -> np.ndarray:
        """Stored vectors of positions [start, stop) as float32 (n, D)."""
        stop = min(stop, len(self))
        if start >= stop:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_n(start, stop - start)

    def iter_batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
        """(ids, vectors, metadatas) of consecutive positions, `batch_size` at a time, from `start`."""
        for lo in range(start, len(self), batch_size):
            hi = min(lo + batch_size, len(self))
            ids, metas = self._lookup(list(range(lo, hi)))
            yield ids, self.get_vectors(lo, hi), metas

    def stats(self) -> dict:
        """Count, dimension, index type and modality counts (items without metadata count as "unknown")."""
        with self._lock:
            rows = self._meta.execute("SELECT json_extract(metadata, '$.modality'), COUNT(*) FROM items "
                                      "GROUP BY 1").fetchall()
        modalities = {m or "unknown": c for m, c in rows}
        rest = len(self) - sum(modalities.values())
        if rest:
            modalities["unknown"] = modalities.get("unknown", 0) + rest
        return {"backend": "faiss", "path": str(self.path) if self.path else None, "index": type(self.index).__name__,
                "count": len(self), "dim": self.dim, "read_only": self.read_only, "modalities": modalities}

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the recall/latency knob of an approximate index (ignored by a flat index)."""
        _configure(self.index, ef_search=ef_search, nprobe=nprobe)

    # -- metadata sidecar ---------------------------------------------------------------------

    def _has_id(self, item_id: str) -> bool:
        if self._meta.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone():
            return True
        # Items without a sidecar row are known by their position.
        return item_id.isdigit() and int(item_id) < self.index.ntotal and self._meta.execute(
            "SELECT 1 FROM items WHERE pos = ?", (int(item_id),)).fetchone() is None

    def _lookup(self, positions: list[int]) -> tuple[list[str], list[dict]]:
        with self._lock:
            found: dict[int, tuple[str, str]] = {}
            unique = sorted(set(positions))
            for lo in range(0, len(unique), 900):  # SQLite's limit on bound parameters
                chunk = unique[lo:lo + 900]
                marks = ",".join("?" * len(chunk))
                for pos, item_id, meta in self._meta.execute(
                        f"SELECT pos, id, metadata FROM items WHERE pos IN ({marks})", chunk):
                    found[pos] = (item_id, meta)
        ids, metas = [], []
        for p in positions:
            item_id, meta = found.get(p, (str(p), "{}"))
            ids.append(item_id)
            try:  # checked at load with SQLite's json_valid, whose idea of JSON can be wider than Python's
                metas.append(json.loads(meta))
            except ValueError:
                raise CacheError(f"metadata sidecar {sidecar_path(self.path)}, pos {p}: the metadata is not "
                                 "valid JSON") from None
        return ids, metas


def _new_meta_db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE IF NOT EXISTS items (pos INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
                "metadata TEXT NOT NULL)")
    return db


# The first row a sidecar must not hold: positions are the index's, ids text, metadata a JSON object.
# (CASE: json_type raises on invalid JSON, and SQLite does not promise to short-circuit OR.)
_BAD_ROW = """SELECT rowid, pos, id, metadata FROM items
    WHERE typeof(pos) != 'integer' OR pos < 0 OR typeof(id) != 'text' OR typeof(metadata) != 'text'
    OR CASE WHEN json_valid(metadata) THEN json_type(metadata) END IS NOT 'object' LIMIT 1"""


def _load_meta_db(path: Path, len_index: int) -> sqlite3.Connection:
    """An in-memory copy of the sidecar, so that adding without saving never touches the files.

    Every row is checked here, so that a bad one is reported by file and row when the cache is
    opened instead of as a traceback in the middle of a search.
    """
    db = _new_meta_db()
    if not path.is_file():
        return db
    try:
        # A URI, for read-only mode; as_uri() escapes the '#', '?' and '%' a plain "file:" string would not.
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            src.backup(db)
        finally:
            src.close()
        # SQLite stores any bytes as text: undecodable ones become U+FFFD instead of failing every lookup.
        db.text_factory = lambda b: b.decode("utf-8", "replace")
        columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
        if not {"pos", "id", "metadata"} <= columns:
            raise CacheError(f"metadata sidecar {path} has no items table with pos, id and metadata columns")
        bad = db.execute(_BAD_ROW).fetchone()
        if bad is not None:
            raise CacheError(f"metadata sidecar {path}, row {bad[0]} (pos {bad[1]!r}): {_row_problem(*bad[1:])}")
        (max_pos,) = db.execute("SELECT MAX(pos) FROM items").fetchone()
    except sqlite3.DatabaseError as e:
        raise CacheError(f"metadata sidecar {path} is unreadable: {e}") from None
    if max_pos is not None and max_pos >= len_index:
        raise CacheError(f"metadata sidecar {path} describes position {max_pos}, but the index holds only "
                         f"{len_index} vectors: they do not belong together")
    return db


def _row_problem(pos, item_id, metadata) -> str:
    """Why a row selected by _BAD_ROW is bad, in words."""
    if not isinstance(pos, int) or pos < 0:
        return "the position is not a non-negative integer"
    if not isinstance(item_id, str):
        return f"the id {item_id!r} is not a text"
    if not isinstance(metadata, str):
        return f"the metadata {metadata!r} is not a text"
    try:
        json.loads(metadata)
    except ValueError:
        return f"the metadata {metadata[:80]!r} is not valid JSON"
    return f"the metadata {metadata[:80]!r} is not a JSON object"


def _configure(index: faiss.Index, *, ef_search: int | None, nprobe: int | None) -> None:
    if isinstance(index, faiss.IndexHNSW) and ef_search is not None:
        index.hnsw.efSearch = ef_search
    if isinstance(index, faiss.IndexIVF) and nprobe is not None:
        index.nprobe = nprobe


def _faiss_reason(e: RuntimeError) -> str:
    """FAISS errors start with a C++ signature; keep the part after the last 'failed:' / 'Error:'."""
    msg = str(e)
    for marker in ("failed:", "Error:"):
        if marker in msg:
            msg = msg.rsplit(marker, 1)[1]
    return msg.strip()
