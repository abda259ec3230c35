from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import ConfigError, DatasetError, OutputError
from soundguide.encoders.soundclip import SoundCLIPEncoder, load_soundclip
from soundguide.training.cli import train as train_command
from soundguide.training.config import PAPER_SETTINGS, TrainConfig
from soundguide.training.data import ClipDataset, SpecAugment
from soundguide.training.models import TinyAudioEncoder, build_encoder
from soundguide.training.store import CuratedStore
from soundguide.training.text import TextTargets
from soundguide.training.trainer import train

REFERENCE_KEYS = Path(__file__).resolve().parents[1] / "data" / "soundclip_resnet18.keys.json"
TORCHRUN = Path(sys.executable).with_name("torchrun")
ONE_TEMPLATE = ["the sound of {label}"]


def config(store, out, clip_file, **overrides):
    """A tiny run: 24 training clips, 8 held out, global batch 8 (3 steps per epoch)."""
    values = {
        "clip": str(clip_file),
        "arch": "tiny",
        "epochs": 1,
        "batch_size": 8,
        "val_fraction": 0.25,
        "loader_workers": 0,
        "log_every": 1,
        "warmup_steps": 0,
        **overrides,
    }
    return TrainConfig(store=str(store), out=str(out), **values)


def log(out, event="step"):
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def weights(path):
    return torch.load(path, weights_only=True)


def assert_same_state(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol:
            assert torch.allclose(a[key].double(), b[key].double(), atol=atol, rtol=0), key
        else:
            assert torch.equal(a[key], b[key]), key


def zero_shot_top1(encoder_path, store, text_encoder):
    """Top-1 of the exported encoder on every clip of the store, against its labels."""
    s = CuratedStore(store)
    targets = TextTargets(text_encoder, s.labels, [], ONE_TEMPLATE)
    labels = [s.labels.index(it.label) for it in s.items]
    data = ClipDataset(
        s, range(len(s)), labels, [-1] * len(s), num_templates=1, augment=SpecAugment(), train=False
    )
    encoder = TinyAudioEncoder(embed_dim=32)
    encoder.load_state_dict(weights(encoder_path))
    encoder.eval()
    with torch.no_grad():
        audio = torch.stack([data[(0, i)]["audio"] for i in range(len(s))])
        scores = F.normalize(encoder(audio), dim=-1) @ targets.class_embeddings.T
    return float((scores.argmax(-1) == torch.tensor(labels)).float().mean())


class TestTraining:
    def test_short_run_learns_its_classes(self, store, clip_file, text_encoder, tmp_path):
        # One template: a random CLIP's templates disagree more than its labels do.
        cfg = config(
            store,
            tmp_path / "run",
            clip_file,
            epochs=12,
            lr=1e-2,
            templates=ONE_TEMPLATE,
            best="val_top1",
        )
        result = train(cfg, text_encoder=text_encoder, progress=False)
        epochs = result.history
        assert len(epochs) == 12 and result.global_step == 36 and not result.stopped_early
        assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
        assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
        assert result.best["metric"] == "val_top1" and result.best["value"] > 0.9
        assert json.loads((tmp_path / "run" / "best.json").read_text()) == result.best
        assert zero_shot_top1(result.best_encoder, store, text_encoder) > 0.9
        steps = log(tmp_path / "run")
        assert [r["step"] for r in steps] == list(range(1, 37))
        assert {"loss", "loss_text", "loss_augment", "lr", "logit_scale", "data_seconds"} <= set(
            steps[0]
        )

    def test_one_step_of_the_real_soundclip_encoder_exports_resnet18_57_keys(
        self, store, clip_file, text_encoder, tmp_path
    ):
        out = tmp_path / "run"
        cfg = config(
            store, out, clip_file, arch="resnet18", batch_size=2, val_fraction=0, max_steps=1
        )
        result = train(cfg, text_encoder=text_encoder, progress=False)
        assert result.stopped_early and result.global_step == 1
        assert math.isfinite(log(out)[0]["loss"])
        exported = weights(out / "encoder-last.pth")
        reference = json.loads(REFERENCE_KEYS.read_text())
        assert [k for k, _, _ in reference] == list(exported)
        for key, shape, dtype in reference:
            if not key.startswith("feature_extractor.fc."):
                assert (list(exported[key].shape), str(exported[key].dtype)) == (shape, dtype), key
        assert tuple(exported["feature_extractor.fc.weight"].shape) == (32, 512)
        encoder = load_soundclip(out / "encoder-last.pth")
        assert isinstance(encoder, SoundCLIPEncoder) and encoder.embed_dim == 32
        torch.manual_seed(0)
        untrained = build_encoder("resnet18", 32).state_dict()
        assert not torch.equal(untrained["conv.weight"], exported["conv.weight"])
        # the resume checkpoint is plain data: the safe loader reads it
        state = load_checkpoint(out / "checkpoints" / "last.pt")
        assert state["config"]["arch"] == "resnet18" and state["position"]["global_step"] == 1

    @pytest.mark.parametrize("paper", [False, True], ids=["adamw-cosine", "paper-sgd-cyclic"])
    def test_resume_continues_exactly(self, store, clip_file, text_encoder, tmp_path, paper):
        settings = {"epochs": 2, "lr": 0.05 if paper else 3e-3, "cycle_steps": 2}
        if paper:
            settings = {**PAPER_SETTINGS, **settings, "batch_size": 8}
        straight = config(store, tmp_path / "straight", clip_file, **settings)
        train(straight, text_encoder=text_encoder, progress=False)
        stopped = config(store, tmp_path / "resumed", clip_file, max_steps=4, **settings)
        assert train(stopped, text_encoder=text_encoder, progress=False).stopped_early
        # continued in another "process": DataLoader workers, no max_steps
        resumed = config(store, tmp_path / "resumed", clip_file, loader_workers=2, **settings)
        result = train(resumed, resume=True, text_encoder=text_encoder, progress=False)
        assert result.global_step == 6 and not result.stopped_early
        assert_same_state(
            weights(tmp_path / "straight" / "encoder-last.pth"),
            weights(tmp_path / "resumed" / "encoder-last.pth"),
        )
        exact = ("step", "epoch", "loss", "loss_text", "loss_augment", "lr", "logit_scale")
        steps = [
            [{k: r[k] for k in exact} for r in log(tmp_path / run)]
            for run in ("straight", "resumed")
        ]
        assert len(steps[0]) == 6 and steps[0] == steps[1]  # no step logged twice or lost
        assert log(tmp_path / "straight", "epoch") == log(tmp_path / "resumed", "epoch")
        a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
        b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
        assert a["scheduler"] == b["scheduler"] and a["position"] == b["position"]
        assert_same_state(a["loss"], b["loss"])

    def test_accumulation_gives_the_one_batch_gradient(
        self, store, clip_file, text_encoder, tmp_path
    ):
        # Without batch norm, micro-batches change nothing: gradient caching is exact.
        def encoder():
            torch.manual_seed(3)
            return nn.Sequential(nn.AvgPool2d((8, 16)), nn.Flatten(), nn.Linear(16 * 32, 32))

        runs = {}
        for k in (1, 2, 4):
            cfg = config(
                store, tmp_path / f"k{k}", clip_file, accumulate=k, optimizer="sgd", lr=0.5
            )
            train(cfg, encoder=encoder(), text_encoder=text_encoder, progress=False)
            runs[k] = (log(tmp_path / f"k{k}"), weights(tmp_path / f"k{k}" / "encoder-last.pth"))
        for k in (2, 4):
            assert [r["loss"] for r in runs[k][0]] == pytest.approx(
                [r["loss"] for r in runs[1][0]], rel=1e-5
            )
            assert_same_state(runs[k][1], runs[1][1], atol=1e-5)
        assert not torch.allclose(runs[1][1]["2.weight"], encoder()[2].weight)  # it did train


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python")
def test_two_processes_equal_one_process_on_the_same_global_batch(
    store, clip_file, text_encoder, tmp_path
):
    """torchrun, gloo, 2 CPU processes of 4 clips vs 1 process accumulating 2 micro-batches of 4.

    Batch norm sees the same chunks in both (a rank's chunk is a micro-batch), the
    negatives span the global batch of 8 in both. Checked against the run that puts all
    8 clips through batch norm at once, which must differ: the tolerance can fail.
    """
    args = [
        "--clip", str(clip_file), "--arch", "tiny", "--epochs", "1", "--batch-size", "8",
        "--val-fraction", "0.25", "--loader-workers", "0", "--log-every", "1", "--paper",
        "--learnable-scale", "--logit-scale", "2.66", "--lr", "0.05", "--cycle-steps", "2", "-q",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "soundguide.cli",
    ]
    done = subprocess.run(
        [*command, "train", str(store), str(tmp_path / "ddp"), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished after 3 steps" in done.stdout

    def single(name, accumulate):
        cfg = config(
            store, tmp_path / name, clip_file, optimizer="sgd", schedule="cyclic", lr=0.05,
            min_lr=0.001, weight_decay=5e-4, decay_all=True, cycle_steps=2, logit_scale=2.66,
            image_weight=0.0, paper=True, accumulate=accumulate,
        )  # fmt: skip
        train(cfg, text_encoder=text_encoder, progress=False)
        return log(tmp_path / name), weights(tmp_path / name / "encoder-last.pth")

    ddp_log, ddp_weights = log(tmp_path / "ddp"), weights(tmp_path / "ddp" / "encoder-last.pth")
    same_log, same_weights = single("accumulate2", 2)
    losses = [r["loss"] for r in ddp_log]
    assert len(losses) == 3
    assert losses == pytest.approx([r["loss"] for r in same_log], rel=1e-5, abs=1e-6)
    assert [r["logit_scale"] for r in ddp_log] == pytest.approx(
        [r["logit_scale"] for r in same_log], rel=1e-5
    )
    assert_same_state(ddp_weights, same_weights, atol=1e-5)  # buffers too: running stats averaged
    epoch, same_epoch = log(tmp_path / "ddp", "epoch")[0], log(tmp_path / "accumulate2", "epoch")[0]
    assert epoch["val_loss"] == pytest.approx(same_epoch["val_loss"], rel=1e-5)
    # batch norm over all 8 clips at once is measurably different
    full_log, _ = single("full_batch_norm", 1)
    first = abs(full_log[0]["loss"] - losses[0])
    assert first > 100 * 1e-5 * abs(losses[0])


class TestErrors:
    def test_template_too_long_for_clip(self, store, clip_file, text_encoder, tmp_path):
        template = "{label} " + " ".join(["onomatopoeia"] * 40)
        cfg = config(store, tmp_path / "run", clip_file, templates=[template])
        with pytest.raises(
            DatasetError,
            match=r"^label 'chirp' with template .* tokens long; CLIP takes at most 77$",
        ):
            train(cfg, text_encoder=text_encoder, progress=False)

    def test_bad_template(self, store, tmp_path):
        with pytest.raises(ConfigError, match=r"must contain \{label\} exactly once"):
            TrainConfig(store=str(store), out=str(tmp_path), templates=["a sound"])

    def test_store_missing_or_too_small(self, store, clip_file, text_encoder, tmp_path):
        with pytest.raises(DatasetError, match="is not a curated store: it has no index.json"):
            train(config(tmp_path, tmp_path / "run", clip_file), text_encoder=text_encoder)
        with pytest.raises(
            DatasetError, match="has 24 training clips, fewer than one global batch of 32"
        ):
            train(
                config(store, tmp_path / "run", clip_file, batch_size=32), text_encoder=text_encoder
            )

    def test_existing_run_needs_resume_and_the_same_settings(
        self, store, clip_file, text_encoder, tmp_path
    ):
        cfg = config(store, tmp_path / "run", clip_file, max_steps=1)
        train(cfg, text_encoder=text_encoder, progress=False)
        with pytest.raises(OutputError, match="already holds a training run"):
            train(cfg, text_encoder=text_encoder, progress=False)
        changed = config(store, tmp_path / "run", clip_file, lr=0.5)
        with pytest.raises(ConfigError, match="cannot resume .* with different settings: lr"):
            train(changed, resume=True, text_encoder=text_encoder, progress=False)
        # a moved run and a moved store resume; a store with other labels does not
        moved_store = tmp_path / "moved_store"
        shutil.copytree(store, moved_store)
        shutil.move(tmp_path / "run", tmp_path / "moved_run")
        moved = config(moved_store, tmp_path / "moved_run", clip_file, max_steps=2)
        assert train(moved, resume=True, text_encoder=text_encoder, progress=False).global_step == 2
        index = json.loads((moved_store / "index.json").read_text())
        index["items"][0]["label"] = "whistle"
        (moved_store / "index.json").write_text(json.dumps(index))
        with pytest.raises(
            ConfigError, match="holds other clips or labels than the one the run was trained on"
        ):
            train(moved, resume=True, text_encoder=text_encoder, progress=False)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "x").write_text("")
        with pytest.raises(OutputError, match="not empty and holds no resumable training run"):
            train(config(store, tmp_path / "other", clip_file), text_encoder=text_encoder)

    def test_custom_encoder_of_the_wrong_size(self, store, clip_file, text_encoder, tmp_path):
        wrong = nn.Sequential(nn.AvgPool2d(16), nn.Flatten(), nn.Linear(256, 7))
        with pytest.raises(
            ConfigError,
            match=r"maps \(2, 1, 128, 512\) to \(2, 7\); CLIP's embeddings need \(2, 32\)",
        ):
            train(
                config(store, tmp_path / "run", clip_file), encoder=wrong, text_encoder=text_encoder
            )

    def test_sync_bn_needs_cuda(self, store, clip_file, text_encoder, tmp_path, monkeypatch):
        from soundguide.training import trainer
        from soundguide.training.distributed import Job

        monkeypatch.setattr(trainer, "init_distributed", lambda device: Job(world_size=2))
        with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
            train(config(store, tmp_path / "r", clip_file, sync_bn=True), text_encoder=text_encoder)


def test_tensorboard_gets_scalars_when_installed(
    store, clip_file, text_encoder, tmp_path, monkeypatch
):
    calls = []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def close(self):
            calls.append(("close",))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    train(config(store, tmp_path / "run", clip_file), text_encoder=text_encoder, progress=False)
    tags = {c[0] for c in calls}
    assert ("init", str(tmp_path / "run" / "tensorboard")) in calls and ("close",) in calls
    assert {
        "train/loss",
        "train/lr",
        "epoch/val_top1",
        "epoch/val_loss",
        "epoch/train_loss",
    } <= tags
    assert ("train/loss", 3) in calls


class TestCLI:
    def test_paper_preset_and_explicit_options_win(self, store, clip_file, tmp_path):
        out = tmp_path / "run"
        result = CliRunner().invoke(
            train_command,
            [
                str(store), str(out), "--paper", "--clip", str(clip_file), "--arch", "tiny",
                "--batch-size", "8", "--epochs", "1", "--max-steps", "1", "--loader-workers", "0",
                "--log-every", "1", "-q",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "stopped after 1 steps (0 epochs)" in result.output
        saved = json.loads((out / "config.json").read_text())
        assert {k: saved[k] for k in ("optimizer", "schedule", "lr", "min_lr", "momentum")} == {
            "optimizer": "sgd", "schedule": "cyclic", "lr": 0.1, "min_lr": 0.001, "momentum": 0.9,
        }  # fmt: skip
        assert (saved["weight_decay"], saved["learnable_scale"], saved["image_weight"]) == (
            5e-4,
            False,
            0.0,
        )
        assert (saved["batch_size"], saved["epochs"]) == (8, 1)
        assert log(out)[0]["logit_scale"] == pytest.approx(math.exp(0.07))
        assert (log(out)[0]["lr"], log(out)[0]["momentum"]) == (0.001, 0.9)  # epoch 1's

        # resuming takes the run's own settings; only resumable ones may change
        again = CliRunner().invoke(
            train_command, [str(store), str(out), "--resume", "--max-steps", "2", "-q"]
        )
        assert again.exit_code == 0, again.output
        assert "stopped after 2 steps" in again.output
        nothing = CliRunner().invoke(train_command, [str(store), str(out), "--resume", "-q"])
        assert nothing.exit_code == 0 and nothing.output == (
            "nothing left to do: the run reached max_steps 2; pass --max-steps M > 2 or more "
            "--epochs\n"
        )
        assert len(log(out)) == 2
        clash = CliRunner().invoke(train_command, [str(store), str(out), "--resume", "--lr", "0.2"])
        assert isinstance(clash.exception, ConfigError)

    def test_paper_learning_rate_per_step_is_the_released_schedule(
        self, store, clip_file, tmp_path
    ):
        """Two epochs of --paper against soundclip/train.py's CyclicLR, stepped once per epoch."""
        out = tmp_path / "run"
        result = CliRunner().invoke(
            train_command,
            [
                str(store), str(out), "--paper", "--clip", str(clip_file), "--arch", "tiny",
                "--batch-size", "8", "--epochs", "2", "--loader-workers", "0", "--log-every", "1",
                "-q",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        param = torch.nn.Parameter(torch.zeros(1))
        original = torch.optim.SGD([param], lr=1e-3, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CyclicLR(
            original, base_lr=0.001, max_lr=0.1, step_size_up=5, mode="triangular"
        )
        expected = []
        for _epoch in range(2):
            for _batch in range(3):  # 24 training clips, batch 8
                expected.append(
                    (original.param_groups[0]["lr"], original.param_groups[0]["momentum"])
                )
                param.grad = torch.zeros(1)
                original.step()
            scheduler.step()
        steps = log(out)
        assert [(r["lr"], r["momentum"]) for r in steps] == expected  # the same torch arithmetic
        assert expected[2] != expected[3]  # the rate moves between epochs, not within one
        state = load_checkpoint(out / "checkpoints" / "last.pt")
        assert state["scheduler"]["last_epoch"] == 2 and state["config"]["cycle_epochs"] == 5

    def test_errors_propagate_as_soundguide_errors(self, tmp_path):
        result = CliRunner().invoke(train_command, [str(tmp_path), str(tmp_path / "run")])
        assert isinstance(result.exception, DatasetError)
        assert "\n" not in str(result.exception)


class TestBestCheckpoint:
    @pytest.mark.parametrize(
        ("best", "scores", "winner"),
        [
            ("val_loss", [2.0, 1.0, 1.0, 1.5], 1),  # epochs 1 and 2 tie: the earlier wins
            ("val_top1", [0.5, 0.75, 0.75, 0.6], 1),
        ],
    )
    def test_best_by_the_chosen_metric_ties_keep_the_earlier_epoch(
        self, store, clip_file, text_encoder, tmp_path, monkeypatch, best, scores, winner
    ):
        from soundguide.training import trainer

        at_epoch_end = []

        def validate(self):
            at_epoch_end.append({k: v.clone() for k, v in self.encoder.state_dict().items()})
            other = "val_top1" if best == "val_loss" else "val_loss"
            return {best: scores[len(at_epoch_end) - 1], other: 0.5}

        monkeypatch.setattr(trainer.Trainer, "validate", validate)
        cfg = config(store, tmp_path / "run", clip_file, epochs=4, lr=1e-2, best=best)
        result = train(cfg, text_encoder=text_encoder, progress=False)
        assert result.best == {
            "metric": best,
            "value": scores[winner],
            "epoch": winner,
            "step": 3 * (winner + 1),
        }
        assert json.loads((tmp_path / "run" / "best.json").read_text()) == result.best
        assert_same_state(weights(result.best_encoder), at_epoch_end[winner])
        assert not torch.equal(at_epoch_end[winner]["fc.weight"], at_epoch_end[2]["fc.weight"])


class TestResumeLimits:
    ARGS = [
        "--paper", "--arch", "tiny", "--batch-size", "8", "--loader-workers", "0",
        "--log-every", "1", "-q",
    ]  # fmt: skip

    def run(self, store, out, *args):
        return CliRunner().invoke(train_command, [str(store), str(out), *args])

    def test_more_steps_or_epochs_continue_and_nothing_left_says_so(
        self, store, clip_file, tmp_path
    ):
        clip = ["--clip", str(clip_file)]
        out = tmp_path / "run"
        first = self.run(store, out, *clip, *self.ARGS, "--epochs", "2", "--max-steps", "2")
        assert "stopped after 2 steps (0 epochs)" in first.output, first.output
        # a larger --max-steps continues from where it stopped: as if never stopped
        again = self.run(store, out, "--resume", "--max-steps", "4", "-q")
        assert "stopped after 4 steps (1 epochs)" in again.output, again.output
        direct = tmp_path / "direct"
        self.run(store, direct, *clip, *self.ARGS, "--epochs", "2", "--max-steps", "4")
        resumed = load_checkpoint(out / "checkpoints" / "last.pt")
        straight = load_checkpoint(direct / "checkpoints" / "last.pt")
        assert (
            resumed["position"]
            == straight["position"]
            == {
                "epoch": 1,
                "step_in_epoch": 1,
                "global_step": 4,
            }
        )
        assert_same_state(resumed["model"], straight["model"])
        assert resumed["optimizer"]["param_groups"] == straight["optimizer"]["param_groups"]
        for key, buffers in straight["optimizer"]["state"].items():
            assert_same_state(resumed["optimizer"]["state"][key], buffers)
        assert resumed["scheduler"] == straight["scheduler"]

        # nothing left: one line, exit 0, the run folder untouched
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        nothing = self.run(store, out, "--resume", "-q")
        assert nothing.exit_code == 0 and nothing.output == (
            "nothing left to do: the run reached max_steps 4; pass --max-steps M > 4 or more "
            "--epochs\n"
        )
        past = self.run(store, out, "--resume", "--max-steps", "3", "-q")
        assert past.output.startswith("nothing left to do: the run is at step 4, past max_steps 3")
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

        # more epochs (no --max-steps): on to the end, equal to a straight 3-epoch run
        longer = self.run(store, out, "--resume", "--epochs", "3", "-q")
        assert "finished after 9 steps (3 epochs)" in longer.output, longer.output
        three = tmp_path / "three"
        self.run(store, three, *clip, *self.ARGS, "--epochs", "3")
        assert_same_state(weights(out / "encoder-last.pth"), weights(three / "encoder-last.pth"))
        exact = ("step", "epoch", "loss", "lr", "momentum")
        assert [{k: r[k] for k in exact} for r in log(out)] == [
            {k: r[k] for k in exact} for r in log(three)
        ]
        assert [r["changed"] for r in log(out, "resume")] == [
            {"max_steps": [2, 4]},
            {"epochs": [2, 3], "max_steps": [4, None]},
        ]
        done = self.run(store, out, "--resume", "-q")
        assert done.exit_code == 0 and done.output == (
            "nothing left to do: the run finished its 3 epochs (9 steps); pass --epochs E > 3 "
            "to train on\n"
        )
        fewer = self.run(store, out, "--resume", "--epochs", "2", "-q")
        assert isinstance(fewer.exception, ConfigError)
        assert "with 2 epochs: the run has done 3 epochs" in str(fewer.exception)

    def test_more_epochs_stretch_a_cosine_schedule(self, store, clip_file, text_encoder, tmp_path):
        out = tmp_path / "run"
        train(config(store, out, clip_file, epochs=1, lr=0.01), text_encoder=text_encoder)
        assert log(out)[-1]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
        result = train(
            config(store, out, clip_file, epochs=2, lr=0.01),
            resume=True,
            text_encoder=text_encoder,
            progress=False,
        )
        assert result.global_step == 6
        assert result.notes == [
            "the cosine schedule now ends at step 6 (was 3); step 4 takes lr 0.005"
        ]
        assert log(out)[3]["lr"] == pytest.approx(0.005)


class TestClipLabel:
    def test_training_offline_with_the_demos_tiny_clip(self, store, tmp_path):
        from soundguide.demo import write_demo_inputs

        write_demo_inputs(tmp_path / "demo-inputs")
        clip = tmp_path / "demo-inputs" / "clip-tiny.pt"
        out = tmp_path / "run"
        result = CliRunner().invoke(
            train_command,
            [
                str(store), str(out), "--clip", str(clip), "--arch", "tiny", "--batch-size", "8",
                "--epochs", "1", "--max-steps", "1", "--loader-workers", "0", "-q",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads((out / "run.json").read_text())["clip"]
        assert report["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
        assert (report["file"], report["released"]) == (str(clip), False)
        assert report["text_tower"]["embed_dim"] == 64
        assert report["note"].startswith("not a released CLIP model: its text tower (embed dim 64")
        assert f"note: CLIP {clip}: not a released CLIP model" in result.output
        state = load_checkpoint(out / "checkpoints" / "last.pt")
        assert state["clip_sha256"] == report["sha256"]

    def test_resuming_against_another_clip_file_at_the_same_path(
        self, store, text_encoder, tmp_path
    ):
        from tests.factories import save_tiny_clip

        clip = save_tiny_clip(tmp_path / "clip.pt")
        cfg = config(store, tmp_path / "run", clip, max_steps=1)
        train(cfg, text_encoder=text_encoder, progress=False)
        save_tiny_clip(clip, seed=1)
        with pytest.raises(ConfigError, match="is not the one the run was trained against"):
            train(
                config(store, tmp_path / "run", clip, max_steps=2),
                resume=True,
                text_encoder=text_encoder,
                progress=False,
            )
