"""ImageBindLLM on the tiny random model: names, fusion, cache blend, text-only, drop-in methods."""
# (the model's layers' own invariants: tests/unit/test_llama.py; the factory's files: test_checkpoint.py)

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ibllm_agent
from ibllm_agent.cache.faiss import FaissCache
from ibllm_agent.factory import build_tiny, save_official
from ibllm_agent.fusion import FusionError
from ibllm_agent.model import UnknownModalityError
from ibllm_agent.params import VisualCacheParams
from ibllm_agent.train.adapter import trainable_parameters


@pytest.fixture(scope="module")
def model():
    return ibllm_agent.load("tiny")


@pytest.fixture(scope="module")
def cached_model():
    m = ibllm_agent.load("tiny")
    g = np.random.default_rng(0)
    vectors = g.standard_normal((50, m.feature_dim)).astype(np.float32)
    m.visual_cache = FaissCache.from_vectors(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return m


@dataclass(frozen=True)
class Media:  # the fields of ibllm_agent.media.MediaInput that encode() reads
    modality: str
    tensor: torch.Tensor


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_parameter_names_are_the_official_keys(model):
    keys = set(model.state_dict())
    assert {"image_bind_proj.weight", "image_bind_proj.bias", "prefix_query.weight", "llama.norm.weight",
            "llama.tok_embeddings.weight", "llama.layers.0.attention.gate", "llama.layers.1.attention.lora_wv_l2.weight"
            } <= keys
    for i in (1, 2, 3):
        assert {f"image_bind_norm_{i}.weight", f"image_bind_f1_{i}.weight", f"image_bind_f2_{i}.weight",
                f"image_bind_f3_{i}.weight"} <= keys
    assert any(k.startswith("image_bind.modality_trunks.vision.") for k in keys)
    assert not any(k.startswith("image_bind_f") and k.endswith(".bias") for k in keys)  # bias-free SwiGLU
    assert model.prefix_query.weight.shape == (model.query_layer, model.llama.params.dim)


def test_the_bind_network_is_a_named_submodule_under_the_official_keys(model, tmp_path):
    """Our names (`bind.blocks.0.w1`) inside, the adapter file's (`image_bind_f1_1`) in every state dict,
    both ways: a reference-style `load_state_dict(torch.load("7B.pth")["model"], strict=False)` loads it."""
    assert model.bind.blocks[0].w1.weight is model.state_dict(keep_vars=True)["image_bind_f1_1.weight"]
    assert model.bind.proj.bias is model.state_dict(keep_vars=True)["image_bind_proj.bias"]
    assert not any(k.startswith("bind.") for k in model.state_dict())
    fresh = build_tiny(seed=1)
    sd = {k: v for k, v in model.state_dict().items() if k.startswith(("image_bind_", "prefix_query"))}
    result = fresh.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and not any(k.startswith("bind.") for k in result.missing_keys)
    assert torch.equal(fresh.bind.blocks[2].w3.weight, model.bind.blocks[2].w3.weight)


def test_tiny_is_deterministic_and_identified(model):
    again = ibllm_agent.load("tiny")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert (model.card.name, model.card.is_toy, model.device, model.dtype) == ("tiny", False, torch.device("cpu"),
                                                                               torch.float32)
    assert hasattr(model.card.lock, "acquire") and model.visual_cache is None


def test_forward_visual_is_the_reference_fusion_then_the_bind_network(model):
    x, audio = images(1), torch.randn(1, 3, 1, 128, 204, generator=torch.Generator().manual_seed(1))
    got = model.forward_visual({"Image": [x, 0.7], "Audio": [audio, 0.3]})
    emb = model.image_bind_forward({"vision": x, "audio": audio})
    fused = F.normalize(emb["vision"], dim=-1) * (0.7 / (1 + 1e-6)) + F.normalize(emb["audio"], dim=-1) * (0.3 / (1 + 1e-6))
    # the bind network by hand: proj, then 3 x (RMSNorm -> SwiGLU) residual
    h = model.bind.proj(fused)[:, None]
    for block in model.bind.blocks:
        n = block.norm(h)
        h = h + block.w2(F.silu(block.w1(n)) * block.w3(n))
    assert got.shape == (1, 1, model.llama.params.dim)
    torch.testing.assert_close(got, h)
    torch.testing.assert_close(model.fuse(torch.cat([emb["vision"], emb["audio"]]), [0.7, 0.3]), fused[0])


def test_bad_mixtures_are_clear_errors(model):
    x = images(1)
    with pytest.raises(UnknownModalityError, match="Smell"):
        model.forward_visual({"Smell": [x, 1.0]})
    with pytest.raises(FusionError, match="finite"):
        model.forward_visual({"Image": [x, float("nan")]})
    with pytest.raises(FusionError, match="cancel out"):
        model.forward_visual({"Image": [x, 1.0], "Video": [x, -1.0]})
    with pytest.raises(FusionError, match="is 0"):
        model.fuse(torch.randn(2, model.feature_dim), [0.0, 0.0])
    with pytest.raises(UnknownModalityError, match="smell"):
        model.image_bind_forward({"smell": x})


def test_cache_blend_equals_the_hand_computation_per_sample(cached_model):
    m = cached_model
    feature = torch.randn(2, m.feature_dim, generator=torch.Generator().manual_seed(2)) * 0.3  # un-normalised
    got, neighbors = m.visual_query(feature, VisualCacheParams(size=5, t=20.0, weight=0.4))
    stored = torch.from_numpy(m.visual_cache.index.reconstruct_n(0, len(m.visual_cache)))
    expected_rows = []
    for b in range(2):
        sims = stored @ feature[b]
        top = sims.topk(5)
        w = torch.softmax(top.values * 20.0, dim=0)
        mix = F.normalize((w[:, None] * stored[top.indices]).sum(0), dim=0)
        expected_rows.append(F.normalize(0.6 * feature[b] + 0.4 * mix, dim=0))
        assert [int(n.id) for n in neighbors[b]] == top.indices.tolist()
        assert [n.weight for n in neighbors[b]] == pytest.approx(w.tolist(), abs=1e-6)
    torch.testing.assert_close(got, m.bind(torch.stack(expected_rows)), atol=1e-5, rtol=1e-5)
    off, none = m.visual_query(feature, False)
    torch.testing.assert_close(off, m.bind(feature))
    assert none == [[], []]


def test_text_only_uses_the_blank_image_feature_and_skips_the_cache(cached_model):
    m = cached_model
    blank = m.image_bind_forward({"vision": torch.zeros(1, 3, 224, 224)})["vision"][0]
    torch.testing.assert_close(m.blank_feature(), blank)
    query, neighbors = m.visual_query(torch.zeros(1, m.feature_dim))
    torch.testing.assert_close(query, m.bind(blank[None]))
    assert neighbors == [[]]
    prompt = ibllm_agent.format_prompt("Describe the sea.")
    none = m.generate_batch([prompt], None, max_tokens=6, temperature=0.0)[0]
    zeros = m.generate_batch([prompt], torch.zeros(m.feature_dim), max_tokens=6, temperature=0.0)[0]
    assert none.token_ids == zeros.token_ids and none.neighbors == []


def test_generate_batch_reports_neighbours_with_the_cache(cached_model):
    m = cached_model
    feature = torch.randn(m.feature_dim, generator=torch.Generator().manual_seed(4))
    [gen] = m.generate_batch(["a dog"], feature, max_tokens=3, temperature=0.0, visual_cache={"size": 4})
    assert len(gen.neighbors) == 4 and sum(n.weight for n in gen.neighbors) == pytest.approx(1.0, abs=1e-5)
    [plain] = m.generate_batch(["a dog"], feature, max_tokens=3, temperature=0.0, visual_cache=False)
    assert plain.neighbors == []


def test_forward_inference_continues_like_the_reference(model):
    vq = model.forward_visual({"Image": [images(1, 5), 1.0]})
    tokens = torch.tensor([model.tokenizer.encode("a small red bird", bos=True, eos=False)])
    with torch.no_grad():
        full = model(tokens, vq)
    first = model.forward_inference(vq, tokens[:, :3], 0)
    steps = [model.forward_inference(vq, tokens[:, i:i + 1], i) for i in range(3, tokens.shape[1])]
    torch.testing.assert_close(first, full[:, 2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:], atol=1e-5, rtol=1e-5)
    again = model.forward_inference(vq, tokens, 0)  # start_pos 0 starts a new sequence
    torch.testing.assert_close(again, full[:, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="start_pos"):
        model.forward_inference(vq, tokens[:, :1], tokens.shape[1] + 5)
    # wv(visual query) is reused between calls, but never for another (or a modified) query
    other = vq.clone() * 3
    changed = model.forward_inference(other, tokens, 0)
    assert not torch.allclose(changed, again)
    other.copy_(vq)
    torch.testing.assert_close(model.forward_inference(other, tokens, 0), again)


def test_generate_is_the_reference_signature_and_matches_generate_batch(model):
    x = images(1, 6)
    prompt = ibllm_agent.format_prompt("Describe the image.")
    [text] = model.generate({"Image": [x, 1]}, [prompt], max_gen_len=6, temperature=0)
    feature = model.fuse(model.image_bind_forward({"vision": x})["vision"], [1])
    assert text == model.generate_batch([prompt], feature, max_tokens=6, temperature=0.0)[0].text


def test_encode_batches_per_modality_and_keeps_the_order(model):
    imgs = images(2, 7)
    audio = torch.randn(3, 1, 128, 204, generator=torch.Generator().manual_seed(8))
    items = [Media("image", imgs[0]), Media("audio", audio), Media("image", imgs[1])]
    got = model.encode(items)
    assert got.shape == (3, model.feature_dim) and got.dtype == torch.float32
    emb = model.image_bind_forward({"vision": imgs, "audio": audio[None]})
    torch.testing.assert_close(got[[0, 2]], emb["vision"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], emb["audio"][0], atol=1e-5, rtol=1e-5)
    with pytest.raises(UnknownModalityError, match="smell"):
        model.encode([Media("smell", imgs[0])])


def test_trainable_split_follows_the_reference(model):
    fine = trainable_parameters(model, "finetune")
    assert fine and all(k.startswith("llama.") and ("norm" in k or "bias" in k or "lora" in k) for k in fine)
    pre = trainable_parameters(model, "pretrain")
    assert "prefix_query.weight" in pre and "llama.layers.0.attention.gate" in pre
    assert not any(k.startswith("image_bind.") for k in pre)
    assert {f"image_bind_f{j}_{i}.weight" for i in (1, 2, 3) for j in (1, 2, 3)} <= set(pre)  # the bind network


def test_pretrain_phase_and_bfloat16():
    m = ibllm_agent.load("tiny", phase="pretrain", dtype="bfloat16")
    assert m.dtype == torch.bfloat16 and not any("lora" in k for k in m.state_dict())
    [g] = m.generate_batch(["a dog"], None, max_tokens=3, temperature=0.0)
    assert len(g.token_ids) == 3


@pytest.mark.gpu
def test_cuda_defaults_to_float16_and_generates(tmp_path):
    m = ibllm_agent.load("tiny", device="cuda")
    assert m.dtype == torch.float16 and m.device.type == "cuda"
    feature = m.encode([Media("image", images(1)[0])])[0]
    [g] = m.generate_batch(["a dog"], feature, max_tokens=4, temperature=0.0)
    assert len(g.token_ids) == 4
    official = save_official(ibllm_agent.load("tiny"), tmp_path)
    loaded = ibllm_agent.load(str(official["adapter"]), str(official["llama_dir"]),
                              imagebind_ckpt=str(official["imagebind"]), device="cuda", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and all(p.device.type == "cuda" for p in loaded.parameters())


def test_loading_the_toy_skips_torch_dynamo():
    # Meta-device construction must not run meta's Python references (they import torch._dynamo: seconds).
    code = "import sys, ibllm_agent; ibllm_agent.load('toy'); print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
