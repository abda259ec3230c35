"""Writing evaluation reports: JSON, a Markdown table, a confusion-matrix PNG and predictions.

Files, all in one output folder (zero-shot and probe reports can share it)::

    zeroshot.json  zeroshot.md  zeroshot_confusion.png  zeroshot_predictions.csv
    probe.json     probe.md     probe_predictions.csv

Accuracies are fractions in [0, 1] in JSON and percentages in Markdown. The
PNG is drawn by :mod:`soundguide.evaluation.confusion`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from soundguide.core.errors import OutputError
from soundguide.core.files import atomic_write_text, os_reason, sha256_file
from soundguide.evaluation.confusion import confusion_png
from soundguide.evaluation.datasets import AudioDataset
from soundguide.evaluation.encoding import DatasetEmbeddings
from soundguide.evaluation.probe import PAPER_PROBE_ACCURACY, ProbeReport
from soundguide.evaluation.prompts import clean_label
from soundguide.evaluation.zeroshot import (
    CANVAS_SETTINGS,
    DEFAULT_PROTOCOL,
    PAPER_PROTOCOL,
    PAPER_ZEROSHOT_TOP1,
    PROTOCOLS,
    EvalProtocol,
    ZeroShotResult,
)

PAPER = "Lee et al., CVPR 2022"
ZEROSHOT_FILES = (
    "zeroshot.json",
    "zeroshot.md",
    "zeroshot_confusion.png",
    "zeroshot_predictions.csv",
)
PROBE_FILES = ("probe.json", "probe.md", "probe_predictions.csv")


# -- output folder ------------------------------------------------------------------


def prepare_output(out: str | os.PathLike[str], names: Iterable[str], overwrite: bool) -> Path:
    """Create ``out``; refuse (one :class:`OutputError` line) to replace report files unless ``overwrite``."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path exists and is not a folder: {out}")
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"output folder {out} already holds {', '.join(existing)}",
            hint="pass --overwrite to replace them, or choose another --out",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {os_reason(exc)}") from None
    return out


# -- JSON -----------------------------------------------------------------------------


def dataset_info(dataset: AudioDataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "title": dataset.title,
        "root": str(dataset.root.resolve()),
        "csv": str(dataset.csv_path.resolve()),
        "csv_sha256": sha256_file(dataset.csv_path),
        "identity": dataset.identity(),
        "clips": len(dataset),
        "classes": len(dataset.class_names),
        "official_folds": dataset.num_folds,
        "folds_present": dataset.fold_ids,
        "missing_folds": dataset.missing_folds,
        "left_out_clips": dataset.left_out,
        "official_full_set": not dataset.differences_from_official(),
        "differences_from_official": dataset.differences_from_official(),
        "class_names": list(dataset.class_names),
        "class_ids": list(dataset.class_ids),
        "labels": [clean_label(n) for n in dataset.class_names],
    }


def paper_comparison(
    dataset: AudioDataset,
    encoding: DatasetEmbeddings,
    embedder: dict[str, Any],
    *,
    protocol: EvalProtocol | None = None,
    text_weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Whether a result can be set beside the paper's number, and if not, why.

    Not comparable: a dataset that is not the official full set (or clips
    skipped as unreadable), random or tiny weights (see
    :func:`~soundguide.evaluation.embedders.soundclip_weights_check`), and for
    zero-shot (``protocol`` given) another protocol than the paper's.
    """
    reasons = []
    differences = dataset.differences_from_official()
    if differences:
        reasons.append(f"the data is not the official full set ({'; '.join(differences)})")
    if encoding.skipped:
        reasons.append(f"{len(encoding.skipped)} unreadable clip(s) skipped")
    audio = embedder.get("weights_check") or {}
    if audio.get("random_or_tiny"):
        reasons.append(f"the audio encoder is random or tiny: {audio['why']}")
    if text_weights and text_weights.get("random_or_tiny"):
        reasons.append(f"the CLIP model is random or tiny: {text_weights['why']}")
    if protocol is not None and (protocol.name != PAPER_PROTOCOL or protocol.overridden):
        used = protocol.name + (
            f" changed ({', '.join(protocol.overridden)})" if protocol.overridden else ""
        )
        reasons.append(f"the paper used the {PAPER_PROTOCOL!r} protocol, this run {used}")
    return {"comparable": not reasons, "not_comparable_because": reasons}


def probe_protocol(report: ProbeReport, protocol: EvalProtocol | None = None) -> EvalProtocol:
    """The protocol of a probe (default: soundguide's) with the embedder's own canvas settings."""
    protocol = protocol or PROTOCOLS[DEFAULT_PROTOCOL]
    return protocol.with_settings(**{k: report.embedder.get(k) for k in CANVAS_SETTINGS})


def _header(task: str) -> dict[str, Any]:
    from soundguide import __version__

    return {
        "task": task,
        "soundguide_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def zeroshot_json(result: ZeroShotResult) -> dict[str, Any]:
    """The zero-shot report as a JSON-ready dict (accuracies are fractions)."""
    paper = PAPER_ZEROSHOT_TOP1.get(result.dataset.name)
    comparison = paper_comparison(
        result.dataset,
        result.encoding,
        result.embedder,
        protocol=result.protocol,
        text_weights=result.text_weights,
    )
    return {
        **_header("zeroshot"),
        "protocol": result.protocol.to_dict(),
        "dataset": dataset_info(result.dataset),
        "embedder": result.embedder,
        "text_model": result.text_model,
        "text_weights": result.text_weights,
        "templates": list(result.templates),
        "prompts": result.prompts,
        **result.metrics,
        "skipped": result.encoding.skipped,
        "encoding": result.encoding.timing(),
        "paper": {"source": PAPER, "protocol": PAPER_PROTOCOL, "top1": paper, **comparison}
        if paper is not None
        else None,
    }


def probe_json(report: ProbeReport, protocol: EvalProtocol | None = None) -> dict[str, Any]:
    """The linear-probe report as a JSON-ready dict (accuracies are fractions)."""
    paper = PAPER_PROBE_ACCURACY.get(report.dataset.name)
    comparison = paper_comparison(report.dataset, report.encoding, report.embedder)
    return {
        **_header("probe"),
        "protocol": probe_protocol(report, protocol).to_dict(prompts=False),
        "dataset": dataset_info(report.dataset),
        "embedder": report.embedder,
        "classifier": "sklearn StandardScaler + LogisticRegression (lbfgs, multinomial) "
        "on L2-normalized embeddings, both fitted on the training rows of each fit",
        **report.result.to_dict(),
        "skipped": report.encoding.skipped,
        "encoding": report.encoding.timing(),
        "paper": {"source": PAPER, "accuracy": paper, **comparison} if paper is not None else None,
    }


# -- Markdown -------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(":--" if a == "l" else "--:" for a in align) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _encoding_line(data: dict[str, Any]) -> str:
    enc = data["encoding"]
    speed = f"{enc['clips_per_second']:.1f} clips/s" if enc["clips_per_second"] else "n/a"
    cached = "; read from the cache now" if enc["from_cache"] else ""
    return (
        f"Encoding: {enc['clips']} clips in {enc['seconds']:.1f} s ({speed}, "
        f"batch size {enc['batch_size']}){cached}."
    )


def _skipped_lines(data: dict[str, Any]) -> list[str]:
    skipped = data["skipped"]
    if not skipped:
        return []
    lines = ["", f"Skipped {len(skipped)} unreadable clip(s) (not counted):", ""]
    return lines + [f"- `{s['path']}`: {s['error']}" for s in skipped]


def _protocol_line(protocol: dict[str, Any]) -> str:
    """The protocol and every setting it implies, for a Markdown report."""
    parts = [
        f"crop `{protocol['crop']}`",
        f"pad `{protocol['pad']}`",
        f"dB reference `{protocol['db_reference']}`",
    ]
    if "labels" in protocol:
        parts.append(f"labels `{protocol['labels']}`")
        parts.append("prompts " + ", ".join(f"`{t}`" for t in protocol["templates"]))
    changed = protocol["overridden"]
    note = f" (changed by flags: {', '.join(changed)})" if changed else ""
    return f"Protocol `{protocol['name']}`{note}: " + "; ".join(parts) + "."


def _paper_label(paper: dict[str, Any]) -> str:
    if paper["comparable"]:
        return f"paper ({PAPER})"
    return f"paper ({PAPER}), **not comparable**"


def _paper_note(paper: dict[str, Any] | None) -> list[str]:
    if not paper or paper["comparable"]:
        return []
    return [
        "The paper's number is not comparable: " + "; ".join(paper["not_comparable_because"]) + ".",
        "",
    ]


def _data_and_weights_lines(data: dict[str, Any]) -> list[str]:
    """Which data (if not the official full set) and which weights (sha256, random or tiny)."""
    ds, lines = data["dataset"], []
    if not ds["official_full_set"]:
        lines.append(
            "Data: not the official full set ("
            + "; ".join(ds["differences_from_official"])
            + f"); folds evaluated: {', '.join(map(str, ds['folds_present']))}."
        )
    weights = [
        (
            "audio encoder",
            data["embedder"].get("weights_sha256"),
            data["embedder"].get("weights_check"),
        )
    ]
    text = data.get("text_weights")
    if text:
        weights.append((f"CLIP `{text['name']}`", text["sha256"], text))
    for what, sha, check in weights:
        if sha is None:
            continue
        if check and check.get("random_or_tiny"):
            kind = f"**RANDOM OR TINY** ({check['why']})"
        elif check and check.get("released"):
            kind = f"the released {check['released']}"
        else:
            kind = "no sign of random or tiny weights"
        lines.append(f"Weights: {what} sha256 `{sha}`, {kind}.")
    return [*lines, ""] if lines else []


def zeroshot_markdown(data: dict[str, Any]) -> str:
    """A Markdown report from :func:`zeroshot_json`'s dict."""
    ds = data["dataset"]
    k = data["top_k"]
    rows = [
        (f"fold {f['fold']}", _pct(f["top1"]), _pct(f["top5"]), str(f["clips"]))
        for f in data["per_fold"]
    ]
    rows.append(
        ("**all clips**", f"**{_pct(data['top1'])}**", _pct(data["top5"]), str(data["clips"]))
    )
    rows.append(("mean of folds", _pct(data["mean_fold_top1"]), _pct(data["mean_fold_top5"]), ""))
    if data["paper"]:
        rows.append((_paper_label(data["paper"]), _pct(data["paper"]["top1"]), "–", ""))
    lines = [
        f"# Zero-shot classification: {ds['title']}",
        "",
        f"Audio embedder `{data['embedder']['identity']}`; text: CLIP `{data['text_model']}`; "
        f"{data['clips']} clips, {data['classes']} classes, {ds['official_folds']} official folds.",
        "",
        _protocol_line(data["protocol"]),
        "",
        *_table(("", "top-1", f"top-{k}", "clips"), "lrrr", rows),
        "",
        *_paper_note(data["paper"]),
        "Prompt templates (class embedding = mean of normalized prompt embeddings): "
        + ", ".join(f"`{t}`" for t in data["templates"])
        + ".",
        "",
        *_data_and_weights_lines(data),
        _encoding_line(data),
        *_skipped_lines(data),
        "",
        "## Per class",
        "",
        *_table(
            ("class", "accuracy", "clips"),
            "lrr",
            (
                (ds["labels"][c["index"]], _pct(c["accuracy"]), str(c["clips"]))
                for c in data["per_class"]
            ),
        ),
        "",
    ]
    return "\n".join(lines)


def probe_markdown(data: dict[str, Any]) -> str:
    """A Markdown report from :func:`probe_json`'s dict."""
    ds = data["dataset"]
    edge = {"low": " (grid's low edge)", "high": " (grid's high edge)"}
    rows = [
        (
            f"fold {f['fold']}",
            _pct(f["accuracy"]),
            f"{f['C']:g}{edge.get(f['C_at_edge'], '')}",
            str(f["test_clips"]),
        )
        for f in data["per_fold"]
    ]
    rows.append(("**mean of folds**", f"**{_pct(data['mean_accuracy'])}**", "", ""))
    rows.append(("all clips (pooled)", _pct(data["pooled_accuracy"]), "", ""))
    if data["paper"]:
        rows.append((_paper_label(data["paper"]), _pct(data["paper"]["accuracy"]), "", ""))
    cs = [f"{c:g}" for c in data["Cs"]]
    lines = [
        f"# Linear probe: {ds['title']}",
        "",
        f"Audio embedder `{data['embedder']['identity']}`; logistic regression on standardized "
        f"embeddings, leave-one-fold-out over the {ds['official_folds']} official folds; C chosen "
        f"from {', '.join(cs)} by cross-validation over the training folds only.",
        "",
        _protocol_line(data["protocol"]),
        "",
        *_table(("test fold", "accuracy", "C", "clips"), "lrrr", rows),
        "",
        *_paper_note(data["paper"]),
        *_data_and_weights_lines(data),
    ]
    if data["warnings"]:
        lines += ["## Warnings", "", *(f"- {w}" for w in data["warnings"]), ""]
    lines += [
        "## Method",
        "",
        f"- Features: {data['preprocessing']}; no statistic of a held-out clip enters a fit.",
        "- Classifier: scikit-learn `LogisticRegression` (multinomial, lbfgs, gradient "
        f"tolerance {data['tol']:g}, at most {data['max_iter']} iterations); every C is fitted "
        "from scratch (no warm start).",
        "- C: for each test fold, every C is scored by leave-one-fold-out over the training folds "
        "(accuracy pooled over them, ties to the smaller C); the chosen C is refitted on all "
        "training folds and scored on the test fold. A C at the grid's edge whose inner accuracy "
        "beats the next value inwards is flagged: a wider grid might choose beyond it.",
        f"- {_probe_convergence(data)}",
        f"- Mean cosine between the L2-normalized embeddings of different clips: "
        f"{data['mean_cosine']:.4f}.",
        "",
        *_probe_non_converged(data),
        "## Inner cross-validation accuracy",
        "",
        *_table(
            ("test fold", *(f"C = {c}" for c in cs)),
            "l" + "r" * len(cs),
            (
                (
                    f"fold {f['fold']}",
                    *(
                        f"**{_pct(f['inner_accuracy'][c])}**"
                        if float(c) == f["C"]
                        else _pct(f["inner_accuracy"][c])
                        for c in cs
                    ),
                )
                for f in data["per_fold"]
            ),
        ),
        "",
        _encoding_line(data),
        *_skipped_lines(data),
        "",
    ]
    return "\n".join(lines)


PROBE_NON_CONVERGED_ROWS = 20
"""At most this many non-converged fits are listed in probe.md (all of them in probe.json)."""


def _probe_convergence(data: dict[str, Any]) -> str:
    it = data["iterations"]
    done = (
        f"Convergence: {data['fits']} fits, {it['min']}–{it['max']} lbfgs iterations "
        f"(median {it['median']:g}); "
    )
    failed = data["non_converged"]
    if not failed:
        return done + "all converged."
    return done + f"**{len(failed)} did not converge** (below)."


def _probe_non_converged(data: dict[str, Any]) -> list[str]:
    failed = data["non_converged"]
    if not failed:
        return []
    shown = failed[:PROBE_NON_CONVERGED_ROWS]
    rows = (
        (
            str(f["fold"]),
            "final fit" if f["inner_fold"] is None else f"inner fold {f['inner_fold']}",
            f"{f['C']:g}",
            str(f["n_iter"]),
            f["reason"],
        )
        for f in shown
    )
    lines = [
        "## Fits that did not converge",
        "",
        *_table(("test fold", "fit", "C", "iterations", "lbfgs stopped"), "llrrl", rows),
    ]
    if len(failed) > len(shown):
        lines += ["", f"… and {len(failed) - len(shown)} more (all in probe.json)."]
    return lines + [""]


# -- predictions ----------------------------------------------------------------------


def _predictions_csv(
    dataset: AudioDataset, indices: Sequence[int], predicted: Sequence[int], protocol: str = ""
) -> str:
    """One row per clip; ``protocol`` (:meth:`EvalProtocol.label`) in the last column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "fold", "label", "predicted", "correct", "protocol"])
    for i, p in zip(indices, predicted, strict=True):
        clip = dataset.clips[i]
        writer.writerow(
            [
                clip.path.relative_to(dataset.root).as_posix(),
                clip.fold,
                dataset.class_names[clip.label],
                dataset.class_names[p],
                int(clip.label == p),
                protocol,
            ]
        )
    return out.getvalue()


# -- writing --------------------------------------------------------------------------


def write_zeroshot_report(
    result: ZeroShotResult, out: str | os.PathLike[str], *, overwrite: bool = False
) -> dict[str, Path]:
    """Write the zero-shot JSON, Markdown, confusion PNG and predictions CSV into ``out``."""
    folder = prepare_output(out, ZEROSHOT_FILES, overwrite)
    data = zeroshot_json(result)
    paths = {
        "json": atomic_write_text(folder / "zeroshot.json", json.dumps(data, indent=2) + "\n"),
        "markdown": atomic_write_text(folder / "zeroshot.md", zeroshot_markdown(data)),
        "confusion": confusion_png(
            data["confusion_matrix"],
            data["dataset"]["labels"],
            folder / "zeroshot_confusion.png",
            f"{result.dataset.title} zero-shot ({result.protocol.label()}): "
            f"top-1 {_pct(data['top1'])}",
        ),
        "predictions": atomic_write_text(
            folder / "zeroshot_predictions.csv",
            _predictions_csv(
                result.dataset, result.encoding.indices, result.predicted, result.protocol.label()
            ),
        ),
    }
    return paths


def write_probe_report(
    report: ProbeReport,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protocol: EvalProtocol | None = None,
) -> dict[str, Path]:
    """Write the linear-probe JSON, Markdown and predictions CSV into ``out``
    (``protocol``: the one asked for, named in each; default soundguide's)."""
    folder = prepare_output(out, PROBE_FILES, overwrite)
    data = probe_json(report, protocol)
    return {
        "json": atomic_write_text(folder / "probe.json", json.dumps(data, indent=2) + "\n"),
        "markdown": atomic_write_text(folder / "probe.md", probe_markdown(data)),
        "predictions": atomic_write_text(
            folder / "probe_predictions.csv",
            _predictions_csv(
                report.dataset,
                report.encoding.indices,
                report.result.predicted,
                probe_protocol(report, protocol).label(),
            ),
        ),
    }
