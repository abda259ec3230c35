"""Speed of soundguide's StyleGAN3 generator (fast ops) against NVIDIA's reference ops.

The reference is ``tests/generators/nvidia/sg3_reference.py``: NVIDIA's
``networks_stylegan3.py`` written with their ``impl='ref'`` ops
(``_filtered_lrelu_ref``, ``_upfirdn2d_ref``, ``bias_act``), which is what
their code runs on a CPU. Both generators hold one random state dict (the
reference designs the filters) at the shapes of NVIDIA's 256 px FFHQ-U
pickles: ``train.py --cfg=stylegan3-t --cbase=16384`` (channel_base 16384,
channel_max 512) and ``--cfg=stylegan3-r --cbase=16384`` (train.py doubles
both for R: channel_base 32768, channel_max 1024, 1x1 convolutions, radial
filters); z_dim = w_dim = 512, two mapping layers, 14 synthesis layers,
margin 10.

Timed: a forward pass of ``synthesis(ws)`` and ``backward()`` of a scalar loss
with respect to W+ (``ws`` of shape (N, 16, 512)), the step of an editor or a
projector. The parameters do not require grad in either model, as in
NVIDIA's ``projector.py`` (``G.eval().requires_grad_(False)``);
``--ref-weights-grad`` makes the reference's require it, as a G in training.
Three routes alternate within each repetition (same inputs, same threads):
NVIDIA's reference, ours with ``set_fast(False)`` (this module's reference
functions: the "before") and ours with the fast ops. The medians of
``--reps`` timed calls after ``--warmup`` untimed ones are printed with the
ratios to the reference's, and the largest
differences of the image and of the W+ gradient relative to the reference's
largest magnitude.

Usage::

    python benchmarks/stylegan3_speed.py                      # T and R, batch 1
    python benchmarks/stylegan3_speed.py --configs T --reps 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundguide.generators.nvidia.stylegan3 import StyleGAN3Generator  # noqa: E402
from tests.generators.nvidia import sg3_reference as ref  # noqa: E402

BASE = dict(
    z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
    mapping_kwargs=dict(num_layers=2),
)  # fmt: skip
CONFIGS = {
    "T": dict(BASE, channel_base=16384, channel_max=512),
    "R": dict(BASE, channel_base=32768, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}


def step(synthesis: torch.nn.Module, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward + backward with respect to ws; (image, gradient)."""
    ws = ws.detach().clone().requires_grad_(True)
    image = synthesis(ws)
    image.square().mean().backward()
    return image.detach(), ws.grad


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=sorted(CONFIGS, reverse=True))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ref-weights-grad", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, float32")

    for name in args.configs:
        torch.manual_seed(0)
        G_ref = ref.randomize(ref.Generator(**CONFIGS[name]), seed=1)
        G_ref.requires_grad_(args.ref_weights_grad)
        G = StyleGAN3Generator(**CONFIGS[name])
        G.load_state_dict(G_ref.state_dict())
        G.eval().requires_grad_(False)
        ws = torch.randn(args.batch, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(2))

        times: dict[str, list[float]] = {"ref": [], "spec": [], "fast": []}
        for rep in range(args.warmup + args.reps):
            for label in times:
                G.set_fast(label == "fast")
                synthesis = G_ref.synthesis if label == "ref" else G.synthesis
                seconds = timed(lambda s=synthesis, w=ws: step(s, w))
                if rep >= args.warmup:
                    times[label].append(seconds)
            G_ref.zero_grad(set_to_none=True)
        G.set_fast(True)
        (image_ref, grad_ref), (image, grad) = step(G_ref.synthesis, ws), step(G.synthesis, ws)
        image_err = ((image - image_ref).abs().max() / image_ref.abs().max()).item()
        grad_err = ((grad - grad_ref).abs().max() / grad_ref.abs().max()).item()
        med = {label: statistics.median(values) for label, values in times.items()}
        print(
            f"stylegan3-{name.lower()} 256px: NVIDIA reference {med['ref']:.3f} s/iter; "
            f"ours with fast=False {med['spec']:.3f} (ratio {med['spec'] / med['ref']:.3f}); "
            f"ours fast {med['fast']:.3f} (ratio {med['fast'] / med['ref']:.3f}) "
            f"(max|diff| rel: image {image_err:.1e}, W+ grad {grad_err:.1e})"
        )


if __name__ == "__main__":
    main()
