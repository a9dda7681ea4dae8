"""`ibllm cache build | import-faiss | export-faiss | convert | stats | query`.

A cache is either a Chroma collection (`--collection NAME`, embedded at `--path`, default
./chroma, or on a server with `--url http://host:port`) or a FAISS file (`--faiss PATH`, for
stats and query). Commands that encode media load a model (`--model`, default the toy world)
and use its ImageBind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ibllm_agent import modalities
from ibllm_agent.cache.base import CacheError, VisualCache

logger = logging.getLogger(__name__)

IVF_TRAIN_MAX = 100_000
"""Vectors an exported IVF index is trained on (k-means cost grows with it)."""


def register(subparsers) -> None:
    """Add the `cache` command and its subcommands to the `ibllm` parser."""
    cache = subparsers.add_parser("cache", help="build, import, export and inspect visual caches",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="encode a folder or CSV of media into a Chroma collection or a FAISS index")
    p.add_argument("source", type=Path, help="a folder (all files below it) or a CSV with a `path` column")
    _chroma_args(p, required=False)
    p.add_argument("--faiss", type=Path, metavar="OUT",
                   help="write an exact FAISS index (knn.index format, ids and metadata in OUT.meta.sqlite) "
                        "instead of a Chroma collection: shards under OUT.shards/, merged at the end")
    _model_args(p)
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="files encoded at once (default: 16; with --ray 64, per decode task and actor call)")
    p.add_argument("--modalities", default=",".join(modalities.MEDIA),
                   help="comma-separated media kinds to keep (add `text` for text files)")
    r = p.add_argument_group("Ray Data (the `ray` extra): the same build over a cluster")
    r.add_argument("--ray", action="store_true", help="decode in Ray tasks and embed in a pool of Ray actors")
    r.add_argument("--address", default=None,
                   help="the cluster: HEAD:6379 or ray://HEAD:10001 (default: start one on this machine)")
    r.add_argument("--embed-actors", type=_positive, default=1, help="actors holding the model (one per GPU)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0)
    r.add_argument("--cpus-per-actor", type=float, default=1.0)
    r.add_argument("--threads-per-actor", type=_positive, default=None,
                   help="torch threads of an actor embedding on the CPU (default: its node's cores / --embed-actors)")
    r.add_argument("--write-batch", type=_positive, default=128,
                   help="vectors per write to Chroma (at most its max batch size)")
    r.add_argument("--timeout", type=float, default=None,
                   help="seconds the whole build may take; past them it stops (rerun to finish)")
    p.set_defaults(func=_build)

    p = sub.add_parser("import-faiss", help="copy a FAISS index (e.g. the official knn.index) into Chroma")
    p.add_argument("index", type=Path)
    _chroma_args(p, required=True)
    p.add_argument("--batch-size", type=int, default=None, help="vectors per add (at most Chroma's max batch size)")
    p.add_argument("--dim", type=int, default=1024, help="expected dimension (ImageBind: 1024)")
    p.set_defaults(func=_import_faiss)

    p = sub.add_parser("export-faiss", help="write a Chroma collection to a FAISS index (+ metadata sidecar)")
    p.add_argument("out", type=Path)
    _chroma_args(p, required=True)
    p.add_argument("--kind", choices=["flat", "hnsw", "ivf"], default="flat", help="exact (flat) or approximate")
    p.set_defaults(func=_export_faiss)

    p = sub.add_parser("convert", help="rewrite a FAISS index as exact (flat) or approximate (hnsw, ivf)")
    p.add_argument("index", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--kind", choices=["flat", "hnsw", "ivf"], default="ivf")
    p.set_defaults(func=_convert)

    p = sub.add_parser("stats", help="count, dimension, modalities of a cache")
    _chroma_args(p, required=False)
    p.add_argument("--faiss", type=Path, help="a FAISS index instead of a Chroma collection")
    p.set_defaults(func=_stats)

    p = sub.add_parser("query", help="the nearest cached items to a file or a text")
    p.add_argument("file", nargs="?", type=Path, help="a media file")
    p.add_argument("--text", help="a text instead of a file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON object per neighbour")
    _chroma_args(p, required=False)
    p.add_argument("--faiss", type=Path, help="a FAISS index instead of a Chroma collection")
    _model_args(p)
    p.set_defaults(func=_query)


def main(argv: list[str] | None = None) -> int:
    """`python -m ibllm_agent.cache.cli ...` (the same as `ibllm cache ...`)."""
    parser = argparse.ArgumentParser(prog="ibllm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of files, actors, threads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _chroma_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--collection", required=required, help="Chroma collection name")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--path", type=Path, default=Path("chroma"), help="embedded Chroma folder (default ./chroma)")
    where.add_argument("--url", help="a `chroma run` server, e.g. http://127.0.0.1:8000")
    p.add_argument("--hnsw", choices=["tuned", "fast", "chroma"], default="tuned",
                   help="HNSW settings of a NEW collection: tuned (default), fast (quicker ingest, lower "
                        "recall), chroma (Chroma's own defaults)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", help="toy, tiny, a registry name or an adapter file")
    p.add_argument("--llama-dir", type=Path, help="LLaMA folder for real weights")
    p.add_argument("--imagebind-ckpt", type=Path, help="ImageBind weights for real weights")
    p.add_argument("--device", default="cpu")


def _fail(e: Exception) -> int:
    sys.stderr.write(f"ibllm cache: error: {e}\n")
    return 2


def _errors(func):
    """Clear one-line errors for bad input instead of tracebacks."""
    def run(args) -> int:
        from ibllm_agent.media import MediaError
        from ibllm_agent.ray_cluster import ClusterError

        try:
            return func(args)
        except (CacheError, ClusterError, MediaError, FileNotFoundError) as e:
            return _fail(e)
    return run


def _open_chroma(args, dim: int = 1024, create: bool = True, client=None):
    from ibllm_agent.cache.chroma import ChromaCache, ChromaHnsw

    return ChromaCache.open(args.collection, path=args.path, url=args.url, client=client, dim=dim, create=create,
                            hnsw=ChromaHnsw.preset(args.hnsw))


def _open_target(args) -> VisualCache:
    if args.faiss is not None:
        from ibllm_agent.cache.faiss import FaissCache

        return FaissCache.load(args.faiss, dim=None)
    if not args.collection:
        raise CacheError("name a cache: --collection NAME (Chroma) or --faiss PATH")
    return _open_chroma(args, create=False)


def _load_model(args):
    import ibllm_agent

    return ibllm_agent.load(args.model, llama_dir=args.llama_dir, imagebind_ckpt=args.imagebind_ckpt,
                            device=args.device)


@_errors
def _build(args) -> int:
    from ibllm_agent.cache.build import BATCH_SIZE, build_from_media, list_media

    if (args.collection is None) == (args.faiss is None):
        raise CacheError("name one target: --collection NAME (Chroma) or --faiss OUT (a FAISS index)")
    if args.faiss is not None and args.url is not None:
        raise CacheError("--url names a Chroma server; a --faiss build writes a file")
    items = list_media(args.source)
    wanted = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if args.ray:
        report, cache = _build_on_ray(args, items, wanted)
    else:
        model = _load_model(args)
        cache = _open_build_target(args, model.feature_dim)
        report = build_from_media(items, cache, model.encode, batch_size=args.batch_size or BATCH_SIZE, modalities=wanted,
                                  progress=True)
    if args.faiss is not None:
        cache = cache.merge()
    target = {"collection": args.collection} if args.faiss is None else {"faiss": str(args.faiss)}
    print(json.dumps({**target, "count": len(cache), **report.__dict__}, indent=1))
    return 0


def _open_build_target(args, dim: int, client=None):
    """The collection a build adds to, or the shards of its FAISS index (`merge` writes the file)."""
    if args.faiss is not None:
        from ibllm_agent.cache.faiss_shards import FaissShards

        return FaissShards(args.faiss, dim)
    return _open_chroma(args, dim=dim, client=client)


def _build_on_ray(args, items, wanted):
    """The Ray Data build: the driver loads no model (the actors do), it reads the dimension from the card."""
    from ibllm_agent.cache.chroma import connect as chroma_client
    from ibllm_agent.cache.ray_data import RayBuildOptions, build_with_ray, feature_dim_on_cluster
    from ibllm_agent.ray_cluster import connect

    # an unreachable Chroma fails before any cluster work
    client = chroma_client(args.path, args.url) if args.faiss is None else None
    connect(args.address)
    options = RayBuildOptions(batch_size=args.batch_size or RayBuildOptions.batch_size, embed_actors=args.embed_actors,
                              gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                              threads_per_actor=args.threads_per_actor, write_batch=args.write_batch, timeout_s=args.timeout)
    load_kwargs = {"llama_dir": args.llama_dir, "imagebind_ckpt": args.imagebind_ckpt, "device": args.device}
    cache = _open_build_target(args, feature_dim_on_cluster(args.model, load_kwargs, options), client=client)
    return build_with_ray(items, cache, args.model, load_kwargs, modalities=wanted, options=options,
                          progress=True), cache


@_errors
def _import_faiss(args) -> int:
    from ibllm_agent.cache.build import copy_cache
    from ibllm_agent.cache.faiss import FaissCache

    source = FaissCache.load(args.index, dim=args.dim)
    dest = _open_chroma(args, dim=source.dim)
    batch = min(args.batch_size or dest.max_batch_size, dest.max_batch_size)
    added = copy_cache(source.iter_batches(batch), dest, total=len(source), progress=True, desc="import")
    print(json.dumps({"collection": args.collection, "added": added, "count": len(dest), "source": len(source)}))
    return 0


@_errors
def _export_faiss(args) -> int:
    source = _open_chroma(args, create=False)
    if len(source) == 0:
        raise CacheError(f"collection {args.collection!r} is empty: nothing to export")
    train = _first_vectors(source, IVF_TRAIN_MAX) if args.kind == "ivf" else None
    return _write_faiss(source.iter_batches(), len(source), source.dim, args.out, args.kind, train)


@_errors
def _convert(args) -> int:
    import numpy as np

    from ibllm_agent.cache.faiss import FaissCache

    source = FaissCache.load(args.index, dim=None)
    if len(source) == 0:
        raise CacheError(f"{args.index} is empty: nothing to convert")
    train = None
    if args.kind == "ivf":  # evenly spaced positions: the file's order may follow its sources
        positions = np.linspace(0, len(source) - 1, min(len(source), IVF_TRAIN_MAX)).astype(np.int64)
        train = source.index.reconstruct_batch(positions)
    return _write_faiss(source.iter_batches(8192), len(source), source.dim, args.out, args.kind, train)


def _write_faiss(batches, total: int, dim: int, out: Path, kind: str, train) -> int:
    from ibllm_agent.cache.build import copy_cache
    from ibllm_agent.cache.faiss import FaissCache, FaissOptions

    # IVF cells: ~4 sqrt(n), but k-means wants >= 39 training points per cell
    nlist = max(1, min(int(4 * total ** 0.5), len(train) // 39)) if train is not None else None
    dest = FaissCache.create(dim, FaissOptions(kind=kind, nlist=nlist), train_vectors=train)
    copy_cache(batches, dest, total=total, progress=True, desc=f"writing {kind} index")
    dest.save(out)
    print(json.dumps({"out": str(out), "count": len(dest), "kind": kind, "nlist": nlist}))
    return 0


def _first_vectors(cache, limit: int):
    """The first `limit` vectors of a Chroma cache (pages come in insertion order)."""
    import numpy as np

    chunks, n = [], 0
    for _, vectors, _ in cache.iter_batches():
        chunks.append(vectors[:limit - n])
        n += len(chunks[-1])
        if n >= limit:
            break
    return np.concatenate(chunks)


@_errors
def _stats(args) -> int:
    cache = _open_target(args)
    print(json.dumps(cache.stats(), indent=1))
    return 0


@_errors
def _query(args) -> int:
    import numpy as np

    from ibllm_agent.media import load_media

    if (args.file is None) == (args.text is None):
        raise CacheError("query needs a file or --text (one of them)")
    cache = _open_target(args)
    model = _load_model(args)
    item = load_media(args.text, "text") if args.text is not None else load_media(args.file)
    feature = model.encode([item]).numpy()  # (1, D)
    feature /= np.linalg.norm(feature, axis=1, keepdims=True)  # scores are then cosine similarities
    res = cache.search(feature, args.k)
    for rank, (i, s, m) in enumerate(zip(res.ids[0], res.scores[0], res.metadatas[0]), 1):
        if args.json:
            print(json.dumps({"rank": rank, "id": i, "score": float(s), "metadata": m}))
        else:
            label = m.get("caption") or m.get("uri") or ""
            print(f"{rank:3d}  {float(s):+.4f}  {i[:16]:16s}  {m.get('modality', ''):6s}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
