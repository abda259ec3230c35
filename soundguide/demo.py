"""``soundguide demo``: the whole pipeline, offline, in seconds, with tiny random models.

Everything the real pipeline reads is written first into ``<out>/demo-inputs``:
a tiny random StyleGAN2 checkpoint, a tiny random CLIP, random SoundCLIP
weights, a synthesized sound and the run config; then the run config goes
through exactly the code path of ``soundguide edit``. The weights are random,
so **the pictures mean nothing**: the demo shows that the installation works
and what a run writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from soundguide.core.runfolder import RunFolder

BANNER = (
    "DEMO with tiny RANDOM models (no pretrained weights): the pictures mean nothing; "
    "they show the pipeline and its outputs"
)
EMBED_DIM = 64


def _sound(path: Path, seconds: float = 3.0, rate: int = 44100) -> Path:
    """A noise burst with a falling chirp: something with the shape of an explosion."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    burst = rng.standard_normal(t.size) * np.exp(-3 * t)
    chirp = np.sin(2 * np.pi * (400 - 100 * t) * t) * np.exp(-1.5 * t)
    wave = 0.3 * (burst + chirp) / np.abs(burst + chirp).max()
    sf.write(path, wave.astype(np.float32), rate)
    return path


def write_demo_inputs(folder: Path, *, steps: int = 20) -> Path:
    """Write the tiny random models, a sound and ``demo.toml``; return the config path."""
    from soundguide.encoders.clip import clip  # the package, without its pkg_resources warning
    from soundguide.encoders.soundclip import SoundCLIPEncoder
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = StyleGAN2Generator(32, style_dim=64, n_mlp=2, channel_multiplier=1)
    torch.save({"g_ema": generator.state_dict()}, folder / "stylegan2-tiny.pt")
    clip_model = clip.model.CLIP(  # OpenAI's architecture, tiny
        embed_dim=EMBED_DIM,
        image_resolution=224,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    )
    torch.save(clip_model.state_dict(), folder / "clip-tiny.pt")
    torch.save(SoundCLIPEncoder(embed_dim=EMBED_DIM).state_dict(), folder / "soundclip-random.pt")
    _sound(folder / "sound.wav")
    config = folder / "demo.toml"
    config.write_text(
        f"""# soundguide demo: tiny RANDOM models, the pictures mean nothing.
[generator]
type = "stylegan2"
checkpoint = "stylegan2-tiny.pt"

[[guidance]]
type = "audio"
path = "sound.wav"
encoder = "soundclip-random.pt"
clip_model = "clip-tiny.pt"
weight = 1.0

[[guidance]]
type = "text"
prompt = "a burning forest"
clip_model = "clip-tiny.pt"
weight = 0.5

[[regularizer]]
type = "latent_l2"
weight = 0.002

[optimization]
steps = {steps}
lr = 0.1
seed = [0, 1]

[output]
dir = "../../demo-edit"         # relative to this file: next to the demo's own folder
save_every = {max(1, steps // 3)}
gif = true
"""
    )
    return config


def run_demo(
    out: str | os.PathLike[str],
    *,
    steps: int = 20,
    overwrite: bool = False,
    progress: bool = True,
    stop=None,
    registries=None,
):
    """Write the demo inputs under ``out/demo-inputs`` and run them; returns the RunResult.

    The run config is ``out/demo-inputs/demo.toml`` (:func:`demo_config`):
    ``soundguide edit`` runs it again, edited or not, without any weights.
    """
    from soundguide.api import edit
    from soundguide.core.config import load_config
    from soundguide.core.files import atomic_write_text
    from soundguide.core.plugins import load_registries

    folder = RunFolder(out, overwrite=overwrite)
    folder.open()  # locked for the whole demo: inputs and run
    try:
        config_path = write_demo_inputs(demo_config(out).parent, steps=steps)
        atomic_write_text(folder.folder / "DEMO.txt", BANNER + "\n")
        if registries is None:
            registries = load_registries()
        config = load_config(config_path, registries)
        return edit(
            config,
            out=folder,
            registries=registries,
            progress=progress,
            extra_manifest={"demo": BANNER},
            stop=stop,
        )
    finally:
        folder.close()


def demo_config(out: str | os.PathLike[str]) -> Path:
    """Where :func:`run_demo` writes its run config."""
    return Path(out).expanduser() / "demo-inputs" / "demo.toml"
