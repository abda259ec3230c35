"""The generator's speed against an earlier revision of it, side by side in one process.

This machine's speed drifts by 20-50 % between minutes, so two runs made
apart cannot show a change of a few percent. Here the generator package
``soundguide/generators/stylegan2/`` (a single ``stylegan2.py`` in revisions
before the split) as it is at a git revision (``--base``, HEAD by
default) and as it is in the working tree build the same 256 px generator (same weights)
and run forward + backward to the W+ latent in turns (ABBA order), and the
ratio of each pair of neighbouring steps is reported. Batch 1, float32, the
engine's allocator policy (``reuse``).

    python benchmarks/stylegan2_ab.py [--base be84978] [--steps 20] [--size 256]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundguide.cli_malloc import malloc_policy  # noqa: E402
from soundguide.generators import stylegan2 as current  # noqa: E402

PACKAGE = "soundguide/generators/stylegan2"


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def load_revision(revision: str, folder: Path):
    """The generator as it is at ``revision``, imported under the name ``stylegan2_base``.

    The package (its modules import each other relatively), or the single
    module it was before.
    """
    names = git("ls-tree", "--name-only", revision, "soundguide/generators/").decode().split()
    if f"{PACKAGE}.py" in names:
        path = folder / "stylegan2_base.py"
        path.write_bytes(git("show", f"{revision}:{PACKAGE}.py"))
        spec = importlib.util.spec_from_file_location("stylegan2_base", path)
    else:
        with tarfile.open(fileobj=io.BytesIO(git("archive", revision, PACKAGE))) as archive:
            archive.extractall(folder, filter="data")
        package = folder / PACKAGE
        spec = importlib.util.spec_from_file_location(
            "stylegan2_base", package / "__init__.py", submodule_search_locations=[str(package)]
        )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stylegan2_base"] = module
    spec.loader.exec_module(module)
    return module


def step_seconds(generator, wplus: torch.Tensor) -> tuple[float, torch.Tensor]:
    w = wplus.clone().requires_grad_(True)
    started = time.perf_counter()
    generator.synthesize(w).square().mean().backward()
    return time.perf_counter() - started, w.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare with")
    parser.add_argument("--steps", type=int, default=20, help="steps of each, after one warm-up")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        try:
            base = load_revision(args.base, Path(folder))
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            if isinstance(detail, bytes):
                detail = detail.decode(errors="replace")
            parser.error(f"cannot read {PACKAGE} at {args.base!r}: {str(detail).strip()}")
        with malloc_policy("reuse"):
            compare(args, base)


def compare(args: argparse.Namespace, base) -> None:
    torch.manual_seed(0)
    old = base.StyleGAN2Generator(args.size, 512, 8, 2)
    new = current.StyleGAN2Generator(args.size, 512, 8, 2)
    new.load_state_dict(old.state_dict())
    for g in (old, new):
        g.eval().requires_grad_(False)
    wplus = torch.randn(1, new.num_layers, 512)
    times: dict[str, list[float]] = {"base": [], "tree": []}
    for i in range(args.steps + 1):
        order = [("tree", new), ("base", old)] if i % 2 else [("base", old), ("tree", new)]
        grads = {}
        for name, g in order:
            seconds, grads[name] = step_seconds(g, wplus)
            if i:
                times[name].append(seconds)
        if i == 0:
            diff = (grads["tree"] - grads["base"]).norm() / grads["base"].norm()
            same = torch.equal(grads["tree"], grads["base"])
            print(f"latent gradients differ by {diff.item():.1e} (relative; bitwise equal: {same})")
    ratios = [t / b for t, b in zip(times["tree"], times["base"], strict=True)]
    print(
        f"{args.size} px, forward + backward, {args.steps} steps each: "
        f"base ({args.base}) {statistics.median(times['base']):.3f} s, "
        f"working tree {statistics.median(times['tree']):.3f} s (medians); "
        f"tree / base per pair: median {statistics.median(ratios):.3f} "
        f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f})"
    )


if __name__ == "__main__":
    main()
