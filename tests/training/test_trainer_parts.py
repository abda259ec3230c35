"""The trainer's parts on their own: validation accuracy, RNG states, the schedule,
the best epoch, the CLIP report."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soundguide.encoders.clip_weights import CLIP_MODELS
from soundguide.evaluation.metrics import topk_hits
from soundguide.training.config import PAPER_SETTINGS, TrainConfig
from soundguide.training.optim import (
    LRFactor,
    build_optimizer,
    build_scheduler,
    schedule_per_epoch,
    stretch_schedule,
)
from soundguide.training.resume import rng_state, seed_everything, set_rng_state
from soundguide.training.runlog import clip_report
from soundguide.training.trainer import best_epoch, label_accuracy


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


def test_stretched_cosine_takes_the_new_length_at_once():
    config = TrainConfig(store="s", out="o", lr=0.1, min_lr=0.0, warmup_steps=0)
    optimizer = build_optimizer(config, torch.nn.Linear(2, 2), torch.nn.Module())
    scheduler = build_scheduler(config, optimizer, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # halfway down
    assert stretch_schedule(scheduler, 20) == 10
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert scheduler.state_dict()["lr_lambdas"][0]["total"] == 20
    cyclic = TrainConfig(store="s", out="o", schedule="cyclic")
    optimizer = build_optimizer(cyclic, torch.nn.Linear(2, 2), torch.nn.Module())
    assert stretch_schedule(build_scheduler(cyclic, optimizer, 10), 20) is None


def test_paper_schedule_is_the_released_cyclic_lr_stepped_per_epoch():
    """soundclip/train.py: CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=5,
    mode="triangular") over SGD(momentum=0.9), scheduler.step() after each epoch."""
    paper = TrainConfig(store="s", out="o", **PAPER_SETTINGS)
    assert schedule_per_epoch(paper) and paper.best == "val_loss"
    assert not schedule_per_epoch(TrainConfig(store="s", out="o", schedule="cyclic"))
    optimizer = build_optimizer(paper, torch.nn.Linear(2, 2), torch.nn.Module())
    scheduler = build_scheduler(paper, optimizer, 1000)
    param = torch.nn.Parameter(torch.zeros(1))
    original = torch.optim.SGD([param], lr=1e-3, momentum=0.9, weight_decay=5e-4)
    released = torch.optim.lr_scheduler.CyclicLR(
        original, base_lr=0.001, max_lr=0.1, step_size_up=5, mode="triangular"
    )
    seen = []
    for _ in range(21):  # two cycles and a bit
        for mine, theirs in zip(optimizer.param_groups, original.param_groups, strict=False):
            assert (mine["lr"], mine["momentum"]) == (theirs["lr"], theirs["momentum"])
        seen.append((original.param_groups[0]["lr"], original.param_groups[0]["momentum"]))
        optimizer.step(), original.step()
        scheduler.step(), released.step()
    assert seen[0] == (0.001, 0.9) and seen[5] == pytest.approx((0.1, 0.8))
    assert seen[10] == pytest.approx((0.001, 0.9)) and seen[15] == pytest.approx((0.1, 0.8))


class TestBestEpoch:
    HISTORY = [
        {"epoch": 0, "step": 3, "train_loss": 2.0, "val_loss": 1.5, "val_top1": 0.50},
        {"epoch": 1, "step": 6, "train_loss": 1.8, "val_loss": 1.2, "val_top1": 0.75},
        {"epoch": 2, "step": 9, "train_loss": 1.6, "val_loss": 1.2, "val_top1": 0.75},
        {"epoch": 3, "step": 12, "train_loss": 1.5, "val_loss": 1.3, "val_top1": 0.90},
    ]

    def test_validation_loss_by_default_and_ties_keep_the_earlier_epoch(self):
        assert best_epoch(self.HISTORY) == {
            "metric": "val_loss",
            "value": 1.2,
            "epoch": 1,
            "step": 6,
        }
        assert best_epoch(self.HISTORY, "val_top1")["epoch"] == 3
        assert best_epoch(self.HISTORY[:3], "val_top1") == {
            "metric": "val_top1",
            "value": 0.75,
            "epoch": 1,
            "step": 6,
        }

    def test_fallbacks_and_non_finite_values(self):
        no_labels = [
            {k: r[k] for k in ("epoch", "step", "train_loss", "val_loss")} for r in self.HISTORY
        ]
        assert best_epoch(no_labels, "val_top1")["metric"] == "val_loss"
        no_validation = [
            {"epoch": 0, "step": 3, "train_loss": 2.0},
            {"epoch": 1, "step": 6, "train_loss": 2.0},
        ]
        assert best_epoch(no_validation) == {
            "metric": "train_loss",
            "value": 2.0,
            "epoch": 0,
            "step": 3,
        }
        nan_first = [
            {"epoch": 0, "step": 3, "train_loss": 2.0, "val_loss": float("nan")},
            {"epoch": 1, "step": 6, "train_loss": 2.0, "val_loss": 3.0},
        ]
        assert best_epoch(nan_first)["epoch"] == 1
        assert best_epoch([]) is None


class TestClipReport:
    def test_the_demos_tiny_clip_is_not_a_released_model(self, clip_file):
        report = clip_report(str(clip_file))
        assert report["sha256"] == hashlib.sha256(clip_file.read_bytes()).hexdigest()
        assert (report["released"], report["openai_file"], report["released_shape"]) == (
            False,
            None,
            [],
        )
        assert report["text_tower"]["embed_dim"] == 32
        assert report["note"].startswith(
            "not a released CLIP model: its text tower (embed dim 32, width 64, 2 layers) has "
            "none of the released models' shapes (ViT-B/32: embed dim 512, width 512, 12 layers)"
        )

    def test_released_names_and_shapes(self, tmp_path):
        report = clip_report("ViT-B/32")
        assert report["released"] and report["note"] is None and report["file"] is None
        assert report["sha256"] == CLIP_MODELS["ViT-B/32"].split("/")[0]
        # ViT-B/32's text tower in another file (tensors expanded from one value: a small file)
        width = 512
        state = {
            "text_projection": torch.zeros(1).expand(width, 512),
            "ln_final.weight": torch.zeros(1).expand(width),
            "positional_embedding": torch.zeros(1).expand(77, width),
            "token_embedding.weight": torch.zeros(1).expand(49408, width),
            **{f"transformer.resblocks.{i}.ln_1.weight": torch.zeros(1) for i in range(12)},
        }
        torch.save(state, tmp_path / "converted.pt")
        assert (tmp_path / "converted.pt").stat().st_size < 100_000
        report = clip_report(str(tmp_path / "converted.pt"))
        assert report["released"] and report["openai_file"] is None and report["note"] is None
        assert report["released_shape"] == ["ViT-B/32", "ViT-B/16", "RN101"]
        report = clip_report("no-such-clip")
        assert not report["released"] and "neither a CLIP file nor" in report["note"]
