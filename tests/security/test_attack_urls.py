"""Attacks on URL fetching (`SourcePolicy(allow_urls=True)`), against real HTTP servers on 127.0.0.1
that the tests start: a server dripping one byte at a time, redirects elsewhere, loopback and private
addresses, oversized answers with and without a Content-Length. Every case ends in a SourceError
within the deadline (plus one second) or at the byte limit.

The servers are on loopback, which the policy refuses by default, so the cases that need to reach them
allow it: `allow_private_networks=True`, or only 127.0.0.1 (`["127.0.0.1/32"]`) where the point is that
the next hop is refused.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from ibllm_agent.sources import MAX_REDIRECTS, SourceError, SourcePolicy

pytestmark = pytest.mark.timeout(30)

LOOPBACK = ["127.0.0.1/32"]


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers by path; `self.server.sent` counts the body bytes written."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server API)
        route = self.path.split("?")[0]
        try:
            getattr(self, "route_" + route.strip("/").replace("-", "_"))()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def body(self, data: bytes, length: int | None = None):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def route_ok(self):
        self.body(b"media bytes")

    def route_drip_body(self):  # a valid length, then 5 bytes a second
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.2)

    def route_drip_headers(self):  # the status line and headers themselves, a byte at a time
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 200:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.05)

    def route_silent(self):  # says nothing at all
        time.sleep(10)

    def route_huge_length(self):  # announces a gigabyte, sends a little
        self.body(b"x" * 100, length=10**9)

    def route_endless(self):  # no length: the body runs until the client stops reading
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        while True:
            self.wfile.write(b"z" * 65536)
            self.server.sent += 65536

    def route_endless_chunked(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            self.wfile.write(b"10000\r\n" + b"c" * 65536 + b"\r\n")
            self.server.sent += 65536

    def route_not_found(self):
        self.send_error(404)

    def route_redirect(self):  # to wherever ?to= says
        self.send_response(302)
        self.send_header("Location", self.path.split("?to=", 1)[1])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_loop(self):
        self.send_response(301)
        self.send_header("Location", "/loop")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def serve():
    """serve() -> "http://127.0.0.1:<port>" of a fresh server (several per test for redirects)."""
    servers = []

    def start() -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.sent = 0
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    start.servers = servers
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def policy(**kwargs) -> SourcePolicy:
    return SourcePolicy(allow_urls=True, **{"allow_private_networks": True, **kwargs})


def refused_within(seconds: float, url: str, pol: SourcePolicy, match: str) -> float:
    start = time.monotonic()
    with pytest.raises(SourceError, match=match):
        pol.read(url)
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    return elapsed


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers", "/silent"])
def test_a_slow_server_cannot_stretch_the_deadline(serve, path):
    elapsed = refused_within(2.5, serve() + path, policy(url_timeout=1.5), r"longer than the limit of 1.5 s")
    assert elapsed >= 1.4
    print(f"\n{path}: refused after {elapsed:.2f} s (url_timeout 1.5 s)")


def test_a_silent_tls_server_cannot_stretch_the_deadline():
    """https: a server that accepts the connection and never answers the TLS handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/x"
        refused_within(2.5, url, policy(url_timeout=1.5), r"longer than the limit of 1.5 s")
    finally:
        listener.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_an_untrusted_certificate_is_refused(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-days", "1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(SourceError, match="certificate verify failed"):
            policy(url_timeout=5).read(f"https://127.0.0.1:{server.server_address[1]}/ok")
    finally:
        server.shutdown()
        server.server_close()


def test_a_plain_fetch_works(serve):
    assert policy().read(serve() + "/ok") == (b"media bytes", "ok")


def test_loopback_and_private_addresses_are_refused_by_default(serve):
    base = serve()
    port = base.rsplit(":", 1)[1]
    strict = SourcePolicy(allow_urls=True)
    for host in ("127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "10.0.0.1", "192.168.1.1",
                 "172.16.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "[fe80::1]", "[fd00::1]"):
        # refused before any connection: pytest-socket would fail the test on a connection to most of these
        with pytest.raises(SourceError, match="loopback, private or link-local address"):
            strict.read(f"http://{host}:{port}/ok")
    assert policy().read(base + "/ok")[0] == b"media bytes"
    assert policy(allow_private_networks=LOOPBACK).read(base + "/ok")[0] == b"media bytes"


def test_a_public_name_resolving_to_loopback_is_refused(serve, monkeypatch):
    """The check is on the address connected to, not the name: a public-looking host whose DNS answer is
    127.0.0.1 (DNS rebinding's second answer) is refused; allowed, the connection goes to that address."""
    port = int(serve().rsplit(":", 1)[1])
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        return real("127.0.0.1", *args, **kwargs) if host == "media.example.com" else real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    url = f"http://media.example.com:{port}/ok"
    with pytest.raises(SourceError, match=r"media.example.com is a loopback.*\(127.0.0.1\)"):
        SourcePolicy(allow_urls=True).read(url)
    assert policy(allow_private_networks=LOOPBACK).read(url)[0] == b"media bytes"


def test_redirects_are_checked_again(serve):
    first, second = serve(), serve()
    # to another server (another port): followed, and what it serves comes back
    assert policy().read(f"{first}/redirect?to={second}/ok")[0] == b"media bytes"
    # to an address the policy refuses: refused before connecting (127.0.0.2 is loopback too)
    only_first = policy(allow_private_networks=LOOPBACK)
    with pytest.raises(SourceError, match=r"127.0.0.2 is a loopback"):
        only_first.read(f"{first}/redirect?to=http://127.0.0.2:{second.rsplit(':', 1)[1]}/ok")
    # to a scheme that is no URL fetch at all
    for target in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x"):
        with pytest.raises(SourceError, match=r"is not an http\(s\) URL with a host \(a redirect from"):
            policy().read(f"{first}/redirect?to={target}")
    with pytest.raises(SourceError, match=f"more than {MAX_REDIRECTS} redirects"):
        policy().read(f"{first}/loop")


def test_oversized_answers_are_refused_at_the_limit(serve):
    base = serve()
    small = policy(max_bytes=1000)
    refused_within(1.0, base + "/huge-length", small, r"is 1000000000 bytes, more than the limit of 1000")
    for path in ("/endless", "/endless-chunked"):
        refused_within(2.0, base + path, small, r"more than the limit of 1000 bytes")
    # the reader stopped at the limit: the server got at most a few socket buffers out, not the whole stream
    assert serve.servers[0].sent < 50 * 2**20


def test_http_errors_and_bad_urls_are_source_errors(serve):
    base = serve()
    with pytest.raises(SourceError, match="HTTP 404"):
        policy().read(base + "/not-found")
    with pytest.raises(SourceError, match="invalid port"):
        policy().read("http://127.0.0.1:99999/x")
    with pytest.raises(SourceError, match="URLs are disabled"):
        SourcePolicy().read(base + "/ok")
    with pytest.raises(SourceError, match="allow_private_networks"):
        SourcePolicy(allow_private_networks=["not a network"])
