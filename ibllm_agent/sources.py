"""Where media may be read from: local files confined to root folders, optional URLs, size limits.

Tools and chat messages name media by path or URL, and those names may come from an LLM or a
user, so every read goes through a `SourcePolicy`:

- a local path must resolve (symlinks followed) to a regular file inside one of `roots`;
  relative paths are taken against the first root; a `..` component is refused outright, even
  when it would stay inside, so a name cannot climb out by construction;
- `file://` URLs are local paths; `http(s)://` is fetched only when `allow_urls` is set; every
  other scheme is refused;
- files and downloads larger than `max_bytes` are refused before they are read in full.

`roots=None` lifts the confinement (any local file the process can read): for code that builds
its own messages, never for tools driven by a model.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # a 7 s 1080p clip or a few million points; far beyond the toy media

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class SourceError(ValueError):
    """A media name that the policy refuses or that cannot be read; the message is meant for the caller."""


@dataclass(frozen=True)
class SourcePolicy:
    """Rules for reading media named by path or URL."""

    roots: tuple[Path, ...] | None = None
    """Folders local files must lie in (resolved at construction, symlinks followed); None = no confinement."""
    allow_urls: bool = False
    """Fetch http(s) URLs; off by default (no network side effects from a model's tool call)."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest file or download accepted."""
    url_timeout: float = 30.0
    """Seconds to wait for a URL."""

    def __post_init__(self):
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

    def resolve(self, name: str | os.PathLike) -> Path:
        """The confined, existing regular file that `name` (a path or file:// URL) refers to."""
        text = os.fspath(name)
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
        if not path.is_absolute():
            if self.roots is None:
                path = Path.cwd() / path
            else:
                path = self.roots[0] / path
        try:
            real = path.resolve(strict=True)
        except (FileNotFoundError, RuntimeError, OSError):
            raise SourceError(f"file not found: {text!r}") from None
        if self.roots is not None and not any(real.is_relative_to(root) for root in self.roots):
            raise SourceError(f"{text!r} is outside the allowed media folders ({self.describe()})")
        if not real.is_file():
            raise SourceError(f"{text!r} is not a regular file")
        size = real.stat().st_size
        if size > self.max_bytes:
            raise SourceError(f"{text!r} is {size} bytes, more than the limit of {self.max_bytes}")
        return real

    def read(self, name: str | os.PathLike) -> tuple[Path | bytes, str]:
        """A local file (as a confined Path) or, when allowed, a downloaded URL (bytes); plus a display name."""
        text = os.fspath(name)
        scheme = (m.group(1).lower() if (m := _SCHEME.match(text)) else "")
        if scheme in ("http", "https"):
            if not self.allow_urls:
                raise SourceError(f"URLs are disabled; give a local file instead of {text!r}")
            return self._fetch(text), PurePosixPath(urllib.parse.urlparse(text).path).name or "download"
        path = self.resolve(text)
        return path, path.name

    def _fetch(self, url: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.url_timeout) as response:  # noqa: S310 (scheme checked)
                length = response.headers.get("Content-Length")
                if length is not None and int(length) > self.max_bytes:
                    raise SourceError(f"{url} is {length} bytes, more than the limit of {self.max_bytes}")
                data = response.read(self.max_bytes + 1)
        except SourceError:
            raise
        except Exception as exc:  # URLError, timeouts, HTTP errors: all are "cannot read this source"
            raise SourceError(f"cannot fetch {url}: {exc}") from None
        if len(data) > self.max_bytes:
            raise SourceError(f"{url} is more than the limit of {self.max_bytes} bytes")
        return data
