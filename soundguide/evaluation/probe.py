"""Linear probe: logistic regression on frozen embeddings, with the official folds.

For each official fold ``f`` (leave-one-fold-out):

1. the training set is every clip of the other folds, the test set the clips of ``f``;
2. the inverse regularization strength ``C`` is chosen by an *inner*
   cross-validation over the training folds' own fold ids (train on all but
   one of them, score on that one, pooled accuracy over the inner folds;
   ties go to the smaller ``C``). The test fold is never seen while choosing;
3. a model with that ``C`` is fitted on all training folds and scored on ``f``.

Embeddings are L2-normalized first (CLIP's linear-probe protocol). The model
is scikit-learn's ``LogisticRegression`` (multinomial, lbfgs); within one
split the ``C`` values are fitted in increasing order, each warm-started
from the previous solution.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from soundguide.core.errors import ConfigError, DatasetError
from soundguide.evaluation.datasets import AudioDataset
from soundguide.evaluation.embedders import AudioEmbedder, describe_embedder
from soundguide.evaluation.encoding import DatasetEmbeddings, embed_dataset

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
"""The grid of inverse regularization strengths the inner cross-validation picks from."""

DEFAULT_MAX_ITER = 1000

PAPER_PROBE_ACCURACY = {"esc50": 0.722, "urbansound8k": 0.668}
"""Logistic-regression accuracy reported by Lee et al. (CVPR 2022)."""


@dataclass
class ProbeFold:
    """One leave-one-fold-out split."""

    fold: int
    C: float
    accuracy: float
    train_clips: int
    test_clips: int
    inner_accuracy: dict[float, float]
    """Pooled inner-CV accuracy of each ``C`` (on the training folds only)."""


@dataclass
class ProbeResult:
    folds: list[ProbeFold]
    Cs: tuple[float, ...]
    max_iter: int
    convergence_warnings: int = 0
    predicted: list[int] = field(default_factory=list)
    """Predicted class per clip (input order), each from the model that did not train on it."""

    @property
    def mean_accuracy(self) -> float:
        """Mean of the per-fold test accuracies (the number papers report)."""
        return float(np.mean([f.accuracy for f in self.folds]))

    @property
    def pooled_accuracy(self) -> float:
        """Correct test predictions over all clips."""
        correct = sum(f.accuracy * f.test_clips for f in self.folds)
        return float(correct / sum(f.test_clips for f in self.folds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_accuracy": self.mean_accuracy,
            "pooled_accuracy": self.pooled_accuracy,
            "Cs": list(self.Cs),
            "max_iter": self.max_iter,
            "convergence_warnings": self.convergence_warnings,
            "per_fold": [
                {
                    "fold": f.fold,
                    "C": f.C,
                    "accuracy": f.accuracy,
                    "train_clips": f.train_clips,
                    "test_clips": f.test_clips,
                    "inner_accuracy": {_c_key(c): a for c, a in f.inner_accuracy.items()},
                }
                for f in self.folds
            ],
        }


def _c_key(c: float) -> str:
    return f"{c:g}"


def _sklearn() -> Any:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ConfigError(
            "the linear probe needs scikit-learn, which is not installed",
            hint="pip install scikit-learn",
        ) from None
    return LogisticRegression


class _Fitter:
    """Fits and scores logistic regressions, counting convergence warnings."""

    def __init__(self, max_iter: int) -> None:
        self.max_iter = max_iter
        self.warnings = 0
        self._cls = _sklearn()

    def accuracies(
        self,
        x: np.ndarray,
        y: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray,
        Cs: Sequence[float],
    ) -> list[tuple[int, np.ndarray]]:
        """(correct count, predictions) on the test rows for each C (ascending, warm-started)."""
        from sklearn.exceptions import ConvergenceWarning

        if len(np.unique(y)) < 2:
            raise DatasetError("a training split holds clips of only one class; cannot fit a probe")
        model = self._cls(solver="lbfgs", max_iter=self.max_iter, warm_start=True)
        out = []
        for c in Cs:
            model.set_params(C=c)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(x, y)
            self.warnings += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            predicted = model.predict(test_x)
            out.append((int((predicted == test_y).sum()), predicted))
        return out


def select_C(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    fitter: _Fitter | None = None,
) -> tuple[float, dict[float, float]]:
    """Choose ``C`` by leave-one-group-out cross-validation over ``groups`` (the training folds).

    Input: x (N, D), y (N,), groups (N,) with at least two distinct values.
    Output: the ``C`` of best pooled accuracy (the smaller on ties) and every ``C``'s accuracy.
    """
    fitter = fitter or _Fitter(max_iter)
    Cs = sorted(float(c) for c in Cs)
    inner = sorted(set(groups.tolist()))
    if len(inner) < 2:
        raise DatasetError(
            f"choosing C needs at least two training folds, got {len(inner)}",
        )
    correct = np.zeros(len(Cs))
    for group in inner:
        held = groups == group
        results = fitter.accuracies(x[~held], y[~held], x[held], y[held], Cs)
        correct += [count for count, _ in results]
    scores = correct / len(y)
    best = max(range(len(Cs)), key=lambda i: (scores[i], -i))
    return Cs[best], {c: float(s) for c, s in zip(Cs, scores, strict=True)}


def linear_probe(
    embeddings: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    folds: Sequence[int] | np.ndarray,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = DEFAULT_MAX_ITER,
    progress: bool = False,
) -> ProbeResult:
    """Leave-one-official-fold-out logistic regression with ``C`` chosen on the training folds.

    Input: embeddings (N, D) (L2-normalized here), labels (N,), folds (N,) official fold ids.
    Output: :class:`ProbeResult` (per-fold ``C`` and accuracy, their mean).
    """
    Cs = tuple(sorted(float(c) for c in Cs))
    if not Cs or any(not (c > 0 and np.isfinite(c)) for c in Cs):
        raise ConfigError(f"C values must be positive and finite, got {list(Cs)}")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    x = F.normalize(torch.as_tensor(embeddings).detach().float().cpu(), dim=-1).double().numpy()
    y = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(folds, dtype=np.int64)
    if x.ndim != 2 or y.shape != (len(x),) or groups.shape != (len(x),):
        raise DatasetError(
            f"expected embeddings (N, D) with N labels and folds, got {x.shape}, "
            f"{y.shape} and {groups.shape}"
        )
    fold_ids = sorted(set(groups.tolist()))
    if len(fold_ids) < 3:
        raise DatasetError(
            f"the linear probe needs at least 3 folds (test + 2 for choosing C), got {len(fold_ids)}"
        )
    fitter = _Fitter(max_iter)
    predicted = np.zeros(len(y), dtype=np.int64)
    results = []
    from soundguide.core.progress import progress_bar

    folds = progress_bar(
        iterable=fold_ids, desc="linear probe", unit="fold", enabled=progress, leave=False
    )
    for fold in folds:
        test = groups == fold
        train_x, train_y, train_groups = x[~test], y[~test], groups[~test]
        best, inner = select_C(train_x, train_y, train_groups, Cs, fitter=fitter)
        ((correct, fold_predicted),) = fitter.accuracies(train_x, train_y, x[test], y[test], [best])
        predicted[test] = fold_predicted
        results.append(
            ProbeFold(
                fold=int(fold),
                C=best,
                accuracy=correct / int(test.sum()),
                train_clips=int((~test).sum()),
                test_clips=int(test.sum()),
                inner_accuracy=inner,
            )
        )
    return ProbeResult(
        folds=results,
        Cs=Cs,
        max_iter=max_iter,
        convergence_warnings=fitter.warnings,
        predicted=predicted.tolist(),
    )


@dataclass
class ProbeReport:
    """A linear probe of one dataset with one audio embedder."""

    dataset: AudioDataset
    result: ProbeResult
    encoding: DatasetEmbeddings
    embedder: dict[str, Any]

    @property
    def mean_accuracy(self) -> float:
        return self.result.mean_accuracy


def probe_dataset(
    dataset: AudioDataset,
    embedder: AudioEmbedder,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = DEFAULT_MAX_ITER,
    batch_size: int = 32,
    workers: int = 2,
    cache: bool = True,
    cache_dir: Any = None,
    skip_bad_audio: bool = False,
    progress: bool = False,
) -> ProbeReport:
    """Embed ``dataset`` (cached, see :func:`embed_dataset`) and run :func:`linear_probe` on it."""
    encoded = embed_dataset(
        dataset,
        embedder,
        batch_size=batch_size,
        workers=workers,
        cache=cache,
        cache_dir=cache_dir,
        skip_bad_audio=skip_bad_audio,
        progress=progress,
    )
    clips = [dataset.clips[i] for i in encoded.indices]
    result = linear_probe(
        encoded.embeddings,
        [c.label for c in clips],
        [c.fold for c in clips],
        Cs=Cs,
        max_iter=max_iter,
        progress=progress,
    )
    return ProbeReport(
        dataset=dataset, result=result, encoding=encoded, embedder=describe_embedder(embedder)
    )
