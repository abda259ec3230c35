"""LPIPS (VGG16, v0.1) from the ``lpips`` package, as rosinality's projector measures images.

The network is ``lpips.LPIPS(net="vgg")``: its linear layers are the
calibrated v0.1 weights that ship inside the ``lpips`` wheel, and its VGG16
backbone holds torchvision's ImageNet weights (``vgg16-397923af.pth``), read
from the known-weights entry :data:`VGG16_WEIGHTS` (downloaded into
soundguide's cache with a pinned sha256) rather than by torchvision's own
downloader.

Projection compares every step's image with one fixed target, so
:class:`LPIPS` splits the package's ``forward`` in two: :meth:`LPIPS.features`
(the target's normalized VGG features, computed once) and
:meth:`LPIPS.distance` (the image's features against them). ``lpips.LPIPS``
has no such entry point; the split reuses its own modules and functions
(scaling layer, VGG slices, ``normalize_tensor``, linear layers,
``spatial_average``) in the order its ``forward`` calls them, and the tests
hold the two to each other.

The network is built on the meta device and filled from the files, so
torchvision's VGG16 classifier (124 M parameters LPIPS never uses) is never
allocated or initialized.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soundguide.core.checkpoints import KnownWeights, load_checkpoint
from soundguide.core.errors import CheckpointError, ImageError

__all__ = ["LPIPS", "VGG16_WEIGHTS", "load_lpips"]

VGG16_WEIGHTS = KnownWeights(
    "vgg16-lpips",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16-397923af.pth",
    "BSD-3-Clause (torchvision; trained on ImageNet-1k, whose terms of use may apply)",
    "torchvision's VGG16 ImageNet weights, the backbone of LPIPS (projection)",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    size=553433881,
)
"""torchvision's ``VGG16_Weights.IMAGENET1K_V1`` file (the name's 397923af is its sha256 prefix)."""

LPIPS_VERSION = "0.1"


class LPIPS(nn.Module):
    """The LPIPS distance of ``lpips.LPIPS(net="vgg", version="0.1")``, frozen, in eval mode.

    Input: images (n, 3, H, W) in [-1, 1] (H, W >= 16). Output: (n,) distances.
    ``model`` is the wrapped ``lpips.LPIPS``. ``channels_last`` (default: on
    CPUs and CUDA GPUs) runs VGG in channels-last memory format, which spares
    the convolution libraries a layout conversion per layer (faster on CPUs:
    ``benchmarks/projection_step.py --modes soundguide soundguide-nchw``).
    """

    def __init__(self, model: nn.Module, *, channels_last: bool | None = None) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.train(False)
        if channels_last is None:
            device = next(model.parameters()).device
            channels_last = device.type in ("cpu", "cuda")
        self.channels_last = channels_last
        if channels_last:
            self.model.net.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> LPIPS:
        # always in eval mode: the linear layers' dropout must stay off
        return super().train(False)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalized VGG features of ``image`` at the five LPIPS taps.

        Input: (n, 3, H, W) in [-1, 1]. Output: five (n, C_k, H_k, W_k).
        """
        import lpips

        _check_image(image)
        m = self.model
        x = m.scaling_layer(image)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return [lpips.normalize_tensor(f) for f in m.net(x)]

    def distance(self, image: torch.Tensor, target: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS between ``image`` and an image whose :meth:`features` are ``target``.

        Input: (n, 3, H, W) in [-1, 1], and ``target`` from ``features`` of an
        (n or 1, 3, H, W). Output: (n,).
        """
        import lpips

        m = self.model
        total = 0
        for lin, f, t in zip(m.lins, self.features(image), target, strict=True):
            total = total + lpips.spatial_average(lin((f - t).square()), keepdim=True)
        return total.view(image.shape[0])

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS between two batches of images. Input: (n, 3, H, W) twice. Output: (n,)."""
        return self.distance(image, self.features(target))


def load_lpips(
    vgg: str | os.PathLike[str] | None,
    device: torch.device | str | None = None,
    *,
    seed: int = 0,
) -> LPIPS:
    """LPIPS with torchvision's VGG16 weights from the file ``vgg`` (``vgg16-397923af.pth``).

    ``vgg`` None: random VGG weights, drawn from ``seed`` with torchvision's
    initialization (for tests; the linear layers are still the calibrated
    ones). Get the file with ``context.resolve_weights("vgg16-lpips")``
    (:data:`VGG16_WEIGHTS`). Raises :class:`CheckpointError` for a file that
    is not a VGG16 state dict.
    """
    import lpips

    with warnings.catch_warnings():  # lpips asks torchvision for vgg16(pretrained=...)
        warnings.simplefilter("ignore", UserWarning)
        with torch.device("meta"):
            model = lpips.LPIPS(
                net="vgg", version=LPIPS_VERSION, pretrained=False, pnet_rand=True, verbose=False
            )
    state: dict[str, torch.Tensor] = {}
    state.update((f"scaling_layer.{k}", v) for k, v in lpips.ScalingLayer().state_dict().items())
    lins = load_checkpoint(_linear_weights_file())
    for key, value in model.state_dict().items():
        if key.startswith("lins."):  # the same modules as lin0..lin4, listed twice
            index, rest = key[len("lins.") :].split(".", 1)
            state[key] = lins[f"lin{index}.{rest}"]
        elif key.startswith("lin"):
            state[key] = lins[key]
        elif key.startswith("net."):
            state[key] = value  # filled below
    vgg_state = _vgg_features(vgg, model, seed)
    for key in [k for k in state if k.startswith("net.")]:
        state[key] = vgg_state[key]
    model = model.to_empty(device=device if device is not None else "cpu")
    model.load_state_dict(state, strict=True)
    return LPIPS(model)


def _linear_weights_file() -> Path:
    """The calibrated linear layers that ship in the ``lpips`` wheel (where
    ``lpips.LPIPS(pretrained=True)`` reads them)."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / "vgg.pth"


def _vgg_features(vgg: str | os.PathLike[str] | None, model: nn.Module, seed: int) -> dict:
    """The LPIPS model's ``net.sliceK.I.*`` tensors: torchvision's ``features.I.*``
    from the file, or random ones."""
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith("net.")}
    if vgg is None:
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for key, value in wanted.items():
            if key.endswith(".weight"):  # torchvision's VGG init: kaiming normal, fan out
                fan_out = value.shape[0] * value.shape[2] * value.shape[3]
                out[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_out) ** 0.5
            else:
                out[key] = torch.zeros(value.shape)
        return out
    path = Path(vgg)
    source = load_checkpoint(path, mmap=True)  # the classifier's 470 MB are never read
    if not isinstance(source, dict):
        raise CheckpointError(
            f"{path} is not a VGG16 state dict (it holds a {type(source).__name__})",
            hint="use torchvision's vgg16-397923af.pth (the 'vgg16-lpips' known weights)",
        )
    out = {}
    for key, value in wanted.items():
        _, _, index, name = key.split(".")  # net.sliceK.I.weight
        tensor = source.get(f"features.{index}.{name}")
        if not isinstance(tensor, torch.Tensor) or tensor.shape != value.shape:
            found = "missing" if tensor is None else _shape(tensor)
            raise CheckpointError(
                f"{path} is not torchvision's VGG16: features.{index}.{name} should be "
                f"{tuple(value.shape)}, found {found}",
                hint="use torchvision's vgg16-397923af.pth (the 'vgg16-lpips' known weights)",
            )
        out[key] = tensor
    return out


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_image(image: Any) -> None:
    if (
        not isinstance(image, torch.Tensor)
        or image.ndim != 4
        or image.shape[1] != 3
        or image.shape[0] == 0
        or min(image.shape[2:]) < 16
    ):
        raise ImageError(
            f"LPIPS expects images of shape (n, 3, H, W) with H, W >= 16, got {_shape(image)}"
        )
    if not image.is_floating_point():
        raise ImageError(f"LPIPS expects float images in [-1, 1], got {image.dtype}")
