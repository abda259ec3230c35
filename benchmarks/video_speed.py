"""Seconds per frame of ``soundguide video`` against editing the same frames one by one.

A synthetic recording (``--seconds``, default 30: a tone, then noise) becomes a
video at ``--fps`` (12) with a random-weight StyleGAN2 at ``--size`` (256 px,
style dim 512, 8 mapping layers, ``--channel-multiplier``), a random SoundCLIP
of the released shape (ResNet18, 128 x 512 input) and a small random CLIP
(``--clip tiny``: a 2-layer ViT taking 224 px; ``--clip full``: ViT-B/32's
shapes), ``--steps`` steps per frame, on the CPU with ``--threads`` threads.

- ``video CHUNK``: one process runs ``make_video`` on the whole recording with
  chunks of CHUNK frames (``--frames N``: the targets of the whole recording,
  then only its first N frames optimized, when all of them would take too long); it reports the wall time (models, targets, frames,
  MP4), the optimization time, and its peak private memory (``RssAnon``
  sampled every 5 ms, as ``batch_memory.py`` does).
- ``edit``: one process edits ``--edit-sample`` of the same frames one at a
  time with ``soundguide.edit`` (today's way: each frame its own run, its
  10 s clip around the frame's time written as a WAV, the same steps and
  terms), and the per-frame time is extrapolated to all frames.

Every process gets a fresh ``$SOUNDGUIDE_HOME``, so no run reads targets
another one cached.

    python benchmarks/video_speed.py [--seconds 30] [--fps 12] [--size 256] [--steps 3]
        [--chunks 8 32] [--edit-sample 4] [--clip tiny|full] [--threads 1] [--frames N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import PeakSampler  # benchmarks/peak_memory.py

ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = {
    "embed_dim": 64,
    "image_resolution": 224,
    "vision_layers": 2,
    "vision_width": 64,
    "vision_patch_size": 32,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 2,
}


def write_inputs(folder: Path, args: argparse.Namespace) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    from soundguide.encoders.clip import VIT_B_32, clip
    from soundguide.encoders.soundclip import SoundCLIPEncoder
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(args.size, 512, 8, args.channel_multiplier)
    torch.save({"g_ema": g.state_dict()}, folder / "g.pt")
    shapes = VIT_B_32 if args.clip == "full" else TINY_CLIP
    torch.save(clip.model.CLIP(**shapes).state_dict(), folder / "clip.pt")
    torch.save(SoundCLIPEncoder(embed_dim=shapes["embed_dim"]).state_dict(), folder / "sc.pt")
    rate = 44100
    n = int(args.seconds * rate)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n // 2) / rate)
    noise = 0.3 * np.random.default_rng(0).uniform(-1, 1, n - n // 2)
    sf.write(folder / "recording.wav", np.concatenate([tone, noise]).astype(np.float32), rate)


def config_data(folder: Path, args: argparse.Namespace, audio: Path, over_time: bool) -> dict:
    guidance = {
        "type": "audio",
        "path": str(audio),
        "encoder": str(folder / "sc.pt"),
        "clip_model": str(folder / "clip.pt"),
    }
    if over_time:
        guidance["over_time"] = {"fps": args.fps, "smoothing": "ema", "tau": 0.5}
    regularizers = [{"type": "latent_l2", "weight": 0.002}]
    if over_time:  # the video's sequence term: none in a still edit
        regularizers.append({"type": "temporal", "weight": 0.01})
    return {
        "generator": {"type": "stylegan2", "checkpoint": str(folder / "g.pt")},
        "guidance": [guidance],
        "regularizer": regularizers,
        "optimization": {"steps": args.steps, "seed": 0},
    }


def child_video(folder: Path, args: argparse.Namespace, chunk: int) -> dict:
    sampler = PeakSampler()
    sampler.start()
    import torch

    from soundguide.core.config import config_from_dict
    from soundguide.core.plugins import load_registries
    from soundguide.video.run import make_video
    from soundguide.video.settings import VideoConfig

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    registries = load_registries(entry_points=False)
    config = config_from_dict(config_data(folder, args, folder / "recording.wav", True), registries)
    result = make_video(
        config,
        VideoConfig(chunk=chunk),
        out=folder / f"video-{chunk}",
        registries=registries,
        progress=False,
        overwrite=True,
        max_frames=args.frames,
    )
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    return {
        "chunk": chunk,
        "frames": result.frames_done,
        "wall_s": seconds,
        "optimize_s": result.optimize_seconds,
        "peak_mib": sampler.peak / 1024,
    }


def child_edit(folder: Path, args: argparse.Namespace) -> dict:
    import numpy as np
    import soundfile as sf
    import torch

    import soundguide
    from soundguide.core.config import config_from_dict
    from soundguide.core.plugins import load_registries
    from soundguide.encoders.soundclip import HOP_LENGTH, NUM_FRAMES, SAMPLE_RATE

    torch.set_num_threads(args.threads)
    wave, rate = sf.read(folder / "recording.wav", dtype="float32")
    frames = max(1, int(np.ceil(args.seconds * args.fps - 1e-9)))
    sample = np.linspace(0, frames - 1, args.edit_sample).round().astype(int)
    width = NUM_FRAMES * HOP_LENGTH
    seconds = []
    for k in sample:
        started = time.perf_counter()
        # the frame's 10 s window, cut as its own clip: what one would edit with today
        centre = int((k + 0.5) / args.fps * SAMPLE_RATE)
        lo = max(0, centre - width // 2)
        clip = folder / f"clip-{k}.wav"
        sf.write(clip, wave[lo : lo + width], rate)
        registries = load_registries(entry_points=False)
        config = config_from_dict(config_data(folder, args, clip, False), registries)
        soundguide.edit(config, out=folder / f"edit-{k}", registries=registries, progress=False)
        seconds.append(time.perf_counter() - started)
    return {"sample": sample.tolist(), "seconds": seconds, "frames": frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=12.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channel-multiplier", type=int, default=1)
    parser.add_argument("--clip", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--edit-sample", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--frames", type=int, default=None, help="Optimize only the first frames (default all)."
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, what = Path(args.child[0]), args.child[1]
        out = child_edit(folder, args) if what == "edit" else child_video(folder, args, int(what))
        print(json.dumps(out))
        return
    passed = [a for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        write_inputs(Path(tmp), args)

        def run(what: str) -> dict:
            # a fresh cache for each process: no run reuses the targets of another
            home = Path(tempfile.mkdtemp(dir=tmp))
            out = subprocess.run(
                [sys.executable, __file__, *passed, "--child", tmp, what],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "SOUNDGUIDE_HOME": str(home)},
            ).stdout
            return json.loads(out.strip().splitlines()[-1])

        print(
            f"{args.seconds:g} s at {args.fps:g} fps, {args.size} px (channel multiplier "
            f"{args.channel_multiplier}), CLIP {args.clip}, {args.steps} steps, "
            f"{args.threads} thread(s)",
            flush=True,
        )
        edit = run("edit")
        per_edit = sum(edit["seconds"]) / len(edit["seconds"])
        print(
            f"edit one by one: {per_edit:.2f} s/frame (mean of frames {edit['sample']}: "
            f"{', '.join(f'{s:.2f}' for s in edit['seconds'])} s); "
            f"extrapolated to {edit['frames']} frames: {per_edit * edit['frames']:.0f} s",
            flush=True,
        )
        for chunk in args.chunks:
            video = run(str(chunk))
            wall = video["wall_s"] / video["frames"]
            optimize = video["optimize_s"] / video["frames"]
            print(
                f"video, chunks of {chunk}: {wall:.2f} s/frame all in ({video['wall_s']:.0f} s for "
                f"{video['frames']} frames; optimization {optimize:.2f} s/frame) = "
                f"{wall / per_edit:.2f}x editing one by one; "
                f"peak private memory {video['peak_mib']:.0f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
