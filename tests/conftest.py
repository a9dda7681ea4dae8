"""Shared test fixtures: paths to ../shared, the parity fixture folder, GPU skipping."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IBLLM_SHARED", ROOT.parent / "shared"))
PARITY_SRC = SHARED / "parity"
MEDIA_DIR = SHARED / "media"


def _spec_digest() -> str:
    return json.loads((PARITY_SRC / "fixture_spec.json").read_text())["digest"]


def _fixtures_ok(path: Path) -> bool:
    summary = path / "fixtures.json"
    return summary.is_file() and json.loads(summary.read_text()).get("digest") == _spec_digest()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the project's shared folder) is not present")
    return SHARED


@pytest.fixture(scope="session")
def media_dir(shared_dir) -> Path:
    return MEDIA_DIR


@pytest.fixture(scope="session")
def parity_dir(shared_dir, tmp_path_factory) -> Path:
    """The official-format parity checkpoints (3.4 GB), built once per session into a temp folder.

    $IBLLM_PARITY_DIR may point at an existing build; it is used only if its digest matches the spec.
    """
    env = os.environ.get("IBLLM_PARITY_DIR")
    if env and _fixtures_ok(Path(env)):
        return Path(env)
    out = tmp_path_factory.mktemp("parity")
    subprocess.run([sys.executable, str(PARITY_SRC / "build_fixtures.py"), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    assert _fixtures_ok(out), "parity fixtures built with a digest different from the spec"
    return out


@pytest.fixture(scope="session")
def parity_expected(shared_dir):
    import torch

    return torch.load(PARITY_SRC / "expected.pt", map_location="cpu", weights_only=True)


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def serve_folder():
    """`serve_folder(path)` -> "http://127.0.0.1:<port>": the folder's files over HTTP until the test ends."""
    servers = []

    def serve(folder: Path) -> str:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                functools.partial(_QuietFiles, directory=str(folder)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
