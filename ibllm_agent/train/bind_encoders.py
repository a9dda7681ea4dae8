"""Binding ImageBind encoders to the image space with InfoNCE, as ImageBind itself was trained.

Two kinds of objectives over the same `ImageBindModel`:

* `PairedContrastive`: both sides trained, e.g. image <-> text (the image space is made here).
* `ToImageContrastive`: one encoder (audio, point, ...) trained against FROZEN image embeddings,
  precomputed once: the image space does not move, so every other modality lands in it.

Samples carry a concept label; pairs are positives when they come from the same concept. Other
samples of the same concept in a batch are masked out of the negatives (they are not negatives, and
counting them as such pulls apart what should coincide).

Embeddings are the heads' outputs, L2-normalised (ImageBind's post-processing scales do not matter
here: ImageBind-LLM normalises every embedding again before fusing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset


def masked_info_nce(a: Tensor, b: Tensor, labels: Tensor, scale: float | Tensor) -> Tensor:
    """Symmetric InfoNCE of row-aligned pairs (a[i], b[i]); a, b [B, D] normalised, labels [B].

    logits = scale * a @ b.T; for row i the positive is column i and columns j != i with the same
    label are excluded (set to -inf) in both directions.
    """
    logits = scale * a @ b.T  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(labels), device=labels.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def embed(image_bind: nn.Module, modality: str, value: Tensor) -> Tensor:
    """Normalised head output [B, D] of one clip per sample (`value` WITHOUT a clips dimension).

    Points may come pre-grouped as a dict {"groups": [B, G, k, 3], "centres": [B, G, 3]}: farthest point
    sampling is deterministic, so the build computes it once per cloud instead of at every step.
    """
    if modality == "point" and isinstance(value, dict):
        trunk = image_bind.point_trunk
        feature = trunk.point_encoder(value["groups"], value["centres"]) @ trunk.pc_projection  # (B, proj)
        return F.normalize(image_bind.modality_heads["point"](feature), dim=-1)
    return F.normalize(image_bind.encode(modality, value), dim=-1)


def modality_parameters(image_bind: nn.Module, modality: str) -> list[nn.Parameter]:
    """The parameters of one modality's encoder (preprocessor, trunk, head, post-processor)."""
    return [p for module in image_bind.branch(modality) for p in module.parameters()]


def train_only(image_bind: nn.Module, modalities: tuple[str, ...]) -> None:
    """Freeze `image_bind` except the encoders of `modalities`."""
    image_bind.requires_grad_(False)
    for m in modalities:
        for p in modality_parameters(image_bind, m):
            p.requires_grad_(True)


class PairedContrastive(nn.Module):
    """Both encoders trained: batch {"a": ..., "b": ..., "label": [B]} for modalities (a, b)."""

    def __init__(self, image_bind: nn.Module, a: str, b: str, scale: float = 20.0):
        super().__init__()
        self.image_bind, self.a, self.b, self.scale = image_bind, a, b, scale
        train_only(image_bind, (a, b))

    def forward(self, batch: dict) -> Tensor:
        ea = embed(self.image_bind, self.a, batch["a"])
        eb = embed(self.image_bind, self.b, batch["b"])
        return masked_info_nce(ea, eb, batch["label"], self.scale)


class ToImageContrastive(nn.Module):
    """One encoder trained against frozen targets: batch {"x": ..., "target": [B, D], "label": [B]}."""

    def __init__(self, image_bind: nn.Module, modality: str, scale: float = 20.0):
        super().__init__()
        self.image_bind, self.modality, self.scale = image_bind, modality, scale
        train_only(image_bind, (modality,))

    def forward(self, batch: dict) -> Tensor:
        e = embed(self.image_bind, self.modality, batch["x"])
        return masked_info_nce(e, F.normalize(batch["target"], dim=-1), batch["label"], self.scale)


class ConceptPairs(Dataset):
    """Samples of one modality paired, at each visit, with a random same-concept item of the other side.

    `items[i]` (a tensor or a dict of tensors) has concept `labels[i]`; `partners` are the other side
    (tensors [M, ...] or an embedding matrix [M, D]) with `partner_labels` [M]. Yields
    {key_a: item, key_b: partner, "label": label}. Items stored as [S, ...] clip lists (audio) give one
    random clip per visit; `augment(item)` transforms the item at each visit.
    """

    def __init__(self, items, labels: Tensor, partners, partner_labels: Tensor, *,
                 keys: tuple[str, str] = ("x", "target"), random_clip: bool = False, augment=None):
        self.items, self.labels = items, labels
        self.partners, self.partner_labels = partners, partner_labels
        self.keys, self.random_clip, self.augment = keys, random_clip, augment
        self.by_label = {int(c): (partner_labels == c).nonzero().flatten() for c in partner_labels.unique()}
        missing = sorted(set(labels.tolist()) - set(self.by_label))
        if missing:
            raise ValueError(f"concept labels {missing} have no partner samples")

    def __len__(self) -> int:
        return len(self.labels)

    def _item(self, i: int):
        if isinstance(self.items, dict):
            item = {k: v[i] for k, v in self.items.items()}
            return self.augment(item) if self.augment else item
        x = self.items[i]
        if self.random_clip:
            x = x[int(torch.randint(len(x), ()))]
        x = x.float()
        return self.augment(x) if self.augment else x

    def __getitem__(self, i: int) -> dict:
        label = int(self.labels[i])
        choices = self.by_label[label]
        j = int(choices[int(torch.randint(len(choices), ()))])
        partner = self.partners[j]
        return {self.keys[0]: self._item(i), self.keys[1]: partner.float() if partner.is_floating_point() else partner,
                "label": torch.tensor(label)}


def random_crop_flip(image: Tensor, min_scale: float = 0.7) -> Tensor:
    """A [3, H, W] image tensor cropped to a random square of at least `min_scale` of its side,
    resized back (bilinear) and mirrored half of the time: cheap augmentation of preprocessed images."""
    _, h, w = image.shape
    side = int(h * (min_scale + (1 - min_scale) * float(torch.rand(()))))
    top, left = int(torch.randint(h - side + 1, ())), int(torch.randint(w - side + 1, ()))
    crop = image[:, top:top + side, left:left + side]
    out = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return out.flip(-1) if float(torch.rand(())) < 0.5 else out


def random_rotation(grouped: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same grouped cloud under a uniformly random 3D rotation. Farthest point sampling and kNN
    depend only on distances, so rotating the groups and centres equals grouping the rotated cloud."""
    q, r = torch.linalg.qr(torch.randn(3, 3))
    q = q * torch.sign(torch.diagonal(r))  # Haar-uniform orthogonal
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return {k: v @ q.T for k, v in grouped.items()}


def random_heading(imu: Tensor, max_shift: int = 100) -> Tensor:
    """An IMU window [6, T] (accelerometer x, y, z, gyroscope x, y, z) as a sensor turned by a uniformly random
    heading about its z axis would have recorded it (both sensors' x, y rotate together), shifted in time by
    up to `max_shift` samples (circularly): the toy mounts its sensors at any heading."""
    angle = float(torch.rand(())) * 2 * torch.pi
    c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
    out = imu.clone()
    for x in (0, 3):
        out[x], out[x + 1] = c * imu[x] - s * imu[x + 1], s * imu[x] + c * imu[x + 1]
    return out.roll(int(torch.randint(-max_shift, max_shift + 1, ())), dims=-1)


@torch.no_grad()
def embed_all(image_bind: nn.Module, modality: str, values, batch_size: int = 64) -> Tensor:
    """Normalised embeddings [N, D] of all `values` in eval mode; [N, S, ...] clip lists are averaged
    over S after normalising each clip (ImageBind's multi-clip rule), then renormalised."""
    image_bind.eval()
    n = len(values["centres"]) if isinstance(values, dict) else len(values)
    out = []
    for start in range(0, n, batch_size):
        if isinstance(values, dict):
            chunk = {k: v[start:start + batch_size] for k, v in values.items()}
            out.append(embed(image_bind, modality, chunk))
            continue
        chunk = values[start:start + batch_size].float()
        clips = chunk.ndim >= 5 and modality != "vision" or chunk.ndim >= 6
        if clips:
            B, S = chunk.shape[:2]
            e = embed(image_bind, modality, chunk.reshape(B * S, *chunk.shape[2:])).reshape(B, S, -1).mean(1)
            out.append(F.normalize(e, dim=-1))
        else:
            out.append(embed(image_bind, modality, chunk))
    return torch.cat(out)
