"""ModelStore / RunContext.shared: networks shared between runs, per-run state kept apart."""

from __future__ import annotations

import os

import torch

from soundguide.core.interfaces import ModelStore, RunContext, model_key
from soundguide.core.plugins import load_registries
from tests.factories import save_tiny_stylegan2


def test_without_a_store_every_call_builds(tmp_path):
    ctx = RunContext()
    assert ctx.shared(("k",), object) is not ctx.shared(("k",), object)


def test_a_store_builds_once_per_key():
    store = ModelStore()
    ctx = RunContext(models=store)
    first = ctx.shared(("a",), object)
    assert ctx.shared(("a",), object) is first
    assert ctx.shared(("b",), object) is not first
    assert len(store) == 2
    store.clear()
    assert ctx.shared(("a",), object) is not first


def test_model_key_changes_when_the_file_or_settings_change(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"one")
    key = model_key("x", path, device="cpu")
    assert model_key("x", path, device="cpu") == key
    assert model_key("x", path, device="cuda") != key
    path.write_bytes(b"three")  # replaced: another size (and time)
    os.utime(path, ns=(1, 1))
    assert model_key("x", path, device="cpu") != key


def test_stylegan2_shares_the_network_but_not_the_noise_maps(tmp_path):
    registries = load_registries(entry_points=False)
    cls = registries.generators.get("stylegan2")
    checkpoint = save_tiny_stylegan2(tmp_path / "g.pt")
    config = cls.Config(checkpoint=checkpoint)
    ctx = RunContext(models=ModelStore())
    a = cls(config, ctx)
    fixed = [m.clone() for m in a.noise_maps()]
    a.use_noise([torch.randn_like(m) for m in fixed])  # what a photo run does
    b = cls(config, ctx)
    assert b.model is a.model  # loaded once
    assert all(torch.equal(x, y) for x, y in zip(b.noise_maps(), fixed, strict=True))
    w = b.mean_latent()
    alone = cls(config, RunContext())
    assert alone.model is not a.model
    assert torch.equal(b.synthesize(w), alone.synthesize(w))
