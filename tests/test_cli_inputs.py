"""A first run as the README says: inputs checked up front, all at once, and errors that
say what to do next."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundguide.cli import main
from soundguide.demo import write_demo_inputs
from tests import toy_plugins
from tests.conftest import TOY_CONFIG


def cli(*args):
    return main(["-p", "tests.toy_plugins", *args])


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# -- config check looks at the files too ------------------------------------------------


def test_config_check_names_every_missing_input_at_once(write_config, tmp_path, capsys):
    (tmp_path / "folder.png").mkdir()
    path = write_config(
        TOY_CONFIG.replace("[[regularizer]]", "")
        .replace('type = "latent_l2"\nweight = 0.01', "")
        .replace(
            "[optimization]",
            """[[guidance]]
type = "audio"
path = "missing.wav"

[[guidance]]
type = "image"
path = "folder.png"
clip_model = "clip-missing.pt"

[optimization]
latent = "start.pt\"""",
        )
    )
    assert cli("config", "check", str(path)) == 2
    err = error_lines(capsys)
    assert len(err) == 2 and err[1].startswith("hint: ")
    line = err[0]
    assert line.startswith(f"error: 4 inputs of {path} cannot be used: ")
    for piece in (
        "guidance.2.path = ",
        "missing.wav (not found)",
        "guidance.3.path = ",
        "folder.png (a folder, not a file)",
        "guidance.3.clip_model = ",
        "clip-missing.pt (not found)",
        "optimization.latent = ",
        "start.pt (not found)",
    ):
        assert piece in line, piece


def test_config_check_passes_when_inputs_exist_and_notes_downloads(write_config, tmp_path, capsys):
    wav = tmp_path / "sound.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(4410) / 5.0), 44100)
    path = write_config(
        TOY_CONFIG.replace(
            "[[regularizer]]", '[[guidance]]\ntype = "audio"\npath = "sound.wav"\n\n[[regularizer]]'
        )
    )
    assert cli("config", "check", str(path)) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"ok: {path}")
    # the audio source's default encoder and CLIP are known weights, not downloaded here
    assert "note: soundclip-resnet18-57 is not downloaded yet" in captured.err
    assert "note: ViT-B/32 is not downloaded yet" in captured.err


def test_a_term_of_weight_zero_reads_nothing(write_config, capsys):
    path = write_config(
        TOY_CONFIG.replace(
            "[[regularizer]]",
            '[[guidance]]\ntype = "audio"\npath = "missing.wav"\nweight = 0\n\n[[regularizer]]',
        )
    )
    assert cli("config", "check", str(path)) == 0


# -- a run fetches every weights file before loading, and reports all failures --------


def test_all_missing_weights_are_reported_at_once(write_config, tmp_path, capsys, offline):
    wav = tmp_path / "sound.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(4410) / 5.0), 44100)
    path = write_config(
        """
        [generator]
        type = "stylegan2"
        preset = "landscape"

        [[guidance]]
        type = "audio"
        path = "sound.wav"
        """
    )
    assert main(["edit", str(path), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = error_lines(capsys)
    assert len(err) == 2
    assert err[0].startswith("error: 3 inputs of the run cannot be used: ")
    for name in ("'stylegan2-landscape'", "'soundclip-resnet18-57'", "'ViT-B/32'"):
        assert f"cannot download {name}" in err[0], name
    assert "weights list" in err[1]
    assert not (tmp_path / "out").exists()


def test_nothing_is_built_when_an_input_is_missing(write_config, tmp_path, capsys):
    path = write_config(TOY_CONFIG.replace("[optimization]", '[optimization]\nlatent = "nope.pt"'))
    assert cli("edit", str(path), "-q") == 2
    assert "optimization.latent = " in capsys.readouterr().err
    assert toy_plugins.CALLS["generator.build"] == 0


def test_weights_list_shows_clip_and_where_it_is_expected(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B/32  [not downloaded]  MIT  https://openaipublic.azureedge.net/clip/models/" in out
    assert f"-> {tmp_path / '.cache' / 'clip' / 'ViT-B-32.pt'}" in out
    assert "soundclip-resnet18-57" in out


def test_unknown_weights_name_says_what_exists(write_config, capsys):
    path = write_config(
        TOY_CONFIG.replace(
            "[[regularizer]]",
            '[[guidance]]\ntype = "text"\nprompt = "x"\nclip_model = "ViT-B/33"\n\n[[regularizer]]',
        )
    )
    assert cli("config", "check", str(path)) == 2
    err = error_lines(capsys)
    assert "unknown weights name 'ViT-B/33'" in err[0] and "did you mean 'ViT-B/32'" in err[0]
    assert "unknown known" not in err[0]
    assert "weights list" in err[1]


# -- config errors name their origin and suggest the key meant --------------------------


def test_set_errors_name_set_not_the_file(write_config, capsys):
    path = write_config(TOY_CONFIG)
    assert cli("config", "check", str(path), "--set", "guidance.0.wieght=2") == 2
    err = error_lines(capsys)
    assert err[0] == (
        "error: --set guidance.0.wieght: extra inputs are not permitted (did you mean 'weight'?)"
    )
    assert str(path) not in err[0]
    assert cli("config", "check", str(path), "--set", "optimization.steps=-1") == 2
    assert error_lines(capsys)[0].startswith("error: --set optimization.steps: input should be")
    assert cli("config", "check", str(path), "--set", 'guidance.0.type="sond"') == 2
    assert error_lines(capsys)[0].startswith(
        "error: --set guidance.0.type: unknown guidance 'sond'"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("seed = 7", "seed = 7\nstepz = 3"),
            "optimization.stepz: extra inputs are not permitted (did you mean 'steps'?)",
        ),
        (
            ('dir = "out"', 'dri = "out"'),
            "output.dri: extra inputs are not permitted (did you mean 'dir'?)",
        ),
        (
            ('type = "toy"', 'type = "toy"\nsise = 8'),
            "generator.sise: extra inputs are not permitted (did you mean 'size'?)",
        ),
        (
            ("seed = 3\n", "sead = 3\n"),
            "guidance.1.sead: extra inputs are not permitted (did you mean 'seed'?)",
        ),
        (
            ("[output]", "[outptu]"),
            "outptu: extra inputs are not permitted (did you mean 'output'?)",
        ),
    ],
)
def test_unknown_keys_get_did_you_mean(write_config, capsys, edit, expected):
    path = write_config(TOY_CONFIG.replace(*edit))
    assert cli("config", "check", str(path)) == 2
    assert expected in error_lines(capsys)[0]


# -- errors that have a next step say it --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (None, "relative paths resolve against the config's folder"),
        (b"\x00\x01not audio at all, just bytes" * 20, "ffmpeg -i"),
        (b"", "copy the file again"),
    ],
    ids=["missing", "unsupported", "empty"],
)
def test_audio_errors_have_hints(write_config, tmp_path, capsys, content, hint):
    from soundguide.encoders.audio import load_audio

    target = tmp_path / "clip.m4a"
    if content is not None:
        target.write_bytes(content)
    from soundguide.core.errors import AudioError

    with pytest.raises(AudioError) as info:
        load_audio(target)
    assert hint in (info.value.hint or "")


def test_missing_config_and_bad_toml_have_hints(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "nope.toml")]) == 2
    assert error_lines(capsys)[1].startswith("hint: ")
    bad = tmp_path / "bad.toml"
    bad.write_text("[generator]\ntype = stylegan2\n")
    assert main(["config", "check", str(bad)]) == 2
    err = error_lines(capsys)
    assert "invalid TOML" in err[0] and "quotes" in err[1]


# -- -p after the subcommand, and the demo's config -------------------------------------


def test_p_after_the_subcommand(tmp_path, capsys):
    assert (
        main(
            ["demo", "--out", str(tmp_path / "d"), "--steps", "1", "-q", "-p", "tests.toy_plugins"]
        )
        == 0
    )
    assert main(["plugins", "-p", "tests.toy_plugins"]) == 0
    assert "toy-target" in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "e"), "-q", "-p", "no_such_plugin_module"]) == 2


def test_demo_says_where_its_config_is_and_it_runs_again(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "runs/demo", "--steps", "2", "-q"]) == 0
    out = capsys.readouterr().out
    config = Path("runs/demo/demo-inputs/demo.toml")
    assert f"run config: {config} (edit it, or run it again: soundguide edit {config})" in out
    assert main(["edit", str(config), "-q", "--set", "optimization.steps=1"]) == 0
    manifest = json.loads((tmp_path / "runs" / "demo-edit" / "run.json").read_text())
    assert manifest["status"] == "finished"
    # every input is listed with its sha256, the local CLIP file included
    files = {Path(f["path"]).name: f["sha256"] for f in manifest["files"]}
    assert {"stylegan2-tiny.pt", "sound.wav", "soundclip-random.pt", "clip-tiny.pt"} <= set(files)
    assert all(len(digest) == 64 for digest in files.values())


def test_run_json_lists_the_clip_file_of_a_text_only_run(tmp_path, write_config):
    inputs = tmp_path / "inputs"
    write_demo_inputs(inputs, steps=1)
    path = write_config(
        f"""
        [generator]
        type = "stylegan2"
        checkpoint = "{inputs / "stylegan2-tiny.pt"}"

        [[guidance]]
        type = "text"
        prompt = "a fire"
        clip_model = "{inputs / "clip-tiny.pt"}"

        [optimization]
        steps = 1
        """
    )
    assert main(["edit", str(path), "--out", str(tmp_path / "o"), "-q"]) == 0
    files = json.loads((tmp_path / "o" / "run.json").read_text())["files"]
    assert str((inputs / "clip-tiny.pt").resolve()) in {f["path"] for f in files}
    assert torch.load(tmp_path / "o" / "latent_edited.pt", weights_only=True).ndim == 3
