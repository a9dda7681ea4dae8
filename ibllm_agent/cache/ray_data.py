"""`ibllm cache build SOURCE --ray`: the build of `build.py` as a Ray Data pipeline over a cluster.

    ibllm cache build /data/media --ray --address HEAD:6379 --url http://chroma:8000 --collection visual \
        --embed-actors 8 --gpus-per-actor 1 --device cuda

Stages: list files (the driver) -> content ids, sha256 of the bytes (CPU tasks) -> decode and preprocess
(CPU tasks) -> embed (a pool of actors, each holding the model, batched, on a GPU when given one) -> the
driver adds them to the cache in batches of at most Chroma's max batch size. The ids, the de-duplication
(the first file of a content wins, in listing order), the skipping of ids already stored and the metadata
are those of the single-process `build_from_media`, so either build finishes what the other began, and a
rerun after any failure (a node lost, the driver killed) adds exactly what is missing. Files that cannot be
read or decoded are reported in `BuildReport.failed`; they never fail the job.

One writer: Chroma (a server, or an embedded folder that only one process may write) is the serial stage of
this pipeline, and one writer lets the driver count what was added and stop at the deadline.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ibllm_agent import modalities as registry
from ibllm_agent.cache.base import CacheError, VisualCache
from ibllm_agent.cache.build import DEFAULT_MODALITIES, BuildReport, MediaItem, add_in_order, item_metadata
from ibllm_agent.ray_cluster import ClusterError

logger = logging.getLogger(__name__)

HASH_BATCH = 64
"""Files hashed per task: hashing is I/O, cheap per file, so fewer, larger tasks."""
SHIP_LIMIT = 4 << 20
"""A decoded tensor larger than this (bytes) is not passed through the object store: the embedding actor
decodes the file again. A 40 KB video decodes to 18 MB of float32 clips; shipping those spilled the store
to disk and made the Ray build 25x slower than one process on video (tools/bench_ingest.py)."""
CALL_BYTES = 256 << 20
"""Decoded input a model call holds at most (or one file's, if larger): a batch of 64 videos is 1.2 GB of
clips, and the toy's actor grew to 3.1 GB on it; 256 MB is about what the single process's batch of 16 holds."""

ACTOR_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""The embedding actors' OpenMP threads sleep between model calls instead of spinning: spinning, they took
the cores the decode tasks beside them needed (images at batch 16 on 2 cores: 0.63x -> 0.77x the single
process's per-item rate, tools/bench_ingest.py)."""


@dataclass(frozen=True)
class RayBuildOptions:
    """How the pipeline uses the cluster (the `ibllm cache build --ray` flags)."""

    batch_size: int = 64
    """Files decoded per task and encoded per model call. Larger than the single process's 16: each task and
    each actor call has a fixed cost, which at 16 held the Ray build to ~0.8x the single process's per-item
    rate on 2 cores and at 64 no longer (tools/bench_ingest.py); one process measured no faster at 64."""
    embed_actors: int = 1
    """Actors holding the model (one per GPU on a GPU cluster)."""
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None
    """Torch threads of an actor embedding on the CPU. Ray sets them to the actor's `cpus_per_actor` (1), which
    halved the rate of encode-bound media (point clouds, video) against one process using every core; the
    default gives each actor an equal share of its node's cores (the decode tasks take turns on them)."""
    write_batch: int = 128
    """Vectors per add to the cache (capped at Chroma's max batch size): what a killed build may have to
    embed again, against fewer, larger writes."""
    decode_memory_bytes: int = 512 * 1024 * 1024
    """Memory a decode task reserves: a batch of videos decodes to hundreds of MB of frames."""
    timeout_s: float | None = None
    """Deadline of the whole build; past it the build stops with a `CacheError` (what was added stays)."""


def build_with_ray(items: Sequence[MediaItem], cache: VisualCache, model: str, load_kwargs: dict, *,
                   modalities: Iterable[str] = DEFAULT_MODALITIES, options: RayBuildOptions | None = None,
                   progress: bool = False) -> BuildReport:
    """Encode `items` with the model `model` (loaded by every embedding actor with `ibllm_agent.load(model,
    **load_kwargs)`) and add the new ones to `cache`; Ray must already be initialised (`ray_cluster.connect`).
    Returns the `BuildReport` the single-process build would give."""
    import ray
    from ray.data import DataContext

    options = options or RayBuildOptions()
    deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
    gpus = ray.cluster_resources().get("GPU", 0)
    if options.gpus_per_actor > 0 and gpus < options.gpus_per_actor:
        raise ClusterError(f"each embedding actor asks for {options.gpus_per_actor} GPU, the cluster has {gpus:g}")
    context = DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = progress
    modalities = sorted({registry.canonical(m) for m in modalities})

    report = BuildReport(inputs=len(items))
    readable = []
    for position, item in enumerate(items):
        if item.problem:
            report.failed.append((str(item.path), item.problem))
        else:
            readable.append((position, item))

    # content ids in tasks, then the single-process rule in the driver: the first file of a content wins
    hashed = ray.data.from_items([{"position": p, "path": str(item.path)} for p, item in readable],
                                 override_num_blocks=_blocks(len(readable), HASH_BATCH))
    hashed = hashed.map_batches(_hash_batch, batch_size=HASH_BATCH, batch_format="pyarrow")
    ids: dict[str, tuple[int, MediaItem]] = {}  # content id -> the first file of it and its position
    by_position = dict(readable)
    found = sorted(row for batch in _within(hashed.iter_batches(batch_size=None, batch_format="pyarrow"), deadline)
                   for row in zip(batch["position"].to_pylist(), batch["id"].to_pylist(),
                                  batch["error"].to_pylist()))
    for position, item_id, error in found:
        item = by_position[position]
        if error:
            report.failed.append((str(item.path), error))
        else:
            ids.setdefault(item_id, (position, item))
    report.unique = len(ids)
    present = cache.existing_ids(list(ids))
    report.already_present = len(present)
    todo = [{"id": i, "position": position, "path": str(item.path), "modality": item.modality or "",
             "caption": item.caption or "", "extra": json.dumps(item.extra)}
            for i, (position, item) in ids.items() if i not in present]
    if not todo:
        return _logged(report)

    # Decode tasks reserve memory for the frames they hold. That differing request also keeps decoding and
    # embedding two operators: Ray Data fuses map stages with equal requests, which would put the decoding
    # inside the embedding actors and leave the model idle while its actor decodes.
    decoded = ray.data.from_items(todo, override_num_blocks=_blocks(len(todo), options.batch_size)).map_batches(
        _decode_batch, fn_kwargs={"modalities": modalities}, batch_size=options.batch_size, batch_format="pyarrow",
        memory=options.decode_memory_bytes)
    embedded = decoded.map_batches(
        _Embedder, fn_constructor_args=(model, load_kwargs, options.threads_per_actor or 0, options.embed_actors),
        batch_size=options.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.embed_actors), num_gpus=options.gpus_per_actor,
        num_cpus=options.cpus_per_actor, runtime_env={"env_vars": ACTOR_ENV})
    write_batch = min(options.write_batch, getattr(cache, "max_batch_size", options.write_batch))
    for batch in _within(embedded.iter_batches(batch_size=write_batch, batch_format="numpy"), deadline):
        keep = []
        for j, (path, error, skipped) in enumerate(zip(batch["path"], batch["error"], batch["skipped"])):
            if error:
                report.failed.append((str(path), str(error)))
            elif skipped:
                report.skipped_modality += 1
            else:
                keep.append(j)
        if keep:
            report.added += add_in_order(cache, batch["vector"][keep], [str(batch["id"][j]) for j in keep],
                                         [json.loads(batch["meta"][j]) for j in keep],
                                         [int(batch["position"][j]) for j in keep])
    return _logged(report)


def feature_dim_on_cluster(model: str, load_kwargs: dict, options: RayBuildOptions | None = None) -> int:
    """Load the model once on a worker, as an embedding actor will, and return its feature dimension: the
    collection is created with it, and a model that cannot be loaded there (a file missing on the workers)
    fails here, with the worker's error, before any file is read."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    options = options or RayBuildOptions()

    @ray.remote(num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor, max_retries=0)
    def dimension() -> int:
        import ibllm_agent

        return int(ibllm_agent.load(model, **load_kwargs).feature_dim)

    ref = dimension.remote()
    try:
        return ray.get(ref, timeout=options.timeout_s)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ClusterError(f"no worker loaded the model {model!r} within {options.timeout_s:g} s") from None
    except RayError as e:
        cause = getattr(e, "cause", None) or e
        raise ClusterError(f"a Ray worker could not load the model {model!r}: {type(cause).__name__}: "
                           f"{' '.join(str(cause).split())[-600:]}") from None


def _blocks(rows: int, per_block: int) -> int:
    """Blocks of about `per_block` rows (Ray Data's default of 200 makes a task per file for small inputs)."""
    return max(1, -(-rows // per_block))


def _logged(report: BuildReport) -> BuildReport:
    for path, reason in report.failed:
        logger.warning("not added: %s (%s)", path, reason)
    return report


def _within(batches: Iterator, deadline: float | None) -> Iterator:
    """`batches`, read in a thread so that the build stops at `deadline` even when the cluster cannot make
    progress (resources that never free, a node that does not come back); Ray's errors as `ClusterError`."""
    handoff: queue.Queue = queue.Queue(maxsize=2)
    end = object()

    def pump():
        try:
            for batch in batches:
                handoff.put(batch)
            handoff.put(end)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            handoff.put(e)

    threading.Thread(target=pump, name="ibllm-ray-data", daemon=True).start()
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            item = handoff.get(timeout=None if left is None else max(left, 0.001))
        except queue.Empty:
            raise CacheError("the Ray build did not finish within its deadline (--timeout); what was added "
                             "stays, and running the same command again finishes it") from None
        if item is end:
            return
        if isinstance(item, BaseException):
            if isinstance(item, CacheError):
                raise item
            detail = " ".join(str(item).split())
            raise ClusterError(f"the Ray build failed ({type(item).__name__}): {detail[-1200:]}") from None
        yield item


# --- the stages (run in Ray workers) --------------------------------------------------------------------


def _hash_batch(batch):
    """position, path -> position, id (sha256 of the bytes), error."""
    import pyarrow as pa

    from ibllm_agent.media.source import file_sha256

    ids, errors = [], []
    for path in batch["path"].to_pylist():
        try:
            ids.append(file_sha256(path))
            errors.append("")
        except OSError as e:
            ids.append("")
            errors.append(str(e))
    return pa.table({"position": batch["position"], "id": ids, "error": errors})


def _decode_batch(batch, modalities: list[str]):
    """Files -> their preprocessed tensors (as bytes, shape and dtype: one Arrow column for every medium) and
    the metadata the single-process build stores; a file that fails to load carries its error instead."""
    from pathlib import Path

    import pyarrow as pa

    from ibllm_agent.media import MediaError, load_media

    columns = {k: [] for k in ("id", "position", "path", "modality", "name", "mime", "tensor", "shape", "dtype",
                               "meta", "error", "skipped", "redecode")}
    for row in batch.to_pylist():
        item = MediaItem(Path(row["path"]), row["caption"] or None, row["modality"] or None, json.loads(row["extra"]))
        media, error = None, ""
        try:
            media = load_media(item.path, item.modality)
        except MediaError as e:
            error = str(e)
        except OSError as e:  # deleted or made unreadable since it was hashed
            error = f"{item.path}: {e.strerror or e}"
        keep = media is not None and media.modality in modalities
        redecode = keep and media.tensor.nbytes > SHIP_LIMIT
        tensor = media.tensor.contiguous().numpy() if keep and not redecode else np.zeros(0, np.float32)
        for key, value in (("id", row["id"]), ("position", row["position"]), ("path", row["path"]),
                           ("modality", media.modality if media else ""), ("name", media.name if media else ""), ("mime", media.mime if media else ""),
                           ("tensor", tensor.tobytes()), ("shape", json.dumps(tensor.shape)),
                           ("dtype", str(tensor.dtype)),
                           ("meta", json.dumps(item_metadata(item, media, row["id"])) if keep else ""),
                           ("error", error), ("skipped", media is not None and not keep), ("redecode", redecode)):
            columns[key].append(value)
    return pa.table(columns)


class _Embedder:
    """An actor of the pool: loads the model once, then encodes batches of decoded files."""

    def __init__(self, model: str, load_kwargs: dict, threads: int, actors: int):
        import os

        import torch

        import ibllm_agent

        self.llm = ibllm_agent.load(model, **load_kwargs)
        if self.llm.device.type == "cpu":
            torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // actors))

    def __call__(self, batch):
        from pathlib import Path

        import torch

        from ibllm_agent.media import MediaError, MediaInput, load_media

        rows = batch.to_pylist()
        vectors = np.zeros((len(rows), self.llm.feature_dim), np.float32)
        inputs, ready = [], []

        def encode():
            if ready:
                vectors[ready] = self.llm.encode(inputs).numpy()
            inputs.clear()
            ready.clear()

        for j, r in enumerate(rows):
            if r["error"] or r["skipped"]:
                continue
            if r["redecode"]:
                try:
                    media = load_media(Path(r["path"]), r["modality"])
                except (MediaError, OSError) as e:  # changed since the decode task read it
                    r["error"] = f"{r['path']}: {e}"
                    continue
                inputs.append(MediaInput(r["modality"], media.tensor, r["name"], r["id"], r["mime"]))
            else:
                inputs.append(MediaInput(r["modality"], torch.from_numpy(np.frombuffer(r["tensor"], r["dtype"]).reshape(
                    json.loads(r["shape"])).copy()), r["name"], r["id"], r["mime"]))
            ready.append(j)
            if sum(i.tensor.nbytes for i in inputs) >= CALL_BYTES:
                encode()
        encode()
        columns = {k: np.array([r[k] for r in rows]) for k in ("id", "path", "meta", "error")}
        return {**columns, "position": np.array([r["position"] for r in rows], np.int64),
                "skipped": np.array([r["skipped"] for r in rows], bool), "vector": vectors}
