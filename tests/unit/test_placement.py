"""device="auto", dtype="auto", quantize=, and the memory check (ibllm_agent/placement.py)."""

from __future__ import annotations

import pytest
import torch

import ibllm_agent
from ibllm_agent import placement
from ibllm_agent.factory import resolve_dtype
from ibllm_agent.llama import quant


def test_auto_picks_the_cpu_here_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(placement, "_mps_available", lambda: False)
    monkeypatch.setattr(placement, "cpu_bf16", lambda: (True, "the CPU has avx512_bf16"))
    p = placement.resolve_placement("auto", "auto")
    assert p.device == torch.device("cpu") and p.dtype == torch.bfloat16 and p.quantize is None
    assert "avx512_bf16" in p.describe() and "no CUDA" in p.describe()
    monkeypatch.setattr(placement, "cpu_bf16", lambda: (False, "the CPU has no AVX512-BF16/AMX/BF16 instructions"))
    assert placement.resolve_placement("auto", None).dtype == torch.float32
    # the toy keeps float32 on a CPU whatever the CPU
    monkeypatch.setattr(placement, "cpu_bf16", lambda: (True, "x"))
    assert placement.resolve_placement("auto", "auto", official=False).dtype == torch.float32


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    p = placement.resolve_placement("auto", "auto", "int4")
    assert p.device.type == "cuda" and p.dtype == torch.float16 and p.quantize == "int4"
    assert "Fake GPU" in p.describe() and "tinygemm" in p.describe()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(placement, "_mps_available", lambda: True)
    p = placement.resolve_placement("auto", "auto")
    assert p.device.type == "mps" and p.dtype == torch.float16


def test_bad_options_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(placement.PlacementError, match="device='cuda' but no CUDA device"):
        placement.resolve_placement("cuda")
    with pytest.raises(placement.PlacementError, match="device='tpu'"):
        placement.resolve_placement("tpu")
    with pytest.raises(placement.PlacementError, match="dtype='int8' is not understood"):
        placement.resolve_placement("cpu", "int8")
    with pytest.raises(placement.PlacementError, match="dtype=torch.float64 is not supported"):
        placement.resolve_placement("cpu", torch.float64)
    with pytest.raises(placement.PlacementError, match="quantize='int2'"):
        placement.resolve_placement("cpu", None, "int2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    with pytest.raises(placement.PlacementError, match="only 1 CUDA device"):
        placement.resolve_placement("cuda:3")
    with pytest.raises(placement.PlacementError, match="dtype='bfloat16' is not supported on Old GPU"):
        placement.resolve_placement("cuda", "bfloat16")


def test_load_refuses_bad_options_before_looking_for_files(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(placement.PlacementError, match="device='cuda'"):
        ibllm_agent.load("7B", tmp_path, device="cuda")
    with pytest.raises(placement.PlacementError, match="quantize='int3'"):
        ibllm_agent.load("toy", quantize="int3")
    with pytest.raises(ValueError, match="dtype='double'"):
        ibllm_agent.load("tiny", dtype="double")


def test_resolve_dtype_keeps_its_old_meaning():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_toy_and_tiny_stay_float32_on_the_cpu_by_default():
    model = ibllm_agent.load("toy")
    assert model.device.type == "cpu" and model.dtype == torch.float32 and model.card.quantize is None
    assert "float32" in model.card.placement


def test_memory_check_names_what_would_fit(monkeypatch):
    sd = {"layers.0.attention.wq.weight": torch.empty(1000, 1000, dtype=torch.float16),
          "tok_embeddings.weight": torch.empty(10, 1000, dtype=torch.float16)}
    p = placement.resolve_placement("cpu", "float32")
    monkeypatch.setattr(placement, "RUNTIME_BYTES", 0)
    monkeypatch.setattr(placement, "available_memory", lambda device: 2_500_000)
    with pytest.raises(placement.InsufficientMemoryError) as e:
        placement.check_memory({"llama": sd}, p, lambda k: "wq" in k, what="test model")
    message = str(e.value)
    assert "test model needs ~0.0 GB" in message and "bfloat16 ~0.0 GB" in message
    assert "would fit: bfloat16, float32 + quantize=int8, float32 + quantize=int4" in message
    need = placement.check_memory({"llama": sd}, placement.resolve_placement("cpu", "float32", "int8"),
                                  lambda k: "wq" in k, what="x")
    assert need == 1_000_000 + 10 * 1000 * 4
    monkeypatch.setenv("IBLLM_SKIP_MEMORY_CHECK", "1")
    placement.check_memory({"llama": sd}, p, lambda k: True, what="x")


def test_memory_estimate_counts_the_bind_network_in_int8_whatever_the_scheme():
    """The bind network's SwiGLU is quantised to int8 in an int4 model too: the estimate must say so."""
    from ibllm_agent.factory import _quantized_weight

    sd = {"layers.0.feed_forward.w1.weight": torch.empty(256, 256, dtype=torch.float16),
          "image_bind_f1_1.weight": torch.empty(256, 256, dtype=torch.float32),
          "image_bind_proj.weight": torch.empty(256, 16, dtype=torch.float32)}
    p = placement.resolve_placement("cpu", "bfloat16", "int4")
    llama = placement.model_bytes(sd.items(), torch.bfloat16, "int4", _quantized_weight)
    int4, int8 = quant.bytes_per_weight("int4"), quant.bytes_per_weight("int8")
    assert llama == int(256 * 256 * int4) + int(256 * 256 * int8) + 256 * 16 * 2
    assert p.quantize == "int4"
