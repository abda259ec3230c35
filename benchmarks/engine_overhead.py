"""The engine's own cost per step, against a 256 px StyleGAN2 step.

The engine runs with near-free plugins (a generator that broadcasts the latent
into a 256 px image, a guidance whose encoder is a mean over pixels, and the
real ``latent_l2``) at the latent size of a 256 px StyleGAN2, (1, 14, 512).
Two step counts are timed so start-up cancels out; what is left per step is
the engine's overhead (plus the near-free plugins, so it is an upper bound).
It is compared with the forward + backward of a random-weight 256 px,
channel-multiplier-2 StyleGAN2 (the generator cost of a real step).

    python benchmarks/engine_overhead.py [--steps 50 250] [--progress]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import soundguide  # noqa: E402
from soundguide.core.config import config_from_dict  # noqa: E402
from soundguide.core.engine import Editor  # noqa: E402
from soundguide.core.plugins import load_registries  # noqa: E402


class NullGenerator(soundguide.Generator):
    class Config(soundguide.GeneratorConfig):
        type: Literal["null"] = "null"

    num_layers = 14
    latent_dim = 512
    resolution = 256

    def mean_latent(self):
        return torch.zeros(1, 14, 512)

    def sample_latent(self, n, truncation, generator=None):
        return truncation * torch.randn(n, 14, 512, generator=generator)

    def synthesize(self, latent):
        # a 256 px image that depends on the latent, at almost no cost
        return torch.tanh(latent[:, :3, :1])[..., None].expand(-1, 3, 256, 256)


class MeanEncoder:
    def __init__(self) -> None:
        self.proj = torch.randn(3, 512, generator=torch.Generator().manual_seed(0))

    def encode_image(self, image):
        return image.mean(dim=(2, 3)) @ self.proj


class NullGuidance(soundguide.Guidance):
    class Config(soundguide.GuidanceConfig):
        type: Literal["null-target"] = "null-target"

    space = "null"

    def build_encoder(self):
        return MeanEncoder()

    def target(self, encoder):
        return torch.randn(512, generator=torch.Generator().manual_seed(1))


plugin = types.ModuleType("null_plugins")


@soundguide.hookimpl
def register_generators(registry):
    registry.add(NullGenerator)


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(NullGuidance)


plugin.register_generators = register_generators
plugin.register_guidances = register_guidances


def engine_seconds(registries, steps: int, progress: bool) -> float:
    cfg = config_from_dict(
        {
            "generator": {"type": "null"},
            "guidance": [
                {"type": "null-target", "weight": 1.0},
                {"type": "null-target", "weight": 0.5},
            ],
            "regularizer": [{"type": "latent_l2", "weight": 0.002, "adaptive": True}],
            "optimization": {"steps": steps, "seed": 0},
        },
        registries,
    )
    start = time.perf_counter()
    Editor(cfg, registries, progress=progress).run()
    return time.perf_counter() - start


def stylegan_step_seconds(reps: int) -> float:
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(256, 512, 8, 2).requires_grad_(False).eval()
    w = torch.randn(1, g.num_layers, 512, requires_grad=True)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        g.synthesize(w).square().mean().backward()
        times.append(time.perf_counter() - start)
        w.grad = None
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs=2, default=[50, 250])
    parser.add_argument("--reps", type=int, default=3, help="StyleGAN2 repetitions")
    parser.add_argument("--progress", action="store_true", help="include the tqdm bar (to stderr)")
    args = parser.parse_args()
    registries = load_registries(entry_points=False, plugins=[plugin])
    short, long = sorted(args.steps)
    engine_seconds(registries, 5, False)  # warm-up
    t_short = min(engine_seconds(registries, short, args.progress) for _ in range(3))
    t_long = min(engine_seconds(registries, long, args.progress) for _ in range(3))
    per_step = (t_long - t_short) / (long - short)
    g = stylegan_step_seconds(args.reps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"engine with near-free plugins: {short} steps {t_short:.3f} s, {long} steps {t_long:.3f} s"
    )
    print(f"engine overhead per step:       {per_step * 1e3:.3f} ms")
    print(f"StyleGAN2 256 px fwd+bwd:       {g * 1e3:.1f} ms")
    print(f"overhead / StyleGAN2 step:      {100 * per_step / g:.2f} %")


if __name__ == "__main__":
    main()
