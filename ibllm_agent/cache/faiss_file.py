"""A structural check of FAISS index files, done before FAISS reads them.

FAISS trusts the sizes a file declares, and its memory-mapped reader (IO_FLAG_MMAP_IFC, how the
12 GB official knn.index is served) steps past the end of the mapping when a field is cut short:
the process dies with SIGSEGV instead of raising. `check_index_file` therefore walks the layout
FAISS's writer produces (faiss/impl/index_write.cpp) for the index types a visual cache uses,
reading headers and length fields only, and refuses any file whose declared sizes do not add up
to exactly its length. A file that passes is read by FAISS with every field inside the file; the
values inside the vectors and graphs are FAISS's to check (1.15 validates HNSW graphs on read).

Layout (little-endian; size_t is 8 bytes):
    index header: fourcc, int32 d, int64 ntotal, two int64 reserved (always 2**20), uint8
        is_trained, int32 metric_type, float32 metric_arg only when metric_type > 1
    vector<T>: uint64 n, then n items of T
    flat ("IxFI" inner product, "IxF2" L2, "IxFl" other metrics): header, vector<float> of ntotal * d
    HNSW flat ("IHNf"): header, vectors assign_probas<f64>, cum_nneighbor_per_level<i32>,
        levels<i32> (ntotal), offsets<u64> (ntotal + 1), neighbors<i32>, five int32
        (entry_point, max_level, efConstruction, efSearch, upper_beam), then the flat storage
    IVF flat ("IwFl"): header, uint64 nlist, uint64 nprobe, the flat quantizer (nlist centroids),
        direct map (uint8 type, vector<i64>, and for a hashtable vector<(i64, i64)>), then the
        inverted lists: "ilar", uint64 nlist, uint64 code_size, "full" + vector<u64> of nlist
        sizes or "sprs" + vector<u64> of (list, size) pairs, then per non-empty list its codes
        (size * code_size bytes) and ids (size int64)
    legacy IVF flat ("IvFl"): header, nlist, nprobe, quantizer, nlist vector<i64> of ids, direct
        map, nlist vector<float> of codes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ibllm_agent.cache.base import CacheError

FLAT = (b"IxFI", b"IxF2", b"IxFl")
HNSW_FLAT = b"IHNf"
IVF_FLAT = b"IwFl"
IVF_FLAT_LEGACY = b"IvFl"
SUPPORTED = (*FLAT, HNSW_FLAT, IVF_FLAT, IVF_FLAT_LEGACY)
RESERVED = 1 << 20
"""The value FAISS writes in the two reserved header fields (every version since 2017)."""
MAX_DIM = 1 << 20
"""FAISS refuses larger dimensions when reading."""
DIRECT_MAP_TYPES = {0: "none", 1: "array", 2: "hashtable"}


@dataclass(frozen=True)
class IndexLayout:
    """What the top-level header of a checked index file says."""

    fourcc: str
    d: int
    ntotal: int
    metric_type: int


class _Malformed(Exception):
    """A reason the file is not a readable index; `check_index_file` adds the path."""


class _Reader:
    """Sequential reads that never go past the end of the file (which is what FAISS does not check)."""

    def __init__(self, f: BinaryIO, size: int):
        self.f = f
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Malformed(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                             f"but the file ends at {self.size}")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        self.pos += n
        return self.f.read(n)

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n
        self.f.seek(self.pos)

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u64(self, what: str) -> int:
        return self.unpack("Q", what)[0]

    def vector(self, item_size: int, what: str, expect: int | None = None) -> int:
        """Skip a length-prefixed vector whose items are `item_size` bytes; returns its length."""
        n = self.u64(f"the length of {what}")
        if expect is not None and n != expect:
            raise _Malformed(f"{what} has {n} items, expected {expect}")
        self.skip(n * item_size, f"{what} ({n} items)")
        return n

    def u64_array(self, n: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(8 * n, what), dtype="<u8")


def check_index_file(path: str | Path) -> IndexLayout:
    """Check that the FAISS index at `path` is complete and consistent; returns its top-level header.

    Raises `CacheError("<path> is not a readable FAISS index: <why>")` for a truncated file, sizes
    that do not add up, bytes after the end of the index, or an index type the cache does not use.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if size == 0:
                raise _Malformed("the file is empty")
            r = _Reader(f, size)
            layout = _index(r, "the index")
            if r.pos != size:
                raise _Malformed(f"{size - r.pos} unexpected bytes after the end of the index (offset {r.pos})")
    except _Malformed as e:
        raise CacheError(f"{path} is not a readable FAISS index: {e}") from None
    except OSError as e:
        raise CacheError(f"{path} cannot be read: {e.strerror or e}") from None
    return layout


def _index(r: _Reader, what: str) -> IndexLayout:
    fourcc = r.take(4, f"the type code of {what}")
    if fourcc not in SUPPORTED:
        names = ", ".join(s.decode() for s in SUPPORTED)
        raise _Malformed(f"{what} has type code {fourcc.decode('latin-1')!r}, not one the visual cache reads "
                         f"({names})")
    layout = _header(r, fourcc.decode(), what)
    if fourcc in FLAT:
        _flat_vectors(r, layout, what)
    elif fourcc == HNSW_FLAT:
        _hnsw(r, layout)
    else:
        _ivf(r, layout, legacy=fourcc == IVF_FLAT_LEGACY)
    return layout


def _header(r: _Reader, fourcc: str, what: str) -> IndexLayout:
    d, ntotal, reserved1, reserved2, is_trained, metric_type = r.unpack("iqqqBi", f"the header of {what}")
    if not 0 < d <= MAX_DIM:
        raise _Malformed(f"{what} declares dimension {d}, outside 1..{MAX_DIM}")
    if ntotal < 0:
        raise _Malformed(f"{what} declares {ntotal} vectors")
    if (reserved1, reserved2) != (RESERVED, RESERVED):
        raise _Malformed(f"the reserved header fields of {what} are {reserved1}, {reserved2} instead of {RESERVED}")
    if is_trained not in (0, 1):
        raise _Malformed(f"the is_trained flag of {what} is {is_trained}, not 0 or 1")
    if metric_type > 1:  # metrics with a parameter (e.g. Lp) store it after the type
        r.skip(4, f"the metric argument of {what}")
    return IndexLayout(fourcc, d, ntotal, metric_type)


def _flat_vectors(r: _Reader, layout: IndexLayout, what: str) -> None:
    # FAISS counts the bytes of the codes in floats (a leftover of an older format): ntotal * d of them.
    r.vector(4, f"the vectors of {what}", expect=layout.ntotal * layout.d)


def _sub_flat(r: _Reader, what: str, d: int, ntotal: int, metric_type: int) -> None:
    """An IndexFlat nested in an HNSW (its storage) or an IVF (its quantizer), matching its parent."""
    fourcc = r.take(4, f"the type code of {what}")
    if fourcc not in FLAT:
        raise _Malformed(f"{what} has type code {fourcc.decode('latin-1')!r}, expected a flat index")
    sub = _header(r, fourcc.decode(), what)
    if (sub.d, sub.ntotal, sub.metric_type) != (d, ntotal, metric_type):
        raise _Malformed(f"{what} holds {sub.ntotal} x {sub.d} (metric {sub.metric_type}), "
                         f"expected {ntotal} x {d} (metric {metric_type})")
    _flat_vectors(r, sub, what)


def _hnsw(r: _Reader, layout: IndexLayout) -> None:
    n = layout.ntotal
    r.vector(8, "the HNSW level probabilities")
    r.vector(4, "the HNSW neighbours per level")
    r.vector(4, "the HNSW node levels", expect=n)
    r.vector(8, "the HNSW node offsets", expect=n + 1)
    r.vector(4, "the HNSW neighbour lists")
    r.skip(5 * 4, "the HNSW entry point and parameters")
    _sub_flat(r, "the HNSW storage", layout.d, n, layout.metric_type)


def _ivf(r: _Reader, layout: IndexLayout, legacy: bool) -> None:
    nlist, nprobe = r.unpack("QQ", "the IVF list count and nprobe")
    if nlist == 0:
        raise _Malformed("the IVF index declares 0 lists")
    if not 0 < nprobe < 1 << 63:  # FAISS clamps nprobe to nlist, but as a signed count
        raise _Malformed(f"the IVF index declares nprobe {nprobe}")
    _sub_flat(r, "the IVF quantizer", layout.d, nlist, layout.metric_type)
    sizes = []
    if legacy:  # the old format keeps each list's ids here and its codes at the end
        r.need(8 * nlist, f"the lengths of the {nlist} IVF id lists")
        sizes = [r.vector(8, f"the ids of IVF list {i}") for i in range(nlist)]
    _direct_map(r, layout.ntotal)
    if legacy:
        for i, n in enumerate(sizes):
            r.vector(4, f"the vectors of IVF list {i}", expect=n * layout.d)
        stored = sum(sizes)
    else:
        stored = _inverted_lists(r, nlist, code_size=4 * layout.d)
    if stored != layout.ntotal:
        raise _Malformed(f"the IVF lists hold {stored} vectors, but the header declares {layout.ntotal}")


def _direct_map(r: _Reader, ntotal: int) -> None:
    (kind,) = r.unpack("B", "the IVF direct map type")
    if kind not in DIRECT_MAP_TYPES:
        raise _Malformed(f"the IVF direct map type is {kind}, not one of {sorted(DIRECT_MAP_TYPES)}")
    r.vector(8, "the IVF direct map", expect=ntotal if DIRECT_MAP_TYPES[kind] == "array" else 0)
    if DIRECT_MAP_TYPES[kind] == "hashtable":
        r.vector(16, "the IVF direct map table", expect=ntotal)


def _inverted_lists(r: _Reader, nlist: int, code_size: int) -> int:
    """Check the "ilar" inverted lists of an IVF index; returns how many vectors they hold."""
    kind = r.take(4, "the type code of the IVF lists")
    if kind != b"ilar":
        reason = "none are stored" if kind == b"il00" else f"type code {kind.decode('latin-1')!r}"
        raise _Malformed(f"the IVF inverted lists are not stored in the file ({reason})")
    lists, stored_code_size = r.unpack("QQ", "the IVF list header")
    if (lists, stored_code_size) != (nlist, code_size):
        raise _Malformed(f"the IVF lists declare {lists} lists of {stored_code_size}-byte codes, "
                         f"expected {nlist} of {code_size}")
    layout = r.take(4, "the IVF list size layout")
    n = r.u64("the length of the IVF list sizes")
    if layout == b"full":
        if n != nlist:
            raise _Malformed(f"the IVF list sizes have {n} entries, expected {nlist}")
        sizes = r.u64_array(n, "the IVF list sizes")
    elif layout == b"sprs":  # (list number, size) pairs of the non-empty lists
        if n % 2 or n > 2 * nlist:
            raise _Malformed(f"the sparse IVF list sizes have {n} entries, expected an even number <= {2 * nlist}")
        pairs = r.u64_array(n, "the sparse IVF list sizes").reshape(-1, 2)
        if (pairs[:, 0] >= nlist).any():
            raise _Malformed(f"the sparse IVF list sizes name a list >= {nlist}")
        sizes = np.zeros(nlist, dtype=np.uint64)
        sizes[pairs[:, 0]] = pairs[:, 1]  # a repeated list keeps its last size, as in FAISS
    else:
        raise _Malformed(f"the IVF list size layout is {layout.decode('latin-1')!r}, not 'full' or 'sprs'")
    # Python integers: a corrupt size cannot overflow the sum.
    stored = sum(int(s) for s in sizes)
    r.skip(stored * (code_size + 8), f"the codes and ids of the {stored} IVF vectors")
    return stored
