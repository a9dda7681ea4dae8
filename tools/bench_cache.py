"""Visual cache benchmark: ingest vectors/s, query latency p50/p95 and recall@10 against exact search.

    python tools/bench_cache.py --sizes 10000 100000 --data random clustered \
        --backends faiss-flat faiss-hnsw faiss-ivf chroma-default chroma-tuned --out bench.md

Data are unit vectors of dim 1024, generated chunk by chunk from a seed, never held whole:
* random:    isotropic Gaussian directions (the hardest case for graph and cell indexes);
* clustered: "ImageBind-like": 64-dimensional latent points around 1,000 centres, mapped into
             1024 dimensions by a fixed random basis, plus 10 % isotropic noise, normalised.
Queries are 200 fresh draws of the same distribution (not stored), searched one at a time (k=10).
Exact top-10 is computed by streaming the chunks. Latencies come from one run on a shared machine:
compare rows of the same run, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ibllm_agent.cache.chroma import ChromaCache, ChromaHnsw, connect
from ibllm_agent.cache.faiss import FaissCache, FaissOptions

logger = logging.getLogger("bench_cache")

DIM = 1024
CHUNK = 5000
K = 10


@dataclass
class Row:
    """One line of the result table."""

    data: str
    n: int
    backend: str
    setting: str
    ingest_per_s: float | None
    p50_ms: float
    p95_ms: float
    recall10: float


class Dataset:
    """A seeded stream of unit vectors; the same (kind, seed) always yields the same chunks."""

    def __init__(self, kind: str, seed: int = 0, dim: int = DIM):
        self.kind, self.seed, self.dim = kind, seed, dim
        if kind == "clustered":
            rng = np.random.default_rng(1234)
            self.basis = rng.standard_normal((64, dim)).astype(np.float32) / 8.0  # (64, D)
            self.centres = rng.standard_normal((1000, 64)).astype(np.float32)  # (C, 64)

    def draw(self, n: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream])
        if self.kind == "random":
            x = rng.standard_normal((n, self.dim), dtype=np.float32)
        else:
            latent = self.centres[rng.integers(0, len(self.centres), n)]
            latent = latent + 0.5 * rng.standard_normal((n, 64), dtype=np.float32)  # (n, 64)
            x = latent @ self.basis  # (n, D)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            x += 0.1 / np.sqrt(self.dim) * rng.standard_normal((n, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        for i, lo in enumerate(range(0, n, CHUNK)):
            yield self.draw(min(CHUNK, n - lo), stream=i)

    def queries(self, n: int = 200) -> np.ndarray:
        return self.draw(n, stream=10**6)


def exact_top10(data: Dataset, n: int, queries: np.ndarray) -> np.ndarray:
    """Positions of the exact top-10 per query, streaming over the chunks."""
    best_s = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), K), dtype=np.int64)
    offset = 0
    for chunk in data.chunks(n):
        s = queries @ chunk.T  # (Q, c)
        cs = np.concatenate([best_s, s], axis=1)
        ci = np.concatenate([best_i, offset + np.arange(len(chunk))[None].repeat(len(queries), 0)], axis=1)
        top = np.argsort(-cs, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cs, top, 1), np.take_along_axis(ci, top, 1)
        offset += len(chunk)
    return best_i


def timed_queries(search, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    lat, hits = [], 0
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        got = search(q[None])
        lat.append(time.perf_counter() - t0)
        hits += len(set(got) & set(t.tolist()))
    lat_ms = np.array(lat) * 1e3
    return float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 95)), hits / truth.size


def bench_faiss(data: Dataset, n: int, kind: str, queries, truth, sweep: list[int], hnsw_m: int,
                hnsw_efc: int) -> list[Row]:
    options = FaissOptions(kind=kind, nlist=max(16, int(np.sqrt(n))) if kind == "ivf" else None, hnsw_m=hnsw_m,
                           ef_construction=hnsw_efc)
    t0 = time.perf_counter()
    train = data.draw(min(n, 40 * options.nlist), stream=2 * 10**6) if kind == "ivf" else None
    cache = FaissCache.create(DIM, options, train_vectors=train)
    for chunk in data.chunks(n):
        cache.add(chunk)
    rate = n / (time.perf_counter() - t0)
    rows = []
    for value in sweep or [0]:
        cache.set_search_params(ef_search=value or None, nprobe=value or None)
        def search(q):
            return [int(i) for i in cache.search(q, K).ids[0]]
        p50, p95, rec = timed_queries(search, queries, truth)
        setting = {"flat": "exact", "hnsw": f"M={hnsw_m} efC={hnsw_efc} efSearch={value}", "ivf": f"nlist={options.nlist} "
                   f"nprobe={value}"}[kind]
        rows.append(Row(data.kind, n, f"faiss-{kind}", setting, rate, p50, p95, rec))
        logger.info("%s", rows[-1])
    return rows


def bench_chroma(data: Dataset, n: int, name: str, hnsw: ChromaHnsw, queries, truth, workdir: Path,
                 candidates: list[int]) -> list[Row]:
    path = Path(tempfile.mkdtemp(prefix=f"chroma-{name}-", dir=workdir))
    client = connect(path)
    cache = ChromaCache.open("bench", client=client, hnsw=hnsw, search="hnsw")
    t0 = time.perf_counter()
    offset = 0
    for chunk in data.chunks(n):
        cache.add(chunk, ids=[str(offset + i) for i in range(len(chunk))])
        offset += len(chunk)
    rate = n / (time.perf_counter() - t0)
    rows = []
    setting = f"M={hnsw.max_neighbors} efC={hnsw.ef_construction} efS={hnsw.ef_search}"
    raw = cache.collection
    def raw_search(q):
        return [int(i) for i in raw.query(query_embeddings=q, n_results=K, include=[])["ids"][0]]
    rows.append(Row(data.kind, n, f"chroma-{name}", setting + " raw query k=10", rate,
                    *timed_queries(raw_search, queries, truth)))
    logger.info("%s", rows[-1])
    for c in candidates:
        cache.candidates = c
        def search(q):
            return [int(i) for i in cache.search(q, K).ids[0]]
        rows.append(Row(data.kind, n, f"chroma-{name}", setting + (f" ChromaCache {c} cand." if c else " ChromaCache k=10"), rate,
                        *timed_queries(search, queries, truth)))
        logger.info("%s", rows[-1])
    client.clear_system_cache()  # Chroma keeps one system per path alive otherwise
    shutil.rmtree(path, ignore_errors=True)
    return rows


def chroma_settings(backend: str) -> ChromaHnsw:
    """chroma-default, chroma-tuned, chroma-fast, or chroma-m<M>-c<efC>-s<efS> for a sweep."""
    if backend == "chroma-default":
        return ChromaHnsw.chroma_defaults()
    if backend == "chroma-tuned":
        return ChromaHnsw()
    if backend == "chroma-fast":
        return ChromaHnsw.fast_ingest()
    values = {part[0]: int(part[1:]) for part in backend.split("-")[1:]}
    return ChromaHnsw(max_neighbors=values["m"], ef_construction=values["c"], ef_search=values["s"])


def markdown(rows: list[Row]) -> str:
    lines = ["| data | n | backend | setting | ingest vec/s | p50 ms | p95 ms | recall@10 |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        rate = f"{r.ingest_per_s:,.0f}" if r.ingest_per_s else "-"
        lines.append(f"| {r.data} | {r.n:,} | {r.backend} | {r.setting} | {rate} | {r.p50_ms:.2f} | "
                     f"{r.p95_ms:.2f} | {r.recall10:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--data", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    parser.add_argument("--backends", nargs="+", default=["faiss-flat", "faiss-hnsw", "faiss-ivf",
                                                          "chroma-default", "chroma-tuned"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--hnsw-m", type=int, default=FaissOptions.hnsw_m)
    parser.add_argument("--hnsw-efc", type=int, default=FaissOptions.ef_construction)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, help="append the markdown table here (rows also go to OUT.jsonl as "
                        "they are measured)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    rows: list[Row] = []
    jsonl = args.out.with_suffix(".jsonl") if args.out else None
    for kind in args.data:
        data = Dataset(kind)
        queries = data.queries(args.queries)
        for n in args.sizes:
            truth = exact_top10(data, n, queries)
            for backend in args.backends:
                if backend.startswith("faiss-"):
                    sweep = {"flat": [], "hnsw": args.ef_search, "ivf": args.nprobe}[backend[6:]]
                    rows += bench_faiss(data, n, backend[6:], queries, truth, sweep, args.hnsw_m, args.hnsw_efc)
                else:
                    hnsw = chroma_settings(backend)
                    rows += bench_chroma(data, n, backend[7:], hnsw, queries, truth, args.workdir,
                                         args.candidates)
                if jsonl:
                    with jsonl.open("a") as f:
                        f.writelines(json.dumps(r.__dict__) + "\n" for r in rows if r.backend == backend and r.n == n
                                     and r.data == kind)
    table = markdown(rows)
    print(table)
    if args.out:
        with args.out.open("a") as f:
            f.write(table + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
