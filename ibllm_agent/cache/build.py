"""Filling a visual cache: media encoded with ImageBind, or vectors copied from another cache.

Both are idempotent and resumable because every item's id is fixed before anything is stored:
the sha256 of the file's bytes for media (the same file twice is one item), the position for
vectors copied out of a FAISS index. Each batch is committed on its own, ids already present are
skipped before any decoding or encoding, so a build killed at any point (kill -9 included) is
finished by running the same command again, with nothing lost and nothing stored twice.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ibllm_agent import modalities as registry
from ibllm_agent.cache.base import CacheError, VisualCache
from ibllm_agent.media.source import file_sha256

logger = logging.getLogger(__name__)

DEFAULT_MODALITIES = registry.MEDIA
"""What a folder build encodes by default: every medium of the registry, not text files (notes, READMEs)."""
PATH_COLUMNS = ("path", "uri", "file")
CAPTION_COLUMNS = ("caption", "label")


@dataclass(frozen=True)
class MediaItem:
    """One input of a build: a file, what is known about it, and its content id."""

    path: Path
    caption: str | None = None
    """A caption or label when the CSV gives one."""
    modality: str | None = None
    """A modality hint ("audio" on an MP4 means its sound track); None = detect from the content."""
    extra: dict = field(default_factory=dict)
    """Other CSV columns, kept as metadata."""
    problem: str | None = None
    """Why the path is not a readable file (a dangling link, a FIFO, ...): a build reports it, never opens it."""

    def content_id(self) -> str:
        return file_sha256(self.path)


@dataclass
class BuildReport:
    """What a build did; `failed` lists (path, reason) of inputs that could not be loaded."""

    inputs: int = 0
    unique: int = 0
    added: int = 0
    already_present: int = 0
    skipped_modality: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def list_media(source: str | Path) -> list[MediaItem]:
    """The inputs of a folder (every non-hidden file below it, sorted) or of a CSV of paths.

    A CSV needs a header with a `path` (or `uri`, `file`) column; `caption` (or `label`) and
    `modality` are used when present, other columns become metadata. Relative paths are taken
    from the CSV's folder. A folder's links to folders are followed. What is not a readable
    file (a symlink loop, a dangling link, a FIFO, socket or device, an unreadable folder) is
    listed with its `problem`, so that a build reports it instead of skipping it silently.
    """
    source = Path(source)
    if source.is_dir():
        return sorted(_walk(source), key=lambda item: item.path)
    if not source.is_file():
        raise CacheError(f"{source} is neither a folder nor a CSV file")
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        path_col = next((c for c in PATH_COLUMNS if c in columns), None)
        if path_col is None:
            raise CacheError(f"{source}: a CSV of media needs a header with a {' / '.join(PATH_COLUMNS)} column, "
                             f"got {reader.fieldnames}")
        items = []
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get(path_col):
                continue
            path = Path(row.pop(path_col))
            path = path if path.is_absolute() else source.parent / path
            caption = next((row.pop(c) for c in CAPTION_COLUMNS if row.get(c)), None)
            modality = row.pop("modality", "") or None
            extra = {k: v for k, v in row.items() if v and k not in CAPTION_COLUMNS}
            items.append(MediaItem(path, caption, modality, extra, problem=_stat(path)[1]))
    return items


def _walk(top: Path) -> list[MediaItem]:
    """The non-hidden files below `top` and the entries that are not readable files, following links."""
    items: list[MediaItem] = []
    top_stat = top.stat()
    walked = {(top_stat.st_dev, top_stat.st_ino)}  # two links to one folder list it once
    stack = [(top, frozenset(walked))]  # a folder and the folders enclosing it (to tell a loop)
    while stack:
        folder, enclosing = stack.pop()
        try:
            with os.scandir(folder) as entries:
                paths = [Path(e.path) for e in entries if not e.name.startswith(".")]
        except OSError as e:
            items.append(MediaItem(folder, problem=f"unreadable folder: {e.strerror or e}"))
            continue
        for path in paths:
            st, problem = _stat(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in enclosing:
                    items.append(MediaItem(path, problem="symlink loop: a link to a folder that encloses it"))
                elif key not in walked:
                    walked.add(key)
                    stack.append((path, enclosing | {key}))
                continue
            items.append(MediaItem(path, problem=problem))
    return items


FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"))


def _stat(path: Path) -> tuple[os.stat_result | None, str | None]:
    """What `path` leads to (links followed) and why it cannot be an input, if so; never opens it.

    Folders are left to the caller. Opening a FIFO blocks and reading a device may never end, so
    anything but a regular file or a folder is a problem.
    """
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        if e.errno == errno.ENOENT and path.is_symlink():
            return None, f"dangling symlink to {os.readlink(path)}"
        return None, e.strerror or str(e)
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return st, None
    kind = next((name for test, name in FILE_KINDS if test(st.st_mode)), "an unknown kind of file")
    return st, f"not a regular file but {kind}"


BATCH_SIZE = 16
"""Files a single-process build encodes per model call."""


def build_from_media(items: Sequence[MediaItem], cache: VisualCache,
                     encode: Callable[[list], np.ndarray], *, batch_size: int = BATCH_SIZE,
                     modalities: Iterable[str] = DEFAULT_MODALITIES, progress: bool = False,
                     load: Callable | None = None) -> BuildReport:
    """Encode `items` with `encode(list[MediaInput]) -> (n, dim)` and add the new ones to `cache`.

    `encode` is typically `ImageBindLLM.encode`; `load` defaults to `ibllm_agent.media.load_media`.
    Inputs listed with a `problem` and inputs that fail to load are reported in `failed`, not fatal.
    Returns a `BuildReport`.
    """
    if load is None:
        from ibllm_agent.media import load_media as load
    from ibllm_agent.media import MediaError

    modalities = {registry.canonical(m) for m in modalities}
    report = BuildReport(inputs=len(items))
    ids: dict[str, tuple[int, MediaItem]] = {}  # content id -> the first file of it and its position
    for position, item in enumerate(tqdm(items, desc="hashing", unit="file", disable=not progress)):
        if item.problem:
            report.failed.append((str(item.path), item.problem))
            continue
        try:
            ids.setdefault(item.content_id(), (position, item))
        except OSError as e:
            report.failed.append((str(item.path), str(e)))
    report.unique = len(ids)
    present = cache.existing_ids(list(ids))
    report.already_present = len(present)
    todo = [(i, position, item) for i, (position, item) in ids.items() if i not in present]
    bar = tqdm(total=len(todo), desc="encoding", unit="file", disable=not progress)
    for lo in range(0, len(todo), batch_size):
        loaded, keep = [], []
        for item_id, position, item in todo[lo:lo + batch_size]:
            try:
                media = load(item.path, item.modality)
            except MediaError as e:
                report.failed.append((str(item.path), str(e)))
                continue
            if media.modality not in modalities:
                report.skipped_modality += 1
                continue
            loaded.append(media)
            keep.append((item_id, position, item))
        if loaded:
            vectors = np.asarray(encode(loaded), dtype=np.float32)  # (n, dim)
            metas = [item_metadata(item, media, item_id) for (item_id, _, item), media in zip(keep, loaded)]
            report.added += add_in_order(cache, vectors, [k[0] for k in keep], metas, [k[1] for k in keep])
        bar.update(min(batch_size, len(todo) - lo))
    bar.close()
    for path, reason in report.failed:
        logger.warning("not added: %s (%s)", path, reason)
    return report


def add_in_order(cache, vectors: np.ndarray, ids: list[str], metadatas: list[dict], positions: list[int]) -> int:
    """`cache.add` of a build's batch; a writer that orders its items itself (`FaissShards`, whose merged
    index follows the listing) is also given each item's position in the listing."""
    if getattr(cache, "takes_positions", False):
        return cache.add(vectors, ids=ids, metadatas=metadatas, positions=positions)
    return cache.add(vectors, ids=ids, metadatas=metadatas)


def item_metadata(item: MediaItem, media, item_id: str) -> dict:
    """What a build stores beside the vector of `item` (loaded as `media`, content id `item_id`)."""
    meta = {"uri": str(item.path.resolve()), "modality": media.modality, "sha256": item_id, "name": media.name,
            "mime": media.mime, **item.extra}
    if item.caption:
        meta["caption"] = item.caption
    return meta


def copy_cache(batches: Iterable[tuple[list[str], np.ndarray, list[dict]]], dest: VisualCache, *, total: int,
               progress: bool = False, desc: str = "copying") -> int:
    """Add (ids, vectors, metadatas) batches to `dest`, skipping ids it already holds; returns how many were added.

    With `FaissCache.iter_batches` as the source (ids = positions) this is the resumable
    import of the official knn.index; with `ChromaCache.iter_batches` it is the export.
    """
    added = 0
    with tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not progress) as bar:
        for ids, vectors, metas in batches:
            added += dest.add(vectors, ids=ids, metadatas=metas)
            bar.update(len(ids))
    return added
