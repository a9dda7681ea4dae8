"""tools/build_toy_model.py end to end at a few steps per stage: it writes a model in the official
layout that `ibllm_agent.load`'s file loader reads, plus the README's example files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_build_writes_a_loadable_toy(tmp_path):
    out, work, examples = tmp_path / "toy", tmp_path / "work", tmp_path / "examples"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_toy_model.py"), "--quick", "--out", str(out),
                           "--work", str(work), "--examples", str(examples)],
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "toy.json").read_text())
    for key in ("adapter", "imagebind", "knn_index"):
        assert (out / meta[key]).is_file()
    assert (out / "imagebind_config.json").is_file()
    assert sorted(p.name for p in examples.iterdir()) == ["ball.csv", "bell.wav", "bird.png", "car.mp4", "cat_depth.png",
                                                          "dog.png", "drum.ply", "fire_thermal.png", "rain.wav"]
    from ibllm_agent.factory import build_from_files
    from ibllm_agent.generation import format_prompt
    from ibllm_agent.pretrained import toy_files

    files = toy_files(out)
    model = build_from_files(files.adapter, files.llama_dir, files.llama_type, imagebind_ckpt=files.imagebind,
                             knn_index=files.knn_index, is_toy=True)
    assert model.visual_cache is not None and len(model.tokenizer.encode("a dog", bos=False, eos=False)) > 0
    cache = model.visual_cache
    first = cache.search(cache.get_vectors(0, 1), 1).metadatas[0][0]  # the sidecar labels each item
    assert first == {"modality": "image", "concept": "rain", "caption": "a photo of rain.", "seed": 0, "index": 0}
    answer = model.generate_batch([format_prompt("What is this?")], None, max_tokens=4, temperature=0.0)[0]
    assert answer.finish_reason in ("stop", "length")
    # every ImageBind trunk the registry routes to is there, the senses bound after the LLM included
    from ibllm_agent import modalities
    from ibllm_agent.media import load_media

    assert {modalities.get(m).branch for m in modalities.NAMES} <= set(model.image_bind.modalities)
    for name, modality in (("cat_depth.png", "depth"), ("fire_thermal.png", "thermal"), ("ball.csv", "imu")):
        assert model.encode([load_media(examples / name, modality)]).shape == (1, 1024)
    config = json.loads((out / "imagebind_config.json").read_text())["kwargs"]
    assert {"depth_num_heads", "thermal_num_heads", "imu_num_heads"} <= set(config)
