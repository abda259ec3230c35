from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from soundguide.core.config import config_from_dict, load_config
from soundguide.core.engine import Editor
from soundguide.core.errors import AudioError, ConfigError, ImageError
from soundguide.encoders.clip import CLIPEncoder, load_clip
from soundguide.encoders.soundclip import embed_audio, load_soundclip
from soundguide.plugins.clip_space import PAPER_SCALE


def sources(clip_file, soundclip_file, tones, **extra):
    common = {"clip_model": str(clip_file), **extra}
    return {
        "audio": {"type": "audio", "path": str(tones[0]), "encoder": str(soundclip_file), **common},
        "text": {"type": "text", "prompt": "a burning forest", **common},
    }


def make(registries, guidance, steps=3, **opt):
    return config_from_dict(
        {
            "generator": {"type": "toy", "size": 32},
            "guidance": guidance,
            "regularizer": [{"type": "latent_l2", "weight": 0.01}],
            "optimization": {"steps": steps, "seed": 0, **opt},
        },
        registries,
    )


def test_audio_and_text_share_one_clip_space(registries, clip_file, soundclip_file, tones):
    src = sources(clip_file, soundclip_file, tones)
    editor = Editor(
        make(registries, [src["audio"], {**src["text"], "weight": 0.5}]), registries, progress=False
    )
    result = editor.run()
    assert result.ok
    assert len(editor.encoders) == 1  # mixing costs one image encoding per step
    assert set(result.history[-1]["terms"]) == {"audio", "text", "latent_l2"}


def test_audio_target_is_the_soundclip_embedding(registries, clip_file, soundclip_file, tones):
    src = sources(clip_file, soundclip_file, tones)
    editor = Editor(make(registries, [src["audio"]]), registries, progress=False)
    editor.prepare()
    expected = embed_audio(load_soundclip(soundclip_file), tones[0])
    torch.testing.assert_close(editor.targets["audio"], expected)


def test_text_target_is_the_clip_text_embedding(registries, clip_file, soundclip_file, tones):
    src = sources(clip_file, soundclip_file, tones)
    editor = Editor(make(registries, [src["text"]]), registries, progress=False)
    editor.prepare()
    expected = CLIPEncoder(load_clip(clip_file)).encode_text("a burning forest")[0]
    torch.testing.assert_close(editor.targets["text"], expected)


def test_text_weight_zero_gives_exactly_the_audio_only_result(
    registries, clip_file, soundclip_file, tones
):
    src = sources(clip_file, soundclip_file, tones)
    alone = Editor(make(registries, [src["audio"]]), registries, progress=False).run()
    mixed = Editor(
        make(registries, [src["audio"], {**src["text"], "weight": 0.0}]), registries, progress=False
    ).run()
    assert torch.equal(alone.edited_latent, mixed.edited_latent)


def test_targets_are_computed_once_and_cached_on_disk(
    registries, clip_file, soundclip_file, tones, monkeypatch
):
    src = sources(clip_file, soundclip_file, tones)
    cfg = make(registries, [src["audio"]], steps=4)
    calls = {"n": 0}
    import soundguide.encoders.soundclip as soundclip

    original = soundclip.SoundCLIPEncoder.forward

    def counting(self, spec):
        calls["n"] += 1
        return original(self, spec)

    monkeypatch.setattr(soundclip.SoundCLIPEncoder, "forward", counting)
    first = Editor(cfg, registries, progress=False).run()
    assert calls["n"] == 1  # once per run, not once per step
    second = Editor(cfg, registries, progress=False).run()
    assert calls["n"] == 1  # the second run read the cache
    assert torch.equal(first.edited_latent, second.edited_latent)
    other_crop = make(registries, [{**src["audio"], "crop": "center"}])
    Editor(other_crop, registries, progress=False).prepare()
    assert calls["n"] == 2  # different settings, different cache entry


def test_lists_give_per_item_targets(registries, clip_file, soundclip_file, tones):
    src = sources(clip_file, soundclip_file, tones)
    audio = {**src["audio"], "path": [str(p) for p in tones]}
    text = {**src["text"], "prompt": ["fire", "rain", "wind"], "weight": 0.5}
    editor = Editor(make(registries, [audio, text]), registries, progress=False)
    result = editor.run()
    assert result.edited_latent.shape[0] == 3
    assert editor.targets["audio"].shape == (3, 32) and editor.targets["text"].shape == (3, 32)
    assert result.seeds == [0, 1, 2]


def test_image_guidance(registries, clip_file, tmp_path):
    picture = tmp_path / "ref.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(picture)
    guidance = [{"type": "image", "path": str(picture), "clip_model": str(clip_file)}]
    editor = Editor(make(registries, guidance), registries, progress=False)
    assert editor.run().ok
    assert editor.targets["image"].shape == (32,)


def test_negative_weight_pushes_away(registries, clip_file, soundclip_file, tones):
    src = sources(clip_file, soundclip_file, tones)
    toward = Editor(
        make(registries, [src["text"]], steps=15, lr=0.05), registries, progress=False
    ).run()
    away = Editor(
        make(registries, [{**src["text"], "weight": -1.0}], steps=15, lr=0.05),
        registries,
        progress=False,
    ).run()
    start = toward.history[0]["terms"]["text"][0]
    assert toward.history[-1]["terms"]["text"][0] < start
    # with weight -1 the weighted term is -(1 - cos): it falls as cos falls
    assert away.history[-1]["terms"]["text"][0] < away.history[0]["terms"]["text"][0]


def test_paper_loss_scale(registries, clip_file, soundclip_file, tones):
    src = sources(clip_file, soundclip_file, tones)
    editor = Editor(
        make(registries, [{**src["text"], "loss": "paper"}]), registries, progress=False
    )
    editor.prepare()
    w = editor.w0
    emb = editor.encoders[editor.guidances[0].plugin.space].encode_image(
        editor.generator.synthesize(w)
    )
    cos = torch.nn.functional.cosine_similarity(emb, editor.targets["text"][None])
    torch.testing.assert_close(editor.losses(w)["text"], 1 - PAPER_SCALE * cos)


def test_bad_inputs(registries, clip_file, soundclip_file, tones, tmp_path):
    src = sources(clip_file, soundclip_file, tones)
    with pytest.raises(ConfigError, match=r"guidance\.0\.path = .*nope\.wav \(not found\)"):
        Editor(
            make(registries, [{**src["audio"], "path": str(tmp_path / "nope.wav")}]), registries
        ).prepare()
    silent = tmp_path / "silent.wav"
    import soundfile as sf

    sf.write(silent, torch.zeros(44100).numpy(), 44100)
    with pytest.raises(AudioError, match="audio is silent"):
        Editor(
            make(registries, [{**src["audio"], "path": str(silent)}]), registries, progress=False
        ).prepare()
    with pytest.raises(ConfigError, match="77"):
        Editor(
            make(registries, [{**src["text"], "prompt": "fire " * 100}]), registries, progress=False
        ).prepare()
    bogus = tmp_path / "bogus.png"
    bogus.write_bytes(b"not a picture")
    with pytest.raises(ImageError, match="cannot read reference image"):
        guidance = [{"type": "image", "path": str(bogus), "clip_model": str(clip_file)}]
        Editor(make(registries, guidance), registries, progress=False).prepare()


def test_toml_mix_with_relative_paths_through_the_cli(
    registries, clip_file, soundclip_file, tones, tmp_path
):
    config = tmp_path / "mix.toml"
    config.write_text(
        f"""
[generator]
type = "toy"
size = 32

[[guidance]]
type = "audio"
path = "{tones[1].name}"
encoder = "{soundclip_file}"
clip_model = "{clip_file}"
weight = 1.0

[[guidance]]
type = "text"
prompt = "a burning forest"
clip_model = "{clip_file}"
weight = 0.5

[optimization]
steps = 3

[output]
dir = "out"
"""
    )
    cfg = load_config(config, registries)
    assert cfg.guidance[0].path == tones[1]
    from soundguide.cli import main

    assert main(["-p", "tests.toy_plugins", "edit", str(config), "-q"]) == 0
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert str(tones[1]) in paths and str(soundclip_file) in paths


def test_default_clip_model_is_the_paper_s(registries):
    from soundguide.plugins.text import TextGuidance

    cfg = TextGuidance.Config(prompt="x")
    assert (
        cfg.clip_model == "ViT-B/32"
        and cfg.clip_preprocess == "clip"
        and cfg.clip_dtype == "float32"
    )


def long_recording(path, seconds: int, rate: int = 8000):
    """A long 16-bit mono WAV: a slow chirp in a little noise."""
    import numpy as np
    import soundfile as sf

    t = np.arange(seconds * rate) / rate
    y = 0.3 * np.sin(2 * np.pi * (200 + t) * t)
    y += 0.05 * np.random.default_rng(0).standard_normal(t.size)
    sf.write(str(path), y.astype("float32"), rate, subtype="PCM_16")
    return path


def test_audio_max_seconds_limits_only_windows(
    registries, clip_file, soundclip_file, tones, tmp_path
):
    from soundguide.plugins.audio import AudioGuidance

    path = long_recording(tmp_path / "long.wav", seconds=30)
    src = sources(clip_file, soundclip_file, tones)
    audio = {**src["audio"], "path": str(path), "max_seconds": 20.0}
    for crop in ("start", "center", "random"):  # one 10 s window, whatever the length
        editor = Editor(make(registries, [{**audio, "crop": crop}]), registries, progress=False)
        editor.prepare()
        assert torch.isfinite(editor.targets["audio"]).all()
    with pytest.raises(AudioError) as info:
        Editor(make(registries, [{**audio, "crop": "windows"}]), registries).prepare()
    assert "30.0 s long, more than max_seconds=20" in str(info.value)
    # the hint names options the audio guidance has
    hint = info.value.hint
    fields = AudioGuidance.Config.model_fields
    assert 'crop = "start", "center" or "random"' in hint and "max_seconds" in hint
    assert {"crop", "max_seconds"} <= set(fields)
    assert {"start", "center", "random"} <= set(fields["crop"].annotation.__args__)


def test_too_long_for_windows_through_the_cli(clip_file, soundclip_file, tmp_path, capsys):
    long_recording(tmp_path / "long.wav", seconds=30)
    config = tmp_path / "windows.toml"
    config.write_text(
        f"""
[generator]
type = "toy"
size = 32

[[guidance]]
type = "audio"
path = "long.wav"
encoder = "{soundclip_file}"
clip_model = "{clip_file}"
crop = "windows"
max_seconds = 20

[optimization]
steps = 2

[output]
dir = "out"
"""
    )
    from soundguide.cli import main

    assert main(["-p", "tests.toy_plugins", "edit", str(config), "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in lines[0]
    assert lines[0].startswith("error: cannot use audio ") and "max_seconds=20" in lines[0]
    assert lines[1].startswith('hint: crop = "start", "center" or "random"')
