"""The toy model draws: its decoder file, `ibllm draw`, the generate_image tool, the graph's draw node, and
a small held-out measurement (the full table: `python tools/train_toy_decoder.py --eval-only`)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from langchain_core.messages import ToolMessage
from PIL import Image

import ibllm_agent
from ibllm_agent import cli
from ibllm_agent.checkpoint import CheckpointError
from ibllm_agent.image_decoder import DecoderMismatchError, decoder_info, load_decoder, vision_digest
from ibllm_agent.image_generation import ImageGenerationError, ToyDecoderGenerator
from ibllm_agent.media import load_media
from ibllm_agent.perception_tools import get_tools
from ibllm_agent.pretrained import TOY_DIR, toy_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.skipif(not (TOY_DIR / "toy.json").is_file(), reason="the toy model is not built")


@pytest.fixture(scope="module")
def model():
    return ibllm_agent.load("toy", knn=True)


def concept_of(model, png: Path | bytes) -> str:
    """The toy's zero-shot label of a picture: the nearest of the 14 captions."""
    from ibllm_agent.toy import CONCEPT_NAMES
    from ibllm_agent.train.image_decoder import caption_embeddings, zero_shot

    _, captions = caption_embeddings(model.image_bind)
    return CONCEPT_NAMES[int(zero_shot(model.image_bind, load_media(png).tensor[None], captions)[0])]


def test_the_decoder_ships_small_and_belongs_to_the_shipped_encoder(model):
    files = toy_files()
    path = files.root / files.meta["image_decoder"]
    assert path.stat().st_size <= 2_200_000
    total = sum(p.stat().st_size for p in TOY_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"toy assets are {total / 2**20:.1f} MiB"
    info = decoder_info(path)
    assert info["vision_digest"] == vision_digest(model.image_bind.state_dict())
    assert info["extra"]["built_with"] == "tools/train_toy_decoder.py" and info["extra"]["recipe"]["seed"] == 0
    with pytest.raises(DecoderMismatchError, match="train_toy_decoder"):
        load_decoder(path, vision="0" * 64)


def test_a_decoder_trained_for_other_encoders_is_refused_not_drawn_with(tmp_path):
    """A rebuilt toy (its vision encoder changed) beside the old decoder: refused, naming the command."""
    from ibllm_agent.factory import build_from_files

    toy = tmp_path / "toy"
    shutil.copytree(TOY_DIR, toy)
    checkpoint = torch.load(toy / "imagebind.pth", weights_only=True)
    tensors = checkpoint.get("model", checkpoint)
    (key,) = [k for k in tensors if k.endswith("modality_heads.vision.2.weight")]
    tensors[key] = tensors[key] * 1.001
    torch.save(checkpoint, toy / "imagebind.pth")
    files = toy_files(toy)
    rebuilt = build_from_files(files.adapter, files.llama_dir, files.llama_type, imagebind_ckpt=files.imagebind,
                               name="toy", is_toy=True)
    with pytest.raises(DecoderMismatchError, match="another toy vision encoder.*train_toy_decoder"):
        rebuilt.generate_image([load_media(EXAMPLES / "rain.wav")])
    assert rebuilt.image_generator is None
    shipped = toy_files()
    half = build_from_files(shipped.adapter, shipped.llama_dir, shipped.llama_type, imagebind_ckpt=shipped.imagebind,
                            name="toy", is_toy=True, dtype=torch.bfloat16)
    assert half.generate_image([load_media(EXAMPLES / "rain.wav")]).generator == "toy-decoder"  # rounded, same file


def test_one_command_retrains_the_decoder_for_the_toy_it_is_given(tmp_path):
    """`tools/train_toy_decoder.py` (here --quick: a few steps) writes a decoder beside a toy's files, for
    that toy's vision encoder, and names it in its toy.json."""
    toy = tmp_path / "toy"
    shutil.copytree(TOY_DIR, toy, ignore=shutil.ignore_patterns("image_decoder.safetensors"))
    meta = json.loads((toy / "toy.json").read_text())
    (toy / "toy.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "image_decoder"}))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train_toy_decoder.py"), "--quick",
                           "--toy-dir", str(toy)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((toy / "toy.json").read_text())["image_decoder"] == "image_decoder.safetensors"
    info = decoder_info(toy / "image_decoder.safetensors")
    assert info["vision_digest"] == decoder_info(TOY_DIR / "image_decoder.safetensors")["vision_digest"]
    assert info["extra"]["recipe"]["steps"] == 4


def test_a_damaged_decoder_file_is_refused(tmp_path):
    bad = tmp_path / "image_decoder.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_decoder(bad)


def test_a_rain_sound_draws_rain(model, tmp_path):
    result = model.generate_image([load_media(EXAMPLES / "rain.wav")], "a photo", visual_cache=False)
    assert result.generator == "toy-decoder" and result.image.size == (112, 112)
    assert result.notes  # the toy says what it does not read
    assert concept_of(model, result.png_bytes()) == "rain"
    again = model.generate_image([load_media(EXAMPLES / "rain.wav")], "a photo", visual_cache=False)
    assert again.png_bytes() == result.png_bytes()  # one pass, no noise unless asked
    varied = model.generate_image([load_media(EXAMPLES / "rain.wav")], noise_level=200, seed=1, visual_cache=False)
    assert varied.png_bytes() != result.png_bytes()
    assert model.generate_image([load_media(EXAMPLES / "rain.wav")], width=224, height=224).image.size == (224, 224)


def test_cli_draw_writes_a_png(model, tmp_path, capsys):
    out = tmp_path / "drum.png"
    assert cli.main(["draw", "--point", str(EXAMPLES / "drum.ply"), "a photo", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert Image.open(out).size == (112, 112) and concept_of(model, out) == "drum"
    assert cli.main(["draw", "-o", str(tmp_path / "none.png")]) == 2
    assert "needs at least one input" in capsys.readouterr().err
    assert cli.main(["draw", "--image", str(EXAMPLES / "dog.png"), "--steps", "0", "-o", str(tmp_path / "x.png")]) == 2
    assert "draw.steps" in capsys.readouterr().err
    assert cli.main(["draw", "--image", str(EXAMPLES / "dog.png"), "--audio", str(EXAMPLES / "rain.wav") + ":-1",
                     "-o", str(tmp_path / "y.png")]) == 2
    assert "sum to" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_the_tiny_model_has_no_generator():
    tiny = ibllm_agent.load("tiny")
    with pytest.raises(ImageGenerationError, match="unCLIP"):
        tiny.generate_image([load_media(EXAMPLES / "dog.png")])
    with pytest.raises(ImageGenerationError, match="only for the toy"):
        ToyDecoderGenerator.for_model(tiny)


def call(tool, **args) -> ToolMessage:
    return tool.invoke({"name": tool.name, "args": args, "id": f"call_{uuid.uuid4().hex[:6]}", "type": "tool_call"})


def test_generate_image_tool_writes_only_into_its_output_folder(model, tmp_path):
    media, out = tmp_path / "media", tmp_path / "drawings"
    media.mkdir()
    out.mkdir()
    (media / "bell.wav").write_bytes((EXAMPLES / "bell.wav").read_bytes())
    assert "generate_image" not in {t.name for t in get_tools(model, roots=[media])}  # no output folder: no tool
    tool = {t.name: t for t in get_tools(model, roots=[media], output_dir=out)}["generate_image"]
    msg = call(tool, media=["bell.wav"], prompt="a photo", seed=0)
    assert msg.status != "error", msg.content
    path = Path(msg.artifact)
    assert path.parent == out.resolve() and path.name == "bell-001.png" and path.name in msg.content
    assert concept_of(model, path) == "bell"
    assert sorted(p.name for p in media.iterdir()) == ["bell.wav"]  # nothing written beside the inputs
    second = call(tool, media=["bell.wav"])
    assert Path(second.artifact).name == "bell-002.png"  # never overwrites
    refused = call(tool, media=["../outside.wav"])
    assert refused.status == "error"
    assert call(tool, media=["bell.wav", "bell.wav"], weights=[1.0]).status == "error"
    b64 = {t.name: t for t in get_tools(model, roots=[media], output_dir=out, image_artifact="base64")}["generate_image"]
    block = call(b64, media=["bell.wav"]).artifact
    assert block["type"] == "image" and base64.b64decode(block["base64"])[:4] == b"\x89PNG"


def test_graph_draws_when_asked(model, tmp_path):
    from ibllm_agent.graphs import GraphInputError, build_perception_graph

    media, out = tmp_path / "media", tmp_path / "out"
    media.mkdir()
    out.mkdir()
    (media / "dog.png").write_bytes((EXAMPLES / "dog.png").read_bytes())
    graph = build_perception_graph(model, roots=[media], output_dir=out, max_tokens=8)
    state = graph.invoke({"question": "What is this?", "media": ["dog.png"], "draw": {"prompt": "a photo", "seed": 0}})
    assert state["steps"][-1] == "draw (toy-decoder)" and Path(state["image"]).parent == out.resolve()
    assert concept_of(model, Path(state["image"])) == "dog"
    assert "image" not in graph.invoke({"question": "What is this?", "media": ["dog.png"]})
    with pytest.raises(GraphInputError, match="no output folder"):
        build_perception_graph(model, roots=[media]).invoke({"question": "x", "media": ["dog.png"], "draw": True})
    with pytest.raises(GraphInputError, match="'draw' may have"):
        graph.invoke({"question": "x", "media": ["dog.png"], "draw": {"colour": "red"}})


@pytest.mark.slow
def test_held_out_drawings_show_their_concept(model):
    """A small version of the README table: 2 held-out inputs per concept and medium (1 video)."""
    from ibllm_agent.train.image_decoder import TARGET, evaluate_drawing

    torch.manual_seed(0)
    result = evaluate_drawing(model, per_concept=2, video_per_concept=1)
    for medium, row in result["rows"].items():
        assert row["cache_on"] >= TARGET - 0.1, (medium, row)  # 28 pictures: a margin for small-sample noise
    assert result["seconds_per_picture"] < 1.0


def test_the_drawing_benchmark_stays_runnable(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_draw", ROOT / "tools" / "bench_draw.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--repeats", "2", "--json", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["generator"] == "toy-decoder" and 0 < result["vector_ms"]["median"] < result["picture_ms"]["median"]
