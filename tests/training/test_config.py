"""TrainConfig: located one-line errors, TOML files, and which source wins."""

from __future__ import annotations

import json

import pytest

from soundguide.cli import main
from soundguide.core.errors import ConfigError
from soundguide.evaluation.prompts import DEFAULT_TEMPLATES
from soundguide.training.config import (
    PAPER_SETTINGS,
    TrainConfig,
    read_train_toml,
    resolve_train_config,
)


def write(path, text):
    path.write_text(text)
    return path


class TestLocatedErrors:
    @pytest.mark.parametrize(
        ("values", "message"),
        [
            ({"epochs": 0}, "epochs: input should be greater than or equal to 1"),
            ({"epoch": 3}, "epoch: extra inputs are not permitted (did you mean 'epochs'?)"),
            ({"optimizer": "adam"}, "optimizer: input should be 'adamw' or 'sgd'"),
            ({"val_fraction": 1.0}, "val_fraction: input should be less than 1"),
            ({"max_steps": 0}, "max_steps: input should be greater than or equal to 1"),
            (
                {"templates": ["the sound of {label}", "a sound"]},
                "templates.1: prompt template 'a sound' must contain {label} exactly once and "
                "no other field",
            ),
            ({"templates": []}, "templates: list should have at least 1 item after validation"),
            ({"batch_size": 2.5}, "batch_size: input should be a valid integer"),
        ],
    )
    def test_one_line_with_the_key(self, tmp_path, values, message):
        with pytest.raises(ConfigError) as raised:
            TrainConfig(store=str(tmp_path), out=str(tmp_path / "run"), **values)
        assert raised.value.message.startswith(f"training settings: {message}")
        assert "\n" not in raised.value.message
        assert "soundguide train --help" in raised.value.hint

    def test_several_problems_in_one_line(self, tmp_path):
        with pytest.raises(ConfigError) as raised:
            TrainConfig.from_dict(
                {"store": "s", "out": "o", "lr": -1, "seed": "x"}, source="train.toml"
            )
        assert raised.value.message == (
            "train.toml: lr: input should be greater than or equal to 0; seed: input should be "
            "a valid integer, unable to parse string as an integer"
        )

    def test_a_flag_is_named_by_its_option(self, tmp_path):
        with pytest.raises(ConfigError) as raised:
            resolve_train_config(
                flags={"store": "s", "out": "o", "templates": ["x"]},
                flag_names={"templates": "--template"},
            )
        assert raised.value.message.startswith("--template: prompt template 'x' must contain")

    def test_missing_store(self, tmp_path):
        toml = write(tmp_path / "train.toml", "epochs = 2\n")
        with pytest.raises(ConfigError, match=r"training needs 'store': give STORE .* in .*toml"):
            resolve_train_config(file=toml)


class TestRoundTrip:
    def test_dict_and_json(self, tmp_path):
        config = TrainConfig(store=str(tmp_path), out=str(tmp_path / "run"), init=None)
        assert config.templates == list(DEFAULT_TEMPLATES)
        data = config.to_dict()
        assert TrainConfig.from_dict(data) == config
        assert TrainConfig.from_dict(json.loads(json.dumps(data))) == config
        assert config.differences(TrainConfig.from_dict({**data, "lr": 0.5, "max_steps": 3})) == [
            "lr"
        ]

    def test_paths_are_absolute(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        config = TrainConfig(store="store", out="~/run")
        assert config.store == str(tmp_path / "store")
        assert not config.out.startswith("~")


class TestTomlAndPrecedence:
    def test_relative_paths_resolve_against_the_file(self, tmp_path, monkeypatch):
        folder = tmp_path / "configs"
        folder.mkdir()
        (folder / "clip.pt").write_bytes(b"")
        toml = write(
            folder / "train.toml",
            'store = "../store"\nout = "runs/a"\ninit = "w.pth"\nclip = "clip.pt"\n',
        )
        monkeypatch.chdir(tmp_path)
        data = read_train_toml(toml)
        assert data == {
            "store": str(folder / "../store"),
            "out": str(folder / "runs/a"),
            "init": str(folder / "w.pth"),
            "clip": str(folder / "clip.pt"),
        }
        named = write(folder / "named.toml", 'clip = "ViT-B/32"\n')
        assert read_train_toml(named) == {"clip": "ViT-B/32"}
        assert resolve_train_config(file=toml).store == str(tmp_path / "store")

    def test_defaults_then_paper_then_file_then_flags(self, tmp_path):
        toml = write(tmp_path / "train.toml", 'store = "s"\nout = "o"\nlr = 0.2\nepochs = 3\n')
        plain = resolve_train_config(file=toml)
        assert (plain.optimizer, plain.lr, plain.epochs, plain.batch_size) == ("adamw", 0.2, 3, 320)
        paper = resolve_train_config(file=toml, flags={"paper": True, "epochs": 5})
        assert (paper.optimizer, paper.schedule, paper.momentum) == ("sgd", "cyclic", 0.9)
        assert (paper.lr, paper.epochs) == (0.2, 5)  # the file beats --paper, the flag the file
        in_file = write(tmp_path / "paper.toml", 'store = "s"\nout = "o"\npaper = true\n')
        assert resolve_train_config(file=in_file).lr == PAPER_SETTINGS["lr"]

    def test_a_stored_run_replaces_defaults_and_paper(self, tmp_path):
        stored = TrainConfig(store="s", out="o", lr=0.3, epochs=7)
        toml = write(tmp_path / "train.toml", "epochs = 9\nmax_steps = 4\n")
        resumed = resolve_train_config(
            file=toml, flags={"paper": True, "max_steps": 6}, stored=stored
        )
        assert (resumed.lr, resumed.epochs, resumed.max_steps) == (0.3, 9, 6)
        assert resumed.optimizer == "adamw"

    def test_a_cycle_in_steps_replaces_the_papers_cycle_in_epochs(self, tmp_path):
        paper = resolve_train_config(flags={"store": "s", "out": "o", "paper": True})
        assert (paper.cycle_epochs, paper.best) == (5, "val_loss")
        steps = resolve_train_config(
            flags={"store": "s", "out": "o", "paper": True, "cycle_steps": 2}
        )
        assert (steps.cycle_steps, steps.cycle_epochs) == (2, None)
        toml = write(tmp_path / "train.toml", 'store = "s"\nout = "o"\ncycle_steps = 3\n')
        assert resolve_train_config(file=toml, flags={"paper": True}).cycle_epochs is None
        both = resolve_train_config(file=toml, flags={"paper": True, "cycle_epochs": 2})
        assert (both.cycle_steps, both.cycle_epochs) == (3, 2)

    def test_a_resumed_run_keeps_its_max_steps_unless_its_length_changes(self):
        stored = TrainConfig(store="s", out="o", epochs=2, max_steps=4)
        assert resolve_train_config(stored=stored).max_steps == 4
        assert resolve_train_config(stored=stored, flags={"epochs": 2}).max_steps == 4
        assert resolve_train_config(stored=stored, flags={"max_steps": 5}).max_steps == 5
        longer = resolve_train_config(stored=stored, flags={"epochs": 3})
        assert (longer.epochs, longer.max_steps) == (3, None)
        capped = resolve_train_config(stored=stored, flags={"epochs": 3, "max_steps": 7})
        assert (capped.epochs, capped.max_steps) == (3, 7)
        assert TrainConfig(store="s", out="o", epochs=3).differences(stored) == []

    def test_file_errors_name_the_file(self, tmp_path):
        toml = write(tmp_path / "train.toml", 'store = "s"\nout = "o"\nepoch = 3\n')
        with pytest.raises(ConfigError) as raised:
            resolve_train_config(file=toml)
        assert raised.value.message == (
            f"{toml}: epoch: extra inputs are not permitted (did you mean 'epochs'?)"
        )
        bad = write(tmp_path / "bad.toml", "epochs = [\n")
        with pytest.raises(ConfigError, match="invalid TOML"):
            resolve_train_config(file=bad)


class TestCommand:
    def test_train_from_a_config_file_with_a_flag_on_top(self, store, clip_file, tmp_path, capsys):
        toml = write(
            tmp_path / "train.toml",
            f'store = "{store}"\nout = "run"\nclip = "{clip_file}"\narch = "tiny"\n'
            "batch_size = 8\nepochs = 1\nloader_workers = 0\nmax_steps = 1\nlr = 0.05\n"
            'templates = ["the sound of {label}"]\n',
        )
        assert main(["train", "--config", str(toml), "--lr", "0.02", "-q"]) == 0
        assert "stopped after 1 steps" in capsys.readouterr().out
        saved = json.loads((tmp_path / "run" / "config.json").read_text())
        assert (saved["lr"], saved["batch_size"], saved["out"]) == (0.02, 8, str(tmp_path / "run"))
        assert saved["templates"] == ["the sound of {label}"]
        # the run folder's config resumes it; STORE and OUT from the file again
        assert main(["train", "--config", str(toml), "--resume", "--max-steps", "2", "-q"]) == 2
        assert "cannot resume" in capsys.readouterr().err  # --lr 0.02 was the run's, 0.05 is not
        assert main(["train", "--config", str(toml), "--resume", "--lr", "0.02", "--max-steps",
                     "2", "-q"]) == 0  # fmt: skip
        assert "stopped after 2 steps" in capsys.readouterr().out

    def test_a_bad_file_is_one_error_line(self, tmp_path, capsys):
        toml = write(tmp_path / "train.toml", 'store = "s"\nout = "o"\nschedule = "linear"\n')
        assert main(["train", "--config", str(toml)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0] == (
            f"error: {toml}: schedule: input should be 'cosine', 'cyclic' or 'constant'"
        )
        assert err[1].startswith("hint: ")
        assert main(["train", "--config", str(toml), "--template", "oops"]) == 2
        assert "--template: prompt template 'oops'" in capsys.readouterr().err
        assert main(["train"]) == 2
        assert "error: training needs 'store'" in capsys.readouterr().err
