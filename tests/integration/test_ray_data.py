"""`ibllm cache build --ray` on a real Ray cluster on 127.0.0.1 (a head and one extra node, small object
stores) into a real `chroma run` server: the same ids, vectors and metadata as the single-process build; the
extra node killed mid-run, and a rerun stores exactly the missing items; bad input fails fast and clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("ray", reason="the `ray` extra is not installed")

from chroma_process import CHROMA, Server  # noqa: E402

from ibllm_agent.cache.chroma import connect  # noqa: E402
from ibllm_agent.ray_cluster import LOOPBACK_ENV, PACKAGE_ROOT  # noqa: E402
from ibllm_agent.serve.process import free_port  # noqa: E402
from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMA.is_file(), reason=f"the chroma CLI is not installed at {CHROMA}")

PER_MODALITY = 30
MEDIA = ("image", "audio", "video", "point")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))
                                                   if p), **LOOPBACK_ENV}


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chroma")
    server = Server(folder / "data", folder / "chroma.log")
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Toy files of every medium, one of them twice (one id), one that does not decode, one dangling link."""
    folder = tmp_path_factory.mktemp("ray-media")
    world = ToyWorld()
    for i in range(PER_MODALITY):
        for modality in MEDIA:
            world.write(CONCEPT_NAMES[i % len(CONCEPT_NAMES)], modality, i, folder)
    shutil.copy(next(folder.glob("*_image_*.png")), folder / "copy.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a picture" * 50)
    (folder / "gone.wav").symlink_to(folder / "missing.wav")
    return folder


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
def test_ray_build_equals_the_single_process_build_and_a_rerun_after_a_lost_node_completes(cluster, chroma, media):
    started = time.monotonic()
    code, single, err = build(str(media), "--url", chroma, "--collection", "single")
    print(f"single-process build: {time.monotonic() - started:.1f} s")
    assert code == 0, err
    total = 4 * PER_MODALITY
    assert single["added"] == total and single["unique"] == total + 1  # broken.png: hashed, then not decoded

    ray_args = [str(media), "--ray", "--address", cluster.address, "--url", chroma, "--collection", "ray",
                "--batch-size", "8", "--write-batch", "8", "--timeout", "300"]
    first = subprocess.Popen([sys.executable, "-m", "ibllm_agent.cli", "cache", "build", *ray_args], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 300
    while count(chroma, "ray") < total // 4 and first.poll() is None and time.monotonic() < end:
        time.sleep(0.2)
    at_kill = count(chroma, "ray")
    cluster.kill_workers()  # its decode tasks, maybe the embedding actor, and the blocks it held are lost
    first.wait(timeout=330)
    print(f"first Ray build: {time.monotonic() - started:.1f} s, exit {first.returncode}, {at_kill} stored when the "
          "node was killed")
    assert at_kill < total, "the build ended before the node was killed; give it more files"

    code, rerun, err = build(*ray_args)
    assert code == 0, err
    print(f"rerun: {time.monotonic() - started:.1f} s")
    assert rerun["already_present"] + rerun["added"] + 1 == rerun["unique"] == single["unique"]
    assert sorted(rerun["failed"]) == sorted(single["failed"])
    assert {os.path.basename(path) for path, _ in single["failed"]} == {"broken.png", "gone.wav"}

    expected, got = stored(chroma, "single"), stored(chroma, "ray")
    assert count(chroma, "ray") == len(got) == total  # nothing stored twice, nothing lost
    assert got.keys() == expected.keys()
    for item_id, (vector, meta) in expected.items():
        np.testing.assert_allclose(got[item_id][0], vector, atol=1e-5, rtol=0)
        assert got[item_id][1] == meta


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
