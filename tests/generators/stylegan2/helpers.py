"""Shared helpers of the StyleGAN2 tests: manifests, reference generators, error measures."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from soundguide.generators.stylegan2 import StyleGAN2Generator
from tests.generators import rosinality_reference as rosinality

DATA = Path(__file__).parents[2] / "data"
SHARED = Path(__file__).parents[3].parent / "shared" / "reference"
MANIFESTS = {256: "stylegan2_256_cm2.keys.json", 1024: "stylegan2_1024_cm2.keys.json"}


def manifest(size: int) -> list[tuple[str, tuple[int, ...], str]]:
    rows = json.loads((DATA / MANIFESTS[size]).read_text())
    return [(key, tuple(shape), dtype) for key, shape, dtype in rows]


def random_state_dict(rows: list[tuple[str, tuple[int, ...], str]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=gen) for key, shape, _ in rows}


def make_reference(
    size: int, style_dim: int, n_mlp: int, cm: int, seed: int = 0
) -> rosinality.Generator:
    """A reference generator with non-trivial noise strengths and biases."""
    torch.manual_seed(seed)
    ref = rosinality.Generator(size, style_dim, n_mlp, channel_multiplier=cm)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("noise.weight"):
                p.normal_(0, 0.5)
            elif name.endswith("activate.bias") or (name.startswith("to_rgb") and "bias" in name):
                p.normal_(0, 0.2)
            elif name.endswith("modulation.bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return ref.eval().requires_grad_(False)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over mean |b|: the parity measure of the spec."""
    return ((a - b).abs().max() / b.abs().mean()).item()


def wplus_for(g: StyleGAN2Generator, n: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, g.num_layers, g.style_dim, generator=gen)
