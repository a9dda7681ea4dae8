"""Evaluate the toy model on held-out samples of the toy world and print the README table.

    python tools/eval_toy.py                       # the shipped model (ibllm_agent/assets/toy)
    python tools/eval_toy.py --toy-dir /tmp/toy --per-concept 10
    python tools/eval_toy.py --quantize int4       # the same table with int4 weights (compare with float32)

Per input modality: the share of answers to "What is this?" that name the right concept, with the
visual cache off and on; top-1 retrieval of a held-out image of the same concept; the modality gap
(mean cosine to same-concept vs other-concept image embeddings). Then a deliberately hard setting
(audio embeddings offset along a fixed direction) with the cache off and on, and a mixture check (an
image of concept A fused with a sound of concept B as the audio weight grows). Also the load time and
the time of one short answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_toy(toy_dir: Path | None, quantize: str | None = None, dtype: str | None = None):
    """`ibllm_agent.load("toy", knn=True)`, or the same files from another build folder; `quantize` / `dtype`
    as `load` (the table of a quantised toy, to compare with float32's)."""
    import ibllm_agent
    from ibllm_agent.factory import build_from_files
    from ibllm_agent.pretrained import toy_files

    if toy_dir is None:
        return ibllm_agent.load("toy", knn=True, quantize=quantize, dtype=dtype)
    files = toy_files(toy_dir)
    return build_from_files(files.adapter, files.llama_dir, files.llama_type, imagebind_ckpt=files.imagebind,
                            knn_index=files.knn_index, name="toy", is_toy=True, quantize=quantize, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-dir", type=Path, default=None, help="a build folder (default: the shipped toy)")
    parser.add_argument("--per-concept", type=int, default=10, help="held-out samples per concept and modality")
    parser.add_argument("--video-per-concept", type=int, default=8)
    parser.add_argument("--hard-strength", type=float, default=5.0,
                        help="norm of the perturbation added to each unit audio embedding (5: large enough that "
                             "the shared offset costs answers)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantize", choices=["int8", "int4"], help="LLaMA's linear weights quantised")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default float32")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    from ibllm_agent.generation import format_prompt
    from ibllm_agent.train.toy_eval import evaluate, table

    t0 = time.perf_counter()
    model = load_toy(args.toy_dir, args.quantize, args.dtype)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate_batch([format_prompt("What is this?")], None, max_tokens=16, temperature=0.0)
    answer_s = time.perf_counter() - t0
    report = evaluate(model, per_concept=args.per_concept, video_per_concept=args.video_per_concept,
                      hard_strength=args.hard_strength)
    print(table(report))
    print(f"\nload {load_s:.2f} s, one short answer (16 tokens, text only) {answer_s:.2f} s, "
          f"evaluation {report.seconds:.0f} s; held-out world seed, {args.per_concept} samples per concept "
          f"({args.video_per_concept} videos)")
    if args.json:
        args.json.write_text(json.dumps({
            "load_seconds": load_s, "answer_seconds": answer_s,
            "results": {m: r.__dict__ for m, r in report.results.items()},
            "hard": report.hard, "mixture": report.mixture}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
