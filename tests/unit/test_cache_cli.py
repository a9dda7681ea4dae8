"""`ibllm cache ...` end to end on the embedded Chroma and FAISS files (tiny model for encoding)."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest
from PIL import Image

from ibllm_agent.cache.cli import main
from ibllm_agent.cache.faiss import FaissCache


def unit_vectors(n: int, dim: int = 1024, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def knn_index(tmp_path):
    index = faiss.IndexFlatIP(1024)
    index.add(unit_vectors(120))
    path = tmp_path / "knn.index"
    faiss.write_index(index, str(path))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["cache", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_stats_export_roundtrip(tmp_path, knn_index, capsys):
    db = tmp_path / "db"
    code, out, _ = run(capsys, "import-faiss", knn_index, "--collection", "official", "--path", db, "--batch-size", 50)
    assert code == 0 and json.loads(out) == {"collection": "official", "added": 120, "count": 120, "source": 120}
    code, out, _ = run(capsys, "import-faiss", knn_index, "--collection", "official", "--path", db)
    assert json.loads(out)["added"] == 0
    code, out, _ = run(capsys, "stats", "--collection", "official", "--path", db)
    stats = json.loads(out)
    assert (stats["count"], stats["dim"], stats["space"]) == (120, 1024, "ip")
    code, out, _ = run(capsys, "export-faiss", tmp_path / "back.index", "--collection", "official", "--path", db)
    assert code == 0 and json.loads(out)["count"] == 120
    back = FaissCache.load(tmp_path / "back.index")
    original = FaissCache.load(knn_index)
    q = unit_vectors(3, seed=5)
    assert back.search(q, 5).ids == original.search(q, 5).ids  # ids are the original positions
    code, out, _ = run(capsys, "stats", "--faiss", tmp_path / "back.index")
    assert json.loads(out)["count"] == 120
    for kind in ("ivf", "hnsw"):
        code, out, _ = run(capsys, "convert", tmp_path / "back.index", tmp_path / f"{kind}.index", "--kind", kind)
        assert code == 0 and json.loads(out)["count"] == 120
        approx = FaissCache.load(tmp_path / f"{kind}.index")
        assert [row[0] for row in approx.search(original.get_vectors(0, 20), 1).ids] == [str(i) for i in range(20)]


def pictures(folder, n: int, seed: int):
    """`folder` with n random 32x32 PNGs p0.png, p1.png, ..."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_build_then_query_a_file_and_a_text(tmp_path, capsys):
    media = pictures(tmp_path / "media", 4, seed=0)
    db = tmp_path / "db"
    code, out, _ = run(capsys, "build", media, "--collection", "photos", "--path", db, "--model", "tiny")
    assert code == 0 and json.loads(out)["added"] == 4
    code, out, _ = run(capsys, "query", media / "p2.png", "--collection", "photos", "--path", db,
                       "--model", "tiny", "-k", "2", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["metadata"]["uri"].endswith("p2.png") and rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(rows) == 2
    code, out, _ = run(capsys, "query", "--text", "a photo", "--collection", "photos", "--path", db,
                       "--model", "tiny", "-k", "10")
    assert code == 0 and len(out.splitlines()) == 4  # k clamped to the cache size


def test_bad_input_gives_one_line_errors(tmp_path, knn_index, capsys):
    (tmp_path / "x.index").write_text("not an index")
    code, _, err = run(capsys, "import-faiss", tmp_path / "x.index", "--collection", "c1c", "--path", tmp_path / "db")
    assert code == 2 and "is not a readable FAISS index" in err and "Traceback" not in err
    code, _, err = run(capsys, "stats", "--collection", "absent", "--path", tmp_path / "db")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "import-faiss", knn_index, "--collection", "c1c", "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach the Chroma server" in err
    code, _, err = run(capsys, "stats")
    assert code == 2 and "--collection NAME" in err
    code, _, err = run(capsys, "import-faiss", knn_index, "--collection", "c1c", "--path", tmp_path / "db",
                       "--dim", "512")
    assert code == 2 and "dimension 1024, but the model expects 512" in err


def test_build_into_a_faiss_index(tmp_path, capsys):
    media = pictures(tmp_path / "media", 3, seed=1)
    (media / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")
    out = tmp_path / "knn.index"
    code, out_text, _ = run(capsys, "build", media, "--faiss", out, "--model", "tiny")
    report = json.loads(out_text)
    assert code == 0 and (report["faiss"], report["count"], report["added"]) == (str(out), 3, 3)
    assert [os.path.basename(p) for p, _ in report["failed"]] == ["broken.png"]
    code, out_text, _ = run(capsys, "build", media, "--faiss", out, "--model", "tiny")
    assert json.loads(out_text)["already_present"] == 3 and FaissCache.load(out, dim=None).index.ntotal == 3
    code, out_text, _ = run(capsys, "query", media / "p1.png", "--faiss", out, "--model", "tiny", "-k", "1",
                            "--json")
    assert json.loads(out_text)["metadata"]["uri"].endswith("p1.png")
    code, _, err = run(capsys, "build", media, "--model", "tiny")
    assert code == 2 and "name one target" in err
    code, _, err = run(capsys, "build", media, "--faiss", out, "--collection", "c", "--model", "tiny")
    assert code == 2 and "name one target" in err


@pytest.mark.parametrize("option", ["--batch-size", "--embed-actors", "--threads-per-actor", "--write-batch"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_build_counts_must_be_whole_numbers_of_at_least_one(tmp_path, capsys, option, value):
    """A count of 0 had meant 'the default' (batch size) or reached Ray or torch (`set_num_threads(-3)`)."""
    with pytest.raises(SystemExit) as stop:
        main(["cache", "build", str(tmp_path), "--collection", "c", option, value])
    assert stop.value.code == 2
    assert f"argument {option}: expected a whole number of at least 1, got {value!r}" in capsys.readouterr().err
