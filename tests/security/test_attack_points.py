"""Hostile point-cloud files: header counts that lie, tens of MB of rows after them, clouds over
max_points, and large valid text clouds. Each is loaded in a child process that reports its own
peak memory, which must stay under 4x the file size and 1 GiB (the text parsers used to split the
whole file into Python strings first: 40x its size, 10 GB for a 250 MB PCD that declared 1 point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ibllm_agent.media import CorruptMediaError, MediaLimits, MediaTooLargeError, load_media

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20

# Loads argv[1] as a point cloud with max_points argv[2] and prints the outcome, the seconds taken
# and the growth of the peak RSS over the RSS before loading (the peak is reset first).
CHILD = r"""
import json, sys, time
from ibllm_agent.media import MediaError, MediaLimits, load_media

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
before = kib("VmRSS:")
t0 = time.perf_counter()
try:
    item = load_media(sys.argv[1], limits=MediaLimits(max_points=int(sys.argv[2])), exact_upstream=True)
    out = {"outcome": item.tensor.shape[0]}
except MediaError as e:
    out = {"outcome": type(e).__name__, "message": str(e)}
out.update(seconds=time.perf_counter() - t0, grew=(kib("VmHWM:") - before) * 1024)
print(json.dumps(out))
"""


def _rows(n: int, colours: bool = False) -> bytes:
    """n text rows of varied coordinates (a 4096-row block repeated: fast to make)."""
    p = np.random.default_rng(0).normal(size=(4096, 3))
    block = "".join(f"{x:.6f} {y:.6f} {z:.6f}" + (" 200 120 40\n" if colours else "\n") for x, y, z in p.tolist())
    block = block.encode()
    return block * (n // 4096) + b"".join(block.splitlines(keepends=True)[: n % 4096])


def _pcd(n: int, mode: str = "ascii") -> bytes:
    return (f"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {n}\nHEIGHT 1\n"
            f"POINTS {n}\nDATA {mode}\n").encode()


def _ply(n: int, fmt: str = "ascii", colours: bool = False) -> bytes:
    props = "".join(f"property float {c}\n" for c in "xyz")
    props += "".join(f"property uchar {c}\n" for c in ("red", "green", "blue")) if colours else ""
    return f"ply\nformat {fmt} 1.0\nelement vertex {n}\n{props}end_header\n".encode()


# name: (content, max_points, expected outcome: an error class name or the number of points)
CASES = {
    "pcd declares 1 point, 54 MB of rows follow": (lambda: _pcd(1) + _rows(2_000_000), 20_000_000, "CorruptMediaError"),
    "binary pcd declares 1 point, 54 MB follow": (lambda: _pcd(1, "binary") + bytes(54 * MB), 20_000_000,
                                                  "CorruptMediaError"),
    "pcd declares 10^12 points": (lambda: _pcd(10**12) + _rows(2_000_000), 20_000_000, "CorruptMediaError"),
    "binary ply declares 10^9 vertices, 54 MB follow": (lambda: _ply(10**9, "binary_little_endian") + bytes(54 * MB),
                                                        20_000_000, "CorruptMediaError"),
    "off declares 10^8 vertices, 54 MB of rows follow": (lambda: b"OFF\n100000000 0 0\n" + _rows(2_000_000),
                                                         20_000_000, "CorruptMediaError"),
    # The rows after the declared vertices are the faces section, which is never read.
    "off declares 1 vertex, 54 MB of rows follow": (lambda: b"OFF\n1 0 0\n" + _rows(2_000_000), 20_000_000, 1),
    "off declares 2M vertices over max_points": (lambda: b"OFF\n2000000 0 0\n" + _rows(2_000_000), 1_000_000,
                                                 "MediaTooLargeError"),
    "xyz 54 MB over max_points": (lambda: _rows(2_000_000), 1_000_000, "MediaTooLargeError"),
    "obj 58 MB over max_points": (lambda: b"v " + _rows(2_000_000).replace(b"\n", b"\nv ")[:-2], 1_000_000,
                                  "MediaTooLargeError"),
    "xyz 32 MB valid": (lambda: _rows(1_200_000), 20_000_000, 1_200_000),
    "ascii ply 32 MB valid": (lambda: _ply(850_000, colours=True) + _rows(850_000, colours=True), 20_000_000, 850_000),
}
FIGURES: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        for name, line in FIGURES.items():
            reporter.write_line(f"{name:52s} {line}")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_bounded(name, tmp_path):
    make, max_points, expected = CASES[name]
    path = tmp_path / ("cloud." + next(w for w in name.split() if w in ("pcd", "ply", "off", "xyz", "obj")))
    path.write_bytes(make())
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(max_points)], capture_output=True, text=True,
                          timeout=50, env=env, check=True)
    out = json.loads(done.stdout)
    FIGURES[name] = (f"{size / MB:5.0f} MB  peak +{out['grew'] / MB:4.0f} MB  {out['seconds']:5.2f} s  "
                     f"{out['outcome']}")
    assert out["outcome"] == expected, out
    assert path.name in out.get("message", path.name)
    assert out["grew"] <= min(4 * size, 1 << 30), out


@pytest.mark.parametrize("name,data,match", [
    ("huge.pcd", _pcd(10**12) + b"0 0 0\n", r"declares 1000000000000 points \(POINTS\), which take at least"),
    ("negative.pcd", _pcd(-3) + b"0 0 0\n", "negative"),
    ("short.pcd", _pcd(5, "binary") + bytes(12 * 4), r"declares 5 points \(POINTS\), which take at least 60 bytes, but 48"),
    ("long.pcd", _pcd(5, "binary") + bytes(12 * 6), "declares 5 points .* but the data holds 6"),
    ("extra.pcd", _pcd(2) + b"0 0 0\n1 1 1\n2 2 2\n", "declares 2 points .* but more rows follow"),
    ("blank.pcd", _pcd(3) + b"0 0 0\n1 1 1\n\n\n\n\n\n", "declares 3 points but the file holds 2"),
    ("huge.ply", _ply(10**9) + b"0 0 0\n", r"declares 1000000000 vertices \('element vertex'\), which take at least"),
    ("short.ply", _ply(3, "binary_big_endian") + bytes(30), r"declares 3 vertices .* 36 bytes, but 30"),
    ("huge.off", b"OFF\n1000 0 0\n0 0 0\n", "declares 1000 vertices, which take at least 5999 bytes"),
    ("open.ply", _ply(1)[:-11] + b"0 0 0\n" * 9, "without 'end_header'"),
    ("longline.xyz", b"0 0 0\n" + b"1" * (5 * MB), "a line longer than"),
])
def test_lying_headers_are_corrupt(name, data, match):
    with pytest.raises(CorruptMediaError, match=match) as e:
        load_media(data, name=name)
    assert e.value.source == name


def test_counts_against_max_points():
    with pytest.raises(MediaTooLargeError, match="11 points, over the limit of 10"):
        load_media(_pcd(11) + b"0 0 0\n" * 11, name="many.pcd", limits=MediaLimits(max_points=10))
    with pytest.raises(MediaTooLargeError, match="more than 10 points"):
        load_media(b"0 0 0\n" * 11, name="many.xyz", limits=MediaLimits(max_points=10))
    assert load_media(b"0 0 0\n" * 9 + b"1 1 1\n", name="ten.xyz", limits=MediaLimits(max_points=10),
                      exact_upstream=True).tensor.shape == (10, 3)


def test_what_stays_accepted():
    """Edges of the streaming parsers that valid files hit: blocks, line ends, padding, headers."""
    pts = np.random.default_rng(1).normal(size=(300_000, 3)).astype(np.float32)  # several 1 MiB blocks
    text = "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in pts.tolist())
    rec = pts.astype("<f4").tobytes()
    faces = (b"\x03" + np.arange(3, dtype="<i4").tobytes()) * 200_000  # 3 MB of faces before the vertices
    files = {
        "crlf.xyz": b"\xef\xbb\xbfx,y,z\r\n" + text.replace(" ", ",").replace("\n", "\r\n").encode(),
        "cr.xyz": text.replace("\n", "\r").encode(),
        "trailing.pcd": _pcd(len(pts)) + text.encode() + b"\n  \n\n",
        "padded.pcd": _pcd(len(pts), "binary") + rec + b"\n",
        "comments.off": f"# mesh\nOFF {len(pts)} 1 0\n# vertices\n".encode() + text.encode() + b"3 0 1 2\n",
        "camera.ply": _ply(len(pts)).replace(b"element vertex", b"element camera 2\nproperty float k\nelement vertex")
        + b"1\n2\n" + text.encode() + b"junk after the vertices\n",
        "faces_first.ply": _ply(len(pts), "binary_little_endian").replace(
            b"element vertex", b"element face 200000\nproperty list uchar int vertex_indices\nelement vertex")
        + faces + rec,
    }
    for name, data in files.items():
        got = load_media(data, name=name, exact_upstream=True).tensor
        assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(pts)), name
