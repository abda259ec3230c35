from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from soundguide.core.losses import (
    AdaptiveLayerWeights,
    constant_lr,
    cosine_distance,
    cosine_ramp_lr,
    latent_l2,
)
from tests.references import original_adaptive_step


def test_cosine_distance_shapes_scale_and_gradient():
    a = torch.randn(3, 8, requires_grad=True)
    b = torch.randn(8)
    d = cosine_distance(a, b)
    assert d.shape == (3,)
    torch.testing.assert_close(d, 1 - F.cosine_similarity(a, b[None].expand(3, -1)))
    paper = cosine_distance(a, b, scale=math.exp(0.07))
    torch.testing.assert_close(
        paper, 1 - math.exp(0.07) * F.cosine_similarity(a, b[None].expand(3, -1))
    )
    paper.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_latent_l2_per_item_and_layer_weights():
    w0 = torch.randn(2, 5, 4)
    w = w0 + 0.5
    torch.testing.assert_close(latent_l2(w, w0), torch.full((2,), 5 * 4 * 0.25))
    weights = torch.tensor([1.0, 0, 0, 0, 0])
    torch.testing.assert_close(latent_l2(w, w0, weights), torch.full((2,), 4 * 0.25))


@pytest.mark.parametrize("layers", [3, 14, 18])
def test_adaptive_layer_weights_follow_the_original_rule(layers):
    torch.manual_seed(0)
    w0 = torch.randn(1, layers, 6)
    mask = torch.ones(layers)  # the original starts its logits at 1
    adaptive = AdaptiveLayerWeights(1, layers, init=1.0)
    w = w0.clone()
    for _ in range(5):
        w = w + 0.3 * torch.randn_like(w)
        expected = original_adaptive_step(w, w0, mask)
        weighted = adaptive.weighted_distance(w, w0)
        torch.testing.assert_close(weighted.sum(), expected)
        adaptive.update(weighted)
        torch.testing.assert_close(adaptive.logits[0], mask, rtol=1e-5, atol=1e-5)


def test_adaptive_weights_are_per_item():
    adaptive = AdaptiveLayerWeights(2, 3)
    w0 = torch.zeros(2, 3, 2)
    w = torch.stack([torch.zeros(3, 2), torch.full((3, 2), 0.1)])
    adaptive.update(adaptive.weighted_distance(w, w0))
    assert torch.equal(adaptive.logits[0], torch.zeros(3))
    assert (adaptive.logits[1] < 0).all()


def test_cosine_ramp_schedule_matches_the_formula():
    lr0 = 0.1
    assert cosine_ramp_lr(0.0, lr0) == 0.0
    assert cosine_ramp_lr(0.05, lr0) == pytest.approx(lr0)
    assert cosine_ramp_lr(0.5, lr0) == pytest.approx(lr0)
    for t in (0.01, 0.3, 0.8, 0.99):
        ramp = min(1, (1 - t) / 0.25)
        expected = lr0 * min(1, t / 0.05) * (0.5 - 0.5 * math.cos(math.pi * ramp))
        assert cosine_ramp_lr(t, lr0) == pytest.approx(expected)
    assert constant_lr(0.0, lr0) == lr0
