"""Attacks on FaissCache.load with damaged index files: truncations and byte flips never crash.

FAISS's memory-mapped reader dies with SIGSEGV on some truncated files, so every load runs in a
worker subprocess; a worker killed by a signal is reported with the file it was loading and
restarted on the next one. Each file must give a `CacheError` naming it (or, for a flip FAISS
does not care about, such as one inside a vector, load and search normally).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from ibllm_agent.cache import CacheError
from ibllm_agent.cache.faiss import FaissCache, FaissOptions
from ibllm_agent.cache.faiss_file import check_index_file

ROOT = Path(__file__).resolve().parents[2]
TOY_INDEX = ROOT / "ibllm_agent" / "assets" / "toy" / "knn.index"

# Loads each "<mmap 0|1>\t<path>" line of stdin; one result line per file, flushed before the next
# file, so that a crash is pinned on the file after the last result.
WORKER = r"""
import sys
import numpy as np
from ibllm_agent.cache import CacheError
from ibllm_agent.cache.faiss import FaissCache
for line in sys.stdin:
    mmap, path = line.rstrip("\n").split("\t")
    try:
        cache = FaissCache.load(path, dim=None, mmap=mmap == "1")
        if len(cache):
            cache.search(np.ones((1, cache.dim), np.float32), 3)
        print("ok\t", flush=True)
    except CacheError as e:
        print("typed\t" + " ".join(str(e).split()), flush=True)
    except Exception as e:
        print("untyped\t" + type(e).__name__ + ": " + " ".join(str(e).split())[:300], flush=True)
"""


def load_all(cases: list[tuple[bool, Path]]) -> list[tuple[str, str]]:
    """(outcome, message) per case: "ok", "typed" (CacheError), "untyped" or "crash" (killed by a signal)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    results: list[tuple[str, str]] = []
    while len(results) < len(cases):
        todo = cases[len(results):]
        proc = subprocess.run([sys.executable, "-c", WORKER], input="".join(f"{int(m)}\t{p}\n" for m, p in todo),
                              capture_output=True, text=True, env=env, timeout=120)
        results += [tuple(line.split("\t", 1)) for line in proc.stdout.splitlines()]
        if proc.returncode != 0:  # the worker died on the next case
            results.append(("crash", f"exit {proc.returncode}: {proc.stderr[-300:]}"))
    return results


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def legacy_ivf(ivf: FaissCache) -> bytes:
    """The same IVF index in FAISS's legacy "IvFl" layout (FAISS still reads it, but no longer writes it)."""
    index, d = ivf.index, ivf.dim
    with open(ivf.path, "rb") as f:  # header, nlist, nprobe and the flat quantizer are unchanged
        head = f.read(4 + 33 + 16 + 4 + 33 + 8 + 4 * d * index.nlist)[4:]
    lists = index.invlists
    sizes = [lists.list_size(i) for i in range(index.nlist)]
    ids = [faiss.rev_swig_ptr(lists.get_ids(i), n).copy() for i, n in enumerate(sizes)]
    codes = [faiss.rev_swig_ptr(lists.get_codes(i), n * 4 * d).copy() for i, n in enumerate(sizes)]

    def vector(a: np.ndarray, count: int) -> bytes:
        return struct.pack("<Q", count) + a.tobytes()

    no_direct_map = b"\x00" + struct.pack("<Q", 0)
    return (b"IvFl" + head + b"".join(vector(i, len(i)) for i in ids) + no_direct_map
            + b"".join(vector(c, len(c) // 4) for c in codes))


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, Path]:
    """Small valid indexes of every layout FaissCache reads (plus the toy knn.index)."""
    folder = tmp_path_factory.mktemp("indexes")
    x = unit_vectors(200, 16)
    paths = {"toy": folder / "toy.index"}
    shutil.copyfile(TOY_INDEX, paths["toy"])
    for name, options in [("flat", FaissOptions()), ("hnsw", FaissOptions(kind="hnsw", hnsw_m=4)),
                          ("ivf", FaissOptions(kind="ivf", nlist=8, nprobe=4))]:
        paths[name] = FaissCache.from_vectors(x, options=options).save(folder / f"{name}.index")
    # Few vectors in many lists: FAISS stores the list sizes as sparse (list, size) pairs.
    sparse = FaissCache.create(16, FaissOptions(kind="ivf", nlist=32), train_vectors=x)
    sparse.add(x[:5])
    paths["ivf-sparse"] = sparse.save(folder / "ivf-sparse.index")
    paths["ivf-legacy"] = folder / "ivf-legacy.index"
    paths["ivf-legacy"].write_bytes(legacy_ivf(FaissCache.load(paths["ivf"], dim=None, mmap=False)))
    return paths


def test_every_layout_loads_and_the_legacy_ivf_matches(indexes):
    expected = {"toy": ("IxFI", 1024), "flat": ("IxFI", 16), "hnsw": ("IHNf", 16), "ivf": ("IwFl", 16),
                "ivf-sparse": ("IwFl", 16), "ivf-legacy": ("IvFl", 16)}
    for name, path in indexes.items():
        layout = check_index_file(path)
        assert (layout.fourcc, layout.d, layout.metric_type) == (*expected[name], 0), name
        assert len(FaissCache.load(path, dim=None)) == layout.ntotal
    q = unit_vectors(4, 16, seed=1)
    ivf, legacy = (FaissCache.load(indexes[n], dim=None) for n in ("ivf", "ivf-legacy"))
    assert ivf.search(q, 5).ids == legacy.search(q, 5).ids


def unreadable(path: Path, reason: str) -> str:
    """The `match` pattern of the CacheError for an index file that is refused."""
    return re.escape(f"{path} is not a readable FAISS index: ") + ".*" + re.escape(reason)


def test_trailing_bytes_and_unsupported_types_are_refused(tmp_path, indexes):
    extra = tmp_path / "extra.index"
    extra.write_bytes(indexes["flat"].read_bytes() + b"\0")
    with pytest.raises(CacheError, match=unreadable(extra, "1 unexpected bytes after the end")):
        FaissCache.load(extra, dim=None)
    pq = faiss.IndexPQ(16, 2, 8, faiss.METRIC_INNER_PRODUCT)
    pq.train(unit_vectors(300, 16))
    faiss.write_index(pq, str(tmp_path / "pq.index"))
    with pytest.raises(CacheError, match=unreadable(tmp_path / "pq.index", "type code 'IxPq', not one")):
        FaissCache.load(tmp_path / "pq.index", dim=None)


def cut_points(size: int, rng: random.Random) -> list[int]:
    """Every length up to 64 bytes (the headers), then a sample of larger ones up to size - 1."""
    return sorted({*range(min(65, size)), *rng.sample(range(65, size), min(20, size - 65)), size - 1})


def test_truncated_indexes_give_a_typed_error_never_a_crash(tmp_path, indexes):
    rng = random.Random(0)
    cases, files = [], []
    for name, path in indexes.items():
        data = path.read_bytes()
        for n in cut_points(len(data), rng):
            cut = tmp_path / f"{name}-{n}.index"
            cut.write_bytes(data[:n])
            files.append(cut)
            cases += [(True, cut), (False, cut)]
    results = load_all(cases)
    bad = [(str(p), "mmap" if m else "read", r) for (m, p), r in zip(cases, results)
           if r[0] != "typed" or not r[1].startswith(f"{p} is not a readable FAISS index: ")]
    assert not bad, f"{len(bad)} of {len(cases)} truncated loads did not raise a CacheError naming the file: {bad[:5]}"
    assert len(files) > 6 * 65


def header_offsets(data: bytes) -> list[int]:
    """The header bytes of the index and of the indexes and lists nested in it (HNSW storage, IVF
    quantizer and lists): 128 bytes from the start and 64 from each nested type code."""
    starts = [0] + [i for code in (b"IxFI", b"ilar") for i in range(4, len(data)) if data.startswith(code, i)]
    return sorted({o for s in starts for o in range(s, min(s + (128 if s == 0 else 64), len(data)))})


def test_header_byte_flips_never_crash(tmp_path, indexes):
    rng = random.Random(1)
    cases = []
    for name, path in indexes.items():
        data = path.read_bytes()
        for offset in header_offsets(data):
            for mask in (0xFF, rng.randrange(1, 255)):
                flipped = bytearray(data)
                flipped[offset] ^= mask
                case = tmp_path / f"{name}-{offset}-{mask}.index"
                case.write_bytes(flipped)
                cases.append((rng.random() < 0.5, case))
    results = load_all(cases)
    bad = [(str(p), "mmap" if m else "read", r) for (m, p), r in zip(cases, results)
           if r[0] == "typed" and not r[1].startswith(str(p)) or r[0] not in ("typed", "ok")]
    assert not bad, f"{len(bad)} of {len(cases)} flipped headers crashed or raised another error: {bad[:5]}"
    assert sum(r[0] == "typed" for r in results) > len(cases) // 2


def test_cli_reports_the_truncated_toy_index_of_the_issue(tmp_path):
    cut = tmp_path / "cut.index"
    cut.write_bytes(TOY_INDEX.read_bytes()[:30])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "ibllm_agent.cli", "cache", "stats", "--faiss", str(cut)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {cut} is not a readable FAISS index: truncated" in proc.stderr
