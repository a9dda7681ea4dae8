"""Files -> a loaded `ImageBindLLM`, and back.

    load(name, llama_dir, llama_type, imagebind_ckpt, knn, knn_index, device, dtype, phase)   the reference's
    build_from_files(adapter, llama_dir, ..., imagebind_ckpt=...)                              the official layout
    save_official(model, out_dir)                                                             the inverse
    build_tiny()                                                                              random, for tests

`read_llama` and `read_imagebind` are the one prologue of every build (this one and the training
build in `train/adapter.py`): tokenizer + params.json + the LLaMA file (its sizes checked against the
tensors before anything is built), and the ImageBind state dict with its sizes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ibllm_agent import bind_network, placement
from ibllm_agent.card import ModelCard
from ibllm_agent.checkpoint import (
    ADAPTER_ONLY_LLAMA_KEY,
    FROZEN_LLAMA_KEY,
    LLAMA_FILE_IGNORED,
    CheckpointError,
    MappedStateDict,
    MissingFileError,
    adapter_sizes,
    load_into,
    load_state_dict,
    meta_tensors,
    release_pages,
)
from ibllm_agent.imagebind.model import ImageBindArgs, read_imagebind_config
from ibllm_agent.llama import quant
from ibllm_agent.llama.model import ModelArgs, check_llama_file, for_inference
from ibllm_agent.llama.tokenizer import Tokenizer
from ibllm_agent.model import ImageBindLLM

__all__ = ["build_from_files", "build_tiny", "llama_checkpoint_file", "load", "read_imagebind", "read_llama",
           "resolve_dtype", "resolve_placement", "save_official", "save_quantized"]

resolve_placement = placement.resolve_placement
"""device/dtype/quantize -> what a load will use and why (`ibllm doctor`, the server and the app ask it too)."""

PHASES = ("finetune", "pretrain")
"""finetune: LLaMA with bias and LoRA (the instruction-tuned adapter); pretrain: neither."""

DTYPES = placement.DTYPES


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """None -> float16 on CUDA (and MPS), float32 elsewhere; names and floating torch dtypes as given
    (`placement.resolve_dtype`; `load` uses `resolve_placement`, whose "auto" also picks bfloat16 for the
    official weights on a CPU with native bfloat16)."""
    return placement.resolve_dtype(dtype, device)


def _check_phase(phase: str) -> bool:
    """True for finetune (bias + LoRA), False for pretrain."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return phase == "finetune"


def llama_checkpoint_file(ckpt_dir: str | Path) -> Path:
    """The one LLaMA checkpoint file in `<llama_dir>/<llama_type>/` (multi-shard 13B+ are refused clearly)."""
    ckpt_dir = Path(ckpt_dir)
    files = sorted(ckpt_dir.glob("*.pth")) + sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise MissingFileError(f"{ckpt_dir}: no LLaMA checkpoint (consolidated.00.pth) found", file=ckpt_dir)
    if len(files) > 1:
        raise CheckpointError(f"{ckpt_dir}: {len(files)} checkpoint shards ({', '.join(f.name for f in files)}); "
                              "only single-file LLaMA checkpoints (7B) are supported", file=ckpt_dir)
    return files[0]


def read_llama(llama_dir: str | Path, llama_type: str, phase: str = "finetune", *,
               max_seq_len: int = 2048) -> tuple[Tokenizer, ModelArgs, Path, dict[str, torch.Tensor]]:
    """Meta's layout: <llama_dir>/tokenizer.model and <llama_dir>/<llama_type>/{params.json, one checkpoint}
    -> (tokenizer, sizes, the checkpoint file, its state dict, memory-mapped). params.json is checked
    against the file's tensors here, before any model of its sizes is built."""
    finetune = _check_phase(phase)
    llama_dir = Path(llama_dir)
    tokenizer = Tokenizer(llama_dir / "tokenizer.model")
    params_file = llama_dir / llama_type / "params.json"
    args = ModelArgs.from_json(params_file, max_seq_len=max_seq_len, w_bias=finetune, w_lora=finetune)
    args.vocab_size = tokenizer.n_words
    llama_file = llama_checkpoint_file(llama_dir / llama_type)
    llama_sd = load_state_dict(llama_file)
    check_llama_file(args, llama_sd, params_file=params_file, llama_file=llama_file)
    return tokenizer, args, llama_file, llama_sd


def read_imagebind(path: str | Path) -> tuple[dict[str, torch.Tensor], ImageBindArgs]:
    """ImageBind's state dict (un-prefixed) and its sizes: from the shapes, plus `imagebind_config.json`
    beside the file for what shapes cannot tell (head counts, the toy's Point-Bind grouping)."""
    path = Path(path)
    raw = load_state_dict(path)
    sd = {k.removeprefix("image_bind."): v for k, v in raw.items()}
    if isinstance(raw, MappedStateDict):
        sd = MappedStateDict(sd)
    config = path.parent / "imagebind_config.json"
    overrides = read_imagebind_config(config) if config.is_file() else None  # its errors name the config file
    try:
        args = ImageBindArgs.from_state_dict(sd, overrides)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not an ImageBind checkpoint ({e})", file=path) from e
    return sd, args


def build_from_files(adapter_path: str | Path, llama_dir: str | Path, llama_type: str = "7B", *,
                     imagebind_ckpt: str | Path, knn_index: str | Path | None = None, device="cpu", dtype=None,
                     phase: str = "finetune", max_seq_len: int = 2048, name: str = "", is_toy: bool = False,
                     quantize: str | None = None, fuse: bool | None = None, check_memory: bool = True
                     ) -> ImageBindLLM:
    """Load the official layout: the LLaMA files, the adapter checkpoint and the ImageBind checkpoint
    (+ the FAISS cache).

    Order as the reference: LLaMA file, then the adapter (its LLaMA norms override), then ImageBind,
    each strict with the keys a file may lack named. The model is built on the meta device and takes
    the files' tensors (converted only where dtype/device differ), so weights are not held twice;
    nothing is returned unless every parameter came from a file.

    device / dtype: as `placement.resolve_placement`; dtype="auto" picks for official weights unless
    `is_toy` (bfloat16 on a CPU with native bfloat16), None keeps the CPU in float32 (as before "auto").
    quantize: "int8" / "int4" quantises LLaMA's frozen linear layers (`llama.quant`), layer by layer from
    the file mapping, so a float copy of the whole model never exists; a LLaMA file written by `ibllm
    quantize` loads as it is (its scheme is read from its tensors; asking for another is an error). The
    bind network's SwiGLU is then quantised too, in int8 (`bind_network.quantize_for_inference`).
    fuse: fuse q/k/v and w1/w3 into one product each and, for float weights, merge LoRA into them
    (`llama.model.for_inference`); None = on CUDA and whenever quantising, off for float on the CPU (whose
    answers then stay the reference's, bit for bit). Quantised weights keep LoRA apart, in floating point:
    merging it first and quantising W + BA measured worse (teacher-forced top-1 agreement with float32,
    int4: 98.0 % vs 98.5 % on the toy, 55 % vs 66 % on the parity fixtures), and it keeps a quantised
    LLaMA file independent of the adapter. check_memory: refuse before loading when the weights cannot fit
    (`placement.check_memory`).
    """
    place = placement.resolve_placement(device, dtype, quantize, official=dtype == "auto" and not is_toy)
    device, dtype = place.device, place.dtype
    adapter_path, imagebind_ckpt = Path(adapter_path), Path(imagebind_ckpt)
    tokenizer, args, llama_file, llama_sd = read_llama(llama_dir, llama_type, phase, max_seq_len=max_seq_len)
    spec = quant.quantized_file_spec(llama_sd, llama_file)
    if spec is not None and place.quantize not in (None, spec.quantize):
        raise placement.PlacementError(f"quantize={place.quantize!r}, but {llama_file} is already quantised to "
                                       f"{spec.quantize}; load it with quantize=None (or {spec.quantize!r}), or "
                                       "quantise Meta's float file instead")
    quantize = spec.quantize if spec is not None else place.quantize
    if fuse is None:
        fuse = device.type == "cuda" or quantize is not None

    adapter_sd = load_state_dict(adapter_path)
    query_layer, feature_dim = adapter_sizes(adapter_sd, file=adapter_path)  # one prefix row per adapted layer
    imagebind_sd, ib_args = read_imagebind(imagebind_ckpt)
    if ib_args.out_embed_dim != feature_dim:
        raise CheckpointError(f"{imagebind_ckpt}: ImageBind embeds in {ib_args.out_embed_dim} dimensions but "
                              f"{adapter_path} expects {feature_dim}", file=imagebind_ckpt)
    if query_layer > args.n_layers:
        raise CheckpointError(f"{adapter_path}: prefix_query has {query_layer} rows but the LLaMA in "
                              f"{llama_file.parent} has {args.n_layers} layers", file=adapter_path)
    if check_memory and not is_toy:
        placement.check_memory({llama_file: llama_sd, adapter_path: adapter_sd, imagebind_ckpt: imagebind_sd},
                               replace(place, quantize=quantize), _quantized_weight,
                               what=f"{name or adapter_path.name} ({llama_file.parent.name} LLaMA)")

    files = {"llama": llama_file, "adapter": adapter_path, "imagebind": imagebind_ckpt}
    model = ImageBindLLM(args, tokenizer, ib_args, query_layer=query_layer, feature_dim=feature_dim, device="meta",
                         card=ModelCard(name=name, is_toy=is_toy, files=files))
    model.to(dtype)
    if spec is not None:
        quant.quantize_structure(model.llama, spec)
    convert = quantize is not None or fuse
    # weights converted layer by layer afterwards stay in the file's mapping (and dtype) until then
    keep = quant.QUANTIZED_LLAMA_WEIGHT.match if convert else None
    load_into(model.llama, llama_sd, file=llama_file, allowed_missing=ADAPTER_ONLY_LLAMA_KEY.match, device=device,
              keep_dtype=keep)
    mapped = _in_file_mapping(llama_sd, llama_file, device)
    del llama_sd
    adapter_mapped = _in_file_mapping(adapter_sd, adapter_path, device)
    load_into(model, adapter_sd, file=adapter_path, device=device,
              allowed_missing=lambda k: k.startswith("image_bind.") or FROZEN_LLAMA_KEY.match(k) is not None
              or (spec is not None and k.startswith("llama.") and k.endswith(quant.QUANTIZED_SUFFIXES)),
              keep_dtype=bind_network.QUANTIZED_FILE_WEIGHT.match if quantize and adapter_mapped else None)
    del adapter_sd
    if quantize is not None:
        bind_network.quantize_for_inference(model.bind, release=release_pages if adapter_mapped else None)
    # a mapped ImageBind file stays unread until an encoder is used, converted then (vision, which every
    # question uses, even a text-only one through the blank feature, now)
    lazy = _in_file_mapping(imagebind_sd, imagebind_ckpt, device)
    load_into(model.image_bind, imagebind_sd, file=imagebind_ckpt, device=device, ignored_unexpected=(),
              keep_dtype=(lambda key: True) if lazy else None)
    del imagebind_sd
    if lazy:
        model.image_bind.convert_on_first_use(dtype, release_pages, now=("vision",))
    absent = meta_tensors(model)
    if absent:
        raise CheckpointError(f"{llama_file}, {adapter_path} and {imagebind_ckpt} together lack "
                              f"{len(absent)} tensors: {', '.join(absent[:25])}", file=adapter_path, missing=absent)
    if convert:
        for_inference(model.llama, dtype, quantize=quantize, group_size=spec.group_size if spec else None,
                      merge_lora=fuse and quantize is None, fuse=fuse, release=release_pages if mapped else None)
    model.card.quantize = quantize
    model.card.placement = place.describe()
    if knn_index is not None:
        from ibllm_agent.cache.faiss import FaissCache

        model.visual_cache = FaissCache.load(knn_index, dim=feature_dim)
        model.card.files["knn_index"] = Path(knn_index)
    model.requires_grad_(False)
    return model.eval()


def _in_file_mapping(sd, path: Path, device: torch.device) -> bool:
    """Whether the tensors of `sd` (read from `path`) stay in torch's or safetensors' file mapping on `device`:
    then the pages of a tensor once converted (or fused, quantised, repacked) can be dropped (`release_pages`)."""
    return device.type == "cpu" and (isinstance(sd, MappedStateDict) or path.suffix == ".safetensors")


def _quantized_weight(key: str) -> str | bool:
    """For the memory check: LLaMA's frozen linears take the model's scheme, the bind network's its own."""
    if bind_network.QUANTIZED_FILE_WEIGHT.match(key):
        return bind_network.QUANTIZE
    return quant.QUANTIZED_LLAMA_WEIGHT.match(key) is not None


def save_official(model: ImageBindLLM, out_dir: str | Path, llama_type: str = "7B", *,
                  llama_dtype=torch.float16) -> dict[str, Path]:
    """Write `model` in the official file layout, which `load(adapter, llama_dir, ...)` reads back:
    llama/tokenizer.model, llama/<llama_type>/params.json + consolidated.00.pth (Meta's keys, float16
    like Meta's files), adapter.pth (`{"model": ...}`: bind network, prefix, and the LLaMA gates, biases,
    LoRA and norms) and imagebind.pth. A model converted for inference (quantised, or fused: `load(quantize=...,
    fuse=...)`) no longer has the official layout and is refused."""
    layer = model.llama.layers[0]
    if model.card.quantize or layer.attention.wqkv is not None or layer.feed_forward.w13 is not None:
        raise ValueError("this model was quantised or fused for inference and has no official layout any more; "
                         "save a model loaded with quantize=None, fuse=False")
    out = Path(out_dir)
    ckpt_dir = out / "llama" / llama_type
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (out / "llama" / "tokenizer.model").write_bytes(model.tokenizer.sp_model.serialized_model_proto())
    p = model.llama.params
    params = {"dim": p.dim, "multiple_of": p.multiple_of, "n_heads": p.n_heads, "n_layers": p.n_layers,
              "norm_eps": p.norm_eps, "vocab_size": -1}
    if p.ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = p.ffn_dim_multiplier
    (ckpt_dir / "params.json").write_text(json.dumps(params))
    base = {k: v.to(llama_dtype) for k, v in model.llama.state_dict().items() if not ADAPTER_ONLY_LLAMA_KEY.match(k)}
    torch.save(base, ckpt_dir / "consolidated.00.pth")
    adapter = {k: v for k, v in model.state_dict().items()
               if not k.startswith("image_bind.") and not FROZEN_LLAMA_KEY.match(k)}
    torch.save({"model": adapter}, out / "adapter.pth")
    for modality in model.image_bind.modalities:
        model.image_bind.materialize(modality)
    torch.save(model.image_bind.state_dict(), out / "imagebind.pth")
    return {"llama_dir": out / "llama", "adapter": out / "adapter.pth", "imagebind": out / "imagebind.pth"}


def save_quantized(llama_dir: str | Path, out_dir: str | Path, llama_type: str = "7B", *, quantize: str,
                   group_size: int = quant.INT4_GROUP_SIZE, adapter: str | Path | None = None,
                   imagebind: str | Path | None = None, dtype=torch.bfloat16) -> dict[str, Path]:
    """`ibllm quantize`: Meta's LLaMA folder -> `out_dir` in the same layout (tokenizer.model,
    <llama_type>/params.json, <llama_type>/consolidated.00.safetensors) with LLaMA's linear weights quantised
    (`quant.quantize_state_dict`, one tensor at a time from the file mapping) and its other tensors in `dtype`.
    `load(adapter, out_dir, llama_type)` then reads the quantised weights as they are: no float copy of the
    model is ever made, and the file's pages are the weights (safetensors is memory-mapped).

    The file keeps Meta's keys and no adapter weights, so one quantised LLaMA serves every adapter (LoRA stays
    in floating point beside it). `adapter` / `imagebind`, when given, are written beside it as
    adapter.safetensors / imagebind.safetensors in `dtype` (integer buffers as they are), so that they too
    load without a conversion. Returns the paths written."""
    from safetensors.torch import save_file

    quantize = quant.check_quantize(quantize)
    if quantize is None:
        raise quant.QuantizeError("quantize must be 'int8' or 'int4' to write a quantised LLaMA")
    dtype = placement.DTYPES[dtype] if isinstance(dtype, str) else dtype
    tokenizer, args, llama_file, sd = read_llama(llama_dir, llama_type)
    if quant.quantized_file_spec(sd, llama_file) is not None:
        raise CheckpointError(f"{llama_file} is already quantised; quantise Meta's float file", file=llama_file)
    out = Path(out_dir)
    ckpt_dir = out / llama_type
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(tokenizer.sp_model.serialized_model_proto())
    (ckpt_dir / "params.json").write_bytes((Path(llama_dir) / llama_type / "params.json").read_bytes())
    release = release_pages if isinstance(sd, MappedStateDict) else None
    tensors = {}
    for key, t in quant.quantize_state_dict(sd, quantize, group_size=group_size, release=release):
        if key in LLAMA_FILE_IGNORED:
            continue
        scales = key.endswith((".scales", ".scales_and_zeros"))  # bfloat16 by construction: kept exact
        tensors[key] = (t.to(dtype) if t.is_floating_point() and not scales else t).contiguous()
    written = {"llama_dir": out, "llama": ckpt_dir / "consolidated.00.safetensors"}
    save_file(tensors, written["llama"], metadata={"format": "pt", "ibllm.quantize": quantize,
                                                  "ibllm.group_size": str(group_size)})
    del tensors, sd
    for name, path in (("adapter", adapter), ("imagebind", imagebind)):
        if path is None:
            continue
        src = load_state_dict(path)
        save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in src.items()},
                  out / f"{name}.safetensors", metadata={"format": "pt"})
        written[name] = out / f"{name}.safetensors"
        config = Path(path).parent / "imagebind_config.json"
        if name == "imagebind" and config.is_file():
            (out / "imagebind_config.json").write_bytes(config.read_bytes())
    return written


def build_tiny(*, device="cpu", dtype=None, phase: str = "finetune", seed: int = 0,
               max_seq_len: int = 512, quantize: str | None = None, fuse: bool | None = None) -> ImageBindLLM:
    """A small random ImageBind-LLM (no files) for tests: the "tiny" presets (LLaMA dim 64, 2 layers, both
    adapted; tiny ImageBind trunks with the official input sizes). Same seed, same weights. Gates and LoRA
    are non-zero so every path of the math is exercised. quantize / fuse as `build_from_files`."""
    from ibllm_agent.presets import imagebind_tiny_args, tiny_llama_args, tiny_tokenizer

    place = placement.resolve_placement(device, dtype, quantize, official=False)
    device = place.device
    finetune = _check_phase(phase)
    tokenizer = tiny_tokenizer()
    args = tiny_llama_args(vocab_size=tokenizer.n_words, max_seq_len=max_seq_len, w_bias=finetune, w_lora=finetune)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageBindLLM(args, tokenizer, imagebind_tiny_args(), query_layer=2, card=ModelCard(name="tiny"))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # over the official names, in their order, so the same seed gives the same weights as ever
            for key, p in model.state_dict(keep_vars=True).items():
                if key.startswith("image_bind.") or not isinstance(p, torch.nn.Parameter):
                    continue  # ImageBind keeps its default init (LayerNorms 1, fan-in scaled linears)
                if key.endswith("norm.weight") or "_norm_" in key:
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                elif key.endswith(".gate"):
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.requires_grad_(False)
    model = model.to(device=device, dtype=place.dtype).eval()
    if fuse is None:
        fuse = device.type == "cuda" or place.quantize is not None
    if place.quantize is not None or fuse:
        for_inference(model.llama, place.dtype, quantize=place.quantize,
                      merge_lora=fuse and place.quantize is None, fuse=fuse)
    if place.quantize is not None:
        bind_network.quantize_for_inference(model.bind)
    model.card.quantize = place.quantize
    return model


def _registry_file(entry: str, root: Path, download: bool) -> Path:
    """A registry file in `root`, fetched first when `download` is set and it is missing."""
    from ibllm_agent import pretrained

    if download and not (root / pretrained.FILES[entry].filename).is_file():
        pretrained.download(entry, root)
    return pretrained.local_path(entry, root)


def load(name: str = "toy", llama_dir: str | Path | None = None, llama_type: str = "7B",
         imagebind_ckpt: str | Path | None = None, knn: bool = False, knn_index: str | Path | None = None,
         device=None, dtype=None, phase: str = "finetune", *, max_seq_len: int = 2048,
         download_root: str | Path | None = None, download: bool = False, quantize: str | None = None,
         fuse: bool | None = None, check_memory: bool = True) -> ImageBindLLM:
    """Load ImageBind-LLM (the reference's `llama.load`, plus our names).

    name: "toy" (the shipped toy world in ibllm_agent/assets/toy/, official file layout, read through
    the same code as official files), "tiny" (random, no files, for tests), a registry name such as
    "7B" or "7B-pretrained" (files already in `download_root`; fetch them with `ibllm download`), or
    the path of an adapter checkpoint (.pth or .safetensors).
    llama_dir: holds tokenizer.model and <llama_type>/params.json + consolidated.00.pth (or the
    consolidated.00.safetensors `ibllm quantize` writes).
    imagebind_ckpt: ImageBind (+Point-Bind) weights; default imagebind_w3D.pth, then imagebind_huge.pth
    from `download_root`. knn / knn_index: attach the visual cache (default knn.index from `download_root`),
    which answers then use unless told otherwise (`VisualCacheParams(enabled=False)`).
    device / dtype: "auto" (CUDA, then MPS, then the CPU; float16 on a GPU, bfloat16 on a CPU with native
    bfloat16, else float32: `placement.resolve_placement`), "cpu"/"cuda"/"mps", "float32"/"bfloat16"/
    "float16". None: "auto" for official weights; the CPU in float32 for the toy and tiny models.
    quantize: None, "int8" or "int4" (LLaMA's linear weights; `llama/quant.py`). fuse: merge LoRA and fuse
    projections for inference (None: on CUDA or when quantising). check_memory: refuse before loading a
    model that cannot fit, naming the precisions that would. phase: "finetune" (bias + LoRA) or
    "pretrain" (neither). max_seq_len: the longest prompt + answer (the reference caps it at 512).
    download: fetch missing registry files into `download_root` first (the reference always does;
    here only when asked).
    """
    if name in ("tiny", "toy"):  # small and answered by reference: the CPU in float32 unless told
        device = "cpu" if device is None else device
    if name == "tiny":
        return build_tiny(device=device, dtype=dtype, phase=phase, max_seq_len=max_seq_len, quantize=quantize,
                          fuse=fuse)
    from ibllm_agent import pretrained

    root = Path(download_root) if download_root is not None else pretrained.default_dir()
    options = dict(device=device, dtype=dtype, phase=phase, max_seq_len=max_seq_len, quantize=quantize, fuse=fuse,
                   check_memory=check_memory)
    if name == "toy":
        if llama_dir is not None or imagebind_ckpt is not None:
            raise ValueError("the toy model carries its own LLaMA and ImageBind; do not pass llama_dir/imagebind_ckpt")
        toy = pretrained.toy_files()
        return build_from_files(toy.adapter, toy.llama_dir, toy.llama_type, imagebind_ckpt=toy.imagebind,
                                knn_index=(knn_index or toy.knn_index) if knn else None, name="toy", is_toy=True,
                                **options)
    device = "auto" if device is None else device
    dtype = "auto" if dtype is None else dtype
    placement.resolve_placement(device, dtype, quantize)  # a bad option fails before any file is looked for
    if name not in pretrained.MODELS and not Path(name).is_file():
        raise MissingFileError(f"model {name!r} is neither a known name ({', '.join(pretrained.available_models())}, "
                               "toy, tiny) nor an existing adapter file", file=name)
    if llama_dir is None:
        raise ValueError("llama_dir is required: the folder with tokenizer.model and "
                         f"{llama_type}/params.json + consolidated.00.pth (Meta's LLaMA-1 weights)")
    adapter_path = _registry_file(name, root, download) if name in pretrained.MODELS else Path(name)
    if imagebind_ckpt is None:
        has_huge = (root / pretrained.FILES["imagebind_huge"].filename).is_file()
        imagebind_ckpt = pretrained.local_imagebind(root) if has_huge else _registry_file("imagebind_w3D", root,
                                                                                            download)
    if knn and knn_index is None:
        knn_index = _registry_file("knn.index", root, download)
    return build_from_files(adapter_path, llama_dir, llama_type, imagebind_ckpt=imagebind_ckpt,
                            knn_index=knn_index if knn else None,
                            name=name if name in pretrained.MODELS else Path(name).stem, **options)
