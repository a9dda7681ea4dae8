"""The gated LLaMA: paper invariants and the request-owned KV cache, on tiny random configurations."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ibllm_agent.checkpoint import CheckpointError, MissingFileError
from ibllm_agent.llama.model import ModelArgs, RMSNorm, Transformer, apply_rope, rope_angles
from ibllm_agent.presets import llama_args


def tiny(seed: int = 0, **overrides) -> Transformer:
    args = llama_args("tiny", vocab_size=97, max_seq_len=64, **overrides)
    torch.manual_seed(seed)
    model = Transformer(args).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # every factor non-zero: LoRA, biases and gates all matter
            noise = torch.randn(p.shape, generator=g)
            p.copy_(0.3 * noise if name.endswith("gate") else 1 + 0.1 * noise if "norm" in name else 0.05 * noise)
    return model


def adapter_inputs(model: Transformer, batch: int, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    dim = model.params.dim
    return [None] + [torch.randn(batch, 1, dim, generator=g) for _ in range(model.n_layers - 1)]


def reference_logits(model: Transformer, tokens: torch.Tensor, queries: list) -> torch.Tensor:
    """The reference's math written out independently: complex RoPE, explicit softmax attention with an
    additive causal mask, the gated wv(query) per head, LoRA and biases."""
    p = model.params
    B, L = tokens.shape
    hd = p.head_dim
    freqs = 1.0 / (p.rope_theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    freqs_cis = torch.polar(torch.ones(L, hd // 2), torch.outer(torch.arange(L).float(), freqs))
    mask = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)

    def rope(x):  # (B, L, H, hd)
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    def lin(mod, name, x):
        out = getattr(mod, name)(x)
        return out + getattr(mod, f"lora_{name}_l2")(getattr(mod, f"lora_{name}_l1")(x))

    def rms(norm, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight

    h = model.tok_embeddings(tokens)
    for layer, query in zip(model.layers, queries):
        att, x = layer.attention, rms(layer.attention_norm, h)
        q = rope(lin(att, "wq", x).view(B, L, p.n_heads, hd)).transpose(1, 2)
        k = rope(lin(att, "wk", x).view(B, L, p.n_heads, hd)).transpose(1, 2)
        v = lin(att, "wv", x).view(B, L, p.n_heads, hd).transpose(1, 2)
        scores = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
        out = scores @ v
        if query is not None:
            out = out + att.gate.tanh() * att.wv(query).view(B, 1, p.n_heads, hd).transpose(1, 2)
        h = h + lin(att, "wo", out.transpose(1, 2).reshape(B, L, -1))
        ff, x = layer.feed_forward, rms(layer.ffn_norm, h)
        h = h + lin(ff, "w2", F.silu(lin(ff, "w1", x)) * lin(ff, "w3", x))
    return model.output(rms(model.norm, h))


def test_model_args_7b_sizes_and_params_json(tmp_path):
    args = llama_args("7B", vocab_size=32000)
    assert args.hidden_dim == 11008 and args.head_dim == 128
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 2, "norm_eps": 1e-06,
                                "vocab_size": -1}))
    loaded = ModelArgs.from_json(path, max_seq_len=4096)
    assert (loaded.n_layers, loaded.norm_eps, loaded.max_seq_len, loaded.vocab_size) == (2, 1e-6, 4096, -1)
    with pytest.raises(MissingFileError, match=str(tmp_path / "nope" / "params.json")):
        ModelArgs.from_json(tmp_path / "nope" / "params.json")
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="params.json"):
        ModelArgs.from_json(path)


def test_rmsnorm_normalises_in_float32_then_casts_back_then_scales():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
    x = (torch.randn(3, 8) * 100).to(torch.bfloat16)
    xf = x.float()
    expected = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16) * norm.weight
    assert torch.equal(norm(x), expected)


def test_rope_rotates_interleaved_pairs_like_the_complex_form():
    x = torch.randn(2, 5, 3, 8)
    positions = torch.arange(5).expand(2, 5)
    cos, sin = rope_angles(positions, 8, 10000.0)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    cis = torch.polar(torch.ones(5, 4), torch.outer(torch.arange(5).float(), freqs))
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(2, 5, 3, 4, 2)) * cis[None, :, None]).flatten(3)
    torch.testing.assert_close(apply_rope(x, cos, sin), expected)


def test_forward_matches_an_independent_reference_of_the_gated_attention():
    model = tiny()
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    queries = adapter_inputs(model, 2)
    with torch.no_grad():
        got = model(tokens, None, model.adapter_values(queries))
        expected = reference_logits(model, tokens, queries)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_zero_gates_give_plain_llama_logits():
    model = tiny()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.gate.zero_()
        tokens = torch.randint(0, 97, (1, 7))
        gated = model(tokens, None, model.adapter_values(adapter_inputs(model, 1)))
        plain = model(tokens)
    assert torch.equal(gated, plain)
    with torch.no_grad():
        model.layers[1].attention.gate.fill_(0.5)
        assert not torch.allclose(model(tokens, None, model.adapter_values(adapter_inputs(model, 1))), plain)


def test_kv_cached_decoding_equals_the_full_forward():
    model = tiny()
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    adapter = model.adapter_values(adapter_inputs(model, 2))
    with torch.no_grad():
        full = model(tokens, None, adapter)
        cache = model.new_cache(2, 2)  # grows on demand
        steps = [model(tokens[:, :5], cache, adapter)]
        steps += [model(tokens[:, i:i + 1], cache, adapter) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12 and cache.capacity >= 12


def test_fixed_shape_decode_step_equals_the_cached_forward():
    """decode_step (what a CUDA graph captures) = forward with the cache, on a left-padded batch."""
    model = tiny()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (4, 7)]
    batch = torch.zeros(2, 7, dtype=torch.long)
    for b, p in enumerate(prompts):
        batch[b, 7 - len(p):] = p
    pad = torch.tensor([3, 0])
    adapter = model.adapter_values(adapter_inputs(model, 2))
    nxt = torch.randint(0, 97, (2, 4), generator=g)
    with torch.no_grad():
        eager, fixed = model.new_cache(2, 12, pad=pad), model.new_cache(2, 12, pad=pad)
        model(batch, eager, adapter)
        model(batch, fixed, adapter)
        for buffers in (fixed.keys, fixed.values):
            for t in buffers:
                t[:, :, fixed.length:] = 0
        for i in range(4):
            want = model(nxt[:, i:i + 1], eager, adapter, last_only=True)
            got = model.decode_step(nxt[:, i:i + 1], fixed, adapter, torch.tensor([fixed.length]))
            fixed.length += 1
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_decoding_gives_the_eager_tokens(monkeypatch):
    import ibllm_agent
    from ibllm_agent.llama import cuda_graphs

    model = ibllm_agent.load("tiny", device="cuda", dtype="float32")
    prompts = ["a dog barks", "the rain falls on the roof today"]
    assert cuda_graphs.enabled(torch.device("cuda"), 24)
    graphed = [g.token_ids for g in model.generate_batch(prompts, None, max_tokens=24, temperature=0.0)]
    monkeypatch.setenv("IBLLM_CUDA_GRAPHS", "0")
    eager = [g.token_ids for g in model.generate_batch(prompts, None, max_tokens=24, temperature=0.0)]
    assert graphed == eager


@pytest.mark.gpu
def test_cuda_graph_capture_while_other_threads_decode():
    """Requests on one shared model from several threads: captures and replays do not disturb each other."""
    from concurrent.futures import ThreadPoolExecutor

    import ibllm_agent

    model = ibllm_agent.load("tiny", device="cuda", dtype="float32")
    prompts = [f"a dog number {i} barks" for i in range(6)]

    def one(p):
        return model.generate_batch([p], None, max_tokens=20, temperature=0.0)[0].token_ids

    alone = [one(p) for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(one, prompts))
    assert together == alone


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny()
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (3, 9, 6)]
    queries = adapter_inputs(model, 3)
    P = 9
    batch = torch.zeros(3, P, dtype=torch.long)
    for b, p in enumerate(prompts):
        batch[b, P - len(p):] = p
    pad = torch.tensor([P - len(p) for p in prompts])
    with torch.no_grad():
        cache = model.new_cache(3, 16, pad=pad)
        last = model(batch, cache, model.adapter_values(queries), last_only=True)
        step = model(torch.tensor([[1], [2], [3]]), cache, model.adapter_values(queries), last_only=True)
        for b, p in enumerate(prompts):
            alone = [q if q is None else q[b:b + 1] for q in queries]
            own = model.new_cache(1, 16)
            torch.testing.assert_close(last[b:b + 1], model(p[None], own, model.adapter_values(alone), last_only=True),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step[b:b + 1], model(torch.tensor([[b + 1]]), own, model.adapter_values(alone),
                                                            last_only=True), atol=1e-5, rtol=1e-5)


def test_two_interleaved_requests_do_not_interfere():
    model = tiny()
    a_tokens, b_tokens = torch.randint(0, 97, (1, 8)), torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        expected_a, expected_b = model(a_tokens), model(b_tokens)
        cache_a, cache_b = model.new_cache(1, 8), model.new_cache(1, 8)
        got_a, got_b = [], []
        for i in range(8):
            got_a.append(model(a_tokens[:, i:i + 1], cache_a))
            if i < 5:
                got_b.append(model(b_tokens[:, i:i + 1], cache_b))
    torch.testing.assert_close(torch.cat(got_a, 1), expected_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(got_b, 1), expected_b, atol=1e-5, rtol=1e-5)


def test_pretrain_phase_has_no_bias_or_lora_and_keys_are_meta_names():
    plain = Transformer(llama_args("tiny", vocab_size=11, w_bias=False, w_lora=False))
    keys = set(plain.state_dict())
    assert not any("lora" in k or k.endswith(".bias") for k in keys)
    assert {"tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.1.feed_forward.w2.weight",
            "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight", "norm.weight", "output.weight",
            "layers.0.attention.gate"} <= keys
    full = set(tiny().state_dict())
    assert {"layers.0.attention.lora_wq_l1.weight", "layers.0.feed_forward.lora_w2_l2.weight",
            "layers.0.attention.wq.bias", "layers.0.attention.wo.bias", "layers.0.feed_forward.w3.bias"} <= full
    assert "layers.0.attention.wk.bias" not in full and "layers.0.attention.wv.bias" not in full


def test_linear_fast_paths_match_f_linear():
    from ibllm_agent.llama.model import Linear

    layer = Linear(64, 48)
    with torch.no_grad():
        for rows in (1, 2, 3, 8, 40):
            x = torch.randn(2, rows, 64)[:1]
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        half = Linear(64, 48).to(torch.bfloat16)
        x = torch.randn(1, 1, 64).to(torch.bfloat16)
        expected = F.linear(x.float(), half.weight.float(), half.bias.float())
        torch.testing.assert_close(half(x).float(), expected, atol=0.05, rtol=0.02)
        assert half(x).shape == (1, 1, 48) and half(torch.randn(3, 64).to(torch.bfloat16)).shape == (3, 48)
    x = torch.randn(5, 64, requires_grad=True)
    layer(x).sum().backward()  # training takes the differentiable path
    assert x.grad is not None and layer.weight.grad is not None
