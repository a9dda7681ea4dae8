"""Toy-world splits as model inputs: render files, read them back through `ibllm_agent.media` (the
loaders users' files go through), and stack the tensors per modality.

Used by the toy build (training splits) and the evaluation (held-out splits: other indices).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ibllm_agent.toy import CONCEPT_NAMES, Sample, ToyWorld

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Loaded samples of one modality: tensors stacked in `values`, concept indices in `labels`."""

    modality: str
    samples: list[Sample]
    values: torch.Tensor
    """image [N,3,224,224], audio [N,3,1,128,204], video [N,15,3,2,224,224], point [N,8192,3], depth and
    thermal [N,1,224,224], imu [N,6,2000], text [N,77]."""
    labels: torch.Tensor
    """[N] int64 index into CONCEPT_NAMES."""


def load_sample(sample: Sample) -> torch.Tensor:
    """The loader's unbatched tensor for a rendered sample."""
    from ibllm_agent.media import load_media

    if sample.modality == "text":
        from ibllm_agent.imagebind.bpe import tokenize

        return tokenize([sample.text])[0]
    return load_media(sample.path, sample.modality).tensor


def render_split(world: ToyWorld, modality: str, indices: range, folder: Path,
                 names: tuple[str, ...] = CONCEPT_NAMES, dtype: torch.dtype = torch.float32) -> Split:
    """Render `indices` of every concept in `names`, write the files under `folder`, load them back."""
    samples = list(world.samples(modality, indices, Path(folder), names))
    # converted one by one: a float16 split of thousands of pictures never exists in float32 at once
    values = torch.stack([v.to(dtype) if v.is_floating_point() else v for v in map(load_sample, samples)])
    labels = torch.tensor([CONCEPT_NAMES.index(s.concept) for s in samples])
    logger.info("toy %s: %d samples, tensor %s", modality, len(samples), list(values.shape))
    return Split(modality, samples, values, labels)


@torch.no_grad()
def group_clouds(values: torch.Tensor, num_group: int, group_size: int, batch: int = 8) -> dict[str, torch.Tensor]:
    """Point-Bind's grouping (farthest point sampling from index 0 + kNN) of [N, P, 3] clouds, once."""
    from ibllm_agent.imagebind.point_bert import group_points

    groups, centres = [], []
    for start in range(0, len(values), batch):
        g, c = group_points(values[start:start + batch].float(), num_group, group_size)
        groups.append(g)
        centres.append(c)
    return {"groups": torch.cat(groups), "centres": torch.cat(centres)}
