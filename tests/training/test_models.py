from __future__ import annotations

import pytest
import torch

from soundguide.core.errors import ConfigError
from soundguide.training.models import TinyAudioEncoder, build_encoder, export_encoder, unwrap


def test_tiny_encoder_shapes_and_gradients():
    encoder = TinyAudioEncoder(embed_dim=24)
    x = torch.rand(3, 1, 128, 512, requires_grad=True)
    out = encoder(x)
    assert out.shape == (3, 24)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in encoder.parameters())


def test_build_encoder_registry():
    assert isinstance(build_encoder("tiny", 16), TinyAudioEncoder)
    with pytest.raises(
        ConfigError,
        match="unknown audio encoder architecture 'resnet50'; available: resnet18, tiny",
    ):
        build_encoder("resnet50", 16)


def test_export_is_a_plain_state_dict_without_wrapper_prefixes(tmp_path):
    encoder = TinyAudioEncoder(embed_dim=8)
    wrapped = torch.nn.DataParallel(encoder)
    assert unwrap(wrapped) is encoder
    path = export_encoder(wrapped, tmp_path / "encoder.pth")
    state = torch.load(path, weights_only=True)
    assert list(state) == list(encoder.state_dict())
    assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())
