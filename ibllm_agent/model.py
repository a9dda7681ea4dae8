"""ImageBind-LLM: ImageBind encoders -> fusion -> (visual cache) -> bind network -> gated LLaMA.

    inputs ──image_bind──> embeddings ──fuse──> feature ──visual cache──> feature ──bind──> visual query
    prompt ──tokenizer──> ids ──llama (the last query_layer blocks add gate·wv(query + prefix))──> tokens

The module holds the network and its one decode path; building it from files is `factory.py`
(`ibllm_agent.load`), its identity and lock are `model.card`. It keeps the reference's methods
(`image_bind`, `forward_visual`, `forward_inference`, `generate`, `tokenizer`) and offers a typed API
on top: `encode`, `fuse`, `visual_query`, `start`, `generate_batch`, `stream`. Every way of answering
goes `start` (visual query -> `Decoder`), so the settings in `GenerationParams` and
`VisualCacheParams` mean the same everywhere.

Text-only requests. The reference fine-tunes text-only samples with an all-zero *image tensor* fed
through ImageBind (data/dataset.py), so that is the feature the model learned to read as "no image".
We do the same at inference: `features=None` (or an all-zero feature row) uses the ImageBind vision
embedding of a zero image (`blank_feature()`, computed once), and the visual cache is not applied to it.

State-dict keys are the official files' (`image_bind_proj.*`, `image_bind_norm_{i}`, `prefix_query`,
`llama.*`, `image_bind.*`): the bind network's own names are translated by `checkpoint.UPSTREAM_KEY_MAP`
in `state_dict()` and `load_state_dict()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ibllm_agent import modalities
from ibllm_agent.bind_network import BindNetwork
from ibllm_agent.cache.base import Neighbor, VisualCache, retrieve_and_blend
from ibllm_agent.card import ModelCard
from ibllm_agent.checkpoint import from_upstream_keys, to_upstream_keys
from ibllm_agent.fusion import fuse
from ibllm_agent.generation import Decoder, Generation, PromptTooLongError
from ibllm_agent.imagebind.model import MODALITIES as BRANCHES
from ibllm_agent.imagebind.model import ImageBindArgs, ImageBindModel
from ibllm_agent.llama.model import ModelArgs, Transformer
from ibllm_agent.llama.tokenizer import Tokenizer
from ibllm_agent.params import DEFAULT_GENERATION, DEFAULT_VISUAL_CACHE, GenerationParams, VisualCacheParams

__all__ = ["ImageBindLLM", "UnknownModalityError"]

UnknownModalityError = modalities.UnknownModalityError


def upstream_branch(key: str) -> str:
    """The reference's `forward_visual` keys: "Image"/"Video" -> vision, any other ImageBind branch lower-cased."""
    branch = "vision" if key in ("Image", "Video") else key.lower()
    if branch not in BRANCHES:
        raise UnknownModalityError(f"unknown modality {key!r} in inputs; expected one of Image, Video, Audio, "
                                   "Point, Text, Depth, Thermal, IMU")
    return branch


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
    """The whole model. Build it with `ibllm_agent.load(...)`; the constructor makes random (or meta) weights."""

    def __init__(self, llama_args: ModelArgs, tokenizer: Tokenizer, imagebind_args: ImageBindArgs, *,
                 query_layer: int, feature_dim: int | None = None, device: torch.device | str | None = None,
                 card: ModelCard | None = None):
        """`device="meta"` builds without memory (for loading); None builds random weights on the CPU."""
        super().__init__()
        if not 0 < query_layer <= llama_args.n_layers:
            raise ValueError(f"query_layer {query_layer} must be in 1..n_layers ({llama_args.n_layers})")
        meta = device is not None and torch.device(device).type == "meta"
        with _SkipMetaNormalInit() if meta else contextlib.nullcontext():
            # ImageBind takes the device itself: its constructor computes values that meta cannot hold
            self.image_bind = ImageBindModel(imagebind_args, device=device)
            with torch.device(device) if device is not None else contextlib.nullcontext():
                self.feature_dim = feature_dim or imagebind_args.out_embed_dim
                self.bind = BindNetwork(self.feature_dim, llama_args.dim)
                self.llama = Transformer(llama_args)
                # one learned prefix per adapted layer (the last `query_layer`); query_len is 1
                self.prefix_query = nn.Embedding(query_layer, llama_args.dim)
        self.query_layer = query_layer
        self.tokenizer = tokenizer
        self.card = card or ModelCard()
        self.visual_cache: VisualCache | None = None
        """The cache `visual_query` blends from (FAISS or Chroma); `load(knn=True)` attaches one."""
        self.image_generator = None
        """What `generate_image` draws with (`image_generation.UnclipGenerator` or the toy decoder);
        attached on first use for the toy, by `image_generation.attach_unclip` for the official weights."""
        self._blank: torch.Tensor | None = None
        self._legacy_cache = None  # forward_inference's sequence state, as the reference keeps it
        self._legacy_adapter = None
        self.register_state_dict_post_hook(to_upstream_keys)
        self.register_load_state_dict_pre_hook(from_upstream_keys)

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
        toy = ", toy world" if self.card.is_toy else ""
        return (f"ImageBindLLM(name={self.card.name!r}{toy}, llama dim={p.dim} layers={p.n_layers} "
                f"vocab={p.vocab_size}, query_layer={self.query_layer}, visual_cache={self.visual_cache!r}, "
                f"device={self.device}, dtype={self.dtype})")

    # ----- ImageBind ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def image_bind_forward(self, inputs: Mapping[str, torch.Tensor], *, prenorm: bool = False
                           ) -> dict[str, torch.Tensor]:
        """ImageBind on `{branch: tensor}` (ImageBind's names), inputs moved to the model's device/dtype.
        `prenorm=True`: the head outputs before the final normalisation and scale (averaged over clips),
        what the reference's image generation reads (`image_bind(..., prenorm=True)[1]`)."""
        moved = {}
        for branch, value in inputs.items():
            if branch not in BRANCHES:
                raise UnknownModalityError(f"unknown ImageBind modality {branch!r}; expected one of {BRANCHES}")
            value = torch.as_tensor(value).to(self.device)
            moved[branch] = value if branch == "text" else value.to(self.dtype)
        return self.image_bind(moved, prenorm=True)[1] if prenorm else self.image_bind(moved)

    @torch.inference_mode()
    def encode(self, items: Sequence, *, prenorm: bool = False) -> torch.Tensor:
        """ImageBind embeddings [N, feature_dim] (float32, CPU) of `MediaInput`s, batched per branch and shape
        (`prenorm`: before the final normalisation, see `image_bind_forward`)."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            branch = modalities.get(item.modality).branch
            groups.setdefault((branch, tuple(item.tensor.shape)), []).append(i)
        out = torch.empty(len(items), self.feature_dim)
        for (branch, _), idx in groups.items():
            batch = torch.stack([items[i].tensor for i in idx])
            out[idx] = self.image_bind_forward({branch: batch}, prenorm=prenorm)[branch].float().cpu()
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
        """[N, D] embeddings and their weights -> the fused feature [D] (`ibllm_agent.fusion.fuse`)."""
        return fuse(embeddings, weights)

    @torch.inference_mode()
    def visual_query(self, feature: torch.Tensor, visual_cache: VisualCacheParams | bool | None = None
                     ) -> tuple[torch.Tensor, list[list[Neighbor]]]:
        """Fused feature(s) [B, D] (or [D]) -> (visual query [B, 1, dim], cache neighbours per row).

        `visual_cache` (params, a switch, or None = use the cache when one is loaded). All-zero rows
        mean "no media": they become `blank_feature()` and skip the cache.
        """
        params = VisualCacheParams.of(visual_cache)
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
        use_cache = self.visual_cache is not None if params.enabled is None else params.enabled
        if use_cache and not bool(blank.all()):
            if self.visual_cache is None:
                raise ValueError("the visual cache is on but none is loaded (load(..., knn=True, knn_index=...))")
            rows = (~blank).nonzero().flatten()
            blended, found = retrieve_and_blend(self.visual_cache, feature[rows], params.size, params.t,
                                                params.weight)
            feature = feature.clone()
            feature[rows] = blended.float()
            for r, n in zip(rows.tolist(), found):
                neighbors[r] = n
        return self.bind(feature), neighbors

    @torch.inference_mode()
    def forward_visual(self, inputs: Mapping[str, Sequence], cache_size: int = DEFAULT_VISUAL_CACHE.size,
                       cache_t: float = DEFAULT_VISUAL_CACHE.t,
                       cache_weight: float = DEFAULT_VISUAL_CACHE.weight) -> torch.Tensor:
        """The reference's entry: `{"Image"|"Video"|"Audio"|"Point"|"Text"|...: [tensor, weight]}` ->
        visual query [B, 1, dim] (the cache applies when one is loaded, as the reference's knn=True).
        Unlike the reference, the result is [B, 1, dim] with the cache on too, and the blend is per
        sample for B > 1."""
        if not inputs:
            raise ValueError("inputs: at least one modality is needed")
        embeddings = []
        for key, (value, _) in inputs.items():
            branch = upstream_branch(key)
            embeddings.append(self.image_bind_forward({branch: value})[branch].float())
        fused = fuse(torch.stack(embeddings), [weight for _, weight in inputs.values()], names=list(inputs))
        cache = VisualCacheParams(size=cache_size, t=cache_t, weight=cache_weight)
        return self.visual_query(fused.cpu(), cache)[0]

    # ----- image output: the conditioning vector of Stable unCLIP ---------------------------------------
    @torch.inference_mode()
    def image_embedding(self, inputs, visual_cache: VisualCacheParams | bool | None = None, *,
                        return_neighbors: bool = False):
        """The vector the reference's `image_generate` hands to Stable unCLIP as `image_embeds`, [B, D]
        float32 on the CPU: ImageBind outputs before the final normalisation, point embeddings / 5,
        weights / (sum + 1e-6), and with the visual cache the direction blended with its neighbours and
        scaled back to the mixture's norm (`ibllm_agent.image_generation`, which explains why this is not
        `fusion.fuse`).

        `inputs`: the reference's `{"Image"|"Video"|"Audio"|"Point"|"Text"|...: [tensor, weight]}` with
        batched tensors, or `MediaInput`s, alone or as `(MediaInput, weight)` pairs. `visual_cache`:
        params, a switch, or None = use the cache when one is loaded (the reference's `knn=True`).
        `return_neighbors`: also return the cache items each row leaned on.
        """
        from ibllm_agent import image_generation

        embeddings, weights, branches, names = [], [], [], []
        if isinstance(inputs, Mapping):
            if not inputs:
                raise image_generation.ConditioningError("inputs: at least one modality is needed")
            for key, (value, weight) in inputs.items():
                branch = upstream_branch(key)
                embeddings.append(self.image_bind_forward({branch: value}, prenorm=True)[branch].float().cpu())
                weights.append(weight)
                branches.append(branch)
                names.append(key)
        else:
            pairs = [item if isinstance(item, tuple) else (item, 1.0) for item in inputs]
            if not pairs:
                raise image_generation.ConditioningError("inputs: at least one input is needed")
            items = [item for item, _ in pairs]
            embeddings = list(self.encode(items, prenorm=True)[:, None])  # N x (1, D)
            weights = [w for _, w in pairs]
            branches = [modalities.get(item.modality).branch for item in items]
            names = [getattr(item, "name", item.modality) for item in items]
        mixed = image_generation.mix_prenorm(embeddings, weights, branches, names=names)
        params = VisualCacheParams.of(visual_cache)
        use_cache = self.visual_cache is not None if params.enabled is None else params.enabled
        neighbors: list[list[Neighbor]] = [[] for _ in range(mixed.shape[0])]
        if use_cache:
            if self.visual_cache is None:
                raise ValueError("the visual cache is on but none is loaded (load(..., knn=True, knn_index=...))")
            mixed, neighbors = image_generation.cache_blend_keep_norm(self.visual_cache, mixed, params)
        return (mixed, neighbors) if return_neighbors else mixed

    def generate_image(self, inputs, prompt: str = "", params=None, visual_cache=None, **overrides):
        """Draw a picture of `inputs` (see `image_embedding`) with `prompt`: `ibllm_agent.image_generation.
        generate_image`, through the generator attached as `self.image_generator` (Stable unCLIP for the
        official weights, the toy decoder for the toy). Returns a `DrawResult`."""
        from ibllm_agent.image_generation import generate_image

        return generate_image(self, inputs, prompt, params, visual_cache, **overrides)

    # ----- LLaMA with the visual query ------------------------------------------------------------------
    def adapter_queries(self, visual_query: torch.Tensor) -> list[torch.Tensor | None]:
        """Per LLaMA layer: None, or visual_query + prefix_query[j] (B, 1, dim) for the last query_layer layers."""
        vq = visual_query.to(self.device, self.dtype).reshape(-1, 1, self.llama.params.dim)  # (B, 1, dim)
        prefix = self.prefix_query.weight.reshape(self.query_layer, 1, -1)  # (query_layer, 1, dim)
        first = self.llama.n_layers - self.query_layer
        return [None] * first + [vq + prefix[j] for j in range(self.query_layer)]

    def forward(self, tokens: torch.Tensor, visual_query: torch.Tensor) -> torch.Tensor:
        """Teacher-forced float32 logits [B, L, vocab] of full sequences (no cache; differentiable: training)."""
        adapter = self.llama.adapter_values(self.adapter_queries(visual_query))
        return self.llama(tokens, None, adapter)

    @torch.inference_mode()
    def forward_inference(self, visual_query: torch.Tensor, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The reference's step: float32 logits [B, vocab] of the last of `tokens` (B, L) at positions
        start_pos..start_pos+L-1. Successive calls with increasing start_pos continue one sequence
        (an internal cache, as the reference's module state; start_pos 0 starts over)."""
        tokens = torch.as_tensor(tokens, device=self.device)
        B, L = tokens.shape
        with self.card.lock:
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

    # ----- the one decode path --------------------------------------------------------------------------
    def join(self, decoder: Decoder, prompts: Sequence[str | Sequence[int]], visual_query: torch.Tensor,
             generation: GenerationParams | Sequence[GenerationParams] = DEFAULT_GENERATION) -> list[int]:
        """Add prompts (text, BOS added, or token ids) with their visual queries [B or 1, 1, dim] to `decoder`;
        returns their row ids. `generation` is one settings object for all, or one per prompt (rows that differ
        only in their `constraint` share a batch). A seed gives the new rows their own generator."""
        ids = [self.tokenizer.encode(p, bos=True, eos=False) if isinstance(p, str) else list(p) for p in prompts]
        if visual_query.shape[0] == 1 and len(ids) > 1:
            visual_query = visual_query.expand(len(ids), -1, -1)
        if visual_query.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} prompts but {visual_query.shape[0]} visual inputs")
        if isinstance(generation, GenerationParams):
            generator = None
            if generation.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(generation.seed)
        else:
            generation = list(generation)
            if len(generation) != len(ids):
                raise ValueError(f"{len(ids)} prompts but {len(generation)} GenerationParams")
            generator = [None if g.seed is None else torch.Generator(device=self.device).manual_seed(g.seed)
                         for g in generation]
        with torch.inference_mode():
            adapter = self.llama.adapter_values(self.adapter_queries(visual_query))
        return decoder.join(ids, adapter, generation, generator)

    def decoder(self, prompts: Sequence[str | Sequence[int]], visual_query: torch.Tensor,
                generation: GenerationParams = DEFAULT_GENERATION) -> Decoder:
        """A fixed-batch `Decoder` for prompts and their visual queries."""
        decoder = Decoder(self.llama, self.tokenizer)
        self.join(decoder, prompts, visual_query, generation)
        return decoder

    def start(self, prompts: Sequence[str | Sequence[int]], features: torch.Tensor | None = None,
              generation: GenerationParams | Sequence[GenerationParams] = DEFAULT_GENERATION, visual_cache: VisualCacheParams | bool | None = None,
              *, into: Decoder | None = None) -> tuple[Decoder, list[int], list[list[Neighbor]]]:
        """Everything before the first token: fused features [B, D] ([D] or one row is shared; None = text
        only) -> visual queries (through the cache) -> rows of a `Decoder` (a new fixed batch, or the running
        batch `into`). Returns the decoder, the new rows' ids and each row's cache neighbours. Callers that
        share the model hold `model.card.lock` around this and around each decoding step."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list; use [prompt] for one")
        if features is None:
            features = torch.zeros(len(prompts), self.feature_dim)
        visual_query, neighbors = self.visual_query(features, visual_cache)
        if len(neighbors) == 1 and len(prompts) > 1:
            neighbors = neighbors * len(prompts)
        decoder = into if into is not None else Decoder(self.llama, self.tokenizer)
        rows = self.join(decoder, prompts, visual_query, generation)
        return decoder, rows, neighbors

    def generate_batch(self, prompts: Sequence[str], features: torch.Tensor | None = None,
                       generation: GenerationParams | Sequence[GenerationParams] | None = None,
                       visual_cache: VisualCacheParams | bool | None = None, **overrides) -> list[Generation]:
        """Answer each prompt (formatted text, BOS added) given its fused feature row of `features`.
        `generation` is one settings object or one per prompt (e.g. each with its own `constraint`);
        `**overrides` change fields of `generation` (e.g. `temperature=0, max_tokens=32`)."""
        if generation is None or isinstance(generation, GenerationParams):
            generation = _params(generation, overrides)
        else:
            generation = [_params(g, overrides) for g in generation]
        decoder, _, neighbors = self.start(prompts, features, generation, visual_cache)
        decoder.run()
        return [Generation(text=row.text, token_ids=list(row.ids), prompt_tokens=len(row.prompt),
                           finish_reason=row.finish or "length", neighbors=n, error=row.error)
                for row, n in zip(decoder.rows.values(), neighbors)]

    def stream(self, prompt: str, feature: torch.Tensor | None = None, generation: GenerationParams | None = None,
               visual_cache: VisualCacheParams | bool | None = None, **overrides) -> Iterator[str]:
        """Text deltas of the answer to one prompt; they concatenate to `generate_batch([prompt], ...)[0].text`
        (for greedy decoding, or the same seed)."""
        decoder, _, _ = self.start([prompt], feature, _params(generation, overrides), visual_cache)
        for deltas in decoder:
            if deltas[0]:
                yield deltas[0]

    @torch.inference_mode()
    def generate(self, inputs: Mapping[str, Sequence], prompts: Sequence[str],
                 max_gen_len: int = DEFAULT_GENERATION.max_tokens, temperature: float = DEFAULT_GENERATION.temperature,
                 top_p: float = DEFAULT_GENERATION.top_p, cache_size: int = DEFAULT_VISUAL_CACHE.size,
                 cache_t: float = DEFAULT_VISUAL_CACHE.t, cache_weight: float = DEFAULT_VISUAL_CACHE.weight) -> list[str]:
        """The reference's generate: answers (str) for `prompts` (already formatted, e.g. `format_prompt`),
        conditioned on the `inputs` mix; greedy when temperature is 0. Any batch size."""
        visual_query = self.forward_visual(inputs, cache_size, cache_t, cache_weight)
        generation = GenerationParams(max_tokens=max_gen_len, temperature=temperature, top_p=top_p)
        return [text for text, _, _ in self.decoder(prompts, visual_query, generation).run()]


def _params(generation: GenerationParams | None, overrides: dict) -> GenerationParams:
    return (generation or DEFAULT_GENERATION).updated(**overrides) if overrides else (generation or DEFAULT_GENERATION)

