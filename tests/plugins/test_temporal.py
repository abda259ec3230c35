"""The ``temporal`` regularizer: a sequence term over neighbouring frames."""

from __future__ import annotations

import pytest
import torch

from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor
from soundguide.core.errors import ConfigError
from soundguide.plugins.temporal import Temporal, temporal_penalty


def test_values_are_per_frame_distances_that_sum_to_the_penalty():
    w = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    values = temporal_penalty(w)
    assert values.shape == (5,)
    assert values[0] == 0  # the first frame of a video has nothing before it
    expected = sum((w[t] - w[t - 1]).pow(2).sum() for t in range(1, 5))
    torch.testing.assert_close(values.sum(), expected)
    before = torch.randn(1, 3, 4)
    with_context = temporal_penalty(w, before)
    torch.testing.assert_close(with_context[0], (w[0] - before[0]).pow(2).sum())
    torch.testing.assert_close(with_context[1:], values[1:])


def test_layers_select_what_is_compared():
    w = torch.zeros(3, 4, 2)
    w[1, 3] = 1.0  # frame 1 differs only in layer 3
    assert temporal_penalty(w, layers=torch.tensor([0, 1])).sum() == 0
    assert temporal_penalty(w, layers=torch.tensor([3])).tolist() == [0, 2, 2]


@pytest.mark.parametrize("with_before", [False, True])
def test_full_gradient_passes_gradcheck_in_float64(with_before):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    before = torch.randn(1, 3, 2, dtype=torch.float64, generator=g) if with_before else None
    layers = torch.tensor([0, 2])
    assert torch.autograd.gradcheck(
        lambda x: temporal_penalty(x, before, layers, causal=False), (w,)
    )


def test_causal_gradient_pulls_each_frame_towards_the_one_before_only():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    before = torch.randn(1, 3, 2, dtype=torch.float64, generator=g)
    temporal_penalty(w, before, causal=True).sum().backward()
    previous = torch.cat([before, w[:-1].detach()])
    torch.testing.assert_close(w.grad, 2 * (w.detach() - previous))
    # the last frame's change never reaches the frames before it
    v = w.detach().clone().requires_grad_(True)
    temporal_penalty(v, before, causal=True)[3].backward()
    assert v.grad[:3].abs().sum() == 0 and v.grad[3].abs().sum() > 0


def test_it_is_a_sequence_term_and_latent_l2_is_not(registries):
    assert Temporal.per_item is False
    assert registries.regularizers.get("latent_l2").per_item is True
    assert registries.regularizers.get("identity").per_item is True


def _editor(registries, **temporal):
    cfg = config_from_dict(
        {
            "generator": {"type": "toy"},
            "guidance": [{"type": "toy-target", "items": 3}],
            "regularizer": [{"type": "temporal", **temporal}],
            "optimization": {"steps": 3, "seed": [0, 1, 2]},
        },
        registries,
    )
    return Editor(cfg, registries, progress=False)


def test_layers_outside_the_generator_are_a_one_line_error(registries):
    with pytest.raises(ConfigError, match=r"layers \[7\] are not among the generator's 4"):
        _editor(registries, layers=[0, 7]).prepare()


def test_through_the_engine_the_term_is_weight_times_the_values(registries):
    ed = _editor(registries, weight=0.5)
    ed.prepare()
    w = ed.w0 + torch.arange(3.0)[:, None, None]
    torch.testing.assert_close(ed.losses(w)["temporal"], 0.5 * temporal_penalty(w))
