"""The paper preset follows the original code's update rule, computed here from the formulas."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from soundguide.cli import main
from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor
from soundguide.encoders.audio import load_audio
from soundguide.encoders.clip import load_clip
from soundguide.encoders.soundclip import SoundCLIPFrontend, load_soundclip


def paper_config(registries, clip_file, soundclip_file, tone, **extra):
    data = {
        "generator": {"type": "toy", "size": 32, "layers": 5, "dim": 16},
        "guidance": [
            {
                "type": "audio",
                "path": str(tone),
                "encoder": str(soundclip_file),
                "clip_model": str(clip_file),
            }
        ],
        "optimization": {"preset": "paper", "steps": 6, "seed": 3, **extra.pop("optimization", {})},
        **extra,
    }
    return config_from_dict(data, registries)


def test_preset_fills_the_original_settings(registries, clip_file, soundclip_file, tones):
    cfg = paper_config(registries, clip_file, soundclip_file, tones[0])
    g = cfg.guidance[0]
    assert (g.clip_preprocess, g.loss, g.clip_dtype, g.crop) == (
        "paper",
        "paper",
        "float32",
        "start",
    )
    opt = cfg.optimization
    assert (opt.lr, opt.schedule, opt.rampup, opt.rampdown, opt.truncation, opt.mode) == (
        0.1,
        "cosine",
        0.05,
        0.25,
        0.7,
        "edit",
    )
    assert [(r.type, r.weight) for r in cfg.regularizer] == [("latent_l2", 0.002)]


def test_explicit_values_win_over_the_preset(registries, clip_file, soundclip_file, tones):
    cfg = paper_config(
        registries,
        clip_file,
        soundclip_file,
        tones[0],
        optimization={"lr": 0.05},
        regularizer=[{"type": "latent_l2", "weight": 0.008, "adaptive": True}],
    )
    assert cfg.optimization.lr == 0.05
    assert [(r.weight, r.adaptive) for r in cfg.regularizer] == [(0.008, True)]


def original_update_rule(generator, w0, clip_model, audio_features, steps, lr0=0.1, lam=0.002):
    """The original direct latent optimization, from its formulas (batch 1)."""

    def get_lr(t):
        ramp = min(1, (1 - t) / 0.25)
        ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
        return lr0 * ramp * min(1, t / 0.05)

    size = generator.resolution
    upsample = torch.nn.Upsample(scale_factor=7)
    pool = torch.nn.AvgPool2d(kernel_size=size // 32)
    latent = w0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=lr0)
    audio = audio_features / audio_features.norm(dim=-1, keepdim=True)
    path = []
    for i in range(steps):
        optimizer.param_groups[0]["lr"] = get_lr(i / steps)
        image = generator.synthesize(latent)
        features = clip_model.encode_image(pool(upsample(image))).float()
        features = features / features.norm(dim=-1, keepdim=True)
        guidance = 1 - (features @ audio.T)[0] * math.exp(0.07)
        loss = lam * ((w0 - latent) ** 2).sum() + guidance
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        path.append(latent.detach().clone())
    return path


def test_latents_follow_the_original_update_rule(registries, clip_file, soundclip_file, tones):
    cfg = paper_config(registries, clip_file, soundclip_file, tones[0])
    editor = Editor(cfg, registries, progress=False)
    events = []
    editor.subscribe(events.append)
    editor.run()
    # the audio target from the original pipeline: start crop of the front end, the encoder
    with torch.no_grad():
        spec = SoundCLIPFrontend()(load_audio(tones[0])[None])
        audio_features = load_soundclip(soundclip_file)(spec).float()
    expected = original_update_rule(
        editor.generator, editor.w0, load_clip(clip_file), audio_features, steps=6
    )
    got = [e.latent for e in events[1:]]  # latents after 1..6 updates
    assert len(got) == 6
    for step, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
        # float error only: the two paths compute the same numbers in a different order
        assert (a - b).abs().max() < 1e-5, f"after {step} updates"
    assert not torch.equal(got[-1], editor.w0)


def test_cli_preset_flag(tmp_path, clip_file, soundclip_file, tones, capsys):
    config = tmp_path / "p.toml"
    config.write_text(
        f'[generator]\ntype = "toy"\nsize = 32\n[[guidance]]\ntype = "audio"\npath = "{tones[0]}"\n'
        f'encoder = "{soundclip_file}"\nclip_model = "{clip_file}"\n'
    )
    assert (
        main(["-p", "tests.toy_plugins", "config", "show", str(config), "--preset", "paper"]) == 0
    )
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["optimization"]["preset"] == "paper"
    assert shown["guidance"][0]["loss"] == "paper"
    assert shown["regularizer"][0]["type"] == "latent_l2"


def test_paper_preprocessing_equals_literal_upsample_pool():
    from soundguide.encoders.clip import paper_preprocess

    image = torch.randn(2, 3, 256, 256)
    literal = F.avg_pool2d(F.interpolate(image, scale_factor=7, mode="nearest"), 8)
    torch.testing.assert_close(paper_preprocess(image), literal, rtol=1e-5, atol=1e-5)
