"""Train the toy model's image decoder (toy ImageBind image embedding -> toy picture) and measure it.

    python tools/train_toy_decoder.py                  # trains, writes ibllm_agent/assets/toy/image_decoder.safetensors,
                                                       # names it in toy.json, prints the held-out table
    python tools/train_toy_decoder.py --eval-only      # the table for the decoder already there
    python tools/train_toy_decoder.py --quick --toy-dir /tmp/toy   # a few steps (tests)

Reads the shipped toy encoders and never changes them (the rest of the toy is not rebuilt). Seeded:
the same seed, thread count and encoders give the same decoder. The evaluation draws from held-out
inputs (world seed 1000, which no training stage uses) through the same path as `ibllm draw`: files
rendered by the toy world, read by the loaders, turned into the reference's unCLIP conditioning vector
(`ImageBindLLM.image_embedding`), decoded, written as PNG, read back, and classified zero-shot by the
toy's own encoders against the 14 captions ("a photo of rain.", ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("train_toy_decoder")
DECODER_FILE = "image_decoder.safetensors"


def toy_image_bind(toy_dir: Path):
    """The toy's ImageBind (float32, eval) and the digest of its vision branch."""
    from ibllm_agent.factory import read_imagebind
    from ibllm_agent.image_decoder import vision_digest
    from ibllm_agent.imagebind.model import ImageBindModel
    from ibllm_agent.pretrained import toy_files

    sd, args = read_imagebind(toy_files(toy_dir).imagebind)
    ib = ImageBindModel(args, device="meta")
    ib.load_state_dict(sd, strict=True, assign=True)
    return ib.float().eval(), vision_digest(sd)


def train(toy_dir: Path, recipe, *, out: Path | None = None) -> dict:
    """Train a decoder on the toy at `toy_dir`, write it beside the toy's files and name it in toy.json."""
    from ibllm_agent.image_decoder import save_decoder
    from ibllm_agent.train.engine import atomic_path
    from ibllm_agent.train.image_decoder import embed_pictures, render_pictures, train_decoder

    t0 = time.perf_counter()
    ib, digest = toy_image_bind(toy_dir)
    pixels, inputs, _ = render_pictures(recipe.world_seed, recipe.per_concept)
    embeddings = embed_pictures(ib, inputs)
    del inputs
    prep = time.perf_counter() - t0
    logger.info("%d training pictures rendered and embedded in %.0f s", len(pixels), prep)
    decoder, run = train_decoder(ib, pixels, embeddings, recipe)
    path = out or toy_dir / DECODER_FILE
    extra = {"recipe": asdict(recipe), "train_seconds": run["seconds"], "prepare_seconds": round(prep, 1),
             "threads": torch.get_num_threads(), "built_with": "tools/train_toy_decoder.py"}
    save_decoder(decoder, path, vision=digest, extra=extra)
    meta_path = toy_dir / "toy.json"
    meta = json.loads(meta_path.read_text())
    meta["image_decoder"] = path.name if path.parent == toy_dir else str(path)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %s (%d bytes, %d parameters) in %.0f s", path, path.stat().st_size, run["parameters"],
                time.perf_counter() - t0)
    return {"path": str(path), "bytes": path.stat().st_size, **run, "prepare_seconds": round(prep, 1)}


def main(argv: list[str] | None = None) -> int:
    from ibllm_agent.pretrained import TOY_DIR
    from ibllm_agent.train.image_decoder import DecoderRecipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-dir", type=Path, default=TOY_DIR, help="the toy model folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--per-concept", type=int, default=None, help="training pictures per concept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a few steps on a few pictures (tests)")
    parser.add_argument("--eval-only", action="store_true", help="only measure the decoder already in --toy-dir")
    parser.add_argument("--eval-per-concept", type=int, default=10, help="held-out inputs per concept and medium")
    parser.add_argument("--eval-video-per-concept", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--sheet", type=Path, default=None, help="write a PNG of drawn examples (a row per medium)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    recipe = DecoderRecipe(seed=args.seed)
    if args.quick:
        recipe = replace(recipe, per_concept=2, steps=4, warmup_steps=1, consistency_from=0.5)
    recipe = replace(recipe, **{k: v for k, v in (("steps", args.steps), ("per_concept", args.per_concept))
                                if v is not None})
    report: dict = {}
    if not args.eval_only:
        report["train"] = train(args.toy_dir, recipe)
    if not args.quick:
        from ibllm_agent.factory import build_from_files
        from ibllm_agent.pretrained import toy_files
        from ibllm_agent.train.image_decoder import drawing_table, evaluate_drawing, example_sheet

        files = toy_files(args.toy_dir)
        model = build_from_files(files.adapter, files.llama_dir, files.llama_type, imagebind_ckpt=files.imagebind,
                                 knn_index=files.knn_index, name="toy", is_toy=True)
        result = evaluate_drawing(model, per_concept=args.eval_per_concept,
                                  video_per_concept=args.eval_video_per_concept)
        print(drawing_table(result))
        print(f"\nmean {1000 * result['seconds_per_picture']:.1f} ms per picture (decode + PNG), evaluation "
              f"{result['seconds']:.0f} s; held-out world seed {result['seed']}")
        if args.sheet:
            example_sheet(result).save(args.sheet)
        report["eval"] = {k: v for k, v in result.items() if k != "examples"}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
