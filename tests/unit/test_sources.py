"""Path confinement: roots, '..', symlinks, URLs, size limits."""

from __future__ import annotations

import http.server
import os
import threading

import pytest

from ibllm_agent.sources import SourceError, SourcePolicy


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "a.wav").write_bytes(b"RIFF" + b"\0" * 60)
    (root / "sub" / "b.png").write_bytes(b"\x89PNG" + b"\0" * 10)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, root / "escape.txt")
    os.symlink(root / "a.wav", root / "sub" / "inner-link.wav")
    return root, secret


def test_relative_absolute_and_file_urls_inside_roots(tree):
    root, _ = tree
    policy = SourcePolicy(roots=(root,))
    assert policy.resolve("a.wav") == root / "a.wav"
    assert policy.resolve("sub/b.png") == root / "sub" / "b.png"
    assert policy.resolve(str(root / "a.wav")) == root / "a.wav"
    assert policy.resolve((root / "a.wav").as_uri()) == root / "a.wav"
    assert policy.resolve("sub/inner-link.wav") == root / "a.wav"  # a symlink that stays inside is fine
    source, name = policy.read("sub/b.png")
    assert source == root / "sub" / "b.png" and name == "b.png"


@pytest.mark.parametrize("name, message", [
    ("../secret.txt", "contains '..'"),
    ("sub/../a.wav", "contains '..'"),
    ("escape.txt", "outside the allowed media folders"),
    ("missing.wav", "file not found"),
    ("sub", "not a regular file"),
    ("", "empty path"),
    ("a.wav\0.png", "NUL"),
    ("ftp://example.com/a.wav", "not local files"),
])
def test_refusals_are_readable(tree, name, message):
    root, secret = tree
    with pytest.raises(SourceError, match=message):
        SourcePolicy(roots=(root,)).resolve(name)


def test_absolute_path_outside_roots_is_refused(tree):
    root, secret = tree
    with pytest.raises(SourceError, match="outside"):
        SourcePolicy(roots=(root,)).resolve(str(secret))
    assert SourcePolicy(roots=None).resolve(str(secret)) == secret  # unconfined policy for trusted code


def test_size_limit(tree):
    root, _ = tree
    with pytest.raises(SourceError, match="more than the limit of 10"):
        SourcePolicy(roots=(root,), max_bytes=10).resolve("a.wav")


def test_roots_must_be_folders(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        SourcePolicy(roots=(tmp_path / "nope",))
    with pytest.raises(SourceError, match="at least one"):
        SourcePolicy(roots=())


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        body = b"x" * (100 if self.path == "/small.bin" else 5000)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_refused_unless_enabled_then_size_limited(tree, http_url):
    root, _ = tree
    with pytest.raises(SourceError, match="URLs are disabled"):
        SourcePolicy(roots=(root,)).read(http_url + "/small.bin")
    policy = SourcePolicy(roots=(root,), allow_urls=True, max_bytes=1000)
    data, name = policy.read(http_url + "/small.bin")
    assert data == b"x" * 100 and name == "small.bin"
    with pytest.raises(SourceError, match="more than the limit"):
        policy.read(http_url + "/big.bin")
