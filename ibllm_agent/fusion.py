"""Fusion: several ImageBind embeddings and their weights -> the one feature that conditions an answer.

The reference (`forward_visual`) L2-normalises each embedding, divides the weights by their sum
(+1e-6) and adds; the sum is not renormalised. It never subtracts. Embedding arithmetic does
(`image:dog.png - 0.3*text:"day"`), and then the plain sum of weights can be zero or flip sign, so
here the weights are divided by the sum of their magnitudes:

    feature = sum_i  w_i / (sum_j |w_j| + 1e-6) * e_i / |e_i|

For non-negative weights this is the reference's formula, computed the same way (bit-identical); with
a negative weight the coefficients keep their signs and magnitudes shrink to at most 1 in total, so
the feature stays inside the unit ball where ImageBind features live. The CLI, the chat model, the
tools, the graph, the app and the server all fuse through `fuse`, so one mixture is one question.

Inputs that would leave the result undefined are refused with a `FusionError`: no inputs, a weight
that is not a finite float32 number, a weight of 0 (it would silently drop its input), an embedding
that is zero or not finite, and terms that cancel out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

FLOAT32_MAX = 3.4028234663852886e38
MIN_NORM = 1e-6
"""A fused feature shorter than this carries no direction: the model would read noise or "no media"."""


class FusionError(ValueError):
    """Embeddings and weights that do not make a usable feature; the message says which input."""


def checked_weights(weights: Sequence[float], *, names: Sequence[str] | None = None,
                    error: type[ValueError] | None = None, purpose: str = "fuse") -> list[float]:
    """The weights as floats, each finite (within float32) and non-zero, or `error` (default FusionError)
    naming the weight. Shared with image generation, which divides them differently."""
    error = error or FusionError
    if len(weights) == 0:
        raise error(f"at least one input is needed to {purpose}")
    out = []
    for i, value in enumerate(weights):
        what = f"weight of {names[i]!r}" if names else f"weight {i}"
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise error(f"{what} must be a number, got {value!r}") from None
        if not math.isfinite(w) or abs(w) > FLOAT32_MAX:
            raise error(f"{what} must be a finite number within float32 range, got {value!r}")
        if w == 0:
            raise error(f"{what} is 0, which would leave that input out; remove the input instead")
        out.append(w)
    return out


def fusion_weights(weights: Sequence[float], *, names: Sequence[str] | None = None) -> list[float]:
    """w_i / (sum_j |w_j| + 1e-6), in float64 as the reference computes them, after checking each weight."""
    out = checked_weights(weights, names=names)
    total = sum(abs(w) for w in out)
    return [w / (total + 1e-6) for w in out]


def fuse(embeddings: torch.Tensor, weights: Sequence[float], *, names: Sequence[str] | None = None) -> torch.Tensor:
    """Fuse embeddings [N, ..., D] (one per weight; extra batch dimensions allowed) -> float32 [..., D]."""
    if embeddings.ndim < 2 or embeddings.shape[0] != len(weights):
        raise FusionError(f"need one embedding per weight: got {list(embeddings.shape)} and {len(weights)} weights")
    coefficients = fusion_weights(weights, names=names)
    x = embeddings.float()
    if not bool(torch.isfinite(x).all()):
        raise FusionError("an embedding to fuse contains NaN or inf")
    norms = x.norm(dim=-1)
    if bool((norms < MIN_NORM).any()):
        i = int((norms.reshape(len(weights), -1) < MIN_NORM).any(-1).nonzero()[0])
        raise FusionError(f"{names[i] if names else f'embedding {i}'!r} is a zero vector; it has no direction to mix")
    unit = F.normalize(x, dim=-1)
    fused = unit[0] * coefficients[0]
    for e, w in zip(unit[1:], coefficients[1:]):  # one term at a time, in order, as the reference adds them
        fused = fused + e * w
    if not bool(torch.isfinite(fused).all()) or bool((fused.norm(dim=-1) < MIN_NORM).any()):
        raise FusionError("the weighted inputs cancel out (the mixture is a zero vector)")
    return fused
