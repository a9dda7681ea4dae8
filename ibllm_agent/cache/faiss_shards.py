"""`ibllm cache build --faiss OUT`: a FAISS cache written in shards, then merged into one index file.

A build hands its vectors to `FaissShards.add` as they are embedded; they are kept in shard files under
`<OUT>.shards/` (each written to a temporary name and renamed, so a shard is whole or absent), so a build
that is killed keeps what it embedded, and its rerun skips those ids as it skips the ids already in OUT.
`merge` then orders the items by their position in the build's listing, appends them to OUT (the items an
existing OUT holds stay first, in their order) and writes it as `FaissCache.save` does: an `IndexFlatIP` of
the vectors (the official `knn.index` format, which `FaissCache.load` and `ibllm_agent.load(knn_index=...)`
read) and the ids (content sha256) and metadata in its sidecar `<OUT>.meta.sqlite`. The shards are removed
once OUT is in place; a merge interrupted before that is finished by merging again (ids already in OUT are
skipped).

Positions order the merged file as the single-process build orders its adds (listing order, the first file
of a content wins), whichever order the batches arrived in: a Ray build's output is unordered, and a
rerun's items interleave with those of the run it finishes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ibllm_agent.cache.base import CacheError, as_matrix
from ibllm_agent.cache.faiss import FaissCache

SHARD_ROWS = 4096
"""Vectors per shard file (16 MB at 1024-d): what a killed build may have to embed again, against fewer files."""


def shard_folder(out: str | Path) -> Path:
    """Where the shards of the index `out` are kept until they are merged."""
    return Path(f"{out}.shards")


class FaissShards:
    """The write side of a FAISS build: `existing_ids` and `add` as a `VisualCache` has them (plus each item's
    position in the listing), then `merge` into the index file `out`."""

    takes_positions = True
    """`add` wants each item's position in the build's listing (see `ibllm_agent.cache.build.add_in_order`)."""

    def __init__(self, out: str | Path, dim: int, *, shard_rows: int = SHARD_ROWS):
        self.out = Path(out)
        self.folder = shard_folder(out)
        self.dim = dim
        self.max_batch_size = shard_rows
        self.base = FaissCache.load(self.out, dim=dim, mmap=False) if self.out.exists() else FaissCache.create(dim)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._shard_ids: set[str] = set()
        for shard in self._shard_files():
            self._shard_ids.update(self._read(shard)[1].tolist())

    def __len__(self) -> int:
        return len(self.base) + len(self._shard_ids)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are in OUT or in a shard."""
        return self.base.existing_ids(ids) | (set(map(str, ids)) & self._shard_ids)

    def add(self, vectors: np.ndarray, *, ids: Sequence[str], metadatas: Sequence[dict],
            positions: Sequence[int]) -> int:
        """Keep the items whose id is not stored yet; a shard file is written every `max_batch_size` of them.
        Returns how many were kept."""
        vectors = as_matrix(vectors, self.dim)
        if not len(vectors) == len(ids) == len(metadatas) == len(positions):
            raise CacheError(f"add() got {len(vectors)} vectors, {len(ids)} ids, {len(metadatas)} metadatas and "
                             f"{len(positions)} positions")
        keep, seen = [], set()
        present = self.existing_ids(ids)
        for j, item_id in enumerate(map(str, ids)):
            if item_id not in present and item_id not in seen:
                seen.add(item_id)
                keep.append(j)
        if keep:
            self._pending.append((vectors[keep], np.array([str(ids[j]) for j in keep]),
                                  np.array([int(positions[j]) for j in keep], np.int64),
                                  np.array([json.dumps(metadatas[j]) for j in keep])))
            self._shard_ids.update(seen)
            if sum(len(p[1]) for p in self._pending) >= self.max_batch_size:
                self.flush()
        return len(keep)

    def flush(self) -> None:
        """Write the items not yet in a shard file."""
        if not self._pending:
            return
        vectors, ids, positions, metas = (np.concatenate(column) for column in zip(*self._pending))
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{int(positions.min()):012d}-{uuid.uuid4().hex[:12]}.npz"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, vectors=vectors, ids=ids, positions=positions, metadatas=metas)
        os.replace(tmp, self.folder / name)
        self._pending.clear()

    def merge(self) -> FaissCache:
        """Append the shards' items to OUT in listing order, write it, remove the shards; returns the cache.
        Memory: the shards' vectors twice (read, then in the index) plus what OUT held."""
        self.flush()
        shards = [self._read(f) for f in self._shard_files()]
        if shards:
            vectors, ids, positions, metas = (np.concatenate(column) for column in zip(*shards))
            order = np.lexsort((ids, positions))  # by position; ids break ties between runs over other listings
            for lo in range(0, len(order), self.max_batch_size):
                rows = order[lo:lo + self.max_batch_size]
                self.base.add(vectors[rows], ids=ids[rows].tolist(), metadatas=[json.loads(m) for m in metas[rows]])
        self.base.save(self.out)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._shard_ids.clear()
        return self.base

    def _shard_files(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []

    def _read(self, shard: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        try:
            with np.load(shard, allow_pickle=False) as z:
                columns = z["vectors"], z["ids"], z["positions"], z["metadatas"]
        except (OSError, ValueError, KeyError) as e:
            raise CacheError(f"shard {shard} of {self.out} is unreadable ({e}); delete it and build again") from None
        if columns[0].ndim != 2 or columns[0].shape[1] != self.dim or not all(len(c) == len(columns[0])
                                                                               for c in columns):
            raise CacheError(f"shard {shard} holds {columns[0].shape} vectors, not (n, {self.dim}) with an id, "
                             "position and metadata each: it is not this build's; delete it and build again")
        return columns
