"""Weight-only quantisation (ibllm_agent/llama/quant.py) against float32 on random inputs, with error bounds,
and the inference conversion (LoRA merge, q/k/v and w1/w3 fusion) against the unconverted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ibllm_agent.factory import build_tiny
from ibllm_agent.llama import quant
from ibllm_agent.llama.model import for_inference
from ibllm_agent.llama.quant import QuantLinear


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def gaussian_linear(k: int, n: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.02)  # LLaMA-like: normal, std 0.02
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.01)
    return lin.requires_grad_(False)


def test_int8_codes_and_scales_are_exact_for_their_own_grid():
    w = torch.randn(64, 96)
    q, s = quant.quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16 and q.abs().max() <= 127
    deq = quant.dequantize_int8(q, s)
    # every weight within half a step of its row's grid, the grid's scale being exactly the stored bf16 value
    assert ((deq - w).abs() <= s.float()[:, None] / 2 + 1e-6).all()
    assert torch.equal(quant.quantize_int8(deq)[0], q)  # idempotent on its own grid


def test_int4_pack_roundtrip_and_group_grid():
    codes = torch.randint(0, 16, (32, 256), dtype=torch.int32)
    assert torch.equal(quant.unpack_int4(quant.pack_int4(codes)), codes)
    assert quant.pack_int4(torch.tensor([[1, 2]]))[0, 0] == 0x12  # column 0 in the high nibble (tinygemm's order)
    w = torch.randn(48, 256)
    qw, sz = quant.quantize_int4(w, 128)
    assert qw.shape == (48, 128) and sz.shape == (2, 48, 2) and sz.dtype == torch.bfloat16
    deq = quant.dequantize_int4(qw, sz)
    step = sz[..., 0].float().t().repeat_interleave(128, dim=1)  # (48, 256)
    assert ((deq - w).abs() <= step / 2 + step * 0.02).all()  # half a step (+ the bf16 rounding of the range)


@pytest.mark.parametrize("scheme,bound", [("int8", 0.01), ("int4", 0.15)])
@pytest.mark.parametrize("shape", [(4096, 800), (11008, 64), (256, 48)])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16])
def test_quant_linear_matches_float32_within_the_bound(scheme, bound, shape, act):
    """Relative error of the output against float32: int8 ~0.5 %, int4 (groups of 128) ~10 % for normal
    weights; and against its own dequantised weight only the activations' bfloat16 rounding (~0.3 %)."""
    k, n = shape
    lin = gaussian_linear(k, n)
    q = QuantLinear.from_linear(lin, scheme)
    q.repack()
    x = torch.randn(5, 3, k, generator=torch.Generator().manual_seed(1)).to(act)
    with torch.inference_mode():
        out = q(x)
        ref = lin(x.float())
        own = nn.functional.linear(x.float(), q.dequantized(), lin.bias)
    assert out.shape == (5, 3, n) and out.dtype == act
    assert rel(out, ref) < bound, rel(out, ref)
    assert rel(out, own) < 0.01


def test_int4_packed_layout_is_used_where_the_kernel_takes_it_and_state_dicts_stay_portable():
    lin = gaussian_linear(256, 48)
    q = QuantLinear.from_linear(lin, "int4")
    portable = q.state_dict()
    q.repack()
    assert q.layout == "cpu"  # 48 rows: a multiple of 16
    assert not torch.equal(q.qweight, portable["qweight"])  # the CPU kernel's own order
    sd = q.state_dict()
    assert set(sd) == {"qweight", "scales_and_zeros", "bias"}
    assert all(torch.equal(sd[k], portable[k]) for k in sd)
    odd = QuantLinear.from_linear(gaussian_linear(256, 40), "int4")
    odd.repack()
    assert odd.layout == "plain"  # 40 rows: the dequantising path
    fresh = QuantLinear(256, 48, True, "int4", device="meta")
    fresh.load_state_dict(sd, assign=True)
    x = torch.randn(2, 256)
    fresh.repack()
    assert torch.equal(fresh(x), q(x))


def test_group_sizes_and_bad_options_are_named():
    assert quant.group_size_for(4096) == 128 and quant.group_size_for(11008) == 128
    assert quant.group_size_for(352) == 32 and quant.group_size_for(176) == 16
    with pytest.raises(quant.QuantizeError, match="group"):
        quant.group_size_for(100)
    with pytest.raises(quant.QuantizeError, match="quantize='int3'"):
        quant.check_quantize("int3")
    assert quant.check_quantize("none") is None
    q = QuantLinear(256, 48, False, "int4", device="meta")
    bad = {"qweight": torch.zeros(48, 128, dtype=torch.uint8), "scales_and_zeros": torch.zeros(4, 48, 2)}
    with pytest.raises(RuntimeError, match="another group size"):
        q.load_state_dict(bad, assign=True)


def test_cat_of_quantised_rows_equals_quantising_the_stack():
    parts = [gaussian_linear(256, n, bias=b, seed=i) for i, (n, b) in enumerate([(32, True), (48, False)])]
    for scheme in ("int8", "int4"):
        fused = QuantLinear.cat([QuantLinear.from_linear(p, scheme) for p in parts])
        x = torch.randn(3, 256)
        with torch.inference_mode():
            whole = torch.cat([QuantLinear.from_linear(p, scheme)(x) for p in parts], dim=-1)
            assert torch.equal(fused(x), whole)


def tiny_logits(model, tokens, features):
    with torch.inference_mode():
        return model(tokens, model.bind(features))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_and_fused_model_gives_the_unmerged_answers(dtype):
    ref = build_tiny(dtype=dtype)
    fused = build_tiny(dtype=dtype, fuse=True)
    layer = fused.llama.layers[0]
    assert layer.attention.wqkv is not None and layer.feed_forward.w13 is not None
    assert not hasattr(layer.attention, "wq") and not hasattr(layer.attention, "lora_wq_l1")
    assert layer.attention.wv_lora_merged  # the adapter path reads the base wv
    tokens = torch.randint(0, ref.llama.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    features = torch.randn(2, ref.feature_dim, generator=torch.Generator().manual_seed(1))
    a, b = tiny_logits(ref, tokens, features), tiny_logits(fused, tokens, features)
    assert (a - b).abs().max() < (1e-5 if dtype == torch.float32 else 0.1)
    prompts = ["Hello there", "what is this"]
    one = [g.token_ids for g in ref.generate_batch(prompts, features, max_tokens=12, temperature=0.0)]
    two = [g.token_ids for g in fused.generate_batch(prompts, features, max_tokens=12, temperature=0.0)]
    if dtype == torch.float32:
        assert one == two


def test_fused_unmerged_lora_path_matches():
    """A quantised file keeps LoRA apart: fused projections plus LoRA added to each part."""
    ref = build_tiny()
    fused = build_tiny()
    for_inference(fused.llama, torch.float32, fuse=True, merge_lora=False)
    assert fused.llama.layers[0].attention.w_lora
    tokens = torch.randint(0, ref.llama.vocab_size, (1, 9))
    features = torch.randn(1, ref.feature_dim)
    assert torch.allclose(tiny_logits(ref, tokens, features), tiny_logits(fused, tokens, features), atol=1e-5)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantised_tiny_model_decodes_and_stays_close(scheme):
    ref = build_tiny()
    q = build_tiny(quantize=scheme)
    assert q.card.quantize == scheme
    assert isinstance(q.llama.output, QuantLinear) and isinstance(q.llama.layers[1].feed_forward.w2, QuantLinear)
    tokens = torch.randint(0, ref.llama.vocab_size, (2, 10))
    features = torch.randn(2, ref.feature_dim)
    err = rel(tiny_logits(q, tokens, features), tiny_logits(ref, tokens, features))
    assert err < (0.02 if scheme == "int8" else 0.3), err
    [gen] = q.generate_batch(["hello"], features[:1], max_tokens=6, temperature=0.0)
    assert len(gen.token_ids) <= 6
