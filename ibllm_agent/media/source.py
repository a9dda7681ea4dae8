"""One media input, whatever the caller passed: a path, bytes or a binary file-like object.

Loaders ask it for the first bytes (to detect the format), all bytes, or a real file path
(OpenCV and ffmpeg need one). A path is never copied; bytes and file-likes are written to a
temporary file only for the duration of a `with source.as_path()` block, which removes it
even when decoding fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import EmptyMediaError, MediaError, MediaTooLargeError
from .limits import MediaLimits


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (content ids, cache keys, download checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SourceLike = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

HEAD_BYTES = 8192


class Source:
    """A media input with a display name, its size, its sha256 and its leading bytes."""

    def __init__(self, src: SourceLike, limits: MediaLimits, name: str | None = None):
        self.path: Path | None = None
        self._data: bytes | None = None
        if isinstance(src, (str, os.PathLike)):
            self.path = Path(src)
            if not self.path.is_file():
                raise MediaError(name or str(src), "no such file" if not self.path.exists() else "not a file")
            self.name = name or self.path.name
            self.size = self.path.stat().st_size
        elif isinstance(src, (bytes, bytearray, memoryview)):
            self._data = bytes(src)
            self.name = name or "<bytes>"
            self.size = len(self._data)
        elif hasattr(src, "read"):
            self.name = name or Path(str(getattr(src, "name", "") or "<stream>")).name
            self._data = _read_bounded(src, limits.max_file_bytes, self.name)
            self.size = len(self._data)
        else:
            raise TypeError(f"expected a path, bytes or a binary file object, got {type(src).__name__}")
        if self.size > limits.max_file_bytes:
            raise MediaTooLargeError(
                self.name, f"{self.size} bytes, over the limit of {limits.max_file_bytes} (MediaLimits.max_file_bytes)"
            )
        if self.size == 0:
            raise EmptyMediaError(self.name, "the input is empty (0 bytes)")
        self.head = self._read_head()
        self._sha256: str | None = None

    @property
    def suffix(self) -> str:
        """Lower-case extension of the name, e.g. ".wav" (a hint only; content decides)."""
        return Path(self.name).suffix.lower()

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = (hashlib.sha256(self._data).hexdigest() if self._data is not None
                            else file_sha256(self.path))
        return self._sha256

    def read_bytes(self) -> bytes:
        if self._data is not None:
            return self._data
        return self.path.read_bytes()

    def open(self) -> BinaryIO:
        return io.BytesIO(self._data) if self._data is not None else open(self.path, "rb")

    @contextlib.contextmanager
    def as_path(self, suffix: str = "") -> Iterator[Path]:
        """A real file holding the content: the original path, or a temporary copy removed on exit."""
        if self.path is not None:
            yield self.path.resolve()
            return
        fd, tmp = tempfile.mkstemp(prefix="ibllm-media-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._data)
            yield Path(tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _read_head(self) -> bytes:
        if self._data is not None:
            return self._data[:HEAD_BYTES]
        with open(self.path, "rb") as f:
            return f.read(HEAD_BYTES)


def _read_bounded(stream: BinaryIO, limit: int, name: str) -> bytes:
    """Read a file-like object, refusing before holding more than `limit` bytes in memory."""
    data = stream.read(limit + 1)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{name}: the file object returned {type(data).__name__}, not bytes (open it in 'rb' mode)")
    if len(data) > limit:
        raise MediaTooLargeError(name, f"more than {limit} bytes (MediaLimits.max_file_bytes)")
    return bytes(data)
