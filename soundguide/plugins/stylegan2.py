"""Generator ``stylegan2``: rosinality-format StyleGAN2 checkpoints, with presets.

``preset`` picks a known model (and its known-weights entry); ``checkpoint``
points at a local file instead. The mean latent (4096 mapping passes, seeded)
is computed once per checkpoint and cached under ``$SOUNDGUIDE_HOME/cache``.
``use_noise`` replaces the checkpoint's fixed noise maps (projection tunes
them; one map per image, or one for the batch) for this run only: the network
itself may be shared with later runs (``RunContext.shared``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

import soundguide
from soundguide import ConfigPath, Generator, GeneratorConfig, KnownWeights, Seed


@dataclass(frozen=True)
class Preset:
    size: int
    channel_multiplier: int
    weights: str
    domain: str
    """What the model makes: photos are aligned as faces only for "face"."""
    content_box: tuple[int, int, int, int] | None = None


_NVIDIA = "http://d36zk2xti64re0.cloudfront.net/stylegan2/networks"
_CONVERT = (
    "convert NVIDIA's {pkl} ({url}/{pkl}) with rosinality's stylegan2-pytorch "
    "convert_weight.py and put the .pt file there, or set checkpoint = 'path/to/file.pt'"
)

PRESETS: dict[str, Preset] = {
    "ffhq": Preset(1024, 2, "stylegan2-ffhq", "face"),
    "landscape": Preset(256, 2, "stylegan2-landscape", "landscape"),
    "lsun-church": Preset(256, 2, "stylegan2-lsun-church", "church"),
    # LSUN cars are 512x384 pictures centred in the 512x512 output
    "lsun-car": Preset(512, 2, "stylegan2-lsun-car", "car", content_box=(64, 0, 384, 512)),
    "lsun-cat": Preset(256, 2, "stylegan2-lsun-cat", "cat"),
    "lsun-horse": Preset(256, 2, "stylegan2-lsun-horse", "horse"),
}

KNOWN_WEIGHTS = [
    KnownWeights(
        "stylegan2-ffhq",
        "https://drive.usercontent.google.com/download?id=1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT"
        "&export=download&confirm=t",
        "stylegan2-ffhq-config-f.pt",
        "Nvidia Source Code License-NC",
        "FFHQ 1024 px, config-f, rosinality's conversion of NVIDIA's model",
    ),
    KnownWeights(
        "stylegan2-landscape",
        "https://kr.object.ncloudstorage.com/cvpr2022/landscape.pt",
        "landscape.pt",
        "CC BY-NC-SA 4.0",
        "the paper's 256 px landscape model (Lee et al., CVPR 2022)",
    ),
]
for _name, _pkl in [
    ("church", "stylegan2-church-config-f.pkl"),
    ("car", "stylegan2-car-config-f.pkl"),
    ("cat", "stylegan2-cat-config-f.pkl"),
    ("horse", "stylegan2-horse-config-f.pkl"),
]:
    KNOWN_WEIGHTS.append(
        KnownWeights(
            f"stylegan2-lsun-{_name}",
            None,
            _pkl.replace(".pkl", ".pt"),
            "Nvidia Source Code License-NC",
            _CONVERT.format(pkl=_pkl, url=_NVIDIA),
        )
    )


class StyleGAN2(Generator):
    """A rosinality-format StyleGAN2 generator editing in W+ (L = 2 log2(size) - 2)."""

    class Config(GeneratorConfig):
        type: Literal["stylegan2"] = "stylegan2"
        preset: (
            Literal["ffhq", "landscape", "lsun-church", "lsun-car", "lsun-cat", "lsun-horse"] | None
        ) = Field(None, description="A known model; its weights are downloaded on first use.")
        checkpoint: ConfigPath | None = Field(
            None,
            description="A local rosinality-format checkpoint (overrides the preset's weights).",
        )
        size: int | None = Field(None, description="Checked against the checkpoint when given.")
        domain: str | None = Field(
            None,
            description="What the model makes ('face', 'landscape', 'car'...): photos are "
            "aligned as faces only for 'face' or when unknown. Presets set it.",
        )
        channel_multiplier: int | None = Field(None, ge=1)
        mean_samples: int = Field(4096, ge=1, description="Mapping passes for the mean latent.")
        mean_seed: Seed = Field(0, description="Seed of the mean-latent samples.")
        precision: Literal["fp32", "bf16"] = Field(
            "fp32",
            description="bf16 runs the network under bfloat16 autocast (faster, less exact).",
        )
        channels_last: bool = Field(False, description="channels-last memory format.")
        winograd: bool = Field(
            True,
            description="Winograd convolutions for the wide layers on CPU: faster generator "
            "passes (README: measured speeds) for 47 MB more memory at 256 px (false: the "
            "low-memory choice).",
        )

        @model_validator(mode="after")
        def _needs_weights(self):
            if self.preset is None and self.checkpoint is None:
                raise ValueError("set preset (e.g. 'landscape') or checkpoint = 'file.pt'")
            return self

        def inputs(self, location: str):
            found = super().inputs(location)
            if self.checkpoint is None and self.preset is not None:
                from soundguide.core.inputs import Input

                found.append(Input(f"{location}.preset", PRESETS[self.preset].weights, "weights"))
            return found

    config: Config

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        from soundguide.core.files import sha256_file
        from soundguide.core.interfaces import model_key
        from soundguide.generators.stylegan2 import load_stylegan2

        preset = PRESETS.get(config.preset) if config.preset else None
        if config.checkpoint is not None:
            path = context.resolve_weights(config.checkpoint)
        else:
            assert preset is not None
            path = context.resolve_weights(preset.weights)
        size = config.size if config.size is not None else (preset.size if preset else None)
        cm = config.channel_multiplier
        if cm is None and preset is not None and config.checkpoint is None:
            cm = preset.channel_multiplier
        self.path = Path(path)
        trust = context.trust_checkpoint
        # the frozen network may be shared with other runs (soundguide app); the
        # noise maps a run chooses stay on this plugin (self._noise), never on it
        self.model = context.shared(
            model_key("stylegan2", self.path, size=size, cm=cm, trust=trust, device=context.device),
            lambda: load_stylegan2(self.path, size=size, channel_multiplier=cm, trust=trust).to(
                context.device
            ),
        )
        self.model.channels_last = config.channels_last
        self.model.winograd = config.winograd
        self._box = preset.content_box if preset is not None else None
        # preset + checkpoint is a local copy of the preset's model (the README's offline use)
        self._domain = config.domain or (preset.domain if preset is not None else None)
        self._sha256 = context.shared(
            model_key("sha256", self.path), lambda: sha256_file(self.path)
        )
        self._mean: torch.Tensor | None = None
        self._noise: list[torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def latent_dim(self) -> int:
        return self.model.style_dim

    @property
    def resolution(self) -> int:
        return self.model.size

    @property
    def content_box(self):
        return self._box

    @property
    def domain(self):
        return self._domain

    def _mean_w(self) -> torch.Tensor:
        """(1, D) mean of the mapping network's outputs, cached per checkpoint."""
        if self._mean is None:
            c = self.config
            key = {"checkpoint": self._sha256, "samples": c.mean_samples, "seed": c.mean_seed}
            self._mean = self.context.cached_tensor(
                "mean_latent", key, self._compute_mean, shape=(1, self.latent_dim)
            )
        return self._mean

    def _compute_mean(self) -> torch.Tensor:
        # z on the CPU, so the mean is the same whichever device computes it
        c = self.config
        g = torch.Generator().manual_seed(c.mean_seed)
        z = torch.randn(c.mean_samples, self.latent_dim, generator=g).to(self.context.device)
        with torch.no_grad():
            return self.model.mapping(z).mean(0, keepdim=True)

    def mean_latent(self) -> torch.Tensor:
        return self._mean_w()[:, None, :].expand(1, self.num_layers, -1).clone()

    def sample_latent(self, n, truncation, generator=None):
        # z is drawn on the CPU so a seed gives the same start on every device
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.context.device)
        with torch.no_grad():
            w = self.model.truncate(self.model.mapping(z), truncation, self._mean_w())
        return w[:, None, :].expand(n, self.num_layers, -1).clone()

    def synthesize(self, latent):
        return self.model.synthesize(latent, noise=self._noise, precision=self.config.precision)

    def noise_maps(self) -> list[torch.Tensor]:
        """The maps ``synthesize`` uses now: those of :meth:`use_noise`, else the checkpoint's."""
        return list(self._noise) if self._noise is not None else self.model.noise_maps()

    def use_noise(self, noise) -> None:
        if noise is None:
            self._noise = None
            return
        self.model.check_noise(noise)
        fixed = self.model.noise_maps()
        # the checkpoint's own maps: keep following the buffers (they move with the model)
        same = all(a is b for a, b in zip(noise, fixed, strict=True))
        self._noise = None if same else list(noise)

    def files(self) -> list[Path]:
        return [self.path]


@soundguide.hookimpl
def register_generators(registry):
    registry.add(StyleGAN2)


@soundguide.hookimpl
def register_weights(registry):
    for entry in KNOWN_WEIGHTS:
        registry.add(entry)
