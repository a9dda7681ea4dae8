"""tools/gpu_check.py's dry run on the CPU: every section but the GPU-only ones runs and reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_reports_the_toy_agreement_and_the_speed_figures(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--small", "--skip", "parity", "compiled", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    toy = report["toy"]
    assert "error" not in toy, toy
    assert toy["n"] == 4 * 14 and toy["cpu_float32_right"] >= 0.8 * toy["n"]
    for dtype in ("float16", "bfloat16", "fused_bfloat16", "int8_bfloat16"):  # the same greedy answers
        assert toy[dtype]["agreement"] >= 0.9, toy[dtype]
    assert toy["int4_bfloat16"]["agreement"] >= 0.7, toy["int4_bfloat16"]
    speed = report["speed"]["bfloat16"]
    assert speed["eager_decode_tok_s_b8"] > speed["eager_decode_tok_s_b1"] > 0
    assert speed["prefill_tok_s"] > 0 and speed["point_8192_ms"] > 0
    quant = report["quant"]
    assert "error" not in quant, quant
    assert quant["int4"]["llama_step_GB"] < quant["int8"]["llama_step_GB"] < quant["fused"]["llama_step_GB"]
    assert all(quant[v]["eager_decode_tok_s_b1"] > 0 for v in ("unfused", "fused", "int8", "int4"))
    assert isinstance(quant["kernels"]["int8pack_mm_ms_rows1"], float) and quant["kernels"]["int4_layout"] == "cpu"
