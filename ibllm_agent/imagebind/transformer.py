"""The one pre-norm transformer block shared by every ImageBind trunk and by Point-Bind.

``x = x + attn(norm_1(x)); x = x + mlp(norm_2(x))`` with standard multi-head self-attention
(q, k, v from one packed projection, scale ``head_dim ** -0.5``, optional additive mask and an
optional learned extra key/value, ``bias_kv``) and a GELU (erf) MLP of ratio 4.

Two checkpoint layouts name the same parameters differently; :class:`KeyLayout` keeps the
state-dict keys exact while the math stays in one place:

* ImageBind (``nn.MultiheadAttention``): ``attn.in_proj_weight``, ``attn.in_proj_bias``,
  ``attn.bias_k``, ``attn.bias_v``, ``attn.out_proj.*``, ``norm_1``, ``norm_2``.
* Point-BERT (timm ViT): ``attn.qkv.weight`` (no bias), ``attn.proj.*``, ``norm1``, ``norm2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class KeyLayout:
    """Parameter names of one checkpoint family (the math does not depend on them)."""

    norm_1: str
    """Attribute name of the LayerNorm before attention."""
    norm_2: str
    """Attribute name of the LayerNorm before the MLP."""
    packed: bool
    """True: ``in_proj_weight``/``in_proj_bias``/``out_proj`` (nn.MultiheadAttention);
    False: ``qkv``/``proj`` Linears (timm)."""


IMAGEBIND_LAYOUT = KeyLayout(norm_1="norm_1", norm_2="norm_2", packed=True)
POINT_BERT_LAYOUT = KeyLayout(norm_1="norm1", norm_2="norm2", packed=False)


class SelfAttention(nn.Module):
    """Multi-head self-attention on [B, L, D] via ``scaled_dot_product_attention``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        bias_kv: bool = False,
        packed: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.packed = packed
        kw = {"device": device, "dtype": dtype}
        if packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim, **kw))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim, **kw)) if qkv_bias else None
            self.out_proj = nn.Linear(dim, dim, **kw)
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **kw)
            self.proj = nn.Linear(dim, dim, **kw)
        if bias_kv:
            # One learned key/value appended after the projections (nn.MultiheadAttention add_bias_kv).
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim, **kw))
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        else:
            self.bias_k = self.bias_v = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, L, D = x.shape
        H = self.num_heads
        if self.packed:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, L, D)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, D)], dim=1)  # (B, L+1, D)
            v = torch.cat([v, self.bias_v.expand(B, 1, D)], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))  # the extra key is visible to every query
        q = q.view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, head_dim)
        k = k.view(B, k.shape[1], H, D // H).transpose(1, 2)  # (B, H, S, head_dim)
        v = v.view(B, v.shape[1], H, D // H).transpose(1, 2)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, head_dim)
        out = out.transpose(1, 2).reshape(B, L, D)
        return self.out_proj(out) if self.packed else self.proj(out)


class Mlp(nn.Module):
    """Linear -> GELU (erf) -> Linear; keys ``fc1``, ``fc2``."""

    def __init__(self, dim: int, hidden: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample (training only)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN1(x))`` then ``x + MLP(LN2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        layout: KeyLayout = IMAGEBIND_LAYOUT,
        eps: float = 1e-6,
        mlp_ratio: int = 4,
        qkv_bias: bool = True,
        bias_kv: bool = False,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self._norm_names = (layout.norm_1, layout.norm_2)
        self.drop_path = drop_path
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, bias_kv=bias_kv, packed=layout.packed, **kw)
        self.add_module(layout.norm_1, nn.LayerNorm(dim, eps=eps, **kw))
        self.mlp = Mlp(dim, mlp_ratio * dim, **kw)
        self.add_module(layout.norm_2, nn.LayerNorm(dim, eps=eps, **kw))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        norm_1, norm_2 = (self._modules[name] for name in self._norm_names)
        x = x + drop_path(self.attn(norm_1(x), attn_mask), self.drop_path, self.training)
        return x + drop_path(self.mlp(norm_2(x)), self.drop_path, self.training)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Progressive stochastic-depth rates 0 .. rate over the blocks (upstream ``linspace``)."""
    return [x.item() for x in torch.linspace(0, rate, num_blocks)] if num_blocks else []


class Trunk(nn.Module):
    """An ImageBind modality trunk: optional LayerNorm (vision only), then the blocks.

    Keys: ``pre_transformer_layer.0.*`` (when ``pre_norm``) and ``blocks.N.*``.
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        *,
        pre_norm: bool,
        bias_kv: bool,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        # Sequential so that the key is `pre_transformer_layer.0.weight`, as upstream.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6, **kw)) if pre_norm else None
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, bias_kv=bias_kv, drop_path=p, **kw)
            for p in drop_path_rates(drop_path, num_blocks)
        )

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if self.pre_transformer_layer is not None:
            tokens = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            tokens = block(tokens, attn_mask)
        return tokens
