"""``Editor.build`` + ``Editor.run_items``: one Editor's models serve many runs (video chunks)."""

from __future__ import annotations

import pytest
import torch

from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor
from soundguide.core.errors import PluginError
from tests.toy_plugins import CALLS, reset


def editor(registries, **optimization):
    cfg = config_from_dict(
        {
            "generator": {"type": "toy"},
            "guidance": [{"type": "toy-target", "items": 3}],
            "regularizer": [{"type": "latent_l2", "weight": 0.01}],
            "optimization": {"steps": 5, "seed": [0, 1, 2], **optimization},
        },
        registries,
    )
    return Editor(cfg, registries, progress=False)


def test_run_items_equals_a_prepared_run_with_the_same_start_and_targets(registries):
    whole = editor(registries)
    expected = whole.run()
    again = editor(registries)
    again.build()
    got = again.run_items(whole.w0, {"toy-target": whole.targets["toy-target"]})
    assert torch.equal(got.edited_latent, expected.edited_latent)
    assert got.history == expected.history


def test_models_are_built_once_for_many_runs(registries):
    reset()
    ed = editor(registries)
    ed.build()
    start = ed.generator.sample_latent(2, 0.7, torch.Generator().manual_seed(0))
    for _ in range(3):
        result = ed.run_items(start, {"toy-target": torch.randn(2, 16)})
        assert result.ok and result.edited_latent.shape == (2, 4, 8)
    assert CALLS["generator.build"] == 1 and CALLS["encoder.build.toy:toy"] == 1


def test_a_zero_weight_item_has_no_guidance_term(registries):
    ed = editor(registries)
    ed.build()
    start = ed.generator.sample_latent(2, 0.7, torch.Generator().manual_seed(0))
    result = ed.run_items(
        start, {"toy-target": torch.randn(2, 16)}, weights={"toy-target": torch.tensor([1.0, 0.0])}
    )
    assert result.final_losses["terms"]["toy-target"][1] == 0
    assert result.final_losses["terms"]["toy-target"][0] != 0
    torch.testing.assert_close(result.edited_latent[1], start[1])  # nothing pulled it
    assert not torch.allclose(result.edited_latent[0], start[0])
    assert ed.guidances[0].weight == 1.0  # the weights are the run's, not the Editor's


def test_missing_targets_are_a_one_line_error(registries):
    ed = editor(registries)
    with pytest.raises(PluginError, match="no targets for guidance toy-target"):
        ed.run_items(torch.zeros(2, 4, 8), {})
