from __future__ import annotations

import pytest

from soundguide.generators.stylegan2 import StyleGAN2Generator, load_stylegan2
from tests.generators import rosinality_reference as rosinality
from tests.generators.stylegan2.helpers import make_reference


@pytest.fixture(scope="module")
def pair() -> tuple[rosinality.Generator, StyleGAN2Generator]:
    """16 px, style_dim 64, 3 mapping layers: the reference and ours, same weights."""
    ref = make_reference(16, 64, 3, 2)
    return ref, load_stylegan2(ref.state_dict())


@pytest.fixture(scope="module")
def pair8() -> tuple[rosinality.Generator, StyleGAN2Generator]:
    """8 px, style_dim 16, 1 mapping layer: small enough for float64 and bf16 runs."""
    ref = make_reference(8, 16, 1, 2, seed=2)
    return ref, load_stylegan2(ref.state_dict())


@pytest.fixture(scope="module")
def pair64() -> tuple[rosinality.Generator, StyleGAN2Generator]:
    """64 px, channel multiplier 1: exercises a layer whose width depends on it."""
    ref = make_reference(64, 32, 2, 1, seed=1)
    return ref, load_stylegan2(ref.state_dict())
