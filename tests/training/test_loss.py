from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from soundguide.core.errors import ConfigError
from soundguide.training.loss import CLIP_INIT, PAPER_LOGIT_SCALE, ContrastiveLoss, info_nce


def normalized(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_info_nce(x, y, scale):
    """Written out: -log softmax of the matching pair, both directions, averaged."""
    total = 0.0
    n = x.shape[0]
    for i in range(n):
        logits = [scale * float(x[i] @ y[j]) for j in range(n)]
        total -= logits[i] - math.log(sum(math.exp(v) for v in logits))
        logits = [scale * float(y[i] @ x[j]) for j in range(n)]
        total -= logits[i] - math.log(sum(math.exp(v) for v in logits))
    return total / (2 * n)


def test_info_nce_matches_the_written_out_formula():
    x, y = normalized(6, 16, seed=1), normalized(6, 16, seed=2)
    assert float(info_nce(x, y, 7.5)) == pytest.approx(reference_info_nce(x, y, 7.5), rel=1e-5)
    assert float(info_nce(x, x, 100.0)) < 1e-3


def test_paper_loss_is_the_original_four_term_mean():
    audio, augmented, text = torch.randn(5, 8), torch.randn(5, 8), normalized(5, 8)
    loss = ContrastiveLoss(learnable_scale=False, logit_scale=PAPER_LOGIT_SCALE, image_weight=0)
    total, terms = loss(audio, augmented, text)
    a, g = F.normalize(audio, dim=-1), F.normalize(augmented, dim=-1)
    s = math.exp(0.07)
    ce = F.cross_entropy
    target = torch.arange(5)
    expected = (
        ce(s * a @ text.T, target)
        + ce(s * text @ a.T, target)
        + ce(s * a @ g.T, target)
        + ce(s * g @ a.T, target)
    ) / 4
    assert torch.allclose(total, expected, atol=1e-6)
    assert set(terms) == {"text", "augment"}
    assert list(loss.parameters()) == []  # the paper's scale is fixed


def test_learnable_scale_starts_at_clip_value_and_is_clamped():
    loss = ContrastiveLoss()
    assert loss.logit_scale.requires_grad and float(loss.logit_scale.detach()) == pytest.approx(
        CLIP_INIT
    )
    assert float(loss.scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        loss.logit_scale.fill_(7.0)
    assert float(loss.scale.detach()) == pytest.approx(100.0)


def test_image_term_only_on_items_with_frames_and_gradients_flow():
    audio = torch.randn(6, 8, requires_grad=True)
    image = normalized(6, 8, seed=3)
    has = torch.tensor([True, False, True, True, False, True])
    loss = ContrastiveLoss(text_weight=1, augment_weight=1, image_weight=2)
    total, terms = loss(audio, torch.randn(6, 8), normalized(6, 8), image, has)
    a = F.normalize(audio, dim=-1)
    assert torch.allclose(terms["image"], info_nce(a[has], image[has], loss.scale))
    assert torch.allclose(total, (terms["text"] + terms["augment"] + 2 * terms["image"]) / 4)
    total.backward()
    assert audio.grad is not None and loss.logit_scale.grad is not None
    # fewer than two items with frames: no image term, weights renormalized
    _, terms = loss(audio, torch.randn(6, 8), normalized(6, 8), image, torch.eye(6)[0].bool())
    assert "image" not in terms


def test_bad_weights():
    with pytest.raises(ConfigError, match="loss weights must be >= 0 and not all 0"):
        ContrastiveLoss(text_weight=0, augment_weight=0, image_weight=0)
