from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from soundguide.core.errors import ConfigError, DatasetError
from soundguide.evaluation import linear_probe, load_esc50, probe_dataset, write_probe_report
from soundguide.evaluation.cli import probe
from soundguide.evaluation.probe import (
    DEFAULT_CS,
    DEFAULT_TOL,
    ProbeWarning,
    _Fitter,
    grid_edge,
    mean_cosine,
)
from tests.evaluation.conftest import OracleEmbedder, write_esc50

FOLDS = (1, 2, 3, 4, 5)


def separable(seed: int = 0, per_class: int = 2, sigma: float = 0.05):
    """3 tight Gaussian clusters around orthogonal directions in 3-D, 5 folds of 6 clips.

    The clusters are ~28 sigma apart: every clip is classified right at any C.
    """
    rng = np.random.default_rng(seed)
    x, y, folds = [], [], []
    for fold in FOLDS:
        for k in range(3):
            for _ in range(per_class):
                x.append(np.eye(3)[k] + sigma * rng.standard_normal(3))
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


def nearly_identical(seed: int = 0, signal: float = 0.01):
    """What a random encoder gives: one shared 64-D vector plus a small class offset and noise.

    4 classes, 5 folds of 12; the mean cosine between clips is ~0.997. Unstandardized,
    lbfgs stops after a few iterations on such data.
    """
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(64)
    means = signal * rng.standard_normal((4, 64))
    y = np.tile(np.repeat(np.arange(4), 3), len(FOLDS))
    folds = np.repeat(FOLDS, 12)
    return base + means[y] + 0.05 * rng.standard_normal((len(y), 64)), y, folds


def normalized(x: np.ndarray) -> np.ndarray:
    """The embeddings as the probe sees them before standardizing (float32 L2, then float64)."""
    return F.normalize(torch.tensor(x).float(), dim=-1).double().numpy()


def outcome(result):
    return (
        result.predicted,
        [f.C for f in result.folds],
        [f.accuracy for f in result.folds],
        [f.inner_accuracy for f in result.folds],
    )


def test_separable_embeddings_reach_the_expected_accuracy():
    x, y, folds = separable()
    # one clip of fold 2 sits on class 1's cluster but is labelled 0: wrong whatever C is
    x[6] = np.eye(3)[1]
    assert y[6] == 0 and folds[6] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbeWarning)  # nothing to warn about here
        result = linear_probe(torch.tensor(x, dtype=torch.float32), y, folds)
    assert [f.fold for f in result.folds] == list(FOLDS)
    assert [f.accuracy for f in result.folds] == [1.0, 5 / 6, 1.0, 1.0, 1.0]
    assert [(f.train_clips, f.test_clips) for f in result.folds] == [(24, 6)] * 5
    assert result.mean_accuracy == pytest.approx((4 + 5 / 6) / 5)
    assert result.pooled_accuracy == pytest.approx(29 / 30)
    assert all(f.C in DEFAULT_CS for f in result.folds)
    assert result.predicted[6] == 1
    # every C ties on the inner folds: the smallest wins, and a flat edge is no warning
    assert all(f.C == 0.01 and f.C_at_edge is None for f in result.folds)
    assert result.warnings == [] and result.non_converged == []
    assert len(result.fits) == 5 * (4 * len(DEFAULT_CS) + 1)
    assert result.mean_cosine < 0.5


@pytest.mark.filterwarnings("ignore::soundguide.evaluation.probe.ProbeWarning")  # not its subject
def test_each_fold_is_an_independent_standardized_fit():
    """Parity: the fold's predictions are those of scikit-learn's own scaler + model pipeline."""
    x, y, folds = overlapping(seed=2)
    xn = normalized(x)
    result = linear_probe(x, y, folds, Cs=(0.1, 10.0))
    predicted = np.array(result.predicted)
    for f in result.folds:
        test = folds == f.fold
        reference = make_pipeline(
            StandardScaler(), LogisticRegression(C=f.C, max_iter=5000, tol=DEFAULT_TOL)
        ).fit(xn[~test], y[~test])
        assert (predicted[test] == reference.predict(xn[test])).all()
        assert f.accuracy == (predicted[test] == y[test]).mean()


@pytest.mark.filterwarnings("ignore::soundguide.evaluation.probe.ProbeWarning")  # not its subject
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
        xn = normalized(x)
        scores = [
            (
                make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
                .fit(xn[~test], y[~test])
                .predict(xn[test])
                == labels[test]
            ).mean()
            for c in sorted(DEFAULT_CS)
        ]
        return sorted(DEFAULT_CS)[int(np.argmax(scores))]

    assert leaky_choice(y) != leaky_choice(poisoned)


def fold_lookup(x: np.ndarray, folds: np.ndarray) -> dict[bytes, int]:
    return {row.tobytes(): int(f) for row, f in zip(normalized(x), folds, strict=True)}


@pytest.mark.filterwarnings("ignore::soundguide.evaluation.probe.ProbeWarning")  # not its subject
def test_no_fit_while_choosing_C_sees_the_test_fold(monkeypatch):
    x, y, folds = overlapping(seed=1)
    fold_of_row = fold_lookup(x, folds)
    seen: list[set[int]] = []
    original = _Fitter.accuracies

    def spy(self, train_x, train_y, test_x, test_y, Cs, **kwargs):
        seen.append({fold_of_row[r.tobytes()] for r in np.concatenate([train_x, test_x])})
        return original(self, train_x, train_y, test_x, test_y, Cs, **kwargs)

    monkeypatch.setattr(_Fitter, "accuracies", spy)
    linear_probe(x, y, folds, Cs=(0.1, 10.0))
    # per outer fold: 4 inner fits that must not touch it, then the final fit + test
    assert len(seen) == 5 * 5
    for i, fold in enumerate(FOLDS):
        inner, final = seen[5 * i : 5 * i + 4], seen[5 * i + 4]
        assert all(fold not in folds_used for folds_used in inner)
        assert fold in final


def test_the_scaler_is_fitted_on_the_training_rows_only(monkeypatch):
    """Each fit's StandardScaler holds the mean and std of exactly its training folds' clips.

    Standardizing all clips up front (a leak of the test fold's statistics) fails here:
    the rows reaching the fit would no longer be the L2-normalized embeddings.
    """
    x, y, folds = overlapping(seed=1)
    x[folds == 4] += 5.0  # a test fold unlike the rest moves any statistic it leaks into
    xn = normalized(x)
    fold_of_row = fold_lookup(x, folds)
    fitted = []
    original = _Fitter.fit

    def spy(self, train_x, train_y, C, *, fold, inner_fold):
        model = original(self, train_x, train_y, C, fold=fold, inner_fold=inner_fold)
        used = {fold_of_row[r.tobytes()] for r in train_x}
        fitted.append((fold, inner_fold, used, model[0]))
        return model

    monkeypatch.setattr(_Fitter, "fit", spy)
    linear_probe(x, y, folds, Cs=(1.0,))
    assert len(fitted) == 5 * (4 + 1)
    for fold, inner_fold, used, scaler in fitted:
        expected = set(FOLDS) - {fold, inner_fold}
        assert used == expected
        rows = np.isin(folds, sorted(expected))
        assert scaler.n_samples_seen_ == rows.sum()
        np.testing.assert_allclose(scaler.mean_, xn[rows].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(scaler.scale_, xn[rows].std(axis=0), rtol=1e-12)


def test_every_C_is_fitted_from_scratch():
    """A C's accuracy does not depend on the other C values of the grid, nor on their order.

    At scikit-learn's default tolerance (1e-4), warm-starting each C from the previous
    solution changes the inner accuracies on this data; fitted from scratch, they match
    a grid of that C alone.
    """
    x, y, folds = nearly_identical(seed=1, signal=0.015)
    grid = (0.01, 1.0, 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        together = linear_probe(x, y, folds, Cs=grid, tol=1e-4)
        alone = {c: linear_probe(x, y, folds, Cs=(c,), tol=1e-4) for c in grid}
    for c in grid:
        assert [f.inner_accuracy[c] for f in together.folds] == [
            f.inner_accuracy[c] for f in alone[c].folds
        ]

    fitter = _Fitter(max_iter=5000, tol=1e-4)
    train, test = folds != 1, folds == 1
    forward = fitter.accuracies(x[train], y[train], x[test], y[test], grid)
    backward = fitter.accuracies(x[train], y[train], x[test], y[test], grid[::-1])[::-1]
    assert [count for count, _ in forward] == [count for count, _ in backward]
    assert all((a == b).all() for (_, a), (_, b) in zip(forward, backward, strict=True))


@pytest.mark.filterwarnings(
    "ignore::soundguide.evaluation.probe.ProbeWarning"
)  # the others are not its subject
def test_nearly_identical_embeddings_are_flagged_and_still_converge():
    x, y, folds = nearly_identical(seed=0)
    with pytest.warns(ProbeWarning, match=r"nearly identical \(mean cosine 0\.99"):
        result = linear_probe(x, y, folds, Cs=(0.01, 1.0, 100.0))
    assert result.mean_cosine > 0.99
    assert result.mean_cosine == pytest.approx(
        float(np.mean((normalized(x) @ normalized(x).T)[~np.eye(len(x), dtype=bool)]))
    )
    # the first caveat; C at the edge of this coarse grid may follow
    assert result.warnings[0].startswith("the embeddings are nearly identical")
    assert result.non_converged == []
    # the fits reached the optimum: a far tighter tolerance changes nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        tight = linear_probe(x, y, folds, Cs=(0.01, 1.0, 100.0), tol=1e-12, max_iter=100_000)
    assert outcome(result) == outcome(tight)
    assert 0.3 < result.mean_accuracy < 0.9  # above chance (0.25), not trivially separable


def test_C_at_the_grid_edge_is_flagged():
    # two separable classes, 2:1: a tiny C only learns the prior (the majority class)
    rng = np.random.default_rng(0)
    y = np.tile([0, 0, 1], 10)
    folds = np.repeat(FOLDS, 6)
    x = np.eye(4)[y] + 0.05 * rng.standard_normal((30, 4))
    with pytest.warns(ProbeWarning, match="grid's largest value") as caught:
        result = linear_probe(x, y, folds, Cs=(1e-6, 1.0))
    assert all(f.C == 1.0 and f.C_at_edge == "high" for f in result.folds)
    assert all(f.inner_accuracy == {1e-6: 2 / 3, 1.0: 1.0} for f in result.folds)
    assert result.mean_accuracy == 1.0
    assert result.warnings == [
        "C = 1 is the grid's largest value and was chosen with inner accuracy still rising "
        "towards it in fold(s) 1, 2, 3, 4, 5: add larger C values to the grid"
    ]
    assert [str(w.message) for w in caught] == result.warnings


@pytest.mark.parametrize(
    ("C", "inner", "edge"),
    [
        (0.1, {0.1: 0.8, 1.0: 0.7, 10.0: 0.6}, "low"),
        (10.0, {0.1: 0.6, 1.0: 0.7, 10.0: 0.8}, "high"),
        (0.1, {0.1: 0.8, 1.0: 0.8, 10.0: 0.6}, None),  # flat at the edge: the grid did not limit
        (1.0, {0.1: 0.6, 1.0: 0.8, 10.0: 0.7}, None),
        (1.0, {1.0: 0.8}, None),  # a single C is no choice
    ],
)
def test_grid_edge(C, inner, edge):
    assert grid_edge(C, inner) == edge


def test_mean_cosine():
    x = normalized(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert mean_cosine(x) == pytest.approx((0 + 2 * 2**-0.5) / 3)


@pytest.mark.filterwarnings(
    "ignore::soundguide.evaluation.probe.ProbeWarning"
)  # the others are not its subject
def test_fits_that_do_not_converge_are_listed(tmp_path):
    x, y, folds = overlapping(seed=0)
    with pytest.warns(ProbeWarning, match="lbfgs did not converge in 45 of 45 fits"):
        result = linear_probe(x, y, folds, Cs=(0.1, 10.0), max_iter=2)
    assert len(result.non_converged) == 45
    assert result.convergence_warnings == 45
    first = result.non_converged[0]
    assert (first.fold, first.inner_fold, first.C, first.n_iter) == (1, 2, 0.1, 2)
    assert "status=1" in first.reason and "ITERATIONS REACHED LIMIT" in first.reason
    finals = [f for f in result.non_converged if f.inner_fold is None]
    assert [f.fold for f in finals] == list(FOLDS)
    caveat = result.warnings[-1]
    assert caveat.startswith("lbfgs did not converge in 45 of 45 fits (max_iter 2): fold 1 C 0.1")
    assert caveat.endswith("fold 5 C 0.1, 10; raise max_iter")


def test_bad_inputs():
    x, y, folds = separable()
    with pytest.raises(ConfigError, match="C values must be positive"):
        linear_probe(x, y, folds, Cs=(0.0, 1.0))
    with pytest.raises(ConfigError, match="tol must be positive"):
        linear_probe(x, y, folds, tol=0.0)
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
    assert data_json["max_iter"] == 5000 and data_json["tol"] == DEFAULT_TOL
    assert (
        "standardized with the mean and standard deviation of that fit's training rows"
        in (data_json["preprocessing"])
    )
    # clips of a class share one embedding, classes are orthogonal: 10 x 9 of 40 x 39 pairs
    assert data_json["mean_cosine"] == pytest.approx(4 * 10 * 9 / (40 * 39))
    assert data_json["fits"] == 5 * (4 * 2 + 1)
    assert 1 <= data_json["iterations"]["min"] <= data_json["iterations"]["max"] < 5000
    assert data_json["convergence_warnings"] == 0 and data_json["non_converged"] == []
    assert data_json["warnings"] == []
    assert [f["fold"] for f in data_json["per_fold"]] == [1, 2, 3, 4, 5]
    assert all(f["test_clips"] == 8 and f["train_clips"] == 32 for f in data_json["per_fold"])
    assert all(f["C_at_edge"] is None and f["n_iter"] >= 1 for f in data_json["per_fold"])
    assert set(data_json["per_fold"][0]["inner_accuracy"]) == {"0.1", "10"}
    assert data_json["paper"]["source"] == "Lee et al., CVPR 2022"
    assert data_json["paper"]["accuracy"] == 0.722
    markdown = paths["markdown"].read_text()
    assert "# Linear probe: ESC-50" in markdown
    assert "| **mean of folds** | **100.0 %** |  |  |" in markdown
    assert "| paper (Lee et al., CVPR 2022)" in markdown and "| 72.2 % |  |  |" in markdown
    assert "## Warnings" not in markdown and "did not converge" not in markdown
    assert "every C is fitted from scratch (no warm start)" in markdown
    assert f"gradient tolerance {DEFAULT_TOL:g}, at most 5000 iterations" in markdown
    assert "Convergence: 45 fits," in markdown and "all converged." in markdown
    assert "| test fold | C = 0.1 | C = 10 |" in markdown
    assert "| fold 1 | **100.0 %** | 100.0 % |" in markdown
    # the probe reuses the zero-shot cache: same dataset, same embedder
    probe_dataset(data, oracle, Cs=(1.0,))
    assert oracle.clips == 40


def test_report_lists_warnings_and_fits_that_did_not_converge(tmp_path):
    layout = write_esc50(tmp_path / "esc50", per_fold=2)
    data = load_esc50(layout.root)
    # nearly the same vector for every class
    oracle = OracleEmbedder(torch.ones(4, 4) + 0.01 * torch.eye(4))
    with pytest.warns(ProbeWarning):
        report = probe_dataset(data, oracle, Cs=(0.1, 10.0), max_iter=1)
    paths = write_probe_report(report, tmp_path / "out")
    data_json = json.loads(paths["json"].read_text())
    assert data_json["mean_cosine"] > 0.99
    assert len(data_json["non_converged"]) == 45
    assert data_json["non_converged"][0] == {
        "fold": 1,
        "inner_fold": 2,
        "C": 0.1,
        "n_iter": 1,
        "reason": data_json["non_converged"][0]["reason"],
    }
    assert [w.split(" (")[0] for w in data_json["warnings"]] == [
        "the embeddings are nearly identical",
        "lbfgs did not converge in 45 of 45 fits",
    ]
    markdown = paths["markdown"].read_text()
    assert "## Warnings\n\n- the embeddings are nearly identical" in markdown
    assert "**45 did not converge** (below)" in markdown
    assert "| test fold | fit | C | iterations | lbfgs stopped |" in markdown
    assert "| 1 | inner fold 2 | 0.1 | 1 | lbfgs failed to converge" in markdown
    assert "| 5 | final fit | 10 | 1 |" not in markdown  # only the first 20 rows
    assert "… and 25 more (all in probe.json)." in markdown


def test_probe_command_prints_each_warning_once(tmp_path):
    layout = write_esc50(tmp_path / "esc50")
    table = tmp_path / "table.pt"
    torch.save({"table": torch.ones(4, 4) + 0.01 * torch.eye(4)}, table)
    out = tmp_path / "out"
    args = ["esc50", layout.root, "--out", out, "-p", "tests.evaluation.oracle_plugin"]
    args += ["--guidance", "oracle-audio", "--encoder", table, "--c-grid", "0.1,10", "-q"]
    result = CliRunner().invoke(probe, [str(a) for a in [*args, "--max-iter", "1"]])
    assert result.exit_code == 0, result.output
    assert "ESC-50 linear probe:" in result.stdout and "warning" not in result.stdout
    lines = result.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "warning: the embeddings are nearly identical",
        "warning: lbfgs did not converge in 45 of 45 fits",
    ]
    report = json.loads((out / "probe.json").read_text())
    assert report["warnings"] == [line.removeprefix("warning: ") for line in lines]

    # converged, and standardized: nearly identical embeddings still separate the classes
    result = CliRunner().invoke(probe, [str(a) for a in [*args, "--overwrite"]])
    assert result.exit_code == 0, result.output
    assert "ESC-50 linear probe: 100.0 % mean over 5 folds" in result.stdout
    assert [line.split(" (")[0] for line in result.stderr.splitlines()] == [
        "warning: the embeddings are nearly identical",
    ]
