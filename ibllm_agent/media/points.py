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

import io
import itertools
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

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
    bad = _bad_rows(t)
    if bad:
        raise InvalidValuesError(name, f"{bad} of {t.shape[0]} points have NaN or infinite coordinates")
    return t.contiguous()


def _bad_rows(t: torch.Tensor) -> int:
    """Points with a NaN or infinite coordinate, counted by NumPy a block of rows at a time
    (torch.isfinite makes a float copy besides its masks, 1.5x the cloud at once, and is slower)."""
    n = 0
    for rows in t.detach().split(1 << 20):
        finite = np.isfinite((rows.float() if rows.dtype == torch.bfloat16 else rows).numpy())  # NumPy has no bfloat16
        if not finite.all():  # the per-row count is 40x slower: only when needed
            n += len(rows) - int(finite.all(axis=1).sum())
    return n


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


# Text formats (PLY ascii, PCD ascii, XYZ, OBJ, OFF) are read a block at a time through one handle
# and converted by NumPy's C row parser, which pulls lines lazily and stops after a row count: the
# declared count, or max_points + 1 where none is declared. Memory is one block plus the points,
# whatever follows (splitting the whole file into Python strings first took up to 40x its size).
# Declared counts, binary ones too, are checked against the bytes left before anything is read.

_BLOCK = 1 << 20
"""Bytes of text read at a time (1 MiB; split into lines it takes up to 15 MiB), and so the longest
line accepted."""
_MAX_HEADER = 1 << 20
"""Bytes of a PLY, PCD or OFF header (a few hundred in practice)."""


def _skip_bom(f: BinaryIO) -> None:
    if f.read(3) != b"\xef\xbb\xbf":
        f.seek(0)


def _header_lines(f: BinaryIO) -> Iterator[list[str]]:
    """Words of the header lines ('#' comments and blank lines dropped), read with readline so the
    body stays unread; stops after 1 MiB."""
    budget = _MAX_HEADER
    while budget > 0 and (line := f.readline(budget)):
        budget -= len(line)
        words = line.split(b"#", 1)[0].decode("ascii", "replace").split()
        if words:
            yield words


def _lines(f: BinaryIO, name: str, table: bytes | None = None) -> Iterator[str]:
    """The text lines from the handle's position on (`table`: a bytes.translate table applied first)."""

    def split(text: bytes) -> list[str]:
        return (text.translate(table) if table else text).decode("utf-8", "replace").splitlines()

    rest = b""
    while block := f.read(_BLOCK):
        block = rest + block
        cut = block.rfind(b"\n") + 1 or block.rfind(b"\r") + 1  # \r alone: old Mac line ends
        if not cut and len(block) > _BLOCK:
            raise CorruptMediaError(name, f"a line longer than {_BLOCK} bytes: not a point cloud")
        rest = block[cut:]
        yield from split(block[:cut])
    yield from split(rest)


def _text_rows(lines: Iterator[str], cols, count: int, *, skip: int = 0, comments: str | None = None) -> np.ndarray:
    """float32 [<= count, len(cols)] from the lines; `lines` is left just after the last row read.
    Parsing straight to float32 rounds exactly as float() then a cast to float32 did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the callers say what is missing
        return np.loadtxt(lines, dtype=np.float32, usecols=cols, max_rows=count, skiprows=skip,
                          comments=comments, ndmin=2)


def _check_count(count: int, need: int, left: int, declares: str, name: str, limits: MediaLimits) -> None:
    """A declared count must fit in the bytes left (`need`: the fewest it can take) and the limit."""
    if count < 0:
        raise CorruptMediaError(name, f"{declares}: a negative count")
    if need > left:
        raise CorruptMediaError(name, f"{declares}, which take at least {need} bytes, but {left} bytes follow the header")
    if count > limits.max_points:
        raise MediaTooLargeError(name, f"{count} points, over the limit of {limits.max_points} (MediaLimits.max_points)")


def _at_most(pts: np.ndarray, limits: MediaLimits, name: str) -> np.ndarray:
    """Formats without a declared count are read up to max_points + 1 rows: one more is over the limit."""
    if len(pts) > limits.max_points:
        raise MediaTooLargeError(name, f"more than {limits.max_points} points, over the limit (MediaLimits.max_points)")
    return pts


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _parse_ply(source: Source, limits: MediaLimits):
    fmt, elements = None, []  # elements: [name, count, [(prop, type, list_types|None)]]
    with source.open() as f:
        for tok in _header_lines(f):
            if tok[0] == "end_header":
                break
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                if int(tok[2]) < 0:
                    raise CorruptMediaError(source.name, f"PLY header: 'element {tok[1]} {tok[2]}'")
                elements.append([tok[1], int(tok[2]), []])
            elif tok[0] == "property" and elements:
                if tok[1] == "list":
                    elements[-1][2].append((tok[4], None, (_ply_type(tok[2], source), _ply_type(tok[3], source))))
                else:
                    elements[-1][2].append((tok[2], _ply_type(tok[1], source), None))
        else:
            raise CorruptMediaError(source.name, "PLY header without 'end_header'")
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise CorruptMediaError(source.name, f"PLY format {fmt!r}")
        names = [e[0] for e in elements]
        if "vertex" not in names:
            raise CorruptMediaError(source.name, "PLY without a 'vertex' element")
        vi = names.index("vertex")
        count, props = elements[vi][1:]
        cols = [p[0] for p in props]
        if not {"x", "y", "z"} <= set(cols):
            raise CorruptMediaError(source.name, f"PLY vertices without x, y, z (properties: {cols})")
        binary = fmt != "ascii"
        need = sum(n * _ply_min_size(p, binary) for _, n, p in elements[: vi + 1]) - (not binary)  # text: last newline optional
        _check_count(count, need, source.size - f.tell(), f"the PLY header declares {count} vertices ('element vertex')",
                     source.name, limits)
        if not binary:
            # One line per element instance; the elements before the vertices (rare) are skipped.
            pts = _text_rows(_lines(f, source.name), [cols.index(c) for c in "xyz"], count,
                             skip=sum(e[1] for e in elements[:vi]))
            if len(pts) < count:
                raise CorruptMediaError(source.name, f"the PLY header declares {count} vertices but the file holds {len(pts)}")
            return pts
        if any(p[2] is not None for p in props):
            raise UnsupportedFormatError(source.name, "PLY vertices with list properties")
        endian = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(p[0], endian + p[1]) for p in props])
        for _, n, el_props in elements[:vi]:
            _skip_binary_element(f, n, el_props, endian, source.name)
        return _binary_xyz(f, dtype, count, np.float64 if dtype["x"].itemsize == 8 else np.float32,
                           f"the PLY header declares {count} vertices", source.name)


def _ply_type(name: str, source: Source) -> str:
    if name not in _PLY_TYPES:
        raise CorruptMediaError(source.name, f"unknown PLY property type {name!r}")
    return _PLY_TYPES[name]


def _ply_min_size(props, binary: bool) -> int:
    """The fewest bytes one element instance takes: binary, its scalars and list lengths (empty
    lists); text, a digit and a separator per value."""
    if not binary:
        return 2 * len(props)
    return sum(np.dtype(scalar or list_types[0]).itemsize for _, scalar, list_types in props)


def _skip_binary_element(f: BinaryIO, count: int, props, endian: str, name: str) -> None:
    """Step over an element that precedes the vertices (rare: faces are normally written after).
    With list properties, one instance at a time through a block-sized window; the size check has
    bounded `count` by the bytes left."""
    if all(list_types is None for _, _, list_types in props):
        f.seek(count * _ply_min_size(props, True), io.SEEK_CUR)
        return
    window, pos = b"", 0
    for _ in range(count):
        for _, scalar, list_types in props:
            if list_types is None:
                pos += np.dtype(scalar).itemsize
                continue
            length = struct.Struct(endian + np.dtype(list_types[0]).char)
            if pos + length.size > len(window):
                f.seek(pos - len(window), io.SEEK_CUR)
                window, pos = f.read(_BLOCK), 0
                if len(window) < length.size:
                    raise CorruptMediaError(name, "the PLY file ends inside an element")
            n = length.unpack_from(window, pos)[0]
            if n < 0:
                raise CorruptMediaError(name, f"a PLY list of length {n}")
            pos += length.size + n * np.dtype(list_types[1]).itemsize
    f.seek(pos - len(window), io.SEEK_CUR)


def _binary_xyz(f: BinaryIO, dtype: np.dtype, count: int, out_dtype, declares: str, name: str) -> np.ndarray:
    """x, y, z of `count` records of `dtype`, read a block at a time straight into the output (the
    records can be many times larger than x, y, z: normals, colours, features)."""
    out = np.empty((count, 3), out_dtype)
    step = max(1, _BLOCK // dtype.itemsize)
    for i in range(0, count, step):
        k = min(step, count - i)
        data = f.read(k * dtype.itemsize)
        if len(data) < k * dtype.itemsize:
            raise CorruptMediaError(name, f"{declares} ({count * dtype.itemsize} bytes) but only "
                                          f"{i * dtype.itemsize + len(data)} bytes follow")
        v = np.frombuffer(data, dtype)
        for j, c in enumerate("xyz"):
            out[i : i + k, j] = v[c]
    return out


_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def _parse_pcd(source: Source, limits: MediaLimits):
    """PCD: the points follow the DATA line and nothing follows the points, so rows (ascii) or whole
    points (binary) beyond POINTS are an error, as are fewer."""
    with source.open() as f:
        _skip_bom(f)
        header = {}
        for key, *vals in _header_lines(f):
            header[key.upper()] = vals
            if key.upper() == "DATA":
                break
        try:
            fields, sizes, types = header["FIELDS"], [int(s) for s in header["SIZE"]], header["TYPE"]
            counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
            field = "POINTS" if "POINTS" in header else "WIDTH x HEIGHT"
            n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
            mode = header["DATA"][0].lower()
        except (KeyError, IndexError, ValueError) as e:
            raise CorruptMediaError(source.name, f"PCD header incomplete or invalid ({e})") from None
        if not {"x", "y", "z"} <= set(fields):
            raise CorruptMediaError(source.name, f"PCD without x, y, z fields (fields: {fields})")
        left, declares = source.size - f.tell(), f"the PCD header declares {n} points ({field})"
        if mode == "ascii":
            _check_count(n, n * 2 * sum(counts) - 1, left, declares, source.name, limits)
            starts = np.cumsum([0] + counts)
            lines = _lines(f, source.name)
            pts = _text_rows(lines, [int(starts[fields.index(c)]) for c in ("x", "y", "z")], n)
            if len(pts) < n:
                raise CorruptMediaError(source.name, f"the PCD header declares {n} points but the file holds {len(pts)}")
            if any(map(str.strip, lines)):
                raise CorruptMediaError(source.name, f"{declares} but more rows follow")
            return pts
        if mode != "binary":
            raise UnsupportedFormatError(source.name, f"PCD 'DATA {mode}' is not supported (use ascii or binary)")
        try:
            dtype = np.dtype([(f, _PCD_TYPES[(t.upper(), s)], (c,)) if c > 1 else (f, _PCD_TYPES[(t.upper(), s)])
                              for f, s, t, c in zip(fields, sizes, types, counts)])
        except KeyError as e:
            raise CorruptMediaError(source.name, f"PCD field type {e}") from None
        _check_count(n, n * dtype.itemsize, left, declares, source.name, limits)
        if left - n * dtype.itemsize >= dtype.itemsize:
            raise CorruptMediaError(source.name, f"{declares} but the data holds {left // dtype.itemsize}")
        return _binary_xyz(f, dtype, n, np.float32, declares, source.name)


_SEPARATORS = bytes.maketrans(b",;", b"  ")
"""XYZ/TXT/CSV columns are separated by any run of whitespace, commas and semicolons."""


def _parse_xyz(source: Source, limits: MediaLimits):
    with source.open() as f:
        _skip_bom(f)
        lines = _lines(f, source.name, _SEPARATORS)
        first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
        head = [first] if any(ch.isdigit() for ch in first) else []  # else a column header such as "x y z"
        pts = _text_rows(itertools.chain(head, lines), (0, 1, 2), limits.max_points + 1, comments="#")
    return _at_most(pts, limits, source.name)


def _parse_obj(source: Source, limits: MediaLimits):
    with source.open() as f:
        _skip_bom(f)
        lines = (ln for ln in _lines(f, source.name) if ln.startswith("v "))
        pts = _text_rows(lines, (1, 2, 3), limits.max_points + 1, comments="#")
    return _at_most(pts, limits, source.name)


def _parse_off(source: Source, limits: MediaLimits):
    """OFF: the vertices, then the faces (never read: rows after the declared vertices are faces)."""
    with source.open() as f:
        _skip_bom(f)
        header = _header_lines(f)
        head = next(header, [""])
        if not head[0].endswith("OFF"):
            raise CorruptMediaError(source.name, "OFF file without an 'OFF' keyword")
        counts = head[1:] or next(header, [])  # "OFF" alone on its line, or followed by the counts
        if not counts:
            raise CorruptMediaError(source.name, "OFF file without vertex and face counts")
        nv = int(counts[0])
        _check_count(nv, nv * 6 - 1, source.size - f.tell(), f"the OFF header declares {nv} vertices", source.name, limits)
        pts = _text_rows(_lines(f, source.name), (0, 1, 2), nv, comments="#")
    if len(pts) < nv:
        raise CorruptMediaError(source.name, f"the OFF header declares {nv} vertices but the file holds {len(pts)}")
    return pts


_PARSERS = {"pt": _parse_torch, "npy": _parse_npy, "npz": _parse_npz, "ply": _parse_ply, "pcd": _parse_pcd,
            "xyz": _parse_xyz, "obj": _parse_obj, "off": _parse_off}
