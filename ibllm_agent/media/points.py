"""3D point clouds: parse a file into float32 [N, 3] (x, y, z; colours and other fields ignored),
then resample to 8192 points and normalise into the unit sphere.

Formats: `.pt` (a tensor, or a dict holding one; loaded with ``weights_only=True``), `.npy`/`.npz`
(no pickles), PLY (ASCII and binary, any extra properties), PCD (ASCII and binary), XYZ/TXT
(numeric columns), OBJ (``v`` lines) and OFF. No open3d.

`normalize_points` leaves a cloud that is already in the Point-Bind layout (8192 points, centred,
farthest point at distance 1) bit for bit unchanged, so the upstream example files come through
exactly. Upstream's own loader does no resampling or normalisation at all; `ibllm_agent.data`
keeps that behaviour for parity.
"""

from __future__ import annotations

import pickle
import re
import zipfile

import numpy as np
import torch

from .detect import Format
from .errors import (
    CorruptMediaError,
    EmptyMediaError,
    InvalidValuesError,
    MediaTooLargeError,
    UnsafeMediaError,
    UnsupportedFormatError,
)
from .limits import MediaLimits
from .source import Source

NUM_POINTS = 8192
FPS_MAX_CANDIDATES = 4 * NUM_POINTS
"""Larger clouds are first thinned to this many points by a seeded random draw, so that farthest
point sampling (O(N · 8192)) stays within a second or two."""
_NAMED_ARRAYS = ("points", "xyz", "pos", "coords", "vertices", "point_cloud", "pc", "data")


def load_points(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False
                ) -> tuple[torch.Tensor, dict]:
    """Parse, check and resample + normalise -> float32 [8192, 3] and metadata; `exact_upstream` keeps the
    points as stored (upstream neither resamples nor normalises)."""
    pts = parse_points(source, fmt, limits)
    meta = {"num_points_in_file": int(pts.shape[0]), "format": fmt.kind}
    if not exact_upstream:
        pts, meta["normalized"] = normalize_points(pts)
    return pts, meta


def parse_points(source: Source, fmt: Format, limits: MediaLimits) -> torch.Tensor:
    """The file's points as float32 [N, 3] (the file's dtype for .pt/.npy is kept as float)."""
    parser = _PARSERS.get(fmt.kind)
    if parser is None:
        raise UnsupportedFormatError(source.name, f"{fmt.kind} is not a point cloud format")
    try:
        arr = parser(source, limits)
    except (ValueError, IndexError, KeyError, EOFError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, (CorruptMediaError, UnsafeMediaError, MediaTooLargeError, UnsupportedFormatError)):
            raise
        raise CorruptMediaError(source.name, f"cannot parse the {fmt.kind} point cloud: {e}") from None
    return _check(arr, source.name, limits)


def _check(arr, name: str, limits: MediaLimits) -> torch.Tensor:
    t = torch.as_tensor(arr) if not isinstance(arr, torch.Tensor) else arr
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]  # a batch of one
    if t.dim() != 2 or t.shape[1] < 3:
        raise CorruptMediaError(name, f"expected points of shape [N, 3] (or more columns), got {list(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise CorruptMediaError(name, f"point coordinates of type {t.dtype}")
    t = t[:, :3]
    if t.shape[0] == 0:
        raise EmptyMediaError(name, "the point cloud has no points")
    if t.shape[0] > limits.max_points:
        raise MediaTooLargeError(name, f"{t.shape[0]} points, over the limit of {limits.max_points} (MediaLimits.max_points)")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise InvalidValuesError(name, f"{bad} of {t.shape[0]} points have NaN or infinite coordinates")
    return t.contiguous()


# ---------------------------------------------------------------- resampling and normalisation


def normalize_points(pts: torch.Tensor, n: int = NUM_POINTS) -> tuple[torch.Tensor, bool]:
    """Resample to `n` points and centre + scale into the unit sphere -> (float32 [n, 3], changed).

    Already normalised clouds (n points, centroid within 1e-4 of the origin, farthest point at
    1 ± 1e-4) are returned unchanged. Larger clouds are reduced by farthest point sampling from
    point 0; smaller ones are repeated in order (point i of the output is input i mod N).
    """
    pts = pts.to(torch.float32)
    if _is_normalized(pts, n):
        return pts, False
    if pts.shape[0] > n:
        pts = pts[farthest_point_sample(pts, n)]
    elif pts.shape[0] < n:
        pts = pts[torch.arange(n) % pts.shape[0]]
    # Centre and scale in float64: one pass of float32 rounding at the end.
    p = pts.to(torch.float64)
    p = p - p.mean(dim=0)
    radius = p.norm(dim=1).max()
    if radius > 0:
        p = p / radius
    return p.to(torch.float32), True


def _is_normalized(pts: torch.Tensor, n: int) -> bool:
    if pts.shape[0] != n:
        return False
    p = pts.to(torch.float64)
    return bool(p.mean(dim=0).abs().max() <= 1e-4 and abs(float(p.norm(dim=1).max()) - 1.0) <= 1e-4)


def farthest_point_sample(pts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of `k` points chosen by farthest point sampling, starting from point 0 (deterministic).

    NumPy on one coordinate array at a time: about 10 in-place vector ops per chosen point, single
    threaded, which keeps it fast on a busy machine where torch's thread pool would stall."""
    candidates = None
    if pts.shape[0] > FPS_MAX_CANDIDATES:
        g = torch.Generator().manual_seed(0)
        candidates = torch.randperm(pts.shape[0], generator=g)[:FPS_MAX_CANDIDATES].sort().values
        pts = pts[candidates]
    x, y, z = (np.ascontiguousarray(pts[:, j].numpy(), dtype=np.float64) for j in range(3))
    n = x.shape[0]
    chosen = np.empty(k, dtype=np.int64)
    nearest = np.full(n, np.inf)  # squared distance of each point to the chosen set
    d, tmp = np.empty(n), np.empty(n)
    current = 0
    for i in range(k):
        chosen[i] = current
        np.subtract(x, x[current], out=d)
        np.multiply(d, d, out=d)
        for c in (y, z):
            np.subtract(c, c[current], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            np.add(d, tmp, out=d)
        np.minimum(nearest, d, out=nearest)
        current = int(nearest.argmax())
    idx = torch.from_numpy(chosen)
    return candidates[idx] if candidates is not None else idx


# ---------------------------------------------------------------- parsers


def _parse_torch(source: Source, limits: MediaLimits):
    try:
        with source.open() as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global|GLOBAL)[^\n.]*", str(e))
        raise UnsafeMediaError(
            source.name, "refusing to unpickle: the file holds objects other than tensors, which could run code"
            + (f" ({found[0].strip()})" if found else "")
        ) from None
    except (RuntimeError, zipfile.BadZipFile) as e:
        raise CorruptMediaError(source.name, f"not a readable torch.save file: {str(e).splitlines()[0][:200]}") from None
    return _pick_array(obj, source.name)


def _pick_array(obj, name: str):
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj
    if isinstance(obj, dict):
        for key in _NAMED_ARRAYS:
            if key in obj:
                return obj[key]
        arrays = [v for v in obj.values() if isinstance(v, (torch.Tensor, np.ndarray))]
        if len(arrays) == 1:
            return arrays[0]
        raise CorruptMediaError(name, f"a dict without a points array (keys: {sorted(map(str, obj))[:10]})")
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], (torch.Tensor, np.ndarray)):
        return obj[0]
    raise CorruptMediaError(name, f"expected a tensor of points, found {type(obj).__name__}")


def _parse_npy(source: Source, limits: MediaLimits):
    try:
        with source.open() as f:
            return np.load(f, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise UnsafeMediaError(source.name, "refusing to unpickle an object array (allow_pickle=False)") from None
        raise


def _parse_npz(source: Source, limits: MediaLimits):
    try:
        with source.open() as f, np.load(f, allow_pickle=False) as z:
            return _pick_array({k: z[k] for k in z.files}, source.name)
    except ValueError as e:
        if "pickle" in str(e):
            raise UnsafeMediaError(source.name, "refusing to unpickle an object array (allow_pickle=False)") from None
        raise


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _parse_ply(source: Source, limits: MediaLimits):
    data = source.read_bytes()
    end = data.find(b"end_header")
    if end < 0:
        raise CorruptMediaError(source.name, "PLY header without 'end_header'")
    body = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    header = data[:end].decode("ascii", "replace").splitlines()
    fmt, elements = None, []  # elements: [name, count, [(prop, type, list_types|None)]]
    for line in header[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append([tok[1], int(tok[2]), []])
        elif tok[0] == "property" and elements:
            if tok[1] == "list":
                elements[-1][2].append((tok[4], None, (_ply_type(tok[2], source), _ply_type(tok[3], source))))
            else:
                elements[-1][2].append((tok[2], _ply_type(tok[1], source), None))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise CorruptMediaError(source.name, f"PLY format {fmt!r}")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise CorruptMediaError(source.name, "PLY without a 'vertex' element")
    count = elements[names.index("vertex")][1]
    if count > limits.max_points:
        raise MediaTooLargeError(source.name, f"{count} points, over the limit of {limits.max_points} (MediaLimits.max_points)")
    props = elements[names.index("vertex")][2]
    cols = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(cols):
        raise CorruptMediaError(source.name, f"PLY vertices without x, y, z (properties: {cols})")
    if fmt == "ascii":
        return _ply_ascii(data[body:], elements, names.index("vertex"), source.name)
    endian = "<" if fmt == "binary_little_endian" else ">"
    pos = body
    for el_name, el_count, el_props in elements:
        if el_name == "vertex":
            if any(p[2] is not None for p in el_props):
                raise UnsupportedFormatError(source.name, "PLY vertices with list properties")
            dtype = np.dtype([(p[0], endian + p[1]) for p in el_props])
            need = dtype.itemsize * el_count
            if pos + need > len(data):
                raise CorruptMediaError(
                    source.name, f"the PLY header declares {el_count} vertices ({need} bytes) but only "
                    f"{max(len(data) - pos, 0)} bytes follow"
                )
            v = np.frombuffer(data, dtype=dtype, count=el_count, offset=pos)
            return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64 if dtype["x"].itemsize == 8 else np.float32)
        pos = _skip_binary_element(data, pos, el_count, el_props, endian, source.name)
    raise AssertionError("unreachable")


def _ply_type(name: str, source: Source) -> str:
    if name not in _PLY_TYPES:
        raise CorruptMediaError(source.name, f"unknown PLY property type {name!r}")
    return _PLY_TYPES[name]


def _skip_binary_element(data: bytes, pos: int, count: int, props, endian: str, name: str) -> int:
    """Step over an element that precedes the vertices (rare: faces are normally written after)."""
    for _ in range(count):
        for _, scalar, list_types in props:
            if list_types is None:
                pos += np.dtype(scalar).itemsize
            else:
                n = int(np.frombuffer(data, endian + list_types[0], 1, pos)[0])
                pos += np.dtype(list_types[0]).itemsize + n * np.dtype(list_types[1]).itemsize
            if pos > len(data):
                raise CorruptMediaError(name, "the PLY file ends inside an element")
    return pos


def _ply_ascii(body: bytes, elements, vertex_index: int, name: str):
    lines = body.decode("ascii", "replace").splitlines()
    start = sum(e[1] for e in elements[:vertex_index])  # one line per element instance
    count = elements[vertex_index][1]
    cols = [p[0] for p in elements[vertex_index][2]]
    rows = lines[start : start + count]
    if len(rows) < count:
        raise CorruptMediaError(name, f"the PLY header declares {count} vertices but the file holds {len(rows)}")
    ix = [cols.index(c) for c in ("x", "y", "z")]
    arr = np.array([[float(r.split()[i]) for i in ix] for r in rows], dtype=np.float64)
    return arr.reshape(-1, 3).astype(np.float32)


_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def _parse_pcd(source: Source, limits: MediaLimits):
    data = source.read_bytes()
    header, pos = {}, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        nl = len(data) if nl < 0 else nl
        line = data[pos:nl].decode("ascii", "replace").strip()
        pos = nl + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        fields, sizes, types = header["FIELDS"], [int(s) for s in header["SIZE"]], header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        mode = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as e:
        raise CorruptMediaError(source.name, f"PCD header incomplete or invalid ({e})") from None
    if not {"x", "y", "z"} <= set(fields):
        raise CorruptMediaError(source.name, f"PCD without x, y, z fields (fields: {fields})")
    if n > limits.max_points:
        raise MediaTooLargeError(source.name, f"{n} points, over the limit of {limits.max_points} (MediaLimits.max_points)")
    if mode == "ascii":
        rows = [ln.split() for ln in data[pos:].decode("ascii", "replace").splitlines() if ln.strip()]
        if len(rows) < n:
            raise CorruptMediaError(source.name, f"the PCD header declares {n} points but the file holds {len(rows)}")
        starts = np.cumsum([0] + counts)
        ix = [int(starts[fields.index(c)]) for c in ("x", "y", "z")]
        return np.array([[float(r[i]) for i in ix] for r in rows[:n]], dtype=np.float64).astype(np.float32)
    if mode == "binary":
        try:
            dtype = np.dtype([(f, _PCD_TYPES[(t.upper(), s)], (c,)) if c > 1 else (f, _PCD_TYPES[(t.upper(), s)])
                              for f, s, t, c in zip(fields, sizes, types, counts)])
        except KeyError as e:
            raise CorruptMediaError(source.name, f"PCD field type {e}") from None
        if pos + dtype.itemsize * n > len(data):
            raise CorruptMediaError(source.name, f"the PCD header declares {n} points but the data is shorter")
        v = np.frombuffer(data, dtype=dtype, count=n, offset=pos)
        return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    raise UnsupportedFormatError(source.name, f"PCD 'DATA {mode}' is not supported (use ascii or binary)")


_SPLIT = re.compile(r"[\s,;]+")


def _text_lines(source: Source) -> list[str]:
    return source.read_bytes().decode("utf-8", "replace").lstrip("\ufeff").splitlines()


def _parse_xyz(source: Source, limits: MediaLimits):
    rows = [_SPLIT.split(ln.strip()) for ln in _text_lines(source) if ln.strip() and not ln.lstrip().startswith("#")]
    if rows and not any(ch.isdigit() for ch in "".join(rows[0])):
        rows = rows[1:]  # a column header such as "x y z" or "X,Y,Z,R,G,B"
    if len(rows) > limits.max_points:
        raise MediaTooLargeError(source.name, f"{len(rows)} points, over the limit of {limits.max_points}")
    return np.array([[float(v) for v in r[:3]] for r in rows], dtype=np.float64).reshape(-1, 3).astype(np.float32)


def _parse_obj(source: Source, limits: MediaLimits):
    rows = [ln.split()[1:4] for ln in _text_lines(source) if ln.startswith("v ")]
    if len(rows) > limits.max_points:
        raise MediaTooLargeError(source.name, f"{len(rows)} points, over the limit of {limits.max_points}")
    return np.array([[float(v) for v in r] for r in rows], dtype=np.float64).reshape(-1, 3).astype(np.float32)


def _parse_off(source: Source, limits: MediaLimits):
    tokens = []
    for ln in _text_lines(source):
        ln = ln.split("#", 1)[0].strip()
        if ln:
            tokens.append(ln.split())
    head = tokens[0]
    if not head[0].endswith("OFF"):
        raise CorruptMediaError(source.name, "OFF file without an 'OFF' keyword")
    counts_line, first = (head[1:], 1) if len(head) > 1 else (tokens[1], 2)
    nv = int(counts_line[0])
    if nv > limits.max_points:
        raise MediaTooLargeError(source.name, f"{nv} points, over the limit of {limits.max_points}")
    rows = tokens[first : first + nv]
    if len(rows) < nv:
        raise CorruptMediaError(source.name, f"the OFF header declares {nv} vertices but the file holds {len(rows)}")
    return np.array([[float(v) for v in r[:3]] for r in rows], dtype=np.float64).reshape(-1, 3).astype(np.float32)


_PARSERS = {"pt": _parse_torch, "npy": _parse_npy, "npz": _parse_npz, "ply": _parse_ply, "pcd": _parse_pcd,
            "xyz": _parse_xyz, "obj": _parse_obj, "off": _parse_off}
