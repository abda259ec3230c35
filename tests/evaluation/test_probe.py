from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from soundguide.core.errors import ConfigError, DatasetError
from soundguide.evaluation import linear_probe, load_esc50, probe_dataset, write_probe_report
from soundguide.evaluation.probe import DEFAULT_CS, _Fitter
from tests.evaluation.conftest import OracleEmbedder, write_esc50

FOLDS = (1, 2, 3, 4, 5)


def separable(seed: int = 0, per_class: int = 2, sigma: float = 0.05):
    """3 tight clusters around orthogonal directions in 8-D, 5 folds of 6 clips."""
    rng = np.random.default_rng(seed)
    x, y, folds = [], [], []
    for fold in FOLDS:
        for k in range(3):
            for _ in range(per_class):
                x.append(np.eye(8)[k] + sigma * rng.standard_normal(8))
                y.append(k)
                folds.append(fold)
    return np.array(x), np.array(y), np.array(folds)


def overlapping(seed: int = 0):
    """3 overlapping Gaussian classes in 6-D, 5 folds of 12: accuracy depends on C."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((3, 6))
    x, y, folds = [], [], []
    for fold in FOLDS:
        for k in range(3):
            for _ in range(4):
                x.append(means[k] + rng.standard_normal(6))
                y.append(k)
                folds.append(fold)
    return np.array(x), np.array(y), np.array(folds)


def test_separable_embeddings_reach_the_expected_accuracy():
    x, y, folds = separable()
    # one clip of fold 2 sits on class 1's cluster but is labelled 0: wrong whatever C is
    x[6] = np.eye(8)[1]
    assert y[6] == 0 and folds[6] == 2
    result = linear_probe(torch.tensor(x, dtype=torch.float32), y, folds)
    assert [f.fold for f in result.folds] == list(FOLDS)
    assert [f.accuracy for f in result.folds] == [1.0, 5 / 6, 1.0, 1.0, 1.0]
    assert [(f.train_clips, f.test_clips) for f in result.folds] == [(24, 6)] * 5
    assert result.mean_accuracy == pytest.approx((4 + 5 / 6) / 5)
    assert result.pooled_accuracy == pytest.approx(29 / 30)
    assert all(f.C in DEFAULT_CS for f in result.folds)
    assert result.predicted[6] == 1


def test_C_is_chosen_without_the_test_fold():
    x, y, folds = overlapping(seed=0)
    test_fold = 3
    poisoned = y.copy()
    test = folds == test_fold
    poisoned[test] = (poisoned[test] + 1) % 3  # every test label wrong

    clean = linear_probe(x, y, folds).folds[test_fold - 1]
    dirty = linear_probe(x, poisoned, folds).folds[test_fold - 1]
    assert dirty.C == clean.C
    assert dirty.inner_accuracy == clean.inner_accuracy
    assert dirty.accuracy != clean.accuracy  # the poison did reach the test labels

    # ...and choosing C on the test fold itself would have moved it: the check can fail.
    def leaky_choice(labels):
        xn = F.normalize(torch.tensor(x), dim=-1).numpy()
        scores = [
            (
                LogisticRegression(C=c, max_iter=1000).fit(xn[~test], y[~test]).predict(xn[test])
                == labels[test]
            ).mean()
            for c in sorted(DEFAULT_CS)
        ]
        return sorted(DEFAULT_CS)[int(np.argmax(scores))]

    assert leaky_choice(y) != leaky_choice(poisoned)


def test_no_fit_while_choosing_C_sees_the_test_fold(monkeypatch):
    x, y, folds = overlapping(seed=1)
    xn = F.normalize(torch.tensor(x).float(), dim=-1).double().numpy()  # as the probe does
    fold_of_row = {row.tobytes(): f for row, f in zip(xn, folds, strict=True)}
    seen: list[set[int]] = []
    original = _Fitter.accuracies

    def spy(self, train_x, train_y, test_x, test_y, Cs):
        seen.append({fold_of_row[r.tobytes()] for r in np.concatenate([train_x, test_x])})
        return original(self, train_x, train_y, test_x, test_y, Cs)

    monkeypatch.setattr(_Fitter, "accuracies", spy)
    linear_probe(x, y, folds, Cs=(0.1, 10.0))
    # per outer fold: 4 inner fits that must not touch it, then the final fit + test
    assert len(seen) == 5 * 5
    for i, fold in enumerate(FOLDS):
        inner, final = seen[5 * i : 5 * i + 4], seen[5 * i + 4]
        assert all(fold not in folds_used for folds_used in inner)
        assert fold in final


def test_bad_inputs():
    x, y, folds = separable()
    with pytest.raises(ConfigError, match="C values must be positive"):
        linear_probe(x, y, folds, Cs=(0.0, 1.0))
    with pytest.raises(DatasetError, match="at least 3 folds"):
        linear_probe(x, y, np.where(folds > 2, 2, folds))
    with pytest.raises(DatasetError, match="expected embeddings \\(N, D\\) with N labels"):
        linear_probe(x, y[:-1], folds)


def test_probe_dataset_report(tmp_path, text_encoder):
    layout = write_esc50(tmp_path / "esc50", per_fold=2)
    data = load_esc50(layout.root)
    # the oracle's table: one well-separated point per tone class
    oracle = OracleEmbedder(torch.eye(4) * 3)
    report = probe_dataset(data, oracle, Cs=(0.1, 10.0))
    assert report.mean_accuracy == 1.0
    assert oracle.clips == 40
    paths = write_probe_report(report, tmp_path / "out")
    data_json = json.loads(paths["json"].read_text())
    assert data_json["task"] == "probe"
    assert data_json["mean_accuracy"] == 1.0 and data_json["pooled_accuracy"] == 1.0
    assert data_json["Cs"] == [0.1, 10.0]
    assert [f["fold"] for f in data_json["per_fold"]] == [1, 2, 3, 4, 5]
    assert all(f["test_clips"] == 8 and f["train_clips"] == 32 for f in data_json["per_fold"])
    assert set(data_json["per_fold"][0]["inner_accuracy"]) == {"0.1", "10"}
    assert data_json["paper"] == {"source": "Lee et al., CVPR 2022", "accuracy": 0.722}
    markdown = paths["markdown"].read_text()
    assert "# Linear probe: ESC-50" in markdown
    assert "| **mean of folds** | **100.0 %** |  |  |" in markdown
    assert "| paper (Lee et al., CVPR 2022) | 72.2 % |  |  |" in markdown
    # the probe reuses the zero-shot cache: same dataset, same embedder
    probe_dataset(data, oracle, Cs=(1.0,))
    assert oracle.clips == 40
