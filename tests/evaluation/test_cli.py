"""``soundguide zeroshot`` and ``soundguide probe`` as a user runs them (click's CliRunner)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from soundguide.core.errors import ConfigError, DatasetError, OutputError
from soundguide.core.files import sha256_file
from soundguide.core.plugins import load_registries
from soundguide.evaluation.cli import probe, zeroshot
from soundguide.evaluation.confusion import confusion_png_size
from soundguide.evaluation.datasets import DatasetWarning
from soundguide.evaluation.reports import ZEROSHOT_FILES
from soundguide.evaluation.zeroshot import text_classifier
from tests.evaluation import oracle_plugin
from tests.evaluation.conftest import ESC50_WRONG, write_esc50, write_us8k

ORACLE = ["-p", "tests.evaluation.oracle_plugin", "--guidance", "oracle-audio"]


@pytest.fixture(autouse=True)
def _reset_oracle():
    oracle_plugin.INSTANCES.clear()


@pytest.fixture
def oracle_table(tmp_path, text_encoder):
    """The oracle's weights file: the tiny CLIP's embedding of each tiny-ESC-50 class."""
    path = tmp_path / "oracle_table.pt"
    names = ("dog", "crackling_fire", "chirping_birds", "clock_tick")
    torch.save({"table": text_classifier(text_encoder, names)}, path)
    return path


def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=True)


def test_zeroshot_with_a_third_party_embedder(tmp_path, oracle_table, tiny_clip_file):
    layout = write_esc50(tmp_path / "ESC-50-master", wrong=ESC50_WRONG)
    out = tmp_path / "out"
    args = ["esc50", layout.root, "--out", out, *ORACLE, "--encoder", oracle_table]
    args += ["--clip-model", tiny_clip_file, "-q", "--batch-size", "6"]
    result = invoke(zeroshot, *args)
    assert result.exit_code == 0, result.output
    assert (
        "ESC-50 zero-shot, protocol soundguide: top-1 75.0 %, top-4 100.0 % over 20 clips"
        in result.output
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(ZEROSHOT_FILES)
    report = json.loads((out / "zeroshot.json").read_text())
    assert report["top1"] == 0.75
    assert report["embedder"]["class"] == "tests.evaluation.conftest.OracleEmbedder"
    assert report["text_model"] == str(tiny_clip_file)
    assert oracle_plugin.INSTANCES[-1].batch_sizes == [6, 6, 6, 2]

    # again: the embeddings come from the cache, the reports need --overwrite
    again = invoke(zeroshot, *args)
    assert isinstance(again.exception, OutputError)
    again = invoke(zeroshot, *args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert "embeddings from the cache" in again.output
    assert oracle_plugin.INSTANCES[-1].clips == 0
    assert json.loads((out / "zeroshot.json").read_text())["encoding"]["from_cache"] is True


def test_encoder_by_known_weights_name_and_templates(tmp_path, oracle_table, tiny_clip_file):
    registries = load_registries(entry_points=False, plugins=[oracle_plugin])
    local = registries.weights.local_path("oracle-table")
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(oracle_table, local)
    layout = write_esc50(tmp_path / "esc50")
    out = tmp_path / "out"
    result = invoke(
        zeroshot,
        "esc50",
        layout.root,
        "--out",
        out,
        *ORACLE,
        "--encoder",
        "oracle-table",
        "--clip-model",
        tiny_clip_file,
        "--template",
        "a {label} recording",
        "--template",
        "{label}",
        "--crop",
        "windows",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "zeroshot.json").read_text())
    assert report["templates"] == ["a {label} recording", "{label}"]
    assert report["prompts"][1] == ["a crackling fire recording", "crackling fire"]
    # the name resolved to the file placed in the weights cache; the crop reached the plugin
    assert f"oracle:{sha256_file(local)}:windows:" in report["embedder"]["identity"]
    assert 0.0 <= report["top1"] <= 1.0


def test_raw_and_clean_labels(tmp_path, oracle_table, tiny_clip_file):
    layout = write_esc50(tmp_path / "esc50")
    args = ["esc50", layout.root, *ORACLE, "--encoder", oracle_table, "-q"]
    args += ["--clip-model", tiny_clip_file, "--template", "{label}"]
    raw, alias, clean = tmp_path / "raw", tmp_path / "alias", tmp_path / "clean"
    assert invoke(zeroshot, *args, "--out", raw, "--labels", "raw").exit_code == 0
    assert invoke(zeroshot, *args, "--out", alias, "--raw-labels").exit_code == 0
    assert invoke(zeroshot, *args, "--out", clean).exit_code == 0
    for out, prompt, labels in ((raw, "crackling_fire", "raw"), (alias, "crackling_fire", "raw")):
        report = json.loads((out / "zeroshot.json").read_text())
        assert report["prompts"][1] == [prompt] and report["protocol"]["labels"] == labels
    report = json.loads((clean / "zeroshot.json").read_text())
    assert report["prompts"][1] == ["crackling fire"] and report["protocol"]["labels"] == "clean"
    # the authors' protocol puts raw labels in; --labels clean wins over it
    authors = tmp_path / "authors"
    args = ["esc50", layout.root, *ORACLE, "--encoder", oracle_table, "-q"]
    args += ["--clip-model", tiny_clip_file, "--protocol", "authors"]
    with pytest.warns(UserWarning, match="takes no pad=center, db_reference=clip setting"):
        assert invoke(zeroshot, *args, "--out", authors).exit_code == 0
        assert (
            invoke(zeroshot, *args, "--out", clean, "--overwrite", "--labels", "clean").exit_code
            == 0
        )
    assert json.loads((authors / "zeroshot.json").read_text())["prompts"][1] == ["crackling_fire"]
    report = json.loads((clean / "zeroshot.json").read_text())
    assert report["prompts"][1] == ["crackling fire"]
    assert report["protocol"]["overridden"] == ["labels"]
    result = invoke(zeroshot, *args, "--out", tmp_path / "x", "--raw-labels", "--labels", "clean")
    assert isinstance(result.exception, ConfigError)
    assert "--raw-labels and --labels clean contradict" in str(result.exception)


def _soundclip_as_known_weights(soundclip_file):
    registries = load_registries(entry_points=False)
    local = registries.weights.local_path("soundclip-resnet18-57")
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(soundclip_file, local)  # as if `soundguide weights download` had run


def test_authors_protocol_and_explicit_flags(tmp_path, soundclip_file, tiny_clip_file):
    _soundclip_as_known_weights(soundclip_file)
    layout = write_esc50(tmp_path / "ESC-50-master")
    args = ["esc50", layout.root, "--clip-model", tiny_clip_file, "-q", "--protocol", "authors"]
    out = tmp_path / "authors"
    result = invoke(zeroshot, *args, "--out", out)
    assert result.exit_code == 0, result.output
    assert "ESC-50 zero-shot, protocol authors: top-1" in result.output
    report = json.loads((out / "zeroshot.json").read_text())
    protocol = report["protocol"]
    assert protocol["name"] == "authors" and protocol["overridden"] == []
    assert (protocol["crop"], protocol["pad"], protocol["db_reference"]) == (
        "center",
        "center",
        "clip",
    )
    assert (protocol["labels"], protocol["templates"]) == ("raw", ["{label}"])
    assert report["embedder"]["identity"].endswith(":crop=center:pad=center:db=clip")
    assert report["prompts"][1] == ["crackling_fire"]
    assert (out / "zeroshot_predictions.csv").read_text().splitlines()[1].endswith(",authors")

    # explicit flags win over the preset, and the reports say which
    out = tmp_path / "changed"
    flags = ["--crop", "start", "--pad", "end", "--template", "a {label}", "--labels", "clean"]
    result = invoke(zeroshot, *args, *flags, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "zeroshot.json").read_text())
    protocol = report["protocol"]
    assert protocol["overridden"] == ["crop", "pad", "labels", "templates"]
    assert (protocol["crop"], protocol["pad"], protocol["db_reference"]) == ("start", "end", "clip")
    assert report["embedder"]["identity"].endswith(":crop=start:pad=end:db=clip")
    assert report["prompts"][1] == ["a crackling fire"]
    markdown = (out / "zeroshot.md").read_text()
    assert (
        "Protocol `authors` (changed by flags: crop, pad, labels, templates): crop `start`"
        in markdown
    )


def test_probe_with_the_authors_protocol_on_the_folds_present(tmp_path, soundclip_file):
    _soundclip_as_known_weights(soundclip_file)
    layout = write_us8k(tmp_path / "UrbanSound8K")
    shutil.rmtree(layout.root / "audio" / "fold7")
    out = tmp_path / "out"
    with pytest.warns(DatasetWarning, match="no clips of fold\\(s\\) 7"):
        result = invoke(probe, "us8k", layout.root, "--out", out, "--protocol", "authors", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "probe.json").read_text())
    assert report["protocol"]["name"] == "authors"
    assert (report["protocol"]["crop"], report["protocol"]["pad"]) == ("center", "center")
    assert "labels" not in report["protocol"]  # a probe uses no prompts
    assert report["embedder"]["identity"].endswith(":crop=center:pad=center:db=clip")
    assert [f["fold"] for f in report["per_fold"]] == [1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert report["dataset"]["missing_folds"] == [7] and report["dataset"]["left_out_clips"] == 4
    assert report["paper"]["comparable"] is False
    reasons = report["paper"]["not_comparable_because"]
    assert "9 of the official 10 folds (no 7)" in reasons[0]
    assert "the audio encoder is random or tiny: its embedding size 32" in reasons[1]
    markdown = (out / "probe.md").read_text()
    assert "| paper (Lee et al., CVPR 2022), **not comparable** |" in markdown
    assert "Protocol `authors`: crop `center`; pad `center`; dB reference `clip`." in markdown
    assert (out / "probe_predictions.csv").read_text().splitlines()[1].endswith(",authors")


def test_real_soundclip_end_to_end(tmp_path, soundclip_file, tiny_clip_file):
    """The built-in audio guidance's encoder (random ResNet18) under its known-weights name."""
    _soundclip_as_known_weights(soundclip_file)
    layout = write_esc50(tmp_path / "ESC-50-master")
    out = tmp_path / "out"
    result = invoke(
        zeroshot, "esc50", layout.root, "--out", out, "--clip-model", tiny_clip_file, "-q"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "zeroshot.json").read_text())
    assert report["embedder"]["class"] == "soundguide.evaluation.embedders.SoundCLIPEmbedder"
    assert (report["embedder"]["crop"], report["embedder"]["pad"]) == ("start", "end")
    assert report["clips"] == 20
    # the files are named by sha256, and marked as random or tiny (the tests' 32-dim models)
    assert report["embedder"]["weights_sha256"] == sha256_file(soundclip_file)
    assert report["embedder"]["weights_check"]["random_or_tiny"] is True
    text = report["text_weights"]
    assert text["sha256"] == sha256_file(tiny_clip_file) and text["name"] == str(tiny_clip_file)
    assert text["random_or_tiny"] is True and text["released"] is None
    markdown = (out / "zeroshot.md").read_text()
    assert (
        f"Weights: CLIP `{tiny_clip_file}` sha256 `{text['sha256']}`, **RANDOM OR TINY**"
        in markdown
    )
    assert "the CLIP model is random or tiny" in " ".join(report["paper"]["not_comparable_because"])
    values = [report["top1"], report["top5"], report["mean_fold_top1"]]
    values += [f["top1"] for f in report["per_fold"]]
    values += [c["accuracy"] for c in report["per_class"]]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert sum(map(sum, report["confusion_matrix"])) == 20
    assert report["encoding"]["clips_per_second"] > 0
    with Image.open(out / "zeroshot_confusion.png") as image:
        assert image.size == confusion_png_size(4)
    assert "| **all clips** |" in (out / "zeroshot.md").read_text()


def test_probe_on_urbansound8k(tmp_path):
    layout = write_us8k(tmp_path / "UrbanSound8K")
    table = tmp_path / "table.pt"
    torch.save({"table": torch.eye(4) * 2}, table)
    out = tmp_path / "out"
    result = invoke(
        probe, "us8k", layout.root, "--out", out, *ORACLE, "--encoder", table, "--c-grid", "1"
    )
    assert result.exit_code == 0, result.output
    assert "UrbanSound8K linear probe: 100.0 % mean over 10 folds" in result.output
    report = json.loads((out / "probe.json").read_text())
    assert [f["fold"] for f in report["per_fold"]] == list(range(1, 11))
    assert all(f["C"] == 1.0 and f["test_clips"] == 4 for f in report["per_fold"])
    assert (out / "probe.md").is_file() and (out / "probe_predictions.csv").is_file()


def test_bad_layouts_fail_with_one_line(tmp_path, oracle_table):
    layout = write_esc50(tmp_path / "esc50")
    layout.csv_path.unlink()
    result = invoke(zeroshot, "esc50", layout.root, "--out", tmp_path / "out", *ORACLE)
    assert isinstance(result.exception, DatasetError)
    assert str(result.exception) == f"dataset metadata not found: {layout.csv_path}"

    us8k = write_us8k(tmp_path / "us8k")
    shutil.rmtree(us8k.root / "audio")
    result = invoke(probe, "urbansound8k", us8k.root, "--out", tmp_path / "out2", *ORACLE)
    assert isinstance(result.exception, DatasetError)
    assert str(us8k.root / "audio" / "fold7") in str(result.exception)
    assert "\n" not in str(result.exception)


def test_input_errors_come_before_any_encoding(tmp_path):
    layout = write_esc50(tmp_path / "esc50")
    out = tmp_path / "out"
    out.mkdir()
    (out / "zeroshot.md").write_text("old")
    # the encoder does not exist either: the output check must come first
    result = invoke(zeroshot, "esc50", layout.root, "--out", out, "--encoder", "nope")
    assert isinstance(result.exception, OutputError)
    result = invoke(zeroshot, "esc50", layout.root, "--out", out, "--template", "no label")
    assert isinstance(result.exception, ConfigError)
    result = invoke(probe, "esc50", layout.root, "--out", out, "--c-grid", "1,-2")
    assert isinstance(result.exception, ConfigError)
    result = invoke(zeroshot, "esc51", layout.root, "--out", out)
    assert result.exit_code == 2 and "Invalid value for 'DATASET'" in result.output
