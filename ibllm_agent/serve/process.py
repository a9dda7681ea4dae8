"""`ibllm serve` in a child process, for scripts that need a server for a while (benchmarks, tests, notebooks).

    with ServerProcess(["--model", "toy"]) as server:       # a free port on 127.0.0.1; waits for /health
        client = openai.OpenAI(base_url=server.url, api_key="unused")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def checkout_pythonpath() -> str:
    """PYTHONPATH with this checkout first, so that a child process runs the same code as its parent."""
    return os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m ibllm_agent.cli serve ARGS --host 127.0.0.1 --port PORT`; `url` is its /v1."""

    def __init__(self, args: list[str], *, port: int | None = None, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120.0):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.health: list[int] = []
        """The /health statuses seen while waiting (0: no answer yet)."""
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on it
        self.process = subprocess.Popen([sys.executable, "-m", "ibllm_agent.cli", "serve", *args, "--host",
                                         "127.0.0.1", "--port", str(self.port)],
                                        env={**os.environ, "PYTHONPATH": checkout_pythonpath(), **(env or {})},
                                        stdout=subprocess.DEVNULL, stderr=self.log)
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"ibllm serve exited with {self.process.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as response:
                    self.health.append(response.status)
                    return
            except urllib.error.HTTPError as exc:
                self.health.append(exc.code)
            except OSError:
                self.health.append(0)
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"ibllm serve was not ready within {timeout_s} s")

    def stderr(self) -> str:
        """What the server has logged so far."""
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
