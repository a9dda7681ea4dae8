"""`chroma run` on 127.0.0.1 for the tests that need a real Chroma server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMA = Path(sys.executable).parent / "chroma"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`chroma run` on 127.0.0.1 at a free port, over a data folder that outlives restarts."""

    def __init__(self, path: Path, log: Path):
        self.path, self.log = path, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(CHROMA), "run", "--path", str(self.path), "--host", "127.0.0.1",
                                          "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1):
                    return self.url
            except OSError:
                assert self.proc.poll() is None, f"chroma run exited: {self.log.read_text()[-2000:]}"
                time.sleep(0.2)
        raise AssertionError("chroma run did not answer within 30 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None
