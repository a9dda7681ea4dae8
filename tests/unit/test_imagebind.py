"""ImageBindModel on tiny random configs: keys, shape inference, forward semantics, dtypes, errors."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ibllm_agent.imagebind import (
    ImageBindArgs,
    ImageBindModel,
    imagebind_huge_args,
    imagebind_tiny_args,
    read_imagebind_config,
)


@pytest.fixture(scope="module")
def tiny() -> ImageBindModel:
    torch.manual_seed(0)
    return ImageBindModel(imagebind_tiny_args()).eval()


def _inputs(B: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "vision": torch.randn(B, 3, 224, 224, generator=g),
        "text": torch.randint(1, 49406, (B, 77), generator=g),
        "audio": torch.randn(B, 3, 1, 128, 204, generator=g),
        "depth": torch.randn(B, 1, 224, 224, generator=g),
        "thermal": torch.randn(B, 1, 224, 224, generator=g),
        "imu": torch.randn(B, 6, 2000, generator=g),
        "point": torch.randn(B, 1024, 3, generator=g),
    }


def _official_keys(shared_dir) -> dict[str, tuple[int, ...]]:
    """The ImageBind key table of official_keys.md, with `{a..b}` ranges expanded."""
    text = (shared_dir / "parity" / "official_keys.md").read_text()
    section = text.split("### ImageBind (imagebind_huge")[1].split("### LLaMA-7B")[0]
    keys = {}
    for key, dims in re.findall(r"\| `([^`]+)` \| \[([0-9, ]*)\] \|", section):
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
        span = re.search(r"\{(\d+)\.\.(\d+)\}", key)
        indices = range(int(span.group(1)), int(span.group(2)) + 1) if span else [None]
        for i in indices:
            keys[key if i is None else key[: span.start()] + str(i) + key[span.end() :]] = shape
    return keys


def test_huge_keys_and_shapes_equal_the_official_table(shared_dir):
    model = ImageBindModel(imagebind_huge_args(), device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_keys(shared_dir)
    assert len(official) == 1476
    assert ours == official
    no_point = ImageBindModel(imagebind_huge_args(point=False), device="meta").state_dict()
    assert not any(k.startswith("point_trunk.") or ".point." in k for k in no_point)
    assert set(no_point) < set(ours)


@pytest.mark.parametrize("point", [True, False])
def test_shape_inference_round_trips(point):
    for args in (imagebind_tiny_args(point), imagebind_huge_args(point)):
        sd = ImageBindModel(args, device="meta").state_dict()
        assert ImageBindArgs.from_state_dict(sd) == args


def test_overrides_for_head_counts_and_config_file(tmp_path):
    args = replace(imagebind_tiny_args(), vision_num_heads=4, audio_stride=16, audio_target_len=208)
    sd = ImageBindModel(args, device="meta").state_dict()
    # Stride and head count are invisible in the shapes: inference alone gets them wrong ...
    with pytest.raises(ValueError, match="audio"):
        ImageBindArgs.from_state_dict(sd)
    # ... an imagebind_config.json (upstream constructor kwargs) fixes them.
    config = tmp_path / "imagebind_config.json"
    config.write_text(json.dumps({"kwargs": {"vision_num_heads": 4, "audio_stride": 16, "audio_target_len": 208,
                                             "kernel_size": [2, 14, 14]}}))
    assert ImageBindArgs.from_state_dict(sd, read_imagebind_config(config)) == args
    with pytest.raises(ValueError, match="vision_embed_dim"):
        ImageBindArgs.from_state_dict(sd, {"vision_embed_dim": 999})
    odd = ImageBindModel(replace(imagebind_tiny_args(point=False), text_embed_dim=96, text_num_heads=3),
                         device="meta").state_dict()
    with pytest.raises(ValueError, match="text_num_heads"):
        ImageBindArgs.from_state_dict(odd)
    assert ImageBindArgs.from_state_dict(odd, {"text_num_heads": 3}).text_num_heads == 3
    with pytest.raises(ValueError, match="unknown ImageBind config keys"):
        ImageBindArgs.from_state_dict(sd, {"visoin_num_heads": 4})
    with pytest.raises(ValueError, match="not an ImageBind state dict"):
        ImageBindArgs.from_state_dict({"tok_embeddings.weight": torch.zeros(2, 2)})


def test_smaller_image_size_is_inferred_from_the_position_embedding():
    args = replace(imagebind_tiny_args(point=False), vision_image_size=112)
    model = ImageBindModel(args).eval()
    inferred = ImageBindArgs.from_state_dict(model.state_dict())
    assert inferred.vision_image_size == 112 and inferred.vision_num_tokens == 1 + 8 * 8
    with torch.no_grad():
        assert model({"vision": torch.randn(1, 3, 112, 112)})["vision"].shape == (1, 1024)
        # Another size: the position grid is resized bicubically, as upstream.
        assert model({"vision": torch.randn(1, 3, 224, 224)})["vision"].shape == (1, 1024)


def test_from_state_dict_loads_strictly_and_matches(tiny):
    sd = tiny.state_dict()
    loaded = ImageBindModel.from_state_dict(sd)
    assert not any(t.is_meta for t in loaded.state_dict().values())
    x = _inputs(1)
    with torch.no_grad():
        a, b = tiny(x), loaded(x)
    for m in x:
        torch.testing.assert_close(a[m], b[m], rtol=0, atol=0)


def test_strict_load_of_a_wrong_state_dict_lists_missing_and_unexpected_keys(tiny):
    sd = dict(tiny.state_dict())
    sd["modality_trunks.vision.blocks.7.attn.in_proj_weight"] = sd.pop("modality_trunks.vision.blocks.0.norm_1.weight")
    fresh = ImageBindModel(imagebind_tiny_args())
    with pytest.raises(RuntimeError) as err:
        fresh.load_state_dict(sd, strict=True)
    assert "modality_trunks.vision.blocks.0.norm_1.weight" in str(err.value)  # missing
    assert "modality_trunks.vision.blocks.7.attn.in_proj_weight" in str(err.value)  # unexpected
    # A checkpoint without point_trunk does not load into a model with one.
    no_point = {k: v for k, v in tiny.state_dict().items() if not k.startswith("point_trunk.")}
    with pytest.raises(RuntimeError, match="point_trunk"):
        fresh.load_state_dict(no_point, strict=True)


def test_forward_shapes_and_post_processing_scales(tiny):
    with torch.no_grad():
        out = tiny(_inputs())
    norms = {m: v.norm(dim=-1) for m, v in out.items()}
    assert all(v.shape == (2, 1024) for v in out.values())
    expected = {"vision": 1.0, "text": 1 / 0.07, "depth": 5.0, "thermal": 10.0, "imu": 5.0, "point": 1.0}
    for m, scale in expected.items():
        torch.testing.assert_close(norms[m], torch.full((2,), scale), rtol=1e-5, atol=1e-5)
    assert (norms["audio"] <= 20.0 + 1e-4).all()  # a mean of 3 clips of norm 20


def test_text_logit_scale_is_clamped_at_100(tiny):
    model = ImageBindModel(imagebind_tiny_args(point=False)).eval()
    with torch.no_grad():
        model.modality_postprocessors["text"][1].log_logit_scale.fill_(torch.log(torch.tensor(500.0)))
        out = model({"text": _inputs(1)["text"]})["text"]
    torch.testing.assert_close(out.norm(), torch.tensor(100.0))


def test_clips_are_post_processed_then_averaged(tiny):
    clips = torch.randn(2, 3, 3, 2, 224, 224)  # [B, S, 3, T, H, W]
    with torch.no_grad():
        out = tiny({"vision": clips})["vision"]
        # A 5-D tensor would itself be read as clips: encode the 6 clips directly.
        per_clip = F.normalize(tiny.encode("vision", clips.flatten(0, 1)), dim=-1).view(2, 3, -1)
        final, prenorm = tiny({"vision": clips}, prenorm=True)
    torch.testing.assert_close(out, per_clip.mean(1))
    assert (out.norm(dim=-1) < 1).all()  # averaged unit vectors are not renormalised
    torch.testing.assert_close(F.normalize(prenorm["vision"], dim=-1).norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(final["vision"], out)


def test_image_is_a_two_frame_clip_of_itself(tiny):
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a = tiny({"vision": image})["vision"]
        b = tiny({"vision": image.unsqueeze(2).repeat(1, 1, 2, 1, 1).unsqueeze(1)})["vision"]
    torch.testing.assert_close(a, b)


def test_text_embedding_is_read_at_the_eos_position(tiny):
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, 0] = 49406
    ids[0, 1:4] = torch.tensor([320, 1929, 49407])
    ids[1, 1:4] = torch.tensor([320, 1929, 49407])
    ids[1, 10:20] = 5  # after EOS: invisible to the EOS token under the causal mask
    with torch.no_grad():
        out = tiny({"text": ids})["text"]
        moved = ids[:1].clone()
        moved[0, 3], moved[0, 4] = 300, 49407  # EOS one position later -> different embedding
        other = tiny({"text": moved})["text"]
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], other[0])


def test_bfloat16_forward_runs(tiny):
    dtype = torch.bfloat16
    model = ImageBindModel(imagebind_tiny_args(), dtype=dtype).eval()
    model.load_state_dict(tiny.state_dict())
    x = _inputs(1)
    with torch.no_grad():
        out = model(x)
        ref = tiny(x)
    for m, v in out.items():
        assert v.dtype == dtype and torch.isfinite(v).all()
        scale = ref[m].norm()
        assert F.cosine_similarity(v.float(), ref[m], dim=-1).item() > 0.98, m
        assert abs(v.float().norm() - scale) / scale < 0.05


def test_unknown_and_missing_modalities_are_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"unknown modality 'smell'.*vision, text"):
        tiny({"smell": torch.zeros(1, 3)})
    model = ImageBindModel(imagebind_tiny_args(point=False))
    with pytest.raises(ValueError, match=r"'point' is not in this ImageBind model.*available: vision"):
        model({"point": torch.zeros(1, 1024, 3)})
    with pytest.raises(ValueError, match="vision input"):
        tiny({"vision": torch.zeros(1, 3, 2, 224, 224)})  # one 5-D clip reads as 3 clips of 2 channels
    with pytest.raises(ValueError, match="token ids"):
        tiny({"text": torch.zeros(1, 77)})


def test_train_mode_uses_dropout_and_eval_is_deterministic(tiny):
    x = {"imu": _inputs(1)["imu"]}
    with torch.no_grad():
        assert torch.equal(tiny(x)["imu"], tiny(x)["imu"])
    model = ImageBindModel(imagebind_tiny_args(point=False)).train()
    out = model(x)["imu"]
    out.sum().backward()  # gradients flow through every path used
    assert model.modality_preprocessors["imu"].cls_token.grad is not None


@pytest.mark.gpu
def test_cuda_bfloat16_matches_cpu_float32(tiny):
    model = ImageBindModel.from_state_dict(tiny.state_dict(), device="cuda", dtype=torch.bfloat16)
    x = _inputs(2)
    with torch.no_grad():
        ref = tiny(x)
        out = model({k: v.cuda() for k, v in x.items()})
    for m, v in out.items():
        assert v.device.type == "cuda" and v.dtype == torch.bfloat16
        assert F.cosine_similarity(v.float().cpu(), ref[m], dim=-1).min().item() > 0.98, m


@pytest.mark.parametrize("bias_kv", [False, True])
def test_attention_equals_torch_multihead_attention(bias_kv):
    from ibllm_agent.imagebind.transformer import SelfAttention

    torch.manual_seed(0)
    ours = SelfAttention(48, 3, bias_kv=bias_kv)
    with torch.no_grad():
        ours.in_proj_bias.normal_()
        ours.out_proj.bias.normal_()
    ref = torch.nn.MultiheadAttention(48, 3, add_bias_kv=bias_kv)  # upstream's module, [L, B, D]
    ref.load_state_dict(ours.state_dict())  # the same keys
    x = torch.randn(2, 9, 48)
    mask = torch.full((9, 9), float("-inf")).triu_(1)
    for attn_mask in (None, mask):
        got = ours(x, attn_mask)
        xt = x.transpose(0, 1)
        want = ref(xt, xt, xt, need_weights=False, attn_mask=attn_mask)[0].transpose(0, 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
