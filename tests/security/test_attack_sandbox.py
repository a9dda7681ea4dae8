"""Attacks on the media sandbox (`SourcePolicy` and everything that reads media through it).

The attacker can write inside a media root and races the reader: it swaps a regular file for a
symbolic link to a file outside the root, for a FIFO, or swaps a folder for a link to an outside
folder, with `os.rename` in a tight loop, while the test calls the real readers (`SourcePolicy.read`,
the `describe_media` and `embed_media` tools on the tiny model) for a few seconds. Not one call may
see the outside file's bytes, every refusal must be a typed error, and no call may block. Then the
static cases (links, sockets, devices, hard links) and the one byte limit every kind of source
passes. Each race prints its figures: attempts, escapes, hangs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import pytest
import torch
from langchain_core.messages import HumanMessage
from langchain_media import write_image

import ibllm_agent
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import ContentError, parse_message
from ibllm_agent.embeddings import (
    ImageBindEmbeddingFunction,
    ImageBindEmbeddings,
    ImageBindMediaLoader,
    MediaRef,
)
from ibllm_agent.perception_tools import get_tools
from ibllm_agent.sources import SourceError, SourcePolicy

pytestmark = pytest.mark.timeout(60)

RACE_SECONDS = 3.0
HANG_SECONDS = 1.0


@pytest.fixture(scope="module")
def llm():
    return ibllm_agent.load("tiny")


@pytest.fixture()
def world(tmp_path):
    """root/photo.png and root/sub/photo.png (a red circle) inside; outside/photo.png (a blue square, the
    secret) and outside/secret.png beside the root, on the same file system (rename works across)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    write_image(root / "photo.png")
    write_image(root / "sub" / "photo.png")
    write_image(outside / "photo.png", (30, 60, 220), "square")
    write_image(outside / "secret.png", (30, 60, 220), "square")
    return root, outside


class Swapper(threading.Thread):
    """Swaps `target` back and forth between its regular file and something else, as fast as it can."""

    def __init__(self, root: Path, outside: Path, kind: str):
        super().__init__(daemon=True)
        self.kind, self.stop, self.swaps = kind, threading.Event(), 0
        if kind == "folder-link":  # root/sub <-> a link to the outside folder
            self.target, self.real, self.other = root / "sub", root / ".sub-real", root / ".sub-link"
            os.symlink(outside, self.other)
        else:
            self.target, self.real, self.other = root / "photo.png", root / ".real.png", root / ".other.png"
            if kind == "file-link":
                os.symlink(outside / "secret.png", self.other)
            else:
                os.mkfifo(self.other)

    def run(self):
        while not self.stop.is_set():
            os.rename(self.target, self.real)  # target's file aside (a folder cannot be renamed over)
            os.rename(self.other, self.target)  # the link or FIFO in its place
            os.rename(self.target, self.other)
            os.rename(self.real, self.target)  # and back
            self.swaps += 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


def race(call, swapper: Swapper, seconds: float = RACE_SECONDS) -> Counter:
    """Call `call()` in a loop while `swapper` runs; counts outcomes: what call() returns, or the
    exception's type name, and "hang" for calls slower than HANG_SECONDS."""
    outcomes = Counter()
    with swapper:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            try:
                outcomes[call()] += 1
            except Exception as exc:  # noqa: BLE001 (counted and checked by the caller)
                outcomes[type(exc).__name__] += 1
            if time.monotonic() - start > HANG_SECONDS:
                outcomes["hang"] += 1
    outcomes["swaps"] = swapper.swaps
    return outcomes


def report(what: str, outcomes: Counter) -> None:
    attempts = sum(n for k, n in outcomes.items() if k not in ("swaps", "hang"))
    print(f"\n{what}: attempts {attempts}, escapes {outcomes['escape']}, hangs {outcomes['hang']}, "
          f"read {outcomes['inside']}, refused {attempts - outcomes['inside'] - outcomes['escape']}, "
          f"swaps {outcomes['swaps']}, {dict(outcomes)}")


def check(outcomes: Counter, refusals: set[str]) -> None:
    """No escape, no hang, only typed refusals, and the race really happened (both sides were seen)."""
    assert outcomes["escape"] == 0 and outcomes["hang"] == 0, outcomes
    unexpected = set(outcomes) - {"inside", "escape", "hang", "swaps"} - refusals
    assert not unexpected, outcomes
    assert outcomes["inside"] > 0 and sum(outcomes[r] for r in refusals) > 0, outcomes
    assert outcomes["swaps"] > 100, outcomes


KINDS = ["file-link", "fifo", "folder-link"]


def target_name(kind: str) -> str:
    return "sub/photo.png" if kind == "folder-link" else "photo.png"


@pytest.mark.parametrize("kind", KINDS)
def test_race_policy_read(world, kind):
    root, outside = world
    inside, secret = (root / "photo.png").read_bytes(), (outside / "secret.png").read_bytes()
    policy, name = SourcePolicy(roots=(root,)), target_name(kind)

    def call():
        data, _ = policy.read(name)
        return "escape" if data == secret else "inside" if data == inside else "other"

    outcomes = race(call, Swapper(root, outside, kind), seconds=2.0)  # tens of thousands of reads
    report(f"SourcePolicy.read, {kind} swapped in", outcomes)
    check(outcomes, {"SourceError"})


@pytest.mark.parametrize("kind", KINDS)
def test_race_describe_media(world, llm, monkeypatch, kind):
    """The issue's attack: describe_media on a file that keeps turning into a link or a FIFO. The
    spy sees the sha256 of every input the model encodes."""
    root, outside = world
    inside = hashlib.sha256((root / "photo.png").read_bytes()).hexdigest()
    secret = hashlib.sha256((outside / "secret.png").read_bytes()).hexdigest()
    encoded = []
    real_encode = llm.encode
    monkeypatch.setattr(llm, "encode", lambda items: encoded.extend(i.sha256 for i in items) or real_encode(items))
    tool = {t.name: t for t in get_tools(llm, roots=[root], max_tokens=1)}["describe_media"]

    def call():
        encoded.clear()
        msg = tool.invoke({"name": tool.name, "args": {"path": target_name(kind)},
                           "id": f"c{uuid.uuid4().hex[:6]}", "type": "tool_call"})
        if msg.status == "error":
            return msg.content.split(":")[0]  # the exception's type name, e.g. "SourceError"
        return "escape" if secret in encoded else "inside" if encoded == [inside] else "other"

    outcomes = race(call, Swapper(root, outside, kind), seconds=RACE_SECONDS + 1)
    report(f"describe_media, {kind} swapped in", outcomes)
    check(outcomes, {"SourceError"})


def test_race_embed_media(world, llm):
    """embed_media's vector must always be the inside file's (its LRU cache is keyed by content, so a
    leaked outside file would come back with the outside vector)."""
    root, outside = world
    emb = ImageBindEmbeddings(model=llm)
    inside_vec, secret_vec = (torch.tensor(v) for v in emb.embed_media([(root / "photo.png").read_bytes(),
                                                                        (outside / "secret.png").read_bytes()]))
    assert not torch.allclose(inside_vec, secret_vec, atol=1e-4)
    tool = {t.name: t for t in get_tools(llm, roots=[root])}["embed_media"]

    def call():
        msg = tool.invoke({"name": tool.name, "args": {"path": "photo.png"}, "id": "c1", "type": "tool_call"})
        if msg.status == "error":
            return msg.content.split(":")[0]
        vector = torch.tensor(msg.artifact)
        return "escape" if torch.allclose(vector, secret_vec, atol=1e-4) else \
            "inside" if torch.allclose(vector, inside_vec, atol=1e-4) else "other"

    outcomes = race(call, Swapper(root, outside, "file-link"))
    report("embed_media, file-link swapped in", outcomes)
    check(outcomes, {"SourceError"})


# --- what is refused without a race -------------------------------------------------------------------


@pytest.mark.parametrize("make, name, message", [
    (lambda root, out: os.symlink(out / "secret.png", root / "link.png"), "link.png", "'link.png' is a symbolic link"),
    (lambda root, out: os.symlink(out, root / "dir"), "dir/secret.png", "'dir' is a symbolic link"),
    (lambda root, out: os.symlink(root / "sub", root / "alias"), "alias/photo.png", "'alias' is a symbolic link"),
    (lambda root, out: os.symlink(out / "secret.png", root / "sub" / "deep.png"), "sub/deep.png", "symbolic link"),
    (lambda root, out: os.mkfifo(root / "pipe.png"), "pipe.png", "not a regular file"),
    (lambda root, out: None, "sub", "not a regular file"),
])
def test_links_fifos_and_folders_are_refused(world, make, name, message):
    root, outside = world
    make(root, outside)
    start = time.monotonic()
    with pytest.raises(SourceError, match=message):
        SourcePolicy(roots=(root,)).read(name)
    assert time.monotonic() - start < HANG_SECONDS


def test_a_socket_is_refused(tmp_path):
    root = Path(f"/tmp/ibllm-sock-{uuid.uuid4().hex[:8]}")  # AF_UNIX paths are short; tmp_path may be long
    root.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(root / "sock.png"))
        server.listen()
        with pytest.raises(SourceError, match="not a regular file"):
            SourcePolicy(roots=(root,)).read("sock.png")
    finally:
        server.close()
        (root / "sock.png").unlink()
        root.rmdir()


def test_devices_are_refused_even_without_confinement(tmp_path):
    with pytest.raises(SourceError, match="not a regular file"):
        SourcePolicy(roots=("/dev",)).read("null")
    unconfined = SourcePolicy(roots=None)
    for device in ("/dev/zero", "/dev/urandom"):  # endless: would fill memory up to the limit
        with pytest.raises(SourceError, match="not a regular file"):
            unconfined.read(device)
    os.mkfifo(tmp_path / "pipe")
    start = time.monotonic()
    with pytest.raises(SourceError, match="not a regular file"):
        unconfined.read(str(tmp_path / "pipe"))  # no writer: a blocking open would wait forever
    assert time.monotonic() - start < HANG_SECONDS


def test_hard_links_are_refused_when_asked(world):
    """A hard link inside the root to an outside file is, by every check a path allows, a file inside the
    root (the README's security section says so); refuse_hard_links refuses every file with st_nlink > 1."""
    root, outside = world
    os.link(outside / "secret.png", root / "hard.png")
    assert SourcePolicy(roots=(root,)).read("hard.png")[0] == (outside / "secret.png").read_bytes()
    strict = SourcePolicy(roots=(root,), refuse_hard_links=True)
    with pytest.raises(SourceError, match="'hard.png' has 2 hard links.*refuse_hard_links"):
        strict.read("hard.png")
    assert strict.read("photo.png")[1] == "photo.png"


def test_hard_link_refusal_reaches_the_tools(world, llm):
    root, outside = world
    os.link(outside / "secret.png", root / "hard.png")
    tools = {t.name: t for t in get_tools(llm, policy=SourcePolicy(roots=(root,), refuse_hard_links=True))}
    msg = tools["embed_media"].invoke({"name": "embed_media", "args": {"path": "hard.png"}, "id": "h1",
                                       "type": "tool_call"})
    assert msg.status == "error" and "hard links" in msg.content
    chat = tools["describe_media"].perception.chat
    with pytest.raises(ContentError, match="hard links"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "hard.png"}])])
    with pytest.raises(ValueError, match="give the source policy media roots"):
        get_tools(llm, policy=SourcePolicy(roots=None))


def test_the_graph_encodes_what_it_routed(world, llm, monkeypatch):
    """The graph keeps no media in its state: encode reads the file again, and refuses it when it is not
    what route looked at (swapped in between)."""
    import ibllm_agent.media as media
    from ibllm_agent.graphs import build_perception_graph

    root, outside = world
    real_detect = media.detect_format

    def detect_then_swap(*args, **kwargs):
        found = real_detect(*args, **kwargs)
        os.replace(outside / "photo.png", root / "photo.png")  # a regular file, other content
        return found

    graph = build_perception_graph(llm, roots=[root], max_tokens=1)
    monkeypatch.setattr(media, "detect_format", detect_then_swap)
    with pytest.raises(SourceError, match="'photo.png' changed between the route and encode steps"):
        graph.invoke({"question": "?", "media": ["photo.png"]})
    os.symlink(outside / "secret.png", root / "link.png")
    with pytest.raises(SourceError, match="symbolic link"):
        graph.invoke({"question": "?", "media": ["link.png"]})


def test_decoders_temporary_copies_are_removed(world, llm, tmp_path, monkeypatch):
    """Media now arrive as bytes; ffmpeg and OpenCV get a temporary copy, removed after decoding, even
    when decoding fails."""
    import tempfile

    from langchain_media import make_media

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    root, _ = world
    files = make_media(root / "media")
    (root / "media" / "broken.mp4").write_bytes(files["video"].read_bytes()[:600])
    tools = {t.name: t for t in get_tools(llm, roots=[root / "media"], max_tokens=1)}
    for path, status in [("clip.mp4", "success"), ("tone.wav", "success"), ("broken.mp4", "error")]:
        msg = tools["describe_media"].invoke({"name": "describe_media", "args": {"path": path}, "id": "t1",
                                              "type": "tool_call"})
        assert msg.status == status, msg.content
    assert list(spool.iterdir()) == []


# --- one byte limit for every kind of source -----------------------------------------------------------


def feed(kind: str, root: Path, llm, limit: int, url: str):
    """Send root/photo.png through one kind of source under a byte limit of `limit`."""
    data = (root / "photo.png").read_bytes()
    b64 = base64.b64encode(data).decode()
    policy = SourcePolicy(roots=(root,), max_bytes=limit, allow_urls=True, allow_private_networks=True)
    emb = ImageBindEmbeddings(model=llm, media_policy=policy, cache_entries=0)
    blocks = {
        "base64 block": {"type": "image", "base64": b64, "mime_type": "image/png"},
        "line-wrapped base64": {"type": "image", "base64": "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)),
                                "mime_type": "image/png"},
        "data: URL": {"type": "image", "url": f"data:image/png;base64,{b64}"},
        "percent-encoded data: URL": {"type": "image", "url": "data:image/png," + urllib.parse.quote(data)},
        "path block": {"type": "image", "url": "photo.png"},
        "URL block": {"type": "image", "url": f"{url}/photo.png"},
    }
    if kind in blocks:
        return parse_message(HumanMessage(content=[blocks[kind]]), policy)
    if kind == "chat model":
        chat = ChatImageBindLLM(model=llm, media_policy=policy, max_tokens=1)
        return chat.invoke([HumanMessage(content=[blocks["base64 block"]])])
    return {
        "local file": lambda: policy.read("photo.png"),
        "URL": lambda: policy.read(f"{url}/photo.png"),
        "bytes (embed_media)": lambda: emb.embed_media([data]),
        "file object (embed_media)": lambda: emb.embed_media([io.BytesIO(data)]),
        "path (embed_media)": lambda: emb.embed_media(["photo.png"]),
        "MediaRef (chromadb function)": lambda: ImageBindEmbeddingFunction(emb)([MediaRef(data, "photo.png")]),
        "chromadb loader": lambda: ImageBindMediaLoader(roots=[root], max_bytes=limit)(["photo.png"]),
        "describe_media tool": lambda: _tool_result(get_tools(llm, policy=policy, max_tokens=1), "photo.png"),
    }[kind]()


def _tool_result(tools, path):
    msg = {t.name: t for t in tools}["describe_media"].invoke(
        {"name": "describe_media", "args": {"path": path}, "id": "d1", "type": "tool_call"})
    if msg.status == "error":
        raise SourceError(msg.content)
    return msg


SOURCE_KINDS = ["local file", "URL", "base64 block", "line-wrapped base64", "data: URL", "percent-encoded data: URL",
                "path block", "URL block", "chat model", "bytes (embed_media)", "file object (embed_media)",
                "path (embed_media)", "MediaRef (chromadb function)", "chromadb loader", "describe_media tool"]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_one_byte_limit_for_every_source(world, llm, serve_folder, kind):
    root, _ = world
    size = (root / "photo.png").stat().st_size
    url = serve_folder(root)
    feed(kind, root, llm, size, url)  # exactly at the limit: accepted
    with pytest.raises((SourceError, ContentError), match=rf"(more|larger) than the limit of {size - 1}\b"):
        feed(kind, root, llm, size - 1, url)
