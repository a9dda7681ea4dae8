"""IMU recordings: CSVs in any column order, with units in their header or none, irregular and unsorted
timestamps, and arrays of shape (6, T) or (T, 6) become the trunk's [6, 2000] window: m/s² and rad/s,
resampled to 400 Hz, the middle 5 s."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ibllm_agent.media import detect_format, load_media
from ibllm_agent.media.imu import RATE, SAMPLES, WINDOW_SECONDS

G = 9.80665


def signals(t: np.ndarray) -> np.ndarray:
    """[T, 6] slow smooth signals in SI units (accelerometer x, y, z, gyroscope x, y, z)."""
    return np.stack([np.sin(2 * np.pi * 1.5 * t), np.cos(2 * np.pi * 0.7 * t), G + 0.2 * np.sin(t),
                     0.3 * t, 0.5 * np.cos(2 * np.pi * t), -0.2 + 0 * t], axis=1)


def write_csv(path, t, x, header, columns, sep=","):
    rows = [sep.join(header)] + [sep.join(f"{v:.9g}" for v in row) for row in np.column_stack([c(t, x) for c in columns])]
    path.write_text("\n".join(rows) + "\n")
    return path


def col(i, scale=1.0):
    return lambda t, x: x[:, i] * scale


def test_constants_follow_the_paper():
    assert (WINDOW_SECONDS, SAMPLES, RATE) == (5.0, 2000, 400)  # "5 second clips ... 2K time step IMU readings"


def test_ego4d_csv(tmp_path):
    t = np.arange(0, 6.0, 1 / 200)
    x = signals(t)
    header = ["component_idx", "component_timestamp_ms", "canonical_timestamp_ms", "gyro_x", "gyro_y", "gyro_z",
              "accl_x", "accl_y", "accl_z"]
    columns = [lambda t, x: 0 * t, lambda t, x: t * 1000 + 7, lambda t, x: t * 1000] + [col(i) for i in (3, 4, 5, 0, 1, 2)]
    path = write_csv(tmp_path / "ego4d.csv", t, x, header, columns)
    assert detect_format(path).modality == "imu"
    item = load_media(path)
    assert item.modality == "imu" and item.tensor.shape == (6, SAMPLES) and item.tensor.dtype == torch.float32
    assert item.meta["columns"]["time"] == "canonical_timestamp_ms" and item.meta["time_unit"] == "ms"
    assert item.meta["rate_hz"] == 200.0 and item.meta["window_start_s"] == 0.5
    window_t = 0.5 + np.arange(SAMPLES) / RATE
    # torchaudio's windowed sinc (lowpass width 6, rolloff 0.99) passes DC with a gain 1e-3 off 1
    np.testing.assert_allclose(item.tensor.numpy(), signals(window_t).T, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("sep", [",", ";", "\t", " "])
def test_column_orders_units_and_delimiters_agree(tmp_path, sep):
    t = np.arange(0, 6.0, 1 / 250)
    x = signals(t)
    si = write_csv(tmp_path / "si.csv", t, x, ["t", "ax", "ay", "az", "gx", "gy", "gz"],
                   [lambda t, x: t] + [col(i) for i in range(6)], sep)
    # a phone logger: shuffled columns, g and °/s in the header, time in microseconds, named by its unit only
    app = write_csv(tmp_path / "app.csv", t, x,
                    ["gyro_z(dps)", "acc_y_g", "timestamp_us", "GyroX[deg/s]", "acc_x_g", "acc_z_g", "gyro_y(dps)"],
                    [col(5, 180 / math.pi), col(1, 1 / G), lambda t, x: t * 1e6, col(3, 180 / math.pi),
                     col(0, 1 / G), col(2, 1 / G), col(4, 180 / math.pi)], sep)
    a, b = load_media(si), load_media(app)
    assert b.meta["units"] == {"acc": "g", "gyr": "deg/s"} and b.meta["time_unit"] == "us"
    torch.testing.assert_close(a.tensor, b.tensor, atol=1e-5, rtol=0)
    # units given by the caller override an unlabelled header
    c = write_csv(tmp_path / "g.csv", t, x, ["time", "ax", "ay", "az", "gx", "gy", "gz"],
                  [lambda t, x: t] + [col(i, 1 / G) for i in range(3)] + [col(i, 180 / math.pi) for i in range(3, 6)], sep)
    torch.testing.assert_close(load_media(c, accel_unit="g", gyro_unit="deg/s").tensor, a.tensor, atol=1e-5, rtol=0)


def test_unsorted_irregular_timestamps_and_empty_ones(tmp_path):
    rng = np.random.default_rng(0)
    t = np.sort(np.arange(0, 6.0, 1 / 200) + rng.uniform(-0.001, 0.001, 1200))
    x = signals(t)
    order = rng.permutation(len(t))
    lines = ["time_s,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"]
    lines += [",".join(f"{v:.9g}" for v in [t[i], *x[i]]) for i in order]
    lines += [",1,2,3,4,5,6"]  # a row without a timestamp (Ego4D has them): dropped
    (tmp_path / "jitter.csv").write_text("\n".join(lines) + "\n")
    item = load_media(tmp_path / "jitter.csv")
    assert item.meta["dropped_rows"] == 1
    window_t = item.meta["window_start_s"] + np.arange(SAMPLES) / RATE
    np.testing.assert_allclose(item.tensor.numpy()[:, 100:-100], signals(window_t).T[:, 100:-100], atol=0.02)


def test_arrays_short_and_long_recordings(tmp_path):
    x = signals(np.arange(SAMPLES) / RATE).T.astype(np.float32)  # (6, 2000): the trunk's own input
    np.save(tmp_path / "ready.npy", x)
    np.save(tmp_path / "rows.npy", x.T)
    np.savez(tmp_path / "bundle.npz", imu=x, other=np.zeros(3))
    for name in ("ready.npy", "rows.npy", "bundle.npz"):
        assert torch.equal(load_media(tmp_path / name, "imu").tensor, torch.from_numpy(x)), name
    assert load_media(tmp_path / "ready.npy").modality == "point"  # an array alone does not say IMU
    np.save(tmp_path / "short.npy", x[:, :800])  # 2 s: padded with zeros at the end
    short = load_media(tmp_path / "short.npy", "imu")
    assert short.meta["padded_samples"] == 1200 and torch.equal(short.tensor[:, :800], torch.from_numpy(x[:, :800]))
    assert short.tensor[:, 800:].abs().max() == 0
    slow = load_media(tmp_path / "ready.npy", "imu", rate=100)  # 20 s at 100 Hz: the middle 5 s at 400 Hz
    assert slow.meta["duration_s"] == pytest.approx(19.99) and slow.meta["window_start_s"] == pytest.approx(7.5)


def test_a_table_without_timestamps_needs_a_rate(tmp_path):
    t = np.arange(0, 5.0, 1 / 400)
    path = write_csv(tmp_path / "norate.csv", t, signals(t), ["ax", "ay", "az", "gx", "gy", "gz"],
                     [col(i) for i in range(6)])
    with pytest.raises(ValueError, match="rate="):
        load_media(path)
    torch.testing.assert_close(load_media(path, rate=400).tensor, torch.from_numpy(signals(t).T).float())
