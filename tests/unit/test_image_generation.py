"""Image output on the tiny random model: the conditioning vector's math, the Stable unCLIP pipeline built
from small random weights (no download) fed that vector, and every refusal (folder, prompt, settings, mix)."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ibllm_agent
from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.checkpoint import MissingFileError
from ibllm_agent.image_generation import (
    POINT_SCALE,
    ConditioningError,
    ImageGenerator,
    ImagePromptTooLongError,
    UnclipFolderError,
    UnclipGenerator,
    attach_unclip,
    cache_blend_keep_norm,
    check_unclip_folder,
    generate_image,
    mix_prenorm,
)
from ibllm_agent.params import DrawParams, ParamsError, VisualCacheParams

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@dataclass(frozen=True)
class Media:  # the MediaInput fields the model reads
    modality: str
    tensor: torch.Tensor
    name: str = "input"


def picture(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    m = ibllm_agent.load("tiny")
    g = np.random.default_rng(0)
    vectors = g.standard_normal((40, m.feature_dim)).astype(np.float32)
    m.visual_cache = FaissCache.from_vectors(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return m


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    from unclip_tiny import write_tiny_unclip

    return write_tiny_unclip(tmp_path_factory.mktemp("unclip") / "sd-unclip")


@pytest.fixture(scope="module")
def unclip(model, unclip_dir):
    return attach_unclip(model, unclip_dir)


# ----- the vector -------------------------------------------------------------------------------------------

def test_mix_is_the_reference_formula():
    a, p = torch.randn(1, 16) * 20, torch.randn(1, 16)
    got = mix_prenorm([a, p], [0.6, 0.4], ["audio", "point"])
    expected = a * (0.6 / (1.0 + 1e-6)) + (p / POINT_SCALE) * (0.4 / (1.0 + 1e-6))
    torch.testing.assert_close(got, expected)
    assert got.norm() > 5  # not normalised: unCLIP reads the length


def test_image_embedding_is_prenorm_and_not_fusion(model):
    x = picture()
    got = model.image_embedding([Media("image", x)], False)
    prenorm = model.image_bind_forward({"vision": x[None]}, prenorm=True)["vision"]
    torch.testing.assert_close(got, prenorm * (1 / (1 + 1e-6)))
    post = model.image_bind_forward({"vision": x[None]})["vision"]
    assert abs(float(post.norm()) - 1) < 1e-5 and abs(float(got.norm()) - float(prenorm.norm())) < 1e-3


def test_cache_blend_keeps_the_mixture_norm_and_searches_with_the_unit_vector(model):
    mixed = torch.randn(1, model.feature_dim) * 7
    out, neighbors = cache_blend_keep_norm(model.visual_cache, mixed, VisualCacheParams(size=5, t=20, weight=0.5))
    stored = model.visual_cache.get_vectors(0, len(model.visual_cache)).astype(np.float64)
    unit = (mixed / mixed.norm()).double().numpy()[0]
    sims = stored @ unit
    top = np.argsort(-sims)[:5]
    w = np.exp(20 * (sims[top] - sims[top].max()))
    mix = (w / w.sum()) @ stored[top]
    blend = 0.5 * unit + 0.5 * mix / np.linalg.norm(mix)
    expected = blend / np.linalg.norm(blend) * float(mixed.norm())
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert [n.id for n in neighbors[0]] == [str(i) for i in top]


@pytest.mark.parametrize("weights, message", [
    ([1.0, -1.0], "sum to 0"), ([float("nan"), 1.0], "finite"), ([0.0, 1.0], "is 0"), ([-1.0, -0.5], "positive"),
    (["a", 1.0], "must be a number"),
])
def test_bad_weights_are_refused(model, weights, message):
    items = [(Media("image", picture(0)), weights[0]), (Media("image", picture(1)), weights[1])]
    with pytest.raises(ConditioningError, match=message):
        model.image_embedding(items, False)


def test_inputs_that_mix_to_nothing_are_refused(model):
    with pytest.raises(ConditioningError, match="at least one"):
        model.image_embedding([], False)
    with pytest.raises(ConditioningError, match="NaN or inf"):
        model.image_embedding([Media("image", torch.full((3, 224, 224), float("nan")))], False)
    with pytest.raises(ConditioningError, match="zero or non-finite"):
        mix_prenorm([torch.zeros(1, 8)], [1.0], ["vision"])
    with pytest.raises(ConditioningError, match="zero or not finite"):
        generate_image(model, torch.zeros(model.feature_dim), generator=_Recorder())


class _Recorder(ImageGenerator):
    """A stand-in generator that records what it was handed."""

    name, feature_dim = "recorder", 1024

    def __init__(self):
        self.calls = []

    def draw(self, embedding, prompt, params):
        from PIL import Image

        self.calls.append((embedding, prompt, params))
        return Image.new("RGB", (8, 8)), []


def test_drop_in_image_generate_hands_the_vector_to_the_pipe(model):
    recorder = _Recorder()
    x = picture(3)
    image = ibllm_agent.image_generation.image_generate({"Image": [x[None], 1]}, model, recorder, "a photo", 10, 20,
                                                        0.5, knn=True)
    assert image.size == (8, 8)
    embedding, prompt, _ = recorder.calls[0]
    torch.testing.assert_close(embedding, model.image_embedding({"Image": [x[None], 1]}, True))
    assert prompt == "a photo"


# ----- the real pipeline class, small random weights ---------------------------------------------------------

def test_the_unclip_folder_is_checked_and_loaded(unclip, unclip_dir, model):
    assert check_unclip_folder(unclip_dir)["_class_name"] == "StableUnCLIPImg2ImgPipeline"
    assert isinstance(unclip, UnclipGenerator) and model.image_generator is unclip
    assert unclip.feature_dim == model.feature_dim == 1024


def test_the_embedding_reaches_the_unet_with_its_shape_and_scale(model, unclip):
    pipe = unclip.pipe
    seen = {}
    noise = pipe.noise_image_embeddings
    forward = pipe.unet.forward

    def record_noise(image_embeds, **kw):
        seen["image_embeds"] = image_embeds.clone()
        return noise(image_embeds=image_embeds, **kw)

    def record_unet(*args, **kw):
        seen.setdefault("class_labels", kw["class_labels"].clone())
        return forward(*args, **kw)

    pipe.noise_image_embeddings, pipe.unet.forward = record_noise, record_unet
    try:
        items = [(Media("image", picture(4)), 0.7), (Media("audio", torch.randn(3, 1, 128, 204)), 0.3)]
        result = model.generate_image(items, "a photo", steps=2, seed=0, guidance=10.0, visual_cache=True)
    finally:
        pipe.noise_image_embeddings, pipe.unet.forward = noise, forward
    expected = model.image_embedding(items, True)
    assert seen["image_embeds"].shape == (1, 1024)
    torch.testing.assert_close(seen["image_embeds"], expected)  # the vector, as is: no normalisation on the way
    labels = seen["class_labels"]
    assert labels.shape == (2, 2048)  # classifier-free guidance: [zeros, embedding] x [noised embedding, level]
    assert float(labels[0, :1024].abs().max()) == 0.0
    cond = labels[1, :1024]
    # noise_level 0: add_noise at t = 0 scales by sqrt(alphas_cumprod[0]) (plus tiny noise); the scale survives
    a0 = float(pipe.image_noising_scheduler.alphas_cumprod[0])
    assert float(F.cosine_similarity(cond, expected[0], dim=0)) > 0.999
    assert float(cond.norm() / expected.norm()) == pytest.approx(a0 ** 0.5, rel=2e-2)
    assert result.image.size == (16, 16) and result.generator == "stable-unclip"
    assert result.neighbors and result.embedding.shape == (1024,)


def test_same_seed_same_picture(model, unclip):
    x = [Media("image", picture(5))]
    a = model.generate_image(x, "a photo", steps=2, seed=3, visual_cache=False)
    b = model.generate_image(x, "a photo", steps=2, seed=3, visual_cache=False)
    assert a.png_bytes() == b.png_bytes()


def test_prompt_over_the_text_encoders_limit_is_refused_before_drawing(model, unclip):
    called = []
    forward = unclip.pipe.unet.forward
    unclip.pipe.unet.forward = lambda *a, **k: called.append(1) or forward(*a, **k)
    try:
        with pytest.raises(ImagePromptTooLongError, match="at most 77"):
            model.generate_image([Media("image", picture())], "a photo of rain " * 30, steps=1)
        with pytest.raises(ImagePromptTooLongError):
            model.generate_image([Media("image", picture())], "x" * 20_000, steps=1)
    finally:
        unclip.pipe.unet.forward = forward
    assert not called


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "draw.steps"), ({"steps": 100_000}, "draw.steps"), ({"height": 100_000}, "draw.height"),
    ({"width": 100}, "multiple of 8"), ({"guidance": float("inf")}, "draw.guidance"), ({"seed": -1}, "draw.seed"),
    ({"noise_level": 5000}, "draw.noise_level"), ({"steps": 2.5}, "whole number"),
])
def test_absurd_settings_are_refused(settings, message):
    with pytest.raises(ParamsError, match=message):
        DrawParams(**settings)


def test_settings_the_pipeline_cannot_take_are_refused(model, unclip):
    # the tiny VAE scales by 2, the real one by 8; noise levels beyond the noising scheduler's steps
    unclip.pipe.image_noising_scheduler.register_to_config(num_train_timesteps=100)
    try:
        with pytest.raises(ParamsError, match="noise_level must be below 100"):
            model.generate_image([Media("image", picture())], steps=1, noise_level=500)
    finally:
        unclip.pipe.image_noising_scheduler.register_to_config(num_train_timesteps=1000)


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_a_folder_missing_files_is_refused_with_every_problem(unclip_dir, tmp_path):
    folder = _copy(unclip_dir, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(folder / "vae")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(UnclipFolderError) as err:
        UnclipGenerator.from_folder(folder)
    text = str(err.value)
    assert "unet/ has no weights" in text and "vae/ is missing" in text and "scheduler_config.json" in text
    with pytest.raises(MissingFileError):
        UnclipGenerator.from_folder(tmp_path / "nowhere")
    (folder / "model_index.json").unlink()
    with pytest.raises(UnclipFolderError, match="no model_index.json"):
        check_unclip_folder(folder)


def test_another_model_is_refused(unclip_dir, tmp_path):
    folder = _copy(unclip_dir, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnclipFolderError, match="StableDiffusionPipeline"):
        UnclipGenerator.from_folder(folder)
    other = _copy(unclip_dir, tmp_path, "width")
    config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**config, "projection_class_embeddings_input_dim": 1536}))
    with pytest.raises(UnclipFolderError, match="width 768"):
        check_unclip_folder(other)


def test_a_corrupt_weight_file_leaves_the_previous_generator(model, unclip, unclip_dir, tmp_path):
    folder = _copy(unclip_dir, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UnclipFolderError, match="did not load"):
        attach_unclip(model, folder)
    assert model.image_generator is unclip


# ----- results and the server function ------------------------------------------------------------------------

def test_result_saves_atomically_and_as_blocks(model, unclip, tmp_path):
    result = model.generate_image([Media("image", picture())], "a photo", steps=1, seed=0, visual_cache=False)
    path = result.save(tmp_path / "out.png")
    assert path.read_bytes() == result.png_bytes() and [p.name for p in tmp_path.iterdir()] == ["out.png"]
    block = result.content_block()
    assert block["type"] == "image" and base64.b64decode(block["base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.summary()["params"]["steps"] == 1


# ----- the server ------------------------------------------------------------------------------------------

def _png_part(seed: int = 0) -> dict:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def test_the_server_draws_with_stable_unclip_from_its_folder(unclip_dir, tmp_path):
    """`ibllm serve --unclip-dir`: the folder is checked while the model loads (a bad one is a load error
    /health reports); a model without a generator answers 400 no_image_generator."""
    from starlette.testclient import TestClient

    from ibllm_agent.serve.app import create_app
    from ibllm_agent.serve.settings import ServeSettings

    body = {"model": "tiny", "prompt": "a photo", "ibllm": {"inputs": [_png_part()], "steps": 1, "seed": 0}}
    with TestClient(create_app(ibllm_agent.load("tiny"), settings=ServeSettings(unclip_dir=str(unclip_dir)))) as client:
        drawn = client.post("/v1/images/generations", json=body).json()
        assert drawn["ibllm"]["generator"] == "stable-unclip" and drawn["size"] == "16x16", drawn
        assert base64.b64decode(drawn["data"][0]["b64_json"])[:8] == b"\x89PNG\r\n\x1a\n"
        too_long = client.post("/v1/images/generations", json={**body, "prompt": "rain " * 100})
        assert too_long.status_code == 400 and "77" in too_long.json()["error"]["message"]
    with TestClient(create_app(ibllm_agent.load("tiny"))) as client:
        refused = client.post("/v1/images/generations", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_image_generator"
    with TestClient(create_app("tiny", settings=ServeSettings(unclip_dir=str(tmp_path)))) as client:
        for _ in range(200):
            if client.get("/health").json()["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert client.get("/health").json() == {"status": "error"}
