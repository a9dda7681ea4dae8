"""The shipped toy model: official file layout, loaded by the same code as official files, and it
answers held-out samples of its world (including modalities its LLM never saw) above the targets."""

from __future__ import annotations

import json
import time

import pytest
import torch

import ibllm_agent
from ibllm_agent import factory, pretrained
from ibllm_agent.media import load_media
from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld
from ibllm_agent.train.toy_eval import RETRIEVAL_TARGETS, TARGETS, evaluate

TOY = pretrained.TOY_DIR
pytestmark = pytest.mark.skipif(not (TOY / "toy.json").is_file(), reason="the toy model is not built")


def test_official_layout_and_size():
    meta = json.loads((TOY / "toy.json").read_text())
    assert meta["concepts"] == list(CONCEPT_NAMES) and "toy world" in meta["description"]
    llama = TOY / meta["llama_dir"]
    assert (llama / "tokenizer.model").is_file()
    assert set(json.loads((llama / meta["llama_type"] / "params.json").read_text())) == {
        "dim", "multiple_of", "n_heads", "n_layers", "norm_eps", "vocab_size"}
    base = torch.load(llama / meta["llama_type"] / "consolidated.00.pth", weights_only=True)
    assert "tok_embeddings.weight" in base and not any("lora" in k or "gate" in k for k in base)
    adapter = torch.load(TOY / meta["adapter"], weights_only=True)
    assert set(adapter) == {"model"} and "prefix_query.weight" in adapter["model"]
    assert not any(k.startswith("image_bind.") for k in adapter["model"])
    import faiss

    index = faiss.read_index(str(TOY / meta["knn_index"]))
    assert index.d == 1024 and index.ntotal == meta["cache_vectors"]
    total = sum(p.stat().st_size for p in TOY.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"toy assets are {total / 2**20:.1f} MB"


def test_load_goes_through_the_official_file_loader(monkeypatch):
    calls = []
    real = factory.build_from_files

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(factory, "build_from_files", spy)
    t0 = time.perf_counter()
    model = ibllm_agent.load("toy")
    seconds = time.perf_counter() - t0
    assert len(calls) == 1 and model.card.is_toy and model.card.name == "toy"
    args, kwargs = calls[0]
    assert str(args[0]).startswith(str(TOY)) and kwargs["imagebind_ckpt"].parent == TOY
    assert seconds < 15  # ~1 s on an idle 2-core machine; generous for a shared one


@pytest.fixture(scope="module")
def toy():
    return ibllm_agent.load("toy", knn=True)


def test_text_only_answers_know_the_world(toy):
    from ibllm_agent.generation import format_prompt

    out = toy.generate_batch([format_prompt("What sound does a dog make?"), format_prompt("Who are you?")], None,
                             max_tokens=24, temperature=0.0)
    assert "bark" in out[0].text.lower()
    assert "toy" in out[1].text.lower()


@pytest.fixture(scope="module")
def report(toy, tmp_path_factory):
    """Held-out answers (3 samples per concept and modality, 2 videos): about 15 s."""
    return evaluate(toy, per_concept=3, video_per_concept=2, mixture_pairs=2, folder=tmp_path_factory.mktemp("eval"))


# Measured on the shipped build with 10 samples per concept, 8 videos (README): image 98 %, video 96 %,
# audio 100 %, points 94 %, text 100 %; the cache moves none of them by more than a point.


@pytest.mark.slow
@pytest.mark.parametrize("modality", list(TARGETS))
def test_held_out_answers_meet_the_issue_targets(report, modality):
    r = report.results[modality]
    # a small sample: allow one miss beyond the target share
    assert r.accuracy >= TARGETS[modality] - 1 / r.n, (modality, r.accuracy, r.examples)


@pytest.mark.slow
def test_held_out_answers_stay_above_the_shipped_floor(report):
    """A regression guard under what the shipped model measures, for every input modality."""
    for modality, r in report.results.items():
        assert r.accuracy >= 0.8 and (r.accuracy_cache or 0) >= 0.8, (modality, r.accuracy, r.accuracy_cache)


@pytest.mark.slow
def test_the_cache_costs_at_most_one_point(report):
    for modality, r in report.results.items():
        assert r.accuracy_cache >= r.accuracy - max(0.01, 1 / r.n), (modality, r.accuracy, r.accuracy_cache)


@pytest.mark.slow
def test_cross_modal_retrieval_and_mixture(report):
    results = report.results
    assert results["audio"].retrieval_top1 >= RETRIEVAL_TARGETS["audio"] - 1 / results["audio"].n
    assert results["point"].retrieval_top1 >= RETRIEVAL_TARGETS["point"] - 1 / results["point"].n
    assert results["text"].retrieval_top1 >= 0.9
    # every modality lands nearer its own concept's pictures than the others'
    assert all(r.gap_same > r.gap_other + 0.3 for r in results.values()), {m: (r.gap_same, r.gap_other)
                                                                           for m, r in results.items()}
    # the mixture moves from the image's concept to the sound's
    assert report.mixture[0]["names_image_concept"] > report.mixture[-1]["names_image_concept"]
    assert report.mixture[-1]["names_sound_concept"] > report.mixture[0]["names_sound_concept"]


@pytest.mark.slow
def test_the_cache_pulls_offset_audio_back(report):
    """The deliberately hard setting: audio pushed along one direction, off the image space."""
    hard = report.hard["offset"]
    assert hard["gap_same"] < report.results["audio"].gap_same - 0.3
    assert hard["accuracy_cache"] >= hard["accuracy"], hard


def test_cache_neighbours_are_labelled_with_their_concept(toy, tmp_path):
    # Held-out pictures: seed 2024 renders the README examples, a world the build never trains on.
    world = ToyWorld(2024)
    feats = toy.encode([load_media(world.write(name, "image", 0, tmp_path).path) for name in CONCEPT_NAMES])
    result = toy.visual_cache.search(toy.visual_cache.check_query(feats.numpy(), 5), 5)
    for row in result.metadatas:
        assert all(m["modality"] == "image" and m["concept"] in CONCEPT_NAMES and m["caption"] for m in row)
    top = [row[0]["concept"] for row in result.metadatas]
    hits = [name for name, label in zip(CONCEPT_NAMES, top) if name == label]
    assert len(hits) >= 12, list(zip(CONCEPT_NAMES, top))


def test_the_toy_cache_exports_to_chroma_and_answers_the_same(toy, tmp_path):
    """Issue 4's Chroma export of the toy cache: `ibllm cache import-faiss` on the shipped knn.index, then
    the same neighbours (with their concepts) and the same answers from Chroma as from FAISS."""
    from ibllm_agent.cache.chroma import ChromaCache
    from ibllm_agent.cache.cli import main
    from ibllm_agent.generation import format_prompt

    knn_index = pretrained.toy_files(TOY).knn_index
    assert main(["cache", "import-faiss", str(knn_index), "--collection", "toy", "--path", str(tmp_path / "db")]) == 0
    chroma = ChromaCache.open("toy", path=tmp_path / "db")
    assert len(chroma) == len(toy.visual_cache) == 448

    world = ToyWorld(2024)
    sounds = toy.encode([load_media(world.write(name, "audio", 1, tmp_path).path) for name in CONCEPT_NAMES])
    query = toy.visual_cache.check_query(sounds.numpy(), 5)
    faiss_hits, chroma_hits = toy.visual_cache.search(query, 5), chroma.search(query, 5)
    assert faiss_hits.ids == chroma_hits.ids
    assert faiss_hits.metadatas == chroma_hits.metadatas
    assert all(row[0]["concept"] == name for row, name in zip(chroma_hits.metadatas, CONCEPT_NAMES))

    prompts = [format_prompt("What is this?")] * len(sounds)
    def answers():
        return [g.text for g in toy.generate_batch(prompts, sounds, visual_cache=True, max_tokens=12, temperature=0.0)]

    via_faiss = answers()
    faiss_cache, toy.visual_cache = toy.visual_cache, chroma
    try:
        via_chroma = answers()
    finally:
        toy.visual_cache = faiss_cache
    assert via_chroma == via_faiss
