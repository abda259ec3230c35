"""Linear probe: logistic regression on frozen embeddings, with the official folds.

For each official fold ``f`` (leave-one-fold-out):

1. the training set is every clip of the other folds, the test set the clips of ``f``;
2. the inverse regularization strength ``C`` is chosen by an *inner*
   cross-validation over the training folds' own fold ids (train on all but
   one of them, score on that one, pooled accuracy over the inner folds;
   ties go to the smaller ``C``). The test fold is never seen while choosing;
3. a model with that ``C`` is fitted on all training folds and scored on ``f``.

Each embedding is L2-normalized first (CLIP's linear-probe protocol; it
involves no other clip). Every fit is then a scikit-learn pipeline of
``StandardScaler`` and ``LogisticRegression`` (multinomial, lbfgs): the
features are standardized with the mean and standard deviation of that fit's
training rows only and the held-out rows are transformed with them. Without
it, embeddings of an encoder that hardly tells clips apart (mean cosine
0.995) differ by a few thousandths, the loss gradient is tiny from the start
and lbfgs stops after a handful of iterations far from the optimum.

Every ``C`` is fitted from scratch (no warm start), so a ``C``'s accuracy
does not depend on the grid around it. lbfgs runs to a gradient tolerance of
``tol`` (1e-8: scikit-learn's 1e-4 stops a weakly regularized fit early,
while its predictions still change) within ``max_iter`` iterations; fits that
stop short (scikit-learn's ``ConvergenceWarning``: the iteration limit or a
failed line search) are listed in :attr:`ProbeResult.non_converged`.

The result carries :attr:`ProbeResult.warnings`, each also issued as a
:class:`ProbeWarning`: nearly identical embeddings (mean cosine above
:data:`DEGENERATE_COSINE`), a ``C`` chosen at the edge of the grid while the
inner accuracy still rose towards it, and fits that did not converge.
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

DEFAULT_MAX_ITER = 5000
DEFAULT_TOL = 1e-8
"""lbfgs's gradient tolerance (``LogisticRegression(tol=...)``)."""

DEGENERATE_COSINE = 0.99
"""Mean cosine between clips above which the embeddings count as nearly identical."""

PAPER_PROBE_ACCURACY = {"esc50": 0.722, "urbansound8k": 0.668}
"""Logistic-regression accuracy reported by Lee et al. (CVPR 2022)."""

PREPROCESSING = (
    "each embedding L2-normalized; then, in every fit, each feature standardized with the "
    "mean and standard deviation of that fit's training rows (held-out rows transformed "
    "with them)"
)


class ProbeWarning(UserWarning):
    """The probe's numbers need a caveat: degenerate embeddings, C at the grid's edge, no convergence."""


@dataclass
class ProbeFit:
    """One fitted logistic regression."""

    fold: int | None
    """The outer test fold whose training folds it was fitted on (None outside :func:`linear_probe`)."""
    inner_fold: int | None
    """The training fold held out while choosing C; None for the fold's final fit."""
    C: float
    n_iter: int
    converged: bool
    reason: str = ""
    """Why it did not converge (lbfgs's stop message), empty when it did."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "inner_fold": self.inner_fold,
            "C": self.C,
            "n_iter": self.n_iter,
            "reason": self.reason,
        }


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
    C_at_edge: str | None = None
    """``"low"`` or ``"high"`` when C is the grid's smallest or largest value and its
    inner accuracy beats the next value inwards (a wider grid might choose beyond it)."""
    n_iter: int = 0
    """lbfgs iterations of the final fit."""


@dataclass
class ProbeResult:
    folds: list[ProbeFold]
    Cs: tuple[float, ...]
    max_iter: int
    tol: float = DEFAULT_TOL
    mean_cosine: float = float("nan")
    """Mean cosine similarity between the L2-normalized embeddings of different clips."""
    fits: list[ProbeFit] = field(default_factory=list)
    """Every logistic regression fitted, inner ones included."""
    predicted: list[int] = field(default_factory=list)
    """Predicted class per clip (input order), each from the model that did not train on it."""
    warnings: list[str] = field(default_factory=list)
    """Caveats on these numbers, one line each (also issued as :class:`ProbeWarning`)."""

    @property
    def mean_accuracy(self) -> float:
        """Mean of the per-fold test accuracies (the number papers report)."""
        return float(np.mean([f.accuracy for f in self.folds]))

    @property
    def pooled_accuracy(self) -> float:
        """Correct test predictions over all clips."""
        correct = sum(f.accuracy * f.test_clips for f in self.folds)
        return float(correct / sum(f.test_clips for f in self.folds))

    @property
    def non_converged(self) -> list[ProbeFit]:
        return [f for f in self.fits if not f.converged]

    @property
    def convergence_warnings(self) -> int:
        return len(self.non_converged)

    def to_dict(self) -> dict[str, Any]:
        iterations = [f.n_iter for f in self.fits]
        return {
            "mean_accuracy": self.mean_accuracy,
            "pooled_accuracy": self.pooled_accuracy,
            "preprocessing": PREPROCESSING,
            "Cs": list(self.Cs),
            "max_iter": self.max_iter,
            "tol": self.tol,
            "mean_cosine": self.mean_cosine,
            "fits": len(self.fits),
            "iterations": {
                "min": min(iterations),
                "median": float(np.median(iterations)),
                "max": max(iterations),
            }
            if iterations
            else None,
            "convergence_warnings": self.convergence_warnings,
            "non_converged": [f.to_dict() for f in self.non_converged],
            "warnings": list(self.warnings),
            "per_fold": [
                {
                    "fold": f.fold,
                    "C": f.C,
                    "C_at_edge": f.C_at_edge,
                    "accuracy": f.accuracy,
                    "train_clips": f.train_clips,
                    "test_clips": f.test_clips,
                    "n_iter": f.n_iter,
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
    """Fits and scores standardized logistic regressions, recording every fit's convergence."""

    def __init__(self, max_iter: int, tol: float = DEFAULT_TOL) -> None:
        self.max_iter = max_iter
        self.tol = tol
        self.fits: list[ProbeFit] = []
        self._cls = _sklearn()

    def fit(
        self, x: np.ndarray, y: np.ndarray, C: float, *, fold: int | None, inner_fold: int | None
    ) -> Any:
        """A ``StandardScaler`` + ``LogisticRegression`` pipeline fitted from scratch on (x, y)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(
            StandardScaler(), self._cls(C=C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol)
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        reasons = []
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                # "lbfgs failed to converge after N iteration(s) (status=S):\n<scipy's message>"
                reasons.append(" ".join(str(w.message).splitlines()[:2]))
            else:
                warnings.warn(w.message, w.category, stacklevel=2)
        n_iter = int(np.max(model[-1].n_iter_))
        if n_iter >= self.max_iter and not reasons:
            reasons.append(f"stopped at max_iter ({self.max_iter})")
        self.fits.append(
            ProbeFit(fold, inner_fold, float(C), n_iter, not reasons, "; ".join(reasons))
        )
        return model

    def accuracies(
        self,
        x: np.ndarray,
        y: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray,
        Cs: Sequence[float],
        *,
        fold: int | None = None,
        inner_fold: int | None = None,
    ) -> list[tuple[int, np.ndarray]]:
        """(correct count, predictions) on the test rows for each C, each fitted from scratch."""
        if len(np.unique(y)) < 2:
            raise DatasetError("a training split holds clips of only one class; cannot fit a probe")
        out = []
        for c in Cs:
            predicted = self.fit(x, y, c, fold=fold, inner_fold=inner_fold).predict(test_x)
            out.append((int((predicted == test_y).sum()), predicted))
        return out


def select_C(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    fitter: _Fitter | None = None,
    fold: int | None = None,
) -> tuple[float, dict[float, float]]:
    """Choose ``C`` by leave-one-group-out cross-validation over ``groups`` (the training folds).

    Input: x (N, D), y (N,), groups (N,) with at least two distinct values.
    Output: the ``C`` of best pooled accuracy (the smaller on ties) and every ``C``'s accuracy.
    ``fold`` only labels the fits recorded by ``fitter`` (the outer test fold).
    """
    fitter = fitter or _Fitter(max_iter, tol)
    Cs = sorted(float(c) for c in Cs)
    inner = sorted(set(groups.tolist()))
    if len(inner) < 2:
        raise DatasetError(
            f"choosing C needs at least two training folds, got {len(inner)}",
        )
    correct = np.zeros(len(Cs))
    for group in inner:
        held = groups == group
        results = fitter.accuracies(
            x[~held], y[~held], x[held], y[held], Cs, fold=fold, inner_fold=int(group)
        )
        correct += [count for count, _ in results]
    scores = correct / len(y)
    best = max(range(len(Cs)), key=lambda i: (scores[i], -i))
    return Cs[best], {c: float(s) for c, s in zip(Cs, scores, strict=True)}


def grid_edge(C: float, inner_accuracy: dict[float, float]) -> str | None:
    """``"low"``/``"high"`` when ``C`` is the grid's end and its accuracy beats its neighbour's."""
    Cs = sorted(inner_accuracy)
    if len(Cs) < 2:
        return None
    for edge, end, inward in (("low", Cs[0], Cs[1]), ("high", Cs[-1], Cs[-2])):
        if C == end and inner_accuracy[end] > inner_accuracy[inward]:
            return edge
    return None


def mean_cosine(x: np.ndarray) -> float:
    """Mean cosine between different rows of the L2-normalized (N, D) ``x``, in O(N D)."""
    n = len(x)
    if n < 2:
        return float("nan")
    total = x.sum(axis=0)
    return float((total @ total - (x * x).sum()) / (n * (n - 1)))


def _caveats(
    folds: Sequence[ProbeFold], fits: Sequence[ProbeFit], cosine: float, max_iter: int
) -> list[str]:
    out = []
    if cosine > DEGENERATE_COSINE:
        out.append(
            f"the embeddings are nearly identical (mean cosine {cosine:.4f} between clips, "
            f"above {DEGENERATE_COSINE}): the encoder hardly tells clips apart and the probe "
            "separates classes by differences standardization magnifies"
        )
    for edge, side, beyond in (("low", "smallest", "smaller"), ("high", "largest", "larger")):
        at = [f for f in folds if f.C_at_edge == edge]
        if at:
            values = sorted({f.C for f in at})
            out.append(
                f"C = {', '.join(_c_key(c) for c in values)} is the grid's {side} value and "
                f"was chosen with inner accuracy still rising towards it in fold(s) "
                f"{', '.join(str(f.fold) for f in at)}: add {beyond} C values to the grid"
            )
    failed = [f for f in fits if not f.converged]
    if failed:
        by_fold: dict[int | None, set[float]] = {}
        for f in failed:
            by_fold.setdefault(f.fold, set()).add(f.C)
        where = "; ".join(
            f"{'' if fold is None else f'fold {fold} '}C {', '.join(_c_key(c) for c in sorted(cs))}"
            for fold, cs in by_fold.items()
        )
        out.append(
            f"lbfgs did not converge in {len(failed)} of {len(fits)} fits "
            f"(max_iter {max_iter}): {where}; raise max_iter"
        )
    return out


def linear_probe(
    embeddings: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    folds: Sequence[int] | np.ndarray,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    progress: bool = False,
) -> ProbeResult:
    """Leave-one-official-fold-out logistic regression with ``C`` chosen on the training folds.

    Input: embeddings (N, D) (L2-normalized here, standardized per fit), labels (N,),
    folds (N,) official fold ids.
    Output: :class:`ProbeResult` (per-fold ``C`` and accuracy, their mean, every fit's
    convergence, caveats in ``warnings``, each also issued as a :class:`ProbeWarning`).
    """
    Cs = tuple(sorted(float(c) for c in Cs))
    if not Cs or any(not (c > 0 and np.isfinite(c)) for c in Cs):
        raise ConfigError(f"C values must be positive and finite, got {list(Cs)}")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    if not (tol > 0 and np.isfinite(tol)):
        raise ConfigError(f"tol must be positive and finite, got {tol}")
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
    fitter = _Fitter(max_iter, tol)
    predicted = np.zeros(len(y), dtype=np.int64)
    results = []
    from soundguide.core.progress import progress_bar

    folds = progress_bar(
        iterable=fold_ids, desc="linear probe", unit="fold", enabled=progress, leave=False
    )
    for fold in folds:
        test = groups == fold
        train_x, train_y, train_groups = x[~test], y[~test], groups[~test]
        best, inner = select_C(train_x, train_y, train_groups, Cs, fitter=fitter, fold=int(fold))
        ((correct, fold_predicted),) = fitter.accuracies(
            train_x, train_y, x[test], y[test], [best], fold=int(fold)
        )
        predicted[test] = fold_predicted
        results.append(
            ProbeFold(
                fold=int(fold),
                C=best,
                accuracy=correct / int(test.sum()),
                train_clips=int((~test).sum()),
                test_clips=int(test.sum()),
                inner_accuracy=inner,
                C_at_edge=grid_edge(best, inner),
                n_iter=fitter.fits[-1].n_iter,
            )
        )
    cosine = mean_cosine(x)
    caveats = _caveats(results, fitter.fits, cosine, max_iter)
    for caveat in caveats:
        warnings.warn(caveat, ProbeWarning, stacklevel=2)
    return ProbeResult(
        folds=results,
        Cs=Cs,
        max_iter=max_iter,
        tol=tol,
        mean_cosine=cosine,
        fits=fitter.fits,
        predicted=predicted.tolist(),
        warnings=caveats,
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
    tol: float = DEFAULT_TOL,
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
        tol=tol,
        progress=progress,
    )
    return ProbeReport(
        dataset=dataset, result=result, encoding=encoded, embedder=describe_embedder(embedder)
    )
