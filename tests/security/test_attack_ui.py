"""Attack tests for the app's server: the real `ibllm ui` (and a plain `streamlit run ui/app.py`) listen on
127.0.0.1 only and print no Network URL; stopping `ibllm ui` stops Streamlit too, whatever signal it gets.

Each test starts the real server in a subprocess on a free port and reads the kernel's socket table
(/proc/net/tcp, tcp6) and process table (/proc/<pid>/stat): Linux only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_S = 45.0
"""Streamlit's start (the app is only imported on the first visit, which these tests never make)."""
STOP_S = 12.0
"""`ibllm ui` gives Streamlit 10 s, then kills it."""

pytestmark = [pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc"),
              pytest.mark.timeout(60)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path: Path, port: int, *args: str, cmd: list[str] | None = None) -> tuple[subprocess.Popen, Path]:
    """`ibllm ui --port PORT ARGS` headless, its output in a log; run from tmp_path (no project .streamlit)."""
    log = tmp_path / f"ui-{port}.log"
    cmd = cmd or [sys.executable, "-m", "ibllm_agent.cli", "ui", "--port", str(port), *args]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "--server.headless", "true", "--server.fileWatcherType", "none"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"})
    return proc, log


def wait_for(condition, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} after {timeout} s; log:\n{log.read_text()[-3000:]}")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
            return resp.read().strip() == b"ok"
    except OSError:
        return False


def listening(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port` (IPv4 and IPv6), from the kernel's table."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def reaper():
    """Kills whatever a failed test left running (by pid, each one it started)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, None)],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_ibllm_ui_listens_on_loopback_only_and_stopping_it_stops_streamlit(tmp_path, reaper, sig, code):
    port = free_port()
    proc, log = start(tmp_path, port)
    reaper.append(proc.pid)
    wait_for(lambda: healthy(port), START_S, "no answer on /_stcore/health", log)
    (child,) = wait_for(lambda: children(proc.pid), 5, "no streamlit child", log)
    reaper.append(child)
    assert b"streamlit" in Path(f"/proc/{child}/cmdline").read_bytes()
    assert listening(port) == {"127.0.0.1"}
    wait_for(lambda: "URL:" in log.read_text(), 10, "no URL printed", log)
    text = log.read_text()
    assert f"URL: http://127.0.0.1:{port}" in text and "Network URL" not in text
    assert "not only on this machine" not in text

    os.kill(proc.pid, sig)  # the parent only: what a service manager or `kill` does
    assert proc.wait(timeout=STOP_S) == (code if code is not None else -signal.SIGKILL)
    # SIGKILL cannot be caught: the child learns of it from the kernel (PR_SET_PDEATHSIG) and stops itself
    wait_for(lambda: not alive(child), STOP_S, f"streamlit (pid {child}) still running", log)
    wait_for(lambda: port_closed(port), 5, f"port {port} still open", log)


def test_another_host_is_announced_with_a_warning(tmp_path, reaper):
    port = free_port()
    proc, log = start(tmp_path, port, "--host", "0.0.0.0")
    reaper.append(proc.pid)
    wait_for(lambda: "warning" in log.read_text(), 20, "no warning", log)
    os.kill(proc.pid, signal.SIGTERM)  # right away: this test does not keep a port open to the network
    assert proc.wait(timeout=STOP_S) == 143
    text = log.read_text()
    assert "the app will listen on 0.0.0.0, not only on this machine" in text
    assert "anyone who can reach it can use the model and upload files" in text
    wait_for(lambda: port_closed(port), 5, f"port {port} still open", log)


def test_a_plain_streamlit_run_listens_on_loopback_only(tmp_path, reaper):
    """ui/.streamlit/config.toml (the script-level config, read whatever the working directory) sets
    address = 127.0.0.1: `streamlit run ui/app.py` without `ibllm ui` is not on the network either."""
    port = free_port()
    proc, log = start(tmp_path, port, cmd=[sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"),
                                           "--server.port", str(port)])
    reaper.append(proc.pid)
    try:
        wait_for(lambda: healthy(port), START_S, "no answer on /_stcore/health", log)
        assert listening(port) == {"127.0.0.1"}
        wait_for(lambda: "URL:" in log.read_text(), 10, "no URL printed", log)
        assert "Network URL" not in log.read_text()
        check = subprocess.run(  # the same file keeps tracebacks out of the browser
            [sys.executable, "-c", "import sys; from streamlit import config; config._main_script_path = sys.argv[1]; "
             "print(config.get_option('client.showErrorDetails'))", str(ROOT / "ui" / "app.py")],
            cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert check.stdout.strip() == "none", check.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_S)
