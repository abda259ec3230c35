"""Tiny random models for tests, in one place (test modules import these, not each other).

Each factory draws its weights from its own seed inside ``torch.random.fork_rng``,
so building one neither depends on nor changes the RNG state of the test that
asks for it. Not a test module.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports pkg_resources, which warns about itself
    import clip

TINY_CLIP = {
    "embed_dim": 32,
    "image_resolution": 224,
    "vision_layers": 2,
    "vision_width": 64,
    "vision_patch_size": 32,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 2,
}
"""A ViT CLIP small enough for CPU tests that still takes 224 px input (7x7 patches of 32 px).

Widths are multiples of 64 because ``clip.model.build_model`` infers heads as width // 64.
"""


def tiny_clip_reference(seed: int = 0, **sizes: object) -> nn.Module:
    """OpenAI's ``clip.model.CLIP`` built the plain way with random weights, frozen, in eval mode.

    ``sizes`` override :data:`TINY_CLIP` (``vision_layers=(1, 2, 1, 1)`` and a
    ``vision_patch_size=None`` give a modified-ResNet image tower; its batch-norm
    statistics are then made non-trivial).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.model.CLIP(**{**TINY_CLIP, **sizes})
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.1)
    return model.eval().requires_grad_(False)


def tiny_clip(seed: int = 0) -> nn.Module:
    """soundguide's CLIP (``build_clip``) holding :func:`tiny_clip_reference`'s weights."""
    from soundguide.encoders.clip import build_clip

    return build_clip(tiny_clip_reference(seed).state_dict())


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """:func:`tiny_clip_reference`'s weights saved as a plain state dict file."""
    path = Path(path)
    torch.save(tiny_clip_reference(seed).state_dict(), path)
    return path


def random_soundclip(embed_dim: int = 32, seed: int = 1) -> nn.Module:
    """A randomly initialized SoundCLIP encoder (torchvision's initialization), in eval mode."""
    from soundguide.encoders.soundclip import SoundCLIPEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SoundCLIPEncoder(embed_dim=embed_dim)
    return model.eval()


def save_random_soundclip(
    path: str | Path, embed_dim: int = 32, seed: int = 1, prefix: str = "module."
) -> Path:
    """:func:`random_soundclip`'s weights saved with a DataParallel ``module.`` prefix."""
    path = Path(path)
    state = random_soundclip(embed_dim, seed).state_dict()
    torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
    return path


def random_arcface(seed: int = 0) -> nn.Module:
    """A randomly initialized IR-SE50 with non-trivial batch-norm statistics."""
    from soundguide.encoders.arcface import ArcFaceIRSE50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ArcFaceIRSE50()
    g = torch.Generator().manual_seed(seed)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=g))
        elif name.endswith("running_var"):
            buffer.copy_(1.0 + 0.2 * torch.rand(buffer.shape, generator=g))
    return model.eval()


def save_tiny_stylegan2(
    path: str | Path, size: int = 32, style_dim: int = 64, seed: int = 0
) -> Path:
    """A rosinality-format checkpoint (``{"g_ema": ...}``) of a tiny random StyleGAN2."""
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = StyleGAN2Generator(size, style_dim=style_dim, n_mlp=2, channel_multiplier=1)
    path = Path(path)
    torch.save({"g_ema": generator.state_dict()}, path)
    return path


def save_random_vgg16(path: str | Path, seed: int = 0) -> Path:
    """torchvision's VGG16 ``features.*`` tensors (what LPIPS reads; 59 MB), random."""
    from torchvision.models.vgg import cfgs, make_layers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = make_layers(cfgs["D"])  # VGG16's convolutions, without the classifier
        for module in features.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's initialization
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    path = Path(path)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def save_random_e4e(path: str | Path, size: int, seed: int = 0) -> Path:
    """An e4e checkpoint in e4e's saved form for a ``size`` px generator (its W+ layers),
    random weights: ``state_dict`` (``encoder.*`` only), ``opts`` (a plain dict), ``latent_avg``."""
    from soundguide.encoders.e4e import Encoder4Editing, n_styles_for

    n_styles = n_styles_for(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder4Editing(n_styles)
        latent_avg = torch.randn(n_styles, 512)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items() if k != "latent_avg"}
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": size, "start_from_latent_avg": True}
    path = Path(path)
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg}, path)
    return path
