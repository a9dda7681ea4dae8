"""`ibllm cache build --ray` on a real Ray cluster on 127.0.0.1 (a head and one extra node, small object
stores): ~2,000 toy files of every medium into a real `chroma run` server give the same ids, vectors and
metadata as the single-process build; the extra node killed mid-run, and a rerun stores exactly the missing
items; `--faiss` writes the single-process build's index, and files that cannot be used are reported; bad
input fails fast and clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the `ray` extra is not installed")

from chroma_process import CHROMA, Server  # noqa: E402

from ibllm_agent.cache.chroma import connect  # noqa: E402
from ibllm_agent.cache.faiss import FaissCache  # noqa: E402
from ibllm_agent.cache.faiss_shards import shard_folder  # noqa: E402
from ibllm_agent.ray_cluster import LOOPBACK_ENV, LocalCluster  # noqa: E402
from ibllm_agent.serve.process import checkout_pythonpath, free_port  # noqa: E402
from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMA.is_file(), reason=f"the chroma CLI is not installed at {CHROMA}")

COUNTS = {"image": 400, "audio": 300, "video": 100, "point": 300, "depth": 300, "thermal": 300, "imu": 300}
"""~2,000 files of every medium the toy world renders; fewer videos, the dearest to render and to embed."""
SMALL = 8
"""Files per medium of the FAISS builds' folder."""
ENV = {**os.environ, "PYTHONPATH": checkout_pythonpath(), **LOOPBACK_ENV}


@pytest.fixture(scope="module")
def cluster():
    """The module's cluster (a head with 2 CPUs, one extra node with 1 CPU) with object stores that hold a few
    batches of decoded videos (18 MB each): with the 80 MB stores of the other tests Ray spills them to disk,
    and the 2,000-file build took 132 s instead of 46 s."""
    with LocalCluster(head_cpus=2, workers=1, worker_cpus=1, object_store_bytes=400 << 20) as c:
        yield c


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chroma")
    server = Server(folder / "data", folder / "chroma.log")
    server.start()
    yield server.url
    server.stop()


def _render(job: tuple[str, int, str]) -> None:
    modality, index, folder = job
    ToyWorld().write(CONCEPT_NAMES[index % len(CONCEPT_NAMES)], modality, index, Path(folder))


def write_media(folder: Path, counts: dict[str, int]) -> Path:
    """Toy files (rendered on every core), one of them twice (one id), and inputs a build cannot use: one that
    does not decode, a dangling link, a FIFO."""
    jobs = [(modality, i, str(folder)) for modality, n in counts.items() for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_render, jobs, chunksize=32))
    shutil.copy(next(folder.glob("*_image_*.png")), folder / "copy.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a picture" * 50)
    (folder / "gone.wav").symlink_to(folder / "missing.wav")
    os.mkfifo(folder / "pipe.wav")
    return folder


UNUSABLE = {"broken.png", "gone.wav", "pipe.wav"}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    started = time.monotonic()
    folder = write_media(tmp_path_factory.mktemp("ray-media"), COUNTS)
    print(f"\n{sum(COUNTS.values())} files written in {time.monotonic() - started:.1f} s")
    return folder


@pytest.fixture(scope="module")
def single(chroma, media):
    """The single-process `ibllm cache build` of `media` into the collection "single": (its report, what it
    stored); the reference of every Ray build of the module, computed once."""
    started = time.monotonic()
    code, report, err = build(str(media), "--url", chroma, "--collection", "single")
    print(f"single-process build: {time.monotonic() - started:.1f} s")
    assert code == 0, err
    return report, stored(chroma, "single")


def build(*args: str, timeout: float = 600) -> tuple[int, dict | None, str]:
    """`ibllm cache build ARGS` in a child process -> (exit status, its JSON report, stderr)."""
    run = subprocess.run([sys.executable, "-m", "ibllm_agent.cli", "cache", "build", *args], env=ENV,
                         capture_output=True, text=True, timeout=timeout)
    return run.returncode, json.loads(run.stdout) if run.returncode == 0 else None, run.stderr


def stored(url: str, name: str) -> dict[str, tuple[np.ndarray, dict]]:
    page = connect(url=url).get_collection(name).get(include=["embeddings", "metadatas"])
    return {i: (np.asarray(v), m) for i, v, m in zip(page["ids"], page["embeddings"], page["metadatas"])}


def count(url: str, name: str) -> int:
    client = connect(url=url)
    return client.get_collection(name).count() if name in [c.name for c in client.list_collections()] else 0


@pytest.mark.slow
def test_ray_build_equals_the_single_process_build_and_a_rerun_after_a_lost_node_completes(cluster, chroma, media,
                                                                                          single):
    reference, expected = single
    total = sum(COUNTS.values())
    assert reference["added"] == total and reference["unique"] == total + 1  # broken.png: hashed, not decoded
    assert {os.path.basename(path) for path, _ in reference["failed"]} == UNUSABLE

    ray_args = [str(media), "--ray", "--address", cluster.address, "--url", chroma, "--collection", "ray",
                "--batch-size", "16", "--write-batch", "32", "--timeout", "400"]
    started = time.monotonic()
    first = subprocess.Popen([sys.executable, "-m", "ibllm_agent.cli", "cache", "build", *ray_args], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 400
    while count(chroma, "ray") < total // 4 and first.poll() is None and time.monotonic() < end:
        time.sleep(0.2)
    at_kill, killed_at = count(chroma, "ray"), time.monotonic() - started
    cluster.kill_workers()  # its decode tasks, maybe the embedding actor, and the blocks it held are lost
    try:
        first.wait(timeout=430)
        print(f"first Ray build: {time.monotonic() - started:.1f} s, exit {first.returncode}, {at_kill} stored when "
              f"the node was killed at {killed_at:.1f} s")
        assert at_kill < total, "the build ended before the node was killed; give it more files"

        started = time.monotonic()
        code, rerun, err = build(*ray_args)
        assert code == 0, err
        print(f"rerun: {time.monotonic() - started:.1f} s, {rerun['added']} added")
    finally:
        cluster.add_worker()  # for the module's other tests
    assert rerun["already_present"] + rerun["added"] + 1 == rerun["unique"] == reference["unique"]
    assert sorted(rerun["failed"]) == sorted(reference["failed"])

    got = stored(chroma, "ray")
    assert count(chroma, "ray") == len(got) == total  # nothing stored twice, nothing lost
    assert got.keys() == expected.keys()
    for item_id, (vector, meta) in expected.items():
        np.testing.assert_allclose(got[item_id][0], vector, atol=1e-5, rtol=0)
        assert got[item_id][1] == meta


@pytest.mark.slow
def test_ray_faiss_build_writes_the_single_process_index_and_reports_the_unusable_files(cluster, tmp_path):
    media = write_media(tmp_path / "media", dict.fromkeys(COUNTS, SMALL))
    out = {"single": tmp_path / "single" / "knn.index", "ray": tmp_path / "ray" / "knn.index"}
    started = time.monotonic()
    code, single, err = build(str(media), "--faiss", str(out["single"]))
    assert code == 0, err
    print(f"single-process FAISS build: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    code, ray, err = build(str(media), "--ray", "--address", cluster.address, "--faiss", str(out["ray"]),
                           "--timeout", "300")  # the default batch (64): every file in one decode task and call
    assert code == 0, err
    print(f"Ray FAISS build: {time.monotonic() - started:.1f} s")

    total = SMALL * len(COUNTS)
    assert ray["count"] == ray["added"] == single["added"] == total and ray["unique"] == total + 1
    assert sorted(ray["failed"]) == sorted(single["failed"])
    reasons = {os.path.basename(path): reason for path, reason in ray["failed"]}
    assert reasons.keys() == UNUSABLE
    assert "dangling symlink" in reasons["gone.wav"] and "FIFO" in reasons["pipe.wav"]
    assert not shard_folder(out["ray"]).exists()
    (want_ids, want, want_metas), (got_ids, got, got_metas) = (
        next(FaissCache.load(path).iter_batches(total)) for path in (out["single"], out["ray"]))
    assert got_ids == want_ids and got_metas == want_metas  # the same items in the same (listing) order
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_unreachable_cluster_or_chroma_and_a_missing_model_fail_clearly(cluster, chroma, media):
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, _, err = build(str(media), "--ray", "--address", cluster.address, "--url", f"http://{nobody}",
                         "--collection", "x1", timeout=120)
    assert code == 2 and "cannot reach the Chroma server" in err
    code, _, err = build(str(media), "--ray", "--address", nobody, "--url", chroma, "--collection", "x2",
                         timeout=120)
    assert code == 2 and f"cannot reach the Ray cluster at {nobody}" in err
    assert time.monotonic() - started < 60
    code, _, err = build(str(media), "--ray", "--address", cluster.address, "--url", chroma, "--collection", "x3",
                         "--model", "/nonexistent/adapter.pth", "--timeout", "120", timeout=180)
    assert code == 2 and "could not load the model '/nonexistent/adapter.pth'" in err, err
