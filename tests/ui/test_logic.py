"""The app's plain-Python pieces: settings and config files, history -> messages, streaming, explorer math."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage

from ibllm_agent.cache.base import Neighbor
from ibllm_agent.params import GenerationParams, VisualCacheParams
from ui.conversation import Reply, Turn, neighbors_of, to_messages
from ui.explorer import cosine_matrix, heatmap_figure, with_mixture, zero_shot
from ui.settings import (
    APP_GENERATION,
    AppConfig,
    AppSettings,
    ChatSettings,
    ConfigError,
    ModelSpec,
    PathRefused,
    config_path,
    confine,
    debug_flag,
)


def test_model_spec_defaults_to_the_toy_with_its_cache():
    spec = ModelSpec()
    assert spec.is_toy
    assert spec.load_kwargs() == {"llama_type": "7B", "knn": True}  # device "auto": the loader's rule (toy: CPU)
    assert ModelSpec(device="cpu", quantize="int4").load_kwargs() == {"llama_type": "7B", "device": "cpu",
                                                                      "quantize": "int4", "knn": True}
    official = ModelSpec(name="/w/7B.pth", llama_dir="/w/llama", imagebind_ckpt="/w/ib.pth", device="cuda")
    assert official.load_kwargs() == {"llama_dir": "/w/llama", "llama_type": "7B", "imagebind_ckpt": "/w/ib.pth",
                                      "device": "cuda", "knn": False}
    assert hash(official) == hash(ModelSpec(**official.__dict__))  # keys st.cache_resource


def test_config_files_toml_and_json(tmp_path):
    toml = tmp_path / "ui.toml"
    toml.write_text('[model]\nname = "/w/7B.pth"\nllama_dir = "/w/llama"\nvisual_cache_index = "/w/knn.index"\n'
                    "[generation]\ntemperature = 0.1\nmax_tokens = 256\n[visual_cache]\nenabled = false\n"
                    "[chat]\nhistory = 2\n")
    config = AppConfig.from_file(toml)
    assert config.model == ModelSpec(name="/w/7B.pth", llama_dir="/w/llama", visual_cache_index="/w/knn.index")
    assert config.model.load_kwargs()["knn"] is True
    assert config.generation == GenerationParams(temperature=0.1, max_tokens=256)  # the rest: the one defaults
    assert config.visual_cache == VisualCacheParams(enabled=False) and config.chat == ChatSettings(history=2)
    assert AppConfig().generation == APP_GENERATION == GenerationParams().updated(temperature=0, max_tokens=64)
    assert config.source == str(toml)
    js = tmp_path / "ui.json"
    js.write_text(json.dumps({"model": {"name": "toy", "device": "cuda"}}))
    assert AppConfig.from_file(js).model == ModelSpec(device="cuda")


@pytest.mark.parametrize("text, match", [
    ("[model]\nnmae = 'x'\n", "unknown \\[model\\] settings \\['nmae'\\]"),
    ("[modle]\n", "unknown sections \\['modle'\\]"),
    ("[model\n", "not valid TOML"),
    ("[generation]\ntop_p = 0\n", "\\[generation\\]: generation.top_p must be > 0"),
    ("[cache]\nenabled = true\n", "unknown sections \\['cache'\\]"),
    ("[app]\nmodel_folders = '/weights'\n", "\\[app\\]: model_folders must be a list"),
    ("[app]\nmodel_folders = ['weights']\n", "\\[app\\]: model_folders: 'weights' is not an absolute path"),
    ("[app]\ndebug = 'yes'\n", "\\[app\\]: debug must be true or false"),
    ("[app]\nmodel_folder = ['/w']\n", "unknown \\[app\\] settings \\['model_folder'\\]"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, text, match):
    path = tmp_path / "ui.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        AppConfig.from_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        AppConfig.from_file(tmp_path / "missing.toml")


def test_config_path_from_script_args_then_environment():
    assert config_path(["--config", "a.toml"], {"IBLLM_UI_CONFIG": "b.toml"}) == "a.toml"
    assert config_path(["--other", "1"], {"IBLLM_UI_CONFIG": "b.toml"}) == "b.toml"
    assert config_path([], {}) is None
    assert debug_flag(["--config", "a.toml", "--debug"]) and not debug_flag(["--config", "a.toml"])


def test_app_section_keeps_the_model_folders_real_paths(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = tmp_path / "ui.toml"
    path.write_text(f"[app]\nmodel_folders = ['{tmp_path / 'link'}', '/w/../weights/']\ndebug = true\n")
    assert AppConfig.from_file(path).app == AppSettings(model_folders=(str((tmp_path / "real").resolve()), "/weights"),
                                                        debug=True)
    assert AppConfig().app == AppSettings() and AppSettings().model_folders == ()


def test_confine_resolves_first_and_refuses_everything_outside_alike(tmp_path):
    weights, other = tmp_path / "weights", tmp_path / "other"
    for folder in (weights, other):
        folder.mkdir()
    (weights / "7B.pth").touch()
    (weights / "out.pth").symlink_to(tmp_path / "secret.pth")
    (weights / "in.pth").symlink_to(weights / "7B.pth")
    folders = AppSettings(model_folders=[str(weights), str(other)]).model_folders
    w = Path(folders[0])
    assert confine(str(weights / "7B.pth"), folders) == str(w / "7B.pth")
    assert confine("7B.pth", folders) == confine("sub/../7B.pth", folders) == str(w / "7B.pth")  # from the first
    assert confine("missing/7B.pth", folders) == str(w / "missing" / "7B.pth")  # inside: the loader says it is missing
    assert confine(str(other), folders) == folders[1]  # a folder itself (a LLaMA folder)
    assert confine("in.pth", folders) == str(w / "7B.pth")
    refusals = set()
    for outside in ("/etc/hostname", "/nowhere/x.pth", "../secret.pth", "out.pth", str(weights) + "2/x",
                    str(tmp_path), "/", "7B.pth\0"):
        with pytest.raises(PathRefused) as info:
            confine(outside, folders)
        refusals.add(str(info.value))
    assert refusals == {f"that path is outside the model folders ({folders[0]}, {folders[1]})"}
    with pytest.raises(PathRefused, match="loading other weights is off"):
        confine(str(weights / "7B.pth"), ())


def test_history_becomes_text_messages_and_the_question_carries_the_inputs():
    class FakeAttachment:
        def content_block(self):
            return {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav", "extras": {"weight": -0.5}}

    history = [Turn("user", "hi"), Turn("assistant", "hello"), Turn("assistant", "", error="bad file"),
               Turn("user", "What do you hear?")]
    messages = to_messages(history[:-1], "What do you hear?", [FakeAttachment()])
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, HumanMessage]
    assert [m.text for m in messages[:2]] == ["hi", "hello"]
    assert messages[-1].content[0] == {"type": "text", "text": "What do you hear?"}
    assert messages[-1].content[1]["extras"] == {"weight": -0.5}
    assert to_messages([], "Just text?", [])[-1].content == "Just text?"
    assert [m.text for m in to_messages(history[:-1], "Next?", [], max_history=1)] == ["hello", "Next?"]
    assert [m.text for m in to_messages(history[:-1], "Next?", [], max_history=0)] == ["Next?"]


def test_reply_streams_deltas_then_holds_the_message_and_neighbours():
    meta = {"cache_neighbors": [[{"id": "b", "score": 0.2, "weight": 0.3, "metadata": {}},
                                 {"id": "a", "score": 0.9, "weight": 0.7, "metadata": {"caption": "a dog"}}]]}
    usage = {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}
    chunks = [AIMessageChunk("A "), AIMessageChunk("dog"),
              AIMessageChunk("", response_metadata={**meta, "finish_reason": "length"}, usage_metadata=usage)]
    reply = Reply(iter(chunks))
    assert list(reply) == ["A ", "dog"]
    turn = reply.turn("bark.wav")
    assert (turn.role, turn.text, turn.output_tokens, turn.finish_reason) == ("assistant", "A dog", 2, "length")
    assert [n.id for n in turn.neighbors] == ["a", "b"]
    assert turn.neighbors[0].metadata == {"caption": "a dog"}
    assert turn.footer() == "Conditioned on bark.wav · 2 tokens · cut at the max tokens setting"
    assert Turn("assistant", "hi").footer() == "Text only"
    assert neighbors_of({"cache_neighbors": [Neighbor("x", 0.5)]}) == [Neighbor("x", 0.5)]
    assert neighbors_of({}) == []


def test_cosine_matrix_and_mixture_row():
    emb = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    m = cosine_matrix(emb)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    np.testing.assert_allclose(m[0, 2], 2 ** -0.5, atol=1e-6)
    labels, rows = with_mixture(["a", "b"], emb[:2], [1.0, -1.0])
    assert labels == ["a", "b", "mixture"]
    np.testing.assert_allclose(rows[2], torch.tensor([0.5, -0.5]), atol=1e-6)  # the one fusion: w / sum|w|
    assert with_mixture(["a"], emb[:1], [1.0])[0] == ["a"]


def test_zero_shot_uses_the_text_embeddings_logit_scale():
    items = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    labels = torch.tensor([[10.0, 0.0], [0.0, 10.0]])  # text embeddings carry the logit scale in their norm
    out = zero_shot(["x", "y"], items, ["left", "up"], labels)
    assert [(z.item, z.label) for z in out] == [("x", "left"), ("y", "up")]
    expected = torch.softmax(F.normalize(items[0], dim=0) @ labels.T, dim=0)[0]
    assert out[0].probability == pytest.approx(float(expected))
    assert out[0].cosine == pytest.approx(float(F.normalize(items[0], dim=0)[0]))
    assert zero_shot(["x"], items[:1], [], labels[:0]) == []


def test_heatmap_has_the_labels_on_both_axes():
    fig = heatmap_figure(np.eye(2), ["a", "b"])
    assert list(fig.data[0].x) == ["a", "b"] and list(fig.data[0].y) == ["a", "b"]


def test_uploads_become_attachments_with_weighted_content_blocks(toy_files):
    from ui.attachments import read_upload

    att = read_upload("bark.wav", toy_files["audio"].read_bytes())
    assert (att.modality, att.mime, att.label) == ("audio", "audio/wav", ":material/graphic_eq: bark.wav")
    att.weight, att.subtract = 0.5, True
    assert att.plain_label == "bark.wav ×−0.5"
    block = att.content_block()
    assert block["type"] == "audio" and block["mime_type"] == "audio/wav"
    assert block["extras"] == {"filename": "bark.wav", "weight": -0.5, "modality": "audio"}
    assert base64.b64decode(block["base64"]) == toy_files["audio"].read_bytes()
    cloud = read_upload("shape.ply", toy_files["point"].read_bytes())
    assert cloud.modality == "point"
    assert cloud.content_block()["type"] == "file" and cloud.content_block()["extras"]["modality"] == "point"


def test_a_picture_can_be_read_as_a_depth_map_or_a_thermal_image(toy_files):
    from ui.attachments import read_upload

    att = read_upload("room.png", toy_files["depth"].read_bytes())
    assert att.modality == "image" and att.alternatives == ("image", "depth", "thermal")
    att.weight = 0.5
    depth = att.read_as("depth")
    assert (depth.modality, depth.weight, tuple(depth.media.tensor.shape)) == ("depth", 0.5, (1, 224, 224))
    block = depth.content_block()
    assert block["type"] == "image" and block["extras"]["modality"] == "depth"
    assert depth.label == ":material/layers: room.png ×0.5"
    imu = read_upload("walk.csv", toy_files["imu"].read_bytes())
    assert imu.modality == "imu" and imu.alternatives == ("imu",) and imu.content_block()["type"] == "file"


def test_previews_of_the_senses():
    from ui.views import false_colour, imu_figure

    rgb = false_colour(np.linspace(0, 1, 224 * 224).reshape(224, 224), "turbo")
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8 and not (rgb[0, 0] == rgb[-1, -1]).all()
    assert false_colour(np.zeros((8, 8)), "inferno").shape == (8, 8, 3)
    fig = imu_figure(np.zeros((6, 2000)))
    assert len(fig.data) == 6 and [t.name for t in fig.data][:3] == ["acc x", "acc y", "acc z"]


@pytest.mark.parametrize("name, data, message", [
    ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "cannot be used"),
    ("empty.wav", b"", "is empty"),
    ("notes.txt", b"just some words, not a medium", "looks like text"),
    ("huge.wav", b"\0" * (2 * 2**20), "files up to 1 MB"),
])
def test_unusable_uploads_give_friendly_messages(name, data, message):
    from ui.attachments import AttachmentError, read_upload

    with pytest.raises(AttachmentError, match=message) as info:
        read_upload(name, data, max_mb=1)
    assert f"**{name}**" in str(info.value)


def test_clips_are_reencoded_as_h264_for_the_browser(toy_files):
    from ui.attachments import browser_video

    original = toy_files["video"].read_bytes()  # OpenCV's mp4v, which Chromium does not play
    playable = browser_video(original)
    assert playable != original and b"avc1" in playable[:4096]
    assert browser_video(b"not a video") == b"not a video"


def test_the_model_panel_shows_the_licences_of_official_weights_only():
    from types import SimpleNamespace

    from ibllm_agent.card import ModelCard
    from ui import backend

    assert backend.license_notice(SimpleNamespace(card=ModelCard(name="toy", is_toy=True))) is None
    assert backend.license_notice(SimpleNamespace(card=ModelCard(name="tiny"))) is None
    notice = backend.license_notice(SimpleNamespace(card=ModelCard(name="7B")))
    assert "non-commercial" in notice and "LLaMA-1" in notice and "CC BY-NC-SA 4.0" in notice
