"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on 127.0.0.1 for one test module: a head with 2 CPUs and one extra node with 1 CPU, each
    with its own raylet and a small object store; shut down after the module."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed")
    from ibllm_agent.ray_cluster import LocalCluster

    with LocalCluster(head_cpus=2, workers=1, worker_cpus=1) as c:
        yield c
