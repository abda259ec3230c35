"""Reading rosinality-format StyleGAN2 checkpoints into a :class:`StyleGAN2Generator`.

rosinality's ``train.py`` saves ``{"g": ..., "d": ..., "g_ema": ..., "g_optim": ...,
"d_optim": ..., "args": ...}``; its ``convert_weight.py`` (NVIDIA's models)
saves ``{"g_ema": ..., "latent_avg": ...}``. The generator's size, latent size,
mapping depth and channel multiplier are read off the tensor shapes; the keys
and shapes must then fit the generator exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from soundguide.core.errors import CheckpointError, ConfigError

from .model import StyleGAN2Generator

__all__ = ["infer_stylegan2_config", "load_stylegan2"]

_REQUIRED_KEYS = (
    "input.input",
    "conv1.conv.weight",
    "conv1.conv.modulation.weight",
    "to_rgb1.conv.weight",
)


def _generator_state_dict(obj: Any) -> tuple[Mapping[str, torch.Tensor], torch.Tensor | None]:
    """Find the generator state dict (and latent_avg) in a loaded checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"not a StyleGAN2 checkpoint: expected a dict, got {type(obj).__name__}"
        )
    latent_avg = obj.get("latent_avg")
    if "g_ema" in obj:
        state = obj["g_ema"]
    elif "input.input" in obj or "conv1.conv.weight" in obj:
        state = obj
    elif "g" in obj and isinstance(obj["g"], Mapping):
        state = obj["g"]
    else:
        found = ", ".join(repr(k) for k in list(obj)[:5]) or "none"
        raise CheckpointError(
            f"not a StyleGAN2 checkpoint: no 'g_ema' entry and no generator key 'input.input' "
            f"(top-level keys: {found})"
        )
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"not a StyleGAN2 checkpoint: 'g_ema' is a {type(state).__name__}, not a state dict"
        )
    for key in _REQUIRED_KEYS:
        if key not in state or not isinstance(state[key], torch.Tensor):
            found = ", ".join(repr(k) for k in list(state)[:3]) or "none"
            raise CheckpointError(
                f"not a StyleGAN2 generator state dict: key {key!r} is missing (keys start {found})"
            )
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        latent_avg = None
    return state, latent_avg


def infer_stylegan2_config(state: Mapping[str, torch.Tensor]) -> dict[str, int | None]:
    """Read size, style_dim, n_mlp and channel_multiplier off tensor shapes.

    ``channel_multiplier`` is None for generators of 32 px or less, where no
    layer's width depends on it.
    """
    conv_ids = {int(m.group(1)) for k in state if (m := re.match(r"convs\.(\d+)\.", k))}
    n_convs = max(conv_ids) + 1 if conv_ids else 0
    mlp_ids = {int(m.group(1)) for k in state if (m := re.fullmatch(r"style\.(\d+)\.weight", k))}
    style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
    size = 2 ** (n_convs // 2 + 2)
    cm: int | None = None
    for i in range(3, n_convs // 2 + 3):
        res = 2**i
        if res <= 32:
            continue
        key = f"convs.{2 * (i - 3)}.conv.weight"
        if key in state:
            out_channel = int(state[key].shape[1])
            cm = max(1, round(out_channel * res / 16384))
        break
    return {
        "size": size,
        "style_dim": style_dim,
        "n_mlp": max(mlp_ids) if mlp_ids else 0,
        "channel_multiplier": cm,
    }


def load_stylegan2(
    path_or_state_dict: str | Any,
    *,
    size: int | None = None,
    channel_multiplier: int | None = None,
    n_mlp: int | None = None,
    style_dim: int | None = None,
    trust: bool = False,
) -> StyleGAN2Generator:
    """Build a :class:`StyleGAN2Generator` from a rosinality-format checkpoint.

    Accepts a path (read with :func:`soundguide.core.checkpoints.load_checkpoint`),
    a full training checkpoint (``g_ema``, ``g``, ``d``, optimizer states,
    ``args``), a converted one (``g_ema`` + ``latent_avg``) or a bare generator
    state dict. Settings left as None are read off the tensor shapes; given
    ones must match. The returned generator is in eval mode with every
    parameter frozen (``requires_grad=False``); ``latent_avg`` is (1, D) or None.

    Raises :class:`CheckpointError` when the file is not a StyleGAN2 generator
    or disagrees with the given settings.
    """
    from soundguide.core.checkpoints import read_checkpoint

    from_file = not isinstance(path_or_state_dict, Mapping)
    # A file (zip format) is memory-mapped: its tensors are read as they are
    # copied into the generator's own parameters, so private memory holds the
    # weights once, and the rest of a training checkpoint (discriminator,
    # optimizer states) is never read. The mapping closes when the loaded
    # object is dropped on return: nothing returned may be a view of it.
    source, obj = read_checkpoint(path_or_state_dict, trust=trust, mmap=from_file)
    state, latent_avg = _generator_state_dict(obj)
    found = infer_stylegan2_config(state)
    layers = 2 * int(math.log2(found["size"] or 8)) - 2

    def mismatch(what: str, want: Any) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {what}, config says {want}",
            hint="leave the setting unset to read it from the checkpoint",
        )

    if size is not None and size != found["size"]:
        raise mismatch(f"is {found['size']} px ({layers} layers)", size)
    if style_dim is not None and style_dim != found["style_dim"]:
        raise mismatch(f"has style_dim {found['style_dim']}", style_dim)
    if n_mlp is not None and n_mlp != found["n_mlp"]:
        raise mismatch(f"has {found['n_mlp']} mapping layers (n_mlp)", n_mlp)
    cm = found["channel_multiplier"]
    if channel_multiplier is not None and cm is not None and channel_multiplier != cm:
        raise mismatch(f"has channel multiplier {cm}", channel_multiplier)
    if cm is None:
        cm = channel_multiplier if channel_multiplier is not None else 2

    try:
        generator = StyleGAN2Generator(
            int(found["size"]), int(found["style_dim"]), int(found["n_mlp"]), int(cm), init=False
        )
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint describes an unsupported generator: {exc}") from None
    _check_state_dict(generator, state, found, source)
    device = state["input.input"].device
    generator.to(device=device).load_state_dict(state, strict=True)  # copies
    generator.requires_grad_(False).eval()
    if latent_avg is not None:
        if latent_avg.numel() != generator.style_dim:
            raise CheckpointError(
                f"checkpoint's latent_avg has {latent_avg.numel()} values, expected "
                f"style_dim = {generator.style_dim}"
            )
        # a copy: a view would keep a mapped file open (and a caller's tensor shared)
        generator.latent_avg = (
            latent_avg.detach()
            .reshape(1, -1)
            .to(device=device, dtype=generator.input.input.dtype, copy=True)
        )
    return generator


def _check_state_dict(
    generator: StyleGAN2Generator,
    state: Mapping[str, torch.Tensor],
    found: Mapping[str, Any],
    source: str,
) -> None:
    from soundguide.core.checkpoints import check_state_dict

    looks = (
        f"{found['size']} px, style_dim {found['style_dim']}, n_mlp {found['n_mlp']}, "
        f"channel multiplier {generator.channel_multiplier}"
    )
    check_state_dict(
        generator.state_dict(), state, source=source, what=f"StyleGAN2 (it looks like {looks})"
    )
