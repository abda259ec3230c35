"""The built-in ``audio`` guidance over time, with tiny random SoundCLIP, CLIP and StyleGAN2:
SoundCLIP embeds the frames' windows, a timeline's prompts steer their segments."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from soundguide.core.config import load_config
from soundguide.core.plugins import load_registries
from soundguide.plugins.audio import AudioGuidance
from soundguide.video.run import make_video
from soundguide.video.settings import video_config
from tests.factories import save_random_soundclip, save_tiny_clip, save_tiny_stylegan2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "clip": save_tiny_clip(folder / "clip.pt"),
        "soundclip": save_random_soundclip(folder / "soundclip.pt", embed_dim=32),
        "stylegan2": save_tiny_stylegan2(folder / "g.pt", size=32),
    }


def write(tmp_path, models, recording, video: str = "") -> object:
    path = tmp_path / "real.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [generator]
            type = "stylegan2"
            checkpoint = "{models["stylegan2"]}"

            [[guidance]]
            type = "audio"
            path = "{recording}"
            encoder = "{models["soundclip"]}"
            clip_model = "{models["clip"]}"
            over_time = {{ window = 1.0, fps = 2, smoothing = "moving_average", tau = 1.0 }}

            [[regularizer]]
            type = "temporal"
            weight = 0.01

            [optimization]
            steps = 2

            [video]
            {video}
            """
        )
    )
    return path


def test_a_timeline_steers_its_segments_only(tmp_path, models, recording):
    (tmp_path / "prompts.csv").write_text("start,end,prompt\n0.0,1.5,rain\n2.5,4.0,thunder\n")
    path = write(tmp_path, models, recording, 'timeline = "prompts.csv"\nchunk = 3')
    registries = load_registries(entry_points=False)
    config = load_config(path, registries)
    settings = video_config(config.video, tmp_path, str(path))
    result = make_video(
        config, settings, out=tmp_path / "out", registries=registries, progress=False
    )
    assert result.ok and result.frames == 8 and result.latents.shape == (8, 8, 64)
    rows = json.loads((tmp_path / "out" / "run.json").read_text())["per_frame"]
    times = [row["time"] for row in rows]
    assert times == [0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75]
    text = [row["terms"]["text"] for row in rows]
    inside = [t < 1.5 or t >= 2.5 for t in times]
    assert all((v != 0) == ins for v, ins in zip(text, inside, strict=True)), text
    assert all(row["terms"]["audio"] != 0 and "temporal" in row["terms"] for row in rows)


def test_frame_targets_are_soundclip_embeddings_cached_on_disk(tmp_path, models, recording):
    from soundguide.core.interfaces import RunContext

    config = load_config(write(tmp_path, models, recording), load_registries(entry_points=False))
    context = RunContext(cache_dir=tmp_path / "cache")
    guidance = AudioGuidance(config.guidance[0], context)
    first = guidance.frame_targets()
    assert first.shape == (8, 32)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(8))
    assert len(list((tmp_path / "cache" / "audio_frame_targets").iterdir())) == 1
    torch.testing.assert_close(guidance.frame_targets(), first)  # read back
    assert not torch.allclose(first[0], first[-1])  # tone and noise embed differently
