"""The LLaMA transformer of ImageBind-LLM: Meta's LLaMA-1 plus the fine-tune extras and the gated adapter.

Parameter names are Meta's (`tok_embeddings`, `layers.N.attention.wq`, `feed_forward.w1`, ...) so the
official `consolidated.00.pth` and the adapter's `llama.*` keys load one-to-one. On top of plain LLaMA:

* bias on wq, wo, w1, w2, w3 and rank-16 LoRA (`lora_wq_l1`/`_l2` ...) on q, k, v, o, w1, w2, w3
  (phase "finetune"; phase "pretrain" builds neither);
* a per-head gate `[1, n_heads, 1, 1]` (zero-initialised) in every attention: in the layers that get a
  visual query, `out = softmax(q k^T / sqrt(d)) v + tanh(gate) * wv(query)` per head, before `wo`
  (the base `wv` only, no LoRA: the paper's attention-free zero-initialised injection).

Unlike the reference, the KV cache is not module state: it is a `KVCache` object owned by one request,
so two generations can run interleaved on one model. Rows of a batch may be left-padded; each row then
has its own positions (slot - padding) and its padding slots are masked out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ibllm_agent.checkpoint import (
    ADAPTER_ONLY_LLAMA_KEY,
    LLAMA_FILE_IGNORED,
    CheckpointError,
    ConfigValueError,
    MissingFileError,
    check_int,
    check_number,
    read_json_object,
)

PARAMS_JSON_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                    "norm_eps", "rope_theta")
"""The keys of Meta's params.json (LLaMA-1, LLaMA-2, Code Llama) this model honours. Any other key is refused,
not ignored: a misspelt size would silently take its default, and a feature such as LLaMA-3.1's
`use_scaled_rope` would silently be dropped."""


@dataclass
class ModelArgs:
    """LLaMA sizes (from `params.json`) plus the ImageBind-LLM extras."""

    dim: int = 4096
    """Model width."""
    n_layers: int = 32
    """Number of transformer blocks."""
    n_heads: int = 32
    """Attention heads; head_dim = dim // n_heads."""
    vocab_size: int = -1
    """-1 in Meta's params.json: the tokenizer decides (`n_words`)."""
    multiple_of: int = 256
    """The SwiGLU hidden size is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Optional scale of the SwiGLU hidden size (LLaMA-2 style params.json); None for LLaMA-1."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon; Meta's 7B params.json says 1e-6 (the reference's default is 1e-5)."""
    max_seq_len: int = 2048
    """Longest prompt + answer a request may hold (the reference fixes 512); RoPE has no table to outgrow."""
    w_bias: bool = True
    """Biases on wq, wo, w1, w2, w3 (the fine-tuned model); False for phase "pretrain"."""
    w_lora: bool = True
    """LoRA on q, k, v, o, w1, w2, w3 (the fine-tuned model); False for phase "pretrain"."""
    lora_rank: int = 16
    """Rank of every LoRA pair."""
    rope_theta: float = 10000.0
    """RoPE base (LLaMA-1)."""

    def __post_init__(self) -> None:
        """Every size checked (type, sign, bounds, divisibility), so that a bad params.json fails here naming
        the field, not as a ZeroDivisionError, a huge allocation or a hang while the model is built. The
        bounds are far above any LLaMA (405B: dim 16384, 126 layers, 128 heads)."""
        check_int("dim", self.dim, 1, 32768)
        check_int("n_layers", self.n_layers, 1, 256)
        check_int("n_heads", self.n_heads, 1, 1024)
        if self.dim % self.n_heads or self.head_dim % 2:
            raise ConfigValueError("n_heads", f"dim {self.dim} must split into {self.n_heads} heads of even size")
        if self.vocab_size != -1 or not isinstance(self.vocab_size, int):
            check_int("vocab_size", self.vocab_size, 1, 1 << 20)
        check_int("multiple_of", self.multiple_of, 1, 65536)
        if self.ffn_dim_multiplier is not None:
            check_number("ffn_dim_multiplier", self.ffn_dim_multiplier, 0.01, 16.0)
        if self.hidden_dim < 1:
            raise ConfigValueError("ffn_dim_multiplier", f"{self.ffn_dim_multiplier} leaves no feed-forward width")
        check_number("norm_eps", self.norm_eps, 1e-12, 1.0)
        check_int("max_seq_len", self.max_seq_len, 1, 1 << 20)
        for name in ("w_bias", "w_lora"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigValueError(name, f"must be true or false, got {getattr(self, name)!r}")
        check_int("lora_rank", self.lora_rank, 1, 1024)
        check_number("rope_theta", self.rope_theta, 1.0, 1e9)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim, optionally scaled, rounded up to `multiple_of` (11008 for 7B)."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def meta_parameter_count(self, vocab_size: int) -> int:
        """Parameters of Meta's checkpoint for these sizes (without the adapter's extras): embeddings, output
        and final norm, and per layer wq/wk/wv/wo, w1/w2/w3 and two norms (6,738,415,616 for 7B)."""
        per_layer = 4 * self.dim * self.dim + 3 * self.dim * self.hidden_dim + 2 * self.dim
        return 2 * vocab_size * self.dim + self.dim + self.n_layers * per_layer

    @classmethod
    def from_params(cls, params: Mapping, **overrides) -> ModelArgs:
        """From the fields of Meta's params.json (`PARAMS_JSON_KEYS`), then `overrides` (any field: max_seq_len,
        w_bias, vocab_size from the tokenizer ...). Raises ConfigValueError naming the field: an unknown key,
        a bad value, or n_kv_heads other than n_heads (grouped-query attention is not implemented)."""
        unknown = sorted(set(params) - set(PARAMS_JSON_KEYS))
        if unknown:
            raise ConfigValueError(unknown[0], f"not a params.json key this model can honour (unknown: {unknown}; "
                                               f"known: {', '.join(PARAMS_JSON_KEYS)})")
        values = dict(params)
        kv_heads = values.pop("n_kv_heads", None)
        args = cls(**values)
        if kv_heads is not None and check_int("n_kv_heads", kv_heads, 1, 1024) != args.n_heads:
            raise ConfigValueError("n_kv_heads", f"{kv_heads} differs from n_heads {args.n_heads}: grouped-query "
                                                 "attention is not supported")
        return replace(args, **overrides) if overrides else args

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> ModelArgs:
        """Read Meta's `params.json` (see `from_params`): a missing, oversized, malformed or out-of-range file
        raises a CheckpointError naming it and the field. `overrides` come from the caller, not the file, so
        a bad one is a plain ConfigValueError."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: params.json not found (expected <llama_dir>/<llama_type>/params.json)",
                                   file=path)
        params = read_json_object(path)
        try:
            args = cls.from_params(params)
        except ConfigValueError as e:
            raise CheckpointError(f"{path}: {e}", file=path, field=e.field) from e
        return replace(args, **overrides) if overrides else args


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def check_llama_file(args: ModelArgs, sd: Mapping[str, torch.Tensor], *, params_file: str | Path,
                     llama_file: str | Path) -> None:
    """Before anything is built: the sizes in `params_file` (`args`) must be those of Meta's tensors in
    `llama_file` (`sd`), and so must the parameter count they imply. A params.json that does not belong
    to the checkpoint then fails at once naming the field, and a model is never built (let alone
    allocated, as training does) larger than the file. `args.vocab_size` is the tokenizer's (-1: the
    file's). Keys that only the adapter carries are not counted. Raises CheckpointError."""

    def mismatch(field: str, found: str):
        raise CheckpointError(f"{params_file}: {field}={getattr(args, field)} does not match {llama_file}, which "
                              f"has {found}", file=params_file, field=field)

    def shape(key: str) -> tuple[int, ...] | None:
        """The matrix shape of a weight, also when `ibllm quantize` stored it (`.qweight`; int4 packs 2 per byte)."""
        tensor = sd.get(key)
        if tensor is None and key.endswith(".weight"):
            tensor = sd.get(key.removesuffix(".weight") + ".qweight")
            if tensor is not None and tensor.ndim == 2 and tensor.dtype == torch.uint8:
                return tensor.shape[0], 2 * tensor.shape[1]
        return tuple(tensor.shape) if tensor is not None and tensor.ndim == 2 else None

    embeddings = shape("tok_embeddings.weight")  # (vocab, dim)
    if embeddings and embeddings[1] != args.dim:
        mismatch("dim", f"embeddings of width {embeddings[1]}")
    layers = {int(m.group(1)) for key in sd if (m := _LAYER_KEY.match(key))}
    if len(layers) != args.n_layers:
        mismatch("n_layers", f"{len(layers)} layers")
    w1 = shape("layers.0.feed_forward.w1.weight")  # (hidden, dim)
    if w1 and w1[0] != args.hidden_dim:
        field = "multiple_of" if args.ffn_dim_multiplier is None else "ffn_dim_multiplier"
        mismatch(field, f"a feed-forward width of {w1[0]}, not {args.hidden_dim}")
    if embeddings and args.vocab_size > 0 and embeddings[0] != args.vocab_size:
        raise CheckpointError(f"{llama_file}: embeddings for {embeddings[0]} tokens, but the tokenizer has "
                              f"{args.vocab_size}", file=llama_file, field="vocab_size")
    vocab = args.vocab_size if args.vocab_size > 0 else embeddings[0] if embeddings else 0
    implied = args.meta_parameter_count(vocab)
    found = sum(t.numel() * (2 if key.endswith(".qweight") and t.dtype == torch.uint8 else 1)
                for key, t in sd.items()
                if key not in LLAMA_FILE_IGNORED and not ADAPTER_ONLY_LLAMA_KEY.match(key)
                and not key.endswith((".scales", ".scales_and_zeros")))  # a quantised file's weights count once
    if found != implied:
        raise CheckpointError(f"{llama_file}: holds {found:,} LLaMA parameters, but the sizes in {params_file} "
                              f"imply {implied:,}", file=llama_file)


class RMSNorm(nn.Module):
    """x / rms(x) computed in float32, cast back to the input dtype, then times the gain."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * theta^(-2i/d) in float32; positions (B, L) -> two (B, L, 1, head_dim/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float() / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) (Meta's complex layout, not HF's rotate-half); x (B, L, H, hd)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, L, H, hd/2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)  # (B, L, H, hd/2, 2)
    return out.flatten(-2).type_as(x)


@dataclass
class KVCache:
    """Keys and values of one request: a batch of sequences decoded together.

    Slot s of row b holds the token at position s - pad[b] (rows are left-padded to a common length);
    slots before pad[b] are padding and masked out. Capacity grows on demand.
    """

    keys: list[torch.Tensor]
    """Per layer, (B, n_heads, capacity, head_dim), RoPE already applied."""
    values: list[torch.Tensor]
    """Per layer, (B, n_heads, capacity, head_dim)."""
    pad: torch.Tensor
    """(B,) int64: padding slots at the start of each row."""
    length: int = 0
    """Slots filled so far (the same for every row)."""

    @classmethod
    def empty(cls, args: ModelArgs, batch: int, capacity: int, *, device, dtype,
              pad: torch.Tensor | None = None) -> KVCache:
        shape = (batch, args.n_heads, capacity, args.head_dim)
        keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        if pad is None:
            pad = torch.zeros(batch, dtype=torch.long, device=device)
        return cls(keys, values, pad.to(device=device, dtype=torch.long))

    @property
    def batch(self) -> int:
        return self.pad.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, needed: int) -> None:
        """Make room for `needed` slots (doubling, so step-by-step growth stays linear overall)."""
        if needed <= self.capacity:
            return
        new = max(needed, 2 * self.capacity)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                grown = old.new_empty(*old.shape[:2], new, old.shape[3])
                grown[:, :, : self.length] = old[:, :, : self.length]
                buffers[i] = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, L, hd) at slots length..length+L; return all keys and values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), and drop the leading slots that are padding for all of them, so a
        batch that rows keep joining and leaving does not grow without end."""
        index = torch.tensor(rows, dtype=torch.long, device=self.pad.device)
        pad = self.pad[index]
        trim = int(pad.min()) if len(rows) else 0
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                buffers[i] = old[index, :, trim:].contiguous()  # (len(rows), H, capacity - trim, hd)
        self.pad, self.length = pad - trim, self.length - trim

    @classmethod
    def concat(cls, a: KVCache, b: KVCache, room: int) -> KVCache:
        """The rows of `a` then those of `b` in one cache, with `room` free slots after the longer one.

        The shorter side is shifted right to end at the same slot, its padding growing by the shift: a row's
        positions are slot - pad, so its (already rotated) keys keep their meaning. The new slots are zeros,
        like padding slots a prefill writes (masked out, but they must not be NaN)."""
        length = max(a.length, b.length)
        capacity = length + room
        keys, values = [], []
        for layer in range(len(a.keys)):
            for out, (xa, xb) in ((keys, (a.keys[layer], b.keys[layer])), (values, (a.values[layer], b.values[layer]))):
                merged = xa.new_zeros(a.batch + b.batch, xa.shape[1], capacity, xa.shape[3])
                merged[:a.batch, :, length - a.length:length] = xa[:, :, :a.length]
                merged[a.batch:, :, length - b.length:length] = xb[:, :, :b.length]
                out.append(merged)
        pad = torch.cat([a.pad + (length - a.length), b.pad + (length - b.length)])
        return cls(keys, values, pad, length)


class _SlotWriter:
    """`KVCache.write` at a slot given as a device tensor, returning every slot (see decode_step)."""

    def __init__(self, cache: KVCache, slot: torch.Tensor):
        self.cache, self.slot = cache, slot

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(2, self.slot, k)
        values.index_copy_(2, self.slot, v)
        return keys, values


_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


@functools.cache
def _bf16_mv() -> bool:
    """One bfloat16 row through torch.mv: faster than F.linear on a CPU without native bfloat16 (measured on
    an Intel Xeon without AVX512-BF16), 1.6x slower on one with it (AMD EPYC with AVX512-BF16: 9.5 vs 15 GB/s
    on LLaMA-7B's matrices), where F.linear's oneDNN path uses the instructions."""
    from ibllm_agent.placement import cpu_bf16

    return not cpu_bf16()[0]


class Linear(nn.Linear):
    """nn.Linear (same parameters and keys), with two CPU inference fast paths measured in
    tools/bench_generate.py (torch 2.13): one bfloat16 row goes through torch.mv on CPUs without
    native bfloat16, where it beats F.linear's bfloat16 path (`_bf16_mv`); float32 inputs of 3 rows or
    more (batched decoding, prefill) go through oneDNN, 1.2-1.7x faster than MKL's GEMM at 4-64 rows
    here. Training (grad enabled) uses F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            rows = x.numel() // x.shape[-1]
            if x.dtype == torch.bfloat16 and rows == 1 and _bf16_mv():
                out = torch.mv(self.weight, x.reshape(-1)).view(*x.shape[:-1], -1)
                return out if self.bias is None else out + self.bias
            if (x.dtype == torch.float32 and rows >= 3 and _ONEDNN_LINEAR is not None
                    and self.weight.dtype == torch.float32 and self.weight.is_contiguous()):
                out = _ONEDNN_LINEAR(x.reshape(rows, -1), self.weight, self.bias, "none", [], "")
                return out.view(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)


def cat_linears(parts: list[nn.Module]) -> nn.Module:
    """One layer computing `cat([p(x) for p in parts], -1)`: the weights stacked by rows, a missing bias as
    zeros. Float `Linear`s or `QuantLinear`s (quantisation is per row, so stacking quantised rows is exact)."""
    from ibllm_agent.llama.quant import QuantLinear

    if all(isinstance(p, QuantLinear) for p in parts):
        return QuantLinear.cat(parts)
    if any(isinstance(p, QuantLinear) for p in parts):
        raise TypeError("cannot fuse quantised and float layers")
    first = parts[0]
    out = Linear(first.in_features, sum(p.out_features for p in parts), bias=any(p.bias is not None for p in parts),
                 device="meta")
    with torch.no_grad():
        out.weight = nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=False)
        if out.bias is not None:
            out.bias = nn.Parameter(torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                                               for p in parts]), requires_grad=False)
    return out


def lora_linear(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """`module.<name>(x)` plus its LoRA `lora_<name>_l2(lora_<name>_l1(x))` when the module has LoRA."""
    out = getattr(module, name)(x)
    if module.w_lora:
        out = out + getattr(module, f"lora_{name}_l2")(getattr(module, f"lora_{name}_l1")(x))
    return out


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.head_dim = args.head_dim
        self.wq = Linear(args.dim, args.dim, bias=args.w_bias)
        self.wk = Linear(args.dim, args.dim, bias=False)
        self.wv = Linear(args.dim, args.dim, bias=False)
        self.wo = Linear(args.dim, args.dim, bias=args.w_bias)
        self.w_lora = args.w_lora
        if args.w_lora:
            r = args.lora_rank
            self.lora_wq_l1, self.lora_wq_l2 = Linear(args.dim, r, bias=False), Linear(r, args.dim, bias=False)
            self.lora_wk_l1, self.lora_wk_l2 = Linear(args.dim, r, bias=False), Linear(r, args.dim, bias=False)
            self.lora_wv_l1, self.lora_wv_l2 = Linear(args.dim, r, bias=False), Linear(r, args.dim, bias=False)
            self.lora_wo_l1, self.lora_wo_l2 = Linear(args.dim, r, bias=False), Linear(r, args.dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(1, args.n_heads, 1, 1))
        self.wqkv: nn.Module | None = None
        """wq, wk, wv as one product (`fuse`, inference only); None while they are apart."""
        self.wv_lora_merged = False
        """wv holds its LoRA (`Transformer.for_inference`): the adapter path, which reads the base wv, subtracts
        it again (the pair is kept for that)."""

    def adapter_value(self, query: torch.Tensor) -> torch.Tensor:
        """tanh(gate) * wv(query) per head for an adapter input (B, 1, dim) -> (B, n_heads, 1, head_dim)."""
        B, D = query.shape[0], self.n_heads * self.head_dim
        v = self.wv(query) if self.wqkv is None else self.wqkv(query)[..., 2 * D:]  # once per request
        if self.wv_lora_merged:  # the base wv, without the LoRA merged into it
            v = v - self.lora_wv_l2(self.lora_wv_l1(query))
        v = v.view(B, 1, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, 1, hd)
        return self.gate.tanh().to(v.dtype) * v

    def fuse(self) -> None:
        """Inference only: wq, wk, wv as one product `wqkv` (one read of x, one kernel instead of three)."""
        if self.wqkv is None:
            self.wqkv = cat_linears([self.wq, self.wk, self.wv])
            del self.wq, self.wk, self.wv

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int, adapter: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        if self.wqkv is None:
            q, k, v = lora_linear(self, "wq", x), lora_linear(self, "wk", x), lora_linear(self, "wv", x)
        else:
            q, k, v = self.wqkv(x).split(D, dim=-1)
            if self.w_lora:
                q, k, v = (t + getattr(self, f"lora_{n}_l2")(getattr(self, f"lora_{n}_l1")(x))
                           for t, n in ((q, "wq"), (k, "wk"), (v, "wv")))
        q = q.reshape(B, L, self.n_heads, self.head_dim)
        k = k.reshape(B, L, self.n_heads, self.head_dim)
        v = v.reshape(B, L, self.n_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, hd)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, H, S, hd), S = all slots so far
        causal = mask is None and cache is None and L > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, H, L, hd)
        if adapter is not None:
            out = out + adapter  # (B, H, 1, hd) broadcast over the L positions
        out = out.transpose(1, 2).reshape(B, L, D)
        return lora_linear(self, "wo", out)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden = args.dim, args.hidden_dim
        self.w1 = Linear(dim, hidden, bias=args.w_bias)
        self.w2 = Linear(hidden, dim, bias=args.w_bias)
        self.w3 = Linear(dim, hidden, bias=args.w_bias)
        self.w_lora = args.w_lora
        if args.w_lora:
            r = args.lora_rank
            self.lora_w1_l1, self.lora_w1_l2 = Linear(dim, r, bias=False), Linear(r, hidden, bias=False)
            self.lora_w2_l1, self.lora_w2_l2 = Linear(hidden, r, bias=False), Linear(r, dim, bias=False)
            self.lora_w3_l1, self.lora_w3_l2 = Linear(dim, r, bias=False), Linear(r, hidden, bias=False)
        self.w13: nn.Module | None = None
        """w1 and w3 as one product (`fuse`, inference only); None while they are apart."""

    def fuse(self) -> None:
        """Inference only: w1 and w3 as one product `w13`."""
        if self.w13 is None:
            self.w13 = cat_linears([self.w1, self.w3])
            del self.w1, self.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is None:
            return lora_linear(self, "w2", F.silu(lora_linear(self, "w1", x)) * lora_linear(self, "w3", x))
        h1, h3 = self.w13(x).chunk(2, dim=-1)
        if self.w_lora:
            h1 = h1 + self.lora_w1_l2(self.lora_w1_l1(x))
            h3 = h3 + self.lora_w3_l2(self.lora_w3_l1(x))
        return lora_linear(self, "w2", F.silu(h1) * h3)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, cos, sin, mask, cache, layer, adapter):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer, adapter)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError("ModelArgs.vocab_size must be set (from the tokenizer) before building the model")
        self.params = args
        self.vocab_size = args.vocab_size
        self.n_layers = args.n_layers
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)

    def new_cache(self, batch: int, capacity: int, pad: torch.Tensor | None = None) -> KVCache:
        """An empty request cache on this model's device and dtype."""
        w = self.tok_embeddings.weight
        return KVCache.empty(self.params, batch, capacity, device=w.device, dtype=w.dtype, pad=pad)

    def adapter_values(self, queries: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Per layer tanh(gate) * wv(query) for adapter inputs (B, 1, dim) or None (layers without one)."""
        if len(queries) != self.n_layers:
            raise ValueError(f"need one adapter query (or None) per layer: {self.n_layers}, got {len(queries)}")
        return [None if q is None else layer.attention.adapter_value(q) for layer, q in zip(self.layers, queries)]

    def _mask(self, cache: KVCache, L: int, device) -> torch.Tensor | None:
        """Boolean (B, 1, L, S) mask, True = may attend; None for one new token of unpadded rows."""
        start, S = cache.length, cache.length + L
        if L == 1 and not bool((cache.pad > 0).any()):
            return None  # one new token of unpadded rows sees every slot
        q_slot = torch.arange(start, S, device=device)[:, None]  # (L, 1)
        k_slot = torch.arange(S, device=device)[None, :]  # (1, S)
        causal = k_slot <= q_slot  # (L, S)
        real = k_slot[None] >= cache.pad[:, None, None]  # (B, 1, S)
        # a padding query has no real key before it: let it see itself so softmax stays finite
        allowed = causal[None] & (real | (k_slot == q_slot)[None])  # (B, L, S)
        return allowed[:, None]  # (B, 1, L, S)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache, adapter: list[torch.Tensor | None],
                    slot: torch.Tensor) -> torch.Tensor:
        """One new token per row (tokens (B, 1)) written at cache slot `slot` (a (1,) device tensor),
        attending over every slot of the cache through a mask: the same math as `forward` with fixed
        shapes, so that a CUDA graph can capture it (cuda_graphs.py). Slots not yet written must hold
        zeros (masked-out garbage could be NaN, and NaN * 0 is NaN). Returns float32 logits (B, vocab);
        `cache.length` is the caller's to advance."""
        k_slot = torch.arange(cache.capacity, device=tokens.device)
        positions = (slot - cache.pad).clamp(min=0)[:, None]  # (B, 1)
        allowed = (k_slot[None, :] <= slot) & (k_slot[None, :] >= cache.pad[:, None])  # (B, capacity)
        cos, sin = rope_angles(positions, self.params.head_dim, self.params.rope_theta)
        writer = _SlotWriter(cache, slot)
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, allowed[:, None, None, :], writer, i, adapter[i])
        return self.output(self.norm(h)).float()[:, -1, :]

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                adapter: list[torch.Tensor | None] | None = None, *, last_only: bool = False) -> torch.Tensor:
        """Logits for `tokens` (B, L).

        With a cache the tokens continue the request at slot `cache.length` (and the cache advances);
        without one they are a full sequence from position 0 (training). `adapter` is
        `adapter_values(...)` (or None for plain LLaMA). Returns (B, L, vocab), or (B, vocab) of the
        last position with `last_only`, in float32.
        """
        B, L = tokens.shape
        adapter = adapter if adapter is not None else [None] * self.n_layers
        if cache is None:
            positions = torch.arange(L, device=tokens.device).expand(B, L)
            mask = None
        else:
            if cache.batch != B:
                raise ValueError(f"cache holds {cache.batch} rows, tokens have {B}")
            cache.reserve(cache.length + L)
            slots = torch.arange(cache.length, cache.length + L, device=tokens.device)
            positions = (slots[None, :] - cache.pad[:, None]).clamp(min=0)  # (B, L)
            mask = self._mask(cache, L, tokens.device)
        cos, sin = rope_angles(positions, self.params.head_dim, self.params.rope_theta)
        h = self.tok_embeddings(tokens)  # (B, L, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, cache, i, adapter[i])
        if cache is not None:
            cache.length += L
        if last_only:
            h = h[:, -1:, :]
        logits = self.output(self.norm(h)).float()
        return logits[:, -1, :] if last_only else logits


FROZEN_LINEARS = {"attention": ("wq", "wk", "wv", "wo"), "feed_forward": ("w1", "w2", "w3")}
"""The frozen projections of each block (Meta's weights; the adapter adds bias and LoRA to them)."""


@torch.no_grad()
def for_inference(llama: Transformer, dtype: torch.dtype, *, quantize: str | None = None,
                  group_size: int | None = None, merge_lora: bool = False, fuse: bool = False,
                  quantize_output: bool = True, release=None) -> None:
    """Convert `llama`'s frozen linear layers in place for inference, one layer at a time (memory never holds
    more than one layer twice), whatever they hold now (float weights still in a file mapping, in the file's
    dtype, or `QuantLinear`s read from a quantised file):

    * merge_lora: W + l2 @ l1 computed in float32 from the float weight (wv keeps its pair: the adapter
      path reads the base wv); quantised weights cannot take LoRA and keep it apart;
    * quantize ("int8"/"int4"): the weight quantised (`quant.QuantLinear`), the output projection too
      when `quantize_output`; else cast to `dtype`;
    * fuse: wq/wk/wv -> wqkv and w1/w3 -> w13, then int4 weights packed for their device's kernel.

    `release(tensor)` receives each float source weight once it is no longer needed (factory.py drops its
    file pages). Afterwards the model can no longer be trained or saved in the official layout.
    """
    from ibllm_agent.llama.quant import INT4_GROUP_SIZE, QuantLinear

    group_size = group_size or INT4_GROUP_SIZE

    def convert(module: nn.Module, name: str, merge: bool, q: str | None) -> None:
        linear = getattr(module, name)
        if isinstance(linear, QuantLinear):
            return
        w = linear.weight.float()
        if merge:
            w = w + getattr(module, f"lora_{name}_l2").weight.float() @ getattr(module, f"lora_{name}_l1").weight.float()
        if q is not None:
            new = QuantLinear.from_linear(linear, q, group_size=group_size, weight=w)
        else:
            new = Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
            new.weight = nn.Parameter(w.to(dtype) if merge or linear.weight.dtype != dtype else linear.weight,
                                      requires_grad=False)
            new.bias = linear.bias
        if release is not None and getattr(new, "weight", None) is not linear.weight:
            release(linear.weight)
        setattr(module, name, new)

    def repack(module: nn.Module) -> None:
        if isinstance(module, QuantLinear):
            before = module.qweight
            module.repack()
            if release is not None and module.qweight is not before:
                release(before)

    for layer in llama.layers:
        for part, names in FROZEN_LINEARS.items():
            module = getattr(layer, part)
            merge = merge_lora and module.w_lora and not isinstance(getattr(module, names[0], None), QuantLinear)
            for name in names:
                convert(module, name, merge, quantize)
            if merge:
                for name in names:
                    if name != "wv":
                        delattr(module, f"lora_{name}_l1")
                        delattr(module, f"lora_{name}_l2")
                module.w_lora = False
                if part == "attention":
                    module.wv_lora_merged = True
            if fuse:
                parts = [getattr(module, n) for n in names if n not in ("wo", "w2")]
                module.fuse()  # copies the parts into one tensor: their (file) pages can go
                for t in (t for part in parts for t in [*part.parameters(), *part.buffers()]):
                    if release is not None:
                        release(t)
        for m in layer.modules():
            repack(m)
    convert(llama, "output", False, quantize if quantize_output else None)
    repack(llama.output)


def init_weights(model: Transformer, generator: torch.Generator, std: float = 0.02) -> None:
    """Random weights for test/toy models: normal(0, std) matrices, unit norms, zero biases, gates and LoRA-B."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias") or name.endswith(".gate") or "_l2." in name:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)

