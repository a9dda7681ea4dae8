"""Point-Bind's 3D encoder: a Point-BERT transformer over groups of points, in plain PyTorch.

Point cloud [B, N, 3] -> farthest point sampling (FPS) of ``num_group`` centres -> each centre's
``group_size`` nearest points, centred -> mini-PointNet per group -> tokens; CLS token + learned
positions of the centres; pre-norm blocks (positions added before EVERY block); LayerNorm;
``concat(CLS, max over groups) @ pc_projection``. Keys: ``point_trunk.point_encoder.*`` and
``point_trunk.pc_projection``, as in ``imagebind_w3D.pth``.

FPS starts at index 0 by default, so that the same cloud always gives the same embedding.
Upstream draws the first centre with ``torch.randint``; ``fps_start="random"`` reproduces it
given the same RNG state. Geometry (FPS, kNN) always runs in float32, whatever the model dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .preprocessors import scaled_randn
from .transformer import POINT_BERT_LAYOUT, Block, drop_path_rates

FpsStart = Literal["first", "random"]


def farthest_point_sample(xyz: Tensor, num: int, start: FpsStart | Tensor = "first") -> Tensor:
    """Indices [B, num] of ``num`` farthest-point-sampled points of ``xyz`` [B, N, 3], in selection order.

    Arithmetic as upstream (``pointbert/misc.py``): every point starts at distance 1e10; each step the
    current point becomes the next centre, the squared distance of every point to it is
    ``(dx^2 + dy^2) + dz^2`` in float32, each point keeps its minimum so far, and the next current point
    is the argmax of those minima (first index on ties). ``start``: "first" (index 0), "random"
    (``torch.randint(0, N, (B,))`` on the default generator, as upstream), or a LongTensor [B].
    """
    B, N, _ = xyz.shape
    xyz = xyz.float()
    if isinstance(start, Tensor):
        current = start.to(device=xyz.device, dtype=torch.long)
    elif start == "first":
        current = torch.zeros(B, dtype=torch.long, device=xyz.device)
    elif start == "random":
        current = torch.randint(0, N, (B,), dtype=torch.long).to(xyz.device)
    else:
        raise ValueError(f"fps_start must be 'first', 'random' or a LongTensor [B], not {start!r}")
    coords = xyz.transpose(1, 2).contiguous()  # (B, 3, N): one contiguous row per axis
    rows = torch.arange(B, device=xyz.device)
    chosen = torch.empty(B, num, dtype=torch.long, device=xyz.device)
    distance = torch.full((B, N), 1e10, device=xyz.device)
    diff = torch.empty_like(coords)
    for i in range(num):
        chosen[:, i] = current
        torch.sub(coords, xyz[rows, current].unsqueeze(-1), out=diff)  # (B, 3, N)
        diff.square_()
        torch.minimum(distance, (diff[:, 0] + diff[:, 1]) + diff[:, 2], out=distance)
        current = distance.argmax(dim=-1)
    return chosen


def knn_groups(xyz: Tensor, centres: Tensor, k: int) -> Tensor:
    """Indices [B, G, k] of each centre's k nearest points (unordered), by ``-2c.p + |c|^2 + |p|^2``."""
    dist = -2 * torch.matmul(centres, xyz.transpose(1, 2))  # (B, G, N)
    dist += centres.square().sum(-1).unsqueeze(-1)
    dist += xyz.square().sum(-1).unsqueeze(1)
    return dist.topk(k, dim=-1, largest=False, sorted=False).indices


def group_points(xyz: Tensor, num_group: int, group_size: int, fps_start: FpsStart | Tensor = "first"):
    """Point cloud [B, N, 3] -> (neighbourhoods [B, G, k, 3] relative to their centre, centres [B, G, 3])."""
    xyz = xyz.float()
    idx = farthest_point_sample(xyz, num_group, fps_start)  # (B, G)
    centres = torch.gather(xyz, 1, idx.unsqueeze(-1).expand(-1, -1, 3))  # (B, G, 3)
    neighbours = knn_groups(xyz, centres, group_size)  # (B, G, k)
    B, G, k = neighbours.shape
    groups = torch.gather(xyz, 1, neighbours.reshape(B, G * k, 1).expand(-1, -1, 3))  # (B, G*k, 3)
    return groups.view(B, G, k, 3) - centres.unsqueeze(2), centres


class MiniPointNet(nn.Module):
    """Per group: Conv1d-BN-ReLU-Conv1d, max, concat(global, per-point), Conv1d-BN-ReLU-Conv1d, max."""

    def __init__(self, out_dim: int, widths: tuple[int, int, int] = (128, 256, 512), *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        hidden_1, mid, hidden_2 = widths
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, hidden_1, 1, **kw), nn.BatchNorm1d(hidden_1, **kw), nn.ReLU(inplace=True),
            nn.Conv1d(hidden_1, mid, 1, **kw),
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * mid, hidden_2, 1, **kw), nn.BatchNorm1d(hidden_2, **kw), nn.ReLU(inplace=True),
            nn.Conv1d(hidden_2, out_dim, 1, **kw),
        )

    def forward(self, groups: Tensor) -> Tensor:
        B, G, k, _ = groups.shape
        x = self.first_conv(groups.reshape(B * G, k, 3).transpose(1, 2))  # (BG, mid, k)
        pooled = x.amax(dim=2, keepdim=True)  # (BG, mid, 1)
        x = torch.cat([pooled.expand(-1, -1, k), x], dim=1)  # (BG, 2*mid, k): global BEFORE per-point
        x = self.second_conv(x).amax(dim=2)  # (BG, out)
        return x.reshape(B, G, -1)


class PositionedBlocks(nn.Module):
    """Point-BERT's encoder: the positions are added before every block (key ``blocks.N``)."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointTransformer(nn.Module):
    """Point-BERT: grouped points -> tokens -> transformer -> concat(CLS, max over groups) [B, 2*dim]."""

    def __init__(
        self,
        dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        encoder_dims: int = 256,
        encoder_widths: tuple[int, int, int] = (128, 256, 512),
        pos_hidden: int = 128,
        drop_path: float = 0.1,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.encoder = MiniPointNet(encoder_dims, encoder_widths, **kw)
        self.reduce_dim = nn.Linear(encoder_dims, dim, **kw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **kw))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim, **kw))
        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden, **kw), nn.GELU(), nn.Linear(pos_hidden, dim, **kw))
        self.blocks = PositionedBlocks([
            Block(dim, num_heads, layout=POINT_BERT_LAYOUT, eps=1e-5, qkv_bias=False, drop_path=p, **kw)
            for p in drop_path_rates(drop_path, depth)
        ])
        self.norm = nn.LayerNorm(dim, **kw)  # eps 1e-5, as every LayerNorm of Point-BERT

    def forward(self, groups: Tensor, centres: Tensor) -> Tensor:
        tokens = self.reduce_dim(self.encoder(groups))  # (B, G, dim)
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # (B, 1+G, dim)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(centres)], dim=1)  # (B, 1+G, dim)
        x = self.norm(self.blocks(x, pos))
        return torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=-1)  # (B, 2*dim)


class PointBindTrunk(nn.Module):
    """``point_trunk``: grouping + Point-BERT + ``pc_projection`` [2*dim, proj_dim]; [B, N, 3] -> [B, proj_dim]."""

    def __init__(
        self,
        dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        num_group: int = 512,
        group_size: int = 32,
        encoder_dims: int = 256,
        encoder_widths: tuple[int, int, int] = (128, 256, 512),
        pos_hidden: int = 128,
        proj_dim: int = 512,
        drop_path: float = 0.1,
        fps_start: FpsStart = "first",
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        self.fps_start = fps_start
        self.point_encoder = PointTransformer(
            dim, depth, num_heads, encoder_dims, encoder_widths, pos_hidden, drop_path, device=device, dtype=dtype
        )
        self.pc_projection = nn.Parameter(
            scaled_randn(2 * dim, proj_dim, std=proj_dim**-0.5, device=device, dtype=dtype))

    def forward(self, points: Tensor) -> Tensor:
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"point clouds must be [B, N, 3], got {list(points.shape)}")
        if points.shape[1] < max(self.num_group, self.group_size):
            raise ValueError(
                f"a point cloud needs at least {max(self.num_group, self.group_size)} points, got {points.shape[1]}"
            )
        groups, centres = group_points(points, self.num_group, self.group_size, self.fps_start)
        dtype = self.pc_projection.dtype
        feature = self.point_encoder(groups.to(dtype), centres.to(dtype))  # (B, 2*dim)
        return feature @ self.pc_projection

