"""Generator ``nvidia``: NVIDIA's StyleGAN2-ADA and StyleGAN3 network pickles, with presets.

``checkpoint`` points at a pickle (``network-snapshot-*.pkl`` of a training
run, or a published model); ``preset`` picks one of NVIDIA's published models
(its known-weights entry, downloaded on first use). The pickle's ``G_ema`` is
read without running its code (:func:`~soundguide.core.nvidia_pickle.load_nvidia_network`;
``--trust-checkpoint`` plays no part), and which network it is follows from
its state dict (:func:`network_family`): a ``synthesis.input.transform``
buffer (StyleGAN3's Fourier-feature input) makes it StyleGAN3 (configs T and
R), a ``synthesis.b4.const`` (the learned 4x4 constant) StyleGAN2-ADA;
anything else is refused, naming what it is.

The mean latent is the pickle's ``mapping.w_avg``: the running average of W
that NVIDIA's truncation pulls towards (so truncation here is NVIDIA's). Only
a network trained without one (``w_avg_beta=None``) gets a sampled mean:
``mean_samples`` mapping passes seeded by ``mean_seed``, cached per file.
A class-conditional network (``c_dim > 0``, e.g. CIFAR-10) needs ``class``.
StyleGAN2-ADA's noise inputs can be replaced (projection tunes them);
StyleGAN3 has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import ConfigDict, Field, model_validator

import soundguide
from soundguide import ConfigPath, Generator, GeneratorConfig, KnownWeights, Seed


@dataclass(frozen=True)
class Preset:
    resolution: int
    domain: str
    """What the model makes: photos are aligned as faces only for "face"."""
    description: str
    url: str


_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_SG3 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files"
LICENSE = "Nvidia Source Code License-NC"
"""What both repositories' READMEs name ("Nvidia Source Code License"): non-commercial use."""

PRESETS: dict[str, Preset] = {
    "stylegan2-ada-ffhq": Preset(1024, "face", "FFHQ, trained with StyleGAN2", f"{_ADA}/ffhq.pkl"),
    "stylegan2-ada-metfaces": Preset(
        1024, "face", "MetFaces, transfer from FFHQ with ADA", f"{_ADA}/metfaces.pkl"
    ),
    "stylegan2-ada-afhqcat": Preset(512, "cat", "AFHQ Cat, ADA", f"{_ADA}/afhqcat.pkl"),
    "stylegan2-ada-afhqdog": Preset(512, "dog", "AFHQ Dog, ADA", f"{_ADA}/afhqdog.pkl"),
    "stylegan2-ada-afhqwild": Preset(512, "wild", "AFHQ Wild, ADA", f"{_ADA}/afhqwild.pkl"),
    "stylegan2-ada-brecahad": Preset(
        512, "histology", "BreCaHAD breast-cancer histology, ADA", f"{_ADA}/brecahad.pkl"
    ),
    "stylegan2-ada-cifar10": Preset(
        32, "cifar10", "class-conditional CIFAR-10 (set class = 0..9)", f"{_ADA}/cifar10.pkl"
    ),
}
for _config in ("t", "r"):
    for _data, _size, _domain, _what in [
        ("ffhq", 1024, "face", "FFHQ"),
        ("ffhqu", 256, "face", "unaligned FFHQ"),
        ("ffhqu", 1024, "face", "unaligned FFHQ"),
        ("afhqv2", 512, "animal", "AFHQv2 (cats, dogs and wild animals)"),
        ("metfacesu", 1024, "face", "unaligned MetFaces"),
    ]:
        _file = f"stylegan3-{_config}-{_data}-{_size}x{_size}.pkl"
        PRESETS[f"stylegan3-{_config}-{_data}-{_size}"] = Preset(
            _size, _domain, f"{_what}, StyleGAN3 config {_config.upper()}", f"{_SG3}/{_file}"
        )

KNOWN_WEIGHTS = [
    KnownWeights(
        name,
        preset.url,
        preset.url.rsplit("/", 1)[1] if name.startswith("stylegan3") else f"{name}.pkl",
        LICENSE,
        f"NVIDIA's {preset.description}, {preset.resolution} px (generator type 'nvidia')",
    )
    for name, preset in PRESETS.items()
]

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def network_family(record) -> Literal["stylegan2-ada", "stylegan3"]:
    """Which generator a pickle's ``G_ema`` record is, from its state dict's names:
    ``synthesis.input.transform`` -> StyleGAN3, ``synthesis.b4.const`` -> StyleGAN2-ADA."""
    from soundguide.core.errors import CheckpointError

    if record.class_name != "Generator":
        raise CheckpointError(
            f"its G_ema is a {record.class_name}, not NVIDIA's StyleGAN2-ADA or StyleGAN3 Generator"
        )
    names = record.state_dict()
    if "synthesis.input.transform" in names:
        return "stylegan3"
    if "synthesis.b4.const" in names:
        return "stylegan2-ada"
    raise CheckpointError(
        "its G_ema is a Generator with neither synthesis.input.transform (StyleGAN3) nor "
        "synthesis.b4.const (StyleGAN2-ADA)"
    )


def load_nvidia_generator(path: Path) -> tuple[str, torch.nn.Module]:
    """(family, model) of the pickle at ``path``, read without running its code."""
    from soundguide.core.errors import CheckpointError
    from soundguide.core.nvidia_pickle import load_nvidia_network
    from soundguide.generators.nvidia.stylegan2_ada import StyleGAN2ADAGenerator
    from soundguide.generators.nvidia.stylegan3 import StyleGAN3Generator

    record = load_nvidia_network(path)
    try:
        family = network_family(record)
        cls = StyleGAN3Generator if family == "stylegan3" else StyleGAN2ADAGenerator
        return family, cls.from_persistent(record)
    except CheckpointError as exc:
        raise CheckpointError(f"unsupported NVIDIA pickle {path}: {exc}", hint=exc.hint) from None


class NVIDIA(Generator):
    """An NVIDIA StyleGAN2-ADA or StyleGAN3 generator editing in W+ (L = the network's num_ws)."""

    class Config(GeneratorConfig):
        model_config = ConfigDict(populate_by_name=True)

        type: Literal["nvidia"] = "nvidia"
        preset: PresetName | None = Field(  # type: ignore[valid-type]
            None, description="One of NVIDIA's published models; downloaded on first use."
        )
        checkpoint: ConfigPath | None = Field(
            None, description="A local NVIDIA network pickle (overrides the preset's weights)."
        )
        class_index: int | None = Field(
            None,
            alias="class",
            ge=0,
            description="The class of a class-conditional network (c_dim > 0): required "
            "there, refused for an unconditional one.",
        )
        truncation_cutoff: int | None = Field(
            None,
            ge=0,
            description="Truncation pulls only the first this-many W+ rows to the mean "
            "(NVIDIA's truncation_cutoff); none: all rows.",
        )
        domain: str | None = Field(
            None,
            description="What the model makes ('face', 'cat', ...): photos are aligned as "
            "faces only for 'face' or when unknown. Presets set it.",
        )
        mean_samples: int = Field(
            4096,
            ge=1,
            description="Mapping passes for the mean latent, only for a network without w_avg.",
        )
        mean_seed: Seed = Field(0, description="Seed of those mean-latent samples.")
        translate: tuple[float, float] = Field(
            (0.0, 0.0),
            description="StyleGAN3 only: move the picture by (x, y) image sizes (x right, "
            "y down), through the input's Fourier transform, as NVIDIA's gen_images.py does.",
        )
        rotate: float = Field(
            0.0,
            allow_inf_nan=False,
            description="StyleGAN3 only: rotate the picture by this many degrees "
            "(counter-clockwise), as NVIDIA's gen_images.py does.",
        )

        @model_validator(mode="after")
        def _needs_weights(self):
            if self.preset is None and self.checkpoint is None:
                raise ValueError(
                    "set preset (e.g. 'stylegan2-ada-ffhq') or checkpoint = 'network.pkl'"
                )
            return self

        def inputs(self, location: str):
            found = super().inputs(location)
            if self.checkpoint is None and self.preset is not None:
                from soundguide.core.inputs import Input

                found.append(Input(f"{location}.preset", self.preset, "weights"))
            return found

    config: Config

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        from soundguide.core.errors import CheckpointError, ConfigError
        from soundguide.core.files import sha256_file

        preset = PRESETS.get(config.preset) if config.preset else None
        ref = config.checkpoint if config.checkpoint is not None else config.preset
        self.path = Path(context.resolve_weights(ref))
        self.family, model = load_nvidia_generator(self.path)
        self.model = model.to(context.device)
        c_dim = self.model.c_dim
        if c_dim > 0 and config.class_index is None:
            raise ConfigError(
                f"generator: {self.path.name} is class-conditional ({c_dim} classes): "
                f"set class = 0..{c_dim - 1}"
            )
        if c_dim == 0 and config.class_index is not None:
            raise ConfigError(
                f"generator: class = {config.class_index}, but {self.path.name} is unconditional",
                hint="remove class from the generator section",
            )
        if config.class_index is not None and config.class_index >= c_dim:
            raise ConfigError(
                f"generator: class = {config.class_index} is out of range: "
                f"{self.path.name} has {c_dim} classes (0..{c_dim - 1})"
            )
        if config.truncation_cutoff is not None and config.truncation_cutoff > self.num_layers:
            raise ConfigError(
                f"generator: truncation_cutoff = {config.truncation_cutoff}, but the network "
                f"has {self.num_layers} latent rows"
            )
        if preset is not None and self.model.img_resolution != preset.resolution:
            raise CheckpointError(
                f"{self.path} is {self.model.img_resolution} px; preset {config.preset!r} "
                f"is {preset.resolution} px"
            )
        if tuple(config.translate) != (0.0, 0.0) or config.rotate != 0.0:
            if not hasattr(self.model, "set_input_transform"):
                raise ConfigError(
                    f"generator: translate and rotate move a StyleGAN3's input; {self.path.name} "
                    f"is a {self.family} network"
                )
            self.model.set_input_transform(tuple(config.translate), config.rotate)
        self._domain = config.domain or (preset.domain if preset is not None else None)
        self._sha256 = sha256_file(self.path)
        self._mean: torch.Tensor | None = None
        self._noise: list[torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return self.model.num_ws

    @property
    def latent_dim(self) -> int:
        return self.model.w_dim

    @property
    def resolution(self) -> int:
        return self.model.img_resolution

    @property
    def domain(self):
        return self._domain

    def _labels(self, n: int) -> torch.Tensor | None:
        """(n, c_dim) one-hot labels of the configured class, or None (unconditional)."""
        if self.model.c_dim == 0:
            return None
        c = torch.zeros(n, self.model.c_dim, device=self.context.device)
        c[:, self.config.class_index] = 1
        return c

    def _mean_w(self) -> torch.Tensor:
        """(1, D): the pickle's ``w_avg``, else a sampled mean cached per file."""
        if self._mean is None:
            w_avg = self.model.mapping.w_avg
            if w_avg is not None:
                self._mean = w_avg.detach()[None].clone()
            else:
                c = self.config
                key = {
                    "checkpoint": self._sha256,
                    "samples": c.mean_samples,
                    "seed": c.mean_seed,
                    "class": c.class_index,
                }
                self._mean = self.context.cached_tensor(
                    "mean_latent", key, self._compute_mean, shape=(1, self.latent_dim)
                )
        return self._mean

    def _compute_mean(self) -> torch.Tensor:
        c = self.config
        g = torch.Generator().manual_seed(c.mean_seed)
        z = torch.randn(c.mean_samples, self.model.z_dim, generator=g).to(self.context.device)
        with torch.no_grad():
            return self.model.mapping(z, self._labels(c.mean_samples))[:, 0].mean(0, keepdim=True)

    def mean_latent(self) -> torch.Tensor:
        return self._mean_w()[:, None, :].expand(1, self.num_layers, -1).clone()

    def sample_latent(self, n, truncation, generator=None):
        # z is drawn on the CPU so a seed gives the same start on every device
        z = torch.randn(n, self.model.z_dim, generator=generator).to(self.context.device)
        cutoff = self.config.truncation_cutoff
        with torch.no_grad():
            if self.model.mapping.w_avg is not None:
                return self.model.mapping(
                    z, self._labels(n), truncation_psi=truncation, truncation_cutoff=cutoff
                )
            w = self.model.mapping(z, self._labels(n))
            cut = self.num_layers if cutoff is None else cutoff
            head = self._mean_w()[:, None].lerp(w[:, :cut], truncation)
            return torch.cat([head, w[:, cut:]], dim=1)

    def synthesize(self, latent):
        if self.family == "stylegan3":
            return self.model.synthesis(latent)
        return self.model.synthesis(latent, noise=self._noise)

    def noise_maps(self) -> list[torch.Tensor]:
        """StyleGAN2-ADA: the maps ``synthesize`` uses now (:meth:`use_noise`'s, else the
        pickle's ``noise_const``, each (1, 1, r, r)); StyleGAN3: [] (no noise inputs)."""
        if self.family == "stylegan3":
            return []
        return list(self._noise) if self._noise is not None else self.model.synthesis.noise_maps()

    def use_noise(self, noise) -> None:
        if self.family == "stylegan3":
            super().use_noise(noise)
        if noise is None:
            self._noise = None
            return
        self.model.synthesis.check_noise(noise)
        fixed = self.model.synthesis.noise_maps()
        # the pickle's own maps: keep following the buffers (they move with the model)
        same = all(
            a.data_ptr() == b.data_ptr() and a.shape == b.shape
            for a, b in zip(noise, fixed, strict=True)
        )
        self._noise = None if same else list(noise)

    def files(self) -> list[Path]:
        return [self.path]


@soundguide.hookimpl
def register_generators(registry):
    registry.add(NVIDIA)


@soundguide.hookimpl
def register_weights(registry):
    for entry in KNOWN_WEIGHTS:
        registry.add(entry)
