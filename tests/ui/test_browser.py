"""The app in a real browser: `streamlit run` on 127.0.0.1, driven by Debian's Chromium through Playwright.

Attaches a toy-world sound, asks "What do you hear?", waits for the streamed answer, checks it names
the sound's concept, and saves a screenshot under test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def app_url(tmp_path):
    """Start `streamlit run ui/app.py` headless on a free loopback port; stop it by PID afterwards."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"),
           "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def browser_page(tmp_path):
    """A fresh headless Chromium profile and page (the system Chromium; no Playwright download)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_ask_about_a_toy_sound(needs_toy, app_url, browser_page, toy_files):
    path, concept = toy_files["audio"], "dog"
    page = browser_page
    page.goto(app_url)
    chat = page.get_by_test_id("stChatInput")
    chat.wait_for(timeout=120_000)
    chat.locator("input[type=file]").set_input_files(str(path))
    page.get_by_test_id("stChatInputTextArea").fill("What do you hear?")
    page.get_by_test_id("stChatInputSubmitButton").click()
    # The answer is done when its "Conditioned on" caption appears under it.
    answer = page.get_by_test_id("stChatMessage").filter(has_text="Conditioned on").last
    answer.wait_for(timeout=120_000)
    text = answer.get_by_test_id("stMarkdownContainer").first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)  # let the audio player and thumbnails settle before the screenshot
    page.screenshot(path=str(ARTIFACTS / "ui-chat.png"), full_page=True)
    (ARTIFACTS / "ui-chat.json").write_text(json.dumps({"concept": concept, "answer": text}, indent=2))
    assert concept in text.lower(), f"answer {text!r} does not name {concept!r}"
