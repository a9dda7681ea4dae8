"""Issue 8's GPU checks in one run: correctness on CUDA and speed at the real 7B size.

    python tools/gpu_check.py --json gpu.json                # on a machine with a CUDA GPU
    python tools/gpu_check.py --device cpu --small           # a dry run of every section here

1. parity: tests/parity/test_model_parity.py with the fixture model loaded on the device in float32
   (IBLLM_TEST_DEVICE), the same tolerances as on the CPU (fixtures built into a temp folder), with
   PyTorch's default TF32 convolutions and again without; then the suite's `gpu` tests.
2. toy precision: the toy model in float16 and bfloat16 on the device against float32 on the CPU,
   greedy answers to "What is this?" for held-out pictures, sounds, 3D shapes and texts: the share
   of identical token sequences.
3. speed: LLaMA-7B + bind network + ImageBind-huge with random weights in the official shapes
   (float16 and bfloat16): decode tokens/s at batch 1, 8 and 32, prefill tokens/s of a 512-token
   prompt, the time to encode one image, 3-clip audio, 15-clip video and 8192-point cloud, peak
   memory, and batch-1 decoding against the bandwidth bound: weight bytes read per step / time per
   step / copy bandwidth, the copy measured in the same run as (bytes read + written) / time;
   decoding eager and as a CUDA graph (cuda_graphs.py), and the graph without LoRA.
4. compiled: the graphed step compiled with torch.compile first, at batch 1 (and how long that takes).
5. quant (issue 16): the 7B with LoRA merged and q/k/v, w1/w3 fused (float), and with int8 and int4
   weights (`load(quantize=...)`'s layers, fused, LoRA apart): decode tokens/s at batch 1 and 8, eager
   and as a CUDA graph, bytes read per step and the fraction of the bandwidth bound, peak memory; and the
   kernels alone on an 11008x4096 product (float16, int8 dequantising, torch._weight_int8pack_mm where
   the build has it on CUDA, int4 tinygemm). The toy section also answers with int8, int4 and fused
   models on the device; the parity section also runs tests/parity/test_quant_parity.py there.
Each section reports its own error instead of stopping the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_generate import run_once, step_bytes  # noqa: E402  (tools/ is this script's folder)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int = 5) -> float:
    """Median seconds of `fn()` after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------
# 1. parity on the device
# ---------------------------------------------------------------------------------------------------


def pytest_run(args: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *args]
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return {"returncode": out.returncode, "summary": lines[-1] if lines else "", "seconds": time.perf_counter() - t,
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]}


def parity(device: str) -> dict:
    """The fixture model's parity tests on `device` in float32, then the suite's own GPU tests."""
    env = {**os.environ, "IBLLM_TEST_DEVICE": device, "COLUMNS": "400"}  # whole assertion lines
    out = {"model_parity": pytest_run([str(ROOT / "tests" / "parity" / "test_model_parity.py")], env),
           "quant_parity": pytest_run([str(ROOT / "tests" / "parity" / "test_quant_parity.py")], env)}
    if device.startswith("cuda"):
        out["model_parity_no_tf32_conv"] = pytest_run([str(ROOT / "tests" / "parity" / "test_model_parity.py")],
                                                      {**env, "IBLLM_TEST_NO_TF32": "1"})
        out["gpu_tests"] = pytest_run(["-m", "gpu", str(ROOT / "tests" / "unit" / "test_model.py"),
                                       str(ROOT / "tests" / "unit" / "test_imagebind.py")], env)
    return out


# ---------------------------------------------------------------------------------------------------
# 2. the toy model in half precision against float32 on the CPU
# ---------------------------------------------------------------------------------------------------


@torch.inference_mode()
def toy_precision(device: str, per_concept: int) -> dict:
    import ibllm_agent
    from ibllm_agent import toy
    from ibllm_agent.generation import format_prompt
    from ibllm_agent.media import load_media
    from ibllm_agent.train.toy_eval import HELD_OUT_SEED

    world = toy.ToyWorld(HELD_OUT_SEED)
    with tempfile.TemporaryDirectory() as folder:
        # index 0..2: WAV sounds (index 3 would be an MP3), ASCII and binary PLY
        items = [(name, load_media(world.write(name, modality, i, Path(folder)).path, modality))
                 for modality in ("image", "audio", "point") for i in range(per_concept) for name in toy.CONCEPT_NAMES]
    texts = [world.text(name, i) for i in range(per_concept) for name in toy.CONCEPT_NAMES]
    prompt = format_prompt(toy.EVAL_QUESTION)

    def answers(model) -> list[list[int]]:
        feats = torch.cat([model.encode([m for _, m in items]), text_features(model, texts)])
        gens = []
        for s in range(0, len(feats), 32):
            rows = feats[s:s + 32]
            gens += model.generate_batch([prompt] * len(rows), rows, max_tokens=16, temperature=0.0, visual_cache=False)
        return [g.token_ids for g in gens], [g.text for g in gens]

    reference, ref_text = answers(ibllm_agent.load("toy"))
    labels = [name for name, _ in items] + [name for i in range(per_concept) for name in toy.CONCEPT_NAMES]
    out = {"n": len(reference), "cpu_float32_right": sum(toy.names_concept(t, y) for t, y in zip(ref_text, labels))}
    half = "float16" if device.startswith("cuda") else "bfloat16"
    variants = {"float16": dict(dtype="float16"), "bfloat16": dict(dtype="bfloat16"),
                f"fused_{half}": dict(dtype=half, fuse=True), f"int8_{half}": dict(dtype=half, quantize="int8"),
                f"int4_{half}": dict(dtype=half, quantize="int4")}
    for name, options in variants.items():
        tokens, text = answers(ibllm_agent.load("toy", device=device, **options))
        same = [a == b for a, b in zip(tokens, reference)]
        out[name] = {"identical": sum(same), "agreement": sum(same) / len(same),
                     "right": sum(toy.names_concept(t, y) for t, y in zip(text, labels)),
                     "differences": [(a, b) for a, b, s in zip(ref_text, text, same) if not s][:5]}
    return out


def text_features(model, texts: list[str]) -> torch.Tensor:
    from ibllm_agent.imagebind.bpe import tokenize

    return model.image_bind_forward({"text": tokenize(texts)})["text"].float().cpu()


# ---------------------------------------------------------------------------------------------------
# 3. speed at the 7B size
# ---------------------------------------------------------------------------------------------------


def build_random(preset: str, huge: bool, device: torch.device, dtype: torch.dtype, finetune: bool = True):
    """LLaMA `preset` (vocab 32000, every layer adapted) + bind network + ImageBind, random weights;
    `finetune`: with the finetuned checkpoints' biases and LoRA."""
    from ibllm_agent.card import ModelCard
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.presets import imagebind_huge_args, imagebind_tiny_args, llama_args, tiny_tokenizer

    args = llama_args(preset, vocab_size=32000, max_seq_len=1024, w_bias=finetune, w_lora=finetune)
    torch.manual_seed(0)
    model = ImageBindLLM(args, tiny_tokenizer(), imagebind_huge_args() if huge else imagebind_tiny_args(),
                         query_layer=args.n_layers, device=device, card=ModelCard(name=f"random-{preset}"))
    model.requires_grad_(False)
    return model.to(dtype=dtype).eval()


def decode_times(model, batch: int, prompt_len: int, steps: int, graph: bool, compile: bool = False
                 ) -> tuple[float, float]:
    """(seconds of the prefill, median seconds of one decode step) at `batch`, eager or as a CUDA graph."""
    with torch.inference_mode():
        vq = model.bind(torch.randn(1, model.feature_dim, device=model.device, dtype=model.dtype))
        adapter = model.llama.adapter_values(model.adapter_queries(vq))
    prefill, times = run_once(model.llama, adapter, batch, prompt_len, steps, graph=graph, compile=compile)
    return prefill, statistics.median(times[2:] or times)


@torch.inference_mode()
def encode_times(model, device: torch.device) -> dict:
    shapes = {"image": ("vision", (1, 3, 224, 224)), "audio_3_clips": ("audio", (1, 3, 1, 128, 204)),
              "video_15_clips": ("vision", (1, 15, 3, 2, 224, 224)), "point_8192": ("point", (1, 8192, 3))}
    out = {}
    for name, (modality, shape) in shapes.items():
        x = torch.randn(shape, device=device, dtype=model.dtype)
        out[name + "_ms"] = 1e3 * timed(lambda m=modality, v=x: model.image_bind({m: v}), device)
    return out


def decode_rows(model, dev: torch.device, batches: list[int], prompt_len: int, steps: int, bandwidth: float) -> dict:
    """Decode tokens/s and step ms per batch, eager (and as a CUDA graph on CUDA), and batch 1's fraction of
    the bandwidth bound (`step_bytes` per step / step time / `bandwidth`)."""
    row = {}
    modes = {"eager": False, "graph": True} if dev.type == "cuda" else {"eager": False}
    for mode, graph in modes.items():
        for b in batches:
            decode_times(model, b, prompt_len, 3, graph)  # warm-up at this batch
            _, step = decode_times(model, b, prompt_len, steps, graph)
            row[f"{mode}_decode_tok_s_b{b}"] = b / step
            row[f"{mode}_step_ms_b{b}"] = 1e3 * step
        row[f"{mode}_bound_fraction_b1"] = step_bytes(model.llama) / (row[f"{mode}_step_ms_b1"] / 1e3) / bandwidth
    return row


def copy_bandwidth(device: torch.device, gib: float) -> float:
    """(bytes read + bytes written) / second of one device-to-device copy."""
    src = torch.ones(int(gib * (1 << 30)) // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds


def speed(device: str, preset: str, huge: bool, batches: list[int], prompt_len: int, prefill_len: int,
          steps: int, dtypes: list[str]) -> dict:
    dev = torch.device(device)
    out = {"preset": preset, "imagebind": "huge" if huge else "tiny",
           "copy_GBps": copy_bandwidth(dev, 4.0 if dev.type == "cuda" else 0.25) / 1e9}
    for name in dtypes:
        dtype = getattr(torch, name)
        model = build_random(preset, huge, dev, dtype)
        if dev.type == "cuda":  # the peak of serving, not of building in float32 first
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        row = {"weight_GB": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
               "llama_step_GB": step_bytes(model.llama) / 1e9}
        prefill, _ = decode_times(model, 1, prefill_len, 1, False)
        prefill, _ = decode_times(model, 1, prefill_len, 1, False)  # the second, warm
        row["prefill_len"], row["prefill_tok_s"] = prefill_len, prefill_len / prefill
        row.update(decode_rows(model, dev, batches, prompt_len, steps, out["copy_GBps"] * 1e9))
        row.update(encode_times(model, dev))
        if dev.type == "cuda":
            row["peak_memory_GB"] = torch.cuda.max_memory_allocated(dev) / 1e9
        out[name] = row
        del model
    if dev.type == "cuda":  # what LoRA's extra small kernels cost: the pretrain-phase model, no LoRA/bias
        model = build_random(preset, huge, dev, getattr(torch, dtypes[0]), finetune=False)
        _, step = decode_times(model, 1, prompt_len, steps, True)
        out[f"{dtypes[0]}_no_lora"] = {"graph_step_ms_b1": 1e3 * step, "graph_bound_fraction_b1":
                                       step_bytes(model.llama) / step / (out["copy_GBps"] * 1e9)}
        del model
    return out


def compiled(device: str, preset: str, huge: bool, prompt_len: int, steps: int, dtype: str) -> dict:
    """The CUDA-graph step compiled with torch.compile first (IBLLM_COMPILE_DECODE=1), at batch 1."""
    dev = torch.device(device)
    bw = copy_bandwidth(dev, 4.0)
    model = build_random(preset, huge, dev, getattr(torch, dtype))
    t = time.perf_counter()
    decode_times(model, 1, prompt_len, steps, True, compile=True)  # compiles for this batch and capacity
    out = {"dtype": dtype, "first_request_s": time.perf_counter() - t}
    t = time.perf_counter()
    _, step = decode_times(model, 1, prompt_len, steps, True, compile=True)
    out.update({"second_request_s": time.perf_counter() - t, "step_ms_b1": 1e3 * step, "decode_tok_s_b1": 1 / step,
                "bound_fraction_b1": step_bytes(model.llama) / step / bw})
    return out


# ---------------------------------------------------------------------------------------------------
# 5. merged/fused and quantised decoding at the 7B size
# ---------------------------------------------------------------------------------------------------


def quant_speed(device: str, preset: str, huge: bool, batches: list[int], prompt_len: int, steps: int) -> dict:
    from ibllm_agent.llama.model import for_inference

    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    bw = copy_bandwidth(dev, 4.0 if dev.type == "cuda" else 0.25)
    out = {"dtype": str(dtype), "copy_GBps": bw / 1e9}
    for variant, options in {"unfused": {}, "fused": dict(merge_lora=True, fuse=True),
                             "int8": dict(quantize="int8", fuse=True), "int4": dict(quantize="int4", fuse=True)}.items():
        model = build_random(preset, huge, dev, dtype)
        if options:
            for_inference(model.llama, dtype, **options)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        row = {"llama_step_GB": step_bytes(model.llama) / 1e9,
               **decode_rows(model, dev, batches, prompt_len, steps, bw)}
        if dev.type == "cuda":
            row["peak_memory_GB"] = torch.cuda.max_memory_allocated(dev) / 1e9
        out[variant] = row
        del model
    out["kernels"] = quant_kernels(dev, dtype)
    return out


@torch.inference_mode()
def quant_kernels(dev: torch.device, dtype: torch.dtype, n: int = 11008, k: int = 4096) -> dict:
    """Milliseconds of one [rows, k] x [k, n] product per kernel, rows 1 and 8."""
    import torch.nn.functional as F

    from ibllm_agent.llama.quant import QuantLinear

    lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.float32)
    q8 = QuantLinear.from_linear(lin, "int8")
    q4 = QuantLinear.from_linear(lin, "int4")
    q4.repack()
    w = lin.weight.to(dtype)
    out = {"int4_layout": q4.layout}
    for rows in (1, 8):
        x = torch.randn(rows, k, device=dev, dtype=dtype)
        kernels = {"float": lambda x=x: F.linear(x, w), "int8_layer": lambda x=x: q8(x), "int4_layer": lambda x=x: q4(x)}
        if hasattr(torch, "_weight_int8pack_mm"):
            scales = q8.scales.to(dtype)
            kernels["int8pack_mm"] = lambda x=x, s=scales: torch._weight_int8pack_mm(x, q8.qweight, s)
        for name, fn in kernels.items():
            try:
                out[f"{name}_ms_rows{rows}"] = 1e3 * timed(fn, dev, reps=20)
            except (RuntimeError, NotImplementedError) as e:
                out[f"{name}_ms_rows{rows}"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="dry run: a mid-size LLaMA, tiny ImageBind, fewer samples")
    p.add_argument("--skip", nargs="*", default=[], choices=["parity", "toy", "speed", "compiled", "quant"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    report = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        report["device_name"] = torch.cuda.get_device_name(0)
    sections = {
        "parity": lambda: parity(args.device),
        "toy": lambda: toy_precision(args.device, 1 if args.small else 3),
        "speed": lambda: speed(args.device, "mid" if args.small else "7B", not args.small,
                               [1, 8] if args.small else [1, 8, 32], 64, 64 if args.small else 512,
                               4 if args.small else 32, ["bfloat16"] if args.small else ["float16", "bfloat16"]),
        "compiled": lambda: compiled(args.device, "mid" if args.small else "7B", not args.small, 64,
                                     4 if args.small else 32, "float16"),
        "quant": lambda: quant_speed(args.device, "mid" if args.small else "7B", not args.small,
                                     [1, 8], 64, 4 if args.small else 32),
    }
    for name, run in sections.items():
        if name in args.skip:
            continue
        t = time.perf_counter()
        try:
            report[name] = run()
        except Exception as e:  # one section's failure must not cost the others' figures
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"== {name} ({time.perf_counter() - t:.0f} s)\n{json.dumps(report[name], indent=1, default=str)}",
              flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
