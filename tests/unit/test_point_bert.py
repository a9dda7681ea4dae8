"""Point-Bind grouping (FPS, kNN) and encoder invariants on small clouds."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent.imagebind import ImageBindModel, imagebind_tiny_args
from ibllm_agent.imagebind.point_bert import farthest_point_sample, group_points, knn_groups


def _naive_fps(xyz: torch.Tensor, num: int, first: int) -> list[int]:
    """The README's loop for one cloud, one point at a time."""
    distance = [1e10] * xyz.shape[0]
    chosen, current = [], first
    for _ in range(num):
        chosen.append(current)
        c = xyz[current]
        for j, p in enumerate(xyz):
            d = ((p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2) + (p[2] - c[2]) ** 2  # float32 scalars
            distance[j] = min(distance[j], d.item())
        current = max(range(len(distance)), key=lambda j: (distance[j], -j))  # first index on ties
    return chosen


def _cloud(B=2, N=300, seed=0):
    return torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed))


def test_fps_starts_at_index_0_and_matches_a_naive_loop():
    xyz = _cloud()
    idx = farthest_point_sample(xyz, 24)
    assert idx.shape == (2, 24) and (idx[:, 0] == 0).all()
    for b in range(2):
        assert idx[b].tolist() == _naive_fps(xyz[b], 24, first=0)
        assert len(set(idx[b].tolist())) == 24


def test_fps_random_start_reproduces_upstream_given_the_rng_state():
    xyz = _cloud(B=3)
    torch.manual_seed(123)
    idx = farthest_point_sample(xyz, 8, "random")
    torch.manual_seed(123)
    starts = torch.randint(0, xyz.shape[1], (3,), dtype=torch.long)  # upstream's draw
    assert idx[:, 0].tolist() == starts.tolist()
    for b in range(3):
        assert idx[b].tolist() == _naive_fps(xyz[b], 8, first=int(starts[b]))
    with pytest.raises(ValueError, match="fps_start"):
        farthest_point_sample(xyz, 8, "middle")


def test_fps_tie_goes_to_the_first_index():
    # Points 2 and 3 are equally far from point 0: the lower index is picked first.
    xyz = torch.tensor([[[0.0, 0, 0], [3, 0, 0], [5, 0, 0], [-5, 0, 0]]])
    assert farthest_point_sample(xyz, 3).tolist() == [[0, 2, 3]]


def test_knn_returns_the_nearest_points():
    xyz = _cloud(B=1, N=200)
    centres = xyz[:, :5]
    idx = knn_groups(xyz, centres, 7)
    brute = torch.cdist(centres, xyz).topk(7, largest=False).indices
    assert torch.equal(idx.sort(-1).values, brute.sort(-1).values)
    groups, got_centres = group_points(xyz, 5, 7)
    assert groups.shape == (1, 5, 7, 3)
    assert (groups.norm(dim=-1).min(dim=-1).values == 0).all()  # each centre is in its own group


@pytest.fixture(scope="module")
def point_model() -> ImageBindModel:
    torch.manual_seed(0)
    return ImageBindModel(imagebind_tiny_args(), device="cpu").eval()


def test_same_cloud_same_embedding_and_permutation_invariance(point_model):
    cloud = _cloud(B=1, N=1024, seed=3)
    with torch.no_grad():
        a = point_model({"point": cloud})["point"]
        b = point_model({"point": cloud})["point"]
        # Any permutation that keeps point 0 first selects the same centres and groups.
        perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(1023)])
        c = point_model({"point": cloud[:, perm]})["point"]
        batch = point_model({"point": torch.cat([cloud, _cloud(B=1, N=1024, seed=4)])})["point"]
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch[:1], a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.norm(), torch.tensor(1.0))


def test_too_few_points_is_a_clear_error(point_model):
    with pytest.raises(ValueError, match="at least 512 points"):
        point_model({"point": torch.zeros(1, 100, 3)})
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        point_model({"point": torch.zeros(1, 1024, 6)})
