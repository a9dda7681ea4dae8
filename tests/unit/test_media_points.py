"""Point clouds: every file format written here, farthest point sampling, duplication, normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ibllm_agent.media import CorruptMediaError, UnsupportedFormatError, load_media
from ibllm_agent.media.points import NUM_POINTS, farthest_point_sample, normalize_points

RNG = np.random.default_rng(0)
CLOUD = (RNG.normal(size=(500, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 2.0]).astype(np.float32)
COLOURS = RNG.integers(0, 256, (500, 3), dtype=np.uint8)


def _ply_ascii() -> bytes:
    head = ("ply\nformat ascii 1.0\ncomment made in a test\nelement vertex 500\nproperty float x\nproperty float y\n"
            "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
            "property list uchar int vertex_indices\nend_header\n")
    rows = "".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(CLOUD.tolist(), COLOURS.tolist()))
    return (head + rows + "3 0 1 2\n").encode()


def _ply_binary(endian: str) -> bytes:
    fmt = "binary_little_endian" if endian == "<" else "binary_big_endian"
    head = (f"ply\nformat {fmt} 1.0\nelement vertex 500\nproperty float nx\nproperty double x\nproperty double y\n"
            "property double z\nproperty uchar red\nproperty float intensity\nend_header\n").encode()
    dtype = np.dtype([("nx", endian + "f4"), ("x", endian + "f8"), ("y", endian + "f8"), ("z", endian + "f8"),
                      ("red", "u1"), ("intensity", endian + "f4")])
    rec = np.zeros(500, dtype)
    rec["x"], rec["y"], rec["z"] = CLOUD.T
    return head + rec.tobytes()


def _pcd(mode: str) -> bytes:
    head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\n"
            f"COUNT 1 1 1 1\nWIDTH 500\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 500\nDATA {mode}\n").encode()
    if mode == "ascii":
        return head + "".join(f"{x!r} {y!r} {z!r} 4278190080\n" for x, y, z in CLOUD.tolist()).encode()
    rec = np.zeros(500, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")]))
    rec["x"], rec["y"], rec["z"] = CLOUD.T
    return head + rec.tobytes()


def _npz() -> bytes:
    b = io.BytesIO()
    np.savez(b, points=CLOUD, colors=COLOURS)
    return b.getvalue()


def _npy() -> bytes:
    b = io.BytesIO()
    np.save(b, np.concatenate([CLOUD, COLOURS.astype(np.float32)], axis=1))  # extra columns are ignored
    return b.getvalue()


def _pt() -> bytes:
    b = io.BytesIO()
    torch.save({"xyz": torch.from_numpy(CLOUD)}, b)
    return b.getvalue()


FILES = {
    "cloud.ply": _ply_ascii,
    "little.ply": lambda: _ply_binary("<"),
    "big.ply": lambda: _ply_binary(">"),
    "cloud.pcd": lambda: _pcd("ascii"),
    "binary.pcd": lambda: _pcd("binary"),
    "cloud.xyz": lambda: "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in CLOUD.tolist()).encode(),
    "cloud.txt": lambda: ("# x,y,z,r,g,b\n" + "".join(f"{x!r},{y!r},{z!r},1,2,3\n" for x, y, z in CLOUD.tolist())).encode(),
    "cloud.csv": lambda: ("X,Y,Z,R,G,B\n" + "".join(f"{x!r},{y!r},{z!r},1,2,3\n" for x, y, z in CLOUD.tolist())).encode(),
    "cloud.obj": lambda: ("# obj\no thing\n" + "".join(f"v {x!r} {y!r} {z!r} 0.5 0.5 0.5\n" for x, y, z in CLOUD.tolist())
                          + "vn 0 0 1\nf 1 2 3\n").encode(),
    "cloud.off": lambda: ("OFF\n# comment\n500 1 0\n" + "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in CLOUD.tolist())
                          + "3 0 1 2\n").encode(),
    "cloud.npy": _npy,
    "cloud.npz": _npz,
    "cloud.pt": _pt,
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_formats_give_the_same_points(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(FILES[name]())
    raw = load_media(path, exact_upstream=True)
    assert raw.modality == "point" and raw.tensor.shape == (500, 3)
    assert torch.allclose(raw.tensor.float(), torch.from_numpy(CLOUD), atol=1e-6)
    item = load_media(path)
    assert item.tensor.shape == (NUM_POINTS, 3) and item.tensor.dtype == torch.float32
    assert item.tensor.mean(0).abs().max() < 1e-5
    assert item.tensor.norm(dim=1).max() == pytest.approx(1.0, abs=1e-6)
    assert item.meta["normalized"] is True


def test_duplication_is_deterministic_and_in_order():
    pts = torch.from_numpy(CLOUD)
    out, changed = normalize_points(pts)
    assert changed
    # point i of the output is input i mod 500 (before centring and scaling)
    assert torch.allclose(out[500:1000], out[:500]) and torch.allclose(out[8000:], out[:192])


def test_fps_spreads_points_and_starts_at_zero():
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(20000, 3, generator=g) * 0.01  # a tight blob
    outliers = torch.tensor([[5.0, 0, 0], [-5.0, 0, 0], [0, 5.0, 0]])
    pts = torch.cat([dense, outliers])
    idx = farthest_point_sample(pts, 64)
    assert idx[0] == 0 and len(set(idx.tolist())) == 64
    assert {20000, 20001, 20002} <= set(idx.tolist())  # the far points are taken first
    assert torch.equal(idx, farthest_point_sample(pts, 64))


def test_large_cloud_is_reduced_deterministically():
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(30000, 3, generator=g)
    a, _ = normalize_points(pts)
    b, _ = normalize_points(pts.clone())
    assert a.shape == (NUM_POINTS, 3) and torch.equal(a, b)


def test_already_normalised_cloud_is_untouched():
    pts = torch.randn(NUM_POINTS, 3, generator=torch.Generator().manual_seed(3))
    pts = pts - pts.mean(0)
    pts = pts / pts.norm(dim=1).max()
    out, changed = normalize_points(pts)
    assert not changed and torch.equal(out, pts)


def test_bad_point_files():
    with pytest.raises(CorruptMediaError, match="x, y, z"):
        load_media(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float a\nend_header\n1\n", name="noxyz.ply")
    with pytest.raises(UnsupportedFormatError, match="binary_compressed"):
        load_media(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1\nHEIGHT 1\n"
                   b"POINTS 1\nDATA binary_compressed\n\x00\x00", name="c.pcd")
    with pytest.raises(CorruptMediaError, match="declares 10 vertices"):
        load_media(b"OFF\n10 0 0\n0 0 0\n", name="short.off")
    b = io.BytesIO()
    torch.save(torch.zeros(5, 2), b)
    with pytest.raises(CorruptMediaError, match=r"\[N, 3\]"):
        load_media(b.getvalue(), name="flat.pt")
