"""The trainer's parts on their own: validation accuracy, RNG states, the schedule."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soundguide.evaluation.metrics import topk_hits
from soundguide.training.config import TrainConfig
from soundguide.training.optim import LRFactor, build_optimizer, build_scheduler
from soundguide.training.resume import rng_state, seed_everything, set_rng_state
from soundguide.training.trainer import label_accuracy


class TestLabelAccuracy:
    def test_ties_go_to_the_lower_class_as_in_the_evaluation(self):
        # six classes, every score tied: top-1 predicts class 0, top-5 covers classes 0-4
        classes = F.normalize(torch.ones(6, 4), dim=-1)
        audio = torch.ones(4, 4)
        labels = torch.tensor([0, 4, 5, -1])
        got = label_accuracy(audio, labels, classes)
        assert got == {"val_top1": pytest.approx(1 / 3), "val_top5": pytest.approx(2 / 3)}
        scores = F.normalize(audio[:3], dim=-1) @ classes.T
        assert got["val_top5"] == float(topk_hits(scores, labels[:3], 5).float().mean())

    def test_random_scores_agree_with_topk_hits(self):
        generator = torch.Generator().manual_seed(0)
        classes = F.normalize(torch.randn(7, 8, generator=generator), dim=-1)
        audio = torch.randn(50, 8, generator=generator)
        labels = torch.randint(0, 7, (50,), generator=generator)
        scores = F.normalize(audio, dim=-1) @ classes.T
        got = label_accuracy(audio, labels, classes)
        assert got["val_top1"] == float((scores.argmax(-1) == labels).float().mean())
        assert got["val_top5"] == float(topk_hits(scores, labels, 5).float().mean())

    def test_nothing_to_measure(self):
        classes = F.normalize(torch.randn(4, 8), dim=-1)
        assert label_accuracy(torch.randn(3, 8), torch.full((3,), -1), classes) == {}
        assert (
            label_accuracy(torch.randn(3, 8), torch.zeros(3, dtype=torch.long), classes[:1]) == {}
        )
        assert set(label_accuracy(torch.randn(3, 8), torch.zeros(3), classes)) == {"val_top1"}


def test_rng_state_round_trip_is_exact():
    seed_everything(5)
    state = rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)  # move on
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_cosine_schedule_warms_up_then_falls_to_the_floor(tmp_path):
    config = TrainConfig(store="s", out="o", lr=0.1, min_lr=0.01, warmup_steps=3)
    factor = LRFactor(config, total_steps=13)
    assert [factor(s) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert factor(3) == pytest.approx(1.0) and factor(13) == pytest.approx(0.1)
    encoder = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(config, encoder, torch.nn.Module())
    # weight decay on the matrix, not on the bias
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1]
    scheduler = build_scheduler(config, optimizer, 13)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    # the state dict carries the factor's attributes (the checkpoint format)
    assert scheduler.state_dict()["lr_lambdas"][0] == {
        "warmup": 3,
        "total": 13,
        "floor": pytest.approx(0.1),
        "cosine": True,
    }
