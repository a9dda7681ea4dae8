"""ImageBind-LLM: ImageBind encoders -> fusion -> (visual cache) -> bind network -> gated LLaMA.

`ImageBindLLM` keeps the reference's attribute names, so the adapter checkpoint (`7B.pth`:
`image_bind_proj.*`, `image_bind_norm_{1,2,3}`, `image_bind_f{1,2,3}_{1,2,3}`, `prefix_query.weight`,
`llama.*`) and ImageBind's file (`image_bind.*` here, un-prefixed in its own file) load one-to-one.
It offers the reference's methods (`image_bind`, `forward_visual`, `forward_inference`, `generate`,
`tokenizer`) and a typed API on top (`encode`, `fuse`, `visual_query`, `generate_batch`, `stream`).

Text-only requests. The reference fine-tunes text-only samples with an all-zero *image tensor* fed
through ImageBind (data/dataset.py), so that is the feature the model learned to read as "no image".
We do the same at inference: `features=None` (or an all-zero feature row) uses the ImageBind vision
embedding of a zero image (`blank_feature()`, computed once), and the visual cache is not applied to it.

`load(...)` builds the model from files (official layout, the shipped toy, or a registry name) or the
"tiny" random model for tests; see its docstring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ibllm_agent.cache.base import Neighbor, VisualCache, retrieve_and_blend
from ibllm_agent.checkpoint import (
    ADAPTER_ONLY_LLAMA_KEY,
    FROZEN_LLAMA_KEY,
    CheckpointError,
    MissingFileError,
    load_into,
    load_state_dict,
    meta_tensors,
)
from ibllm_agent.generation import Decoder, Generation, PromptTooLongError
from ibllm_agent.imagebind.model import MODALITIES, ImageBindArgs, ImageBindModel, read_imagebind_config
from ibllm_agent.llama.model import ModelArgs, RMSNorm, Transformer
from ibllm_agent.llama.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["ImageBindLLM", "UnknownModalityError", "load"]

MEDIA_TO_IMAGEBIND = {"image": "vision", "video": "vision", "audio": "audio", "point": "point", "text": "text",
                      "depth": "depth", "thermal": "thermal", "imu": "imu"}
"""`MediaInput.modality` -> ImageBind branch (images and videos share the vision trunk)."""

TOY_DIR = Path(__file__).resolve().parent / "assets" / "toy"


class UnknownModalityError(ValueError):
    """An input key that names no ImageBind modality."""


def upstream_modality(key: str) -> str:
    """The reference's `forward_visual` keys: "Image"/"Video" -> vision, anything else lower-cased."""
    modality = "vision" if key in ("Image", "Video") else key.lower()
    if modality not in MODALITIES:
        raise UnknownModalityError(f"unknown modality {key!r} in inputs; expected one of Image, Video, Audio, "
                                   "Point, Text, Depth, Thermal, IMU")
    return modality


def fusion_weights(weights: Sequence[float], *, argument: str = "weights") -> list[float]:
    """The reference's weight normalisation w / (sum(w) + 1e-6), refusing NaN/inf and a zero sum."""
    w = [float(x) for x in weights]
    if not w:
        raise ValueError(f"{argument}: at least one input is needed")
    if not all(torch.isfinite(torch.tensor(w))):
        raise ValueError(f"{argument}: weights must be finite numbers, got {w}")
    total = sum(w)
    if abs(total) < 1e-6:
        raise ValueError(f"{argument}: weights {w} sum to zero; the mix would be undefined")
    return [x / (total + 1e-6) for x in w]


class _SkipMetaNormalInit(TorchFunctionMode):
    """Makes `normal_` a no-op on meta tensors while a model is built for loading.

    The files' tensors replace every parameter anyway, and meta's `normal_` runs a Python reference
    that imports torch._dynamo (seconds of `load("toy")`). Modes are per thread; real tensors are untouched.
    `nn.init.normal_` (nn.Embedding) reaches the mode itself, and its inner `Tensor.normal_` would not.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ or func is nn.init.normal_:
            tensor = args[0] if args else kwargs["tensor"]  # nn.init.normal_ passes it by keyword
            if tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


class ImageBindLLM(nn.Module):
    """The whole model. Build it with `load(...)`; the constructor makes random (or meta) weights."""

    def __init__(self, llama_args: ModelArgs, tokenizer: Tokenizer, imagebind_args: ImageBindArgs, *,
                 query_layer: int, feature_dim: int | None = None, name: str = "", is_toy: bool = False,
                 device: torch.device | str | None = None):
        """`device="meta"` builds without memory (for loading); None builds random weights on the CPU."""
        super().__init__()
        with _SkipMetaNormalInit() if device is not None and torch.device(device).type == "meta" \
                else contextlib.nullcontext():
            # 1. ImageBind (it takes the device itself: its constructor computes values that meta cannot)
            self.image_bind = ImageBindModel(imagebind_args, device=device)
            with torch.device(device) if device is not None else contextlib.nullcontext():
                self._build(llama_args, tokenizer, imagebind_args, query_layer, feature_dim)
        # serving state: the optional visual cache, a lock for shared use, identity
        self.cache: VisualCache | None = None
        self.knn = False
        self.lock = threading.RLock()
        self.name = name
        self.is_toy = is_toy
        self._blank: torch.Tensor | None = None
        self._legacy_cache = None
        self._legacy_adapter = None

    def _build(self, llama_args, tokenizer, imagebind_args, query_layer, feature_dim) -> None:
        if not 0 < query_layer <= llama_args.n_layers:
            raise ValueError(f"query_layer {query_layer} must be in 1..n_layers ({llama_args.n_layers})")
        dim = llama_args.dim
        feature_dim = feature_dim or imagebind_args.out_embed_dim
        # 2. the bind network: Linear(feature -> dim), 3 x (RMSNorm -> SwiGLU) residual
        self.image_bind_proj = nn.Linear(feature_dim, dim)
        for i in (1, 2, 3):
            setattr(self, f"image_bind_norm_{i}", RMSNorm(dim))
            setattr(self, f"image_bind_f1_{i}", nn.Linear(dim, 4 * dim, bias=False))
            setattr(self, f"image_bind_f2_{i}", nn.Linear(4 * dim, dim, bias=False))
            setattr(self, f"image_bind_f3_{i}", nn.Linear(dim, 4 * dim, bias=False))
        # 3. LLaMA and one learned prefix per adapted layer (the last `query_layer` layers)
        self.tokenizer = tokenizer
        self.llama = Transformer(llama_args)
        self.query_layer = query_layer
        self.query_len = 1
        self.prefix_query = nn.Embedding(query_layer * self.query_len, dim)
        self.feature_dim = feature_dim

    # ----- identity ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llama.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llama.tok_embeddings.weight.dtype

    @property
    def max_seq_len(self) -> int:
        return self.llama.params.max_seq_len

    def __repr__(self) -> str:
        p = self.llama.params
        toy = ", toy world" if self.is_toy else ""
        return (f"ImageBindLLM(name={self.name!r}{toy}, llama dim={p.dim} layers={p.n_layers} vocab={p.vocab_size}, "
                f"query_layer={self.query_layer}, cache={self.cache!r}, device={self.device}, dtype={self.dtype})")

    # ----- ImageBind ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def image_bind_forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageBind on `{modality: tensor}` (ImageBind names), inputs moved to the model's device/dtype."""
        moved = {}
        for modality, value in inputs.items():
            if modality not in MODALITIES:
                raise UnknownModalityError(f"unknown ImageBind modality {modality!r}; expected one of {MODALITIES}")
            value = torch.as_tensor(value).to(self.device)
            moved[modality] = value if modality == "text" else value.to(self.dtype)
        return self.image_bind(moved)

    @torch.inference_mode()
    def encode(self, items: Sequence) -> torch.Tensor:
        """ImageBind embeddings [N, feature_dim] (float32, CPU) of `MediaInput`s, batched per modality/shape."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            modality = MEDIA_TO_IMAGEBIND.get(item.modality)
            if modality is None:
                raise UnknownModalityError(f"items[{i}]: unknown media modality {item.modality!r}")
            groups.setdefault((modality, tuple(item.tensor.shape)), []).append(i)
        out = torch.empty(len(items), self.feature_dim)
        for (modality, _), idx in groups.items():
            batch = torch.stack([items[i].tensor for i in idx])
            out[idx] = self.image_bind_forward({modality: batch})[modality].float().cpu()
        return out

    @torch.inference_mode()
    def blank_feature(self) -> torch.Tensor:
        """The "no media" feature [feature_dim]: ImageBind's embedding of an all-zero image tensor, the input
        the reference fine-tunes text-only samples with."""
        if self._blank is None:
            size = self.image_bind.args.vision_image_size
            zeros = torch.zeros(1, 3, size, size)
            self._blank = self.image_bind_forward({"vision": zeros})["vision"][0].float().cpu()
        return self._blank

    # ----- fusion, cache, bind network ---------------------------------------------------------------
    @staticmethod
    def fuse(embeddings: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
        """The reference's mix [N, D] -> [D]: normalise each, weights w / (sum(w) + 1e-6), weighted sum
        (not renormalised). Negative weights are allowed (embedding arithmetic)."""
        if embeddings.ndim != 2 or embeddings.shape[0] != len(weights):
            raise ValueError(f"embeddings must be [N, D] with one weight each; got {list(embeddings.shape)} and "
                             f"{len(weights)} weights")
        w = torch.tensor(fusion_weights(weights), dtype=torch.float32, device=embeddings.device)
        return (F.normalize(embeddings.float(), dim=-1) * w[:, None]).sum(0)

    def bind(self, feature: torch.Tensor) -> torch.Tensor:
        """The bind network: [B, feature_dim] -> visual query [B, 1, dim]."""
        x = self.image_bind_proj(feature.to(self.device, self.dtype)[:, None, :])  # (B, 1, dim)
        for i in (1, 2, 3):
            n = getattr(self, f"image_bind_norm_{i}")(x)
            f1, f2, f3 = (getattr(self, f"image_bind_f{j}_{i}") for j in (1, 2, 3))
            x = x + f2(F.silu(f1(n)) * f3(n))
        return x

    @torch.inference_mode()
    def visual_query(self, feature: torch.Tensor, *, cache: bool | None = None, cache_size: int = 10,
                     cache_t: float = 20.0, cache_weight: float = 0.5) -> tuple[torch.Tensor, list[list[Neighbor]]]:
        """Fused feature(s) [B, D] (or [D]) -> (visual query [B, 1, dim], cache neighbours per row).

        `cache=None` uses the cache when the model was loaded with `knn=True`. All-zero rows mean
        "no media": they become `blank_feature()` and skip the cache.
        """
        feature = torch.as_tensor(feature).float().cpu()
        if feature.ndim == 1:
            feature = feature[None]
        if feature.ndim != 2 or feature.shape[1] != self.feature_dim:
            raise ValueError(f"feature must be [B, {self.feature_dim}], got {list(feature.shape)}")
        if not torch.isfinite(feature).all():
            raise ValueError("feature contains NaN or inf")
        blank = (feature == 0).all(dim=1)
        feature = torch.where(blank[:, None], self.blank_feature()[None], feature)
        neighbors: list[list[Neighbor]] = [[] for _ in range(feature.shape[0])]
        use_cache = self.knn if cache is None else cache
        if use_cache and not bool(blank.all()):
            if self.cache is None:
                raise ValueError("cache=True but no visual cache is loaded (load(..., knn=True, knn_index=...))")
            rows = (~blank).nonzero().flatten()
            blended, found = retrieve_and_blend(self.cache, feature[rows], int(cache_size), float(cache_t),
                                                float(cache_weight))
            feature = feature.clone()
            feature[rows] = blended.float()
            for r, n in zip(rows.tolist(), found):
                neighbors[r] = n
        return self.bind(feature), neighbors

    @torch.inference_mode()
    def forward_visual(self, inputs: Mapping[str, Sequence], cache_size: int = 10, cache_t: float = 20,
                       cache_weight: float = 0.5) -> torch.Tensor:
        """The reference's entry: `{"Image"|"Video"|"Audio"|"Point"|"Text"|...: [tensor, weight]}` ->
        visual query [B, 1, dim] (the cache applies when loaded with knn=True). Unlike the reference,
        the result is [B, 1, dim] with the cache on too, and the blend is per sample for B > 1."""
        if not inputs:
            raise ValueError("inputs: at least one modality is needed")
        keys = list(inputs)
        weights = fusion_weights([inputs[k][1] for k in keys], argument="inputs weights")
        fused = None
        for key, w in zip(keys, weights):
            modality = upstream_modality(key)
            emb = F.normalize(self.image_bind_forward({modality: inputs[key][0]})[modality].float(), dim=-1)
            fused = emb * w if fused is None else fused + emb * w
        return self.visual_query(fused.cpu(), cache_size=cache_size, cache_t=cache_t,
                                 cache_weight=cache_weight)[0]

    # ----- LLaMA with the visual query ------------------------------------------------------------------
    def adapter_queries(self, visual_query: torch.Tensor) -> list[torch.Tensor | None]:
        """Per LLaMA layer: None, or visual_query + prefix_query[j] (B, 1, dim) for the last query_layer layers."""
        vq = visual_query.to(self.device, self.dtype).reshape(-1, 1, self.llama.params.dim)  # (B, 1, dim)
        prefix = self.prefix_query.weight.reshape(self.query_layer, 1, -1)  # (query_layer, 1, dim)
        first = self.llama.n_layers - self.query_layer
        return [None] * first + [vq + prefix[j] for j in range(self.query_layer)]

    @torch.inference_mode()
    def forward_inference(self, visual_query: torch.Tensor, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The reference's step: float32 logits [B, vocab] of the last of `tokens` (B, L) at positions
        start_pos..start_pos+L-1. Successive calls with increasing start_pos continue one sequence
        (an internal cache, as the reference's module state; start_pos 0 starts over)."""
        tokens = torch.as_tensor(tokens, device=self.device)
        B, L = tokens.shape
        with self.lock:
            cache = self._legacy_cache
            if start_pos == 0 or cache is None or cache.batch != B:
                if start_pos != 0:
                    raise ValueError("forward_inference: the first call of a sequence must have start_pos 0")
                cache = self._legacy_cache = self.llama.new_cache(B, L)
            if start_pos > cache.length:
                raise ValueError(f"forward_inference: start_pos {start_pos} skips positions (only {cache.length} "
                                 "are cached)")
            if start_pos + L > self.max_seq_len:
                raise PromptTooLongError(f"positions up to {start_pos + L} exceed max_seq_len {self.max_seq_len}")
            cache.length = start_pos  # like the reference, later slots are overwritten
            # the reference recomputes wv(visual query) at every call; reuse it while the query is unchanged
            # (inference tensors have no version counter: for them the same object counts as unchanged)
            version = None if visual_query.is_inference() else visual_query._version
            known = self._legacy_adapter
            if known is None or known[0] is not visual_query or known[1] != version:
                adapter = self.llama.adapter_values(self.adapter_queries(visual_query))
                known = self._legacy_adapter = (visual_query, version, adapter)
            return self.llama(tokens, cache, known[2], last_only=True)

    def decoder(self, prompts: Sequence[str | Sequence[int]], visual_query: torch.Tensor, *, max_gen_len: int = 256,
                temperature: float = 0.1, top_p: float = 0.75, seed: int | None = None,
                stop: Sequence[str] | None = None) -> Decoder:
        """A step-by-step `Decoder` for prompts (text, BOS added, or token ids) and visual queries [B or 1, 1, dim]:
        iterate it for per-step text deltas (callers that share the model hold `lock` per step)."""
        ids = [self.tokenizer.encode(p, bos=True, eos=False) if isinstance(p, str) else list(p) for p in prompts]
        if visual_query.shape[0] == 1 and len(ids) > 1:
            visual_query = visual_query.expand(len(ids), -1, -1)
        if visual_query.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} prompts but {visual_query.shape[0]} visual inputs")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        with torch.inference_mode():
            adapter = self.llama.adapter_values(self.adapter_queries(visual_query))
        return Decoder(self.llama, self.tokenizer, ids, adapter, max_gen_len=max_gen_len, temperature=temperature,
                       top_p=top_p, stop=stop, generator=generator)

    @torch.inference_mode()
    def generate(self, inputs: Mapping[str, Sequence], prompts: Sequence[str], max_gen_len: int = 256,
                 temperature: float = 0.1, top_p: float = 0.75, cache_size: int = 10, cache_t: float = 20,
                 cache_weight: float = 0.5) -> list[str]:
        """The reference's generate: answers (str) for `prompts` (already formatted, e.g. `format_prompt`),
        conditioned on the `inputs` mix; greedy when temperature is 0. Any batch size."""
        visual_query = self.forward_visual(inputs, cache_size, cache_t, cache_weight)
        decoder = self.decoder(prompts, visual_query, max_gen_len=max_gen_len, temperature=temperature,
                               top_p=top_p, seed=None, stop=None)
        return [text for text, _, _ in decoder.run()]

    def _features(self, features: torch.Tensor | None, batch: int) -> torch.Tensor:
        if features is None:
            return torch.zeros(batch, self.feature_dim)
        features = torch.as_tensor(features).float()
        return features[None] if features.ndim == 1 else features

    def generate_batch(self, prompts: Sequence[str], features: torch.Tensor | None = None, *, max_gen_len: int = 256,
                       temperature: float = 0.1, top_p: float = 0.75, seed: int | None = None,
                       stop: Sequence[str] | None = None, cache: bool | None = None, cache_size: int = 10,
                       cache_t: float = 20.0, cache_weight: float = 0.5) -> list[Generation]:
        """Answer each prompt (formatted text, BOS added) given its fused feature row of `features`
        [B, D] (one row or [D] is shared; None = text only). Prompts may differ in length."""
        if isinstance(prompts, str):
            raise TypeError("generate_batch takes a list of prompts; use stream() or [prompt] for one")
        visual_query, neighbors = self.visual_query(self._features(features, len(prompts)), cache=cache,
                                                    cache_size=cache_size, cache_t=cache_t, cache_weight=cache_weight)
        if len(neighbors) == 1 and len(prompts) > 1:
            neighbors = neighbors * len(prompts)
        decoder = self.decoder(prompts, visual_query, max_gen_len=max_gen_len, temperature=temperature,
                               top_p=top_p, seed=seed, stop=stop)
        return [Generation(text=text, token_ids=ids, prompt_tokens=len(prompt), finish_reason=finish,
                           neighbors=n)
                for (text, ids, finish), prompt, n in zip(decoder.run(), decoder.prompts, neighbors)]

    def stream(self, prompt: str, feature: torch.Tensor | None = None, **kwargs) -> Iterator[str]:
        """Text deltas of the answer to one prompt; they concatenate to `generate_batch([prompt], ...)[0].text`
        (for greedy decoding, or the same seed). Takes the keyword arguments of `generate_batch`."""
        cache_kw = {k: kwargs.pop(k) for k in ("cache", "cache_size", "cache_t", "cache_weight") if k in kwargs}
        visual_query, _ = self.visual_query(self._features(feature, 1), **cache_kw)
        decoder = self.decoder([prompt], visual_query, **{"max_gen_len": 256, "temperature": 0.1, "top_p": 0.75,
                                                            "seed": None, "stop": None, **kwargs})
        for deltas in decoder:
            if deltas[0]:
                yield deltas[0]

    # ----- training (upstream semantics) ------------------------------------------------------------------
    def logits(self, tokens: torch.Tensor, visual_query: torch.Tensor) -> torch.Tensor:
        """Teacher-forced float32 logits [B, L, vocab] of full sequences (no cache; differentiable)."""
        adapter = self.llama.adapter_values(self.adapter_queries(visual_query))
        return self.llama(tokens, None, adapter)

    def get_trainable_params(self, phase: str = "finetune") -> dict[str, nn.Parameter]:
        """The reference's split: finetune = LLaMA norms, biases, LoRA; pretrain = gates, bind network, prefix."""
        if phase not in ("finetune", "pretrain"):
            raise ValueError(f"unknown phase {phase!r}; expected 'finetune' or 'pretrain'")
        trainable = {}
        for name, p in self.named_parameters():
            if phase == "finetune" and name.startswith("llama.") and any(s in name for s in ("norm", "bias", "lora")):
                trainable[name] = p
            elif phase == "pretrain" and ((name.startswith("llama.") and "gate" in name)
                                          or name.startswith("image_bind_") or name.startswith("prefix_query.")):
                trainable[name] = p
        return trainable

    def set_default_trainability(self, phase: str = "finetune") -> None:
        """Freeze everything but `get_trainable_params(phase)`, which are made float32 and trainable."""
        self.requires_grad_(False)
        for p in self.get_trainable_params(phase).values():
            p.data = p.data.float()
            p.requires_grad_(True)

    def save_official(self, out_dir: str | Path, llama_type: str = "7B", *, llama_dtype=torch.float16) -> dict[str, Path]:
        """Write this model in the official file layout, which `load(adapter, llama_dir, ...)` reads back:
        llama/tokenizer.model, llama/<llama_type>/params.json + consolidated.00.pth (Meta's keys, float16
        like Meta's files), adapter.pth (`{"model": ...}`: bind network, prefix, and the LLaMA gates, biases,
        LoRA and norms) and imagebind.pth."""
        out = Path(out_dir)
        ckpt_dir = out / "llama" / llama_type
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "llama" / "tokenizer.model").write_bytes(self.tokenizer.sp_model.serialized_model_proto())
        p = self.llama.params
        params = {"dim": p.dim, "multiple_of": p.multiple_of, "n_heads": p.n_heads, "n_layers": p.n_layers,
                  "norm_eps": p.norm_eps, "vocab_size": -1}
        if p.ffn_dim_multiplier is not None:
            params["ffn_dim_multiplier"] = p.ffn_dim_multiplier
        (ckpt_dir / "params.json").write_text(json.dumps(params))
        llama_sd = self.llama.state_dict()
        base = {k: v.to(llama_dtype) for k, v in llama_sd.items() if not ADAPTER_ONLY_LLAMA_KEY.match(k)}
        torch.save(base, ckpt_dir / "consolidated.00.pth")
        adapter = {k: v for k, v in self.state_dict().items()
                   if not k.startswith("image_bind.") and not FROZEN_LLAMA_KEY.match(k)}
        torch.save({"model": adapter}, out / "adapter.pth")
        torch.save(self.image_bind.state_dict(), out / "imagebind.pth")
        return {"llama_dir": out / "llama", "adapter": out / "adapter.pth", "imagebind": out / "imagebind.pth"}


# ----- building and loading ---------------------------------------------------------------------------------

def _resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype {dtype!r} not understood; use one of {sorted(names)}")
        return names[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _llama_file(ckpt_dir: Path) -> Path:
    files = sorted(ckpt_dir.glob("*.pth")) + sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise MissingFileError(f"{ckpt_dir}: no LLaMA checkpoint (consolidated.00.pth) found", file=ckpt_dir)
    if len(files) > 1:
        raise CheckpointError(f"{ckpt_dir}: {len(files)} checkpoint shards ({', '.join(f.name for f in files)}); "
                              "only single-file LLaMA checkpoints (7B) are supported", file=ckpt_dir)
    return files[0]


def build_from_files(adapter_path: str | Path, llama_dir: str | Path, llama_type: str = "7B", *,
                     imagebind_ckpt: str | Path, knn_index: str | Path | None = None, device="cpu", dtype=None,
                     phase: str = "finetune", max_seq_len: int = 2048, name: str = "", is_toy: bool = False
                     ) -> ImageBindLLM:
    """Load the official layout: <llama_dir>/tokenizer.model, <llama_dir>/<llama_type>/{params.json,
    consolidated.00.pth}, the adapter checkpoint and the ImageBind checkpoint (+ the FAISS cache).

    Order as the reference: LLaMA file, then the adapter (its LLaMA norms override), then ImageBind,
    each strict with the keys a file may lack named. The model is built on the meta device and takes
    the files' tensors (converted only where dtype/device differ), so weights are not held twice;
    nothing is returned unless every parameter came from a file.
    """
    if phase not in ("finetune", "pretrain"):
        raise ValueError(f"phase must be 'finetune' or 'pretrain', got {phase!r}")
    device = torch.device(device)
    dtype = _resolve_dtype(dtype, device)
    llama_dir = Path(llama_dir)
    adapter_path, imagebind_ckpt = Path(adapter_path), Path(imagebind_ckpt)
    tokenizer = Tokenizer(llama_dir / "tokenizer.model")
    finetune = phase == "finetune"
    args = ModelArgs.from_json(llama_dir / llama_type / "params.json", max_seq_len=max_seq_len, w_bias=finetune,
                               w_lora=finetune)
    args.vocab_size = tokenizer.n_words
    llama_file = _llama_file(llama_dir / llama_type)

    adapter_sd = load_state_dict(adapter_path)
    for key in ("prefix_query.weight", "image_bind_proj.weight"):
        if key not in adapter_sd:
            raise CheckpointError(f"{adapter_path}: not an ImageBind-LLM adapter checkpoint (no {key})",
                                  file=adapter_path, missing=[key])
    query_layer = adapter_sd["prefix_query.weight"].shape[0]  # query_len is 1: one row per adapted layer
    feature_dim = adapter_sd["image_bind_proj.weight"].shape[1]
    imagebind_sd = {k.removeprefix("image_bind."): v for k, v in load_state_dict(imagebind_ckpt).items()}
    config = imagebind_ckpt.parent / "imagebind_config.json"  # sizes the shapes cannot tell (head counts)
    try:
        ib_args = ImageBindArgs.from_state_dict(imagebind_sd, read_imagebind_config(config) if config.is_file() else None)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{imagebind_ckpt}: not an ImageBind checkpoint ({e})", file=imagebind_ckpt) from e
    if ib_args.out_embed_dim != feature_dim:
        raise CheckpointError(f"{imagebind_ckpt}: ImageBind embeds in {ib_args.out_embed_dim} dimensions but "
                              f"{adapter_path} expects {feature_dim}", file=imagebind_ckpt)
    if query_layer > args.n_layers:
        raise CheckpointError(f"{adapter_path}: prefix_query has {query_layer} rows but the LLaMA in "
                              f"{llama_dir / llama_type} has {args.n_layers} layers", file=adapter_path)

    model = ImageBindLLM(args, tokenizer, ib_args, query_layer=query_layer, feature_dim=feature_dim, name=name,
                         is_toy=is_toy, device="meta")
    model.to(dtype)
    load_into(model.llama, load_state_dict(llama_file), file=llama_file,
              allowed_missing=ADAPTER_ONLY_LLAMA_KEY.match, device=device)
    load_into(model, adapter_sd, file=adapter_path, device=device,
              allowed_missing=lambda k: k.startswith("image_bind.") or FROZEN_LLAMA_KEY.match(k) is not None)
    del adapter_sd
    load_into(model.image_bind, imagebind_sd, file=imagebind_ckpt, device=device, ignored_unexpected=())
    del imagebind_sd
    absent = meta_tensors(model)
    if absent:
        raise CheckpointError(f"{llama_file}, {adapter_path} and {imagebind_ckpt} together lack "
                              f"{len(absent)} tensors: {', '.join(absent[:25])}", file=adapter_path, missing=absent)
    if knn_index is not None:
        from ibllm_agent.cache.faiss import FaissCache

        model.cache = FaissCache.load(knn_index, dim=feature_dim)
        model.knn = True
    model.requires_grad_(False)
    return model.eval()


def tiny_tokenizer() -> Tokenizer:
    """A small SentencePiece model trained in memory (deterministic) for the "tiny" test model."""
    return Tokenizer.from_proto(_tiny_tokenizer_proto())


def _tiny_tokenizer_proto() -> bytes:
    import io

    import sentencepiece as spm

    from ibllm_agent.generation import format_prompt

    global _TINY_PROTO
    if _TINY_PROTO is None:
        words = ("dog bird bell drum rain car cat sea wind fire a the is in of and with what sound image video "
                 "shape describe answer question picture loud quiet red blue green small big").split()
        lines = [format_prompt(f"Describe the {w}.") for w in words]
        lines += [format_prompt("What is this?", f"a {a} and a {b}") for a, b in zip(words, reversed(words))]
        lines += [" ".join(words[i:] + words[:i]) for i in range(len(words))]
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=320,
                                       model_type="bpe", byte_fallback=True, split_digits=True,
                                       character_coverage=1.0, num_threads=1, bos_id=1, eos_id=2, unk_id=0,
                                       pad_id=-1, minloglevel=2)
        _TINY_PROTO = buf.getvalue()
    return _TINY_PROTO


_TINY_PROTO: bytes | None = None


def build_tiny(*, device="cpu", dtype=None, phase: str = "finetune", seed: int = 0,
               max_seq_len: int = 512) -> ImageBindLLM:
    """A small random ImageBind-LLM (no files) for tests: LLaMA dim 64, 2 layers, both adapted; tiny
    ImageBind trunks with the official input sizes. Same seed, same weights. Gates and LoRA are
    non-zero so every path of the math is exercised."""
    from ibllm_agent.presets import imagebind_tiny_args, tiny_llama_args

    device = torch.device(device)
    tokenizer = tiny_tokenizer()
    finetune = phase == "finetune"
    args = tiny_llama_args(vocab_size=tokenizer.n_words, max_seq_len=max_seq_len, w_bias=finetune, w_lora=finetune)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageBindLLM(args, tokenizer, imagebind_tiny_args(), query_layer=2, name="tiny")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.startswith("image_bind."):
                    continue  # ImageBind keeps its default init (LayerNorms 1, fan-in scaled linears)
                if pname.endswith("norm.weight") or "_norm_" in pname:
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                elif pname.endswith(".gate"):
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.requires_grad_(False)
    return model.to(device=device, dtype=_resolve_dtype(dtype, device)).eval()


def _toy_files(root: Path) -> dict:
    meta_path = root / "toy.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{meta_path}: the toy model is not built (run `python tools/build_toy_model.py`), "
                               "or load the official weights: load('7B', llama_dir=...)", file=meta_path)
    meta = json.loads(meta_path.read_text())
    return {"adapter_path": root / meta.get("adapter", "adapter.pth"), "llama_dir": root / meta.get("llama_dir", "llama"),
            "llama_type": meta.get("llama_type", "toy"), "imagebind_ckpt": root / meta.get("imagebind", "imagebind.pth"),
            "knn_index": root / meta.get("knn_index", "knn.index")}


def _registry_file(entry: str, root: Path, download: bool) -> Path:
    """A registry file in `root`, fetched first when `download` is set and it is missing."""
    from ibllm_agent import pretrained

    if download and not (root / pretrained.FILES[entry].filename).is_file():
        pretrained.download(entry, root)
    return pretrained.local_path(entry, root)


def load(name: str = "toy", llama_dir: str | Path | None = None, llama_type: str = "7B",
         imagebind_ckpt: str | Path | None = None, knn: bool = False, knn_index: str | Path | None = None,
         device="cpu", dtype=None, phase: str = "finetune", *, max_seq_len: int = 2048,
         download_root: str | Path | None = None, download: bool = False) -> ImageBindLLM:
    """Load ImageBind-LLM (the reference's `llama.load`, plus our names).

    name: "toy" (the shipped toy world in ibllm_agent/assets/toy/, official file layout, read through
    the same code as official files), "tiny" (random, no files, for tests), a registry name such as
    "7B" or "7B-pretrained" (files already in `download_root`; fetch them with `ibllm download`), or
    the path of an adapter checkpoint (.pth or .safetensors).
    llama_dir: holds tokenizer.model and <llama_type>/params.json + consolidated.00.pth.
    imagebind_ckpt: ImageBind (+Point-Bind) weights; default imagebind_w3D.pth, then imagebind_huge.pth
    from `download_root`. knn / knn_index: use the visual cache (default knn.index from `download_root`).
    device / dtype: float32 on CPU by default, float16 on CUDA. phase: "finetune" (bias + LoRA) or
    "pretrain" (neither). max_seq_len: the longest prompt + answer (the reference caps it at 512).
    download: fetch missing registry files into `download_root` first (the reference always does;
    here only when asked).
    """
    if name == "tiny":
        return build_tiny(device=device, dtype=dtype, phase=phase, max_seq_len=max_seq_len)
    from ibllm_agent import pretrained

    root = Path(download_root) if download_root is not None else pretrained.default_dir()
    if name == "toy":
        files = _toy_files(TOY_DIR)
        if llama_dir is not None or imagebind_ckpt is not None:
            raise ValueError("the toy model carries its own LLaMA and ImageBind; do not pass llama_dir/imagebind_ckpt")
        return build_from_files(files["adapter_path"], files["llama_dir"], files["llama_type"],
                                imagebind_ckpt=files["imagebind_ckpt"],
                                knn_index=(knn_index or files["knn_index"]) if knn else None,
                                device=device, dtype=dtype, phase=phase, max_seq_len=max_seq_len, name="toy",
                                is_toy=True)
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
                            knn_index=knn_index if knn else None, device=device, dtype=dtype, phase=phase,
                            max_seq_len=max_seq_len, name=name if name in pretrained.MODELS else Path(name).stem)
