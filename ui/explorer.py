"""The embedding explorer: how the attached inputs and some text prompts sit in ImageBind's shared space.

Everything here is plain torch/plotly so it can be tested without Streamlit:
`cosine_matrix` for the heatmap, `zero_shot` for the labels, and the two figures the app draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from ibllm_agent.fusion import fuse


@dataclass(frozen=True)
class ZeroShot:
    """The best-matching text label of one input."""

    item: str
    label: str
    probability: float
    """Softmax over the candidate labels, at the text encoder's own learned logit scale."""
    cosine: float


def cosine_matrix(embeddings: torch.Tensor) -> np.ndarray:
    """Pairwise cosine similarity of (N, D) embeddings -> (N, N) float array."""
    unit = F.normalize(embeddings.float(), dim=-1)
    return (unit @ unit.T).numpy()


def zero_shot(items: list[str], item_emb: torch.Tensor, labels: list[str],
              label_emb: torch.Tensor) -> list[ZeroShot]:
    """Label each item with its most similar text prompt, as ImageBind's zero-shot classification does.

    ImageBind's text embeddings carry the learned logit scale in their norm (text head: normalise,
    then x logit scale), so `normalise(item) @ text.T` are the model's own logits. `item_emb` (N, D),
    `label_emb` (L, D).
    """
    if not labels:
        return []
    logits = F.normalize(item_emb.float(), dim=-1) @ label_emb.float().T  # (N, L)
    probs = logits.softmax(dim=-1)
    cos = F.normalize(item_emb.float(), dim=-1) @ F.normalize(label_emb.float(), dim=-1).T  # (N, L)
    best = probs.argmax(dim=-1)
    return [ZeroShot(item, labels[j], float(probs[i, j]), float(cos[i, j]))
            for i, (item, j) in enumerate(zip(items, best.tolist()))]


def with_mixture(labels: list[str], embeddings: torch.Tensor,
                 weights: list[float]) -> tuple[list[str], torch.Tensor]:
    """Append the fused query (the same arithmetic the chat uses) as a row when there are 2+ inputs."""
    if len(labels) < 2:
        return labels, embeddings
    mix = fuse(embeddings, weights, names=labels)  # (D,)
    return [*labels, "mixture"], torch.cat([embeddings, mix[None]])


def heatmap_figure(matrix: np.ndarray, labels: list[str], *, annotate_up_to: int = 10) -> go.Figure:
    """Cosine-similarity heatmap with the inputs and prompts on both axes (values written in small ones)."""
    annotate = len(labels) <= annotate_up_to
    fig = go.Figure(go.Heatmap(
        z=matrix, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
        text=np.round(matrix, 2) if annotate else None, texttemplate="%{text}" if annotate else None,
        hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>", colorbar={"title": {"text": "cosine"}}))
    cell = 44 if annotate else 28
    fig.update_layout(height=160 + cell * len(labels), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"side": "top", "tickangle": -45}, yaxis={"autorange": "reversed"})
    return fig
