"""Tiny plugins for the engine's unit tests: a differentiable toy generator and a
fixed-vector guidance with its own toy image encoder. Usable with ``-p tests.toy_plugins``.

``CALLS`` counts what the engine calls, so tests can check that weight-0 terms
are never built and that each space is encoded once per step.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

import soundguide
from soundguide import (
    ConfigPath,
    Generator,
    GeneratorConfig,
    Guidance,
    GuidanceConfig,
    Inversion,
    Inverter,
    InverterConfig,
    Regularizer,
    RegularizerConfig,
)

CALLS: Counter[str] = Counter()


def reset() -> None:
    CALLS.clear()


class ToyGenerator(Generator):
    """latent (n, L, D) -> tanh(linear) image (n, 3, size, size); deterministic."""

    class Config(GeneratorConfig):
        type: Literal["toy"] = "toy"
        layers: int = Field(4, ge=1)
        dim: int = Field(8, ge=1)
        size: int = Field(8, ge=1)
        seed: int = 0
        box: tuple[int, int, int, int] | None = None
        load_seconds: float = Field(0.0, description="Sleep this long while loading.")
        step_seconds: float = Field(0.0, description="Sleep this long in every synthesis.")
        nan_images_at: list[int] = Field(
            [], description="Synthesis calls (counted from 1) whose images are NaN."
        )
        domain: str | None = None

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        CALLS["generator.build"] += 1
        if config.load_seconds:  # sleep(0) still yields the CPU: a slow step under load
            time.sleep(config.load_seconds)
        g = torch.Generator().manual_seed(config.seed)
        L, D, s = config.layers, config.dim, config.size
        self.mapping_weight = torch.randn(D, D, generator=g) / D**0.5
        self.weight = (torch.randn(L * D, 3 * s * s, generator=g) / (L * D) ** 0.5).to(
            context.device
        )
        self.mapping_weight = self.mapping_weight.to(context.device)

    @property
    def num_layers(self) -> int:
        return self.config.layers

    @property
    def latent_dim(self) -> int:
        return self.config.dim

    @property
    def resolution(self) -> int:
        return self.config.size

    @property
    def content_box(self):
        return self.config.box

    @property
    def domain(self):
        return self.config.domain

    def _map(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.mapping_weight)

    def mean_latent(self) -> torch.Tensor:
        z = torch.randn(256, self.config.dim, generator=torch.Generator().manual_seed(123))
        w = self._map(z.to(self.mapping_weight.device)).mean(0)
        return w.expand(1, self.num_layers, -1).clone()

    def sample_latent(self, n, truncation, generator=None):
        z = torch.randn(n, self.config.dim, generator=generator).to(self.mapping_weight.device)
        mean = self.mean_latent()[:, 0]
        w = mean + truncation * (self._map(z) - mean)
        return w[:, None, :].expand(n, self.num_layers, -1).clone()

    def synthesize(self, latent):
        CALLS["generator.synthesize"] += 1
        self.calls = getattr(self, "calls", 0) + 1
        if self.config.step_seconds:
            time.sleep(self.config.step_seconds)
        n, s = latent.shape[0], self.config.size
        image = torch.tanh(latent.reshape(n, -1) @ self.weight).view(n, 3, s, s)
        return image * float("nan") if self.calls in self.config.nan_images_at else image


class ToyInverter(Inverter):
    """Inverts the toy generator exactly where it can: atanh, then the pseudo-inverse."""

    class Config(InverterConfig):
        type: Literal["toy-inverter"] = "toy-inverter"
        shift: float = Field(0.0, description="Added to the latent (a worse inversion).")
        nan: bool = False
        faces_only: bool = False
        steps: int = Field(
            0, ge=0, description="Sleep step_seconds this many times, asking stop()."
        )
        step_seconds: float = 0.0

    def __init__(self, config, context) -> None:
        super().__init__(config, context)
        CALLS["inverter.build"] += 1
        if config.faces_only:
            self.domains = ("face",)

    def invert(self, images, generator, *, start=None, stop=None):
        CALLS["inverter.invert"] += 1
        done = 0
        for _ in range(self.config.steps):
            if stop is not None and stop():
                break
            time.sleep(self.config.step_seconds)
            done += 1
        n = images.shape[0]
        target = torch.atanh(images.reshape(n, -1).clamp(-0.999, 0.999))
        flat = target @ torch.linalg.pinv(generator.weight)
        latent = flat.view(n, generator.num_layers, generator.latent_dim) + self.config.shift
        if self.config.nan:
            latent = latent * float("nan")
        return Inversion(latent=latent.cpu(), history={"loss": [[0.0] * n] * max(done, 1)})


class ToyEncoder(torch.nn.Module):
    """Pool to 4x4, then a fixed random projection: (n, 3, H, W) -> (n, dim)."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(48, dim, generator=g) / 48**0.5)

    def after_targets(self) -> None:
        CALLS["encoder.after_targets"] += 1

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        CALLS["encoder.encode_image"] += 1
        return F.adaptive_avg_pool2d(image, 4).flatten(1) @ self.proj


class ToyGuidance(Guidance):
    """A fixed target vector (from the config, a text file, or a seed) in a toy space."""

    class Config(GuidanceConfig):
        type: Literal["toy-target"] = "toy-target"
        space_name: str = "toy"
        dim: int = Field(16, ge=1)
        seed: int = 0
        vector: list[float] | None = None
        path: ConfigPath | None = None
        items: int | None = Field(None, ge=1, description="Give this many per-item targets.")
        nan_after: int | None = Field(
            None, description="Return NaN from the loss after this many calls."
        )

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        CALLS[f"guidance.build.{config.space_name}"] += 1
        self.loss_calls = 0

    @property
    def space(self) -> str:
        return f"toy:{self.config.space_name}"

    @property
    def num_items(self):
        return self.config.items

    def build_encoder(self):
        CALLS[f"encoder.build.{self.space}"] += 1
        return ToyEncoder(self.config.dim, seed=sum(map(ord, self.space)))

    def target(self, encoder):
        CALLS["guidance.target"] += 1
        c = self.config
        if c.path is not None:
            values = [float(x) for x in Path(c.path).read_text().split()]
            return torch.tensor(values)
        if c.vector is not None:
            return torch.tensor(c.vector)
        g = torch.Generator().manual_seed(c.seed)
        return torch.randn(c.items or 1, c.dim, generator=g).squeeze(0)

    def loss(self, embedding, target):
        CALLS["guidance.loss"] += 1
        self.loss_calls += 1
        out = super().loss(embedding, target)
        if self.config.nan_after is not None and self.loss_calls > self.config.nan_after:
            out = out * float("nan")
        return out


class CountingRegularizer(Regularizer):
    """Counts its calls; penalty = sum of |w - w0|."""

    class Config(RegularizerConfig):
        type: Literal["counting"] = "counting"

    def __init__(self, config, context) -> None:
        super().__init__(config, context)
        CALLS["counting.build"] += 1

    def loss(self, w, w0, image, image0):
        CALLS["counting.loss"] += 1
        assert image is None and image0 is None  # needs_image is False: no images given
        return (w - w0).abs().flatten(1).sum(1)


class ImageRegularizer(Regularizer):
    """Mean squared difference of the images (needs_image = True)."""

    needs_image = True

    class Config(RegularizerConfig):
        type: Literal["image-mse"] = "image-mse"

    def loss(self, w, w0, image, image0):
        assert image is not None and image0 is not None and image.shape == image0.shape
        return (image - image0).pow(2).flatten(1).mean(1)


class PoisonRegularizer(Regularizer):
    """No penalty; fills the latent with NaN in its ``after_step`` of update ``at``."""

    class Config(RegularizerConfig):
        type: Literal["poison"] = "poison"
        at: int = Field(1, ge=1, description="The update (counted from 1) after which w is NaN.")

    def __init__(self, config, context) -> None:
        super().__init__(config, context)
        self.updates = 0

    def loss(self, w, w0, image, image0):
        return torch.zeros(w.shape[0], device=w.device)

    def after_step(self, w, w0):
        self.updates += 1
        if self.updates == self.config.at:
            with torch.no_grad():
                w.fill_(float("nan"))


@soundguide.hookimpl
def register_generators(registry):
    registry.add(ToyGenerator)


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(ToyGuidance)


@soundguide.hookimpl
def register_inverters(registry):
    registry.add(ToyInverter)


@soundguide.hookimpl
def register_regularizers(registry):
    registry.add(CountingRegularizer)
    registry.add(PoisonRegularizer)
    registry.add(ImageRegularizer)
