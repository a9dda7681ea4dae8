"""Media loading throughput: files/s per modality for typical inputs, made on the fly.

    python tools/bench_media.py [--repeat 5] [--only point]

Inputs: a 1024×768 JPEG photo, 10 s of 44.1 kHz stereo audio as WAV and as MP3, a 10-s 640×360
30 fps H.264 clip, a 100k-point binary PLY and an 8192-point `.pt` cloud (loaded and resampled),
the same 100k points as binary and ASCII PLY, PCD, XYZ, OBJ and OFF (parsed only), a sentence of text.
Each is loaded `--repeat` times after one warm-up; the median and the best time are reported.
Timings on a shared machine are noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibllm_agent.media import load_media  # noqa: E402
from ibllm_agent.media.audio import ffmpeg_exe  # noqa: E402


def make_inputs(d: Path) -> dict[str, object]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:768, 0:1024]
    photo = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8) + rng.integers(0, 20, (768, 1024, 3), dtype=np.uint8)
    Image.fromarray(photo).save(d / "photo.jpg", quality=90)
    ff = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=10:sample_rate=44100", "-ac", "2"]
    subprocess.run(ff + tone + [str(d / "sound.wav")], check=True)
    subprocess.run(ff + tone + ["-c:a", "libmp3lame", str(d / "sound.mp3")], check=True)
    subprocess.run(ff + ["-f", "lavfi", "-i", "testsrc=size=640x360:rate=30:duration=10", *tone, "-c:v", "libx264",
                         "-pix_fmt", "yuv420p", "-c:a", "aac", str(d / "clip.mp4")], check=True)
    pts = rng.normal(size=(100_000, 3)).astype(np.float32)
    head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(pts)}\nproperty float x\nproperty float y\n"
            "property float z\nend_header\n").encode()
    (d / "scan.ply").write_bytes(head + pts.tobytes())
    cloud = torch.from_numpy(pts[:8192])
    cloud = (cloud - cloud.mean(0)) / (cloud - cloud.mean(0)).norm(dim=1).max()
    buf = io.BytesIO()
    torch.save(cloud, buf)
    (d / "cloud.pt").write_bytes(buf.getvalue())
    rows = "".join(f"{x!r} {y!r} {z!r} 200 120 40\n" for x, y, z in pts.tolist())
    (d / "scan_ascii.ply").write_text(head.decode().replace("binary_little_endian", "ascii")
                                      .replace("end_header", "property uchar red\nproperty uchar green\nproperty uchar blue\n"
                                               "end_header") + rows)
    (d / "scan.pcd").write_text(f"VERSION 0.7\nFIELDS x y z r g b\nSIZE 4 4 4 1 1 1\nTYPE F F F U U U\nCOUNT 1 1 1 1 1 1\n"
                                f"WIDTH {len(pts)}\nHEIGHT 1\nPOINTS {len(pts)}\nDATA ascii\n" + rows)
    (d / "scan.xyz").write_text(rows)
    (d / "scan.obj").write_text("v " + rows.replace("\n", "\nv ")[:-2])
    (d / "scan.off").write_text(f"OFF\n{len(pts)} 0 0\n" + rows)
    return {
        "image 1024x768 jpeg": (d / "photo.jpg", None, False),
        "audio 10 s wav 44.1k stereo": (d / "sound.wav", None, False),
        "audio 10 s mp3": (d / "sound.mp3", None, False),
        "video 10 s 640x360 h264": (d / "clip.mp4", None, False),
        "audio track of that video (aac)": (d / "clip.mp4", "audio", False),
        "point cloud 100k ply (fps)": (d / "scan.ply", None, False),
        "point cloud 8192 pt": (d / "cloud.pt", None, False),
        **{f"point cloud 100k {kind} (parse)": (d / name, None, True) for kind, name in (
            ("binary ply", "scan.ply"), ("ascii ply", "scan_ascii.ply"), ("ascii pcd", "scan.pcd"), ("xyz", "scan.xyz"),
            ("obj", "scan.obj"), ("off", "scan.off"))},
        "text": ("a photo of a dog playing in the snow", "text", False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default="", help="run only the inputs whose label contains this, e.g. 'point'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {label: v for label, v in make_inputs(Path(tmp)).items() if args.only in label}
        print(f"torch threads {torch.get_num_threads()}, repeat {args.repeat}")
        print(f"{'input':36s} {'ms/file':>9s} {'best ms':>9s} {'files/s':>8s}")
        for label, (src, modality, exact) in inputs.items():
            load_media(src, modality, exact_upstream=exact)  # warm-up (imports, caches)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                load_media(src, modality, exact_upstream=exact)
                times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1000
            print(f"{label:36s} {ms:9.1f} {min(times) * 1000:9.1f} {1000 / ms:8.2f}")


if __name__ == "__main__":
    main()
