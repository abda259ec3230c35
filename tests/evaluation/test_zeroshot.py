from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from soundguide.core.errors import AudioError, ConfigError, OutputError
from soundguide.evaluation import (
    DEFAULT_TEMPLATES,
    PROTOCOLS,
    DatasetWarning,
    class_prompts,
    classification_metrics,
    confusion_matrix,
    embed_dataset,
    load_esc50,
    load_urbansound8k,
    text_classifier,
    topk_hits,
    write_zeroshot_report,
    zero_shot,
    zero_shot_scores,
)
from soundguide.evaluation.reports import ZEROSHOT_FILES
from tests.evaluation.conftest import (
    ESC50_WRONG,
    US8K_WRONG,
    OracleEmbedder,
    write_esc50,
    write_us8k,
)


@pytest.fixture(scope="module")
def classifier(text_encoder):
    names = ("dog", "crackling_fire", "chirping_birds", "clock_tick")
    return text_classifier(text_encoder, names)


class TestPrompts:
    def test_labels_are_cleaned_into_every_template(self):
        prompts = class_prompts(["crackling_fire", "dog"])
        assert prompts == [
            [
                "the sound of crackling fire",
                "a sound of crackling fire",
                "a recording of crackling fire",
                "crackling fire",
            ],
            ["the sound of dog", "a sound of dog", "a recording of dog", "dog"],
        ]

    def test_raw_labels_and_the_former_evaluation_templates_stay_reachable(self):
        assert class_prompts(["crackling_fire"], ["{label}"], clean=False) == [["crackling_fire"]]
        former = ("the sound of a {label}", "a recording of {label}", "{label}")
        assert class_prompts(["Hand_saw"], former) == [
            ["the sound of a hand saw", "a recording of hand saw", "hand saw"]
        ]

    def test_training_and_evaluation_share_templates_and_cleaning(self):
        from soundguide.evaluation import prompts
        from soundguide.training.config import TrainConfig
        from soundguide.training.datasets import label_text

        config = TrainConfig(store="s", out="o")
        assert tuple(config.templates) == prompts.DEFAULT_TEMPLATES == DEFAULT_TEMPLATES
        for raw in ("crackling_fire", "Dog_bark", "male  speech, man speaking", "hi-hat"):
            assert label_text(raw) == prompts.clean_label(raw)
        assert prompts.clean_label("Playing_hi-hat") == "playing hi-hat"

    @pytest.mark.parametrize("template", ["no field", "{label} and {other}", "{}", "{label"])
    def test_bad_templates(self, template):
        with pytest.raises(ConfigError, match="prompt template"):
            class_prompts(["dog"], [template])

    def test_classifier_is_the_mean_of_normalized_prompt_embeddings(self, text_encoder):
        names = ["car_horn", "siren"]
        got = text_classifier(text_encoder, names, DEFAULT_TEMPLATES)
        assert got.shape == (2, 32)
        for k, name in enumerate(names):
            label = name.replace("_", " ")
            each = F.normalize(
                text_encoder.encode_text([t.format(label=label) for t in DEFAULT_TEMPLATES]), dim=-1
            )
            torch.testing.assert_close(got[k], F.normalize(each.mean(dim=0), dim=0))

    def test_dimension_mismatch(self, classifier):
        with pytest.raises(ConfigError, match="audio embeddings have 16 dimensions but the text"):
            zero_shot_scores(torch.randn(3, 16), classifier)


class TestMetrics:
    def test_topk_with_ties_prefers_the_lower_index(self):
        scores = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.2, 0.2], [0.3, 0.1, 0.2]])
        labels = torch.tensor([2, 1, 1])
        assert topk_hits(scores, labels, 1).tolist() == [False, False, False]
        assert topk_hits(scores, labels, 2).tolist() == [True, True, False]
        assert topk_hits(scores, labels, 9).tolist() == [True, True, True]

    def test_per_fold_per_class_and_confusion(self):
        scores = F.one_hot(torch.tensor([0, 1, 1, 2, 0, 2]), 3).float()
        labels = [0, 1, 2, 2, 1, 2]
        folds = [1, 1, 2, 2, 2, 1]
        m = classification_metrics(scores, labels, folds, ["a", "b", "c"])
        assert m["top1"] == pytest.approx(4 / 6)
        assert [f["top1"] for f in m["per_fold"]] == pytest.approx([1.0, 1 / 3])
        assert m["mean_fold_top1"] == pytest.approx(2 / 3)
        assert [c["accuracy"] for c in m["per_class"]] == pytest.approx([1.0, 0.5, 2 / 3])
        assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
        assert confusion_matrix(torch.tensor([1]), torch.tensor([0]), 2).tolist() == [
            [0, 0],
            [1, 0],
        ]


def _oracle(text_encoder, names, **kwargs):
    return OracleEmbedder(text_classifier(text_encoder, names), **kwargs)


class TestZeroShotESC50:
    def test_exact_accuracy_per_fold_class_and_confusion(self, tmp_path, text_encoder):
        layout = write_esc50(tmp_path / "esc50", wrong=ESC50_WRONG)
        data = load_esc50(layout.root)
        oracle = _oracle(text_encoder, data.class_names)
        result = zero_shot(data, oracle, text_encoder, batch_size=8, workers=2)
        m = result.metrics
        assert layout.expected_top1 == 0.75
        assert m["top1"] == 0.75
        assert m["top5"] == 1.0 and m["top_k"] == 4  # 4 classes: top-5 is every class
        assert {f["fold"]: f["top1"] for f in m["per_fold"]} == {
            1: 1.0,
            2: 0.75,
            3: 0.5,
            4: 0.75,
            5: 0.75,
        }
        assert layout.expected_fold_top1() == {f["fold"]: f["top1"] for f in m["per_fold"]}
        assert m["mean_fold_top1"] == pytest.approx(0.75)
        assert [c["accuracy"] for c in m["per_class"]] == [0.8, 0.8, 1.0, 0.4]
        expected = torch.zeros(4, 4, dtype=torch.long)
        for label, tone in zip(layout.labels, layout.tone_class, strict=True):
            expected[label, tone] += 1
        assert m["confusion_matrix"] == expected.tolist()
        # batched: 20 clips in calls of at most 8
        assert oracle.batch_sizes == [8, 8, 4]

    def test_reports(self, tmp_path, text_encoder):
        layout = write_esc50(tmp_path / "esc50", wrong=ESC50_WRONG)
        data = load_esc50(layout.root)
        oracle = _oracle(text_encoder, data.class_names)
        result = zero_shot(data, oracle, text_encoder, text_model="tiny")
        out = tmp_path / "report"
        paths = write_zeroshot_report(result, out)
        assert sorted(p.name for p in out.iterdir()) == sorted(ZEROSHOT_FILES)

        report = json.loads(paths["json"].read_text())
        assert report["task"] == "zeroshot"
        assert report["top1"] == 0.75 and report["top5"] == 1.0
        assert report["dataset"]["name"] == "esc50"
        assert report["dataset"]["clips"] == 20 and report["dataset"]["official_folds"] == 5
        assert report["dataset"]["labels"] == [
            "dog",
            "crackling fire",
            "chirping birds",
            "clock tick",
        ]
        assert report["paper"] == {
            "source": "Lee et al., CVPR 2022",
            "protocol": "authors",
            "top1": 0.578,
            "comparable": False,
            "not_comparable_because": [
                "the data is not the official full set (20 of the official 2000 clips; "
                "4 of the official 50 classes)",
                "the paper used the 'authors' protocol, this run soundguide",
            ],
        }
        assert report["protocol"] == {
            "name": "soundguide",
            "description": PROTOCOLS["soundguide"].description,
            "crop": "start",
            "pad": "end",
            "db_reference": "window",
            "labels": "clean",
            "templates": list(DEFAULT_TEMPLATES),
            "overridden": [],
        }
        assert report["dataset"]["official_full_set"] is False
        assert report["dataset"]["folds_present"] == [1, 2, 3, 4, 5]
        assert report["dataset"]["missing_folds"] == []
        assert report["templates"] == list(DEFAULT_TEMPLATES)
        assert report["prompts"][1][0] == "the sound of crackling fire"
        assert report["text_model"] == "tiny"
        assert report["embedder"]["identity"] == oracle.identity
        assert report["encoding"]["clips"] == 20 and report["encoding"]["from_cache"] is False
        assert report["encoding"]["clips_per_second"] > 0
        assert [f["clips"] for f in report["per_fold"]] == [4] * 5

        markdown = paths["markdown"].read_text()
        assert "# Zero-shot classification: ESC-50" in markdown
        assert "| fold 3 | 50.0 % | 100.0 % | 4 |" in markdown
        assert "| **all clips** | **75.0 %** | 100.0 % | 20 |" in markdown
        assert "| paper (Lee et al., CVPR 2022), **not comparable** | 57.8 % | – |  |" in markdown
        assert (
            "The paper's number is not comparable: the data is not the official full set "
            "(20 of the official 2000 clips; 4 of the official 50 classes); the paper used the "
            "'authors' protocol, this run soundguide." in markdown
        )
        assert (
            "Protocol `soundguide`: crop `start`; pad `end`; dB reference `window`; labels "
            "`clean`; prompts `the sound of {label}`, `a sound of {label}`, `a recording of "
            "{label}`, `{label}`." in markdown
        )
        assert "| clock tick | 40.0 % | 5 |" in markdown

        with Image.open(paths["confusion"]) as image:
            assert image.format == "PNG"
            # 150 px of labels + 4 cells of 32 px + 10 px margin; plus a 28 px title row
            assert image.size == (288, 316)
            image.load()

        lines = paths["predictions"].read_text().splitlines()
        assert lines[0] == "file,fold,label,predicted,correct,protocol"
        assert len(lines) == 21 and sum(line.endswith(",0,soundguide") for line in lines[1:]) == 5

        with pytest.raises(OutputError, match="already holds zeroshot.json"):
            write_zeroshot_report(result, out)
        write_zeroshot_report(result, out, overwrite=True)

    def test_authors_protocol_and_explicit_settings_in_the_reports(self, tmp_path, text_encoder):
        data = load_esc50(write_esc50(tmp_path / "esc50").root)
        oracle = _oracle(text_encoder, data.class_names)
        result = zero_shot(data, oracle, text_encoder, protocol="authors")
        assert result.prompts[1] == ["crackling_fire"]  # raw label, bare
        assert result.protocol is PROTOCOLS["authors"]
        paths = write_zeroshot_report(result, tmp_path / "authors")
        report = json.loads(paths["json"].read_text())
        assert report["protocol"]["name"] == "authors"
        assert [report["protocol"][k] for k in ("crop", "pad", "db_reference", "labels")] == [
            "center",
            "center",
            "clip",
            "raw",
        ]
        assert report["protocol"]["templates"] == ["{label}"]
        # not comparable for the data alone now
        assert len(report["paper"]["not_comparable_because"]) == 1
        markdown = paths["markdown"].read_text()
        assert (
            "Protocol `authors`: crop `center`; pad `center`; dB reference `clip`; labels `raw`; "
            "prompts `{label}`." in markdown
        )
        assert paths["predictions"].read_text().splitlines()[1].endswith(",authors")

        # explicit settings win over the protocol and are named as changed
        cleaned = zero_shot(data, oracle, text_encoder, protocol="authors", clean_labels=True)
        assert cleaned.prompts[1] == ["crackling fire"]
        assert cleaned.protocol.overridden == ("labels",)
        assert cleaned.protocol.label() == "authors (labels=clean)"
        paths = write_zeroshot_report(cleaned, tmp_path / "changed")
        report = json.loads(paths["json"].read_text())
        assert report["protocol"]["labels"] == "clean"
        assert report["protocol"]["overridden"] == ["labels"]
        assert "Protocol `authors` (changed by flags: labels)" in paths["markdown"].read_text()
        assert "authors (labels=clean)" in paths["predictions"].read_text().splitlines()[1]
        assert "this run authors changed (labels)" in report["paper"]["not_comparable_because"][1]

    def test_missing_fold_results_on_the_folds_present(self, tmp_path, text_encoder):
        layout = write_esc50(tmp_path / "esc50", wrong=ESC50_WRONG)
        rows = [r for r in layout.rows if r["fold"] != "3"]
        with open(layout.csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with pytest.warns(DatasetWarning, match="no clips of fold\\(s\\) 3"):
            data = load_esc50(layout.root)
        result = zero_shot(data, _oracle(text_encoder, data.class_names), text_encoder)
        m = result.metrics
        assert [f["fold"] for f in m["per_fold"]] == [1, 2, 4, 5]
        assert m["clips"] == 16 and m["top1"] == 13 / 16  # fold 3's two wrong clips are gone
        paths = write_zeroshot_report(result, tmp_path / "out")
        report = json.loads(paths["json"].read_text())
        assert report["dataset"]["missing_folds"] == [3]
        assert report["dataset"]["folds_present"] == [1, 2, 4, 5]
        assert "4 of the official 5 folds (no 3)" in report["paper"]["not_comparable_because"][0]
        markdown = paths["markdown"].read_text()
        assert "folds evaluated: 1, 2, 4, 5." in markdown
        assert "| fold 3 |" not in markdown

    def test_cache_second_run_does_not_encode(self, tmp_path, text_encoder):
        layout = write_esc50(tmp_path / "esc50", wrong=ESC50_WRONG)
        data = load_esc50(layout.root)
        oracle = _oracle(text_encoder, data.class_names)
        first = zero_shot(data, oracle, text_encoder)
        assert oracle.clips == 20 and not first.encoding.from_cache
        home = Path(os.environ["SOUNDGUIDE_HOME"])
        assert first.encoding.cache_path.parent == home / "cache" / "embeddings"
        assert first.encoding.cache_path.is_file()
        second = zero_shot(load_esc50(layout.root), oracle, text_encoder)
        assert oracle.clips == 20  # nothing re-encoded
        assert second.encoding.from_cache and second.top1 == first.top1 == 0.75
        torch.testing.assert_close(second.encoding.embeddings, first.encoding.embeddings)
        # the recorded speed is the run that encoded them
        assert second.encoding.seconds == pytest.approx(first.encoding.seconds)

        other = _oracle(text_encoder, data.class_names, tag="another encoder")
        zero_shot(data, other, text_encoder)
        assert other.clips == 20  # another identity (checksum or crop) is another entry

        zero_shot(data, oracle, text_encoder, cache=False)
        assert oracle.clips == 40

    def test_cache_follows_the_dataset(self, tmp_path, text_encoder):
        layout = write_esc50(tmp_path / "esc50")
        data = load_esc50(layout.root)
        oracle = _oracle(text_encoder, data.class_names)
        embed_dataset(data, oracle)
        layout.csv_path.write_text(layout.csv_path.read_text() + "\n")  # another CSV sha256
        embed_dataset(load_esc50(layout.root), oracle)
        assert oracle.clips == 40

    def test_damaged_cache_is_recomputed(self, tmp_path, text_encoder):
        data = load_esc50(write_esc50(tmp_path / "esc50").root)
        oracle = _oracle(text_encoder, data.class_names)
        path = embed_dataset(data, oracle).cache_path
        path.write_bytes(b"not a torch file")
        again = embed_dataset(data, oracle)
        assert oracle.clips == 40 and not again.from_cache


class TestZeroShotUS8K:
    def test_mixed_formats_and_ten_folds(self, tmp_path, text_encoder):
        layout = write_us8k(tmp_path / "UrbanSound8K", wrong=US8K_WRONG)
        data = load_urbansound8k(layout.root)
        oracle = _oracle(text_encoder, data.class_names)
        result = zero_shot(data, oracle, text_encoder, batch_size=16)
        m = result.metrics
        assert m["top1"] == 0.75
        assert [f["fold"] for f in m["per_fold"]] == list(range(1, 11))
        assert all(f["top1"] == 0.75 and f["clips"] == 4 for f in m["per_fold"])
        assert [c["accuracy"] for c in m["per_class"]] == [1.0, 1.0, 1.0, 0.0]
        assert m["confusion_matrix"][3] == [10, 0, 0, 0]

    def test_unreadable_clip_stops_or_is_skipped(self, tmp_path, text_encoder):
        layout = write_us8k(tmp_path / "UrbanSound8K")
        row = layout.rows[5]
        bad = layout.root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        bad.write_bytes(b"RIFF garbage, not a wave file")
        data = load_urbansound8k(layout.root)
        oracle = _oracle(text_encoder, data.class_names)
        with pytest.raises(AudioError, match=f"cannot read audio {bad}"):
            zero_shot(data, oracle, text_encoder)
        result = zero_shot(data, oracle, text_encoder, skip_bad_audio=True)
        assert [s["path"] for s in result.encoding.skipped] == [str(bad)]
        assert result.metrics["clips"] == 39 and result.top1 == 1.0
        assert 5 not in result.encoding.indices
