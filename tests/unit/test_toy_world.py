"""The synthetic toy world: deterministic, varied, written as real files that the media loaders read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ibllm_agent import toy

ROOT = Path(__file__).resolve().parents[2]


def test_world_has_a_dozen_concepts_with_words_for_each():
    assert len(toy.CONCEPTS) >= 12
    assert "rain" in toy.CONCEPT_NAMES  # examples/rain.wav and the README's demo
    assert len(set(toy.CONCEPT_NAMES)) == len(toy.CONCEPT_NAMES)
    for c in toy.CONCEPTS:
        caps = toy.captions(c)
        assert len(caps) >= 5 and len(set(caps)) == len(caps)
        # every visual answer names its concept first: that is how the evaluation scores answers
        for qa in toy.visual_instructions(c):
            assert toy.names_concept(qa["output"], c.name), qa
        assert toy.names_concept(toy.description(c), c.name)


def test_answer_scoring_uses_the_first_concept_named():
    assert toy.names_concept("This is a dog.", "dog")
    assert toy.names_concept("I hear rain: a steady patter of drops.", "rain")
    assert not toy.names_concept("This is a cat, not a dog.", "dog")
    assert not toy.names_concept("Something else entirely.", "dog")
    assert toy.find_concepts("Two drums and a bell.") == ["drum", "bell"]


@pytest.mark.parametrize("name", ["rain", "dog", "piano"])
def test_samples_are_deterministic_and_vary_with_the_index(name):
    a, b = toy.ToyWorld(3), toy.ToyWorld(3)
    assert np.array_equal(np.asarray(a.image(name, 1)), np.asarray(b.image(name, 1)))
    assert not np.array_equal(np.asarray(a.image(name, 1)), np.asarray(a.image(name, 2)))
    assert np.array_equal(a.sound(name, 0), b.sound(name, 0))
    assert np.array_equal(a.points(name, 4), b.points(name, 4))
    other = toy.ToyWorld(4).points(name, 4)  # another world seed: another cloud
    assert other.shape != a.points(name, 4).shape or not np.array_equal(other, a.points(name, 4))


def test_renders_have_the_expected_ranges():
    w = toy.ToyWorld(0)
    img = np.asarray(w.image("ball", 0))
    assert img.shape == (toy.IMAGE_SIZE, toy.IMAGE_SIZE, 3) and img.dtype == np.uint8
    snd = w.sound("bell", 0)
    assert snd.dtype == np.float32 and 2.0 <= len(snd) / toy.SAMPLE_RATE <= 4.0 and np.abs(snd).max() <= 1.0
    pts = w.points("drum", 0)
    assert pts.shape[1] == 3 and 2048 <= len(pts) <= 6144 and np.isfinite(pts).all()
    frames = w.video_frames("car", 0)
    assert len(frames) >= 2 * toy.VIDEO_FPS
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[-1]))  # it moves


def test_files_round_trip_through_the_media_loaders(tmp_path):
    from ibllm_agent.train.toy_data import load_sample

    w = toy.ToyWorld(0)
    expected = {"image": (3, 224, 224), "audio": (3, 1, 128, 204), "video": (15, 3, 2, 224, 224),
                "point": (8192, 3), "text": (77,)}
    cases = [("image", 0), ("audio", 0), ("audio", 3), ("video", 0), ("point", 0), ("point", 1), ("text", 0)]
    suffixes = set()
    for modality, index in cases:
        sample = w.write("rain", modality, index, tmp_path)
        if sample.path:
            suffixes.add(sample.path.rsplit(".", 1)[1])
        tensor = load_sample(sample)
        assert tuple(tensor.shape) == expected[modality], (modality, index)
        assert tensor.isfinite().all() if tensor.is_floating_point() else True
    assert suffixes == {"png", "wav", "mp3", "mp4", "ply"}


def test_instruction_data_and_corpus():
    text_only = toy.text_instructions()
    assert any("toy" in s["output"] for s in text_only)
    assert all(s["output"] for s in text_only)
    corpus = toy.corpus()
    assert len(corpus) > 100
    for name in toy.CONCEPT_NAMES:
        assert any(name in line for line in corpus)


def test_the_toy_package_stays_light():
    # the app imports it at run time to draw examples and cache thumbnails: no training code, no torch
    code = ("import sys; from ibllm_agent.toy import ToyWorld; ToyWorld(0).image('dog', 0); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('ibllm_agent.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]", out


def test_tool_use_data_keeps_the_standard_tests_held_out_and_the_chat_format():
    from ibllm_agent.structured import TOOL_CALL_TAG
    from ibllm_agent.toy.tool_use import HELD_OUT, json_answer_instructions, tool_use_instructions

    records = tool_use_instructions(0, 400) + json_answer_instructions(0, 100)
    text = "\n".join(r["instruction"] + r["input"] + r["output"] for r in records)
    assert [h for h in HELD_OUT if h in text] == []
    calls = [json.loads(r["output"][len(TOOL_CALL_TAG):]) for r in records if r["output"].startswith(TOOL_CALL_TAG)]
    assert len(calls) > 150 and len({c["name"] for c in calls}) > 100  # varied tools
    copied = [c for c, r in zip(calls, (r for r in records if r["output"].startswith(TOOL_CALL_TAG)))
              if all(str(v) in r["instruction"] for v in c["arguments"].values())]
    assert copied == calls  # every argument value is in the question
    assert any(r["input"].endswith("Answer, or call a tool.") and not r["output"].startswith(TOOL_CALL_TAG)
               for r in records)  # tools listed, answered in text
    assert any("Tool result (" in r["input"] for r in records)
    assert all(json.loads(r["output"]) for r in records if r["input"].startswith("Answer in JSON"))
    code = "import sys, ibllm_agent.toy.tool_use; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]", out
