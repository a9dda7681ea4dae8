"""One fusion for every layer: the reference's formula for non-negative weights, defined for negative ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ibllm_agent.fusion import FusionError, fuse, fusion_weights


def test_non_negative_weights_are_the_reference_bit_for_bit():
    torch.manual_seed(0)
    v = torch.randn(3, 8)
    w = [0.2, 0.3, 1.5]
    # the reference: python-float weights w / (sum(w) + 1e-6), each embedding normalised, added in order
    total = sum(w)
    expected = F.normalize(v[0], dim=-1) * (w[0] / (total + 1e-6))
    for e, x in zip(v[1:], w[1:]):
        expected = expected + F.normalize(e, dim=-1) * (x / (total + 1e-6))
    assert torch.equal(fuse(v, w), expected)
    # one input comes back as (almost) its unit vector, as forward_visual with one modality
    torch.testing.assert_close(fuse(v[:1], [1.0]), F.normalize(v[0], dim=-1), atol=1e-5, rtol=0)


def test_negative_weights_divide_by_the_sum_of_magnitudes():
    a, b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    out = fuse(torch.stack([a, b]), [1.0, -0.5])
    torch.testing.assert_close(out, (a - 0.5 * b) / 1.5, atol=1e-5, rtol=0)
    assert out.norm() <= 1  # inside the unit ball, like every reference mixture
    assert torch.dot(out, b) < torch.dot(a, b)  # it points away from what was subtracted
    assert fusion_weights([1.0, -1.0]) == pytest.approx([0.5, -0.5], abs=1e-6)  # no division by a zero sum


def test_batched_rows_fuse_per_row():
    x = torch.randn(2, 4, 16)  # two inputs, a batch of four
    out = fuse(x, [0.7, 0.3])
    for b in range(4):
        torch.testing.assert_close(out[b], fuse(x[:, b], [0.7, 0.3]))


@pytest.mark.parametrize("vectors, weights, message", [
    (torch.ones(0, 4), [], "at least one input"),
    (torch.ones(2, 4), [1.0, 0.0], "is 0"),
    (torch.ones(1, 4), [float("nan")], "finite"),
    (torch.ones(1, 4), [1e39], "float32 range"),
    (torch.ones(1, 4), ["heavy"], "must be a number"),
    (torch.zeros(1, 4), [1.0], "zero vector"),
    (torch.tensor([[float("inf"), 0.0]]), [1.0], "NaN or inf"),
    (torch.tensor([[1.0, 0.0], [2.0, 0.0]]), [1.0, -1.0], "cancel out"),
    (torch.ones(3, 4), [1.0, 1.0], "one embedding per weight"),
])
def test_undefined_mixtures_are_refused(vectors, weights, message):
    with pytest.raises(FusionError, match=message):
        fuse(vectors, weights)
