"""ImageBind heads (tokens -> out_embed_dim) and post-processors (normalise, logit scale).

Heads are ``nn.Sequential`` so that the upstream keys (``0.weight``, ``2.weight``, ``imu.3.weight``,
``text.proj.1.weight``) come out as is; the Dropout layers only act in training, as upstream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Fixed logit scales of the non-learnable post-processors (upstream `logit_scale_init`).
FIXED_LOGIT_SCALES = {"audio": 20.0, "depth": 5.0, "thermal": 10.0, "imu": 5.0, "point": 1.0}
TEXT_LOGIT_SCALE_INIT = 1 / 0.07
MAX_LOGIT_SCALE = 100.0


class SelectToken(nn.Module):
    """Token ``index`` of [B, L, D] -> [B, D] (the CLS token)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.index]


def cls_head(dim: int, out_dim: int, *, dropout: bool = False, device=None, dtype=None) -> nn.Sequential:
    """LayerNorm (eps 1e-6), CLS token, [Dropout(0.5) for IMU], Linear without bias."""
    kw = {"device": device, "dtype": dtype}
    layers = [nn.LayerNorm(dim, eps=1e-6, **kw), SelectToken(0)]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(dim, out_dim, bias=False, **kw))
    return nn.Sequential(*layers)


def point_head(dim: int, out_dim: int, *, device=None, dtype=None) -> nn.Sequential:
    """Point-Bind: LayerNorm(512, eps 1e-6), Dropout(0.5), Linear without bias (the input is pooled)."""
    kw = {"device": device, "dtype": dtype}
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6, **kw), nn.Dropout(0.5), nn.Linear(dim, out_dim, bias=False, **kw))


class TextHead(nn.Module):
    """Token at the EOS position (``argmax`` of the ids: EOT 49407 is the largest), LayerNorm, Linear."""

    def __init__(self, dim: int, out_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6, **kw), nn.Linear(dim, out_dim, bias=False, **kw))

    def forward(self, x: Tensor, eos: Tensor) -> Tensor:
        x = x[torch.arange(x.shape[0], device=x.device), eos]  # (B, D)
        return self.proj(x)


class Normalize(nn.Module):
    """L2-normalise the last dimension."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by ``min(exp(log_logit_scale), 100)``; a Parameter when learnable (text), else a buffer."""

    def __init__(self, init: float, *, learnable: bool, device=None, dtype=None) -> None:
        super().__init__()
        value = torch.full((), math.log(init), device=device, dtype=dtype)
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(self.log_logit_scale.exp(), max=MAX_LOGIT_SCALE) * x


def postprocessor(modality: str, *, device=None, dtype=None) -> nn.Module:
    """Vision: normalise only; text: normalise x learnable scale; others: normalise x fixed scale."""
    if modality == "vision":
        return Normalize()
    if modality == "text":
        scale = LogitScale(TEXT_LOGIT_SCALE_INIT, learnable=True, device=device, dtype=dtype)
    else:
        scale = LogitScale(FIXED_LOGIT_SCALES[modality], learnable=False, device=device, dtype=dtype)
    return nn.Sequential(Normalize(), scale)  # key `<modality>.1.log_logit_scale`
