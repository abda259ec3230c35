"""Embedding every clip of a dataset, in batches, cached on disk.

Clips are read with :func:`~soundguide.encoders.audio.load_audio` (any bit
depth, rate and channel count; mono at the embedder's rate), a few batches
ahead on background threads, and embedded ``batch_size`` at a time.

The result is cached under ``$SOUNDGUIDE_HOME/cache/embeddings`` by the
dataset's identity (CSV sha256, root, file sizes and times), the embedder's
identity (for SoundCLIP: the checkpoint's sha256, crop, pad and dB reference) and
whether unreadable clips were skipped. A second run with the same key reads
the file and encodes nothing. A damaged cache file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from soundguide.core.checkpoints import soundguide_home
from soundguide.core.errors import AudioError, DatasetError
from soundguide.core.files import atomic_write
from soundguide.evaluation.datasets import AudioDataset
from soundguide.evaluation.embedders import AudioEmbedder, check_embedder

CACHE_VERSION = 1


@dataclass
class DatasetEmbeddings:
    """Embeddings of a dataset's clips and what it cost to compute them."""

    embeddings: torch.Tensor
    """(N_kept, D) float32 on the CPU, as the embedder returned them (not normalized)."""
    indices: list[int]
    """For each row, the index of its clip in ``dataset.clips``."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Clips that could not be read (``path``, ``error``), when skipping was asked for."""
    seconds: float = 0.0
    """Wall time of the encoding run that produced them (loading + embedding)."""
    model_seconds: float = 0.0
    """Part of :attr:`seconds` spent inside ``embed_audio_batch``."""
    from_cache: bool = False
    cache_path: Path | None = None
    batch_size: int = 0

    @property
    def clips_per_second(self) -> float:
        return len(self.indices) / self.seconds if self.seconds > 0 else float("nan")

    def timing(self) -> dict[str, object]:
        """The ``encoding`` section of a report."""
        return {
            "clips": len(self.indices),
            "seconds": round(self.seconds, 3),
            "model_seconds": round(self.model_seconds, 3),
            "clips_per_second": round(self.clips_per_second, 2) if self.seconds > 0 else None,
            "batch_size": self.batch_size,
            "from_cache": self.from_cache,
            "cache_file": str(self.cache_path) if self.cache_path is not None else None,
        }


def default_cache_dir() -> Path:
    """``$SOUNDGUIDE_HOME/cache/embeddings``."""
    return soundguide_home() / "cache" / "embeddings"


def cache_key(dataset: AudioDataset, embedder: AudioEmbedder, skip_bad_audio: bool) -> dict:
    return {
        "version": CACHE_VERSION,
        "dataset": dataset.name,
        "dataset_identity": dataset.identity(),
        "embedder": embedder.identity,
        "skip_bad_audio": bool(skip_bad_audio),
    }


def embed_dataset(
    dataset: AudioDataset,
    embedder: AudioEmbedder,
    *,
    batch_size: int = 32,
    workers: int = 2,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    skip_bad_audio: bool = False,
    max_seconds: float = 600.0,
    progress: bool = False,
) -> DatasetEmbeddings:
    """Embed every clip of ``dataset`` with ``embedder``, ``batch_size`` clips per call.

    ``workers`` threads read audio ahead of the embedder (0: read in the
    calling thread). An unreadable clip raises its one-line
    :class:`AudioError` unless ``skip_bad_audio``, which leaves it out and
    lists it in :attr:`DatasetEmbeddings.skipped`.

    Output: :class:`DatasetEmbeddings` with (N_kept, D) float32 CPU embeddings.
    """
    check_embedder(embedder)
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise DatasetError(f"workers must be >= 0, got {workers}")
    key = cache_key(dataset, embedder, skip_bad_audio)
    path = None
    if cache:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / f"{dataset.name}-{digest[:32]}.pt"
        cached = _read_cache(path, key, len(dataset))
        if cached is not None:
            cached.batch_size = batch_size
            return cached

    rate = int(embedder.sample_rate)
    rows: list[torch.Tensor] = []
    indices: list[int] = []
    skipped: list[dict[str, str]] = []
    model_seconds = 0.0
    bar = _progress(len(dataset), f"embedding {dataset.title}", progress)
    start = time.perf_counter()
    loaded = _read_ahead(
        dataset.paths,
        lambda p: _load(p, rate, max_seconds, skip_bad_audio),
        workers,
        ahead=2 * batch_size,
    )
    try:
        batch: list[tuple[int, torch.Tensor]] = []
        for i, (wave, error) in enumerate(loaded):
            if error is not None:
                skipped.append({"path": str(dataset.clips[i].path), "error": error})
                bar.update(1)
            else:
                batch.append((i, wave))
            if len(batch) == batch_size or (i == len(dataset) - 1 and batch):
                tic = time.perf_counter()
                out = embedder.embed_audio_batch([w for _, w in batch])
                model_seconds += time.perf_counter() - tic
                _check_output(out, len(batch), embedder)
                rows.append(out.detach().to("cpu", torch.float32))
                indices.extend(j for j, _ in batch)
                bar.update(len(batch))
                batch = []
    finally:
        loaded.close()  # stops the reader threads now when the embedder raised
        bar.close()
    seconds = time.perf_counter() - start
    if not rows:
        raise DatasetError(f"no clip of {dataset.csv_path} could be read")
    result = DatasetEmbeddings(
        embeddings=torch.cat(rows),
        indices=indices,
        skipped=skipped,
        seconds=seconds,
        model_seconds=model_seconds,
        from_cache=False,
        cache_path=path,
        batch_size=batch_size,
    )
    if path is not None:
        _write_cache(path, key, result)
    return result


# -- helpers ------------------------------------------------------------------------


def _load(
    path: Path, rate: int, max_seconds: float, skip: bool
) -> tuple[torch.Tensor | None, str | None]:
    from soundguide.encoders.audio import load_audio

    try:
        return load_audio(
            path,
            rate,
            max_seconds=max_seconds,
            too_long_hint="--skip-bad-audio leaves such clips out (they are listed in the report)",
        ), None
    except AudioError as exc:
        if not skip:
            raise
        return None, exc.message


def _read_ahead(
    paths: Sequence[Path],
    load: Callable[[Path], tuple[torch.Tensor | None, str | None]],
    workers: int,
    ahead: int,
) -> Iterator[tuple[torch.Tensor | None, str | None]]:
    """``load(p)`` for each path, in order, with up to ``ahead`` reads in flight."""
    if workers == 0:
        yield from (load(p) for p in paths)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="soundguide-audio") as pool:
        pending: deque[Future] = deque()
        todo = iter(paths)
        try:
            for p in todo:
                pending.append(pool.submit(load, p))
                if len(pending) >= ahead:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(load, nxt))
                yield result
        finally:
            for future in pending:
                future.cancel()


def _check_output(out: object, count: int, embedder: AudioEmbedder) -> None:
    if (
        not isinstance(out, torch.Tensor)
        or out.dim() != 2
        or out.shape[0] != count
        or not out.is_floating_point()
    ):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AudioError(
            f"audio embedder {type(embedder).__name__} returned {got} for {count} clips; "
            f"expected a float tensor ({count}, D)"
        )
    if not bool(torch.isfinite(out).all()):
        raise AudioError(f"audio embedder {type(embedder).__name__} returned non-finite values")


def _read_cache(path: Path, key: dict, total: int) -> DatasetEmbeddings | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
        if data.get("key") != json.dumps(key, sort_keys=True):
            return None
        embeddings = data["embeddings"]
        indices = [int(i) for i in data["indices"].tolist()]
        ok = (
            isinstance(embeddings, torch.Tensor)
            and embeddings.dim() == 2
            and embeddings.shape[0] == len(indices)
            and all(0 <= i < total for i in indices)
            and bool(torch.isfinite(embeddings).all())
        )
        if not ok:
            return None
        return DatasetEmbeddings(
            embeddings=embeddings.float(),
            indices=indices,
            skipped=[dict(s) for s in data["skipped"]],
            seconds=float(data["seconds"]),
            model_seconds=float(data["model_seconds"]),
            from_cache=True,
            cache_path=path,
        )
    except Exception:  # damaged or from another version: recompute
        return None


def _write_cache(path: Path, key: dict, result: DatasetEmbeddings) -> None:
    data = {
        "key": json.dumps(key, sort_keys=True),
        "embeddings": result.embeddings.contiguous(),
        "indices": torch.tensor(result.indices, dtype=torch.long),
        "skipped": result.skipped,
        "seconds": result.seconds,
        "model_seconds": result.model_seconds,
    }
    atomic_write(path, lambda fh: torch.save(data, fh))


def _progress(total: int, desc: str, enabled: bool):
    from soundguide.core.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="clip", enabled=enabled, leave=False)
