"""The app in a real browser: `streamlit run` on 127.0.0.1, driven by Debian's Chromium through Playwright.

Attaches a toy-world sound, asks "What do you hear?", waits for the streamed answer, checks it names
the sound's concept, and saves a screenshot under test-artifacts/ (git-ignored). The harness is
tools/ui_screenshot.py, which also makes the README's screenshot.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def harness():
    pytest.importorskip("playwright.sync_api")
    spec = importlib.util.spec_from_file_location("ui_screenshot", ROOT / "tools" / "ui_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not Path(module.CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return module


def test_ask_about_a_toy_sound(needs_toy, harness, toy_files, tmp_path):
    from ibllm_agent.toy import names_concept

    with harness.serve(tmp_path) as url, harness.chromium_page(tmp_path / "profile") as page:
        page.goto(url)
        answer = harness.ask(page, "What do you hear?", [toy_files["audio"]])
        text = answer.get_by_test_id("stMarkdownContainer").first.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.wait_for_timeout(500)  # let the audio player settle before the screenshot
        page.screenshot(path=str(ARTIFACTS / "ui-chat.png"))
        (ARTIFACTS / "ui-chat.json").write_text(json.dumps({"concept": "dog", "answer": text}, indent=2))
        assert names_concept(text, "dog"), text
        assert "Conditioned on" in answer.inner_text()  # the answer's footer names the attached sound
