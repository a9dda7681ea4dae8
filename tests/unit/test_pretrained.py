"""The weights registry and the resumable download, against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from ibllm_agent import pretrained
from ibllm_agent.checkpoint import MissingFileError
from ibllm_agent.factory import save_official
from ibllm_agent.pretrained import DownloadError, WeightFile, download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Server:
    """Serves PAYLOAD at /w.bin, honouring Range unless told not to; records the Range headers it saw."""

    def __init__(self, honour_range: bool = True, fail_after: int | None = None):
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/w.bin":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng and honour_range else 0
                if start >= len(PAYLOAD):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if fail_after is None else body[:fail_after])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def entry(url: str, **kw) -> WeightFile:
    return WeightFile("w", "w.bin", url, "test weights", **kw)


def test_registry_names_the_official_files():
    assert pretrained.available_models() == ["7B", "7B-pretrained"]
    assert pretrained.FILES["7B"].url == "https://huggingface.co/Cxxs/ImageBind-LLM/resolve/main/7B.pth"
    assert pretrained.FILES["imagebind_huge"].url == "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
    assert {"imagebind_w3D", "knn.index", "7B-pretrained"} <= set(pretrained.FILES)


def test_local_path_explains_how_to_download(tmp_path):
    with pytest.raises(MissingFileError, match="ibllm download 7B"):
        pretrained.local_path("7B", tmp_path)
    (tmp_path / "imagebind_huge.pth").write_bytes(b"x")
    assert pretrained.local_imagebind(tmp_path) == tmp_path / "imagebind_huge.pth"
    (tmp_path / "imagebind_w3D.pth").write_bytes(b"x")
    assert pretrained.local_imagebind(tmp_path) == tmp_path / "imagebind_w3D.pth"


def test_download_is_complete_and_atomic(server, tmp_path):
    path = download(entry(server.url, sha256=hashlib.sha256(PAYLOAD).hexdigest()), tmp_path, progress=False)
    assert path == tmp_path / "w.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "w.bin.part").exists() and server.ranges == [None]
    download(entry(server.url), tmp_path, progress=False)  # present: no second request
    assert server.ranges == [None]


def test_download_resumes_a_partial_file_with_a_range_request(server, tmp_path):
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD[:300_000])
    path = download(entry(server.url, size=len(PAYLOAD)), tmp_path, progress=False)
    assert server.ranges == ["bytes=300000-"] and path.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_the_part_and_resumes(tmp_path):
    broken = Server(fail_after=100_000)
    try:
        with pytest.raises(DownloadError, match="resume"):
            download(entry(broken.url), tmp_path, progress=False)
    finally:
        broken.close()
    assert not (tmp_path / "w.bin").exists() and (tmp_path / "w.bin.part").stat().st_size == 100_000
    good = Server()
    try:
        assert download(entry(good.url), tmp_path, progress=False).read_bytes() == PAYLOAD
        assert good.ranges == ["bytes=100000-"]
    finally:
        good.close()


def test_a_server_ignoring_range_restarts_cleanly(tmp_path):
    s = Server(honour_range=False)
    try:
        (tmp_path / "w.bin.part").write_bytes(b"stale bytes")
        assert download(entry(s.url), tmp_path, progress=False).read_bytes() == PAYLOAD
    finally:
        s.close()


def test_checksum_mismatch_and_http_errors(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256"):
        download(entry(server.url, sha256="0" * 64), tmp_path, progress=False)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()
    with pytest.raises(DownloadError, match="404"):
        download(entry(server.url.replace("w.bin", "nope")), tmp_path, progress=False)
    with pytest.raises(KeyError, match="unknown weights"):
        download("13B", tmp_path)


def test_load_by_registry_name_downloads_only_when_asked(tmp_path, monkeypatch, serve_folder):
    import ibllm_agent

    official = save_official(ibllm_agent.load("tiny"), tmp_path / "served")
    (tmp_path / "served" / "imagebind_w3D.pth").write_bytes(official["imagebind"].read_bytes())
    (tmp_path / "served" / "7B.pth").write_bytes(official["adapter"].read_bytes())
    base = serve_folder(tmp_path / "served")
    for name, filename in (("7B", "7B.pth"), ("imagebind_w3D", "imagebind_w3D.pth")):
        monkeypatch.setitem(pretrained.FILES, name, WeightFile(name, filename, f"{base}/{filename}", name))
    root = tmp_path / "weights"
    with pytest.raises(MissingFileError, match="ibllm download 7B"):
        ibllm_agent.load("7B", str(official["llama_dir"]), download_root=root)
    model = ibllm_agent.load("7B", str(official["llama_dir"]), download_root=root, download=True)
    assert model.card.name == "7B" and sorted(p.name for p in root.iterdir()) == ["7B.pth", "imagebind_w3D.pth"]
