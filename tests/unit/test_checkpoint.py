"""Checkpoint safety and strictness, and `load()` on official-layout files written from the tiny model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ibllm_agent
from ibllm_agent.cache.base import CacheError
from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.checkpoint import (
    ADAPTER_ONLY_LLAMA_KEY,
    CheckpointError,
    MissingFileError,
    load_into,
    load_state_dict,
)
from ibllm_agent.factory import save_official


class Payload:
    """Pickles to a call of os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def tiny():
    return ibllm_agent.load("tiny")


@pytest.fixture(scope="module")
def official(tiny, tmp_path_factory):
    """The tiny model written in the official layout (LLaMA file float16, adapter, ImageBind)."""
    return save_official(tiny, tmp_path_factory.mktemp("official"))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_state_dict(path)
    assert str(path) in str(info.value) and info.value.file == str(path)
    assert not marker.exists()


def test_truncated_and_garbage_files_are_checkpoint_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(1000)}, good)
    data = good.read_bytes()
    for name, content in (("cut.pth", data[: len(data) // 2]), ("junk.pth", b"not a checkpoint" * 10)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_state_dict(tmp_path / name)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(100)}, st)
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_state_dict(tmp_path / "cut.safetensors")
    with pytest.raises(MissingFileError, match="absent.pth"):
        load_state_dict(tmp_path / "absent.pth")


def test_formats_unwrap_and_legacy_serialisation(tmp_path):
    w = torch.randn(3, 4)
    torch.save({"model": {"w": w}, "epoch": 3}, tmp_path / "a.pth")
    torch.save({"w": w}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file({"w": w}, tmp_path / "a.safetensors")
    for name in ("a.pth", "legacy.pth", "a.safetensors"):
        assert torch.equal(load_state_dict(tmp_path / name)["w"], w), name
    torch.save({"w": w, "meta": "text"}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="not tensors: meta"):
        load_state_dict(tmp_path / "mixed.pth")


def test_load_into_is_strict_with_sorted_lists_and_assigns_nothing_on_error():
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    bad = {"1.weight": torch.zeros(2, 4), "0.weight": torch.zeros(5, 3), "zz": torch.zeros(1), "aa": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        load_into(module, bad, file="bad.pth")
    err = info.value
    assert err.missing == ["0.bias", "1.bias"] and err.unexpected == ["aa", "zz"]
    assert err.mismatched == [("0.weight", (5, 3), (4, 3))]
    assert "bad.pth" in str(err) and "0.weight file [5, 3] vs model [4, 3]" in str(err)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    good = {"0.weight": torch.ones(4, 3, dtype=torch.float16), "1.weight": torch.ones(2, 4), "rope.freqs": torch.ones(2)}
    result = load_into(module, good, file="good.pth", allowed_missing={"0.bias", "1.bias"})
    assert result.missing == ["0.bias", "1.bias"] and result.ignored == ["rope.freqs"]
    assert module[0].weight.dtype == torch.float32 and torch.equal(module[0].weight, torch.ones(4, 3))


def test_official_layout_round_trip(tiny, official):
    loaded = ibllm_agent.load(str(official["adapter"]), str(official["llama_dir"]),
                              imagebind_ckpt=str(official["imagebind"]), dtype="float32")
    assert loaded.card.name == "adapter" and not loaded.card.is_toy
    prompt = ibllm_agent.format_prompt("Describe the dog.")
    feature = torch.randn(tiny.feature_dim, generator=torch.Generator().manual_seed(0))
    # the LLaMA file is float16 (as Meta's): compare with the tiny model's weights rounded the same way
    rounded = ibllm_agent.load("tiny")
    with torch.no_grad():
        for name, p in rounded.llama.named_parameters():
            if not ADAPTER_ONLY_LLAMA_KEY.match(name) and "norm" not in name:  # norms come from the adapter
                p.copy_(p.half().float())
    a = rounded.generate_batch([prompt], feature, max_tokens=8, temperature=0.0)[0]
    b = loaded.generate_batch([prompt], feature, max_tokens=8, temperature=0.0)[0]
    assert a.token_ids == b.token_ids
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, rounded.state_dict()[name], msg=name)


def test_adapter_norms_override_the_llama_file(tmp_path, official):
    sd = torch.load(official["adapter"], weights_only=True)
    sd["model"]["llama.norm.weight"] = torch.full_like(sd["model"]["llama.norm.weight"], 3.0)
    torch.save(sd, tmp_path / "adapter.pth")
    m = ibllm_agent.load(str(tmp_path / "adapter.pth"), str(official["llama_dir"]), imagebind_ckpt=str(official["imagebind"]))
    assert torch.equal(m.llama.norm.weight, torch.full_like(m.llama.norm.weight, 3.0))


def test_adapter_that_does_not_fit_names_the_keys(tmp_path, official):
    sd = torch.load(official["adapter"], weights_only=True)["model"]
    del sd["llama.layers.1.attention.gate"]
    sd["llama.layers.0.attention.extra"] = torch.zeros(1)
    sd["image_bind_norm_2.weight"] = torch.zeros(5)
    torch.save({"model": sd}, tmp_path / "adapter.pth")
    with pytest.raises(CheckpointError) as info:
        ibllm_agent.load(str(tmp_path / "adapter.pth"), str(official["llama_dir"]), imagebind_ckpt=str(official["imagebind"]))
    msg = str(info.value)
    assert str(tmp_path / "adapter.pth") in msg
    assert info.value.missing == ["llama.layers.1.attention.gate"]
    assert info.value.unexpected == ["llama.layers.0.attention.extra"]
    assert [m[0] for m in info.value.mismatched] == ["image_bind_norm_2.weight"]
    del sd["prefix_query.weight"]
    torch.save({"model": sd}, tmp_path / "adapter.pth")
    with pytest.raises(CheckpointError, match="prefix_query"):
        ibllm_agent.load(str(tmp_path / "adapter.pth"), str(official["llama_dir"]), imagebind_ckpt=str(official["imagebind"]))


def test_missing_files_are_named(tmp_path, official):
    llama = tmp_path / "llama"
    (llama / "7B").mkdir(parents=True)
    kw = {"imagebind_ckpt": str(official["imagebind"])}
    with pytest.raises(MissingFileError, match=str(llama / "tokenizer.model")):
        ibllm_agent.load(str(official["adapter"]), str(llama), **kw)
    (llama / "tokenizer.model").write_bytes((official["llama_dir"] / "tokenizer.model").read_bytes())
    with pytest.raises(MissingFileError, match=str(llama / "7B" / "params.json")):
        ibllm_agent.load(str(official["adapter"]), str(llama), **kw)
    (llama / "7B" / "params.json").write_text((official["llama_dir"] / "7B" / "params.json").read_text())
    with pytest.raises(MissingFileError, match="consolidated"):
        ibllm_agent.load(str(official["adapter"]), str(llama), **kw)
    with pytest.raises(MissingFileError, match="nothing.pth"):
        ibllm_agent.load(str(tmp_path / "nothing.pth"), str(official["llama_dir"]), **kw)
    (tmp_path / "tok.model").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        ibllm_agent.llama.Tokenizer(tmp_path / "tok.model")


def test_wrong_llama_shapes_and_wrong_index_dimension(tmp_path, official):
    llama = tmp_path / "llama"
    (llama / "7B").mkdir(parents=True)
    (llama / "tokenizer.model").write_bytes((official["llama_dir"] / "tokenizer.model").read_bytes())
    params = json.loads((official["llama_dir"] / "7B" / "params.json").read_text())
    (llama / "7B" / "params.json").write_text(json.dumps({**params, "multiple_of": 64}))
    (llama / "7B" / "consolidated.00.pth").write_bytes((official["llama_dir"] / "7B" / "consolidated.00.pth").read_bytes())
    with pytest.raises(CheckpointError, match="consolidated.00.pth"):  # params.json's sizes are not the file's
        ibllm_agent.load(str(official["adapter"]), str(llama), imagebind_ckpt=str(official["imagebind"]))
    # right sizes and parameter count, one tensor of another shape: load_into lists it
    (llama / "7B" / "params.json").write_text(json.dumps(params))
    sd = torch.load(official["llama_dir"] / "7B" / "consolidated.00.pth", weights_only=True)
    sd["layers.1.attention.wk.weight"] = sd["layers.1.attention.wk.weight"].reshape(32, -1)
    torch.save(sd, llama / "7B" / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="consolidated.00.pth.*shape mismatches.*layers.1.attention.wk"):
        ibllm_agent.load(str(official["adapter"]), str(llama), imagebind_ckpt=str(official["imagebind"]))
    FaissCache.from_vectors(torch.randn(10, 16).numpy()).save(tmp_path / "small.index")
    with pytest.raises(CacheError, match="small.index.*dimension 16"):
        ibllm_agent.load(str(official["adapter"]), str(official["llama_dir"]), imagebind_ckpt=str(official["imagebind"]),
                         knn=True, knn_index=str(tmp_path / "small.index"))


def test_converted_tensors_release_the_file_pages_and_stay_correct(tmp_path):
    w = torch.randn(512, 1024)  # 1 MiB in float16: many whole pages
    torch.save({"weight": w.half(), "bias": torch.randn(512)}, tmp_path / "half.pth")
    sd = load_state_dict(tmp_path / "half.pth")
    module = nn.Linear(1024, 512)
    load_into(module, sd, file="half.pth")
    assert torch.equal(module.weight, w.half().float())
    assert torch.equal(sd["weight"], w.half())  # dropped pages are read back from the file
    assert module.bias.data_ptr() == sd["bias"].data_ptr()  # same dtype: used in place, no copy
