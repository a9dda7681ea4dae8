"""tools/bench_cache.py stays runnable: a tiny run produces a table with exact recall for exact search."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_cache", ROOT / "tools" / "bench_cache.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cache"] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_datasets_are_seeded_unit_vectors_and_truth_is_exact():
    bench = load_bench()
    for kind in ("random", "clustered"):
        data = bench.Dataset(kind)
        a = np.concatenate(list(data.chunks(6_000)))
        np.testing.assert_array_equal(a, np.concatenate(list(bench.Dataset(kind).chunks(6_000))))
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
        q = data.queries(3)
        truth = bench.exact_top10(data, 6_000, q)
        np.testing.assert_array_equal(truth, np.argsort(-(q @ a.T), axis=1)[:, :10])


def test_tiny_run_writes_table(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench.md"
    assert bench.main(["--sizes", "300", "--data", "clustered", "--queries", "5", "--backends", "faiss-flat",
                       "faiss-hnsw", "chroma-m8-c32-s64", "--ef-search", "32", "--candidates", "80",
                       "--workdir", str(tmp_path), "--out", str(out)]) == 0
    table = out.read_text()
    assert "| clustered | 300 | faiss-flat | exact |" in table and "chroma-m8-c32-s64" in table
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["recall10"] == 1.0
