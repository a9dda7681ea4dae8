"""The `ibllm` command, run in-process on the tiny model."""

from __future__ import annotations

import io
from pathlib import Path

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


@pytest.fixture
def ui_runs(monkeypatch) -> list[list[str]]:
    """The Streamlit command lines `ibllm ui` would run (nothing is started)."""
    seen = []
    monkeypatch.setattr(cli, "run_supervised", lambda cmd, name: seen.append(cmd) or 0)
    return seen


def test_ui_passes_streamlit_options_through(ui_runs, capsys):
    assert cli.main(["ui", "--server.port", "8600", "--server.headless", "true"]) == 0
    cmd = ui_runs[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app.py")
    # this machine only and no tracebacks, unless asked; no `--` (no arguments for the app)
    assert cmd[5:] == ["--server.address", "127.0.0.1", "--client.showErrorDetails", "none",
                       "--server.port", "8600", "--server.headless", "true"]
    assert capsys.readouterr().err == ""


def test_ui_flags_become_streamlit_options_and_app_arguments(ui_runs, capsys, tmp_path):
    assert cli.main(["ui", "--host", "::1", "--port", "8600", "--debug", "--config", "ui.toml", "--",
                     "--server.headless", "true"]) == 0
    assert ui_runs[0][5:] == ["--server.address", "::1", "--server.port", "8600", "--client.showErrorDetails", "full",
                              "--server.headless", "true", "--", "--config", str(Path("ui.toml").absolute()),
                              "--debug"]
    assert capsys.readouterr().err == ""  # ::1 is this machine


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "example.org"])
def test_ui_on_another_host_warns(ui_runs, capsys, host):
    assert cli.main(["ui", "--host", host]) == 0
    assert ui_runs[0][5:7] == ["--server.address", host]
    err = capsys.readouterr().err
    assert err.startswith(f"warning: the app will listen on {host}, not only on this machine") and "anyone" in err


@pytest.mark.parametrize("option, flag", [("--server.address", "--host"), ("--server.address=0.0.0.0", "--host"),
                                          ("--client.showErrorDetails", "--debug")])
def test_ui_refuses_streamlit_options_it_sets_itself(ui_runs, capsys, option, flag):
    """Passed after ours they would win: an address given that way would skip the warning."""
    assert cli.main(["ui", option, *(["0.0.0.0"] if "=" not in option else [])]) == 2
    assert f"is set by `ibllm ui`; use {flag}" in capsys.readouterr().err and not ui_runs


def test_loopback_addresses():
    assert all(map(cli.is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "unix:///tmp/ui.sock"]))
    assert not any(map(cli.is_loopback, ["0.0.0.0", "::", "10.0.0.1", "ui.example.org", ""]))


def test_a_supervised_child_that_ends_by_itself_gives_its_exit_code():
    import sys

    assert cli.run_supervised([sys.executable, "-c", "raise SystemExit(3)"], "child") == 3
    assert cli.run_supervised([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], "child") == 137


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(capsys, tmp_path):
    import os
    import signal
    import sys
    import threading
    import time

    ready = tmp_path / "ready"
    code = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")

    def stop_us():  # as if `kill` hit `ibllm ui`, once the child ignores SIGTERM
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_us, daemon=True).start()
    assert cli.run_supervised([sys.executable, "-c", code, str(ready)], "stubborn", grace=0.5) == 137
    assert "stubborn did not stop within 0.5 s; killed it" in capsys.readouterr().err


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
