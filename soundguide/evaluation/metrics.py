"""Classification metrics over official folds: top-k, per fold, per class, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from soundguide.core.errors import DatasetError


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each item's label is among its ``k`` best scores.

    Input: scores (N, K), labels (N,) int. Output: (N,) bool. ``k`` is capped at K.
    Ties are broken towards the lower class index (as ``argmax``), so a
    constant score row predicts class 0.
    """
    k = max(1, min(int(k), scores.shape[1]))
    # a stable descending sort keeps tie-breaking deterministic and index-ordered
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return (order == labels.view(-1, 1)).any(dim=1)


def confusion_matrix(
    labels: torch.Tensor, predicted: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Counts: rows are true classes, columns predicted ones. Output: (K, K) int64."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(
    scores: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    folds: Sequence[int] | torch.Tensor,
    class_names: Sequence[str],
    *,
    top_k: int = 5,
) -> dict[str, Any]:
    """Accuracy of ``scores`` overall, per official fold and per class, and the confusion matrix.

    Input: scores (N, K), labels (N,) in 0..K-1, folds (N,).
    Output: a JSON-ready dict with ``top1``, ``top5`` (top-``top_k``; all K
    classes when K < ``top_k``), ``mean_fold_top1``/``mean_fold_top5`` (the
    mean of the per-fold accuracies), ``per_fold``, ``per_class`` (recall of
    each class) and ``confusion_matrix`` (rows true, columns predicted).
    Accuracies are fractions in [0, 1].
    """
    scores = scores.detach().float().cpu()
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    folds = torch.as_tensor(folds, dtype=torch.long).cpu()
    num, num_classes = scores.shape
    if labels.shape != (num,) or folds.shape != (num,):
        raise DatasetError(
            f"expected {num} labels and folds for scores {tuple(scores.shape)}, "
            f"got {tuple(labels.shape)} and {tuple(folds.shape)}"
        )
    if num == 0:
        raise DatasetError("no clips to score")
    if num_classes != len(class_names):
        raise DatasetError(f"scores have {num_classes} classes but {len(class_names)} names")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DatasetError(f"labels must lie in 0..{num_classes - 1}")
    top1 = topk_hits(scores, labels, 1)
    top5 = topk_hits(scores, labels, top_k)
    predicted = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, 0]
    per_fold = []
    for fold in sorted(set(folds.tolist())):
        mask = folds == fold
        per_fold.append(
            {
                "fold": int(fold),
                "clips": int(mask.sum()),
                "top1": _mean(top1[mask]),
                "top5": _mean(top5[mask]),
            }
        )
    per_class = []
    for index, name in enumerate(class_names):
        mask = labels == index
        per_class.append(
            {
                "index": index,
                "name": name,
                "clips": int(mask.sum()),
                "accuracy": _mean(top1[mask]) if bool(mask.any()) else None,
            }
        )
    return {
        "clips": num,
        "classes": num_classes,
        "top_k": min(top_k, num_classes),
        "top1": _mean(top1),
        "top5": _mean(top5),
        "mean_fold_top1": sum(f["top1"] for f in per_fold) / len(per_fold),
        "mean_fold_top5": sum(f["top5"] for f in per_fold) / len(per_fold),
        "per_fold": per_fold,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predicted, num_classes).tolist(),
        "predicted": predicted.tolist(),
    }


def _mean(hits: torch.Tensor) -> float:
    return float(hits.double().mean())
