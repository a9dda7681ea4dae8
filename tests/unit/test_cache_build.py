"""Building caches: media listing (folder, CSV), content-hash ids, idempotent builds, cache copies."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ibllm_agent.cache import CacheError
from ibllm_agent.cache.build import build_from_media, copy_cache, list_media
from ibllm_agent.cache.chroma import ChromaCache, connect
from ibllm_agent.cache.faiss import FaissCache


def write_images(folder, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_model():
    import ibllm_agent

    return ibllm_agent.load("tiny")


@pytest.fixture()
def chroma(tmp_path):
    client = connect(tmp_path / "chroma")
    yield ChromaCache.open("built", client=client)
    client.clear_system_cache()


def test_list_media_folder_and_csv(tmp_path):
    paths = write_images(tmp_path / "media", 3)
    (tmp_path / "media" / ".hidden.png").write_bytes(paths[0].read_bytes())
    (tmp_path / "media" / ".git").mkdir()
    (tmp_path / "media" / ".git" / "x.png").write_bytes(paths[0].read_bytes())
    (tmp_path / "media" / "sub").mkdir()
    (tmp_path / "media" / "sub" / "z.png").write_bytes(paths[1].read_bytes())
    assert [i.path.name for i in list_media(tmp_path / "media")] == ["img00.png", "img01.png", "img02.png", "z.png"]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("Path,Caption,modality,source\nmedia/img00.png,a red thing,,web\n"
                        f"{paths[1]},,image,\n,,,\n")
    items = list_media(csv_path)
    assert [i.path for i in items] == [tmp_path / "media" / "img00.png", paths[1]]
    assert (items[0].caption, items[0].modality, items[0].extra) == ("a red thing", None, {"source": "web"})
    assert (items[1].caption, items[1].modality) == (None, "image")
    (tmp_path / "bad.csv").write_text("name,caption\na,b\n")
    with pytest.raises(CacheError, match="path / uri / file column"):
        list_media(tmp_path / "bad.csv")
    with pytest.raises(CacheError, match="neither a folder nor a CSV"):
        list_media(tmp_path / "missing")


def test_build_is_idempotent_and_skips_known_items_before_encoding(tmp_path, tiny_model, chroma):
    paths = write_images(tmp_path / "media", 6)
    (tmp_path / "media" / "copy.png").write_bytes(paths[2].read_bytes())  # same content: one item
    (tmp_path / "media" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "media" / "notes.txt").write_text("a text file is not a visual item by default")
    calls = []

    def encode(items):
        calls.append(len(items))
        return tiny_model.encode(items)

    report = build_from_media(list_media(tmp_path / "media"), chroma, encode, batch_size=4)
    assert (report.inputs, report.unique, report.added, report.already_present) == (9, 8, 6, 0)
    assert report.skipped_modality == 1 and [p for p, _ in report.failed] == [str(tmp_path / "media" / "broken.png")]
    assert len(chroma) == 6 and sum(calls) == 6
    again = build_from_media(list_media(tmp_path / "media"), chroma, encode, batch_size=4)
    assert (again.added, again.already_present, len(chroma), sum(calls)) == (0, 6, 6, 6)

    from ibllm_agent.media import load_media

    query = tiny_model.encode([load_media(paths[3])]).numpy()
    res = chroma.search(query, 1)
    meta = res.metadatas[0][0]
    assert meta["uri"] == str(paths[3].resolve()) and meta["modality"] == "image" and meta["mime"] == "image/png"
    assert res.ids[0][0] == meta["sha256"] and len(meta["sha256"]) == 64
    np.testing.assert_allclose(res.scores[0, 0], float(query[0] @ query[0]), rtol=1e-5)


def test_build_with_csv_captions_into_faiss(tmp_path, tiny_model):
    paths = write_images(tmp_path / "media", 3, seed=1)
    (tmp_path / "c.csv").write_text("path,label\n" + "".join(f"{p},thing {i}\n" for i, p in enumerate(paths)))
    cache = FaissCache.create(tiny_model.feature_dim)
    report = build_from_media(list_media(tmp_path / "c.csv"), cache, tiny_model.encode)
    assert report.added == 3
    out = cache.save(tmp_path / "built.index")
    res = FaissCache.load(out).search(cache.get_vectors(1, 2), 1)
    assert res.metadatas[0][0]["caption"] == "thing 1"


def test_copy_faiss_to_chroma_resumes_and_back(tmp_path, chroma):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 1024)).astype(np.float32)
    source = FaissCache.from_vectors(x / np.linalg.norm(x, axis=1, keepdims=True))
    first = copy_cache(source.iter_batches(8), chroma, total=20, desc="import")
    assert first == 50
    chroma.collection.delete(ids=[str(i) for i in range(30, 50)])  # as if interrupted after 30
    assert copy_cache(source.iter_batches(8), chroma, total=50) == 20 and len(chroma) == 50
    back = FaissCache.create()
    copy_cache(chroma.iter_batches(16), back, total=50)
    ids, vectors, _ = next(back.iter_batches(50))
    np.testing.assert_array_equal(vectors[np.argsort([int(i) for i in ids])], source.get_vectors(0, 50))


def test_model_answers_with_a_chroma_cache_and_names_its_neighbours(tmp_path, tiny_model, chroma):
    paths = write_images(tmp_path / "media", 5, seed=2)
    build_from_media(list_media(tmp_path / "media"), chroma, tiny_model.encode)
    from ibllm_agent.media import load_media

    feature = tiny_model.encode([load_media(paths[4])])  # (1, D)
    previous = tiny_model.visual_cache
    tiny_model.visual_cache = chroma
    try:
        query, neighbors = tiny_model.visual_query(feature, {"enabled": True, "size": 3})
    finally:
        tiny_model.visual_cache = previous
    assert query.shape[0] == 1 and len(neighbors[0]) == 3
    best = neighbors[0][0]
    assert best.metadata["uri"] == str(paths[4].resolve()) and best.score == pytest.approx(1.0, abs=1e-5)
    assert best.weight > neighbors[0][1].weight and sum(n.weight for n in neighbors[0]) == pytest.approx(1.0)


def test_faiss_shards_merge_in_listing_order_and_resume(tmp_path, tiny_model):
    from ibllm_agent.cache.faiss_shards import FaissShards, shard_folder

    paths = write_images(tmp_path / "media", 7, seed=2)
    items = list_media(tmp_path / "media")
    reference = FaissCache.create(tiny_model.feature_dim)
    build_from_media(items, reference, tiny_model.encode, batch_size=3)
    want_ids, want_vectors, want_metas = next(reference.iter_batches(7))

    calls = []

    def dies_on_the_third_batch(inputs):
        calls.append(len(inputs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return tiny_model.encode(inputs)

    out = tmp_path / "knn.index"
    with pytest.raises(KeyboardInterrupt):  # a build killed before its merge keeps its full shards
        build_from_media(items, FaissShards(out, tiny_model.feature_dim, shard_rows=2), dies_on_the_third_batch,
                         batch_size=2)
    assert len(list(shard_folder(out).glob("*.npz"))) == 2 and not out.exists()
    rerun = FaissShards(out, tiny_model.feature_dim, shard_rows=2)
    report = build_from_media(items, rerun, tiny_model.encode, batch_size=2)
    assert (report.already_present, report.added) == (4, 3)
    assert len(rerun.merge()) == 7 and not shard_folder(out).exists()
    got_ids, got_vectors, got_metas = next(FaissCache.load(out).iter_batches(7))
    assert got_ids == want_ids and got_metas == want_metas  # the order of one uninterrupted build
    assert [m["uri"] for m in got_metas] == [str(p.resolve()) for p in paths]
    np.testing.assert_allclose(got_vectors, want_vectors, atol=1e-6, rtol=0)

    # items that arrive out of order (a Ray build's batches) are merged in the order of their positions
    shuffled = FaissShards(tmp_path / "shuffled.index", tiny_model.feature_dim, shard_rows=3)
    for rows in ([5, 2], [6, 0, 3], [1, 4]):
        shuffled.add(want_vectors[rows], ids=[want_ids[r] for r in rows], metadatas=[want_metas[r] for r in rows],
                     positions=rows)
    assert next(shuffled.merge().iter_batches(7))[0] == want_ids

    # a later build into the merged file stores nothing twice and appends the new files after the old ones
    more = write_images(tmp_path / "more", 1, seed=9)
    again = FaissShards(out, tiny_model.feature_dim)
    report = build_from_media(items + list_media(more[0].parent), again, tiny_model.encode)
    assert (report.already_present, report.added) == (7, 1)
    assert len(again.merge()) == 8 and next(FaissCache.load(out).iter_batches(8))[0][:7] == want_ids


def test_a_shard_of_another_build_is_refused(tmp_path):
    from ibllm_agent.cache.faiss_shards import FaissShards, shard_folder

    writer = FaissShards(tmp_path / "a.index", 8)
    writer.add(np.eye(8, dtype=np.float32)[:2], ids=["x", "x"], metadatas=[{}, {}], positions=[0, 1])
    writer.flush()
    assert len(FaissShards(tmp_path / "a.index", 8)) == 1
    with pytest.raises(CacheError, match="not this build's"):
        FaissShards(tmp_path / "a.index", 4)
    (shard_folder(tmp_path / "a.index") / "0-bad.npz").write_bytes(b"not a shard")
    with pytest.raises(CacheError, match="unreadable"):
        FaissShards(tmp_path / "a.index", 8)
