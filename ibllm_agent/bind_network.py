"""The bind network: an ImageBind feature [B, 1024] -> the visual query [B, 1, dim] LLaMA's gates read.

    x = proj(feature)                                   # Linear(1024 -> dim), with bias
    x = x + w2(silu(w1(norm(x))) * w3(norm(x)))         # three times: RMSNorm -> SwiGLU, residual

RMSNorm and bias-free SwiGLU linears as the released 7B adapter (the reference's `legacy_bridge`
variant with LayerNorm and biases was not released). The SwiGLU is 4*dim wide and its linears are
named as LLaMA's feed-forward (w1 gate, w2 down, w3 up). The adapter file calls them
`image_bind_proj`, `image_bind_norm_{i}` and `image_bind_f{1,2,3}_{i}`: `checkpoint.UPSTREAM_KEY_MAP`
translates, so the official file loads and saves under its own names.

On the 7B the nine SwiGLU linears hold 604M weights (1.2 GB in bfloat16), the largest float part left
once LLaMA is quantised: a quantised model holds them in int8 too (`quantize_for_inference`).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ibllm_agent.llama.model import RMSNorm

NUM_BLOCKS = 3

QUANTIZE = "int8"
"""The bind network's scheme in a quantised model, whichever scheme LLaMA has: one scale per output channel.
Its output is added to every token, so it gets the finer of the two schemes; int8 alone halves its bytes."""
QUANTIZED_FILE_WEIGHT = re.compile(rf"^image_bind_f[123]_[1-{NUM_BLOCKS}]\.weight$")
"""The adapter file's keys of the weights `quantize_for_inference` quantises (the official names)."""


class BindBlock(nn.Module):
    """RMSNorm -> SwiGLU, added to its input."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.w1 = nn.Linear(dim, 4 * dim, bias=False)
        self.w2 = nn.Linear(4 * dim, dim, bias=False)
        self.w3 = nn.Linear(dim, 4 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return x + self.w2(F.silu(self.w1(n)) * self.w3(n))


class BindNetwork(nn.Module):
    """Projects ImageBind features into LLaMA's width and refines them with three SwiGLU blocks."""

    def __init__(self, feature_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, dim)
        self.blocks = nn.ModuleList(BindBlock(dim) for _ in range(NUM_BLOCKS))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """[B, feature_dim] in any float dtype -> [B, 1, dim] in the network's dtype and device."""
        x = self.proj(feature.to(self.proj.weight)[:, None, :])  # (B, 1, dim)
        for block in self.blocks:
            x = block(x)
        return x


def quantize_for_inference(bind: BindNetwork, release=None) -> None:
    """Replace the SwiGLU linears by int8 `QuantLinear`s in place, one at a time (`release(weight)` gets each
    float source, e.g. to drop its pages of a mapped file). The projection (1024 x dim, with bias) stays float."""
    from ibllm_agent.llama.quant import quantize_linears

    names = [f"blocks.{i}.w{j}" for i in range(len(bind.blocks)) for j in (1, 2, 3)]
    quantize_linears(bind, names, QUANTIZE, release=release)
