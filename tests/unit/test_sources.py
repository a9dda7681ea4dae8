"""Path confinement: roots, '..', symlinks, URLs, size limits."""

from __future__ import annotations

import http.server
import io
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
    assert policy.read("a.wav") == ((root / "a.wav").read_bytes(), "a.wav")
    assert policy.read("sub/b.png") == ((root / "sub" / "b.png").read_bytes(), "b.png")
    assert policy.read(str(root / "a.wav"))[1] == "a.wav"
    assert policy.read((root / "a.wav").as_uri())[1] == "a.wav"
    assert policy.read("./sub//b.png")[1] == "b.png"


@pytest.mark.parametrize("name, message", [
    ("../secret.txt", "contains '..'"),
    ("sub/../a.wav", "contains '..'"),
    ("escape.txt", "is a symbolic link; links are not followed"),
    ("sub/inner-link.wav", "is a symbolic link"),  # even one that stays inside: it could be swapped
    ("missing.wav", "file not found"),
    ("a.wav/x", "file not found"),
    ("sub", "not a regular file"),
    (".", "not a regular file"),
    ("", "empty path"),
    ("a.wav\0.png", "NUL"),
    ("ftp://example.com/a.wav", "not local files"),
])
def test_refusals_are_readable(tree, name, message):
    root, secret = tree
    with pytest.raises(SourceError, match=message):
        SourcePolicy(roots=(root,)).read(name)


def test_absolute_path_outside_roots_is_refused(tree):
    root, secret = tree
    with pytest.raises(SourceError, match="outside"):
        SourcePolicy(roots=(root,)).read(str(secret))
    unconfined = SourcePolicy(roots=None)  # for trusted code: any file, links followed
    assert unconfined.read(str(secret)) == (b"top secret", "secret.txt")
    assert unconfined.read(str(root / "escape.txt")) == (b"top secret", "escape.txt")


def test_size_limit(tree):
    root, _ = tree
    with pytest.raises(SourceError, match="more than the limit of 10"):
        SourcePolicy(roots=(root,), max_bytes=10).read("a.wav")


def test_bytes_and_file_objects_share_the_limit(tree):
    root, _ = tree
    policy = SourcePolicy(roots=(root,), max_bytes=64)
    assert policy.read(b"x" * 64, "given.bin") == (b"x" * 64, "given.bin")
    with pytest.raises(SourceError, match="<bytes> is 65 bytes, more than the limit of 64"):
        policy.read(b"x" * 65)
    with open(root / "a.wav", "rb") as f:
        assert policy.read(f) == ((root / "a.wav").read_bytes(), "a.wav")
    with pytest.raises(SourceError, match="stream.bin is more than the limit of 64 bytes"):
        policy.read(io.BytesIO(b"x" * 65), "stream.bin")
    with open(root / "a.wav") as f, pytest.raises(SourceError, match="open it in 'rb' mode"):
        policy.read(f)


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
    policy = SourcePolicy(roots=(root,), allow_urls=True, max_bytes=1000, allow_private_networks=True)
    data, name = policy.read(http_url + "/small.bin")
    assert data == b"x" * 100 and name == "small.bin"
    with pytest.raises(SourceError, match="more than the limit"):
        policy.read(http_url + "/big.bin")
