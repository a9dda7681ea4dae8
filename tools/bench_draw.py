"""Time to draw one picture (`ibllm draw`'s path): the toy decoder on the CPU, or Stable unCLIP at 512 px.

    python tools/bench_draw.py                                     # the toy: examples/rain.wav, 20 pictures
    python tools/bench_draw.py --model 7B --llama-dir /data/llama --unclip-dir /data/sd-2-1-unclip \
        --device cuda --size 512 --steps 20                        # the official path, on a GPU

Reports the median and best of `--repeats` pictures, split into the conditioning vector (ImageBind on the
decoded input, `model.image_embedding`) and the drawing (generator + PNG). The input is decoded once, as
a server or a notebook holding it would. One run on a shared machine: compare numbers of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import torch

    import ibllm_agent
    from ibllm_agent.image_generation import attach_unclip, generate_image, generator_for
    from ibllm_agent.media import load_media
    from ibllm_agent.params import DrawParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--llama-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--unclip-dir", default=None, help="local Stable unCLIP folder (official weights)")
    parser.add_argument("--input", type=Path, default=ROOT / "examples" / "rain.wav")
    parser.add_argument("--size", type=int, default=None, help="picture side (default: the generator's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = ibllm_agent.load(args.model, llama_dir=args.llama_dir, device=args.device)
    if args.unclip_dir:
        attach_unclip(model, args.unclip_dir)
    generator = generator_for(model)
    media = load_media(args.input)
    params = DrawParams(steps=args.steps, seed=0, height=args.size, width=args.size)
    generate_image(model, [media], "a photo", params, visual_cache=False)  # warm-up (lazy loads, kernels)
    vector_s, total_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        vector = model.image_embedding([media], False)
        t1 = time.perf_counter()
        generate_image(model, vector, "a photo", params).png_bytes()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        vector_s.append(t1 - t0)
        total_s.append(t2 - t0)
    side = args.size or "default"
    result = {"model": args.model, "generator": generator.name, "device": args.device, "size": side,
              "steps": args.steps, "threads": args.threads, "repeats": args.repeats,
              "load_average_1m": os.getloadavg()[0],
              "vector_ms": {"median": 1000 * statistics.median(vector_s), "best": 1000 * min(vector_s)},
              "picture_ms": {"median": 1000 * statistics.median(total_s), "best": 1000 * min(total_s)}}
    print(f"{generator.name} on {args.device} ({side} px, {args.threads} threads, load {result['load_average_1m']:.1f}): "
          f"one picture {result['picture_ms']['median']:.0f} ms median, {result['picture_ms']['best']:.0f} ms best "
          f"(of which the conditioning vector {result['vector_ms']['median']:.0f} ms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
