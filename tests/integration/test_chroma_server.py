"""Crash safety of cache ingest: a real `chroma run` server killed mid-import, and an embedded
build process killed mid-build; both resumed to exactly the unique inputs and the same neighbours."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from chroma_process import CHROMA, Server
from PIL import Image

from ibllm_agent.cache.chroma import ChromaCache, connect
from ibllm_agent.cache.cli import main
from ibllm_agent.cache.faiss import FaissCache

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

pytestmark = pytest.mark.skipif(not CHROMA.is_file(), reason=f"the chroma CLI is not installed at {CHROMA}")


@pytest.fixture()
def server(tmp_path):
    srv = Server(tmp_path / "server-data", tmp_path / "chroma.log")
    yield srv
    srv.stop()


DIM = 128  # the crash tests do not need ImageBind's 1024: smaller payloads keep them fast


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM))
    x = centres[rng.integers(0, 30, n)] + 0.7 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_index(path: Path, x: np.ndarray) -> Path:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    faiss.write_index(index, str(path))
    return path


def top_ids(cache, q, k=10):
    return cache.search(q, k).ids


def test_server_serves_the_same_neighbours_as_faiss(tmp_path, server):
    url = server.start()
    x = clustered(300, seed=5)
    cache = ChromaCache.open("shared", url=url, dim=DIM)
    assert cache.add(x, metadatas=[{"modality": "image", "uri": f"/img/{i}.png"} for i in range(300)]) == 300
    other_process_view = ChromaCache.open("shared", url=url, dim=DIM, create=False)
    q = clustered(10, seed=6)
    reference = FaissCache.from_vectors(x)
    assert top_ids(other_process_view, q) == top_ids(reference, q)
    assert other_process_view.search(q[:1], 1).metadatas[0][0]["uri"].startswith("/img/")
    assert other_process_view.stats()["modalities"] == {"image": 300}


@pytest.mark.slow
def test_server_killed_mid_import_resumes(tmp_path, server):
    url = server.start()
    done = write_index(tmp_path / "done.index", clustered(300, seed=1))
    assert main(["cache", "import-faiss", str(done), "--collection", "done", "--url", url, "--dim", str(DIM)]) == 0
    q = clustered(20, seed=2) * 0.9
    before = {mode: top_ids(ChromaCache.open("done", url=url, dim=DIM, search=mode), q) for mode in ("exact", "hnsw")}

    x = clustered(2000, seed=3)
    big = write_index(tmp_path / "big.index", x)
    ingest = subprocess.Popen([sys.executable, "-m", "ibllm_agent.cache.cli", "cache", "import-faiss", str(big),
                               "--collection", "visual", "--url", url, "--batch-size", "100", "--dim", str(DIM)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = connect(url=url)
    deadline = time.monotonic() + 60
    count = 0
    while count < 400 and time.monotonic() < deadline and ingest.poll() is None:
        time.sleep(0.05)
        names = [c.name for c in watcher.list_collections()]
        count = watcher.get_collection("visual").count() if "visual" in names else 0
    server.stop(signal.SIGKILL)
    assert ingest.wait(timeout=60) != 0, "the import finished before the server was killed; use more vectors"

    url = server.start()
    for mode in ("exact", "hnsw"):
        assert top_ids(ChromaCache.open("done", url=url, dim=DIM, search=mode), q) == before[mode]
    visual = ChromaCache.open("visual", url=url, dim=DIM, create=False)
    partial = len(visual)
    assert 400 <= partial < 2000
    ids, vectors, _ = next(visual.iter_batches(5000))
    np.testing.assert_array_equal(vectors, x[[int(i) for i in ids]])  # what survived is intact

    assert main(["cache", "import-faiss", str(big), "--collection", "visual", "--url", url, "--dim", str(DIM)]) == 0
    assert visual.collection.count() == 2000
    exact = FaissCache.load(big, dim=DIM)
    queries = clustered(20, seed=4)
    visual.search_mode = "exact"
    assert top_ids(visual, queries) == top_ids(exact, queries)
    visual.search_mode = "hnsw"
    sample = np.arange(0, 2000, 20)
    found = [row[0] for row in top_ids(visual, x[sample], 1)]  # HNSW is approximate: allow 2 misses in 100
    assert sum(f == str(i) for f, i in zip(found, sample)) >= 98
    hits = [len(set(a) & set(b)) for a, b in zip(top_ids(visual, queries), top_ids(exact, queries))]
    assert sum(hits) / (10 * len(queries)) >= 0.95


@pytest.mark.slow
def test_embedded_build_killed_mid_build_resumes(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(media / f"p{i:02d}.png")
    for i in range(0, 40, 5):  # 8 byte-identical copies: not new items
        (media / f"copy{i:02d}.png").write_bytes((media / f"p{i:02d}.png").read_bytes())
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "ibllm_agent.cache.cli", "cache", "build", str(media), "--collection", "photos",
           "--path", str(db), "--model", "tiny", "--batch-size", "2"]
    build = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = []

    def read_progress():
        for chunk in iter(lambda: build.stderr.read1(4096), b""):
            progress.extend(int(m) for m in re.findall(rb"encoding:.*?(\d+)/40", chunk))

    threading.Thread(target=read_progress, daemon=True).start()
    deadline = time.monotonic() + 120
    while not (progress and progress[-1] >= 10) and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.02)
    os.kill(build.pid, signal.SIGKILL)
    build.wait(timeout=30)
    assert build.returncode == -signal.SIGKILL, "the build finished before it was killed"

    client = connect(db)
    photos = ChromaCache.open("photos", client=client, create=False)
    partial = len(photos)
    assert 10 <= partial < 40
    client.clear_system_cache()

    assert main(["cache", "build", str(media), "--collection", "photos", "--path", str(db), "--model", "tiny"]) == 0
    photos = ChromaCache.open("photos", path=db, create=False)
    assert len(photos) == 40
    ids, _, metas = next(photos.iter_batches())
    assert sorted(ids) == sorted({m["sha256"] for m in metas}) and len(set(ids)) == 40
    import ibllm_agent
    from ibllm_agent.media import load_media

    model = ibllm_agent.load("tiny")
    feature = model.encode([load_media(media / "p07.png")]).numpy()
    res = photos.search(feature, 3)
    assert res.metadatas[0][0]["uri"] == str((media / "p07.png").resolve())
    assert res.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
