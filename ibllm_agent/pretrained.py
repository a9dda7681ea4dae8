"""Where the official weights come from, and a resumable download used only when asked for.

Nothing here touches the network at import or from `load(...)`: `download(name, dest_dir)` (or
`ibllm download NAME`) fetches a file into the download folder, and `load` then finds it there.
URLs are the ones the reference code (OpenGVLab/LLaMA-Adapter, imagebind_LLM/, commit 521a09d)
downloads from. Sizes and checksums are not published upstream, so none are recorded: a download is
checked against the server's Content-Length only.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ibllm_agent.checkpoint import MissingFileError
from ibllm_agent.media.source import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["FILES", "MODELS", "TOY_DIR", "DownloadError", "ToyFiles", "WeightFile", "available_models",
           "default_dir", "download", "local_imagebind", "local_path", "toy_files"]

TOY_DIR = Path(__file__).resolve().parent / "assets" / "toy"
"""The shipped toy world model, in the official file layout (described by its toy.json)."""


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file."""

    name: str
    """Registry name (`download(name)`, `load(name)` for adapters)."""
    filename: str
    """File name in the download folder."""
    url: str
    """Where the reference code fetches it."""
    description: str
    size: int | None = None
    """Bytes, when known (checked after download)."""
    sha256: str | None = None
    """Hex digest, when known (checked after download)."""


MODELS: dict[str, WeightFile] = {
    "7B": WeightFile("7B", "7B.pth", "https://huggingface.co/Cxxs/ImageBind-LLM/resolve/main/7B.pth",
                     "ImageBind-LLM 7B adapter, instruction-finetuned (bind network, prefix, gates, bias, LoRA, norms)"),
    "7B-pretrained": WeightFile(
        "7B-pretrained", "7B-pretrained.pth", "https://huggingface.co/Cxxs/ImageBind-LLM/resolve/main/7B-pretrained.pth",
        "ImageBind-LLM 7B adapter after image-caption pretraining only (load with phase='pretrain')"),
}
"""Adapter checkpoints: the names `load()` accepts (besides "toy", "tiny" and paths)."""

FILES: dict[str, WeightFile] = {
    **MODELS,
    "imagebind_w3D": WeightFile(
        "imagebind_w3D", "imagebind_w3D.pth",
        "https://huggingface.co/ZiyuG/ImageBind_w3D/resolve/e9206a10f118b0790c730264e7b3aa5c324c35cb/imagebind_w3D.pth",
        "ImageBind huge + Point-Bind 3D encoder (point_trunk); the encoder ImageBind-LLM uses"),
    "imagebind_huge": WeightFile(
        "imagebind_huge", "imagebind_huge.pth", "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
        "ImageBind huge (no 3D encoder)"),
    "knn.index": WeightFile(
        "knn.index", "knn.index", "https://huggingface.co/csuhan/knn/resolve/main/knn.index",
        "Visual cache: FAISS IndexFlatIP of ~3M ImageBind image features (load with knn=True)"),
}
"""Every file the registry knows."""


@dataclass(frozen=True)
class ToyFiles:
    """The files of a toy model build (`toy.json` names them relative to its folder)."""

    root: Path
    adapter: Path
    llama_dir: Path
    llama_type: str
    imagebind: Path
    knn_index: Path
    meta: dict


def toy_files(root: str | Path | None = None) -> ToyFiles:
    """The files of the toy model in `root` (default: the shipped one, `TOY_DIR`), read from its toy.json."""
    import json

    root = Path(root) if root is not None else TOY_DIR
    meta_path = root / "toy.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{meta_path}: the toy model is not built (run `python tools/build_toy_model.py`), "
                               "or load the official weights: load('7B', llama_dir=...)", file=meta_path)
    meta = json.loads(meta_path.read_text())
    return ToyFiles(root, root / meta.get("adapter", "adapter.pth"), root / meta.get("llama_dir", "llama"),
                    meta.get("llama_type", "toy"), root / meta.get("imagebind", "imagebind.pth"),
                    root / meta.get("knn_index", "knn.index"), meta)


class DownloadError(RuntimeError):
    """A download that failed (network, HTTP status, size or checksum mismatch); partial data is kept."""


def available_models() -> list[str]:
    """Adapter names `load()` accepts from the registry (the reference's `llama.available_models()`)."""
    return list(MODELS)


def default_dir() -> Path:
    """The download folder: $IBLLM_HOME, else ~/.cache/ibllm_agent."""
    return Path(os.environ.get("IBLLM_HOME") or Path.home() / ".cache" / "ibllm_agent")


def local_path(name: str, root: str | Path | None = None) -> Path:
    """The downloaded file of registry entry `name`; MissingFileError with the command to fetch it."""
    entry = _entry(name)
    root = Path(root) if root is not None else default_dir()
    path = root / entry.filename
    if not path.is_file():
        raise MissingFileError(f"{path}: {entry.description} is not downloaded; fetch it with "
                               f"`ibllm download {entry.name} --dest {root}` ({entry.url})", file=path)
    return path


def local_imagebind(root: str | Path | None = None) -> Path:
    """imagebind_w3D.pth if downloaded, else imagebind_huge.pth (without 3D), else MissingFileError."""
    try:
        return local_path("imagebind_w3D", root)
    except MissingFileError as first:
        try:
            return local_path("imagebind_huge", root)
        except MissingFileError:
            raise first from None


def _entry(name: str | WeightFile) -> WeightFile:
    if isinstance(name, WeightFile):
        return name
    if name not in FILES:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(FILES)}")
    return FILES[name]


def download(name: str | WeightFile, dest_dir: str | Path | None = None, *, progress: bool = True,
             chunk_size: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Fetch a registry file into `dest_dir` (default `default_dir()`) and return its path.

    Resumes: bytes already in `<file>.part` are kept and the rest is requested with an HTTP Range
    header (a server that ignores it makes the download start over). The file appears under its
    final name only when complete (atomic rename). An existing complete file is not fetched again.
    """
    entry = _entry(name)
    dest = Path(dest_dir) if dest_dir is not None else default_dir()
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / entry.filename
    if final.is_file() and (entry.size is None or final.stat().st_size == entry.size):
        logger.info("%s already present", final)
        return final
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": "ibllm-agent"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and (entry.size is None or have == entry.size):
            # the server has nothing past what we hold: the partial file is complete
            return _finish(part, final, entry)
        raise DownloadError(f"{entry.url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{entry.url}: {e}") from e
    with response:
        if have and response.status != 206:
            logger.info("%s: server ignored the range request; starting over", entry.url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else entry.size
        from tqdm import tqdm

        with open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.filename,
                disable=not progress) as bar:
            try:
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(f"{entry.url}: interrupted after {out.tell()} bytes ({e}); run again to "
                                    "resume") from e
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(f"{entry.url}: got {got} of {total} bytes; run again to resume")
    return _finish(part, final, entry)


def _finish(part: Path, final: Path, entry: WeightFile) -> Path:
    size = part.stat().st_size
    if entry.size is not None and size != entry.size:
        raise DownloadError(f"{part}: {size} bytes, expected {entry.size}")
    if entry.sha256 is not None:
        digest = file_sha256(part)
        if digest != entry.sha256:
            part.unlink()
            raise DownloadError(f"{entry.url}: sha256 {digest} differs from the registry's "
                                f"{entry.sha256}; the partial file was removed")
    os.replace(part, final)
    logger.info("downloaded %s", final)
    return final
