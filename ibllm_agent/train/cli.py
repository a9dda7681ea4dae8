"""`ibllm train pretrain|finetune`: the paper's two phases on the official data formats.

    ibllm train pretrain --llama-dir LLAMA --imagebind-ckpt imagebind_w3D.pth --data cc3m.tsv --output-dir out/pre
    ibllm train finetune --llama-dir LLAMA --imagebind-ckpt imagebind_w3D.pth --init out/pre/checkpoint-last.pth \\
        --data alpaca_gpt4_data.json llava_instruct_150k.json --output-dir out/ft
    torchrun --nproc_per_node 2 -m ibllm_agent.cli train finetune ...      # DDP (gloo on CPU, NCCL on GPU)

Options may also come from a JSON file (`--config`, the same names with underscores); the command line
wins. Checkpoints (`checkpoint-<step>.pth`, `checkpoint-last.pth`) are adapter files in the official
`{"model": ...}` layout: `ibllm ask --model out/ft/checkpoint-last.pth --llama-dir LLAMA ...` uses them.
The toy model is built by `python tools/build_toy_model.py` with the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

from ibllm_agent.train.engine import TrainConfig

logger = logging.getLogger(__name__)

_DEFAULTS = {"pretrain": {"max_words": 96, "lr": 1e-4}, "finetune": {"max_words": 512, "lr": 1e-4}}


def register(subparsers) -> None:
    """Add `train` with its `pretrain` and `finetune` subcommands to the `ibllm` parser."""
    train = subparsers.add_parser("train", help="train the adapter (pretrain on image-caption pairs, finetune on "
                                                "instructions)", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = train.add_subparsers(dest="phase", required=True)
    for phase, data_help in (("pretrain", "CSV/TSV files with url and caption columns"),
                             ("finetune", "JSON files: Alpaca (instruction/input/output) and/or LLaVA "
                                          "(image + conversations)")):
        p = phases.add_parser(phase, help=f"phase '{phase}'")
        p.add_argument("--config", type=Path, help="JSON file of options (the command line overrides it)")
        p.add_argument("--llama-dir", type=Path, help="folder with tokenizer.model and <type>/params.json + weights")
        p.add_argument("--llama-type", default=None, help="LLaMA subfolder (default 7B)")
        p.add_argument("--imagebind-ckpt", type=Path, help="ImageBind weights (imagebind_w3D.pth or imagebind_huge.pth)")
        p.add_argument("--init", type=Path, help="adapter to start from (e.g. the pretrain result for finetune)")
        p.add_argument("--data", type=Path, nargs="+", help=data_help)
        p.add_argument("--max-words", type=int, help="tokens per sample after padding/truncation")
        for f in fields(TrainConfig):
            if f.name in ("progress", "betas", "amp"):
                continue
            flag = "--" + f.name.replace("_", "-")
            kind = float if f.type in ("float", "float | None") else int if f.type == "int" else str
            p.add_argument(flag, type=kind, default=None, help=f"(default {f.default})")
        p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=cmd_train, train_phase=phase)


def _options(args) -> dict:
    opts = dict(_DEFAULTS[args.train_phase])
    opts.update({"llama_type": "7B"})
    if args.config:
        opts.update(json.loads(Path(args.config).read_text()))
    opts.update({k: v for k, v in vars(args).items() if v is not None and k not in ("func", "config", "phase")})
    for required in ("llama_dir", "imagebind_ckpt", "data"):
        if not opts.get(required):
            raise ValueError(f"--{required.replace('_', '-')} is required (or in --config)")
    return opts


def cmd_train(args) -> int:
    from ibllm_agent.train.adapter import build_for_training, run_phase
    from ibllm_agent.train.datasets import FinetuneDataset, PretrainDataset

    opts = _options(args)
    phase = args.train_phase
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in opts.items() if k in names})
    cfg.amp = not opts.get("no_amp", False)
    cfg.progress = not opts.get("no_progress", False)
    model = build_for_training(opts["llama_dir"], opts["llama_type"], opts["imagebind_ckpt"], phase,
                               adapter=opts.get("init"), seed=cfg.seed)
    dataset_cls = PretrainDataset if phase == "pretrain" else FinetuneDataset
    dataset = dataset_cls([Path(d) for d in opts["data"]], model.tokenizer, max_words=int(opts["max_words"]))
    logger.info("%s: %d samples from %s", phase, len(dataset), ", ".join(str(d) for d in opts["data"]))
    result = run_phase(model, dataset, phase, cfg)
    if result.checkpoint:
        print(f"{phase}: {result.step} steps, last loss {result.losses[-1]:.4f}; adapter: {result.checkpoint}")
    return 0
