"""Attacks on the files around a cache: sidecar names and rows, a corrupt Chroma folder, odd build inputs.

Every failure must be a `CacheError` naming the file (and the row, for a sidecar), or for a build
an entry of `BuildReport.failed` with its reason; nothing may block (a FIFO is never opened).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibllm_agent.cache import CacheError
from ibllm_agent.cache.build import build_from_media, list_media
from ibllm_agent.cache.cli import main as cache_cli
from ibllm_agent.cache.faiss import FaissCache, sidecar_path

ROOT = Path(__file__).resolve().parents[2]
VECTORS = np.eye(4, 8, dtype=np.float32)


def save_with_sidecar(path: Path) -> Path:
    metas = [{"modality": "image", "uri": f"/data/{i}.png"} for i in range(4)]
    return FaissCache.from_vectors(VECTORS, ids=list("abcd"), metadatas=metas).save(path)


@pytest.mark.parametrize("name", ["a#b.index", "what?.index", "a%41b.index", "100%.index", "x y&z=1#?%.index"])
def test_sidecar_opens_for_any_file_name(tmp_path, name):
    cache = FaissCache.load(save_with_sidecar(tmp_path / name), dim=None)
    res = cache.search(VECTORS[1:2], 1)
    assert res.ids == [["b"]] and res.metadatas[0][0]["uri"] == "/data/1.png"
    assert cache.stats()["modalities"] == {"image": 4}


def rewrite_sidecar(path: Path, *sql: str) -> Path:
    with sqlite3.connect(sidecar_path(path)) as db:
        for statement in sql:
            db.execute(statement)
    db.close()
    return sidecar_path(path)


FOREIGN_TABLE = ("DROP TABLE items", "CREATE TABLE items (pos, id, metadata)")


@pytest.mark.parametrize("sql, reason", [
    (["UPDATE items SET metadata = '{bad' WHERE pos = 2"], "row 2 (pos 2): the metadata '{bad' is not valid JSON"),
    (["UPDATE items SET metadata = '[1, 2]' WHERE pos = 1"], "row 1 (pos 1): the metadata '[1, 2]' is not a JSON object"),
    (["UPDATE items SET metadata = '{\"a\": NaN}' WHERE pos = 3"], "row 3 (pos 3): the metadata"),
    (["UPDATE items SET pos = -1 WHERE pos = 0"], "row -1 (pos -1): the position is not a non-negative integer"),
    ([*FOREIGN_TABLE, "INSERT INTO items VALUES (0, 'a', NULL)"], "row 1 (pos 0): the metadata None is not a text"),
    ([*FOREIGN_TABLE, "INSERT INTO items VALUES (0, NULL, '{}')"], "row 1 (pos 0): the id None is not a text"),
    ([*FOREIGN_TABLE, "INSERT INTO items VALUES ('x', 'a', '{}')"], "row 1 (pos 'x'): the position is not"),
    ([*FOREIGN_TABLE, "INSERT INTO items VALUES (0, 7, '{}')"], "row 1 (pos 0): the id 7 is not a text"),
    (["DROP TABLE items", "CREATE TABLE other (x)"], "has no items table with pos, id and metadata columns"),
])
def test_bad_sidecar_rows_name_the_file_and_row(tmp_path, sql, reason):
    path = save_with_sidecar(tmp_path / "bad#1.index")
    sidecar = rewrite_sidecar(path, *sql)
    with pytest.raises(CacheError) as caught:
        FaissCache.load(path, dim=None)
    assert str(caught.value).startswith(f"metadata sidecar {sidecar}") and reason in str(caught.value)


def test_unreadable_sidecars_and_the_cli(tmp_path, capsys):
    path = save_with_sidecar(tmp_path / "c.index")
    sidecar_path(path).write_bytes(b"SQLite format 3\0" + b"\1" * 200)
    with pytest.raises(CacheError, match=f"metadata sidecar {sidecar_path(path)} is unreadable"):
        FaissCache.load(path, dim=None)
    save_with_sidecar(path)
    rewrite_sidecar(path, "UPDATE items SET metadata = 'null' WHERE pos = 0")
    assert cache_cli(["cache", "stats", "--faiss", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: metadata sidecar {sidecar_path(path)}, row 0 (pos 0)" in err and "Traceback" not in err
    # Bytes that are not UTF-8 are stored as text by SQLite: they are replaced, not a failure on every lookup.
    save_with_sidecar(path)
    rewrite_sidecar(path, "UPDATE items SET id = CAST(x'ff62' AS TEXT) WHERE pos = 1")
    assert FaissCache.load(path, dim=None).search(VECTORS[1:2], 1).ids == [["\ufffdb"]]


# Opens each folder given on the command line and uses it; one result line per folder. Chroma runs
# in Rust, so a damaged database is tried out of the test process.
CHROMA_WORKER = r"""
import sys
import numpy as np
from ibllm_agent.cache import CacheError
from ibllm_agent.cache.chroma import ChromaCache
for folder in sys.argv[1:]:
    try:
        cache = ChromaCache.open("visual", path=folder, dim=8, create=False)
        cache.stats()
        cache.search(np.ones((1, 8), np.float32), 3)
        print("ok", flush=True)
    except CacheError as e:
        print("typed " + " ".join(str(e).split()), flush=True)
    except BaseException as e:
        print("untyped " + type(e).__name__ + ": " + " ".join(str(e).split())[:300], flush=True)
"""


def test_corrupt_chroma_folder_is_a_cache_error_naming_it(tmp_path, capsys):
    from ibllm_agent.cache.chroma import ChromaCache, connect

    good = tmp_path / "good"
    client = connect(good)
    x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    ChromaCache.open("visual", client=client, dim=8).add(
        x, ids=[f"id{i}" for i in range(400)], metadatas=[{"uri": f"/x/{i}.png", "modality": "image"} for i in range(400)])
    client.clear_system_cache()
    data = (good / "chroma.sqlite3").read_bytes()
    page = 4096
    damaged = {"garbage": b"this is not a database" * 100, "truncated": data[:5 * page]}
    for n in range(1, len(data) // page, max(1, len(data) // page // 8)):  # one zeroed page at a time
        damaged[f"zero-page-{n}"] = data[:n * page] + bytes(page) + data[(n + 1) * page:]
    folders = []
    for name, content in damaged.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        (folder / "chroma.sqlite3").write_bytes(content)
        folders.append(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHROMA_WORKER, *map(str, folders)], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = dict(zip(damaged, proc.stdout.splitlines()))
    assert len(results) == len(damaged)
    for name, line in results.items():  # a zeroed page may be one Chroma never reads: then it works
        assert line == "ok" or re.match(f"typed Chroma folder {re.escape(str(tmp_path / name))}[: ]", line), (name, line)
    assert results["garbage"].startswith("typed") and results["truncated"].startswith("typed")
    assert cache_cli(["cache", "stats", "--collection", "visual", "--path", str(folders[0])]) == 2
    assert re.search(f"error: Chroma folder {re.escape(str(folders[0]))}[: ]", capsys.readouterr().err)


def write_png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)


@pytest.mark.timeout(60)  # a build that opened the FIFO would block here
def test_build_reports_links_fifos_sockets_devices_and_unreadable_folders(tmp_path, monkeypatch):
    media, outside = tmp_path / "media", tmp_path / "outside"
    (media / "sub").mkdir(parents=True)
    (media / "locked").mkdir()
    outside.mkdir()
    write_png(media / "a.png", 0)
    write_png(media / "sub" / "b.png", 1)
    write_png(outside / "c.png", 2)
    (media / "album").symlink_to(outside)  # a link to a folder: followed
    (media / "dangling.png").symlink_to(tmp_path / "gone.png")
    (media / "loop1").symlink_to(media / "loop2")
    (media / "loop2").symlink_to(media / "loop1")
    (media / "sub" / "up").symlink_to(media)  # a folder loop
    (media / "null").symlink_to("/dev/null")
    os.mkfifo(media / "pipe.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(media / "sock"))
    (media / "locked" / "d.png").write_bytes(b"")
    (media / "locked").chmod(0)
    if os.access(media / "locked", os.R_OK):  # root reads any folder: refuse it the way the kernel would
        scandir = os.scandir

        def refuse_locked(path):
            if Path(path) == media / "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return scandir(path)
        monkeypatch.setattr(os, "scandir", refuse_locked)
    try:
        items = list_media(media)
        report = build_from_media(items, FaissCache.create(8), lambda batch: np.ones((len(batch), 8), np.float32))
    finally:
        (media / "locked").chmod(0o755)
        server.close()
    assert sorted(i.path.relative_to(media).as_posix() for i in items if i.problem is None) == [
        "a.png", "album/c.png", "sub/b.png"]
    expected = {
        "dangling.png": f"dangling symlink to {tmp_path / 'gone.png'}",
        "locked": "unreadable folder: Permission denied",
        "loop1": "symlink loop",
        "loop2": "symlink loop",
        "null": "not a regular file but a character device",
        "pipe.png": "not a regular file but a FIFO",
        "sock": "not a regular file but a socket",
        "sub/up": "symlink loop: a link to a folder that encloses it",
    }
    assert {Path(p).relative_to(media).as_posix(): reason for p, reason in report.failed} == expected
    assert (report.inputs, report.added) == (3 + len(expected), 3)


@pytest.mark.timeout(60)
def test_csv_inputs_are_checked_the_same_way(tmp_path):
    write_png(tmp_path / "a.png", 0)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing.png")
    (tmp_path / "list.csv").write_text("path\na.png\npipe.png\ngone\nmissing.png\n")
    report = build_from_media(list_media(tmp_path / "list.csv"), FaissCache.create(8),
                              lambda batch: np.ones((len(batch), 8), np.float32))
    assert report.added == 1 and report.failed == [
        (str(tmp_path / "pipe.png"), "not a regular file but a FIFO"),
        (str(tmp_path / "gone"), f"dangling symlink to {tmp_path / 'nothing.png'}"),
        (str(tmp_path / "missing.png"), "No such file or directory")]
