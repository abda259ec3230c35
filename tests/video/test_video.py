"""``make_video`` end to end with toy models: frames follow the sound, chunks, the MP4, stops."""

from __future__ import annotations

import json

import av
import pytest
import torch

from soundguide.core.config import load_config
from soundguide.core.interfaces import RunContext
from soundguide.video.run import make_video
from soundguide.video.settings import VideoConfig
from tests.toy_plugins import ToyEncoder, ToyGenerator
from tests.video.toy_audio import toy_targets


def run(path, registries, out, **video):
    config = load_config(path, registries)
    return make_video(config, VideoConfig(**video), out=out, registries=registries, progress=False)


def embeddings(latents):
    """The toy image space's embeddings of the frames' images."""
    generator = ToyGenerator(ToyGenerator.Config(size=16), RunContext())
    encoder = ToyEncoder(16, seed=sum(map(ord, "toy:audio")))
    with torch.no_grad():
        return torch.nn.functional.normalize(
            encoder.encode_image(generator.synthesize(latents)), dim=-1
        )


def test_frames_of_the_tone_move_towards_a_and_of_the_noise_towards_b(
    video_config, video_registries, tmp_path
):
    result = run(video_config(steps=30), video_registries, tmp_path / "out", chunk=8)
    assert result.ok and result.frames == result.frames_done == 24
    a, b = toy_targets()
    start = embeddings(_start_latent(result, tmp_path))
    end = embeddings(result.latents)
    gain = (end - start) @ (a - b)  # > 0: towards A rather than B
    first_half = [k for k in range(24) if (k + 0.5) / 6 + 0.25 < 2.0]
    second_half = [k for k in range(24) if (k + 0.5) / 6 - 0.25 > 2.0]
    assert (gain[first_half] > 0).all() and (gain[second_half] < 0).all()


def _start_latent(result, tmp_path):
    """Every frame starts from seed 3's latent (the config's)."""
    generator = ToyGenerator(ToyGenerator.Config(size=16), RunContext())
    return generator.sample_latent(1, 0.7, torch.Generator().manual_seed(3))


def frame_change(latents):
    """Squared latent change between neighbouring frames: (mean, largest)."""
    change = (latents[1:] - latents[:-1]).pow(2).sum(dim=(1, 2))
    return change.mean().item(), change.max().item()


def test_the_temporal_weight_reduces_frame_to_frame_change(
    video_config, video_registries, tmp_path
):
    loose = run(video_config(steps=20), video_registries, tmp_path / "a", chunk=24)
    tight = run(
        video_config(steps=20, temporal=5.0, name="tight.toml"),
        video_registries,
        tmp_path / "b",
        chunk=24,
    )
    (loose_mean, loose_max), (tight_mean, tight_max) = map(
        frame_change, (loose.latents, tight.latents)
    )
    # without it, frames of one half share a path and all the change is one jump at the
    # boundary; with it the jump is spread and smaller
    assert tight_mean < 0.75 * loose_mean and tight_max < 0.5 * loose_max


def test_chunked_runs_follow_the_whole_runs_paths(video_config, video_registries, tmp_path):
    """Chunks of 5 frames against one batch of all 24, with a strong causal temporal term.

    The first chunk's frames follow the whole run's paths: every term is per row or
    looks only backwards. They agree to the float32 rounding of batch-size-dependent
    kernels (a matmul over 24 rows rounds differently from one over 5), the tolerance
    of the engine's batch-vs-alone test. A later chunk sees the previous chunk's last
    frame at each step as the whole run does, so its frames follow the same paths too;
    only that rounding travels down the chain of frames, each frame inheriting its
    predecessor's, so the bound after the first chunk is looser: 1e-3 of the distance
    the frames moved (measured: about 2e-5)."""
    path = video_config(steps=15, temporal=1.0)
    whole = run(path, video_registries, tmp_path / "whole", chunk=24)
    chunked = run(path, video_registries, tmp_path / "chunked", chunk=5, overlap=1)
    assert chunked.ok and chunked.latents.shape == whole.latents.shape
    torch.testing.assert_close(chunked.latents[:5], whole.latents[:5], rtol=1e-5, atol=1e-5)
    moved = (whole.latents - _start_latent(whole, tmp_path)).flatten(1).norm(dim=1)
    gaps = (chunked.latents - whole.latents).flatten(1).norm(dim=1)
    assert (gaps[5:] <= 1e-3 * moved[5:]).all(), (gaps / moved).max()
    # the overlap matters: without it (overlap 0) a chunk's first frame is not pulled
    # towards the chunk before, and the paths part
    cut = run(path, video_registries, tmp_path / "cut", chunk=5, overlap=0)
    assert ((cut.latents[5:] - whole.latents[5:]).flatten(1).norm(dim=1) > 0.1).any()


def test_the_mp4_has_the_frames_the_duration_and_the_recordings_sound(
    video_config, video_registries, tmp_path
):
    out = tmp_path / "out"
    result = run(video_config(steps=2), video_registries, out, chunk=7, frames=True)
    assert sorted(p.name for p in out.iterdir()) == [
        ".soundguide.lock",
        "frames",
        "latents.pt",
        "run.json",
        "video.mp4",
    ] or sorted(p.name for p in out.iterdir()) == ["frames", "latents.pt", "run.json", "video.mp4"]
    with av.open(str(out / "video.mp4")) as container:
        (v,) = container.streams.video
        (a,) = container.streams.audio
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert v.average_rate == 6
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == v.frames == 24
    assert float(v.duration * v.time_base) == pytest.approx(24 / 6)
    # the whole recording (4 s), to one AAC frame (1024 samples)
    assert float(a.duration * a.time_base) == pytest.approx(4.0, abs=1024 / 44100)
    assert len(list((out / "frames").iterdir())) == 24
    latents = torch.load(out / "latents.pt", weights_only=True)
    assert latents.shape == (24, 4, 8) and torch.equal(latents, result.latents)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["frames_done"] == 24
    assert [row["frame"] for row in manifest["per_frame"]] == list(range(24))
    assert set(manifest["per_frame"][0]["terms"]) == {"toy-audio"}  # weight-0 temporal: not built


def test_a_stop_keeps_the_finished_chunks_as_a_playable_partial_video(
    video_config, video_registries, tmp_path
):
    config = load_config(video_config(steps=3), video_registries)
    from soundguide.core.engine import Stop

    stop = Stop()
    asked = []

    def stopped():
        asked.append(1)
        if len(asked) == 3:  # after two chunks: stop, as Ctrl-C does, during the third
            stop.request("stopped by test")
        return False

    out = tmp_path / "out"
    result = make_video(
        config,
        VideoConfig(chunk=5),
        out=out,
        registries=video_registries,
        progress=False,
        stop=stop,
        stopped=stopped,
    )
    assert result.status == "interrupted" and result.frames_done == 10
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["frames_done"] == 10
    with av.open(str(out / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
        (a,) = container.streams.audio
        assert float(a.duration * a.time_base) == pytest.approx(10 / 6, abs=1024 / 44100)


def test_max_frames_makes_a_preview_of_the_first_frames(video_config, video_registries, tmp_path):
    config = load_config(video_config(steps=1), video_registries)
    out = tmp_path / "out"
    result = make_video(
        config,
        VideoConfig(chunk=4),
        out=out,
        registries=video_registries,
        progress=False,
        max_frames=6,
    )
    assert result.ok and result.frames == 24 and result.frames_done == 6
    assert "a preview: the first 6 of 24" in result.message
    with av.open(str(out / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
        (a,) = container.streams.audio
        assert float(a.duration * a.time_base) == pytest.approx(1.0, abs=1024 / 44100)


def test_a_photo_or_one_latent_row_is_the_start_of_every_frame(
    video_config, video_registries, tmp_path
):
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 80, 40)).save(tmp_path / "me.png")
    extra = 'image = "me.png"\n\n[inversion]\ntype = "toy-inverter"'
    result = run(video_config(steps=0, extra=extra), video_registries, tmp_path / "a", chunk=8)
    assert result.ok and result.latents.shape == (24, 4, 8)
    assert torch.equal(result.latents, result.latents[:1].expand(24, -1, -1))  # 0 steps: the start
    torch.save(torch.randn(2, 4, 8), tmp_path / "two.pt")
    from soundguide.core.errors import ConfigError

    with pytest.raises(ConfigError, match="starts every frame from one latent; the file gives 2"):
        run(
            video_config(extra='latent = "two.pt"', name="two.toml"),
            video_registries,
            tmp_path / "b",
        )
    assert not (tmp_path / "b").exists()
    one = run(
        video_config(steps=0, extra='latent = "two.pt"\nlatent_index = 1', name="one.toml"),
        video_registries,
        tmp_path / "c",
    )
    expected = torch.load(tmp_path / "two.pt")[1]
    assert torch.equal(one.latents, expected.expand(24, -1, -1))


def test_a_chunk_whose_frames_cannot_be_written_keeps_the_chunks_before_it(
    video_config, video_registries, tmp_path, monkeypatch
):
    from soundguide.video import mp4

    calls = []
    add = mp4.Mp4Writer.add

    def failing(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        add(self, images)

    monkeypatch.setattr(mp4.Mp4Writer, "add", failing)
    config = load_config(video_config(steps=1), video_registries)
    out = tmp_path / "out"
    from soundguide.core.errors import OutputError

    with pytest.raises(OutputError, match="could not write video frames .*No space left"):
        make_video(
            config, VideoConfig(chunk=5), out=out, registries=video_registries, progress=False
        )
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["frames_done"] == 5
    assert torch.load(out / "latents.pt", weights_only=True).shape[0] == 5
    with av.open(str(out / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5
