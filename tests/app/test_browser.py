"""The app in a real browser: Debian's headless chromium driven by Playwright.

One ``soundguide app --demo`` process (tiny random models) and one browser
serve every test here. Playwright is pointed at the system's chromium and never
downloads a browser; without chromium or playwright these tests skip and say why.
Set ``SOUNDGUIDE_SCREENSHOT=path.png`` to keep the screenshot of the finished page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]
SHARED_WAV = ROOT.parent / "shared" / "audio" / "fire.wav"
CHROMIUM = shutil.which("chromium")


def _missing() -> str | None:
    if CHROMIUM is None:
        return "Debian's chromium is not installed (.ci/run installs it with apt-get)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'soundguide[test]')"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return "gradio is not installed (pip install 'soundguide[app]')"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        SOUNDGUIDE_HOME=str(tmp / "home"),
        SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD="1",
        OMP_NUM_THREADS="1",  # the app and the CLI re-run must compute alike
    )
    return env


class SlowWeights(BaseHTTPRequestHandler):
    """Serves 4 MB of weights in 80 pieces over 4 s: a download long enough to watch."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        piece = b"\0" * 50_000
        self.send_response(200)
        self.send_header("Content-Length", str(80 * len(piece)))
        self.end_headers()
        for _ in range(80):
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


class Server:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.history = tmp / "history"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / "app.log"
        command = [sys.executable, "-m", "soundguide.cli", "app", "--demo"]
        command += ["--port", str(self.port), "--history", str(self.history)]
        command += ["-p", "tests.toy_plugins", "-p", "tests.app.slow_weights"]
        self.weights = ThreadingHTTPServer(("127.0.0.1", 0), SlowWeights)
        threading.Thread(target=self.weights.serve_forever, daemon=True).start()
        env = _env(tmp)
        env["SOUNDGUIDE_TEST_WEIGHTS_URL"] = f"http://127.0.0.1:{self.weights.server_port}/w"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.temp = self._wait()

    def _wait(self) -> Path:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"soundguide app exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"soundguide app did not serve in 90 s: {self.log.read_text()[-2000:]}")
        found = re.search(r"temporary folder: (\S+)", self.log.read_text())
        assert found, self.log.read_text()
        return Path(found.group(1))

    def stop(self) -> int:
        self.weights.shutdown()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # a fake microphone (a beep) that needs no permission prompt
        fake_media = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", *fake_media]
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, server):
    contexts = []

    def open_():
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url)
        page.wait_for_selector("#run")
        return page

    yield open_
    for context in contexts:
        context.close()


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _wait_status(page, prefix: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "p => document.querySelector('#status').innerText.startsWith(p)",
        arg=prefix,
        timeout=timeout,
    )
    return _status(page)


def _set_number(page, selector: str, value: object) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def _folder(status: str) -> Path:
    return Path(status.rsplit("outputs in ", 1)[1].strip())


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> Path:
    if SHARED_WAV.is_file():
        return SHARED_WAV
    path = tmp_path_factory.mktemp("sound") / "tone.wav"
    t = np.arange(44100 * 2) / 44100
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    return path


@pytest.fixture(scope="module")
def finished(browser, server, sound, tmp_path_factory):
    """A 5-step run made on the page: a sound at weight 0.8, a prompt at weight -0.3."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    page.wait_for_selector("#run")
    page.locator("#audio-0 input[type=file]").set_input_files(str(sound))
    _wait_status(page, "sound ")
    page.locator("#prompt-0 textarea").fill("a burning forest")
    _set_number(page, "#audio-weight-0", 0.8)
    _set_number(page, "#text-weight-0", -0.3)
    page.locator("#steps input").fill("5")
    page.locator("#run").click()
    status = _wait_status(page, "finished")
    page.wait_for_selector("#edited img")
    page.wait_for_selector('#downloads a[href$="run.json"]')
    with page.expect_download() as download:
        page.locator('#downloads a[href$="run.json"]').click()
    saved = tmp_path_factory.mktemp("downloads") / "run.json"
    download.value.save_as(saved)
    toml = page.locator("#toml .cm-content").inner_text()
    shot = tmp_path_factory.mktemp("screenshot") / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SOUNDGUIDE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SOUNDGUIDE_SCREENSHOT"])
    yield {"status": status, "run_json": saved, "toml": toml, "screenshot": shot, "page": page}
    context.close()


def test_the_demo_says_so_and_plugin_forms_appear(open_page):
    page = open_page()
    assert "DEMO with tiny RANDOM models" in page.locator("#demo-banner").inner_text()
    # the -p plugin's source, with a form made from its Config: defaults and descriptions
    assert page.get_by_text("toy-target (tests.toy_plugins)").is_visible()
    assert page.locator("#toy-target-dim input").input_value() == "16"
    assert page.get_by_text("Give this many per-item targets.").is_visible()
    # used in a run, with a field changed and an optional one left empty
    page.locator("#use-toy-target input").check()
    _set_number(page, "#toy-target-w", -0.4)
    page.locator("#toy-target-seed input").fill("5")
    page.locator("#remove-audio-0").click()
    page.locator("#prompt-0 textarea").fill("rain")
    page.locator("#steps input").fill("2")
    page.locator("#run").click()
    manifest = json.loads((_folder(_wait_status(page, "finished")) / "run.json").read_text())
    toy = manifest["config"]["guidance"][1]
    assert (toy["type"], toy["weight"], toy["seed"], toy["items"]) == ("toy-target", -0.4, 5, None)


def test_a_five_step_run_writes_the_weights_chosen_on_the_page(finished):
    manifest = json.loads(finished["run_json"].read_text())
    assert manifest["status"] == "finished" and manifest["steps_done"] == 5
    sources = [(g["type"], g["weight"]) for g in manifest["config"]["guidance"]]
    assert sources == [("audio", 0.8), ("text", -0.3)]
    assert manifest["app"]["demo"].startswith("DEMO with tiny RANDOM models")
    assert finished["screenshot"].stat().st_size > 10_000


def test_the_pages_toml_reruns_from_the_cli_to_the_same_latent(finished, server, tmp_path):
    config = tmp_path / "copied.toml"
    config.write_text(finished["toml"])
    out = tmp_path / "rerun"
    cli = [sys.executable, "-m", "soundguide.cli", "edit", str(config), "--out", str(out), "-q"]
    done = subprocess.run(cli, cwd=ROOT, env=_env(server.tmp), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = _folder(finished["status"])
    app = torch.load(folder / "latent_edited.pt", weights_only=True)
    assert torch.equal(torch.load(out / "latent_edited.pt", weights_only=True), app)


def test_stop_after_the_first_image_keeps_the_partial_outputs(open_page):
    page = open_page()
    page.locator("#remove-audio-0").click()
    page.locator("#prompt-0 textarea").fill("rain")
    page.locator("#steps input").fill("500")
    page.locator("#preview-every input").fill("1")
    page.locator("#run").click()
    page.wait_for_selector("#preview img")
    page.locator("#stop").click()
    status = _wait_status(page, "stopped")
    assert "stopped in the app: stopped after" in status
    folder = _folder(status)
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["steps_done"] < 500
    assert (folder / "latent_edited.pt").is_file() and (folder / "edited.png").is_file()


def test_one_run_at_a_time_the_next_waits_with_its_position(open_page):
    first, second = open_page(), open_page()
    for page, steps in ((first, 500), (second, 3)):
        page.locator("#remove-audio-0").click()
        page.locator("#prompt-0 textarea").fill("rain")
        page.locator("#steps input").fill(str(steps))
    first.locator("#run").click()
    first.wait_for_selector("#preview img")
    second.locator("#run").click()
    second.wait_for_function("document.body.innerText.includes('queue: 1/1')")
    second.locator("#stop").click()  # another session's Stop leaves the first run alone
    second.wait_for_timeout(1000)
    assert _status(first).startswith("running: step")
    first.locator("#stop").click()
    assert "stopped in the app" in _wait_status(first, "stopped")
    assert "finished 3 steps" in _wait_status(second, "finished")


def test_a_page_that_goes_away_stops_its_run(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url)
    page.locator("#remove-audio-0").click()
    page.locator("#prompt-0 textarea").fill("the page goes away")
    page.locator("#steps input").fill("500")
    page.locator("#run").click()
    page.wait_for_selector("#preview img", timeout=60_000)
    context.close()
    [folder] = [
        f.parent
        for f in server.history.glob("*/config.toml")
        if "the page goes away" in f.read_text()
    ]
    deadline = time.monotonic() + 30
    while not (folder / "run.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["steps_done"] < 500


def test_a_sound_recorded_with_the_microphone_guides_a_run(browser, server):
    context = browser.new_context(permissions=["microphone"])
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    page.locator("#audio-0 button[aria-label='Record audio']").click()
    page.locator("#audio-0 button", has_text="Record").first.click()
    page.wait_for_timeout(2000)
    page.locator("#audio-0 button", has_text="Stop").first.click()
    page.locator("#steps input").fill("2")
    page.locator("#prompt-0 textarea").fill("a recorded beep")
    page.locator("#run").click()
    folder = _folder(_wait_status(page, "finished"))
    context.close()
    manifest = json.loads((folder / "run.json").read_text())
    audio = manifest["config"]["guidance"][0]
    assert audio["type"] == "audio" and audio["path"].endswith("inputs/audio-0.wav")
    seconds = sf.info(audio["path"]).duration
    assert 1.0 < seconds < 10.0  # the recording, not a placeholder


def test_a_text_file_as_audio_shows_the_error_line(open_page, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are notes, not a sound\n" * 20)
    page = open_page()
    page.locator("#audio-0 input[type=file]").set_input_files(str(fake))
    status = _wait_status(page, "error:")
    assert "cannot read audio" in status and "not an audio file" in status
    assert "Traceback" not in page.content()


def test_downloads_of_known_weights_show_their_progress(open_page):
    page = open_page()
    page.locator("#remove-audio-0").click()
    page.locator("#prompt-0 textarea").fill("rain")
    box = page.locator("#clip-model textarea")
    box.fill("slow-weights")
    box.press("Tab")
    page.wait_for_function(
        "document.querySelector('#clip-model textarea').value === 'slow-weights'"
    )
    page.locator("#run").click()
    page.wait_for_function(
        "document.body.innerText.includes('downloading slow.bin')", polling=100, timeout=30_000
    )
    # then it is read as a CLIP model, which it is not: the CLI's error, one line
    status = _wait_status(page, "error:")
    assert "cannot read checkpoint" in status and "slow.bin" in status


def test_exit_removes_the_temporary_folder(server):
    assert server.temp.is_dir()
    server.stop()
    assert not server.temp.exists()
    assert "stopped; temporary folder removed" in server.log.read_text()
