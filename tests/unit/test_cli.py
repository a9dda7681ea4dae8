"""The `ibllm` command, run in-process on the tiny model."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import ibllm_agent
from ibllm_agent import cli, pretrained
from ibllm_agent.generation import format_prompt
from ibllm_agent.media import load_media


@pytest.fixture(scope="module")
def tiny():
    return ibllm_agent.load("tiny")


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def test_parse_media_weights():
    assert cli.parse_media("a.png") == ("a.png", 1.0)
    assert cli.parse_media("a.png:0.25") == ("a.png", 0.25)
    assert cli.parse_media("dir:x/a.png") == ("dir:x/a.png", 1.0)


def test_ask_streams_the_greedy_answer(tiny, image_file, capsys):
    rc = cli.main(["ask", "--model", "tiny", "--temperature", "0", "--max-gen-len", "6", "--image",
                   f"{image_file}:0.5", "What colour is it?"])
    out, err = capsys.readouterr()
    assert rc == 0 and "[tiny]" in err
    feature = tiny.fuse(tiny.encode([load_media(image_file, "image")]), [0.5])
    expected = tiny.generate_batch([format_prompt("What colour is it?")], feature, max_tokens=6, temperature=0.0)
    assert out == expected[0].text + "\n"


def test_ask_text_only_with_input_field(tiny, capsys):
    assert cli.main(["ask", "--model", "tiny", "--temperature", "0", "--max-gen-len", "4", "--input", "a dog",
                     "Describe it."]) == 0
    expected = tiny.generate_batch([format_prompt("Describe it.", "a dog")], None, max_tokens=4, temperature=0.0)
    assert capsys.readouterr().out == expected[0].text + "\n"


def test_chat_reads_questions_and_attachments(tiny, image_file, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {image_file}\nWhat is it?\n/clear\nAnd now?\n/quit\n"))
    assert cli.main(["chat", "--model", "tiny", "--temperature", "0", "--max-gen-len", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    feature = tiny.fuse(tiny.encode([load_media(image_file, "image")]), [1.0])
    first = tiny.generate_batch([format_prompt("What is it?")], feature, max_tokens=4, temperature=0.0)[0].text
    second = tiny.generate_batch([format_prompt("And now?")], None, max_tokens=4, temperature=0.0)[0].text
    assert out == [first, second]


def test_errors_are_short_and_name_the_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ibllm_agent.pretrained.TOY_DIR", tmp_path)
    assert cli.main(["ask", "hello"]) == 2
    assert "toy model is not built" in capsys.readouterr().err
    assert cli.main(["ask", "--model", "tiny", "--audio", str(tmp_path / "missing.wav"), "hi"]) == 2
    assert "missing.wav" in capsys.readouterr().err


def test_download_command_uses_the_registry(tmp_path, capsys, monkeypatch, serve_folder):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "w.bin").write_bytes(b"weights" * 1000)
    url = f"{serve_folder(tmp_path / 'srv')}/w.bin"
    monkeypatch.setitem(pretrained.FILES, "test-w", pretrained.WeightFile("test-w", "w.bin", url, "test"))
    assert cli.main(["download", "test-w", "--dest", str(tmp_path / "dl"), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dl" / "w.bin")
    assert (tmp_path / "dl" / "w.bin").read_bytes() == b"weights" * 1000


def test_doctor_and_registered_subcommands(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "toy model:" in out and "ffmpeg" in out
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"ask", "chat", "download", "doctor", "ui"} <= set(commands)
    assert "cache" in commands  # ibllm_agent.cache.cli registers itself


def test_ui_passes_streamlit_options_through(monkeypatch):
    seen = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    assert cli.main(["ui", "--server.port", "8600", "--server.headless", "true"]) == 0
    assert seen[0][-4:] == ["--server.port", "8600", "--server.headless", "true"]
    assert seen[0][1:4] == ["-m", "streamlit", "run"]


def test_unknown_options_are_refused_outside_ui(capsys):
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--server.port", "8600"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_doctor_starts_clean_without_an_ffmpeg_on_path(tmp_path):
    """pydub warns "Couldn't find ffmpeg" at import when none is on PATH; we hand it imageio-ffmpeg's, so the
    first command a user runs must not open with that warning."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": str(tmp_path)}  # no ffmpeg anywhere on PATH
    out = subprocess.run([sys.executable, "-m", "ibllm_agent.cli", "doctor"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Couldn't find ffmpeg" not in out.stderr and "Warning" not in out.stderr, out.stderr
    assert "ffmpeg: " in out.stdout and "pydub " in out.stdout
