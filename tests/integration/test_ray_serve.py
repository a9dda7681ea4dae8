"""`ibllm serve --ray` on a real Ray cluster on 127.0.0.1 (a head and one extra node, small object stores):
requests spread over two toy replicas and answer as the single-process server does; a replica killed with
SIGKILL is replaced while the other keeps answering, and the retry of its in-flight request succeeds; the
documented Serve config (examples/ray-serve.yaml) deploys and answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray", reason="the `ray` extra is not installed")

from ibllm_agent.ray_cluster import LOOPBACK_ENV, LocalCluster  # noqa: E402
from ibllm_agent.serve.process import ServerProcess, free_port  # noqa: E402
from ibllm_agent.serve.settings import REPLICA_HEADER  # noqa: E402

LONG = {"temperature": 50.0, "top_p": 1.0, "seed": 3, "max_tokens": 1500}
"""Near-uniform sampling, seeded: the toy says ~1,200 tokens before EOS (seconds), long enough to interrupt."""
PROMPTS = ["hi", "What is a dog?", "Describe a bell.", "What does rain sound like?", "Name a bird.", "hello there"]


@pytest.fixture(scope="module")
def served(cluster):
    with ServerProcess(["--ray", "--address", cluster.address, "--replicas", "2", "--max-batch", "8"],
                       env=LOOPBACK_ENV, ready_timeout_s=300) as process:
        yield process


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """The single-process server's answer to each prompt."""
    with ServerProcess(["--model", "toy"]) as single:
        return {p: chat(single.base, p).json()["choices"][0]["message"]["content"] for p in PROMPTS}


def chat(base: str, prompt: str, **extra) -> httpx.Response:
    body = {"model": "toy", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0,
            **extra}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=120)


def replica_pids(base: str, want: int, timeout_s: float = 120.0, exclude: frozenset = frozenset()) -> dict[str, int]:
    """Replica id -> process id, read from /metrics (each scrape is answered by one replica) until `want`
    replicas not in `exclude` were seen."""
    seen: dict[str, int] = {}
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            text = httpx.get(base + "/metrics", timeout=10).text
        except httpx.HTTPError:
            text = ""
        for labels in re.findall(r"^ibllm_replica_info\{([^}]*)\}", text, re.M):
            fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if fields["replica"] not in exclude:
                seen[fields["replica"]] = int(fields["pid"])
        if len(seen) >= want:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"/metrics named only {seen} within {timeout_s} s")


def stream_to_done(lines) -> bool:
    """Read the rest of a streamed answer (`response.iter_lines()`); True when it ended with [DONE]."""
    try:
        return any(line == "data: [DONE]" for line in lines)
    except httpx.HTTPError:
        return False


def test_two_replicas_share_the_requests_and_answer_as_one_process(served, expected):
    replica_pids(served.base, want=2)  # both up (after the kill test, its replacement too)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda p: chat(served.base, p), PROMPTS * 3))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    assert len({r.headers[REPLICA_HEADER] for r in answers}) == 2
    assert httpx.get(served.base + "/health", timeout=10).json()["status"] == "ok"
    for prompt, response in zip(PROMPTS * 3, answers):
        assert response.json()["choices"][0]["message"]["content"] == expected[prompt]


CONFIG_DRIVER = """
import sys, yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema
from ibllm_agent.ray_cluster import connect

config = ServeDeploySchema.model_validate(yaml.safe_load(open(sys.argv[2])))  # Serve's own check of the file
app = config.applications[0]
module, name = app.import_path.split(":")
builder = getattr(__import__(module, fromlist=[name]), name)
connect(sys.argv[1])
if sys.argv[3] == "deploy":
    serve.run(builder({**app.args, "replicas": 1}), name="ibllm-config", route_prefix="/config")
else:
    serve.delete("ibllm-config")
"""


def test_the_documented_serve_config_deploys_and_answers(cluster, served, expected):
    """examples/ray-serve.yaml, as Serve reads it: its application built by its import path with its args and
    deployed beside the module's (one replica: the cluster's 3 CPUs hold the module's two), answering as the
    single-process server does."""
    config = Path(__file__).resolve().parents[2] / "examples" / "ray-serve.yaml"
    driver = [sys.executable, "-c", CONFIG_DRIVER, cluster.address, str(config)]
    run = subprocess.run([*driver, "deploy"], env=cluster.env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    try:
        answer = chat(served.base + "/config", "What is a dog?")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == expected["What is a dog?"]
    finally:
        subprocess.run([*driver, "delete"], env=cluster.env, capture_output=True, text=True, timeout=120)


def test_a_killed_replica_is_replaced_and_a_retry_succeeds(served):
    pids = replica_pids(served.base, want=2)
    with httpx.stream("POST", served.base + "/v1/chat/completions", timeout=60,
                      json={"model": "toy", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                            **LONG}) as response:
        victim = response.headers[REPLICA_HEADER]
        lines = response.iter_lines()
        next(line for line in lines if '"content":"' in line and '"content":""' not in line)  # it is answering
        os.kill(pids[victim], signal.SIGKILL)
        assert not stream_to_done(lines), "the killed replica's answer went on to its end"
    # the other replica keeps answering while Serve notices the death and starts a new replica
    after = [chat(served.base, "hi") for _ in range(6)]
    assert all(r.status_code == 200 for r in after), [r.text for r in after if r.status_code != 200]
    assert victim not in {r.headers[REPLICA_HEADER] for r in after}
    with httpx.stream("POST", served.base + "/v1/chat/completions", timeout=120,
                      json={"model": "toy", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                            **LONG}) as retry:
        assert retry.status_code == 200 and stream_to_done(retry.iter_lines())
    replacement = replica_pids(served.base, want=1, exclude=frozenset(pids))
    assert replacement and victim not in replacement


def test_an_unreachable_cluster_fails_at_once():
    nobody = f"127.0.0.1:{free_port()}"
    env = {**os.environ, **LOOPBACK_ENV}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "ibllm_agent.cli", "serve", "--ray", "--address", nobody,
                          "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"cannot reach the Ray cluster at {nobody}" in run.stderr
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_a_model_missing_on_the_nodes_fails_the_deployment_clearly():
    # a cluster of its own: the deployment it tries would replace the module's running one
    with LocalCluster(workers=0) as alone:
        run = subprocess.run([sys.executable, "-m", "ibllm_agent.cli", "serve", "--ray", "--address", alone.address,
                              "--model", "/nonexistent/adapter.pth", "--port", str(free_port())], env=alone.env,
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "the Ray Serve deployment failed" in run.stderr
    assert "MissingFileError: model '/nonexistent/adapter.pth' is neither a known name" in run.stderr
