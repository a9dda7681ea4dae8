"""Build the embedded `toy` model from a seed, with the project's own training code.

    python tools/build_toy_model.py                      # writes ibllm_agent/assets/toy/
    python tools/build_toy_model.py --out /tmp/toy --quick

Stages, as the ImageBind-LLM paper trains (DESIGN.md section 5), plus a small tool-use skill (synthetic
tool calls, tool results and JSON answers in ChatImageBindLLM's prompt format: ibllm_agent/toy/tool_use.py)
in the language model's corpus and the instruction data:
 1. render the training split of the toy world (files through real encoders, read back by the loaders);
 2. bind tiny ImageBind encoders with InfoNCE: image <-> text (both trained), then, with the image
    encoder frozen and its embeddings computed once, audio -> image and point cloud -> image;
 3. train a SentencePiece tokenizer on the toy text and pretrain a tiny LLaMA on it;
 4. ImageBind-LLM pretraining on image-caption pairs (bind network, gates, prefix queries);
 5. instruction finetuning (LLaMA norms, biases, LoRA) on image questions and text-only questions;
 6. the visual cache: a FAISS IndexFlatIP of toy image features (the official knn.index layout).
The LLM sees only image features and text; audio, video and point clouds reach it only through the
shared embedding space. Output: the official file layout plus toy.json.

Intermediate results are cached under --work, so an interrupted build resumes at the stage it
stopped in. Same seed, same thread count, same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibllm_agent import toy  # noqa: E402
from ibllm_agent.structured import TOOL_CALL_TAG  # noqa: E402
from ibllm_agent.train.engine import TrainConfig, atomic_path  # noqa: E402

logger = logging.getLogger("build_toy_model")


@dataclass
class Recipe:
    """Sizes and step counts of one build."""

    images: int = 96
    """Training images per concept of the LLM phases, the cache and the audio/point targets."""
    encoder_images: int = 400
    """Training images per concept of image <-> text (a superset of the above: fewer let the tiny ViT
    memorise them, 99 % on its training pictures and 89 % on new ones)."""
    sounds: int = 48
    """Training sounds per concept (24 left a one-block audio encoder at 90 % top-1 to images)."""
    clouds: int = 48
    """Training point clouds per concept."""
    cache_images: int = 32
    """Images per concept in the visual cache (taken from the training images)."""
    vision_text_steps: int = 1000
    audio_steps: int = 500
    point_steps: int = 1500
    lm_steps: int = 400
    pretrain_steps: int = 400
    finetune_steps: int = 300
    llama: tuple = (("dim", 128), ("n_layers", 4), ("n_heads", 4), ("multiple_of", 32), ("norm_eps", 1e-6),
                    ("vocab_size", -1))
    vocab: int = 700


QUICK = Recipe(images=3, encoder_images=4, sounds=2, clouds=2, cache_images=2, vision_text_steps=3, audio_steps=3, point_steps=3,
               lm_steps=5, pretrain_steps=5, finetune_steps=5)


POINT_GROUPS = {"point_num_group": 64, "point_group_size": 16}
"""Point-Bind grouping of the toy: 64 centres x 16 neighbours (the official 512 x 32 costs 16x more per cloud)."""


def imagebind_args():
    """The toy ImageBind: the official input shapes (224 px, 128x204 fbank, 8192 points, CLIP text)
    and narrow trunks. The vision trunk is the widest and has a 16-pixel patch (197 tokens; 32-pixel
    patches or a single head confused shapes of the same colour: 89 % on held-out pictures, vs 97 %).
    Sizes the tensor shapes cannot tell ship in imagebind_config.json."""
    from ibllm_agent.imagebind.model import ImageBindArgs

    return ImageBindArgs(
        modalities=("vision", "text", "audio", "point"), kernel_size=(2, 16, 16),
        vision_embed_dim=96, vision_num_blocks=2, vision_num_heads=4,
        text_embed_dim=64, text_num_blocks=2, text_num_heads=1,
        audio_embed_dim=64, audio_num_blocks=2, audio_num_heads=2, audio_drop_path=0.0,
        point_embed_dim=64, point_num_blocks=2, point_num_heads=1, point_encoder_dims=32,
        point_encoder_widths=(16, 32, 64), point_pos_hidden=32, point_proj_dim=64, point_drop_path=0.0,
        point_num_group=POINT_GROUPS["point_num_group"], point_group_size=POINT_GROUPS["point_group_size"],
    )


def _cfg(work: Path, name: str, seed: int, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(work / name), seed=seed, progress=sys.stderr.isatty(), log_every=10, **kw)


def _cached(path: Path, build):
    if path.exists():
        logger.info("reusing %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    value = build()
    with atomic_path(path) as tmp:
        torch.save(value, tmp)
    return value


# ---------------------------------------------------------------------------------------------------
# 1-2. data and encoders
# ---------------------------------------------------------------------------------------------------


def render_data(world: toy.ToyWorld, recipe: Recipe, work: Path) -> dict:
    from ibllm_agent.imagebind.bpe import tokenize
    from ibllm_agent.train.toy_data import group_clouds, render_split

    def media():
        half = torch.float16
        images = render_split(world, "image", range(max(recipe.images, recipe.encoder_images)), work / "files", dtype=half)
        sounds = render_split(world, "audio", range(recipe.sounds), work / "files", dtype=half)
        texts = [(i, t) for i, c in enumerate(toy.CONCEPTS) for t in toy.captions(c) + toy.text_prompts(c)]
        return {
            "image": images.values, "image_label": images.labels,
            "image_path": [s.path for s in images.samples],
            "audio": sounds.values, "audio_label": sounds.labels,
            "text": tokenize([t for _, t in texts]), "text_label": torch.tensor([i for i, _ in texts]),
        }

    def clouds():
        # farthest point sampling and kNN grouping are deterministic: once per cloud, not per step
        split = render_split(world, "point", range(recipe.clouds), work / "files")
        args = imagebind_args()
        return {**group_clouds(split.values, args.point_num_group, args.point_group_size),
                "point_label": split.labels}

    data = _cached(work / "data.pt", media)
    # images are rendered index by index (all concepts at index 0, then 1, ...): the first rows are
    # indices 0 .. images-1 of every concept; image <-> text alone sees all of them
    data["encoder_image"], data["encoder_image_label"] = data["image"], data["image_label"]
    n = recipe.images * len(toy.CONCEPTS)
    data["image"], data["image_label"], data["image_path"] = (data["image"][:n], data["image_label"][:n],
                                                              data["image_path"][:n])
    grouped = _cached(work / "points.pt", clouds)
    data["point"] = {"groups": grouped["groups"], "centres": grouped["centres"]}
    data["point_label"] = grouped["point_label"]
    return data


def bind_encoders(data: dict, recipe: Recipe, work: Path, seed: int):
    """Each modality's stage is cached (the whole ImageBind state after it), so one can be redone alone."""
    from ibllm_agent.imagebind.model import ImageBindModel
    from ibllm_agent.train.bind_encoders import (
        ConceptPairs,
        PairedContrastive,
        ToImageContrastive,
        embed_all,
        random_crop_flip,
        random_rotation,
    )
    from ibllm_agent.train.engine import train

    torch.manual_seed(seed)
    ib = ImageBindModel(imagebind_args())
    image_emb = None

    def stage(name: str, run) -> None:
        path = work / f"encoders-{name}.pth"
        if path.exists():
            logger.info("reusing %s", path)
            ib.load_state_dict(torch.load(path, weights_only=True))
        else:
            run()
            with atomic_path(path) as tmp:
                torch.save(ib.state_dict(), tmp)

    def vision_text():
        # image <-> text: both sides learn; this makes the space every other modality is bound to
        pairs = ConceptPairs(data["encoder_image"], data["encoder_image_label"], data["text"], data["text_label"],
                             keys=("a", "b"), augment=random_crop_flip)
        train(PairedContrastive(ib, "vision", "text"), pairs,
              _cfg(work, "vision_text", seed, steps=recipe.vision_text_steps, batch_size=56, lr=2e-3,
                   warmup_steps=20, weight_decay=0.05), state_fn=ib.state_dict, name="image<->text")

    def audio():
        sounds = ConceptPairs(data["audio"], data["audio_label"], image_emb, data["image_label"], random_clip=True)
        train(ToImageContrastive(ib, "audio"), sounds,
              _cfg(work, "audio", seed, steps=recipe.audio_steps, batch_size=48, lr=2e-3, warmup_steps=20,
                   weight_decay=0.05), state_fn=ib.state_dict, name="audio->image")

    def point():
        # a fresh random 3D rotation of every cloud at every visit (the world rotates its shapes fully)
        clouds = ConceptPairs(data["point"], data["point_label"], image_emb, data["image_label"],
                              augment=random_rotation)
        train(ToImageContrastive(ib, "point"), clouds,
              _cfg(work, "point", seed, steps=recipe.point_steps, batch_size=32, lr=4e-3, warmup_steps=30,
                   weight_decay=0.05), state_fn=ib.state_dict, name="point->image")

    stage("vision_text", vision_text)
    image_emb = embed_all(ib, "vision", data["image"])  # the image encoder is frozen from here on
    stage("audio", audio)
    stage("point", point)
    ib.requires_grad_(False)
    return ib.eval()


# ---------------------------------------------------------------------------------------------------
# 3. tokenizer and language model
# ---------------------------------------------------------------------------------------------------


MAX_WORDS = 256
"""Tokens per training sample (prompt + answer) of the LM and the finetuning: a tool-use transcript with its
tool list and history takes up to ~210 in the rebuilt 700-piece vocabulary (160 cut 4 % of them)."""
TOKENIZER_SYMBOLS = (TOOL_CALL_TAG, "Response:")
"""Pieces the toy's tokenizer keeps whole. The Alpaca template appends the answer right after "### Response:";
BPE trained on the joined text merges across that boundary (":<", ':{"'), while at inference the prompt ends at
":" and the answer starts a new piece, so the first answer token of a tool call or a JSON answer was one the
model never saw there. Measured with the tool-use data: without these symbols the built toy never started a call
by itself (0 of 40 prompts, tool_choice auto); with them the language model alone did in 29 of 30. The tag
whole also makes a call's start one token."""
TOOL_SAMPLES = 1600
"""Tool-use transcripts (calls, text answers with tools listed, result reports) in the instruction data."""
JSON_SAMPLES = 300
"""Text-only questions answered in JSON."""


def structured_instructions(seed: int) -> list[dict[str, str]]:
    """The tool-use and JSON-answer records (Alpaca fields), the same in the LM's corpus and the finetuning."""
    from ibllm_agent.toy.tool_use import json_answer_instructions, tool_use_instructions

    return tool_use_instructions(seed, TOOL_SAMPLES) + json_answer_instructions(seed, JSON_SAMPLES)


def toy_text(seed: int = 0) -> list[str]:
    """The LM's corpus: the toy sentences, and the instruction data in the Alpaca prompt format (with the
    tool-use and JSON transcripts, so the tokenizer gets pieces for their format and the LM learns to copy)."""
    import random

    from ibllm_agent.generation import format_prompt
    from ibllm_agent.toy.tool_use import visual_json_instructions
    from ibllm_agent.train.datasets import PRETRAIN_INSTRUCTION

    lines = toy.corpus()
    rng = random.Random(seed)
    for c in toy.CONCEPTS:
        lines += [format_prompt(s["instruction"]) + s["output"] for s in toy.visual_instructions(c)]
        lines += [format_prompt(PRETRAIN_INSTRUCTION) + cap for cap in toy.captions(c)]
        lines += [format_prompt(s["instruction"], s["input"]) + s["output"]
                  for s in (visual_json_instructions(c, rng) for _ in range(8))]
    lines += [format_prompt(s["instruction"], s["input"]) + s["output"] for s in toy.text_instructions()]
    lines += [format_prompt(s["instruction"], s["input"]) + s["output"] for s in structured_instructions(seed)]
    return lines


def language_model(recipe: Recipe, work: Path, seed: int) -> tuple[Path, dict]:
    from ibllm_agent.llama.tokenizer import Tokenizer
    from ibllm_agent.train.language_model import pretrain_language_model, save_llama, train_tokenizer

    llama_dir, params = work / "llama", dict(recipe.llama)
    if (llama_dir / "toy" / "consolidated.00.pth").exists():
        logger.info("reusing %s", llama_dir)
        return llama_dir, params
    lines = toy_text(seed)
    tok_path = train_tokenizer(lines, llama_dir / "tokenizer.model", vocab_size=recipe.vocab,
                               user_defined_symbols=TOKENIZER_SYMBOLS)
    tokenizer = Tokenizer(tok_path)
    llama, _ = pretrain_language_model(lines, tokenizer, params,
                                       _cfg(work, "lm", seed, steps=recipe.lm_steps, batch_size=32, lr=3e-3,
                                            warmup_steps=30, weight_decay=0.05), max_words=MAX_WORDS)
    save_llama(llama, params, llama_dir, "toy")
    return llama_dir, params


# ---------------------------------------------------------------------------------------------------
# 4-5. ImageBind-LLM pretraining and finetuning
# ---------------------------------------------------------------------------------------------------


def image_features(ib, data: dict) -> dict[str, torch.Tensor]:
    """Path -> ImageBind image feature (post-processed as at inference), plus "" -> the zero image's."""
    from ibllm_agent.train.bind_encoders import embed_all

    feats = embed_all(ib, "vision", data["image"])
    out = {p: f for p, f in zip(data["image_path"], feats)}
    with torch.no_grad():
        zero = torch.zeros(1, 3, 224, 224)
        out[""] = ib({"vision": zero})["vision"][0]
    return out


def write_pretrain_meta(data: dict, work: Path, seed: int) -> Path:
    """A TSV in the upstream pretraining format: url <tab> caption, three captions per image."""
    import random

    rng = random.Random(seed)
    path = work / "pretrain.tsv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["url", "caption"])
        for p, label in zip(data["image_path"], data["image_label"].tolist()):
            for caption in rng.sample(toy.captions(toy.CONCEPTS[label]), 3):
                w.writerow([p, caption])
    return path


def write_finetune_meta(data: dict, work: Path, seed: int) -> list[Path]:
    """LLaVA-style JSON (an image + one question/answer; one in four answered in JSON under "Answer in JSON:"
    as the record's input) and Alpaca-style JSON (text-only questions, tool-use transcripts, JSON answers)."""
    import random

    from ibllm_agent.toy.tool_use import visual_json_instructions

    rng = random.Random(seed)
    llava = []
    for k, (p, label) in enumerate(zip(data["image_path"], data["image_label"].tolist())):
        for qa in rng.sample(toy.visual_instructions(toy.CONCEPTS[label]), 4):
            llava.append({"image": p, "conversations": [{"from": "human", "value": "<image>\n" + qa["instruction"]},
                                                        {"from": "gpt", "value": qa["output"]}]})
        if k % 4 == 0:
            qa = visual_json_instructions(toy.CONCEPTS[label], rng)
            llava.append({"image": p, "input": qa["input"], "conversations": [
                {"from": "human", "value": "<image>\n" + qa["instruction"]}, {"from": "gpt", "value": qa["output"]}]})
    alpaca = toy.text_instructions() * 4 + structured_instructions(seed)
    (work / "llava.json").write_text(json.dumps(llava))
    (work / "alpaca.json").write_text(json.dumps(alpaca))
    return [work / "llava.json", work / "alpaca.json"]


def toy_llm(phase: str, llama_dir: Path, params: dict, ib, *, seed: int, adapter: Path | None = None):
    """An ImageBindLLM for `phase` from the toy LLaMA files, the trained ImageBind and (for finetune)
    the pretrain adapter; the rest initialised as the reference does (see build_for_training)."""
    from ibllm_agent.train.adapter import build_for_training

    ib_path = write_imagebind(ib, llama_dir.parent)
    return build_for_training(llama_dir, "toy", ib_path, phase, adapter=adapter, seed=seed, max_seq_len=512)


def adapter_phases(data: dict, ib, llama_dir: Path, params: dict, recipe: Recipe, work: Path, seed: int) -> Path:
    from ibllm_agent.llama.tokenizer import Tokenizer
    from ibllm_agent.train.adapter import run_phase, save_adapter
    from ibllm_agent.train.datasets import FinetuneDataset, PretrainDataset

    final = work / "adapter.pth"
    if final.exists():
        logger.info("reusing %s", final)
        return final
    feats = image_features(ib, data)
    tokenizer = Tokenizer(llama_dir / "tokenizer.model")
    pre_path = work / "adapter-pretrain.pth"
    if not pre_path.exists():
        model = toy_llm("pretrain", llama_dir, params, ib, seed=seed)
        dataset = PretrainDataset([write_pretrain_meta(data, work, seed)], tokenizer, max_words=96, features=feats)
        run_phase(model, dataset, "pretrain", _cfg(work, "pretrain", seed, steps=recipe.pretrain_steps, batch_size=32,
                                                   lr=3e-3, warmup_steps=30, weight_decay=0.02))
        save_adapter(model, pre_path)
    model = toy_llm("finetune", llama_dir, params, ib, seed=seed, adapter=pre_path)
    dataset = FinetuneDataset(write_finetune_meta(data, work, seed), tokenizer, max_words=MAX_WORDS, features=feats)
    run_phase(model, dataset, "finetune", _cfg(work, "finetune", seed, steps=recipe.finetune_steps, batch_size=32,
                                               lr=3e-3, warmup_steps=30, weight_decay=0.02))
    save_adapter(model, final)
    return final


# ---------------------------------------------------------------------------------------------------
# 6. cache and output
# ---------------------------------------------------------------------------------------------------


def cache_items(recipe: Recipe, seed: int) -> list[dict]:
    """The cache's metadata, in its order: concept by concept, that concept's first `cache_images` training
    pictures, which are its images 0, 1, ... (render_split renders every concept at every index)."""
    return [{"modality": "image", "concept": c.name, "caption": toy.captions(c)[0], "seed": seed, "index": k}
            for c in toy.CONCEPTS for k in range(recipe.cache_images)]


def write_cache(ib, data: dict, recipe: Recipe, path: Path, seed: int) -> int:
    """knn.index (a flat inner-product index of unit image features) and its metadata sidecar."""
    from ibllm_agent.cache.faiss import FaissCache
    from ibllm_agent.train.bind_encoders import embed_all

    keep = torch.cat([(data["image_label"] == c).nonzero().flatten()[: recipe.cache_images]
                      for c in range(len(toy.CONCEPTS))])
    vectors = F.normalize(embed_all(ib, "vision", data["image"][keep]), dim=-1).numpy()
    FaissCache.from_vectors(vectors, metadatas=cache_items(recipe, seed)).save(path)  # written atomically
    return len(keep)


def label_cache(out: Path, recipe: Recipe, seed: int) -> Path:
    """Write the metadata sidecar of an already built knn.index, after checking that re-rendered,
    re-encoded pictures are the stored vectors at their positions (all of them: a few seconds)."""
    import tempfile

    import numpy as np

    from ibllm_agent.cache.faiss import FaissCache
    from ibllm_agent.factory import build_from_files
    from ibllm_agent.media import load_media
    from ibllm_agent.pretrained import toy_files

    files = toy_files(out)
    model = build_from_files(files.adapter, files.llama_dir, files.llama_type, imagebind_ckpt=files.imagebind)
    cache = FaissCache.load(files.knn_index, mmap=False)
    items = cache_items(recipe, seed)
    if len(items) != len(cache):
        raise SystemExit(f"{files.knn_index} holds {len(cache)} vectors, the recipe makes {len(items)}")
    stored = cache.get_vectors(0, len(cache))
    world = toy.ToyWorld(seed)
    with tempfile.TemporaryDirectory() as folder:
        for pos, item in enumerate(items):
            sample = world.write(item["concept"], "image", item["index"], Path(folder))
            v = model.encode([load_media(sample.path)])[0].numpy()
            scores = stored @ (v / np.linalg.norm(v))
            if scores.argmax() != pos or scores[pos] < 0.999:
                raise SystemExit(f"{item} is not cache item {pos} (cosine {scores[pos]:.4f}, nearest "
                                 f"{scores.argmax()}): the recipe or seed does not match this knn.index")
    FaissCache.from_vectors(stored, metadatas=items).save(files.knn_index)
    return files.knn_index


IMAGEBIND_CONFIG_KEYS = ("vision_num_heads", "text_num_heads", "audio_num_heads", "point_num_heads",
                         "point_num_group", "point_group_size")
"""Sizes the tensor shapes cannot tell: they ship in imagebind_config.json, which the loader reads."""


def write_imagebind(ib, folder: Path) -> Path:
    """imagebind.pth, the CLIP token table in float16 (its 49408 rows are most of the file and the toy
    text uses a few hundred of them; loading converts to the model dtype), and imagebind_config.json."""
    sd = ib.state_dict()
    key = "modality_preprocessors.text.token_embedding.weight"
    sd[key] = sd[key].half()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "imagebind.pth") as tmp:
        torch.save(sd, tmp)
    config = {k: getattr(ib.args, k) for k in IMAGEBIND_CONFIG_KEYS}
    with atomic_path(folder / "imagebind_config.json") as tmp:
        tmp.write_text(json.dumps({"kwargs": config}, indent=2) + "\n")
    return folder / "imagebind.pth"


def write_output(out: Path, work: Path, llama_dir: Path, ib, data: dict, recipe: Recipe, seed: int,
                 seconds: float) -> None:
    # Every file is written under a temporary name and renamed into place: a process that has the
    # previous files memory-mapped keeps reading those, never a half-rewritten file.
    out.mkdir(parents=True, exist_ok=True)
    staged = out / ".llama.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(llama_dir, staged, ignore=shutil.ignore_patterns("*.tmp"))
    if (out / "llama").exists():
        shutil.rmtree(out / "llama")  # unlinked files stay readable to whoever has them open
    staged.rename(out / "llama")
    with atomic_path(out / "adapter.pth") as tmp:
        shutil.copyfile(work / "adapter.pth", tmp)
    write_imagebind(ib, out)
    n_cache = write_cache(ib, data, recipe, out / "knn.index", seed)
    meta = {
        "name": "toy",
        "description": toy.WORLD_DESCRIPTION,
        "concepts": list(toy.CONCEPT_NAMES),
        "seed": seed,
        "llama_type": "toy",
        "llama_dir": "llama",
        "adapter": "adapter.pth",
        "imagebind": "imagebind.pth",
        "knn_index": "knn.index",
        "cache_vectors": n_cache,
        "recipe": {k: v for k, v in recipe.__dict__.items() if k != "llama"},
        "build_seconds": round(seconds),
        "built_with": "tools/build_toy_model.py",
    }
    with atomic_path(out / "toy.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


EXAMPLES = {"rain": "audio", "dog": "image", "bell": "audio", "car": "video", "drum": "point", "bird": "image"}
"""The README's example files: one toy-world sample each, from a seed the build never trains on."""
EXAMPLE_SEED = 2024


def write_examples(folder: Path) -> list[Path]:
    """examples/rain.wav, examples/dog.png, ... (`ibllm ask --audio examples/rain.wav "What do you hear?"`)."""
    world = toy.ToyWorld(EXAMPLE_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, modality in EXAMPLES.items():
        sample = world.write(name, modality, 0, folder)  # index 0: WAV for audio, ASCII PLY for points
        target = folder / f"{name}{Path(sample.path).suffix}"
        Path(sample.path).replace(target)
        written.append(target)
    return written


def _setup_process(threads: int) -> None:
    """Logging and torch threads, in the main process and in the language model's."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "ibllm_agent" / "assets" / "toy")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ibllm-toy-build"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads were 5x slower)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (tests)")
    parser.add_argument("--examples", type=Path, default=ROOT / "examples",
                        help="where to write the README's example files")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    parser.add_argument("--label-cache", action="store_true",
                        help="only write the metadata sidecar of the knn.index already in --out (checked first)")
    args = parser.parse_args(argv)
    _setup_process(args.threads)
    recipe = QUICK if args.quick else Recipe()
    if args.scale != 1.0:
        recipe = replace(recipe, **{k: max(1, int(getattr(recipe, k) * args.scale)) for k in recipe.__dict__
                                    if k.endswith("_steps")})
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.label_cache:
        logger.info("labelled %s", label_cache(args.out, recipe, args.seed))
        return 0
    t0 = time.perf_counter()
    # the language model needs nothing from the media side: it trains in a second process (one
    # thread each, so the result does not depend on the overlap) while the encoders are bound
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_setup_process, initargs=(args.threads,)) as pool:
        lm = pool.submit(language_model, recipe, work, args.seed)
        world = toy.ToyWorld(args.seed)
        data = render_data(world, recipe, work)
        logger.info("data ready (%.0f s)", time.perf_counter() - t0)
        ib = bind_encoders(data, recipe, work, args.seed)
        logger.info("encoders bound (%.0f s)", time.perf_counter() - t0)
        llama_dir, params = lm.result()
    logger.info("language model ready (%.0f s)", time.perf_counter() - t0)
    adapter_phases(data, ib, llama_dir, params, recipe, work, args.seed)
    logger.info("adapter trained (%.0f s)", time.perf_counter() - t0)
    write_output(args.out, work, llama_dir, ib, data, recipe, args.seed, time.perf_counter() - t0)
    write_examples(args.examples)
    logger.info("wrote %s and %s in %.0f s", args.out, args.examples, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
