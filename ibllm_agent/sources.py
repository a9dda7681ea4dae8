"""Where media may be read from: local files confined to root folders, optional URLs, one size limit.

Tools and chat messages name media by path or URL, and those names may come from an LLM or a
user, so every read goes through a `SourcePolicy`, and `SourcePolicy.read` hands back the bytes:
no later stage (format detection, decoding, ffmpeg) opens the name again.

- a local path is opened once, from the root folder down, one component at a time without
  following symbolic links (`openat` with `O_NOFOLLOW`), so a file swapped for a link while it is
  checked cannot lead outside; the opened descriptor must be a regular file within the size limit
  (a FIFO or device is refused without blocking), and the bytes are read through it;
- relative paths are taken against the first root; an absolute path must lie under one of the
  roots as they resolve; a `..` component is refused outright, even when it would stay inside;
- `file://` URLs are local paths; `http(s)://` is fetched only when `allow_urls` is set, within
  one overall deadline, from public addresses only (unless `allow_private_networks`), each
  redirect checked like the first URL; every other scheme is refused;
- bytes and binary file objects pass the same size limit.

A hard link inside a root to a file outside it is the same file by every check a path allows:
`refuse_hard_links` refuses files with more than one link. `roots=None` lifts the confinement (any
local file the process can read, links followed): for code that builds its own messages, never for
tools driven by a model. Needs POSIX `openat` (Linux, macOS).
"""

from __future__ import annotations

import errno
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # a 7 s 1080p clip or a few million points; far beyond the toy media
MAX_REDIRECTS = 5

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CHUNK = 1 << 20
# non-blocking: opening a FIFO must not wait for a writer; no controlling terminal from a tty device
_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_REDIRECTS = (301, 302, 303, 307, 308)


class SourceError(ValueError):
    """A media name that the policy refuses or that cannot be read; the message is meant for the caller."""


@dataclass(frozen=True)
class SourcePolicy:
    """Rules for reading media named by path or URL, or given as bytes."""

    roots: tuple[Path, ...] | None = None
    """Folders local files must lie in (resolved at construction, symlinks followed); None = no confinement."""
    allow_urls: bool = False
    """Fetch http(s) URLs; off by default (no network side effects from a model's tool call)."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest file, download, inline data or file object accepted."""
    url_timeout: float = 30.0
    """Seconds one URL may take in all: name lookup, connection, redirects, headers and body."""
    allow_private_networks: bool | Sequence[str] = False
    """URLs may reach loopback, private, link-local and other non-public addresses: True for all of
    them, or a list of networks ("10.1.0.0/16", "127.0.0.1/32") for those only."""
    refuse_hard_links: bool = False
    """Refuse files with more than one hard link (a link inside a root to an outside file looks inside)."""

    def __post_init__(self):
        if not isinstance(self.allow_private_networks, bool):
            allowed = self.allow_private_networks
            try:
                networks = tuple(ipaddress.ip_network(n) for n in ([allowed] if isinstance(allowed, str) else allowed))
            except (TypeError, ValueError) as exc:
                raise SourceError(f"allow_private_networks: {exc}") from None
            object.__setattr__(self, "allow_private_networks", networks)
        if self.roots is None:
            return
        resolved = []
        for root in self.roots:
            path = Path(root).expanduser().resolve(strict=False)
            if not path.is_dir():
                raise SourceError(f"media root {str(root)!r} is not a folder")
            resolved.append(path)
        if not resolved:
            raise SourceError("at least one media root folder is needed (or roots=None for no confinement)")
        object.__setattr__(self, "roots", tuple(resolved))

    def describe(self) -> str:
        """One line for tool descriptions: where files may come from."""
        where = "any local path" if self.roots is None else "files under " + ", ".join(map(str, self.roots))
        return where + (" or http(s) URLs" if self.allow_urls else "")

    def read(self, source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
             name: str | None = None) -> tuple[bytes, str]:
        """The bytes of a local file (confined to the roots), an http(s) URL (when allowed), inline bytes
        or a binary file object, all within `max_bytes`; plus a display name (`name` when given)."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            shown = name or "<bytes>"
            if len(source) > self.max_bytes:
                raise SourceError(f"{shown} is {len(source)} bytes, more than the limit of {self.max_bytes}")
            return bytes(source), shown
        if hasattr(source, "read"):
            shown = name or Path(str(getattr(source, "name", "") or "<stream>")).name
            return self._bounded(source.read, shown), shown
        text = os.fspath(source)
        scheme = m.group(1).lower() if (m := _SCHEME.match(text)) else ""
        if scheme in ("http", "https"):
            if not self.allow_urls:
                raise SourceError(f"URLs are disabled; give a local file instead of {text!r}")
            return self._fetch(text), name or PurePosixPath(urllib.parse.urlparse(text).path).name or "download"
        data, shown = self._read_file(text)
        return data, name or shown

    # --- local files ---------------------------------------------------------------------------------

    def _read_file(self, text: str) -> tuple[bytes, str]:
        if "\x00" in text:
            raise SourceError("path contains a NUL character")
        if text.startswith("file://"):
            text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
        elif (m := _SCHEME.match(text)) and len(m.group(1)) > 1:  # one letter = a Windows drive
            raise SourceError(f"{m.group(1)!r} URLs are not local files")
        if not text.strip():
            raise SourceError("empty path")
        parts = set(PurePosixPath(text).parts) | set(PureWindowsPath(text).parts)
        if ".." in parts:
            raise SourceError(f"path {text!r} contains '..'; name files inside the media folders directly")
        path = Path(text).expanduser()
        fd = self._open_unconfined(path, text) if self.roots is None else self._open_confined(path, text)
        try:
            info = os.fstat(fd)  # the opened file itself, whatever its name points to by now
            if not stat.S_ISREG(info.st_mode):
                raise SourceError(f"{text!r} is not a regular file")
            if info.st_size > self.max_bytes:
                raise SourceError(f"{text!r} is {info.st_size} bytes, more than the limit of {self.max_bytes}")
            if self.refuse_hard_links and info.st_nlink > 1:
                raise SourceError(f"{text!r} has {info.st_nlink} hard links; this policy refuses linked files "
                                  "(refuse_hard_links), as one may be a file from outside the media folders")
            return self._bounded(lambda n: os.read(fd, n), repr(text)), path.name
        finally:
            os.close(fd)

    def _open_unconfined(self, path: Path, text: str) -> int:
        try:
            return os.open(path, _OPEN)
        except OSError as exc:
            raise self._open_error(exc, text) from None

    def _open_confined(self, path: Path, text: str) -> int:
        """A descriptor of the file, opened from its root down without following any link below the root."""
        if path.is_absolute():
            path = Path(os.path.normpath(path))  # lexical only ('..' is refused): "a//b", "./a"
            root = next((r for r in self.roots if path.is_relative_to(r)), None)
            if root is None:
                raise SourceError(f"{text!r} is outside the allowed media folders ({self.describe()})")
            names = path.relative_to(root).parts
        else:
            root, names = self.roots[0], path.parts
        if not names:
            raise SourceError(f"{text!r} is not a regular file")
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"media root {str(root)!r} cannot be opened: {exc.strerror or exc}") from None
        try:
            for i, part in enumerate(names):
                folder = os.O_DIRECTORY if i < len(names) - 1 else 0
                try:
                    child = os.open(part, _OPEN | os.O_NOFOLLOW | folder, dir_fd=fd)
                except OSError as exc:
                    raise self._open_error(exc, text, part, fd) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_error(self, exc: OSError, text: str, part: str | None = None, folder_fd: int | None = None):
        """A readable SourceError for a failed open (of `part` inside `folder_fd` on a confined walk)."""
        # O_NOFOLLOW on a link: ELOOP (Linux, macOS), or ENOTDIR when a folder was asked for on some systems
        if part is not None and (exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(part, folder_fd))):
            return SourceError(f"{text!r}: {part!r} is a symbolic link; links are not followed inside the "
                               f"media folders, as one can lead outside the allowed media folders "
                               f"({self.describe()})")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return SourceError(f"file not found: {text!r}")
        if exc.errno == errno.ENXIO:  # a socket or a device without a driver
            return SourceError(f"{text!r} is not a regular file")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return SourceError(f"{text!r} cannot be read: permission denied")
        return SourceError(f"cannot open {text!r}: {exc.strerror or exc}")

    def _bounded(self, read: Callable[[int], bytes], what: str) -> bytes:
        """Everything `read` gives, refused as soon as it passes `max_bytes` (never more held in memory)."""
        chunks, total = [], 0
        while total <= self.max_bytes:
            chunk = read(min(_CHUNK, self.max_bytes + 1 - total))
            if not isinstance(chunk, (bytes, bytearray)):
                raise SourceError(f"{what}: the file object returned {type(chunk).__name__}, not bytes "
                                  "(open it in 'rb' mode)")
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > self.max_bytes:
            raise SourceError(f"{what} is more than the limit of {self.max_bytes} bytes")
        return b"".join(chunks)

    # --- URLs ----------------------------------------------------------------------------------------

    def _fetch(self, url: str) -> bytes:
        """GET `url` within `url_timeout` in all, following at most MAX_REDIRECTS redirects, each re-checked."""
        deadline = _Deadline(time.monotonic() + self.url_timeout, url, self.url_timeout)
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            target = urllib.parse.urlsplit(current)
            if target.scheme not in ("http", "https") or not target.hostname:
                via = f" (a redirect from {url})" if current != url else ""
                raise SourceError(f"{current!r} is not an http(s) URL with a host{via}")
            try:
                port = target.port
            except ValueError:
                raise SourceError(f"{current!r} has an invalid port") from None
            tls = ssl.create_default_context() if target.scheme == "https" else None
            connection = (http.client.HTTPSConnection(target.hostname, port, context=tls) if tls
                          else http.client.HTTPConnection(target.hostname, port))
            sock = None
            try:
                sock = self._connect(target.hostname, connection.port, tls, current, deadline)
                connection.sock = _DeadlineSocket(sock, deadline)
                connection.request("GET", urllib.parse.urlunsplit(("", "", target.path or "/", target.query, "")))
                response = connection.getresponse()
                if response.status in _REDIRECTS and response.getheader("Location"):
                    current = urllib.parse.urljoin(current, response.getheader("Location"))
                    continue
                if not 200 <= response.status < 300:
                    raise SourceError(f"cannot fetch {current}: HTTP {response.status} {response.reason}")
                length = response.getheader("Content-Length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise SourceError(f"{current} is {length} bytes, more than the limit of {self.max_bytes}")
                return self._bounded(response.read, current)
            except SourceError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                raise SourceError(f"cannot fetch {current}: {exc}") from None
            finally:
                connection.close()
                if sock is not None:
                    sock.close()
        raise SourceError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _connect(self, host: str, port: int, tls: ssl.SSLContext | None, url: str,
                 deadline: _Deadline) -> socket.socket:
        """A socket connected to one of the host's allowed addresses (TLS when given a context). Each
        address is checked before connecting and the connection is made to that very address, so a name
        that resolves elsewhere a moment later (DNS rebinding) changes nothing."""
        refused, error = [], None
        for family, kind, proto, _, address in _lookup(host, port, url, deadline):
            if not self._reachable(address[0]):
                refused.append(address[0])
                continue
            timeout = deadline.left()
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
                if tls is not None:  # the timeout bounds the whole handshake
                    sock = tls.wrap_socket(sock, server_hostname=host)
                return sock
            except TimeoutError:
                sock.close()
                raise deadline.expired() from None
            except OSError as exc:
                sock.close()
                error = exc
        if error is None:
            raise SourceError(f"{url}: {host} is a loopback, private or link-local address "
                              f"({', '.join(refused)}); set allow_private_networks to fetch from it")
        raise SourceError(f"cannot fetch {url}: {error}")

    def _reachable(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 scope ("fe80::1%eth0") is no part of it
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return True
        allowed = self.allow_private_networks
        return allowed is True or (allowed is not False and any(ip in network for network in allowed))


def _is_link(name: str, folder_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _Deadline:
    """The instant a URL fetch must be done by."""

    def __init__(self, at: float, url: str, timeout: float):
        self.at, self.url, self.timeout = at, url, timeout

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> SourceError:
        return SourceError(f"{self.url} took longer than the limit of {self.timeout:g} s (url_timeout)")


def _lookup(host: str, port: int, url: str, deadline: _Deadline) -> list:
    """getaddrinfo within the deadline (the resolver has no timeout of its own; a stuck lookup is left
    to finish in a daemon thread)."""
    result: list = []

    def lookup():
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=lookup, name="ibllm-url-lookup", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if not result:
        raise deadline.expired()
    if isinstance(result[0], OSError):
        raise SourceError(f"cannot fetch {url}: cannot look up {host}: {result[0]}")
    return result[0]


class _DeadlineSocket:
    """The socket http.client reads and writes through, each operation given only the time left, so a
    server sending one byte a second cannot stretch a fetch past the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self.sock, self.deadline = sock, deadline

    def _arm(self) -> None:
        self.sock.settimeout(self.deadline.left())

    def sendall(self, data) -> None:
        self._arm()
        self._io(self.sock.sendall, data)

    def recv_into(self, buffer) -> int:
        self._arm()
        return self._io(self.sock.recv_into, buffer)

    def _io(self, op, arg):
        try:
            return op(arg)
        except TimeoutError:
            raise self.deadline.expired() from None

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        """Nothing: http.client closes the connection while the response is still being read (a real
        socket waits for its files); the fetch closes the socket once it is done."""


class _Reader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.sock.recv_into(buffer)
