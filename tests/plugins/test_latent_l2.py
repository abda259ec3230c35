from __future__ import annotations

import torch

from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor
from soundguide.core.losses import latent_l2
from tests.references import original_adaptive_step


def editor(registries, **reg):
    cfg = config_from_dict(
        {
            "generator": {"type": "toy"},
            "guidance": [{"type": "toy-target"}],
            "regularizer": [{"type": "latent_l2", **reg}],
            "optimization": {"steps": 6, "seed": 1},
        },
        registries,
    )
    return Editor(cfg, registries, progress=False)


def test_plain_penalty_is_weight_times_squared_distance(registries):
    ed = editor(registries, weight=0.5)
    ed.prepare()
    w = ed.w0 + 0.1
    terms = ed.losses(w)
    torch.testing.assert_close(terms["latent_l2"], 0.5 * latent_l2(w, ed.w0))


def test_adaptive_penalty_follows_the_original_rule_through_the_engine(registries):
    ed = editor(registries, weight=0.002, adaptive=True)
    events = []
    ed.subscribe(events.append)
    ed.run()
    mask = torch.ones(ed.generator.num_layers)
    w0 = ed.w0
    for event in events[:-1]:
        expected = 0.002 * original_adaptive_step(event.latent, w0, mask)
        torch.testing.assert_close(event.losses["latent_l2"][0], expected, rtol=1e-5, atol=1e-7)
