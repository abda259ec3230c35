"""Seconds per edit step and peak private memory: soundguide against the original code's loop.

A full edit step at 256 px (the landscape model's size): StyleGAN2 256 px,
channel multiplier 2, audio guidance through a full-size ViT-B/32, identity
weight 0, float32, batch 1, random weights everywhere (same shapes as the
released files). Modes, each run in its own process so its memory is its own:

- ``soundguide``: ``soundguide edit`` on a config with the paper preset
  (target computed once, the exact paper preprocessing without the 7x image,
  identity never built at weight 0), default settings (``--malloc reuse``);
- ``soundguide-adaptive``: the same with ``--malloc adaptive`` (glibc's own
  allocator policy, nothing tuned): beside ``soundguide``, it shows what the
  command's allocator tuning is worth;
- ``soundguide-lowmem``: the low-memory settings, ``--malloc frugal --set
  generator.winograd=false`` (slower steps);
- ``original``: the original code's loop written out: rosinality's generator
  (native upfirdn2d, weight modulation), OpenAI's ``clip.model`` as
  ``clip.load(jit=False)`` builds it on a CPU, the audio re-encoded by SoundCLIP every
  step, a literal 7x nearest upsampling + average pooling, the IR-SE50 face
  network run every step even at lambda 0, and ``backward(retain_graph=True)``
  (so each step's graph is freed only during the next step). Every network's
  parameters require gradients, as there, so backward computes their weight
  gradients too. Left out: the original's progress bar and its image saved
  every 20 steps (at step 0, which both run lengths share).

Seconds per step: each mode runs FEW and MANY steps, each in a fresh
process, and the difference of the two wall times over MANY - FEW steps
is the time per step with start-up (imports, loading, targets) cancelled
out; the median of the steps timed inside the longer run (first step left
out) is printed beside it. The modes are repeated interleaved
(``--repeats``) and the medians reported, with the ratio to the original
per repetition, by both measures (a shared machine's speed drifts over
minutes, and the two-count difference carries start-up noise).

Memory: the peak *private* memory, ``RssAnon`` of ``/proc/self/status``
sampled every millisecond by a thread of the child (file-backed pages, such
as the shared libraries' code, are not in it, and paging them out does not
lower it), the largest over the mode's runs; the peak RSS (``VmHWM``, file
pages included) beside it.

``--source PATH`` runs the soundguide modes on another checkout's code (the
inputs are written by this one), e.g. the code before a change::

    git worktree add /tmp/base <revision>
    python benchmarks/edit_step.py --source /tmp/base --modes soundguide original

Linux only (``/proc``).

    python benchmarks/edit_step.py [--steps 2 6] [--repeats 2] [--source PATH]
        [--modes soundguide soundguide-adaptive soundguide-lowmem original]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("soundguide", "soundguide-adaptive", "soundguide-lowmem", "original")
MALLOC = {
    "soundguide": [],  # the command's default, --malloc reuse
    "soundguide-adaptive": ["--malloc", "adaptive"],
    "soundguide-lowmem": ["--malloc", "frugal", "--set", "generator.winograd=false"],
}


def write_inputs(folder: Path) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    from soundguide.encoders.clip import VIT_B_32, clip
    from soundguide.encoders.soundclip import SoundCLIPEncoder
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    torch.save({"g_ema": StyleGAN2Generator(256, 512, 8, 2).state_dict()}, folder / "g.pt")
    vit = clip.model.CLIP(**VIT_B_32)
    torch.save(vit.state_dict(), folder / "clip.pt")
    torch.save(SoundCLIPEncoder().state_dict(), folder / "soundclip.pt")
    rng = np.random.default_rng(0)
    t = np.arange(10 * 44100) / 44100
    sf.write(
        folder / "sound.wav",
        (0.3 * rng.standard_normal(t.size) * np.exp(-0.3 * t)).astype(np.float32),
        44100,
    )
    (folder / "run.toml").write_text(
        """
[generator]
type = "stylegan2"
checkpoint = "g.pt"

[[guidance]]
type = "audio"
path = "sound.wav"
encoder = "soundclip.pt"
clip_model = "clip.pt"

[[regularizer]]
type = "identity"
weight = 0.0

[optimization]
preset = "paper"
seed = 0
"""
    )


def run_soundguide(folder: Path, steps: int, mode: str) -> list[float]:
    import soundguide.api
    from soundguide.cli import main

    results = []
    edit = soundguide.api.edit

    def keep(*args, **kwargs):  # the command's own run, its step times kept
        results.append(edit(*args, **kwargs))
        return results[-1]

    soundguide.api.edit = keep
    code = main(
        [
            "edit",
            str(folder / "run.toml"),
            "--set",
            f"optimization.steps={steps}",
            "--out",
            str(folder / f"out{steps}"),
            "--overwrite",
            "-q",
            "--device",
            "cpu",
            *MALLOC[mode],
        ]
    )
    assert code == 0
    return results[0].step_seconds


def run_original(folder: Path, steps: int) -> list[float]:
    """The original code's per-step work, written out (see the module docstring)."""
    import torch

    from soundguide.encoders.arcface import ArcFaceIRSE50
    from soundguide.encoders.audio import load_audio
    from soundguide.encoders.soundclip import SoundCLIPFrontend, load_soundclip
    from tests.generators.rosinality_reference import Generator

    g = Generator(256, 512, 8, channel_multiplier=2)
    g.load_state_dict(torch.load(folder / "g.pt", weights_only=True)["g_ema"])
    g.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clip imports pkg_resources, which warns about itself
        import clip
    # as clip.load("ViT-B/32", jit=False) on a CPU: OpenAI's module, weights
    # rounded through float16 by build_model, then .float()
    state = torch.load(folder / "clip.pt", weights_only=True)
    clip_model = clip.model.build_model(state).float().eval()
    audio_encoder = load_soundclip(folder / "soundclip.pt")
    face = ArcFaceIRSE50().eval()
    spec = SoundCLIPFrontend()(load_audio(folder / "sound.wav")[None])
    upsample = torch.nn.Upsample(scale_factor=7)
    pool = torch.nn.AvgPool2d(kernel_size=256 // 32)
    with torch.no_grad():
        mean = g.mean_latent(4096)
        z = torch.randn(1, 512)
        img_orig, w0 = g([z], return_latents=True, truncation=0.7, truncation_latent=mean)
    latent = w0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=0.1)
    seconds = []
    for i in range(steps):
        started = time.perf_counter()
        t = i / steps
        optimizer.param_groups[0]["lr"] = (
            0.1 * min(1, t / 0.05) * (0.5 - 0.5 * math.cos(math.pi * min(1, (1 - t) / 0.25)))
        )
        img, _ = g([latent], input_is_latent=True, randomize_noise=False)
        image_features = clip_model.encode_image(pool(upsample(img))).float()
        audio_features = audio_encoder(spec).float()  # every step, as the original
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        audio_features = audio_features / audio_features.norm(dim=-1, keepdim=True)
        guidance = 1 - (image_features @ audio_features.T)[0] * math.exp(0.07)
        crop = torch.nn.functional.adaptive_avg_pool2d(img_orig[:, :, 35:223, 32:220], 112)
        crop_gen = torch.nn.functional.adaptive_avg_pool2d(img[:, :, 35:223, 32:220], 112)
        identity = 1 - (face(crop) * face(crop_gen).detach()).sum()  # run even at lambda 0
        loss = 0.002 * ((w0 - latent) ** 2).sum() + guidance + 0.0 * identity
        optimizer.zero_grad()
        # as the original: each step's graph (with its saved activations) lives
        # on until the next step's forward has replaced img_gen and the losses
        loss.backward(retain_graph=True)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` field (``RssAnon:``, ``VmHWM:``) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakPrivate:
    """The highest ``RssAnon`` seen by a thread sampling it every millisecond."""

    def __init__(self) -> None:
        self.peak = _status_mib("RssAnon:")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _status_mib("RssAnon:"))

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return max(self.peak, _status_mib("RssAnon:"))


def child(mode: str, folder: Path, steps: int) -> None:
    if mode == "write":  # the inputs, written by a child so that this parent never imports torch
        write_inputs(folder)
        import torch

        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
        return
    sampler = PeakPrivate()
    if mode == "original":
        seconds = run_original(folder, steps)
    else:
        seconds = run_soundguide(folder, steps, mode)
    peak_private = sampler.stop()
    print(
        json.dumps(
            {
                "step_seconds": seconds,
                "peak_private_mib": peak_private,
                "peak_rss_mib": _status_mib("VmHWM:"),
            }
        )
    )


def measure(mode: str, folder: Path, steps: int, source: Path = ROOT) -> dict:
    """One run in a fresh process: its wall time (start-up included), step times and peak memory."""
    # the soundguide modes import soundguide from ``source``; the rest (the original
    # loop's reference generator, writing the inputs) always from this checkout
    code = source if mode.startswith("soundguide") else ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(folder), str(steps)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"error: the {mode} run of {steps} steps failed:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["wall_seconds"] = time.perf_counter() - started
    return got


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs=2,
        default=(2, 6),
        metavar=("FEW", "MANY"),
        help="the two step counts; start-up cancels out of the difference",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="checkout whose soundguide the soundguide modes run (default: this one)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions (median)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, steps = args.child
        child(mode, Path(folder), int(steps))
        return
    few, many = args.steps
    if not 1 <= few < many:
        parser.error("--steps FEW MANY needs 1 <= FEW < MANY")
    if not (args.source / "soundguide" / "__init__.py").is_file():
        parser.error(f"--source {args.source}: no soundguide package there")
    per_step: dict[str, list[float]] = {mode: [] for mode in args.modes}
    inside: dict[str, list[float]] = {mode: [] for mode in args.modes}
    peaks: dict[str, list[float]] = {mode: [] for mode in args.modes}
    rss: dict[str, list[float]] = {mode: [] for mode in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        info = measure("write", folder, 0)
        print(
            f"torch {info['torch']}, {info['threads']} threads; runs of {few} and {many} steps, "
            f"each in a fresh process; {args.repeats} repeats, modes interleaved; "
            f"soundguide from {args.source}"
        )
        for _ in range(args.repeats):
            # interleaved, so that a slow spell of a shared machine hits every mode
            for mode in args.modes:
                short = measure(mode, folder, few, args.source)
                long = measure(mode, folder, many, args.source)
                per_step[mode].append((long["wall_seconds"] - short["wall_seconds"]) / (many - few))
                inside[mode].append(
                    statistics.median(long["step_seconds"][1:] or long["step_seconds"])
                )
                peaks[mode] += [short["peak_private_mib"], long["peak_private_mib"]]
                rss[mode] += [short["peak_rss_mib"], long["peak_rss_mib"]]
    for mode in args.modes:
        runs = " ".join(f"{t:.2f}" for t in per_step[mode])
        peak = max(peaks[mode])
        print(
            f"{mode:>19}: {statistics.median(per_step[mode]):5.2f} s/step (runs {runs}; "
            f"timed inside: {statistics.median(inside[mode]):.2f})   peak private {peak:5.0f} MiB "
            f"= {peak * 2**20 / 1e9:.2f} GB (max; runs {' '.join(f'{p:.0f}' for p in peaks[mode])})"
            f"   peak RSS {max(rss[mode]):5.0f} MiB"
        )
    if "original" in per_step:
        for mode in ("soundguide", "soundguide-adaptive", "soundguide-lowmem"):
            if mode in per_step:
                ratios = [a / b for a, b in zip(per_step[mode], per_step["original"], strict=True)]
                timed = [a / b for a, b in zip(inside[mode], inside["original"], strict=True)]
                print(
                    f"{mode} / original: {statistics.median(ratios):.2f}x "
                    f"(per repeat: {' '.join(f'{r:.2f}' for r in ratios)}; from the step times "
                    f"timed inside: {statistics.median(timed):.2f}x, "
                    f"per repeat {' '.join(f'{r:.2f}' for r in timed)})"
                )

    if "soundguide" in per_step and "soundguide-adaptive" in per_step:
        ratios = [
            a / b
            for a, b in zip(per_step["soundguide"], per_step["soundguide-adaptive"], strict=True)
        ]
        print(
            f"--malloc reuse / adaptive: {statistics.median(ratios):.2f}x time per step "
            f"(per repeat: {' '.join(f'{r:.2f}' for r in ratios)}); peak private "
            f"{max(peaks['soundguide']):.0f} vs {max(peaks['soundguide-adaptive']):.0f} MiB"
        )


if __name__ == "__main__":
    main()
