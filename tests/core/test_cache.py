"""RunContext.cached_tensor: a cache entry is used only if it is what compute() would give."""

from __future__ import annotations

import pytest
import torch

from soundguide.core.interfaces import RunContext


@pytest.fixture
def context(tmp_path):
    return RunContext(cache_dir=tmp_path)


def cache_files(context):
    return sorted(context.cache_path("kind").glob("*.pt"))


def counted(value):
    calls = []

    def compute():
        calls.append(1)
        return value.clone()

    return compute, calls


def test_second_call_reads_the_cache(context):
    compute, calls = counted(torch.ones(2, 3))
    for _ in range(2):
        assert torch.equal(
            context.cached_tensor("kind", {"k": 1}, compute, shape=(2, 3)), torch.ones(2, 3)
        )
    assert len(calls) == 1 and len(cache_files(context)) == 1


@pytest.mark.parametrize(
    "stored",
    [
        torch.ones(3, 2),  # wrong shape
        torch.ones(2, 3, dtype=torch.int64),  # wrong dtype
        torch.full((2, 3), float("nan")),  # not finite
        torch.full((2, 3), float("inf")),
        {"not": "a tensor"},
    ],
    ids=["shape", "dtype", "nan", "inf", "dict"],
)
def test_a_wrong_cache_entry_is_recomputed_and_replaced(context, stored):
    compute, calls = counted(torch.ones(2, 3))
    context.cached_tensor("kind", {"k": 1}, compute, shape=(2, 3))
    [path] = cache_files(context)
    torch.save(stored, path)
    value = context.cached_tensor("kind", {"k": 1}, compute, shape=(2, 3))
    assert torch.equal(value, torch.ones(2, 3)) and len(calls) == 2
    assert torch.equal(torch.load(path, weights_only=True), torch.ones(2, 3))


def test_an_unreadable_cache_entry_is_recomputed(context):
    compute, calls = counted(torch.ones(2))
    context.cached_tensor("kind", {"k": 1}, compute)
    [path] = cache_files(context)
    path.write_bytes(b"\x00garbage")
    assert torch.equal(context.cached_tensor("kind", {"k": 1}, compute), torch.ones(2))
    assert len(calls) == 2


def test_non_finite_results_are_never_cached(context):
    compute, calls = counted(torch.tensor([1.0, float("nan")]))
    value = context.cached_tensor("kind", {"k": 1}, compute)
    assert torch.isnan(value[1])
    assert cache_files(context) == []
    context.cached_tensor("kind", {"k": 1}, compute)
    assert len(calls) == 2


def test_results_of_the_wrong_shape_are_not_cached(context):
    compute, _ = counted(torch.ones(4))
    context.cached_tensor("kind", {"k": 1}, compute, shape=(2,))
    assert cache_files(context) == []


def test_an_unwritable_cache_only_warns(context, monkeypatch):
    import errno

    from soundguide.core import files

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "atomic_write", full)
    compute, _ = counted(torch.ones(2))
    with pytest.warns(UserWarning, match="cannot write cache file .*No space left"):
        assert torch.equal(context.cached_tensor("kind", {"k": 1}, compute), torch.ones(2))


def test_a_cached_target_of_the_wrong_size_is_recomputed_in_a_run(registries, tmp_path):
    """Through a real plugin: a poisoned text-target cache entry is not used."""
    from soundguide import Editor
    from soundguide.core.config import config_from_dict
    from tests.factories import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip.pt", seed=0)
    config = config_from_dict(
        {
            "generator": {"type": "toy", "size": 32},
            "guidance": [{"type": "text", "prompt": "a fire", "clip_model": str(clip)}],
            "optimization": {"steps": 1},
        },
        registries,
    )
    first = Editor(config, registries, progress=False, cache_dir=tmp_path / "cache")
    first.prepare()
    [path] = list((tmp_path / "cache" / "text_targets").glob("*.pt"))
    torch.save(torch.ones(1, 7), path)  # e.g. written by another model of the same name
    second = Editor(config, registries, progress=False, cache_dir=tmp_path / "cache")
    second.prepare()
    torch.testing.assert_close(second.targets["text"], first.targets["text"])
