"""IMU recordings: a CSV table (a header naming the accelerometer and gyroscope axes, a timestamp column) or
an array of shape (6, T) or (T, 6) -> float32 [6, 2000], the input of ImageBind's IMU trunk.

ImageBind (Girdhar et al. 2023, §3.2) binds IMU "consisting of accelerometer and gyroscope measurements
across the X, Y, and Z axes" from Ego4D: "5 second clips resulting in 2K time step IMU readings", cut into
windows of 8 steps (the trunk's ``imu_stem``: Linear(6 × 8 → D)). So `WINDOW_SECONDS` = 5, `SAMPLES` = 2000
and `RATE` = 400 Hz. The ImageBind repository ships no IMU loader; the rest follows Meta's Ego4D IMU
pipeline (IMU2CLIP, facebookresearch/imu2clip, ``extract_imu.py`` and ``dataset/ego4d/utils``):

* channel order accelerometer x, y, z, then gyroscope x, y, z;
* SI units, m/s² and rad/s (what Ego4D's CSVs and GoPro's GPMF hold), no further normalisation: IMU2CLIP
  feeds the raw values;
* rows sorted by timestamp, rows without a timestamp dropped (Ego4D leaves some empty);
* the rate taken from the mean timestamp step, then band-limited resampling (IMU2CLIP calls
  ``torchaudio.functional.resample``; ours is the same filter, `ibllm_agent.media.audio.resample`) to 400 Hz
  (IMU2CLIP resamples to 200 Hz for its own 1000-step windows);
* a recording shorter than the window is padded with zeros at the end (IMU2CLIP's ``padIMU``); a longer one
  gives its middle 5 s (as a centre crop does for pictures; the model takes one window per input).

Units come from the column names (``acc_x (g)``, ``gyro_x [deg/s]``, ``gz_dps``, ``time_ms``) or the
`accel_unit`, `gyro_unit` options; none named means m/s² and rad/s (Ego4D's). A timestamp column without a
unit is read in s, ms, µs or ns by the size of its steps (rates of 10 Hz - 2 kHz give disjoint ranges);
a table without one needs ``rate=``. Arrays have no timestamps: ``rate=`` gives theirs (default 400 Hz,
the trunk's own: a (6, 2000) array passes through unchanged). NaN or infinite readings, missing axes, other
channel counts and absurd rates or sizes raise typed `MediaError`s.
"""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import torch

from .detect import Format, imu_columns, split_header
from .errors import (
    CorruptMediaError,
    EmptyMediaError,
    InvalidValuesError,
    MediaTooLargeError,
    MediaTooLongError,
    WrongChannelsError,
)
from .limits import MediaLimits
from .maps import read_array
from .source import Source

WINDOW_SECONDS = 5.0
SAMPLES = 2000
RATE = 400
"""Hz: SAMPLES / WINDOW_SECONDS."""
AXES = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
"""The trunk's channel order (IMU2CLIP's)."""
STANDARD_GRAVITY = 9.80665
ACCEL_UNITS = {"m/s^2": 1.0, "m/s2": 1.0, "m/s²": 1.0, "ms^-2": 1.0, "ms-2": 1.0, "ms2": 1.0, "mps2": 1.0,
               "g": STANDARD_GRAVITY, "mg": STANDARD_GRAVITY / 1000}
"""Accelerometer units -> factor to m/s²."""
GYRO_UNITS = {"rad/s": 1.0, "rads": 1.0, "rad": 1.0, "rps": 1.0, "mrad/s": 1e-3,
              "deg/s": math.pi / 180, "°/s": math.pi / 180, "dps": math.pi / 180, "degps": math.pi / 180,
              "degs": math.pi / 180, "deg": math.pi / 180}
"""Gyroscope units -> factor to rad/s."""
ACCEL_NAMES = {1.0: "m/s^2", STANDARD_GRAVITY: "g", STANDARD_GRAVITY / 1000: "mg"}
GYRO_NAMES = {1.0: "rad/s", 1e-3: "mrad/s", math.pi / 180: "deg/s"}
"""The name a unit is reported by, whatever synonym the header used."""
TIME_UNITS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
              "us": 1e-6, "µs": 1e-6, "usec": 1e-6, "ns": 1e-9, "nsec": 1e-9}
"""Timestamp units -> factor to seconds."""
MIN_RATE, MAX_RATE = 1.0, 100_000.0
"""Hz: timestamps giving a rate outside this range are refused as absurd."""
_TIME_COLUMN = re.compile(r"^(?P<kind>canonical_|component_|)(?:time(?:stamp)?s?|t|ts|seconds?_elapsed|elapsed"
                          r"(?:_time)?|epoch)(?P<rest>\b.*|_.*|)$")
ARRAY_NAMES = ("imu", "data", "signal", "signals")
"""The arrays of an .npz taken as the IMU recording, in this order."""


def load_imu(source: Source, fmt: Format, limits: MediaLimits, *, exact_upstream: bool = False,
             rate: float | None = None, accel_unit: str | None = None, gyro_unit: str | None = None
             ) -> tuple[torch.Tensor, dict]:
    """An IMU recording -> float32 [6, 2000] (m/s², rad/s at 400 Hz, the middle 5 s) and metadata.

    `rate` (Hz) is the rate of an array (default 400) or of a table without timestamps, and overrides a
    table's timestamps; `accel_unit` / `gyro_unit` override the units the header names (keys of
    `ACCEL_UNITS`, `GYRO_UNITS`). `exact_upstream` changes nothing: upstream has no IMU loader."""
    if rate is not None and not (isinstance(rate, (int, float)) and MIN_RATE <= rate <= MAX_RATE):
        raise ValueError(f"rate must be a number of Hz in [{MIN_RATE:g}, {MAX_RATE:g}], got {rate!r}")
    seconds = None
    if fmt.kind in ("npy", "npz"):
        values, meta = _read_array(source, fmt, limits)
        units = {"acc": accel_unit or "m/s^2", "gyr": gyro_unit or "rad/s"}
        rate = float(RATE if rate is None else rate)
    else:
        times, values, header_units, time_unit, meta = _read_table(source, limits)
        units = {"acc": accel_unit or header_units["acc"] or "m/s^2",
                 "gyr": gyro_unit or header_units["gyr"] or "rad/s"}
        if times is None and rate is None:
            raise WrongChannelsError(source.name, "the table has no timestamp column (time, timestamp, t, "
                                     "canonical_timestamp_ms, ...); pass its sample rate as rate=")
        if rate is None:
            times, values, meta["duplicate_timestamps"] = _sorted_unique(source.name, times, values)
            factor, meta["time_unit"] = _time_factor(source.name, times, time_unit)
            seconds = (times - times[0]) * factor
    values = values * _unit_factors(source.name, units)[None]  # (N, 6) in m/s², rad/s
    _check_values(source.name, values)
    n = len(values)
    if n < 2:
        raise EmptyMediaError(source.name, f"{n} reading{'s' if n != 1 else ''}; an IMU recording needs at least 2")
    if seconds is not None:
        rate = _rate(source.name, seconds)
    duration = float(seconds[-1]) if seconds is not None else (n - 1) / rate
    if duration > limits.max_imu_seconds:
        raise MediaTooLongError(source.name, f"{duration:.0f} s, over the limit of {limits.max_imu_seconds:g} s "
                                "(MediaLimits.max_imu_seconds)")
    signal = resample_imu(values, seconds, rate)  # (6, M) at RATE
    window, start = centre_window(signal)
    meta.update(rate_hz=round(rate, 3), duration_s=round(duration, 4), units=units,
                window_start_s=round(start / RATE, 4), padded_samples=max(0, SAMPLES - signal.shape[1]))
    return window, meta


# ---------------------------------------------------------------- tables

def _read_table(source: Source, limits: MediaLimits) -> tuple[np.ndarray | None, np.ndarray, dict, str, dict]:
    """Timestamps (None without a time column), readings (N, 6) in the header's units, those units, the time
    unit the header names ("" if none) and metadata."""
    text = source.read_bytes().decode("utf-8", "replace").lstrip("\ufeff")
    lines = (ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    header = next(lines, None)
    if header is None:
        raise EmptyMediaError(source.name, "the table is empty")
    names, delimiter = split_header(header)
    names = next(csv.reader([header], delimiter=delimiter)) if delimiter else names
    axes = imu_columns(names)
    missing = [a for a in AXES if a not in axes]
    if missing:
        if len(missing) == len(AXES):
            raise WrongChannelsError(source.name, f"no header naming accelerometer and gyroscope axes (found "
                                     f"{', '.join(repr(n) for n in names[:9])}); expected columns such as "
                                     "accl_x, accl_y, accl_z, gyro_x, gyro_y, gyro_z")
        raise WrongChannelsError(source.name, f"missing IMU axes {', '.join(missing)} (found {', '.join(axes)})")
    units = {s: _sensor_unit(source.name, s, [axes[f"{s}_{a}"][1] for a in "xyz"]) for s in ("acc", "gyr")}
    time_col, time_unit = _time_column(names)
    columns = [axes[a][0] for a in AXES] + ([time_col] if time_col is not None else [])
    rows = csv.reader(lines, delimiter=delimiter) if delimiter else (ln.split() for ln in lines)
    data = np.empty((min(1 << 16, limits.max_imu_samples + 1), len(columns)))
    n = 0
    for number, row in enumerate(rows, 2):
        if n == limits.max_imu_samples:
            raise MediaTooLargeError(source.name, f"more than {limits.max_imu_samples} readings "
                                     "(MediaLimits.max_imu_samples)")
        if n == len(data):
            data = np.concatenate([data, np.empty_like(data)])[: limits.max_imu_samples + 1]
        try:
            data[n] = [_number(row[c]) for c in columns]
        except IndexError:
            raise CorruptMediaError(source.name, f"row {number} has {len(row)} fields; the header has "
                                    f"{len(names)}") from None
        except ValueError:
            bad = next(c for c in columns if _is_garbage(row[c]))
            raise CorruptMediaError(source.name, f"row {number}: {row[bad]!r} in column {names[bad]!r} is not a "
                                    "number") from None
        n += 1
    data = data[:n]
    meta = {"format": "csv", "columns": {a: names[axes[a][0]] for a in AXES}, "rows": n}
    times = None
    if time_col is not None:
        meta["columns"]["time"] = names[time_col]
        times = data[:, -1]
        keep = ~np.isnan(times)
        meta["dropped_rows"] = int((~keep).sum())  # rows without a timestamp, as IMU2CLIP drops them
        times, data = times[keep], data[keep]
    return times, data[:, :6], units, time_unit, meta


def _number(field: str) -> float:
    field = field.strip()
    return float(field) if field else math.nan


def _is_garbage(field: str) -> bool:
    try:
        _number(field)
    except ValueError:
        return True
    return False


def _sensor_unit(name: str, sensor: str, units: list[str]) -> str:
    """The unit a sensor's three columns name (synonyms agree: "dps" and "deg/s"), "" when none does."""
    canonical = ACCEL_NAMES if sensor == "acc" else GYRO_NAMES
    factors = {_factor(name, sensor, u) for u in units if u}
    if len(factors) > 1:
        raise WrongChannelsError(name, f"the {'accelerometer' if sensor == 'acc' else 'gyroscope'} axes name "
                                 f"different units: {sorted(u for u in units if u)}")
    return canonical[factors.pop()] if factors else ""


def _factor(name: str, sensor: str, unit: str) -> float:
    table = ACCEL_UNITS if sensor == "acc" else GYRO_UNITS
    key = unit.replace(" ", "")
    key = key if key in table else key.lower()
    if key not in table:
        what = "accelerometer" if sensor == "acc" else "gyroscope"
        raise WrongChannelsError(name, f"unknown {what} unit {unit!r}; known: {', '.join(table)}")
    return table[key]


def _time_column(names: list[str]) -> tuple[int | None, str]:
    """The timestamp column (Ego4D's canonical_timestamp_ms before any other) and its unit text."""
    found = []
    for i, name in enumerate(names):
        m = _TIME_COLUMN.match(name.strip().strip("\"'").lower())
        if m:
            found.append(({"canonical_": 0, "": 1, "component_": 2}[m["kind"]], i, m["rest"].strip(" _-.()[]")))
    if not found:
        return None, ""
    _, column, unit = min(found)
    return column, unit


def _unit_factors(name: str, units: dict[str, str]) -> np.ndarray:
    """Per channel, the factor to m/s² and rad/s."""
    return np.array([_factor(name, "acc", units["acc"])] * 3 + [_factor(name, "gyr", units["gyr"])] * 3)


def _check_values(name: str, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        rows = int((~finite.all(axis=1)).sum())
        raise InvalidValuesError(name, f"{rows} of {len(values)} readings have NaN, empty or infinite values")


def _sorted_unique(name: str, times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows in time order (Ego4D's timestamps can go backwards), one per timestamp (the first)."""
    if not np.isfinite(times).all():
        raise InvalidValuesError(name, f"{int((~np.isfinite(times)).sum())} infinite timestamps")
    if len(times) < 2:
        return times, values, 0
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    keep = np.concatenate([[True], np.diff(times) > 0])
    return times[keep], values[keep], int((~keep).sum())


def _time_factor(name: str, times: np.ndarray, unit: str) -> tuple[float, str]:
    """Seconds per timestamp unit: the header's unit, else the one its steps' size says."""
    if len(times) < 2:
        raise EmptyMediaError(name, f"{len(times)} reading with a timestamp; at least 2 are needed")
    if unit:
        key = unit if unit in TIME_UNITS else unit.lower()
        if key not in TIME_UNITS:
            raise WrongChannelsError(name, f"unknown time unit {unit!r}; known: {', '.join(TIME_UNITS)}")
    else:
        median = float(np.median(np.diff(times)))
        key = "s" if median < 0.25 else "ms" if median < 250 else "us" if median < 2.5e5 else "ns"
    return TIME_UNITS[key], key


def _rate(name: str, seconds: np.ndarray) -> float:
    """Readings per second from the mean timestamp step (IMU2CLIP's estimate), refused when absurd."""
    rate = (len(seconds) - 1) / float(seconds[-1])
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidValuesError(name, f"the timestamps give {rate:.3g} readings per second; expected "
                                 f"{MIN_RATE:g} to {MAX_RATE:g}")
    return rate


# ---------------------------------------------------------------- arrays


def _read_array(source: Source, fmt: Format, limits: MediaLimits) -> tuple[np.ndarray, dict]:
    arr = read_array(source, fmt, ARRAY_NAMES, "IMU")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]  # a batch of one
    if arr.ndim != 2 or 6 not in arr.shape or arr.dtype.kind not in "iuf":
        raise WrongChannelsError(source.name, f"an array of shape {list(arr.shape)} ({arr.dtype}); an IMU "
                                 "recording has 6 channels (accelerometer x, y, z, gyroscope x, y, z): (6, T) or "
                                 "(T, 6)")
    layout = "(6, T)" if arr.shape[0] == 6 else "(T, 6)"  # (6, 6) is read as the trunk's own (6, T)
    values = arr.T if arr.shape[0] == 6 else arr
    if len(values) > limits.max_imu_samples:
        raise MediaTooLargeError(source.name, f"{len(values)} readings, over the limit of "
                                 f"{limits.max_imu_samples} (MediaLimits.max_imu_samples)")
    return values.astype(np.float64), {"format": fmt.kind, "layout": layout, "rows": len(values)}


# ---------------------------------------------------------------- resampling and the window


def resample_imu(values: np.ndarray, times: np.ndarray | None, rate: float) -> torch.Tensor:
    """(N, 6) readings at `rate` Hz (at `times` seconds from the first, if given) -> float32 (6, M) at 400 Hz.

    Irregular timestamps are first put on a uniform grid at the mean rate by linear interpolation; the
    band-limited resampler then needs whole numbers of Hz, so the rate is rounded (IMU2CLIP truncates it)."""
    from .audio import resample

    whole = max(1, int(round(rate)))
    x = values
    if times is not None:
        grid = np.arange(int(math.floor(times[-1] * whole + 1e-9)) + 1) / whole
        if len(grid) != len(times) or np.abs(grid - times).max() > 0.01 / whole:
            x = np.stack([np.interp(grid, times, values[:, c]) for c in range(6)], axis=1)
    signal = torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float64))
    return resample(signal, whole, RATE).to(torch.float32)


def centre_window(signal: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The middle `SAMPLES` of (6, M), or (6, M) padded with zeros at the end; and the start index."""
    m = signal.shape[1]
    if m >= SAMPLES:
        start = (m - SAMPLES) // 2
        return signal[:, start:start + SAMPLES].contiguous(), start
    return torch.nn.functional.pad(signal, (0, SAMPLES - m)), 0
