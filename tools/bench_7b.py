"""The real 7B on this machine: memory and speed of ImageBind-LLM 7B in bfloat16, int8 and int4.

    python tools/bench_7b.py --dir /tmp/ibllm-7b --json 7b.json          # write, quantise, measure, delete
    python tools/bench_7b.py --dir /tmp/ibllm-7b --keep                   # keep the files (~32 GB) for another run
    python tools/bench_7b.py --dir /tmp/ibllm-7b --skip-write --reps 3     # reuse the files of a --keep run

1. Writes 7B-shaped official files with random weights into --dir: Meta's layout (tokenizer.model with
   32,000 pieces, 7B/params.json, 7B/consolidated.00.pth in float16, 13.5 GB), the adapter 7B.pth
   (`{"model": ...}`: bind network, prefix, LLaMA's gates, biases, LoRA and norms, float32) and
   imagebind_w3D.pth (ImageBind-huge + Point-Bind, float32), plus a test picture. Meta's file is written
   without ever holding it in memory: a skeleton by `torch.save` under `skip_data`, then each tensor's
   bytes generated and written in place.
2. `ibllm quantize` writes the int8 and int4 folders (LLaMA quantised; adapter and ImageBind in bfloat16
   safetensors, read through the file mapping).
3. --reps rounds, each a fresh process per precision: load (time, peak RSS), then an image question (time to
   first token: read and encode the picture with ImageBind-huge, bind network, prefill, first token),
   then decode steps at batch 1 and batch 8, then the steady RSS (resident now) and the peak RSS of the
   whole process (`ru_maxrss`, measured by the process itself: file pages it touched count). The table
   gives the median over the processes (decode: the median step of each process, then their median).

bfloat16 loads the official files (Meta's float16 file converted as it is read); int8 and int4 load the
quantised folders. "int8/int4 from official files" rows (quantising while loading) are measured once.
Before each process the script waits for enough available memory and reports the load average: on a
shared machine, run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Describe this picture in detail."
PRECISIONS = ("int4", "int8", "bf16")
NEED_GB = {"bf16": 18.5, "int8": 11.5, "int4": 7.5, "int8-at-load": 11.5, "int4-at-load": 7.5}
"""Available memory a measuring process waits for (its target plus a margin)."""


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# ----- 1. the files ------------------------------------------------------------------------------------

def tokenizer_proto(pieces: int = 32000) -> bytes:
    """A SentencePiece model with `pieces` pieces: the tiny preset's BPE model plus user-defined pieces
    (word-like strings), the size of LLaMA's vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from ibllm_agent.presets import _tiny_tokenizer_proto

    model = pb.ModelProto()
    model.ParseFromString(_tiny_tokenizer_proto())
    have = {p.piece for p in model.pieces}
    i = 0
    while len(model.pieces) < pieces:
        piece = f"\u2581w{i}"
        i += 1
        if piece in have:
            continue
        new = model.pieces.add()
        new.piece, new.score, new.type = piece, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
    return model.SerializeToString()


def write_skeleton_then_fill(path: Path, shapes: dict[str, tuple[tuple[int, ...], torch.dtype, str]],
                             seed: int) -> None:
    """torch.save of `shapes` ({key: (shape, dtype, init)}) without holding the tensors: a skeleton with
    the storages' space reserved (torch.serialization.skip_data over untouched torch.empty tensors), then
    each storage's bytes generated in chunks and written at its record's offset. init: "normal" (std 0.02),
    "ones", "small" (std 0.01) or "zeros"."""
    tensors = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype, _) in shapes.items()}  # never touched
    with torch.serialization.skip_data():
        torch.save(tensors, path)
    del tensors
    reader = torch._C.PyTorchFileReader(str(path))
    records = {name.rsplit("/", 1)[-1]: name for name in reader.get_all_records() if "/data/" in f"/{name}"}
    g = torch.Generator().manual_seed(seed)
    chunk = 1 << 26
    with open(path, "r+b") as f:
        for i, (shape, dtype, init) in enumerate(shapes.values()):
            offset = reader.get_record_offset(records[str(i)])
            n = 1
            for s in shape:
                n *= s
            done = 0
            while done < n:
                m = min(chunk, n - done)
                if init == "ones":
                    block = torch.ones(m, dtype=dtype)
                elif init == "zeros":
                    block = torch.zeros(m, dtype=dtype)
                else:
                    block = (torch.randn(m, generator=g) * (0.02 if init == "normal" else 0.01)).to(dtype)
                os.pwrite(f.fileno(), block.numpy().tobytes() if dtype != torch.bfloat16 else
                          block.view(torch.int16).numpy().tobytes(), offset + done * block.element_size())
                done += m


def write_files(root: Path, small: bool = False) -> dict[str, Path]:
    """The 7B official layout with random weights (see the module docstring); `small`: the same files for a
    mid-size LLaMA (dim 2048, 4 layers, vocabulary 32,000) and tiny ImageBind trunks (a dry run, in seconds)."""
    from ibllm_agent.card import ModelCard
    from ibllm_agent.checkpoint import ADAPTER_ONLY_LLAMA_KEY, FROZEN_LLAMA_KEY
    from ibllm_agent.imagebind.model import ImageBindModel, imagebind_huge_args, imagebind_tiny_args
    from ibllm_agent.llama.tokenizer import Tokenizer
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.presets import LLAMA_PRESETS, llama_args

    root.mkdir(parents=True, exist_ok=True)
    llama_dir = root / "llama"
    (llama_dir / "7B").mkdir(parents=True, exist_ok=True)
    (llama_dir / "tokenizer.model").write_bytes(tokenizer_proto())
    preset = "mid" if small else "7B"
    (llama_dir / "7B" / "params.json").write_text(json.dumps({**LLAMA_PRESETS[preset], "vocab_size": -1}))
    tokenizer = Tokenizer(llama_dir / "tokenizer.model")
    args = llama_args(preset, vocab_size=tokenizer.n_words)
    ib_args = imagebind_tiny_args() if small else imagebind_huge_args()
    model = ImageBindLLM(args, tokenizer, ib_args, query_layer=args.n_layers, device="meta", card=ModelCard())
    sd = model.state_dict()  # official names, meta tensors: shapes only

    def init(key: str) -> str:
        if key.endswith("norm.weight") or "_norm_" in key:
            return "ones"
        if key.endswith(".bias") or key.endswith(".gate") or "lora" in key:
            return "small"
        return "normal"

    t = time.perf_counter()
    meta_keys = {k.removeprefix("llama."): (tuple(v.shape), torch.float16, init(k)) for k, v in sd.items()
                 if k.startswith("llama.") and not ADAPTER_ONLY_LLAMA_KEY.match(k.removeprefix("llama."))}
    write_skeleton_then_fill(llama_dir / "7B" / "consolidated.00.pth", meta_keys, seed=1)
    print(f"  consolidated.00.pth: {len(meta_keys)} tensors in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    adapter = {k: (tuple(v.shape), torch.float32, init(k)) for k, v in sd.items()
               if not k.startswith("image_bind.") and not FROZEN_LLAMA_KEY.match(k)}
    adapter_tmp = root / "adapter_flat.pth"
    write_skeleton_then_fill(adapter_tmp, adapter, seed=2)
    # the official file wraps the state dict as {"model": ...}: re-save from the mapping (float32, 2.5 GB)
    torch.save({"model": torch.load(adapter_tmp, mmap=True, weights_only=True)}, root / "7B.pth")
    adapter_tmp.unlink()
    print(f"  7B.pth: {len(adapter)} tensors in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    torch.manual_seed(3)
    imagebind = ImageBindModel(ib_args)  # real buffers; default random init, float32 (4.8 GB for huge)
    torch.save(imagebind.state_dict(), root / "imagebind_w3D.pth")
    del imagebind
    print(f"  imagebind_w3D.pth in {time.perf_counter() - t:.0f} s", flush=True)
    from PIL import Image

    g = torch.Generator().manual_seed(4)
    pixels = (torch.rand(480, 640, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(root / "picture.png")
    return {"llama_dir": llama_dir, "adapter": root / "7B.pth", "imagebind": root / "imagebind_w3D.pth",
            "picture": root / "picture.png"}


def quantize_folder(root: Path, scheme: str) -> dict:
    """`ibllm quantize` into root/<scheme>, in a process of its own; its time and peak RSS."""
    out = root / scheme
    code = ("import resource, sys, time; from ibllm_agent.cli import main; t = time.perf_counter(); "
            "rc = main(sys.argv[1:]); "
            "print('STATS', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); "
            "sys.exit(rc)")
    cmd = [sys.executable, "-c", code, "quantize", str(root / "llama"), str(out), "--quantize", scheme,
           "--adapter", str(root / "7B.pth"), "--imagebind", str(root / "imagebind_w3D.pth")]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds, peak = next(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("STATS"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": float(seconds), "peak_rss": int(peak), "bytes": size}


# ----- 3. one measuring process ------------------------------------------------------------------------

def files_for(root: Path, precision: str) -> dict:
    if precision in ("int8", "int4"):
        folder = root / precision
        return {"name": str(folder / "adapter.safetensors"), "llama_dir": str(folder),
                "imagebind_ckpt": str(folder / "imagebind.safetensors"), "quantize": None}
    quantize = {"int8-at-load": "int8", "int4-at-load": "int4"}.get(precision)
    return {"name": str(root / "7B.pth"), "llama_dir": str(root / "llama"),
            "imagebind_ckpt": str(root / "imagebind_w3D.pth"), "quantize": quantize}


@torch.inference_mode()
def measure(root: Path, precision: str, steps: int, batches: list[int]) -> dict:
    import ibllm_agent
    from ibllm_agent.generation import format_prompt
    from ibllm_agent.media import load_media
    from ibllm_agent.params import GenerationParams

    # the copy bandwidth first: its two 256 MiB buffers must not count in the model's peak RSS
    src = torch.ones(1 << 26)
    dst = torch.empty_like(src)
    copies = []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - t)
    copy_gbps = 2 * src.numel() * 4 / statistics.median(copies) / 1e9
    del src, dst
    files = files_for(root, precision)
    t = time.perf_counter()
    model = ibllm_agent.load(files["name"], files["llama_dir"], imagebind_ckpt=files["imagebind_ckpt"], device="cpu",
                             dtype="bfloat16", quantize=files["quantize"], max_seq_len=512)
    out = {"precision": precision, "load_s": time.perf_counter() - t, "peak_rss_load": peak_rss(),
           "rss_after_load": rss_now(), "placement": model.card.placement, "quantize": model.card.quantize}
    prompt = format_prompt(PROMPT)
    generation = GenerationParams(max_tokens=steps + 2, temperature=0.0)
    # time to first token of an image question: decode the file, ImageBind-huge, bind network, prefill, argmax
    ttft = []
    for _ in range(2):
        t = time.perf_counter()
        feature = model.encode([load_media(str(root / "picture.png"), "image")])[0]
        decoder, _, _ = model.start([prompt], feature, generation, visual_cache=False)
        first = int(decoder._logits.argmax(-1)[0])
        ttft.append(time.perf_counter() - t)
    out["ttft_s"], out["ttft_first_s"], out["first_token"] = ttft[-1], ttft[0], first
    out["prompt_tokens"] = len(model.tokenizer.encode(prompt, bos=True, eos=False))
    for b in batches:
        decoder, _, _ = model.start([prompt] * b, feature, generation, visual_cache=False)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            decoder.step()
            times.append(time.perf_counter() - t)
        out[f"step_s_b{b}"] = statistics.median(times[1:])
        out[f"tok_s_b{b}"] = b / out[f"step_s_b{b}"]
        del decoder
    weights = sum(t.numel() * t.element_size() for t in list(model.llama.parameters()) + list(model.llama.buffers())
                  if t is not model.llama.tok_embeddings.weight)
    out["llama_bytes_per_step"] = weights
    out["copy_GBps"] = copy_gbps
    out["bound_fraction_b1"] = weights / out["step_s_b1"] / (out["copy_GBps"] * 1e9)
    out["rss_steady"] = rss_now()
    out["peak_rss_all"] = peak_rss()
    return out


def run_child(root: Path, precision: str, steps: int, batches: list[int], small: bool = False) -> dict:
    need = 1e9 if small else NEED_GB.get(precision, 8.0) * 1e9
    waited = 0
    while mem_available() < need and waited < 600:
        time.sleep(10)
        waited += 10
    if mem_available() < need:  # never push a shared machine into swapping or the OOM killer
        return {"precision": precision, "error": f"only {mem_available() / 1e9:.1f} GB available, "
                                                 f"{need / 1e9:.1f} GB wanted: not run"}
    load = os.getloadavg()
    cmd = [sys.executable, __file__, "--child", precision, "--dir", str(root), "--steps", str(steps),
           "--batches", *map(str, batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"precision": precision, "error": proc.stderr[-2000:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_average_before"] = load
    row["mem_available_before"] = mem_available()
    return row


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    keys = [k for k in ok[0] if isinstance(ok[0][k], (int, float)) and not isinstance(ok[0][k], bool)] if ok else []
    return {"runs": len(ok), "errors": [r["error"] for r in rows if "error" in r],
            **{k: statistics.median(r[k] for r in ok) for k in keys}}


def table(summary: dict[str, dict]) -> str:
    head = ("| precision | load | peak RSS | steady RSS | TTFT (image question) | decode b1 | decode b8 | "
            "b1 vs bf16 | bound fraction b1 |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    base = summary.get("bf16", {}).get("tok_s_b1")
    for p, s in summary.items():
        if not s.get("runs"):
            continue
        ratio = f"{s['tok_s_b1'] / base:.2f}x" if base else "-"
        lines.append(f"| {p} | {s['load_s']:.0f} s | {s['peak_rss_all'] / 1e9:.1f} GB | {s['rss_steady'] / 1e9:.1f} GB "
                     f"| {s['ttft_s']:.1f} s | {s['tok_s_b1']:.2f} tok/s | {s.get('tok_s_b8', 0):.2f} tok/s | {ratio} "
                     f"| {s['bound_fraction_b1']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("/tmp/ibllm-7b"))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                   choices=[*PRECISIONS, "int8-at-load", "int4-at-load"])
    p.add_argument("--at-load", action="store_true", help="also measure quantising while loading (one run each)")
    p.add_argument("--reps", type=int, default=3, help="fresh processes per precision (the table gives medians)")
    p.add_argument("--steps", type=int, default=12, help="decode steps per batch size")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--skip-write", action="store_true",
                   help="reuse the files in --dir (its int8/int4 folders too, when present) and keep them")
    p.add_argument("--keep", action="store_true", help="keep the files (~32 GB) afterwards")
    p.add_argument("--json", type=Path)
    p.add_argument("--small", action="store_true", help="dry run: a mid-size LLaMA and tiny ImageBind (seconds)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.dir, args.child, args.steps, args.batches)))
        return 0

    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_name(), "runs": {}}
    try:
        if not args.skip_write:
            print(f"writing 7B-shaped files into {args.dir} ...", flush=True)
            t = time.perf_counter()
            write_files(args.dir, small=args.small)
            report["write_s"] = time.perf_counter() - t
        for scheme in ("int8", "int4"):
            if scheme in args.precisions and not (args.dir / scheme / "7B").is_dir():
                print(f"ibllm quantize -> {scheme} ...", flush=True)
                report[f"quantize_{scheme}"] = quantize_folder(args.dir, scheme)
                print(f"  {report[f'quantize_{scheme}']}", flush=True)
        precisions = list(args.precisions) + (["int8-at-load", "int4-at-load"] if args.at_load else [])
        # round by round (each precision once per round), so that a run cut short still has every precision,
        # and a machine whose load drifts during the hour weighs on all precisions alike
        for r in range(args.reps):
            for precision in precisions:
                if r and precision.endswith("at-load"):
                    continue  # measured once
                row = run_child(args.dir, precision, args.steps, args.batches, args.small)
                report["runs"].setdefault(precision, []).append(row)
                shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                         if k in ("load_s", "ttft_s", "tok_s_b1", "tok_s_b8", "peak_rss_all", "rss_steady", "error",
                                  "load_average_before")}
                print(f"{precision} round {r + 1}/{args.reps}: {shown}", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(report, indent=1))
        report["summary"] = {p: summarise(rows) for p, rows in report["runs"].items()}
        print(table(report["summary"]))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    finally:
        if not args.keep and args.dir.exists() and not args.skip_write:
            shutil.rmtree(args.dir)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    sys.exit(main())
