"""The app's plain-Python pieces: settings and config files, history -> messages, streaming, explorer math."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage

from ibllm_agent.cache.base import Neighbor
from ui.conversation import Reply, Turn, neighbors_of, to_messages
from ui.explorer import cosine_matrix, heatmap_figure, with_mixture, zero_shot
from ui.settings import AppConfig, CacheSettings, ConfigError, ModelSpec, config_path


def test_model_spec_defaults_to_the_toy_with_its_cache():
    spec = ModelSpec()
    assert spec.is_toy
    assert spec.load_kwargs() == {"llama_type": "7B", "device": "cpu", "knn": True}
    official = ModelSpec(name="/w/7B.pth", llama_dir="/w/llama", imagebind_ckpt="/w/ib.pth", device="cuda")
    assert official.load_kwargs() == {"llama_dir": "/w/llama", "llama_type": "7B", "imagebind_ckpt": "/w/ib.pth",
                                      "device": "cuda", "knn": False}
    assert hash(official) == hash(ModelSpec(**official.__dict__))  # keys st.cache_resource


def test_config_files_toml_and_json(tmp_path):
    toml = tmp_path / "ui.toml"
    toml.write_text('[model]\nname = "/w/7B.pth"\nllama_dir = "/w/llama"\nknn_index = "/w/knn.index"\n'
                    "[generation]\ntemperature = 0.1\nmax_tokens = 256\n[cache]\nenabled = false\n")
    config = AppConfig.from_file(toml)
    assert config.model == ModelSpec(name="/w/7B.pth", llama_dir="/w/llama", knn_index="/w/knn.index")
    assert config.model.load_kwargs()["knn"] is True
    assert (config.generation.temperature, config.generation.max_tokens, config.generation.top_p) == (0.1, 256, 0.75)
    assert config.cache == CacheSettings(enabled=False)
    assert config.source == str(toml)
    js = tmp_path / "ui.json"
    js.write_text(json.dumps({"model": {"name": "toy", "device": "cuda"}}))
    assert AppConfig.from_file(js).model == ModelSpec(device="cuda")


@pytest.mark.parametrize("text, match", [
    ("[model]\nnmae = 'x'\n", "unknown \\[model\\] settings \\['nmae'\\]"),
    ("[modle]\n", "unknown sections \\['modle'\\]"),
    ("[model\n", "not valid TOML"),
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


def test_reply_streams_deltas_then_holds_the_message_and_neighbours():
    meta = {"cache_neighbors": [[{"id": "b", "score": 0.2, "weight": 0.3, "metadata": {}},
                                 {"id": "a", "score": 0.9, "weight": 0.7, "metadata": {"caption": "a dog"}}]]}
    chunks = [AIMessageChunk("A "), AIMessageChunk("dog"), AIMessageChunk("", response_metadata=meta)]
    reply = Reply(iter(chunks))
    assert list(reply) == ["A ", "dog"]
    assert reply.text == "A dog"
    assert [n.id for n in reply.neighbors] == ["a", "b"]
    assert reply.neighbors[0].metadata == {"caption": "a dog"}
    assert neighbors_of({"cache_neighbors": [Neighbor("x", 0.5)]}) == [Neighbor("x", 0.5)]
    assert neighbors_of({}) == []


def test_cosine_matrix_and_mixture_row():
    emb = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    m = cosine_matrix(emb)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    np.testing.assert_allclose(m[0, 2], 2 ** -0.5, atol=1e-6)
    labels, rows = with_mixture(["a", "b"], emb[:2], [1.0, -1.0])
    assert labels == ["a", "b", "🎛️ mixture"]
    np.testing.assert_allclose(rows[2], F.normalize(torch.tensor([1.0, -1.0]), dim=0), atol=1e-6)
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
