"""resolve_device: auto picks CUDA, then MPS, then the CPU; an unavailable device is
a one-line error. CUDA and MPS are simulated (their availability is patched)."""

from __future__ import annotations

import pytest
import torch

from soundguide.core.engine import resolve_device
from soundguide.core.errors import ConfigError


@pytest.fixture
def available(monkeypatch):
    def set_available(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_available


@pytest.mark.parametrize(
    ("cuda", "mps", "picked"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_picks_cuda_then_mps_then_the_cpu(available, cuda, mps, picked):
    available(cuda, mps)
    assert resolve_device("auto") == torch.device(picked)


def test_auto_without_an_mps_backend(available, monkeypatch):
    available(False, True)
    monkeypatch.setattr(torch.backends, "mps", None)  # builds of torch without it
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:1", "mps"])
def test_named_devices_that_exist(available, name):
    available(True, True)
    assert resolve_device(name) == torch.device(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "device 'cuda' requested but CUDA is not available"),
        ("cuda:0", "device 'cuda' requested but CUDA is not available"),
        ("mps", "device 'mps' requested but MPS is not available"),
    ],
)
def test_an_unavailable_device_is_one_error_with_a_hint(available, name, message):
    available(False, False)
    with pytest.raises(ConfigError) as info:
        resolve_device(name)
    assert info.value.message == message and info.value.hint == "use --device cpu"


def test_an_unknown_device_names_the_choices(available):
    available(False, False)
    with pytest.raises(ConfigError) as info:
        resolve_device("tpu")
    assert info.value.message == "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"


def test_a_torch_device_is_taken_as_it_is():
    device = torch.device("cuda", 3)
    assert resolve_device(device) is device
