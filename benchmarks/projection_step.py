"""Seconds per projection step and peak private memory: soundguide against rosinality's projector.py.

One projection step at 256 px (the size of the landscape and LSUN models):
StyleGAN2 256 px, channel multiplier 2, style_dim 512, 8 mapping layers,
LPIPS on VGG16, batch 1, float32, random weights everywhere (same shapes as
the released files; the VGG16 file has torchvision's layout, classifier
included). Modes, each run in its own process so its memory is its own:

- ``soundguide``: :func:`soundguide.inversion.projection.project` with the
  ``stylegan2`` plugin and :func:`soundguide.inversion.lpips.load_lpips`
  (default settings: W, 1000 steps, stopped after ``--steps``);
- ``soundguide-nchw``, ``soundguide-both``, ``soundguide-textbook``: the
  same with one speed-up taken back each, to show what it is worth: VGG in
  the default memory format (``LPIPS(channels_last=False)``); the package's
  ``lpips.LPIPS.forward`` on both images every step instead of the target's
  features computed once; the generator's textbook forwards of ``model.py``
  (``fast = False``) instead of its fast routes (weights still frozen);
- ``rosinality``: the loop of rosinality's ``projector.py`` written out:
  its generator (``tests/generators/rosinality_reference.py``, the CPU code
  paths of the original, every parameter requiring gradients as there, so
  backward computes their weight gradients too), ``lpips.LPIPS(net="vgg")``
  run on both images every step (its linear layers trainable, as there; the
  ``lpips`` package is the maintained form of the copy rosinality ships),
  VGG16 built the way torchvision builds it (the whole network, then the
  file's state dict), its ``noise_regularize`` loop, ``F.mse_loss``, Adam on
  the latent and the noise maps, ``noise_normalize_``.

Both draw the mean latent (10,000 samples), the noise maps and the latent
noise from one seeded generator in the same order, so their first steps
compute the same loss; it is printed for both.

Seconds per step: the median of the steps of each run, the first left out
(it builds caches), over ``--repeats`` runs per mode, interleaved. Memory:
the peak *private* memory (``RssAnon`` of ``/proc/self/status``, sampled
every millisecond from the start of the child, imports and loading
included) and the peak RSS (``VmHWM``) beside it. Both modes set the same
number of torch threads (``--threads``, default: all cores).

Linux only (``/proc``).

    python benchmarks/projection_step.py [--steps 5] [--repeats 2] [--threads N]
        [--modes soundguide soundguide-nchw soundguide-both soundguide-textbook rosinality]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = (
    "soundguide",
    "soundguide-nchw",
    "soundguide-both",
    "soundguide-textbook",
    "rosinality",
)
SIZE, STYLE_DIM, N_MLP, CM = 256, 512, 8, 2
SEED = 0
MEAN_SAMPLES = 10_000


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


def write_inputs(folder: Path) -> None:
    """A random 256 px generator checkpoint, a random VGG16 file and a target image."""
    import torch
    import torchvision

    from tests.generators.rosinality_reference import Generator as Reference

    torch.manual_seed(0)
    ref = Reference(SIZE, STYLE_DIM, N_MLP, channel_multiplier=CM)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
            elif name.startswith("to_rgb") and name.endswith("conv.weight"):
                p.mul_(0.3)  # images mostly in [-1, 1]
    torch.save({"g_ema": ref.state_dict()}, folder / "g.pt")
    torch.save(torchvision.models.vgg16().state_dict(), folder / "vgg16.pth")
    z = torch.randn(1, STYLE_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target, _ = ref([z], truncation=0.7, truncation_latent=ref.mean_latent(4096))
    torch.save(target.clamp(-1, 1), folder / "target.pt")


class BothImages:
    """LPIPS as the package computes it: VGG on both images every step."""

    def __init__(self, model) -> None:
        self.model = model

    def features(self, image):
        return [image]

    def distance(self, image, target):
        return self.model(image, target[0]).view(image.shape[0])


def run_soundguide(folder: Path, steps: int, mode: str) -> tuple[list[float], list[float]]:
    import torch

    from soundguide.core.interfaces import RunContext
    from soundguide.inversion.lpips import LPIPS, load_lpips
    from soundguide.inversion.projection import project
    from soundguide.plugins.stylegan2 import StyleGAN2

    context = RunContext(cache_dir=folder / "cache", progress=False)
    generator = StyleGAN2(StyleGAN2.Config(checkpoint=folder / "g.pt"), context)
    lpips = load_lpips(folder / "vgg16.pth")
    if mode == "soundguide-nchw":
        lpips = LPIPS(lpips.model.to(memory_format=torch.contiguous_format), channels_last=False)
    elif mode == "soundguide-both":
        lpips = BothImages(lpips.model.to(memory_format=torch.contiguous_format))
    elif mode == "soundguide-textbook":
        generator.model.fast = False
    target = torch.load(folder / "target.pt")
    marks: list[float] = []

    def stop() -> bool:  # called before every step
        marks.append(time.perf_counter())
        return len(marks) > steps

    result = project(target, generator, lpips, stop=stop, progress=False, seed=SEED)
    seconds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    first = [result.history[k][0][0] for k in ("lpips", "noise", "mse", "total")]
    return seconds, first


def run_rosinality(folder: Path, steps: int) -> tuple[list[float], list[float]]:
    """rosinality's projector.py loop (defaults: W, lr 0.1, 1000 steps), written out."""
    import warnings

    import lpips
    import torch
    import torchvision
    from torch import optim
    from torch.nn import functional as F

    from tests.generators.rosinality_reference import Generator as Reference

    def noise_regularize(noises):
        loss = 0
        for noise in noises:
            size = noise.shape[2]
            while True:
                loss = (
                    loss
                    + (noise * torch.roll(noise, shifts=1, dims=3)).mean().pow(2)
                    + (noise * torch.roll(noise, shifts=1, dims=2)).mean().pow(2)
                )
                if size <= 8:
                    break
                noise = noise.reshape([-1, 1, size // 2, 2, size // 2, 2])
                noise = noise.mean([3, 5])
                size //= 2
        return loss

    def noise_normalize_(noises):
        for noise in noises:
            mean = noise.mean()
            std = noise.std()
            noise.data.add_(-mean).div_(std)

    def get_lr(t, initial_lr, rampdown=0.25, rampup=0.05):
        lr_ramp = min(1, (1 - t) / rampdown)
        lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
        lr_ramp = lr_ramp * min(1, t / rampup)
        return initial_lr * lr_ramp

    rng = torch.Generator().manual_seed(SEED)  # projection's draws, in its order
    g_ema = Reference(SIZE, STYLE_DIM, N_MLP, channel_multiplier=CM)
    g_ema.load_state_dict(torch.load(folder / "g.pt")["g_ema"], strict=False)
    g_ema.eval()
    imgs = torch.load(folder / "target.pt")
    with torch.no_grad():
        noise_sample = torch.randn(MEAN_SAMPLES, STYLE_DIM, generator=rng)
        latent_out = g_ema.style(noise_sample)
        latent_mean = latent_out.mean(0)
        latent_std = ((latent_out - latent_mean).pow(2).sum() / MEAN_SAMPLES) ** 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        percept = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        vgg = torchvision.models.vgg16()  # as torchvision's vgg16(pretrained=True) does
    vgg.load_state_dict(torch.load(folder / "vgg16.pth"))
    trunk = {k: v for k, v in percept.net.state_dict().items()}
    percept.net.load_state_dict({k: vgg.features.state_dict()[k.split(".", 1)[1]] for k in trunk})
    del vgg
    noises = [
        torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), generator=rng)
        for i in range(g_ema.num_layers)
    ]
    latent_in = latent_mean.detach().clone().unsqueeze(0).repeat(imgs.shape[0], 1)
    latent_in.requires_grad = True
    for noise in noises:
        noise.requires_grad = True
    optimizer = optim.Adam([latent_in] + noises, lr=0.1)
    total_steps, seconds, first = 1000, [], []
    for i in range(steps):
        started = time.perf_counter()
        t = i / total_steps
        lr = get_lr(t, 0.1)
        optimizer.param_groups[0]["lr"] = lr
        noise_strength = latent_std * 0.05 * max(0, 1 - t / 0.75) ** 2
        latent_n = latent_in + torch.randn(latent_in.shape, generator=rng) * noise_strength.item()
        img_gen, _ = g_ema([latent_n], input_is_latent=True, noise=noises)
        p_loss = percept(img_gen, imgs).sum()
        n_loss = noise_regularize(noises)
        mse_loss = F.mse_loss(img_gen, imgs)
        loss = p_loss + 1e5 * n_loss + 0 * mse_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        noise_normalize_(noises)
        if i == 0:
            first = [p_loss.item(), n_loss.item(), mse_loss.item(), loss.item()]
        seconds.append(time.perf_counter() - started)
    return seconds, first


def child(mode: str, folder: Path, steps: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if mode == "write":
        write_inputs(folder)
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
        return
    sampler = PeakPrivate()
    if mode == "rosinality":
        seconds, first = run_rosinality(folder, steps)
    else:
        seconds, first = run_soundguide(folder, steps, mode)
    print(
        json.dumps(
            {
                "step_seconds": seconds,
                "first_losses": first,
                "peak_private_mib": sampler.stop(),
                "peak_rss_mib": _status_mib("VmHWM:"),
            }
        )
    )


def measure(mode: str, folder: Path, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, __file__, "--child", mode, str(folder), str(steps), str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"error: the {mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per run (first not timed)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per mode")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--modes", nargs="+", default=["soundguide", "rosinality"], choices=MODES)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, steps, threads = args.child
        child(mode, Path(folder), int(steps), int(threads))
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    peaks: dict[str, list[float]] = {m: [] for m in args.modes}
    rss: dict[str, list[float]] = {m: [] for m in args.modes}
    losses: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        info = measure("write", folder, 0, args.threads)
        print(
            f"torch {info['torch']}, {info['threads']} threads; {SIZE} px StyleGAN2 (cm {CM}) + "
            f"LPIPS VGG16, batch 1; {args.steps} steps per run (first not timed), "
            f"{args.repeats} runs per mode, interleaved, each in a fresh process"
        )
        for _ in range(args.repeats):
            for mode in args.modes:
                got = measure(mode, folder, args.steps, args.threads)
                times[mode].append(statistics.median(got["step_seconds"][1:]))
                peaks[mode].append(got["peak_private_mib"])
                rss[mode].append(got["peak_rss_mib"])
                losses[mode] = got["first_losses"]
    base = "rosinality" if "rosinality" in args.modes else None
    print(
        f"{'mode':<20} {'s/step':>7} {'/ rosinality':>12} {'per repeat':>18} "
        f"{'peak private MiB':>16} {'peak RSS MiB':>12}  first step's losses"
    )
    for mode in args.modes:
        p, n, m, total = losses[mode]
        ratio, per_repeat = "", ""
        if base is not None:
            ratios = [a / b for a, b in zip(times[mode], times[base], strict=True)]
            ratio = f"{statistics.median(times[mode]) / statistics.median(times[base]):.2f}x"
            per_repeat = " ".join(f"{r:.2f}" for r in ratios)
        print(
            f"{mode:<20} {statistics.median(times[mode]):7.3f} {ratio:>12} {per_repeat:>18} "
            f"{max(peaks[mode]):16.0f} {max(rss[mode]):12.0f}  "
            f"lpips {p:.6f} noise {n:.6f} mse {m:.6f} total {total:.4f}"
        )


if __name__ == "__main__":
    main()
