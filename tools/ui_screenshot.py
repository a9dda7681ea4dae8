"""Drive the Streamlit app in headless Chromium: the harness of the browser test, and the README screenshot.

    python tools/ui_screenshot.py                  # writes ui/screenshot.png (toy model)
    python tools/ui_screenshot.py --out shot.png

`serve()` starts `streamlit run ui/app.py` headless on a free 127.0.0.1 port and stops it by PID;
`chromium_page()` opens Debian's Chromium through Playwright (no Playwright browser download).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "ui" / "app.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
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


@contextmanager
def serve(workdir: Path, env: dict | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Run the app headless on 127.0.0.1 (log in workdir/streamlit.log); yields its URL."""
    port = free_port()
    log = workdir / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log, timeout)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def chromium_page(profile: Path, width: int = 1280, height: int = 900):
    """A page in a fresh headless Chromium profile (Debian's chromium, driven by Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            yield context.new_page()
        finally:
            context.close()


def ask(page, question: str, files: list[Path] = (), timeout_ms: int = 120_000):
    """Attach files in the chat box, ask, and wait for the answer; returns the answer's chat message."""
    chat = page.get_by_test_id("stChatInput")
    chat.wait_for(timeout=timeout_ms)
    before = page.get_by_test_id("stChatMessage").filter(has_text="tokens").count()
    if files:
        chat.locator("input[type=file]").set_input_files([str(f) for f in files])
        # one chip per file once it is uploaded; submitting earlier would send the question without it
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=stChatInput] [data-testid=stFileChip]').length === n",
            arg=len(files), timeout=timeout_ms)
    page.get_by_test_id("stChatInputTextArea").fill(question)
    submit = page.get_by_test_id("stChatInputSubmitButton")
    page.wait_for_function("b => !b.disabled", arg=submit.element_handle(), timeout=timeout_ms)
    submit.click()
    # an answer is complete when its footer ("... · N tokens") is drawn under it
    answers = page.get_by_test_id("stChatMessage").filter(has_text="tokens")
    answers.nth(before).wait_for(timeout=timeout_ms)
    return answers.nth(before)


def readme_screenshot(out: Path) -> None:
    """A short conversation on the toy model: a sound, then a 3D shape."""
    from ibllm_agent.toy import ToyWorld

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = ToyWorld(2026)
        dog = Path(world.write("dog", "audio", 0, tmp).path)
        bell = Path(world.write("bell", "point", 0, tmp).path)
        with serve(tmp) as url, chromium_page(tmp / "profile", 1280, 1400) as page:
            page.goto(url)
            ask(page, "What do you hear?", [dog])
            answer = ask(page, "What is this 3D shape?", [bell])
            answer.get_by_text("Visual cache").click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out))
    from PIL import Image

    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)  # a UI needs no more colours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "ui" / "screenshot.png")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    readme_screenshot(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
