"""Cache ingestion throughput: items/s per modality of the single-process build and of the Ray Data build,
measured in one run on this machine.

    python tools/bench_ingest.py [--n 64] [--rounds 3] [--only image,audio] [--whole 4096] [--json out.json]

Inputs are toy-world files of every medium (image PNG, audio WAV/MP3, video MP4, point PLY, depth, thermal,
IMU) encoded by the shipped toy model into a fresh in-memory Chroma collection, one modality at a time. Each round builds n and then 2n files
with both builds, interleaved (single n, Ray n, single 2n, Ray 2n), so that a build's per-item cost,
(T(2n) - T(n)) / n, and its fixed cost, T(n) - n * per-item, come from the same state of a shared machine.
The Ray build runs on a `LocalCluster` on 127.0.0.1 with this machine's CPUs: one embedding actor, decode
tasks on the other CPUs. The single-process build's model is loaded once, outside the timings; the Ray
build's fixed cost includes starting its actor and loading the model there, as every real run does.
Also reported, for the README's arithmetic: decode-only and encode-only (batch 16) ms per item.
Median and best over the rounds; compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibllm_agent.ray_cluster import LOOPBACK_ENV  # noqa: E402

os.environ.update(LOOPBACK_ENV)  # read by Ray when it is imported: this driver joins a loopback cluster

import chromadb  # noqa: E402

import ibllm_agent  # noqa: E402
from ibllm_agent import modalities as registry  # noqa: E402
from ibllm_agent.cache.build import BATCH_SIZE as BATCH  # noqa: E402
from ibllm_agent.cache.build import build_from_media, list_media  # noqa: E402
from ibllm_agent.cache.chroma import ChromaCache  # noqa: E402
from ibllm_agent.cache.ray_data import RayBuildOptions, build_with_ray  # noqa: E402
from ibllm_agent.media import load_media  # noqa: E402
from ibllm_agent.ray_cluster import LocalCluster, connect  # noqa: E402
from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld  # noqa: E402

MEDIA = registry.MEDIA


def write_inputs(folder: Path, modality: str, count: int) -> list[Path]:
    world = ToyWorld()
    out = folder / modality
    for i in range(count):
        world.write(CONCEPT_NAMES[i % len(CONCEPT_NAMES)], modality, i, out)
    return sorted(out.iterdir())


class Builds:
    """Times both builds of a list of files into fresh collections of one in-memory Chroma."""

    def __init__(self, model, client, options: RayBuildOptions, single_batch: int):
        self.model, self.client, self.options, self.single_batch, self.runs = model, client, options, single_batch, 0

    def _cache(self):
        self.runs += 1
        return ChromaCache.open(f"bench{self.runs:04d}", client=self.client, dim=self.model.feature_dim)

    def single(self, folder: Path) -> float:
        items, cache = list_media(folder), self._cache()
        started = time.perf_counter()
        report = build_from_media(items, cache, self.model.encode, batch_size=self.single_batch)
        elapsed = time.perf_counter() - started
        assert report.added == len(items), report
        return elapsed

    def ray(self, folder: Path) -> float:
        items, cache = list_media(folder), self._cache()
        started = time.perf_counter()
        report = build_with_ray(items, cache, "toy", {}, options=self.options)
        elapsed = time.perf_counter() - started
        assert report.added == len(items), report
        return elapsed


def stage_costs(model, files: list[Path]) -> tuple[float, float]:
    """(decode ms, encode ms) per item in this process."""
    started = time.perf_counter()
    loaded = [load_media(f) for f in files]
    decode = (time.perf_counter() - started) / len(files)
    started = time.perf_counter()
    for lo in range(0, len(loaded), BATCH):
        model.encode(loaded[lo:lo + BATCH])
    encode = (time.perf_counter() - started) / len(files)
    return decode * 1e3, encode * 1e3


def photo_decode_ms(folder: Path, count: int = 16, passes: int = 3) -> dict:
    """Decode + preprocess ms per 1024x768 JPEG photo (what a real image costs a CPU; the toy PNGs are small)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:768, 0:1024]
    files = []
    for i in range(count):
        photo = np.stack([(x + 7 * i) % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
        photo += rng.integers(0, 20, photo.shape, dtype=np.uint8)
        files.append(folder / f"photo{i}.jpg")
        Image.fromarray(photo).save(files[-1], quality=90)
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        for f in files:
            load_media(f)
        times.append((time.perf_counter() - started) / count * 1e3)
    return summary(times)


def summary(values: list[float], best=min) -> dict:
    return {"median": statistics.median(values), "best": best(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="files of the short build; the long one has 2n")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(MEDIA), help="comma-separated modalities")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--object-store-mb", type=int, default=512,
                        help="the cluster's object store (a batch of 16 decoded videos is ~290 MB)")
    parser.add_argument("--whole", type=int, default=0, metavar="N",
                        help="also time both whole builds of N image files (interleaved, --rounds times)")
    parser.add_argument("--single-batch", type=int, default=BATCH,
                        help="files per model call of the single process (its default; 64 measured no faster)")
    parser.add_argument("--ray-batch", type=int, default=RayBuildOptions().batch_size,
                        help="files per decode task and per actor call (the Ray build's default)")
    parser.add_argument("--threads-per-actor", type=int, default=None,
                        help="torch threads of the embedding actor (default: the build's, all the node's cores)")
    args = parser.parse_args()

    model = ibllm_agent.load("toy")
    results = {}
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
            head_cpus=os.cpu_count() or 2, workers=0, object_store_bytes=args.object_store_mb << 20) as cluster:
        connect(cluster.address)
        builds = Builds(model, chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False)),
                        RayBuildOptions(batch_size=args.ray_batch,
                                        threads_per_actor=args.threads_per_actor), args.single_batch)
        for modality in args.only.split(","):
            files = write_inputs(Path(tmp), modality, 2 * args.n)
            short, long = Path(tmp) / f"{modality}-short", Path(tmp) / f"{modality}-long"
            for target, chosen in ((short, files[:args.n]), (long, files)):
                target.mkdir()
                for f in chosen:
                    (target / f.name).symlink_to(f)
            builds.ray(short)  # warm-up: worker processes started, imports cached
            times = {"single": ([], []), "ray": ([], [])}
            for _ in range(args.rounds):
                for i, folder in enumerate((short, long)):
                    for build in ("single", "ray"):
                        times[build][i].append(getattr(builds, build)(folder))
            row = {}
            for build, (t_short, t_long) in times.items():
                per_item = [(b - a) / args.n for a, b in zip(t_short, t_long)]
                row[build] = {"items_per_s_end_to_end_2n": summary([2 * args.n / t for t in t_long]),
                              "per_item_ms": summary([p * 1e3 for p in per_item]),
                              "fixed_s": summary([a - args.n * p for a, p in zip(t_short, per_item)])}
            rates = [s / r for s, r in zip(*(
                [(b - a) / args.n for a, b in zip(*times[k])] for k in ("single", "ray")))]
            row["ray_marginal_rate_vs_single"] = summary(rates, best=max)
            row["ray_end_to_end_rate_vs_single_2n"] = summary([s / r for s, r in zip(times["single"][1],
                                                                                        times["ray"][1])], best=max)
            decode, encode = stage_costs(model, files)
            row["stages_ms_per_item"] = {"decode": decode, "encode_batch16": encode}
            results[modality] = row
            print(f"{modality:6s} single {row['single']['per_item_ms']['median']:7.1f} ms/item "
                  f"(fixed {row['single']['fixed_s']['median']:5.2f} s, 2n end to end "
                  f"{row['single']['items_per_s_end_to_end_2n']['median']:5.1f}/s)   "
                  f"ray {row['ray']['per_item_ms']['median']:7.1f} ms/item (fixed {row['ray']['fixed_s']['median']:5.2f} s, "
                  f"2n end to end {row['ray']['items_per_s_end_to_end_2n']['median']:5.1f}/s)   "
                  f"ray/single marginal rate {row['ray_marginal_rate_vs_single']['median']:.2f} "
                  f"(best {row['ray_marginal_rate_vs_single']['best']:.2f}), end to end {row['ray_end_to_end_rate_vs_single_2n']['median']:.2f}   "
                  f"decode {decode:.1f} ms, encode {encode:.1f} ms", flush=True)
        if args.whole:
            folder = write_inputs(Path(tmp) / "whole", "image", args.whole)[0].parent
            runs = {"single": [], "ray": []}
            for _ in range(args.rounds):
                for build in runs:
                    runs[build].append(getattr(builds, build)(folder))
            ratios = [s / r for s, r in zip(runs["single"], runs["ray"])]
            results["whole_job_images"] = {"files": args.whole, **{k: summary(v) for k, v in runs.items()},
                                           "ray_rate_vs_single": summary(ratios, best=max)}
            print(f"whole job, {args.whole} images: single {statistics.median(runs['single']):.1f} s, "
                  f"ray {statistics.median(runs['ray']):.1f} s, ray/single rate {statistics.median(ratios):.2f} "
                  f"(best {max(ratios):.2f})", flush=True)
        photo = photo_decode_ms(Path(tmp))
        print(f"1024x768 JPEG photo: decode + preprocess {photo['median']:.1f} ms (best {photo['best']:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "rounds": args.rounds, "cpus": os.cpu_count(),
                                         "results": results, "photo_decode_ms": photo}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
