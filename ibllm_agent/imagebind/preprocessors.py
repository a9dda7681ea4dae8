"""ImageBind modality preprocessors: raw tensor -> token sequence [B, L, D] for a trunk.

Key names follow upstream ``multimodal_preprocessors.py`` so official state dicts load as is:
``cls_token``, ``<stem>.proj[.1].weight``, ``<stem>.norm_layer.*``, ``pos_embedding_helper.pos_embed``
(vision/audio/depth/thermal); ``token_embedding``, ``pos_embed``, ``mask`` (text);
``imu_stem.*``, ``pos_embed``, ``cls_token`` (imu).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled_randn(*shape: int, std: float, device=None, dtype=None) -> Tensor:
    """`randn(shape) * std`; a meta tensor skips the product (meta's mul imports torch._dynamo, seconds
    of `load`, and loading replaces the values anyway)."""
    x = torch.randn(*shape, device=device, dtype=dtype)
    return x if x.is_meta else x * std


class RepeatFrames(nn.Module):
    """An image [B, C, H, W] becomes a clip [B, C, T, H, W] by repeating it T times (a clip passes)."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)  # (B, C, 1, H, W)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)  # (B, C, T, H, W)
        return x


class PatchStem(nn.Module):
    """Patchify with ``proj`` (a conv, or a Sequential ending in one), flatten to tokens, optional LayerNorm."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, D, [T,] H', W')
        x = x.flatten(2).transpose(1, 2)  # (B, patches, D)
        return self.norm_layer(x) if self.norm_layer is not None else x


class PosEmbedding(nn.Module):
    """Learned positions of the CLS token and the patches; key ``pos_embed`` [1, 1 + patches, D]."""

    def __init__(self, num_tokens: int, dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(scaled_randn(1, num_tokens, dim, std=dim**-0.5, device=device, dtype=dtype))

    def forward(self, num_patches: int) -> Tensor:
        """Positions for ``1 + num_patches`` tokens, bicubically resized from a square grid if needed."""
        pos = self.pos_embed
        stored = pos.shape[1] - 1
        if stored == num_patches:
            return pos
        side = math.isqrt(stored)
        if side * side != stored or math.isqrt(num_patches) ** 2 != num_patches:
            raise ValueError(
                f"input gives {num_patches} patches but the checkpoint's position embedding has {stored}; "
                "only square grids can be resized"
            )
        grid = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
        # Same call as upstream (scale factor, bicubic), computed in float32.
        grid = F.interpolate(grid, scale_factor=math.sqrt(num_patches / stored), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, num_patches, -1).to(pos.dtype)  # (1, patches, D)
        return torch.cat([pos[:, :1], grid], dim=1)


class PatchPreprocessor(nn.Module):
    """Vision, audio, depth and thermal: stem tokens, a CLS token in front, plus learned positions.

    ``stem_name`` is the upstream attribute (``rgbt_stem`` for vision/audio/thermal, ``depth_stem``).
    """

    def __init__(self, stem_name: str, stem: PatchStem, num_tokens: int, dim: int, *, device=None, dtype=None):
        super().__init__()
        self._stem_name = stem_name
        self.add_module(stem_name, stem)
        self.cls_token = nn.Parameter(scaled_randn(1, 1, dim, std=dim**-0.5, device=device, dtype=dtype))
        self.pos_embedding_helper = PosEmbedding(num_tokens, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self._modules[self._stem_name](x)  # (B, patches, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + patches, D)
        return tokens + self.pos_embedding_helper(tokens.shape[1] - 1)


def vision_preprocessor(dim, kernel_size, frames, num_tokens, *, device=None, dtype=None) -> PatchPreprocessor:
    """Images repeated to ``frames`` frames, clips as they are, through a Conv3d (no bias) stem."""
    conv = nn.Conv3d(3, dim, kernel_size=kernel_size, stride=kernel_size, bias=False, device=device, dtype=dtype)
    stem = PatchStem(nn.Sequential(RepeatFrames(frames), conv))  # key proj.1.weight
    return PatchPreprocessor("rgbt_stem", stem, num_tokens, dim, device=device, dtype=dtype)


def spectrogram_preprocessor(
    stem_name, dim, kernel, stride, num_tokens, *, device=None, dtype=None
) -> PatchPreprocessor:
    """Audio / depth / thermal: one-channel Conv2d (no bias) stem followed by a LayerNorm (eps 1e-5)."""
    conv = nn.Conv2d(1, dim, kernel_size=kernel, stride=stride, bias=False, device=device, dtype=dtype)
    stem = PatchStem(conv, nn.LayerNorm(dim, device=device, dtype=dtype))
    return PatchPreprocessor(stem_name, stem, num_tokens, dim, device=device, dtype=dtype)


class TextPreprocessor(nn.Module):
    """Token + position embeddings; the additive causal ``mask`` buffer is stored in checkpoints."""

    def __init__(self, vocab_size: int, context_length: int, dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim, device=device, dtype=dtype)
        self.pos_embed = nn.Parameter(scaled_randn(1, context_length, dim, std=0.01, device=device, dtype=dtype))
        mask = torch.full((context_length, context_length), float("-inf"), device=device, dtype=dtype)
        # -inf above the diagonal, 0 elsewhere (meta skips triu_: it imports torch._dynamo; loading fills it)
        self.register_buffer("mask", mask if mask.is_meta else mask.triu_(1))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        return self.token_embedding(ids) + self.pos_embed  # (B, context, D)


class IMUPreprocessor(nn.Module):
    """IMU [B, channels, length]: windows of ``kernel`` samples of all channels -> Linear (no bias) + LN."""

    def __init__(self, dim: int, channels: int, kernel: int, num_tokens: int, *, device=None, dtype=None):
        super().__init__()
        self.kernel = kernel
        kw = {"device": device, "dtype": dtype}
        self.imu_stem = PatchStem(nn.Linear(channels * kernel, dim, bias=False, **kw), nn.LayerNorm(dim, **kw))
        self.pos_embed = nn.Parameter(scaled_randn(1, num_tokens, dim, std=0.01, **kw))
        self.cls_token = nn.Parameter(scaled_randn(1, 1, dim, std=dim**-0.5, **kw))

    def forward(self, x: Tensor) -> Tensor:
        x = x.unfold(-1, self.kernel, self.kernel).permute(0, 2, 1, 3)  # (B, windows, channels, kernel)
        x = x.reshape(x.shape[0], x.shape[1], -1)  # (B, windows, channels * kernel)
        tokens = self.imu_stem.norm_layer(self.imu_stem.proj(x))  # (B, windows, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, 1 + windows, D)
