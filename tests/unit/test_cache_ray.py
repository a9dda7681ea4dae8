"""The Ray build's pieces that need no cluster: its deadline, its errors, and its stages on files that vanish."""

from __future__ import annotations

import json
import threading
import time

import pytest

pa = pytest.importorskip("pyarrow", reason="the `ray` extra is not installed")

from ibllm_agent.cache.base import CacheError  # noqa: E402
from ibllm_agent.cache.ray_data import _decode_batch, _hash_batch, _within  # noqa: E402
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
