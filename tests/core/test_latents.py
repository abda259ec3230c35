from __future__ import annotations

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
    with pytest.raises(LatentError, match="not found"):
        load_latent_file(tmp_path / "missing.npy", L, D)
    with pytest.raises(LatentError, match="checkpoint not found"):
        load_latent_file(tmp_path / "missing.pt", L, D)
