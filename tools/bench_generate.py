"""Decoding speed of ImageBind-LLM against the memory-bandwidth bound, and loading memory.

    python tools/bench_generate.py                       # parity model (if built) + mid-size random model
    python tools/bench_generate.py --parity-dir DIR --bf16 --json out.json
    python tools/bench_generate.py --only parity --grammar       # cost of grammar-constrained decoding

For each model: prefill tokens/s, decode tokens/s at batch 1 and batch 8, and the fraction of the
bandwidth bound at batch 1 = (LLaMA weight bytes read per decode step / time per step) / copy
bandwidth, the copy bandwidth measured in the same run as (bytes read + bytes written) / time of a
1 GiB tensor copy. All variants (batch 1, batch 8, bf16) and the copy run interleaved, repetition by
repetition, so a change of load hits them alike; each figure is given as the median and the best of
its repetitions (use "best" on a shared, noisy machine). For the parity model the load also runs in
a fresh process to report its peak RSS against the size of the weights.

With --grammar: the time per decoded token at batch 1 through the real decode path (`ImageBindLLM.start` and
`Decoder.step`), free against grammar-constrained (a JSON Schema whose string keeps nearly every token
allowed, the widest mask, and a tool call), interleaved repetition by repetition; median and best.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibllm_agent.llama.model import Transformer  # noqa: E402


def copy_seconds(src: torch.Tensor, dst: torch.Tensor) -> float:
    t = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - t


def step_bytes(llama: Transformer) -> int:
    """Weight bytes one decode step reads: every parameter except the embedding table (one row each), and the
    buffers (a quantised layer's weights and scales)."""
    return sum(t.numel() * t.element_size() for t in [*llama.parameters(), *llama.buffers()]
               if t is not llama.tok_embeddings.weight)


@torch.inference_mode()
def run_once(llama: Transformer, adapter, batch: int, prompt_len: int, steps: int, *, graph: bool = False,
             compile: bool = False) -> tuple[float, list[float]]:
    """Seconds of one prefill of `prompt_len` tokens and of each of `steps` decode steps, at `batch`;
    on CUDA the steps may replay a CUDA graph (`graph`, compiled first with `compile`), as `generate` does."""
    device = llama.tok_embeddings.weight.device
    dtype = llama.tok_embeddings.weight.dtype
    adapter = [None if a is None else a.to(dtype).expand(batch, -1, -1, -1).contiguous() for a in adapter]
    tokens = torch.randint(0, llama.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    cache = llama.new_cache(batch, prompt_len + steps)
    t = time.perf_counter()
    logits = llama(tokens.to(device), cache, adapter, last_only=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    prefill = time.perf_counter() - t
    if graph:
        from ibllm_agent.llama.cuda_graphs import GraphedDecodeStep

        step = GraphedDecodeStep(llama, cache, adapter, compile=compile)
    else:
        def step(nxt):
            return llama(nxt[:, None], cache, adapter, last_only=True)
    decode = []
    for _ in range(steps):
        nxt = logits.argmax(-1)
        t = time.perf_counter()
        logits = step(nxt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        decode.append(time.perf_counter() - t)
    return prefill, decode


def bench_model(label: str, model, *, prompt_len: int, steps: int, reps: int, bf16: bool) -> dict:
    """All variants interleaved rep by rep (with a 1 GiB copy each rep), so load changes hit them alike.

    Reported: median and best (min) of each; the bound fractions use the same statistic for the step
    time and the copy bandwidth."""
    llama = model.llama
    with torch.inference_mode():
        vq = model.bind(torch.randn(1, model.feature_dim))
        adapter = llama.adapter_values(model.adapter_queries(vq))
    variants = {"b1": (llama, 1), "b8": (llama, 8)}
    if bf16 and model.device.type == "cpu":
        variants["b1_bf16"] = (copy.deepcopy(llama).to(torch.bfloat16), 1)
    src = torch.ones((1 << 30) // 4)
    dst = torch.empty_like(src)
    for m, batch in variants.values():
        run_once(m, adapter, batch, 8, 2)  # warm-up: page in mmap'd weights, allocator, kernels
    copies, prefill, steps_s = [], {k: [] for k in variants}, {k: [] for k in variants}
    for _ in range(reps):
        copies.append(copy_seconds(src, dst))
        for key, (m, batch) in variants.items():
            p, d = run_once(m, adapter, batch, prompt_len, steps)
            prefill[key].append(p)
            steps_s[key].extend(d)
    bw = {"median": 2 * src.numel() * 4 / statistics.median(copies), "best": 2 * src.numel() * 4 / min(copies)}
    row = {"model": label, "weight_bytes_per_step": step_bytes(llama), "copy_GBps": {k: v / 1e9 for k, v in bw.items()}}
    for stat, fn in (("median", statistics.median), ("best", min)):
        r = {"prefill_tok_s_b1": prompt_len / fn(prefill["b1"])}
        for key, (m, batch) in variants.items():
            step = fn(steps_s[key])
            r[f"decode_tok_s_{key}"] = batch / step
            r[f"bound_fraction_{key}"] = step_bytes(m) / step / bw[stat]
        r["b8_over_b1"] = r["decode_tok_s_b8"] / r["decode_tok_s_b1"]
        if "b1_bf16" in variants:
            r["bf16_over_fp32"] = r["decode_tok_s_b1_bf16"] / r["decode_tok_s_b1"]
        row[stat] = r
    return row


def load_parity(parity_dir: Path):
    import ibllm_agent

    return ibllm_agent.load(str(parity_dir / "adapter.pth"), str(parity_dir / "llama"),
                            imagebind_ckpt=str(parity_dir / "imagebind.pth"), dtype="float32")


def measure_load(parity_dir: Path) -> dict:
    """Run in a fresh process: peak RSS of the load itself, then after every weight was touched."""
    t = time.perf_counter()
    model = load_parity(parity_dir)
    seconds = time.perf_counter() - t
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with torch.inference_mode():
        checksum = sum(float(t.float().sum()) for t in model.state_dict().values())  # page in every tensor
    peak_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"load_s": seconds, "weights_bytes": weights, "peak_rss_load": peak_load, "peak_rss_touched": peak_all,
            "load_over_weights": peak_load / weights, "touched_over_weights": peak_all / weights,
            "checksum_finite": checksum == checksum}


GRAMMARS = {
    "json_long_string": {"type": "object", "required": ["text"], "additionalProperties": False,
                         "properties": {"text": {"type": "string", "minLength": 400}}},
    "tool_call": {"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                  "properties": {"name": {"const": "lookup"}, "arguments": {
                      "type": "object", "required": ["items"], "additionalProperties": False,
                      "properties": {"items": {"type": "array", "minItems": 60, "items": {"type": "integer"}}}}}},
}
"""Schemas that stay open for every step measured (the answer cannot end early)."""


def _timed(fn, sink: list):
    def wrapper(*args):
        t = time.perf_counter()
        out = fn(*args)
        sink.append(time.perf_counter() - t)
        return out
    return wrapper


@torch.inference_mode()
def bench_grammar(label: str, model, *, prompt_len: int, steps: int, reps: int) -> dict:
    """Per-token time at batch 1, free vs each constraint. Each repetition starts one decoder per variant and
    steps them in turn, token by token (the order rotating), so load changes hit them alike; the grammar's own
    work in a step (the mask and advancing the state) is timed inside the decoder as well."""
    from ibllm_agent.grammar import Constraint
    from ibllm_agent.params import GenerationParams

    prompt = [model.tokenizer.bos_id] + torch.randint(
        3, model.tokenizer.n_words, (prompt_len - 1,), generator=torch.Generator().manual_seed(0)).tolist()
    variants = {"free": GenerationParams(max_tokens=steps + 1, temperature=0.0)}
    for name, schema in GRAMMARS.items():
        variants[name] = GenerationParams(max_tokens=steps + 1, temperature=0.0,
                                          constraint=Constraint.json_schema(schema))
    times = {k: [] for k in variants}
    grammar = {k: [] for k in variants}
    for rep in range(reps + 1):  # the first is a warm-up (pages, allocator, the engine's tokenizer)
        decoders = {}
        for key, params in variants.items():
            decoder, _, _ = model.start([prompt], None, params)
            decoder._masked_logits = _timed(decoder._masked_logits, grammar[key])
            decoder._accept = _timed(decoder._accept, grammar[key])
            decoders[key] = decoder
        keys = list(variants)
        for step in range(steps):
            for key in keys[step % len(keys):] + keys[:step % len(keys)]:
                t = time.perf_counter()
                decoders[key].step()
                if rep:
                    times[key].append(time.perf_counter() - t)
                if decoders[key].done:
                    raise RuntimeError(f"{key}: the answer ended after {step + 1} steps; the benchmark needs {steps}")
        if not rep:
            grammar = {k: [] for k in variants}
    row = {"model": label, "vocab": model.tokenizer.n_words, "steps": steps, "reps": reps}
    for stat, fn in (("median", statistics.median), ("best", min)):
        free = fn(times["free"])
        row[stat] = {"free_ms_per_token": free * 1e3}
        for key in GRAMMARS:
            row[stat][f"{key}_ms_per_token"] = fn(times[key]) * 1e3
            row[stat][f"{key}_overhead"] = fn(times[key]) / free - 1
    per_token = {k: sum(v) / len(times[k]) for k, v in grammar.items()}  # mask + accept, per decoded token
    row["grammar_ms_per_token"] = {k: per_token[k] * 1e3 for k in GRAMMARS}
    row["grammar_share_of_free_step"] = {k: (per_token[k] - per_token["free"]) / statistics.median(times["free"])
                                         for k in GRAMMARS}
    return row


def mid_model():
    """A random mid-size model (LLaMA dim 2048, 4 layers, vocab 32000, all layers adapted)."""
    from ibllm_agent.card import ModelCard
    from ibllm_agent.imagebind.model import imagebind_tiny_args
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.presets import llama_args, tiny_tokenizer

    args = llama_args("mid", vocab_size=32000, max_seq_len=1024)
    torch.manual_seed(0)
    model = ImageBindLLM(args, tiny_tokenizer(), imagebind_tiny_args(), query_layer=args.n_layers,
                         card=ModelCard(name="mid"))
    with torch.no_grad():
        for layer in model.llama.layers:
            layer.attention.gate.normal_(0, 0.3)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parity-dir", type=Path, default=Path("/tmp/ibllm-parity"))
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="decode steps per repetition")
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--bf16", action="store_true", help="also time bfloat16 weights on CPU")
    p.add_argument("--skip-load", action="store_true", help="do not measure the loading RSS")
    p.add_argument("--only", choices=["parity", "mid"], help="benchmark one model")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--grammar", action="store_true",
                   help="only the cost of grammar-constrained decoding (batch 1, free vs constrained)")
    p.add_argument("--tokenizer", type=Path, help="with --grammar: a SentencePiece model for the mid model (its 32000 "
                   "logits; the default tokenizer has 320 pieces), e.g. a 32,000-piece one")
    p.add_argument("--measure-load", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure_load:
        print(json.dumps(measure_load(args.parity_dir)))
        return 0

    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "models": []}
    have_parity = (args.parity_dir / "adapter.pth").is_file()
    if have_parity and not args.skip_load and args.only != "mid" and not args.grammar:
        out = subprocess.run([sys.executable, __file__, "--measure-load", "--parity-dir", str(args.parity_dir)],
                             check=True, capture_output=True, text=True).stdout
        results["load"] = json.loads(out.strip().splitlines()[-1])
        print(f"load (fresh process): {results['load']['load_s']:.1f} s, peak RSS "
              f"{results['load']['peak_rss_load'] / 1e9:.2f} GB = {results['load']['load_over_weights']:.2f} x weights "
              f"({results['load']['weights_bytes'] / 1e9:.2f} GB); after touching every weight "
              f"{results['load']['touched_over_weights']:.2f} x")
    models = []
    if have_parity and args.only != "mid":
        models.append(("parity (dim 4096, 2 layers)", load_parity))
    elif args.only == "parity":
        raise SystemExit(f"{args.parity_dir} has no parity fixtures")
    if args.only != "parity":
        models.append(("mid (dim 2048, 4 layers, random)", lambda _: mid_model()))
    for label, make in models:
        model = make(args.parity_dir)
        if args.grammar and args.tokenizer and label.startswith("mid"):
            from ibllm_agent.llama.tokenizer import Tokenizer

            model.tokenizer = Tokenizer(args.tokenizer)
            label += f", tokenizer {args.tokenizer.name}"
        elif args.grammar and model.tokenizer.n_words != model.llama.vocab_size:
            raise SystemExit(f"{label}: {model.llama.vocab_size} logits but {model.tokenizer.n_words} pieces; "
                             "give --tokenizer")
        if args.grammar:
            row = bench_grammar(label, model, prompt_len=args.prompt_len, steps=args.steps, reps=args.reps)
        else:
            row = bench_model(label, model, prompt_len=args.prompt_len, steps=args.steps, reps=args.reps,
                              bf16=args.bf16)
        row["load_average"] = os.getloadavg()
        results["models"].append(row)
        print(json.dumps(row, indent=1))
        del model
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
