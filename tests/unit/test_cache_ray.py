"""The Ray build's pieces that need no cluster: its deadline, its errors, and its stages on files that vanish."""

from __future__ import annotations

import json
import threading
import time

import pytest

pa = pytest.importorskip("pyarrow", reason="the `ray` extra is not installed")

from ibllm_agent.cache.base import CacheError  # noqa: E402
from ibllm_agent.cache.ray_data import _decode_batch, _Embedder, _hash_batch, _within  # noqa: E402
from ibllm_agent.ray_cluster import ClusterError, check_reachable  # noqa: E402


def test_a_build_that_makes_no_progress_stops_at_its_deadline():
    never = threading.Event()

    def stuck():
        yield "first batch"
        never.wait()  # a cluster whose resources never free
        yield "never"

    started = time.monotonic()
    batches = _within(stuck(), time.monotonic() + 0.5)
    assert next(batches) == "first batch"
    with pytest.raises(CacheError, match="did not finish within its deadline"):
        next(batches)
    assert time.monotonic() - started < 5
    never.set()


def test_a_failing_pipeline_is_a_cluster_error_with_its_cause():
    def lost():
        yield 1
        raise RuntimeError("ray.exceptions.NodeDiedError:\n the node running this task died")

    with pytest.raises(ClusterError, match=r"\(RuntimeError\): ray.exceptions.NodeDiedError: the node running"):
        list(_within(lost(), None))


def test_files_gone_between_listing_and_the_stages_are_reported_per_file(tmp_path):
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"some bytes")
    gone = str(tmp_path / "gone.png")
    hashed = _hash_batch(pa.table({"position": [0, 1], "path": [str(kept), gone]})).to_pylist()
    assert len(hashed[0]["id"]) == 64 and hashed[0]["error"] == ""
    assert hashed[1]["id"] == "" and "No such file" in hashed[1]["error"]

    decoded = _decode_batch(pa.table({"id": ["x"], "position": [1], "path": [gone], "modality": [""],
                                      "caption": [""], "extra": [json.dumps({})]}), modalities=["image"]).to_pylist()
    assert decoded[0]["error"] and gone in decoded[0]["error"] and not decoded[0]["skipped"]


@pytest.mark.parametrize("address", ["", "host:port", "ray://:10001"])
def test_a_malformed_cluster_address_is_refused_before_any_connection(address):
    with pytest.raises(ClusterError, match="a Ray address looks like host:port"):
        check_reachable(address)


@pytest.mark.parametrize(("threads", "actors", "expected"), [(0, 1, "cores"), (0, 64, 1), (3, 1, 3)])
def test_an_embedding_actor_on_the_cpu_uses_its_share_of_the_cores(threads, actors, expected):
    """Ray gives an actor as many torch threads as CPUs it reserved (1); encode-bound media (points, video) then
    ran at half the single process's rate on 2 cores."""
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _Embedder("toy", {}, threads, actors)
        cores = len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == (cores if expected == "cores" else expected)
    finally:
        torch.set_num_threads(before)


def test_an_actor_call_holds_at_most_call_bytes_of_decoded_input(tmp_path, monkeypatch):
    """A batch of 64 videos is 1.2 GB of clips: the actor encodes it in model calls of at most CALL_BYTES, and
    the vectors are those of one call over the whole batch."""
    import numpy as np

    from ibllm_agent.cache import ray_data
    from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld

    world = ToyWorld()
    for i in range(5):
        world.write(CONCEPT_NAMES[i], "image", i, tmp_path)
    rows = [{"id": f"id{i}", "position": i, "path": str(f), "modality": "", "caption": "", "extra": "{}"}
            for i, f in enumerate(sorted(tmp_path.iterdir()))]
    decoded = _decode_batch(pa.Table.from_pylist(rows), modalities=["image"])
    embedder = _Embedder("toy", {}, 1, 1)
    whole = embedder(decoded)["vector"]
    calls = []
    encode = embedder.llm.encode
    embedder.llm.encode = lambda inputs: calls.append(len(inputs)) or encode(inputs)
    monkeypatch.setattr(ray_data, "CALL_BYTES", 2 * 3 * 224 * 224 * 4)  # two decoded images
    chunked = embedder(decoded)["vector"]
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert np.abs(whole).sum(axis=1).min() > 0
