from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from soundguide.core.errors import LatentError
from soundguide.core.latents import load_latent_file

L, D = 4, 8


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, L, D), (1, L, D)),
        ((L, D), (1, L, D)),
        ((1, D), (1, L, D)),
        ((D,), (1, L, D)),
        ((5, L, D), (5, L, D)),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_accepted_shapes(tmp_path, shape, expected, suffix):
    latent = torch.randn(shape)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(latent, path)
    else:
        np.save(path, latent.numpy())
    out = load_latent_file(path, L, D)
    assert out.shape == expected and out.dtype == torch.float32
    if len(shape) <= 2 and shape[-1] == D and shape != (L, D):
        # a W vector is broadcast to every layer
        assert torch.equal(out[0, 0], out[0, -1])


def test_stack_index_and_dict(tmp_path):
    stack = torch.randn(5, L, D)
    torch.save({"latents": stack}, tmp_path / "e4e.pt")
    torch.testing.assert_close(load_latent_file(tmp_path / "e4e.pt", L, D, index=2), stack[2:3])
    torch.testing.assert_close(
        load_latent_file(tmp_path / "e4e.pt", L, D, index=[0, 4]), stack[[0, 4]]
    )
    with pytest.raises(LatentError, match=r"latent index \[7\] out of range .* holds 5 latents"):
        load_latent_file(tmp_path / "e4e.pt", L, D, index=7)


@pytest.mark.parametrize("key", ["latent", "latents", "w", "wplus", "latent_code"])
def test_known_dict_keys_win_over_other_tensors(tmp_path, key):
    w = torch.randn(1, L, D)
    torch.save(
        {"noise": torch.randn(1, L, D), key: w, "step": torch.tensor(3.0)}, tmp_path / "w.pt"
    )
    torch.testing.assert_close(load_latent_file(tmp_path / "w.pt", L, D), w)


def test_known_dict_keys_in_their_order(tmp_path):
    first, second = torch.randn(1, L, D), torch.randn(1, L, D)
    torch.save({"w": second, "latents": first}, tmp_path / "w.pt")
    torch.testing.assert_close(load_latent_file(tmp_path / "w.pt", L, D), first)


def test_a_dict_with_one_tensor_under_any_key(tmp_path):
    w = torch.randn(1, L, D)
    torch.save({"projected": w, "name": "photo.png", "loss": 0.1}, tmp_path / "w.pt")
    torch.testing.assert_close(load_latent_file(tmp_path / "w.pt", L, D), w)


def test_not_a_tensor_names_what_it_holds(tmp_path):
    torch.save([1.0, 2.0], tmp_path / "list.pt")
    with pytest.raises(LatentError, match=r"list.pt holds list, expected a tensor"):
        load_latent_file(tmp_path / "list.pt", L, D)
    torch.save({"a": 1}, tmp_path / "none.pt")
    with pytest.raises(LatentError) as info:
        load_latent_file(tmp_path / "none.pt", L, D)
    assert info.value.message == (
        f"latent file {tmp_path / 'none.pt'} holds a dict with keys ['a']; "
        "expected a tensor or a dict with one tensor under 'latent'"
    )


@pytest.mark.parametrize("shape", [(3, 5, D), (L, D + 1), (2, 3, 4, 5), (7,)])
def test_wrong_shapes_name_the_shape_and_the_generator(tmp_path, shape):
    torch.save(torch.randn(shape), tmp_path / "w.pt")
    with pytest.raises(
        LatentError,
        match=rf"has shape {tuple(shape)}.*L={L} layers of D={D}".replace("(", r"\(").replace(
            ")", r"\)"
        ),
    ):
        load_latent_file(tmp_path / "w.pt", L, D)


def test_bad_content(tmp_path):
    torch.save(torch.full((1, L, D), float("nan")), tmp_path / "nan.pt")
    with pytest.raises(LatentError, match="NaN or infinite"):
        load_latent_file(tmp_path / "nan.pt", L, D)
    torch.save({"a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "two.pt")
    with pytest.raises(LatentError, match="holds a dict with keys"):
        load_latent_file(tmp_path / "two.pt", L, D)
    np.save(tmp_path / "ints.npy", np.zeros((L, D), dtype=np.int64))
    with pytest.raises(LatentError, match="expected floats"):
        load_latent_file(tmp_path / "ints.npy", L, D)
    with pytest.raises(LatentError, match="not found") as info:
        load_latent_file(tmp_path / "missing.npy", L, D)
    assert info.value.hint == "relative paths resolve against the config's folder"
    with pytest.raises(LatentError, match="checkpoint not found"):
        load_latent_file(tmp_path / "missing.pt", L, D)


def test_stack_larger_than_max_rows_is_refused_with_a_hint(tmp_path):
    torch.save(torch.randn(20, L, D), tmp_path / "stack.pt")
    with pytest.raises(LatentError, match=r"holds 20 latents .* at most 16") as info:
        load_latent_file(tmp_path / "stack.pt", L, D, max_rows=16)
    assert info.value.hint == (
        "pick rows with optimization.latent_index (e.g. latent_index = [0, 1, 2]), "
        "or raise optimization.max_batch if your device has the memory"
    )
    picked = load_latent_file(tmp_path / "stack.pt", L, D, index=list(range(16)), max_rows=16)
    assert picked.shape == (16, L, D)


def test_pickled_npy_is_refused_and_never_unpickled(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([Trap()], dtype=object), allow_pickle=True)
    with pytest.raises(LatentError, match="pickled Python objects") as info:
        load_latent_file(tmp_path / "objects.npy", L, D)
    assert info.value.message == (
        f"latent file {tmp_path / 'objects.npy'} holds pickled Python objects, not numbers; "
        "refusing to unpickle it (that could run code)"
    )
    assert info.value.hint == (
        "save the latents as a float array: np.save(path, w.astype(np.float32))"
    )
    assert not Trap.ran


def test_a_pickled_npy_past_the_header_check_is_still_never_unpickled(tmp_path, monkeypatch):
    """Three layers refuse a pickled .npy: the header check, the memory map and
    ``allow_pickle=False``. With the header check bypassed, np.load alone must refuse
    it, and every np.load of a latent file must be asked not to unpickle."""
    from soundguide.core import latents

    np.save(tmp_path / "objects.npy", np.array([Trap()], dtype=object), allow_pickle=True)
    monkeypatch.setattr(latents, "_npy_dtype", lambda path: None)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(latents.np, "load", spy)
    with pytest.raises(LatentError, match="cannot read latent file"):
        load_latent_file(tmp_path / "objects.npy", L, D)
    assert not Trap.ran
    np.save(tmp_path / "w.npy", np.zeros((1, L, D), np.float32))
    load_latent_file(tmp_path / "w.npy", L, D)
    assert calls and all(c.get("allow_pickle") is False for c in calls)
    assert all(c.get("mmap_mode") == "r" for c in calls)  # rows are read, not the whole file


class Trap:
    ran = False

    def __reduce__(self):
        return (_spring, ())


def _spring():
    Trap.ran = True
    return None


def test_integer_pt_latents_are_refused(tmp_path):
    torch.save(torch.zeros(1, L, D, dtype=torch.int64), tmp_path / "ints.pt")
    with pytest.raises(LatentError, match="expected floats"):
        load_latent_file(tmp_path / "ints.pt", L, D)


def test_unsafe_pickles_need_trust(tmp_path):
    from pathlib import PurePosixPath

    torch.save({"latent": torch.randn(1, L, D), "meta": PurePosixPath("/x")}, tmp_path / "w.pt")
    with pytest.raises(LatentError, match="could run arbitrary code") as info:
        load_latent_file(tmp_path / "w.pt", L, D)
    assert "--trust-checkpoint" in info.value.hint
    assert load_latent_file(tmp_path / "w.pt", L, D, trust=True).shape == (1, L, D)


def test_npy_format_3_loads(tmp_path):
    from numpy.lib import format as npy

    array = np.random.default_rng(0).standard_normal((2, L, D)).astype(np.float32)
    with open(tmp_path / "v3.npy", "wb") as fh:
        npy.write_array(fh, array, version=(3, 0))
    torch.testing.assert_close(load_latent_file(tmp_path / "v3.npy", L, D), torch.from_numpy(array))


@pytest.mark.parametrize(("layers", "shape"), [(1, (D,)), (1, (1, D)), (2, (1, D)), (2, (D,))])
def test_w_vectors_for_few_layers(tmp_path, layers, shape):
    w = torch.randn(shape)
    torch.save(w, tmp_path / "w.pt")
    out = load_latent_file(tmp_path / "w.pt", layers, D)
    assert out.shape == (1, layers, D)
    assert torch.equal(out[0, -1], w.reshape(D))


def test_index_bounds_are_exact(tmp_path):
    stack = torch.randn(5, L, D)
    torch.save(stack, tmp_path / "s.pt")
    torch.testing.assert_close(load_latent_file(tmp_path / "s.pt", L, D, index=-5), stack[:1])
    with pytest.raises(LatentError, match=r"latent index \[5\] out of range"):
        load_latent_file(tmp_path / "s.pt", L, D, index=5)
    with pytest.raises(LatentError, match=r"latent index \[-6\] out of range"):
        load_latent_file(tmp_path / "s.pt", L, D, index=-6)


class _PeakAnon:
    """Peak growth of this process's private memory (RssAnon) while the block runs."""

    def __enter__(self):
        import threading

        self.base = self.peak = _rss_anon_kib()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        import time

        while self.running:
            self.peak = max(self.peak, _rss_anon_kib())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss_anon_kib())
        self.grown_mib = (self.peak - self.base) / 1024


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:"))


def _save_stack(path: Path, rows: int) -> torch.Tensor:
    stack = torch.randn(rows, 8, 512)
    if path.suffix == ".pt":
        torch.save(stack, path)
    else:
        np.save(path, stack.numpy())
    return stack


def _load_measured(path: Path, **options) -> tuple[torch.Tensor, float, float]:
    """The latents, the peak growth of RssAnon and the peak of tracemalloc (MiB)."""
    import tracemalloc

    tracemalloc.start()  # numpy reports its buffers to tracemalloc; torch's are sampled
    try:
        with _PeakAnon() as memory:
            w = load_latent_file(path, 8, 512, **options)
        traced_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return w, memory.grown_mib, traced_mib


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_picking_rows_reads_only_them_in_process(tmp_path, suffix):
    """A 10,000-row stack (156 MiB): picking one row must not read the rest."""
    path = tmp_path / f"stack{suffix}"
    expected = _save_stack(path, 10_000)[[3]].clone()
    w, grown_mib, traced_mib = _load_measured(path, index=[3])
    assert torch.equal(w, expected)
    assert grown_mib < 64 and traced_mib < 64  # the whole stack is 156 MiB


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_taking_every_row_copies_the_stack_once(tmp_path, suffix):
    """All rows of a 2,000-row stack (31 MiB): one float32 copy out of the mapped file,
    not a gathered copy first, and no whole-stack temporaries."""
    path = tmp_path / f"stack{suffix}"
    stack = _save_stack(path, 2_000)
    w, grown_mib, traced_mib = _load_measured(path)
    assert torch.equal(w, stack)
    assert grown_mib < 31 * 1.5 and traced_mib < 31 * 0.5


def test_out_of_range_rows_are_named_among_good_ones(tmp_path):
    torch.save(torch.randn(5, L, D), tmp_path / "stack.pt")
    with pytest.raises(LatentError, match=r"latent index \[9, -6\] out of range .* holds 5"):
        load_latent_file(tmp_path / "stack.pt", L, D, index=[0, 9, -5, -6])
    with pytest.raises(LatentError, match=r"latent index \[\] out of range"):
        load_latent_file(tmp_path / "stack.pt", L, D, index=[])


def test_latents_are_float32_whatever_the_default_dtype(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((L, D), dtype=np.float64))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        w = load_latent_file(tmp_path / "w.npy", L, D)
    finally:
        torch.set_default_dtype(previous)
    assert w.dtype == torch.float32


def test_a_version_2_npy_header_is_checked_too(tmp_path):
    from numpy.lib import format as npy

    with open(tmp_path / "objects.npy", "wb") as fh:
        npy.write_array(fh, np.array([Trap()], dtype=object), version=(2, 0), allow_pickle=True)
    with pytest.raises(LatentError, match="pickled Python objects"):
        load_latent_file(tmp_path / "objects.npy", L, D)
    assert not Trap.ran


def test_a_file_that_is_not_npy_says_so(tmp_path):
    (tmp_path / "w.npy").write_bytes(b"PK\x03\x04 not an array")
    with pytest.raises(LatentError, match=r"cannot read latent file .*w.npy: not a .npy array"):
        load_latent_file(tmp_path / "w.npy", L, D)
