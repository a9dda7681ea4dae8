"""`ibllm serve --ray` on a real Ray cluster on 127.0.0.1 (a head and one extra node, small object stores):
requests spread over two toy replicas and answer as the single-process server does; a replica killed with
SIGKILL is replaced while the other keeps answering, and the retry of its in-flight request succeeds;
`serve run` of the documented Serve config (examples/ray-serve.yaml) deploys it and answers."""

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
from ibllm_agent.serve.process import ServerProcess, checkout_pythonpath, free_port  # noqa: E402
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


def test_serve_run_deploys_the_documented_config(tmp_path, expected):
    """`serve run examples/ray-serve.yaml`, Serve's own CLI, as the README documents it: on a Ray instance of its
    own (`--address local`; by default it would join the module's cluster and replace its apps with the file's),
    it deploys the file's two replicas and answers as the single-process server; Ctrl-C ends it. Only the
    file's port is moved to a free one."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "ray-serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (tmp_path / "ray-serve.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": checkout_pythonpath(), **LOOPBACK_ENV}
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", "--address", "local",
                                str(tmp_path / "ray-serve.yaml")],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 300
        while True:
            assert process.poll() is None, _tail(log)
            assert time.monotonic() < end, f"serve run answered nothing within 300 s: {_tail(log)}"
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        replica_pids(base, want=2)
        answer = chat(base, "What is a dog?")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == expected["What is a dog?"]
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: serve run deletes the app and stops its Ray instance
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode is not None


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-3000:]


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
