"""What the web app adds to a step, and how fast its page becomes usable.

One process serves the real page (``soundguide.app.page`` on Gradio) and a
headless chromium (Debian's, driven by Playwright) uses it like a person: a
sound, a prompt, N steps, previews streamed every k steps. Between two app
runs the same run config (the ``config.toml`` the app wrote) goes through the
CLI's path, :func:`soundguide.api.edit` with its progress bar, in the same
process. Seconds per step are the engine's own (``run.json``), so loading is
left out of both; runs alternate so that a busy machine slows both alike.

Page load to interactive: navigation start to the Run button being enabled
(``performance.now()`` in the page at that moment), over fresh browser contexts.

    python benchmarks/app_overhead.py [--size 32] [--steps 40] [--preview-every 5] [--repeats 3]

``--size 32`` uses the demo's tiny random models (the app's share of a step is
largest there); ``--size 256`` a random 256 px StyleGAN2 of the real shape.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from soundguide.api import edit  # noqa: E402
from soundguide.core.config import load_config  # noqa: E402
from soundguide.core.plugins import load_registries  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def models(folder: Path, size: int) -> dict[str, str]:
    from soundguide.demo import write_demo_inputs

    write_demo_inputs(folder)
    generator = folder / "stylegan2-tiny.pt"
    if size != 32:
        from soundguide.generators.stylegan2 import StyleGAN2Generator

        torch.manual_seed(0)
        net = StyleGAN2Generator(size, style_dim=512, n_mlp=8, channel_multiplier=2)
        generator = folder / f"stylegan2-{size}.pt"
        torch.save({"g_ema": net.state_dict()}, generator)
    sound = folder / "tone.wav"
    t = np.arange(44100 * 3) / 44100
    sf.write(sound, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    return {
        "generator": str(generator),
        "clip": str(folder / "clip-tiny.pt"),
        "audio_encoder": str(folder / "soundclip-random.pt"),
        "sound": str(sound),
    }


def app_run(page, steps: int, every: int, sound: str) -> Path:
    page.reload()
    page.wait_for_selector("#run")
    page.locator("#audio-0 input[type=file]").set_input_files(sound)
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('sound ')")
    page.locator("#prompt-0 textarea").fill("a burning forest")
    page.locator("#steps input").fill(str(steps))
    page.locator("#preview-every input").fill(str(every))
    page.locator("#run").click()
    # polled every 0.5 s: Playwright's default polls on every animation frame (60/s), which
    # keeps the renderer busy on the run's cores, as a person watching the page does not
    page.wait_for_function(
        "document.querySelector('#status').innerText.startsWith('finished')",
        polling=500,
        timeout=600_000,
    )
    status = page.locator("#status").inner_text()
    return Path(status.rsplit("outputs in ", 1)[1].strip())


def per_step(folder: Path) -> float:
    return json.loads((folder / "run.json").read_text())["seconds_per_step"]


def page_load(browser, url: str, times: int) -> list[float]:
    found = []
    for _ in range(times):
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#run:not([disabled])")
        found.append(page.evaluate("performance.now()") / 1000)
        context.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loads", type=int, default=5, help="page loads timed")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from soundguide.app.configs import generator_choices
    from soundguide.app.page import CSS, PageOptions, build_page
    from soundguide.app.runner import AppRunner

    work = Path(tempfile.mkdtemp(prefix="app-overhead-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    try:
        files = models(work / "models", args.size)
        registries = load_registries(entry_points=False)
        generators = {
            f"random {args.size} px": {"type": "stylegan2", "checkpoint": files["generator"]},
            **generator_choices(registries),
        }
        runner = AppRunner(registries, history=work / "history")
        options = PageOptions(
            generators,
            clip_model=files["clip"],
            audio_encoder=files["audio_encoder"],
            history=str(work / "history"),
            scratch=work / "page",
        )
        page_app = build_page(runner, options)
        page_app.queue(default_concurrency_limit=1)
        port = free_port()
        page_app.launch(
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            css=CSS,
            allowed_paths=[str(work)],
        )
        url = f"http://127.0.0.1:{port}/"
        app_times, cli_times = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"]
            )
            loads = page_load(browser, url, args.loads)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            warm = app_run(page, 3, args.preview_every, files["sound"])  # loads the networks
            config = load_config(
                warm / "config.toml", registries, [f"optimization.steps={args.steps}"]
            )
            for i in range(args.repeats):
                folder = app_run(page, args.steps, args.preview_every, files["sound"])
                app_times.append(per_step(folder))
                out = work / f"cli-{i}"
                result = edit(config, out=out, registries=registries, progress=True)
                cli_times.append(sum(result.step_seconds) / len(result.step_seconds))
            browser.close()
        page_app.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    app_med, cli_med = statistics.median(app_times), statistics.median(cli_times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"{args.size} px generator, {args.steps} steps, previews every {args.preview_every}")
    print("CLI path s/step: " + " ".join(f"{t:.4f}" for t in cli_times))
    print("app (page) s/step: " + " ".join(f"{t:.4f}" for t in app_times))
    print(f"median: CLI {cli_med:.4f} s/step, app {app_med:.4f} s/step")
    print(f"app overhead: {100 * (app_med / cli_med - 1):+.1f} %")
    print(
        "page load to interactive: "
        + " ".join(f"{t:.2f}" for t in loads)
        + f" s (median {statistics.median(loads):.2f} s, max {max(loads):.2f} s)"
    )


if __name__ == "__main__":
    main()
